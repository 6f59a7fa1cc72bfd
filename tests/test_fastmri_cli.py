"""``equinet fit --model.init_from`` fine-tunes a fastMRI U-Net checkpoint
(fastMRI ``UnetModule`` format or a bare state dict) with the run's sampling; wrong files are
one-line errors."""

from __future__ import annotations

import textwrap
from typing import List

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from test_fail_fast import one_line_error
from test_fastmri_compat import fastmri_unet, write_unet_module_checkpoint
from _lightning_helpers import ToyReconData, restored_globals, run_cli

from equinet.lightning import ReconstructionModule
from equinet.models import UNet
from equinet.models.fastmri_compat import fastmri_key_map

CHANS, DEPTH = 8, 2


class RecordValidations(pl.Callback):
    """Remembers ``(sanity_checking, val loss, global_step)`` of every validation of a fit."""

    seen: List[tuple] = []

    def on_validation_end(self, trainer, pl_module) -> None:
        RecordValidations.seen.append((trainer.sanity_checking, pl_module.evaluation["summary"]["loss"],
                                       trainer.global_step))


def config(tmp_path, sampling="avgpool", padding_mode="zeros", channels=CHANS, layout="fastmri"):
    path = tmp_path / "fastmri_unet.yaml"
    path.write_text(textwrap.dedent(f"""
        trainer:
          accelerator: cpu
          devices: 1
          max_epochs: 2
          num_sanity_val_steps: -1   # the whole validation set before training: the starting loss
          logger: false
          enable_progress_bar: false
          enable_model_summary: false
          default_root_dir: {tmp_path / 'runs'}
          callbacks: [{{class_path: test_fastmri_cli.RecordValidations}}]
        model:
          network:
            class_path: equinet.models.UNet
            init_args: {{channels: {channels}, depth: {DEPTH}, layout: {layout}, sampling: {sampling},
                         padding_mode: {padding_mode}}}
          loss: l1
          optimizer: {{class_path: torch.optim.Adam, init_args: {{lr: 0.01}}}}
        data:
          class_path: _lightning_helpers.ToyReconData
          init_args: {{size: 32, batch_size: 2}}
    """))
    return str(path)


def reference_validation_loss(model: torch.nn.Module) -> float:
    """fastmri.models.Unet on the same validation batches, scored as the module scores them (L1 of
    the +-6-clamped normalised output per slice, mean over each volume's slices, then over volumes)."""
    data = ToyReconData(size=32, batch_size=2)
    data.setup("validate")
    by_volume = {}
    model.eval()
    with torch.no_grad():
        for b in data.val_dataloader():
            out = model(b.input).clamp(-6, 6)
            losses = (out - b.target).abs().flatten(1).mean(1)
            for fname, loss in zip(b.fname, losses.tolist()):
                by_volume.setdefault(fname, []).append(loss)
    return float(np.mean([np.mean(v) for v in by_volume.values()]))


@pytest.mark.filterwarnings("ignore:.*does not have many workers.*")
@pytest.mark.parametrize("form", ["unet_module_checkpoint", "bare_state_dict"])
def test_fit_from_a_fastmri_checkpoint_starts_at_its_loss_and_trains(tmp_path, form):
    model = fastmri_unet(CHANS, DEPTH, seed=4)
    ckpt = tmp_path / ("epoch=49-step=1234.ckpt" if form == "unet_module_checkpoint" else "unet_state.pt")
    if form == "unet_module_checkpoint":
        write_unet_module_checkpoint(ckpt, model)
    else:
        torch.save(model.state_dict(), ckpt)
    RecordValidations.seen = []
    cli = run_cli("fit", "--config", config(tmp_path), "--model.init_from", str(ckpt), "--run.name", "ft")
    sanity = [loss for checking, loss, _ in RecordValidations.seen if checking]
    after = [(loss, step) for checking, loss, step in RecordValidations.seen if not checking]
    reference = reference_validation_loss(model)
    assert len(sanity) == 1 and abs(sanity[0] - reference) <= 1e-6 * abs(reference), (sanity, reference)
    assert len(after) == 2 and after[-1][1] > 0 and after[-1][0] != sanity[0]  # it trained
    # trained weights differ from the fastMRI ones; the run's checkpoint rebuilds without the file
    last = tmp_path / "runs" / "ft" / "checkpoints" / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=True)
    assert saved["hyper_parameters"]["init_from"] is None
    assert saved["hyper_parameters"]["initialised_from"] == str(ckpt)
    ckpt.unlink()
    rebuilt = ReconstructionModule.load_from_checkpoint(last, map_location="cpu")
    source = model.state_dict()
    net_state = rebuilt.network.state_dict()
    changed = [k for fk, k in fastmri_key_map(rebuilt.network).items() if not torch.equal(net_state[k], source[fk])]
    assert changed and all(torch.equal(net_state[k], v) for k, v in cli.model.network.state_dict().items())


def test_the_run_sampling_is_used_and_new_parameters_keep_their_initialisation(tmp_path):
    model = fastmri_unet(CHANS, DEPTH, seed=5)
    write_unet_module_checkpoint(tmp_path / "m.ckpt", model)
    torch.manual_seed(0)
    net = UNet(channels=CHANS, depth=DEPTH, layout="fastmri", sampling="lps", padding_mode="circular")
    scorers = {k: v.clone() for k, v in net.state_dict().items() if ".logits." in k}
    module = ReconstructionModule(network=net, init_from=str(tmp_path / "m.ckpt"))
    state = module.network.state_dict()
    for fastmri_key, key in fastmri_key_map(module.network).items():
        assert torch.equal(state[key], model.state_dict()[fastmri_key])
    assert scorers and all(torch.equal(state[k], v) for k, v in scorers.items())


@pytest.fixture
def quiet(tmp_path, monkeypatch):
    monkeypatch.delenv("EQUINET_DEBUG", raising=False)
    with restored_globals():
        yield


@pytest.mark.parametrize("case", ["text_file", "equinet_checkpoint", "missing", "wrong_architecture", "not_a_unet"])
def test_wrong_init_from_files_are_one_line_errors(capsys, tmp_path, quiet, case):
    cfg, path = config(tmp_path), tmp_path / "weights.ckpt"
    extra: List[str] = []
    if case == "text_file":
        path.write_text("hello")
        expected = f"{path}: not a torch checkpoint"
    elif case == "equinet_checkpoint":
        torch.save({"state_dict": {"network.inc.0.weight": torch.zeros(3)}, "pytorch-lightning_version": "2.6.6"}, path)
        expected = (f"{path}: a Lightning checkpoint (pytorch-lightning 2.6.6), but not a fastmri.models.Unet "
                    "state dict: no down_sample_layers.0.layers.0.weight among its keys (network.inc.0.weight)")
    elif case == "missing":
        expected = f"{path}: no such file"
    elif case == "wrong_architecture":
        write_unet_module_checkpoint(path, fastmri_unet(32, 3))
        expected = (f"init_from {path} holds fastmri.models.Unet(in_chans=1, out_chans=1, chans=32, num_pool_layers=3) "
                    "but the network has channels=8, depth=2; set --model.network.init_args.channels 32 "
                    "--model.network.init_args.depth 3")
    else:
        write_unet_module_checkpoint(path, fastmri_unet(CHANS, DEPTH))
        extra = ["--model.network", "_lightning_helpers.TinyNet"]
        expected = "fastMRI U-Net weights need the network equinet.models.UNet"
    line = one_line_error(capsys, "fit", "--config", cfg, *extra, "--model.init_from", str(path))
    assert expected in line, line
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())

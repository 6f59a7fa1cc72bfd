"""A run SIGKILLed after a checkpoint, resumed with ``--ckpt_path last``, ends with
exactly the weights of an uninterrupted run (deterministic mode).

The network is an LPS U-Net (Gumbel-softmax sampling draws random numbers in training) and the
training data are shuffled, so the resumed run only matches if model, optimiser, LR scheduler,
loop counters *and* the random number generators all come back.
"""

from __future__ import annotations

import signal
import subprocess
import textwrap

import numpy as np
import pytest
import torch
from _lightning_helpers import REPO, cli_env, equinet_cmd, run_cli, state_arrays

CONFIG = textwrap.dedent("""
    seed_everything: 7
    trainer:
      accelerator: cpu
      devices: 1
      max_epochs: 3
      deterministic: true
      enable_progress_bar: false
      enable_model_summary: false
    model:
      network:
        class_path: equinet.models.UNet
        init_args: {channels: 4, depth: 2, sampling: lps, padding_mode: circular}
      optimizer:
        class_path: torch.optim.Adam
        init_args: {lr: 0.01}
      lr_scheduler:
        class_path: torch.optim.lr_scheduler.StepLR
        init_args: {step_size: 1, gamma: 0.5}
    data:
      class_path: _lightning_helpers.ToyReconData
      init_args: {train_slices: [3, 3, 2], val_slices: [2, 1], size: 32, batch_size: 2}
    images: {num_images: 0}
""")


def _args(config, run_dir, *extra):
    return ["fit", "--config", str(config), "--trainer.default_root_dir", str(run_dir), *extra]


@pytest.mark.filterwarnings("ignore:.*does not have many workers.*", "ignore:.*smaller than the logging interval.*")
def test_killed_run_resumed_from_last_equals_uninterrupted(tmp_path):
    config = tmp_path / "resume.yaml"
    config.write_text(CONFIG)
    full, crashed = tmp_path / "full", tmp_path / "crashed"
    # `python -m equinet fit` in a child process that SIGKILLs itself in epoch 1, after batch 1 ...
    child = subprocess.Popen(equinet_cmd(*_args(config, crashed, "--trainer.callbacks+=_lightning_helpers.KillAfterEpoch",
                                                "--trainer.callbacks.epoch=1", "--trainer.callbacks.batch=1")),
                             cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:  # ... while the uninterrupted run goes here, through the same CLI entry point
        run_cli(*_args(config, full))
        out = child.communicate(timeout=600)[0]
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert child.returncode == -signal.SIGKILL, out[-3000:]  # killed: no cleanup, no final save

    # each run has its own folder; `--ckpt_path last` below finds the crashed one through `latest`
    full, crashed = full / "latest", crashed / "latest"
    last = crashed / "checkpoints" / "last.ckpt"
    killed_at = torch.load(last, weights_only=True)
    assert killed_at["epoch"] == 0 and killed_at["global_step"] == 4  # the epoch-0 checkpoint survived

    run_cli(*_args(config, crashed.parent, "--ckpt_path", "last"))
    # each run logged into its own TensorBoard version; the checkpoints stayed in one place
    assert sorted(p.name for p in (crashed / "lightning_logs").iterdir()) == ["version_0", "version_1"]

    a = torch.load(full / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(last, weights_only=True)
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"]) == (2, 12)  # no step lost or repeated
    wa, wb = state_arrays(full / "checkpoints" / "last.ckpt"), state_arrays(last)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert np.array_equal(wa[k], wb[k]), k
    # the optimiser and scheduler ended in the same state too
    sa, sb = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        assert torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"])
    assert a["lr_schedulers"] == b["lr_schedulers"]
    # training moved the weights after the crash point (not comparing two initialisations)
    assert any(not torch.equal(v, a["state_dict"][k]) for k, v in killed_at["state_dict"].items()
               if v.is_floating_point())

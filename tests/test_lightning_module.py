"""ReconstructionModule: losses, clamp, optimisers, logging to TensorBoard/W&B/CSV, safe checkpoints."""

from __future__ import annotations

import os
import pickle
import random
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from _lightning_helpers import TinyNet, ToyReconData, ToyVolumes
from torch.utils.data import DataLoader

from equinet.lightning import (
    EquivarianceEvaluation,
    ReconstructionImageLogger,
    ReconstructionModule,
    ResumableRNG,
    RunCheckpoint,
)
from equinet.lightning.callbacks import PANEL_LABELS, _label_row
from equinet.lightning.evaluation import volume_shift
from equinet.metrics import ssim

# Lightning's advice for tiny CPU runs (few batches, no workers) is not what these tests check.
quiet = pytest.mark.filterwarnings(
    "ignore:.*does not have many workers.*", "ignore:.*smaller than the logging interval.*",
    "ignore:.*GPU available but not used.*")


def _batch(n=2, size=32):
    return next(iter(DataLoader(ToyVolumes([n], size=size, seed=4), batch_size=n)))


def test_losses_match_their_definitions():
    b = _batch()
    out = b.input * 0.5
    mse = ReconstructionModule(TinyNet(), loss="mse").per_sample_loss(out, b)
    assert torch.allclose(mse, ((out - b.target) ** 2).mean(dim=(1, 2, 3)))
    l1 = ReconstructionModule(TinyNet(), loss="l1").per_sample_loss(out, b)
    assert torch.allclose(l1, (out - b.target).abs().mean(dim=(1, 2, 3)))
    # SSIM loss = 1 - fastMRI SSIM of the de-normalised images with the volume's data range
    s = ReconstructionModule(TinyNet(), loss="ssim").per_sample_loss(out, b)
    std, mean = b.std.reshape(-1, 1, 1, 1), b.mean.reshape(-1, 1, 1, 1)
    for i in range(out.shape[0]):
        gt = (b.target * std + mean)[i].double().numpy()
        pred = (out * std + mean)[i].double().numpy()
        assert 1 - float(s[i]) == pytest.approx(ssim(gt, pred, float(b.max_value[i])), abs=2e-4)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="loss must be one of"):
        ReconstructionModule(TinyNet(), loss="huber")
    with pytest.raises(TypeError, match="network must be a torch.nn.Module"):
        ReconstructionModule(lambda x: x)
    with pytest.raises(ValueError, match="output_clamp"):
        ReconstructionModule(TinyNet(), output_clamp=0)


def test_output_clamped_to_six_std_in_evaluation_only():
    class Scale(torch.nn.Module):
        def forward(self, x):
            return 100 * x

    module = ReconstructionModule(Scale())
    x = torch.linspace(-1, 1, 16).reshape(1, 1, 4, 4)
    assert module.train()(x).abs().max() == 100
    out = module.eval()(x)
    assert out.max() == 6 and out.min() == -6
    assert ReconstructionModule(Scale(), output_clamp=None).eval()(x).abs().max() == 100


def test_residual_adds_the_input_before_the_clamp_and_keeps_the_unets_equivariance():
    class Scale(torch.nn.Module):
        def forward(self, x):
            return 100 * x

    x = torch.linspace(-1, 1, 16, dtype=torch.float64).reshape(1, 1, 4, 4)
    module = ReconstructionModule(Scale(), residual=True)
    assert torch.equal(module.train()(x), 100 * x + x)
    assert module.eval()(x).max() == 6  # clamped after the residual is added
    assert module.hparams.residual is True and ReconstructionModule(Scale()).hparams.residual is False
    # an APS U-Net stays exactly shift-equivariant with the input added
    from equinet.models import UNet

    torch.manual_seed(0)
    net = UNet(1, 1, channels=4, depth=2, sampling="aps", padding_mode="circular").double().eval()
    module = ReconstructionModule(net, residual=True, output_clamp=None).eval()
    img = torch.rand(2, 1, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        out, shifted = module(img), module(torch.roll(img, (3, 5), (-2, -1)))
        assert torch.equal(torch.roll(out, (3, 5), (-2, -1)), shifted)
        assert torch.equal(out, net(img) + img)

    class TwoChannels(torch.nn.Module):
        def forward(self, x):
            return torch.cat([x, x], 1)

    with pytest.raises(ValueError, match=r"residual.*\(1, 1, 4, 4\) to \(1, 2, 4, 4\).*in_channels = out_channels"):
        ReconstructionModule(TwoChannels(), residual=True)(x)
    with pytest.raises(ValueError, match="residual must be true or false"):
        ReconstructionModule(Scale(), residual="yes")


def test_optimizer_and_scheduler_callables():
    module = ReconstructionModule(TinyNet(), optimizer=partial(torch.optim.SGD, lr=0.5),
                                  lr_scheduler=partial(torch.optim.lr_scheduler.StepLR, step_size=5, gamma=0.1))
    conf = module.configure_optimizers()
    assert isinstance(conf["optimizer"], torch.optim.SGD) and conf["optimizer"].param_groups[0]["lr"] == 0.5
    assert isinstance(conf["lr_scheduler"]["scheduler"], torch.optim.lr_scheduler.StepLR)
    assert conf["lr_scheduler"]["interval"] == "epoch"
    plateau = ReconstructionModule(TinyNet(), lr_scheduler=torch.optim.lr_scheduler.ReduceLROnPlateau)
    assert plateau.configure_optimizers()["lr_scheduler"]["monitor"] == "val/loss"
    assert isinstance(ReconstructionModule(TinyNet()).configure_optimizers(), torch.optim.Adam)


def _trainer(tmp_path, loggers, **kw):
    return pl.Trainer(default_root_dir=tmp_path, logger=loggers, accelerator="cpu", devices=1, max_epochs=1,
                      enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1,
                      callbacks=[RunCheckpoint(monitor="val/ssim", mode="max", save_last=True), ResumableRNG(),
                                 EquivarianceEvaluation(num_dpsnr_shifts=2), ReconstructionImageLogger(num_images=2)],
                      **kw)


@quiet
def test_fit_test_with_tensorboard_wandb_csv_and_safe_checkpoint(tmp_path, monkeypatch):
    """One fit + test logging to all three loggers; images land in each; checkpoints are safe."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    tb = TensorBoardLogger(tmp_path, name="tb")
    csv = CSVLogger(tmp_path, name="csv")
    wandb_logger = WandbLogger(save_dir=str(tmp_path), project="equinet-test", offline=True)
    wandb_rows, wandb_captions = [], {}  # what reaches W&B: (keys, step) of scalars and image panels alike
    log_metrics, log_image = WandbLogger.log_metrics, WandbLogger.log_image

    def spy_metrics(self, metrics, step=None):
        wandb_rows.append((set(metrics), step))
        return log_metrics(self, metrics, step)

    def spy_image(self, key, images, step=None, **kwargs):
        wandb_captions[key] = kwargs.get("caption")
        return log_image(self, key, images, step, **kwargs)

    monkeypatch.setattr(WandbLogger, "log_metrics", spy_metrics)
    monkeypatch.setattr(WandbLogger, "log_image", spy_image)
    data = ToyReconData(size=32)
    module = ReconstructionModule(TinyNet())
    trainer = _trainer(tmp_path, [tb, csv, wandb_logger])
    trainer.fit(module, datamodule=data)
    results = trainer.test(module, datamodule=data, ckpt_path="last")[0]
    predictions = trainer.predict(module, datamodule=data)
    wandb_logger.experiment.finish()
    # predict: de-normalised reconstructions with their keys
    first = predictions[0]
    batch = next(iter(data.predict_dataloader()))
    assert list(first["fname"]) == list(batch.fname) and torch.equal(first["slice_num"], batch.slice_num)
    with torch.no_grad():
        want = module.eval()(batch.input) * batch.std.reshape(-1, 1, 1, 1) + batch.mean.reshape(-1, 1, 1, 1)
    assert torch.allclose(first["output"], want.float(), atol=1e-5)

    for key in ("test/nmse", "test/psnr", "test/ssim", "test/equivariance_nmse", "test/equivariance_ssim",
                "test/worst_dpsnr_image", "test/worst_dpsnr_image_mean", "test/worst_dpsnr_volume",
                "test/worst_dpsnr_volume_mean"):
        assert np.isfinite(results[key]), key
    # report in the run directory
    summary = (tmp_path / "test_summary.md").read_text()
    assert "equivariance_nmse" in summary and "worst_dpsnr_image" in summary and "last.ckpt" in summary
    assert "worst_dpsnr_volume" in summary and "the paper's text" in summary and "[-16, 15]" in summary
    # images: TensorBoard event with image summaries, W&B offline media files
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(Path(tb.log_dir)), size_guidance={"images": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()["images"]
    assert any(t.startswith("val/images/") for t in tags) and any(t.startswith("test/images/") for t in tags)
    for stage in ("val", "test"):
        # panels at the step of the scalars they belong to, each with its caption as text
        scalar_steps = {e.step for e in acc.Scalars(f"{stage}/ssim")}
        for tag in (t for t in tags if t.startswith(f"{stage}/images/")):
            assert {e.step for e in acc.Images(tag)} == scalar_steps, tag
            caption = acc.Tensors(f"{tag}/text_summary")[0]
            assert caption.step in scalar_steps
            assert b"input | output | target" in caption.tensor_proto.string_val[0]
        wandb_scalars = {step for keys, step in wandb_rows if f"{stage}/ssim" in keys}
        wandb_images = {step for keys, step in wandb_rows if f"{stage}/images" in keys}
        assert wandb_images and wandb_images == wandb_scalars == scalar_steps, wandb_rows
        assert all("input | output | target" in c for c in wandb_captions[f"{stage}/images"])
    media = list(Path(tmp_path, "wandb").glob("offline-run-*/files/media/images/**/*.png"))
    assert media, "no W&B images written"
    # checkpoints: best + last, loadable with weights_only=True
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert "last.ckpt" in names and any(n.startswith("epoch") for n in names)
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert not {"network", "optimizer"} & set(ckpt["hyper_parameters"])  # objects are not pickled
    assert any("ResumableRNG" in k for k in ckpt["callbacks"])
    # built in Python: pass the network again to load
    loaded = ReconstructionModule.load_from_checkpoint(tmp_path / "checkpoints" / "last.ckpt", network=TinyNet(),
                                                       weights_only=True)
    for k, v in module.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])


@quiet
def test_csv_logger_gets_png_panels(tmp_path):
    csv = CSVLogger(tmp_path, name="csv")
    trainer = _trainer(tmp_path, [csv], limit_train_batches=1)
    images = next(cb for cb in trainer.callbacks if isinstance(cb, ReconstructionImageLogger))
    trainer.fit(ReconstructionModule(TinyNet()), datamodule=ToyReconData(size=32))
    assert len(images.saved_files) == 2 and all(p.exists() and p.parent.parent == Path(csv.log_dir)
                                                for p in images.saved_files)
    from PIL import Image

    png = Image.open(images.saved_files[0])
    arr = np.asarray(png)
    rows = _label_row([32] * 5, list(PANEL_LABELS), 2)  # the tiles' labels, above them
    assert arr.shape == (rows.shape[0] + 32, 5 * 32 + 4 * 2) and arr.dtype == np.uint8
    assert np.array_equal(arr[: rows.shape[0]], rows)
    assert len({rows[:, i * 34: i * 34 + 32].tobytes() for i in range(5)}) == 5  # five different labels
    assert png.text["Description"].startswith("val000.h5 slice 0: input | output | target | |error|")


def test_shift_difference_panel_is_black_for_an_equivariant_network():
    b = _batch(2)
    # a seed whose shift for this volume is odd: one 2x max-pool is equivariant to even shifts
    seed = next(s for s in range(100) if volume_shift(s, b.fname[0]).remainder(2).any())
    logger = ReconstructionImageLogger(num_images=2, seed=seed)
    for pool, black in ((False, True), (True, False)):
        torch.manual_seed(0)
        module = ReconstructionModule(TinyNet(pool=pool)).eval()
        with torch.no_grad():
            items = logger.panels(module, {"output": module(b.input)}, b)
        last_panel = items[0]["image"][-32:, -32:]
        assert (last_panel.max() == 0) == black, pool
        assert (items[0]["shift_diff_max"] < 1e-5) == black


def test_resumable_rng_round_trip_is_weights_only(tmp_path):
    cb = ResumableRNG()
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    state = cb.state_dict()
    want = (torch.rand(3), np.random.rand(3), random.random())
    torch.save({"rng": state}, tmp_path / "s.pt")
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    cb.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True)["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(want[0], got[0]) and np.array_equal(want[1], got[1]) and want[2] == got[2]


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_untrusted_pickles_are_refused_by_default(tmp_path):
    """A checkpoint smuggling a callable is rejected by the default (weights_only) load."""
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"x": _Evil()}}, path, pickle_protocol=2)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path)
    with pytest.raises(pickle.UnpicklingError):
        ReconstructionModule.load_from_checkpoint(path, network=TinyNet())

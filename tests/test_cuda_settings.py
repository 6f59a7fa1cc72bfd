"""The exactness settings check: one ExactnessWarning at fit start when the precision or the TF32 flags
break the network's guarantee (bf16-mixed, TF32 on CUDA), none for 32-true or a network without one."""

from __future__ import annotations

import warnings

import pytest
import pytorch_lightning as pl
import torch
from _lightning_helpers import ToyReconData, TinyNet

from equinet.lightning import ExactnessWarning, ReconstructionModule
from equinet.lightning.cuda_settings import exactness_guarantee, exactness_message, inexact_settings
from equinet.models import UNet
from equinet.models.iunet import LiftediUNet, iUNet


def _aps():
    return UNet(channels=4, depth=1, sampling="aps", padding_mode="circular")


@pytest.fixture
def tf32():
    """Set both TF32 flags (restored afterwards)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32

    def set_(on: bool):
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = on
    yield set_
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_guarantees_of_the_networks():
    assert "equivariance" in exactness_guarantee(_aps())
    assert "equivariance" in exactness_guarantee(UNet(channels=4, depth=1, sampling="lps", padding_mode="circular"))
    assert "equivariance" in exactness_guarantee(
        UNet(channels=4, depth=1, sampling="orthogonal", sampling_kwargs={"adaptive": True}, padding_mode="circular"))
    assert "invertibility" in exactness_guarantee(UNet(channels=4, depth=1, sampling="orthogonal"))
    assert exactness_guarantee(UNet(channels=4, depth=1, sampling="aps")) is None  # zero padding: no promise
    assert exactness_guarantee(UNet(channels=4, depth=1, sampling="maxpool", padding_mode="circular")) is None
    assert exactness_guarantee(TinyNet()) is None
    net = iUNet(channels=(4, 16), architecture=(1, 1), dim=2, adaptive_resampling=True,
                module_kwargs={"padding_mode": "circular"}, verbose=0)
    assert "equivariance" in exactness_guarantee(net)
    lifted = LiftediUNet(1, 1, channels=4, depth=1, architecture=1, adaptive_resampling=True, padding_mode="circular",
                         verbose=0)
    assert "equivariance" in exactness_guarantee(lifted)


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed", "bf16-true"])
def test_reduced_precision_breaks_it_on_every_device(precision, tf32):
    tf32(False)
    for device in ("cpu", "cuda"):
        assert inexact_settings(precision, device) == [f"precision={precision} (reduced-precision features and norms)"]
        message = exactness_message(_aps(), precision, device)
        assert message.startswith("equinet: precision=") and "\n" not in message and "What is exact" in message


def test_tf32_breaks_it_on_cuda_only(tf32, monkeypatch):
    tf32(True)
    assert len(inexact_settings("32-true", "cuda")) == 2
    assert "allow_tf32" in exactness_message(_aps(), "32-true", "cuda")
    assert inexact_settings("32-true", "cpu") == []  # no TF32 on a CPU
    tf32(False)
    assert inexact_settings("32-true", "cuda") == [] and inexact_settings("64-true", "cuda") == []
    monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda: "high")
    assert ["float32_matmul_precision='high'" in p for p in inexact_settings("32-true", "cuda")] == [True]
    assert exactness_message(TinyNet(), "bf16-mixed", "cuda") is None  # no guarantee, nothing to warn about


def _fit(tmp_path, precision):
    trainer = pl.Trainer(default_root_dir=tmp_path, logger=False, accelerator="cpu", devices=1, max_steps=1,
                         precision=precision, enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(ReconstructionModule(_aps()), datamodule=ToyReconData(size=16))
    assert trainer.global_step == 1


@pytest.mark.filterwarnings("ignore:.*does not have many workers.*", "ignore:.*smaller than the logging interval.*")
def test_fit_start_warns_once_for_bf16_mixed(tmp_path):
    with pytest.warns(ExactnessWarning) as record:
        _fit(tmp_path, "bf16-mixed")
    ours = [r for r in record if issubclass(r.category, ExactnessWarning)]
    assert len(ours) == 1 and "precision=bf16-mixed" in str(ours[0].message)
    assert "exact shift equivariance (UNet, sampling='aps')" in str(ours[0].message)


@pytest.mark.filterwarnings("ignore:.*does not have many workers.*", "ignore:.*smaller than the logging interval.*")
def test_fit_start_is_silent_for_32_true_on_cpu_tf32_flags_or_not(tmp_path, tf32):
    tf32(True)  # PyTorch's default for cuDNN; it does nothing on a CPU
    with warnings.catch_warnings():
        warnings.simplefilter("error", ExactnessWarning)
        _fit(tmp_path, "32-true")

"""Training with random circular shifts (the APS-U paper's "DA") shifts
input and target of each sample together, draws from the seeded RNG, and never touches the
validation/test/predict inputs."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from hypothesis import given
from hypothesis import strategies as st
from _lightning_helpers import ToyReconData, ToyVolumes
from torch import nn
from torch.utils.data import DataLoader

from equinet.lightning import ReconstructionModule

quiet = pytest.mark.filterwarnings(
    "ignore:.*does not have many workers.*",
    "ignore:.*smaller than the logging interval.*",
    "ignore:.*GPU available but not used.*",
)


def _batch(n=6, size=16):
    return next(iter(DataLoader(ToyVolumes([n], size=size, seed=3), batch_size=n)))


def _shift_of(shifted: torch.Tensor, original: torch.Tensor, max_shift: int):
    """The circular shift (dy, dx) in [-max_shift, max_shift]^2 with ``roll(original) == shifted``
    (or None)."""
    h, w = original.shape[-2:]
    for dy in range(-max_shift, max_shift + 1):
        rows = torch.roll(original, dy, dims=-2)
        for dx in range(-max_shift, max_shift + 1):
            # a cheap necessary condition first (one column), then the full comparison
            if torch.equal(rows[..., (-dx) % w], shifted[..., 0]) and torch.equal(
                torch.roll(rows, dx, dims=-1), shifted
            ):
                return dy, dx
    return None


@given(seed=st.integers(0, 2**31 - 1), max_shift=st.integers(1, 7))
def test_input_and_target_get_the_same_shift_per_sample(seed, max_shift):
    b = _batch(n=6, size=16)
    module = ReconstructionModule(nn.Identity(), shift_augmentation=max_shift)
    torch.manual_seed(seed)
    out = module.augment(b)
    shifts = []
    for i in range(6):
        k_in = _shift_of(out.input[i], b.input[i], max_shift)
        k_tgt = _shift_of(out.target[i], b.target[i], max_shift)
        assert k_in is not None and k_in == k_tgt  # same shift for input and target, within range
        shifts.append(k_in)
    # everything else is passed on unchanged
    assert out.fname == b.fname and torch.equal(out.mean, b.mean) and torch.equal(out.max_value, b.max_value)
    # the shifts come from the seeded torch RNG: the same seed draws the same shifts
    torch.manual_seed(seed)
    again = module.augment(b)
    assert torch.equal(again.input, out.input) and torch.equal(again.target, out.target)


def test_shifts_differ_between_samples_and_cover_the_range():
    b = _batch(n=6, size=40)
    module = ReconstructionModule(nn.Identity(), shift_augmentation=16)
    torch.manual_seed(0)
    seen = set()
    for _ in range(20):
        out = module.augment(b)
        seen.update(_shift_of(out.input[i], b.input[i], 16) for i in range(6))
    assert None not in seen and len(seen) > 60  # 120 draws from 33^2 shifts
    assert min(min(k) for k in seen) < -12 and max(max(k) for k in seen) > 12


def test_no_augmentation_is_the_identity_and_bad_values_are_named():
    b = _batch()
    out = ReconstructionModule(nn.Identity()).augment(b)
    assert out.input is b.input and out.target is b.target
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="shift_augmentation"):
            ReconstructionModule(nn.Identity(), shift_augmentation=bad)


class Recorder(nn.Module):
    """A network that records what it is fed (and learns a scale, so training has a gradient)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.seen = {"train": [], "eval": []}

    def forward(self, x):
        self.seen["train" if self.training else "eval"].append(x.detach().clone())
        return self.scale * x


@quiet
def test_training_inputs_are_shifted_but_validation_test_and_predict_are_not(tmp_path):
    data = ToyReconData(train_slices=[2, 2], val_slices=[2, 1], size=32, batch_size=2)
    net = Recorder()
    module = ReconstructionModule(net, shift_augmentation=16)
    assert module.hparams["shift_augmentation"] == 16  # logged in the run config / checkpoint
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=data)
    data.setup()
    train_inputs = torch.cat([s.input[None] for s in data.train_set])
    val_inputs = torch.cat([s.input[None] for s in data.val_set])
    fed = torch.cat(net.seen["train"])
    assert fed.shape == train_inputs.shape
    # every training input is a circular shift of a training sample, and not all shifts are 0
    originals = list(train_inputs)
    shifted = 0
    for x in fed:
        k = next(k for k in (_shift_of(x, o, 16) for o in originals) if k is not None)
        shifted += k != (0, 0)
    assert shifted >= len(fed) - 1
    # validation (after the epoch), test and predict see the data exactly as stored
    assert torch.equal(torch.cat(net.seen["eval"]), val_inputs)
    for stage in ("validate", "test", "predict"):
        net.seen["eval"] = []
        getattr(trainer, stage)(module, datamodule=data, **({} if stage == "predict" else {"verbose": False}))
        assert torch.equal(torch.cat(net.seen["eval"]), val_inputs), stage


@pytest.mark.filterwarnings("ignore:.*self.log.*")  # training_step outside a Trainer
def test_loss_is_taken_against_the_shifted_target():
    b = _batch(n=4, size=16)
    module = ReconstructionModule(nn.Identity(), shift_augmentation=5)
    torch.manual_seed(1)
    shifted = module.augment(b)
    torch.manual_seed(1)
    loss = module.training_step(b, 0)
    # the identity maps the shifted input onto the shifted target's loss, not the unshifted one
    assert torch.allclose(loss, ((shifted.input - shifted.target) ** 2).mean())

"""Callbacks: test-time shift-equivariance, image logging, run-directory checkpoints, resumable RNG.

All of them work with any reconstruction LightningModule whose ``forward(x)`` returns the
(normalised, clamped) reconstruction and whose ``validation_step``/``test_step`` return
``{"output": ...}``, as :class:`equinet.lightning.ReconstructionModule` does.
"""

from __future__ import annotations

import random
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger

from equinet.files import atomic_write
from equinet.lightning.batch import as_batch
from equinet.lightning.evaluation import (
    SliceRecords,
    batch_keys,
    denormalise,
    gather_unique,
    per_sample,
    summarise,
    volume_metrics,
)
from equinet.metrics import (
    circular_shift,
    dpsnr_shifts,
    dpsnr_terms,
    equivariance_terms,
    to_device,
    volume_shift,
    worst_dpsnr_from_terms,
)


class EquivarianceEvaluation(Callback):
    """Shift-equivariance metrics of the APS-U paper (Sec. 4), computed in ``equinet test``.

    Per volume: NMSE and SSIM (data range: the volume's ``max_value``) between ``T_k(G(x))`` and
    ``G(T_k(x))`` with one random circular shift ``k`` in ``[-max_shift, max_shift]^2`` (both
    ends included) per volume, seeded by ``seed`` and the volume name. Worst-case
    ``|dPSNR| = |PSNR(G(T_k x), T_k y) - PSNR(G(x), y)|`` over ``num_dpsnr_shifts`` random shifts
    per volume (Table 2), in both conventions of :mod:`equinet.metrics.equivariance`:
    ``worst_dpsnr_image`` (per image; the paper's text, the headline) and ``worst_dpsnr_volume``
    (per volume; the paper's reference code). Exact under DDP (records gathered and
    de-duplicated); the module logs the dataset numbers and writes them into the test report.

    Args:
        max_shift: largest shift per axis, in pixels (the paper: 16).
        num_dpsnr_shifts: random shifts for the worst-case |dPSNR| (the paper: 10), shared by the
            slices of a volume; 0 skips it (each shift costs one forward pass of the batch).
        seed: seed of the shifts; a volume's shifts depend only on (seed, fname).
    """

    def __init__(self, max_shift: int = 16, num_dpsnr_shifts: int = 10, seed: int = 0) -> None:
        if max_shift < 0 or num_dpsnr_shifts < 0:
            raise ValueError(f"max_shift and num_dpsnr_shifts must be >= 0, got {max_shift}, {num_dpsnr_shifts}")
        self.max_shift = int(max_shift)
        self.num_dpsnr_shifts = int(num_dpsnr_shifts)
        self.seed = int(seed)
        self._records = SliceRecords()
        self.volumes: List[Dict[str, Any]] = []
        self.images: List[Dict[str, Any]] = []
        self.duplicates = 0

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._records.clear()

    def shifts(self, fnames: List[str], device: torch.device) -> torch.Tensor:
        """The equivariance shift ``k`` of each image's volume, ``(B, 2)`` on ``device``."""
        return to_device(torch.stack([volume_shift(self.seed, f, self.max_shift) for f in fnames]), device)

    @torch.no_grad()
    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                          batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        b = as_batch(batch)
        x = b.input
        n = x.shape[0]
        fnames = [b.fname] * n if isinstance(b.fname, str) else list(b.fname)
        output = outputs["output"] if isinstance(outputs, dict) and "output" in outputs else pl_module(x)

        # equivariance: T_k G(x) vs G(T_k x), one k per volume (equinet.metrics: the one definition)
        k = self.shifts(fnames, x.device)
        terms = equivariance_terms(pl_module, x, k, b.max_value, output=output,
                                   to_units=lambda t: denormalise(t, b.mean, b.std))
        values = {"max_value": per_sample(b.max_value, x), "shift_h": k[:, 0], "shift_w": k[:, 1],
                  **{f"equivariance_{name}": terms[name] for name in ("sse", "ref_sq", "numel", "ssim")}}

        # worst-case |dPSNR| over the volume's random shifts; the data range cancels in the
        # difference of two PSNRs, and squared errors in original units (normalised ones times
        # std^2) add up over a volume for the per-volume convention
        if self.num_dpsnr_shifts:
            shifts = to_device(torch.stack([dpsnr_shifts(self.seed, f, self.num_dpsnr_shifts, self.max_shift)
                                            for f in fnames]), x.device)  # (B, n, 2)
            scale = per_sample(b.std, x) ** 2
            base, sse = dpsnr_terms(pl_module, x, b.target, shifts, output=output, scale=scale)
            values.update(worst_dpsnr_image=worst_dpsnr_from_terms(base, sse), dpsnr_base_sse=base, dpsnr_sse=sse)
        self._records.add(b.fname, b.slice_num, values)

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        records, self.duplicates = gather_unique(self._records)
        self._records.clear()
        self.volumes = volume_metrics(records)
        self.images = [{"fname": r["fname"], "slice_num": r["slice_num"], "shift": f"({r['shift_h']}, {r['shift_w']})",
                        "equivariance_ssim": r["equivariance_ssim"],
                        **({"worst_dpsnr_image": r["worst_dpsnr_image"]} if "worst_dpsnr_image" in r else {})}
                       for r in records]
        for name, value in summarise(self.volumes, self.images).items():
            # identical on every rank after the gather: sync_dist only silences Lightning's DDP warning
            pl_module.log(f"test/{name}", value, sync_dist=True)
        add_to_report = getattr(pl_module, "add_to_report", None)
        if callable(add_to_report):  # the module writes one report of the evaluation (ReconstructionModule)
            add_to_report(**self.report())

    def report(self) -> Dict[str, Any]:
        """What this callback adds to the module's test report: per-volume and per-image rows, notes."""
        m = self.max_shift
        return {"volumes": self.volumes, "images": self.images, "meta": {
            "equivariance shifts": (f"one per volume in [-{m}, {m}]^2 (both ends included; the paper's "
                                    f"reference code draws [-{m}, {m - 1}]), seed {self.seed}"),
            "equivariance SSIM data range": "the volume's max_value (the dataset's data range)",
            "worst-case |dPSNR|": (f"{self.num_dpsnr_shifts} random shifts per volume, shared by its slices; "
                                   "worst_dpsnr_image = max over images of each image's worst (the paper's "
                                   "text, the headline); worst_dpsnr_volume = max over volumes of the worst "
                                   "volume PSNR change, slices shifted alike (the paper's reference code)"),
        }}


# --------------------------------------------------------------------------------------------
def _to_uint8(img: np.ndarray, lo: float, hi: float) -> np.ndarray:
    scale = (hi - lo) if hi > lo else 1.0
    return (np.clip((img - lo) / scale, 0.0, 1.0) * 255).round().astype(np.uint8)


PANEL_LABELS = ("input", "output", "target", "|error|", "shift diff")


def _label_row(widths: List[int], labels: List[str], gap: int) -> np.ndarray:
    """A strip of white labels on black, one above each tile (clipped to it), tiles ``gap`` apart."""
    from PIL import Image, ImageDraw, ImageFont

    size = int(min(24, max(8, min(widths) // 8)))
    font = ImageFont.load_default(size=size)
    cells = []
    for width, label in zip(widths, labels):
        cell = Image.new("L", (width, size + 4), 0)
        ImageDraw.Draw(cell).text((2, 1), label, fill=255, font=font)
        cells += [np.asarray(cell), np.full((size + 4, gap), 255, np.uint8)]
    return np.concatenate(cells[:-1], axis=1)


class ReconstructionImageLogger(Callback):
    """Logs ``input | output | target | |output - target| | |G(T_k x) - T_k G(x)|`` panels.

    Each tile is labelled in the image itself (so every logger and the PNG files show it), and the
    caption -- volume, slice, shift ``k``, the error scale -- goes to each logger's caption field
    (W&B caption, TensorBoard text at the same tag and step, PNG ``Description``). Panels are
    logged at the step of the validation/test scalars they belong to (the module's
    ``evaluation_step`` if it has one, else ``trainer.global_step``).

    The last panel is the shift-difference map: black for an exactly shift-equivariant network
    (APS/LPS with circular padding), structured for max-pooling -- equivariance at a glance.
    ``k`` is the volume's seeded shift (as in :class:`EquivarianceEvaluation`). The error and
    shift-difference panels share one grey scale (0 .. max error), so they compare directly.

    Works with whichever loggers are configured: TensorBoard (``add_image``), W&B
    (``log_image``), and for any other logger (e.g. CSV) or none, PNG files under
    ``<log_dir>/images/``.

    Args:
        num_images: images from the first validation/test batch (global rank 0).
        every_n_epochs: log every n-th validation epoch (0: never during fit); test always logs.
        max_shift, seed: the shift ``k`` used for the last panel.
    """

    def __init__(self, num_images: int = 2, every_n_epochs: int = 1, max_shift: int = 16, seed: int = 0) -> None:
        self.num_images = int(num_images)
        self.every_n_epochs = int(every_n_epochs)
        self.max_shift = int(max_shift)
        self.seed = int(seed)
        self.saved_files: List[Path] = []

    def _due(self, trainer: pl.Trainer, stage: str, batch_idx: int, dataloader_idx: int) -> bool:
        if batch_idx != 0 or dataloader_idx != 0 or trainer.sanity_checking or self.num_images <= 0:
            return False
        if not trainer.is_global_zero:
            return False
        if stage == "val":
            return self.every_n_epochs > 0 and trainer.current_epoch % self.every_n_epochs == 0
        return True

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self._due(trainer, "val", batch_idx, dataloader_idx):
            self.log_panels(trainer, pl_module, outputs, batch, "val")

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self._due(trainer, "test", batch_idx, dataloader_idx):
            self.log_panels(trainer, pl_module, outputs, batch, "test")

    @torch.no_grad()
    def panels(self, pl_module: pl.LightningModule, outputs: Any, batch: Any) -> List[Dict[str, Any]]:
        """Labelled composite uint8 images ``(label row + H, 5W + 8)`` with captions, one per sample.

        ``image[-H:]`` are the five tiles (2-pixel white gaps); ``image[:-H]`` is the label row."""
        b = as_batch(batch)
        n = min(self.num_images, b.input.shape[0])
        x = b.input[:n]
        keys = batch_keys(b.fname, b.slice_num, b.input.shape[0])[:n]
        output = outputs["output"][:n] if isinstance(outputs, dict) and "output" in outputs else pl_module(x)
        k = to_device(torch.stack([volume_shift(self.seed, f, self.max_shift) for f, _ in keys]), x.device)
        shift_diff = (pl_module(circular_shift(x, k)) - circular_shift(output, k)).abs()
        mean, std = b.mean, b.std

        def sel(v):
            return v[:n] if isinstance(v, torch.Tensor) and v.dim() > 0 else v

        inp = denormalise(x, sel(mean), sel(std))
        out = denormalise(output, sel(mean), sel(std))
        tgt = denormalise(b.target[:n], sel(mean), sel(std))
        shift_diff = shift_diff * torch.as_tensor(sel(std), dtype=x.dtype, device=x.device).reshape(-1, 1, 1, 1)
        result = []
        for i, (fname, slice_num) in enumerate(keys):
            ims = [a[i, 0].detach().float().cpu().numpy() for a in (inp, out, tgt)]
            err = np.abs(ims[1] - ims[2])
            sd = shift_diff[i, 0].detach().float().cpu().numpy()
            lo, hi = float(ims[2].min()), float(ims[2].max())
            emax = float(err.max())
            tiles = [_to_uint8(a, lo, hi) for a in ims] + [_to_uint8(err, 0.0, emax), _to_uint8(sd, 0.0, emax)]
            sep = np.full((tiles[0].shape[0], 2), 255, np.uint8)
            composite = np.concatenate([t for tile in tiles for t in (tile, sep)][:-1], axis=1)
            labels = _label_row([t.shape[1] for t in tiles], list(PANEL_LABELS), sep.shape[1])
            composite = np.concatenate([labels, composite], axis=0)
            caption = (f"{fname} slice {slice_num}: input | output | target | |error| (max {emax:.3g}) | "
                       f"|G(T_k x) - T_k G(x)| k={tuple(k[i].tolist())} (max {float(sd.max()):.3g})")
            result.append({"image": composite, "caption": caption, "tag": f"{fname}_slice{slice_num}",
                           "shift_diff_max": float(sd.max())})
        return result

    def log_panels(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                   stage: str) -> None:
        items = self.panels(pl_module, outputs, batch)
        # the step of the scalars these panels belong to (ReconstructionModule.evaluation_step)
        step = int(getattr(pl_module, "evaluation_step", trainer.global_step))
        wrote_native = False
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                for it in items:
                    tag = f"{stage}/images/{it['tag']}"
                    logger.experiment.add_image(tag, it["image"], step, dataformats="HW")
                    logger.experiment.add_text(tag, it["caption"], step)
                wrote_native = True
            elif isinstance(logger, WandbLogger):
                logger.log_image(key=f"{stage}/images", images=[it["image"] for it in items], step=step,
                                 caption=[it["caption"] for it in items])
                wrote_native = True
        if not wrote_native:
            from PIL import Image, PngImagePlugin

            log_dir = trainer.log_dir or trainer.default_root_dir
            out_dir = Path(log_dir) / "images"
            out_dir.mkdir(parents=True, exist_ok=True)
            for it in items:
                path = out_dir / f"{stage}_epoch{trainer.current_epoch:03d}_step{step:07d}_{it['tag']}.png"
                info = PngImagePlugin.PngInfo()
                info.add_text("Title", it["tag"])
                info.add_text("Description", it["caption"])
                with atomic_write(path) as tmp:
                    Image.fromarray(it["image"]).save(tmp, format="PNG", pnginfo=info)
                self.saved_files.append(path)


# --------------------------------------------------------------------------------------------
class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` for equinet's run folders: ``dirpath`` defaults to ``<default_root_dir>/checkpoints``.

    ``resuming``: set (by the CLI) when the fit resumes from this folder's own checkpoint; the
    folder is then expected to hold checkpoints, so Lightning's "directory is not empty" warning,
    which otherwise flags two runs sharing a folder, is skipped. Validating/testing a checkpoint
    (often another run's) restores none of its best/last bookkeeping: that only matters to a fit.
    """

    resuming: bool = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._stage = stage
        if self.dirpath is None:  # one place per run folder (Lightning's default: the logger's version folder)
            self.dirpath = str(Path(trainer.default_root_dir) / "checkpoints")
        with warnings.catch_warnings():
            if self.resuming:
                warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
            super().setup(trainer, pl_module, stage)

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        if getattr(self, "_stage", "fit") == "fit":
            super().load_state_dict(state_dict)


class ResumableRNG(Callback):
    """Saves the torch (CPU and CUDA), NumPy and Python RNG states of every rank in each checkpoint.

    Lightning restores model, optimiser, scheduler and loop state but not the random number
    generators; a resumed run would then shuffle, augment or Gumbel-sample (LPS) differently from
    an uninterrupted one. Stored as tensors and tuples of ints, so checkpoints still load with
    ``torch.load(weights_only=True)``. Under DDP every rank's states are gathered when the
    checkpoint is made (``per_rank``, keyed by global rank) and each rank restores its own on
    resume; the top-level entries are global rank 0's (what older checkpoints hold). A resume on a
    different number of ranks restores rank 0's states on ranks the checkpoint does not have.
    """

    def __init__(self) -> None:
        self._rank = 0
        self._world_size = 1

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._rank, self._world_size = int(trainer.global_rank), int(trainer.world_size)

    @staticmethod
    def _local_state() -> Dict[str, Any]:
        np_state = np.random.get_state()
        state: Dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                      "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
            "python": random.getstate(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def state_dict(self) -> Dict[str, Any]:
        local = self._local_state()
        dist = torch.distributed
        if self._world_size > 1 and dist.is_available() and dist.is_initialized():
            # every rank makes the checkpoint (only rank 0 writes it), so this collective is matched
            gathered: List[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, local)
            per_rank = {rank: s for rank, s in enumerate(gathered)}
        else:
            per_rank = {self._rank: local}
        state = dict(per_rank.get(0, local))
        state["per_rank"] = per_rank
        return state

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        own = state_dict.get("per_rank", {}).get(self._rank, state_dict)
        torch.set_rng_state(own["torch"])
        n = own["numpy"]
        np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                             n["cached_gaussian"]))
        version, internal, gauss = own["python"]
        random.setstate((version, tuple(internal), gauss))
        cuda = own.get("cuda")
        if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


def find_callback(trainer: Optional[pl.Trainer], cls: type) -> Optional[Callback]:
    """The first callback of type ``cls`` attached to ``trainer`` (or ``None``)."""
    if trainer is None:
        return None
    return next((cb for cb in trainer.callbacks if isinstance(cb, cls)), None)

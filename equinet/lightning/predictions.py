"""``equinet predict`` writes its reconstructions in the field's file formats, into the run folder.

- fastMRI (and any data organised in volumes): ``reconstructions/<fname>.h5`` holding one dataset
  ``reconstruction`` (slices, H, W) float32 in original units, slices in order -- the layout
  ``fastmri.save_reconstructions`` writes for the leaderboard and ``fastmri.evaluate`` reads.
- LoDoPaB-CT: one ``reconstructions/reconstruction_<part>.hdf5`` per part, dataset ``data``
  (N, H, W) float32 in the order of the part's samples (``ground_truth_<part>_NNN.hdf5`` row ``r``
  is sample ``128 NNN + r``) and dataset ``sample`` (N,) naming each row's sample.

Every rank streams its predictions to its own part file while predicting (memory stays flat on a
whole validation set); rank 0 then merges them volume by volume, drops the copies the distributed
sampler pads with, and swaps the complete folder in (a half-written folder is never left behind).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple

import h5py
import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.callbacks import BasePredictionWriter

from equinet.files import atomic_directory
from equinet.lightning.evaluation import batch_keys

log = logging.getLogger("equinet.predictions")

FORMATS = ("auto", "fastmri", "lodopab")
LODOPAB_NAME = re.compile(r"^ground_truth_(train|validation|test)_(\d+):(\d+)$")
# (fname, slice_num) -> (part file, row)
Index = Dict[Tuple[str, int], Tuple[int, int]]


class ReconstructionWriter(BasePredictionWriter):
    """Writes the de-normalised reconstructions of ``predict`` in fastMRI's or LoDoPaB's format.

    Args:
        output_dir: where the files go; default ``<run folder>/reconstructions`` (the CLI adds
            ``-<tag>`` for ``--run.tag``). Replaced as a whole by the next prediction into it.
        format: ``fastmri`` (one ``<fname>.h5`` per volume), ``lodopab`` (one HDF5 per part), or
            ``auto``: ``lodopab`` for a :class:`~equinet.data.LoDoPaBDataModule`, else ``fastmri``.
    """

    def __init__(
        self, output_dir: Optional[str] = None, format: Literal["auto", "fastmri", "lodopab"] = "auto"
    ):
        super().__init__(write_interval="batch")
        if format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
        self.output_dir = output_dir
        self.format = format
        self.folder: Optional[Path] = None
        self.written: List[Path] = []
        self._part: Optional[h5py.File] = None

    def _parts_folder(self) -> Path:
        assert self.folder is not None
        return self.folder.with_name(f".{self.folder.name}.parts")

    def on_predict_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.folder = Path(self.output_dir or Path(trainer.default_root_dir) / "reconstructions")
        self.written = []
        parts = self._parts_folder()
        parts.mkdir(parents=True, exist_ok=True)
        self._part = h5py.File(parts / f"rank{trainer.global_rank}.h5", "w")

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: Any,
        batch_indices: Optional[Sequence[int]],
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        if not (isinstance(prediction, dict) and {"output", "fname", "slice_num"} <= set(prediction)):
            raise TypeError(
                "ReconstructionWriter needs predict_step to return {'output', 'fname', 'slice_num'} "
                "(as ReconstructionModule does)"
            )
        output = prediction["output"].detach().float().cpu().numpy()
        images = output.reshape(output.shape[0], *output.shape[-2:])
        keys = batch_keys(prediction["fname"], prediction["slice_num"], len(images))
        _append(self._part, images, keys)

    def on_predict_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_predict_epoch_end(trainer, pl_module)
        if self._part is not None:
            self._part.close()
            self._part = None
        trainer.strategy.barrier("equinet-predictions-written")
        if trainer.is_global_zero:
            parts = [self._parts_folder() / f"rank{rank}.h5" for rank in range(trainer.world_size)]
            fmt = self.resolve_format(trainer.datamodule)
            with atomic_directory(self.folder, replace=True) as tmp:
                if fmt == "lodopab":
                    names = write_lodopab(parts, tmp, _samples_per_file(trainer.datamodule))
                else:
                    names = write_fastmri(parts, tmp)
            shutil.rmtree(self._parts_folder(), ignore_errors=True)
            self.written = [self.folder / name for name in names]
        trainer.strategy.barrier("equinet-predictions-merged")

    def resolve_format(self, datamodule: Any) -> str:
        if self.format != "auto":
            return self.format
        from equinet.data import LoDoPaBDataModule

        return "lodopab" if isinstance(datamodule, LoDoPaBDataModule) else "fastmri"


def _append(handle: h5py.File, images: np.ndarray, keys: List[Tuple[str, int]]) -> None:
    """Append a batch to a rank's part file (growing datasets ``output``, ``fname``, ``slice_num``)."""
    if "output" not in handle:
        handle.create_dataset(
            "output",
            shape=(0, *images.shape[1:]),
            maxshape=(None, *images.shape[1:]),
            dtype="float32",
            chunks=(1, *images.shape[1:]),
        )
        handle.create_dataset("fname", shape=(0,), maxshape=(None,), dtype=h5py.string_dtype())
        handle.create_dataset("slice_num", shape=(0,), maxshape=(None,), dtype="int64")
    start, n = handle["output"].shape[0], len(images)
    if images.shape[1:] != handle["output"].shape[1:]:
        raise ValueError(
            f"reconstructions of {keys[0][0]} are {images.shape[1:]}, the others "
            f"{handle['output'].shape[1:]}: one prediction run needs one image size"
        )
    for name in ("output", "fname", "slice_num"):
        handle[name].resize((start + n, *handle[name].shape[1:]))
    handle["output"][start:] = images
    handle["fname"][start:] = [fname for fname, _ in keys]
    handle["slice_num"][start:] = [slice_num for _, slice_num in keys]


def _index(files: List[h5py.File]) -> Index:
    """Where each ``(fname, slice_num)`` is; the first copy wins (DDP pads with repeated samples)."""
    index: Index = {}
    for p, handle in enumerate(files):
        if "output" not in handle:
            continue
        names = handle["fname"].asstr()[()]
        for row, (fname, slice_num) in enumerate(zip(names, handle["slice_num"][()].tolist())):
            index.setdefault((fname, int(slice_num)), (p, row))
    return index


def _open_all(parts: List[Path]) -> List[h5py.File]:
    return [h5py.File(p, "r") for p in parts if p.is_file()]


def submission_name(fname: str) -> str:
    """``file1000001.h5`` stays; other sample names become one file name ending in ``.h5``."""
    name = fname.replace("/", "__").replace(os.sep, "__")
    return name if name.endswith(".h5") else f"{name}.h5"


def write_fastmri(parts: List[Path], out: Path) -> List[str]:
    """One ``<fname>.h5`` per volume with dataset ``reconstruction`` (slices in order)."""
    files = _open_all(parts)
    try:
        index = _index(files)
        volumes: Dict[str, List[Tuple[int, Tuple[int, int]]]] = {}
        for (fname, slice_num), where in index.items():
            volumes.setdefault(fname, []).append((slice_num, where))
        names, incomplete = [], []
        for fname in sorted(volumes):
            entries = sorted(volumes[fname])
            volume = np.stack([files[p]["output"][row] for _, (p, row) in entries])
            name = submission_name(fname)
            with h5py.File(out / name, "w") as hf:
                hf.create_dataset("reconstruction", data=volume)
            names.append(name)
            if [s for s, _ in entries] != list(range(len(entries))):
                incomplete.append(fname)
        if incomplete:
            log.warning(
                "%d volumes have only some of their slices (limit_predict_batches?); fastmri.evaluate "
                "compares whole volumes: %s",
                len(incomplete),
                ", ".join(incomplete[:5]),
            )
        return names
    finally:
        for handle in files:
            handle.close()


def write_lodopab(parts: List[Path], out: Path, samples_per_file: int) -> List[str]:
    """One ``reconstruction_<part>.hdf5`` per LoDoPaB part: ``data`` in sample order, ``sample``."""
    files = _open_all(parts)
    try:
        by_part: Dict[str, List[Tuple[int, Tuple[int, int]]]] = {}
        for (fname, _), where in _index(files).items():
            match = LODOPAB_NAME.match(fname)
            if match is None:
                raise ValueError(
                    f"{fname!r} is not a LoDoPaB sample name (ground_truth_<part>_NNN:<row>); "
                    "use --predictions.format fastmri for these data"
                )
            part, file_index, row = match.group(1), int(match.group(2)), int(match.group(3))
            by_part.setdefault(part, []).append((file_index * samples_per_file + row, where))
        names = []
        for part in sorted(by_part):
            entries = sorted(by_part[part])
            name = f"reconstruction_{part}.hdf5"
            with h5py.File(out / name, "w") as hf:
                hf.create_dataset("data", data=np.stack([files[p]["output"][row] for _, (p, row) in entries]))
                hf.create_dataset("sample", data=np.array([s for s, _ in entries], dtype=np.int64))
            names.append(name)
        return names
    finally:
        for handle in files:
            handle.close()


def _samples_per_file(datamodule: Any) -> int:
    from equinet.data.lodopab import LODOPAB_SAMPLES_PER_FILE

    layout = getattr(datamodule, "layout", None)
    return int(getattr(layout, "samples_per_file", LODOPAB_SAMPLES_PER_FILE))


__all__ = ["FORMATS", "ReconstructionWriter", "submission_name", "write_fastmri", "write_lodopab"]

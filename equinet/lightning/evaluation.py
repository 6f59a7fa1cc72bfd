"""Per-volume evaluation that is exact under DDP, and the run-directory reports.

Metrics follow ``fastmri.evaluate`` (and so the APS-U paper): NMSE, PSNR and SSIM are computed
per *volume* (all slices of one ``fname``) in original units and then averaged over volumes.
Every slice contributes a small record -- sums that add up over a volume plus the slice SSIM --
so the volume metrics are exact whatever the batching, and under DDP the records of all ranks
are gathered and de-duplicated by ``(fname, slice_num)``: Lightning's ``DistributedSampler``
pads the last batch with repeated samples, which a plain ``sync_dist`` mean would count twice.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist

from equinet.files import atomic_write_text
from equinet.metrics import (
    dpsnr_from_sse,
    dpsnr_shifts,  # noqa: F401  (the seeded shifts of a volume, re-exported for the callbacks)
    metric_tensor,
    nmse_from_terms,
    psnr_from_terms,
    slice_terms,
    volume_shift,  # noqa: F401
)

Record = Dict[str, Any]

# Volume means over these per-volume columns are what gets logged and summarised.
RECON_COLUMNS = ("nmse", "psnr", "ssim")
EQUIVARIANCE_COLUMNS = ("equivariance_nmse", "equivariance_ssim")


# --------------------------------------------------------------------------------------------
# per-slice records
# --------------------------------------------------------------------------------------------
def _as_list(x: Any, n: int) -> List[Any]:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().reshape(-1).tolist()
    elif isinstance(x, (int, float, str)):
        x = [x] * n
    return list(x)


def batch_keys(fname: Sequence[str] | str, slice_num: Any, n: int) -> List[Tuple[str, int]]:
    """``(fname, slice_num)`` of every sample of a collated batch of ``n`` samples."""
    names = [fname] * n if isinstance(fname, str) else list(fname)
    slices = [int(s) for s in _as_list(slice_num, n)]
    if len(names) != n or len(slices) != n:
        raise ValueError(f"batch has {n} images but {len(names)} fnames and {len(slices)} slice numbers")
    return list(zip(names, slices))


def denormalise(x: torch.Tensor, mean: Any, std: Any) -> torch.Tensor:
    """``x * std + mean`` per sample (``x`` is ``(B, C, *spatial)``; mean/std scalars or ``(B,)``)."""
    shape = (-1,) + (1,) * (x.dim() - 1)
    mean = torch.as_tensor(mean, dtype=x.dtype, device=x.device).reshape(shape) if not isinstance(mean, (int, float)) else mean
    std = torch.as_tensor(std, dtype=x.dtype, device=x.device).reshape(shape) if not isinstance(std, (int, float)) else std
    return x * std + mean


def slice_records(
    keys: Sequence[Tuple[str, int]],
    target: torch.Tensor,
    output: torch.Tensor,
    max_value: Any,
    prefix: str = "",
) -> List[Record]:
    """One record per image: ``sse``, ``ref_sq`` (= ||target||^2), ``numel``, ``ssim``, ``max_value``.

    ``target``/``output`` are ``(B, 1, H, W)`` in original units. The terms are
    :func:`equinet.metrics.slice_terms` (float64, on the tensors' device), so a volume's NMSE and
    PSNR from their sums and its SSIM, the mean of the slices', equal fastMRI's on the stacked
    volume. ``prefix`` namespaces the fields (``"equivariance_"`` for the shift metrics).
    """
    recorder = SliceRecords()
    recorder.add([f for f, _ in keys], [s for _, s in keys], slice_values(target, output, max_value, prefix))
    return recorder.to_host()


def slice_values(target: torch.Tensor, output: torch.Tensor, max_value: Any, prefix: str = "") -> Dict[str, Any]:
    """The fields of :func:`slice_records` as device tensors ``(B,)`` (nothing read to the host)."""
    terms = slice_terms(target, output, per_sample(max_value, target), with_ssim=target.dim() >= 4)
    values: Dict[str, Any] = {"max_value": per_sample(max_value, target)}
    values.update({f"{prefix}{k}": terms[k] for k in ("sse", "ref_sq", "numel", "ssim")})
    return values


def per_sample(value: Any, like: torch.Tensor) -> torch.Tensor:
    """A scalar or per-sample value as a float64 ``(B,)`` tensor on ``like``'s device."""
    return metric_tensor(value, like.device).reshape(-1).expand(like.shape[0])


class SliceRecords:
    """Per-slice records of an epoch kept on the device and read to the host once, at its end.

    :meth:`add` takes a batch's names, slice numbers and fields (device tensors ``(B,)`` or
    ``(B, n)``, or plain values shared by the batch) without reading anything back, so an
    evaluation step does no host sync; :meth:`to_host` makes the records (python numbers).
    """

    def __init__(self) -> None:
        self._parts: List[Tuple[Any, Any, Dict[str, Any]]] = []

    def __len__(self) -> int:
        return len(self._parts)

    def add(self, fname: Any, slice_num: Any, values: Mapping[str, Any]) -> None:
        self._parts.append((fname, slice_num, dict(values)))

    def update(self, values: Mapping[str, Any]) -> None:
        """Add fields to the batch added last."""
        self._parts[-1][2].update(values)

    def clear(self) -> None:
        self._parts = []

    def to_host(self) -> List[Record]:
        records: List[Record] = []
        for fname, slice_num, values in self._parts:
            n = next((v.shape[0] for v in values.values() if isinstance(v, torch.Tensor) and v.dim()), None)
            if n is None:
                n = len(fname) if not isinstance(fname, str) else 1
            keys = batch_keys(fname, slice_num, n)
            host = {k: (v.detach().cpu().tolist() if isinstance(v, torch.Tensor) and v.dim() else [v] * n)
                    for k, v in values.items()}
            for i, (f, s) in enumerate(keys):
                records.append({"fname": f, "slice_num": s, **{k: host[k][i] for k in host}})
        return records


# --------------------------------------------------------------------------------------------
# gathering across ranks
# --------------------------------------------------------------------------------------------
def gather_unique(records: "List[Record] | SliceRecords") -> Tuple[List[Record], int]:
    """All ranks' records, one per ``(fname, slice_num)``, sorted; and how many duplicates were dropped.

    Under DDP this is a collective (every rank must call it); records are small (a few numbers per
    slice), so ``all_gather_object`` costs little next to the forward passes that produced them.
    """
    if isinstance(records, SliceRecords):
        records = records.to_host()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        parts: List[Optional[List[Record]]] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, records)
        records = [r for part in parts for r in (part or [])]
    unique: Dict[Tuple[str, int], Record] = {}
    for r in records:
        unique.setdefault((r["fname"], int(r["slice_num"])), r)
    return [unique[k] for k in sorted(unique)], len(records) - len(unique)


def merge_records(*tables: Iterable[Record]) -> List[Record]:
    """Join per-slice tables on ``(fname, slice_num)`` (later tables add/override fields)."""
    merged: Dict[Tuple[str, int], Record] = {}
    for table in tables:
        for r in table:
            merged.setdefault((r["fname"], int(r["slice_num"])), {}).update(r)
    return [merged[k] for k in sorted(merged)]


# --------------------------------------------------------------------------------------------
# per-volume metrics
# --------------------------------------------------------------------------------------------
def volume_metrics(records: List[Record]) -> List[Record]:
    """Per-volume NMSE/PSNR/SSIM (and the ``equivariance_*`` ones where present), one row per fname.

    NMSE and PSNR come from the volume's summed squared errors, SSIM is the mean of the slices'
    SSIM -- exactly ``fastmri.evaluate`` on the stacked volume, with ``maxval`` the volume's
    ``max_value`` (its data range in original units).
    """
    by_volume: Dict[str, List[Record]] = {}
    for r in records:
        by_volume.setdefault(r["fname"], []).append(r)
    rows = []
    for fname in sorted(by_volume):
        rs = sorted(by_volume[fname], key=lambda r: int(r["slice_num"]))
        row: Record = {"fname": fname, "slices": len(rs), "max_value": max(r["max_value"] for r in rs)}
        if "sse" in rs[0]:
            sse = math.fsum(r["sse"] for r in rs)
            row["nmse"] = nmse_from_terms(sse, math.fsum(r["ref_sq"] for r in rs))
            row["psnr"] = psnr_from_terms(sse, sum(r["numel"] for r in rs), row["max_value"])
            row["ssim"] = float(np.mean([r["ssim"] for r in rs]))
            if "loss" in rs[0]:
                row["loss"] = float(np.mean([r["loss"] for r in rs]))
        if "equivariance_sse" in rs[0]:
            row["equivariance_nmse"] = nmse_from_terms(math.fsum(r["equivariance_sse"] for r in rs),
                                                       math.fsum(r["equivariance_ref_sq"] for r in rs))
            row["equivariance_ssim"] = float(np.mean([r["equivariance_ssim"] for r in rs]))
            row["shift"] = f"({rs[0]['shift_h']}, {rs[0]['shift_w']})"
        if "dpsnr_sse" in rs[0]:
            # per image (the paper's text): the worst of the volume's slices; per volume (the
            # reference code): every slice shifted alike, PSNR of the volume, the worst shift
            row["worst_dpsnr_image"] = float(max(r["worst_dpsnr_image"] for r in rs))
            base = math.fsum(r["dpsnr_base_sse"] for r in rs)
            shifted = [math.fsum(r["dpsnr_sse"][j] for r in rs) for j in range(len(rs[0]["dpsnr_sse"]))]
            worst = dpsnr_from_sse(torch.tensor([base]), torch.tensor(shifted)).amax()
            row["worst_dpsnr_volume"] = float(worst)
        rows.append(row)
    return rows


def summarise(volumes: List[Record], images: List[Record]) -> Dict[str, float]:
    """Dataset-level numbers: means over volumes; the worst-case |dPSNR| in both conventions
    (:mod:`equinet.metrics.equivariance`): ``worst_dpsnr_image``, the largest over images of each
    image's worst (the paper's Table 2 as its text defines it; the headline), and
    ``worst_dpsnr_volume``, the largest over volumes (the paper's reference code); ``*_mean``:
    the mean over images / volumes of the same per-item worst."""
    out: Dict[str, float] = {}
    for col in RECON_COLUMNS + EQUIVARIANCE_COLUMNS + ("loss",):
        vals = [v[col] for v in volumes if col in v]
        if vals:
            out[col] = float(np.mean(vals))
    for name, rows in (("worst_dpsnr_image", images), ("worst_dpsnr_volume", volumes)):
        vals = [r[name] for r in rows if name in r]
        if vals:
            out[name] = float(np.max(vals))
            out[f"{name}_mean"] = float(np.mean(vals))
    return out


def group_means(
    volumes: List[Record], columns: Sequence[str] = RECON_COLUMNS + EQUIVARIANCE_COLUMNS
) -> Dict[str, float]:
    """Means over the volumes of each ``group`` (e.g. fastMRI's PD / PDFS), as ``<column>_<group>``.

    The APS-U paper's Table 1 reports every metric separately for the two knee acquisitions.
    """
    out: Dict[str, float] = {}
    groups = sorted({str(v["group"]) for v in volumes if v.get("group") not in (None, "")})
    for group in groups:
        for col in columns:
            vals = [float(v[col]) for v in volumes
                    if str(v.get("group")) == group and v.get(col) not in (None, "")]
            if vals:
                out[f"{col}_{group.lower()}"] = float(np.mean(vals))
    return out


# --------------------------------------------------------------------------------------------
# reports in the run directory
# --------------------------------------------------------------------------------------------
def _csv_text(rows: List[Record]) -> str:
    columns: List[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def write_report(
    run_dir: Path | str,
    stage: str,
    volumes: List[Record],
    images: List[Record],
    summary: Mapping[str, float],
    meta: Mapping[str, Any],
) -> Dict[str, Path]:
    """Write ``<stage>_volumes.csv``, ``<stage>_images.csv`` (if any) and ``<stage>_summary.md``."""
    run_dir = Path(run_dir)
    paths = {"volumes": run_dir / f"{stage}_volumes.csv", "summary": run_dir / f"{stage}_summary.md"}
    atomic_write_text(paths["volumes"], _csv_text(volumes))
    if images:
        paths["images"] = run_dir / f"{stage}_images.csv"
        atomic_write_text(paths["images"], _csv_text(images))
    lines = [f"# equinet {stage} summary", ""]
    lines += [f"- {k}: {_fmt(v)}" for k, v in meta.items()]
    lines += ["", "## Means over volumes (fastMRI conventions)", "", "| metric | value |", "| --- | --- |"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in summary.items()]
    if volumes:
        cols = [c for c in volumes[0] if c not in ("max_value",)]
        lines += ["", "## Per volume", "", "| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
        lines += ["| " + " | ".join(_fmt(v.get(c, "")) for c in cols) + " |" for v in volumes]
    atomic_write_text(paths["summary"], "\n".join(lines) + "\n")
    return paths

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
import hashlib
import io
import math
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist

from equinet.files import atomic_write_text
from equinet.metrics import dpsnr_from_sse, random_shifts, ssim
from equinet.sampling.adaptive import circular_shift_per_sample  # noqa: F401  (re-exported: T_k per sample)

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

    ``target``/``output`` are ``(B, 1, H, W)`` in original units. The sums are float64, so a
    volume's NMSE ``sum sse / sum ref_sq`` and PSNR ``10 log10(max^2 / (sum sse / sum numel))``
    equal fastMRI's on the stacked volume; SSIM is fastMRI's (scikit-image, 7x7) per slice.
    ``prefix`` namespaces the fields (``"equivariance_"`` for the shift metrics).
    """
    t = target.detach().to(torch.float64).flatten(1)
    o = output.detach().to(torch.float64).flatten(1)
    sse = ((t - o) ** 2).sum(dim=1).cpu().numpy()
    ref_sq = (t**2).sum(dim=1).cpu().numpy()
    maxvals = [float(m) for m in _as_list(max_value, len(keys))]
    t_img = target.detach().to(torch.float64).cpu().numpy()
    o_img = output.detach().to(torch.float64).cpu().numpy()
    records = []
    for i, (fname, slice_num) in enumerate(keys):
        gt, pred = t_img[i].reshape(-1, *t_img.shape[-2:]), o_img[i].reshape(-1, *o_img.shape[-2:])
        slice_ssim = ssim(gt, pred, maxvals[i]) if min(gt.shape[-2:]) >= 7 else float("nan")
        records.append({
            "fname": fname,
            "slice_num": slice_num,
            "max_value": maxvals[i],
            f"{prefix}sse": float(sse[i]),
            f"{prefix}ref_sq": float(ref_sq[i]),
            f"{prefix}numel": int(t.shape[1]),
            f"{prefix}ssim": slice_ssim,
        })
    return records


# --------------------------------------------------------------------------------------------
# gathering across ranks
# --------------------------------------------------------------------------------------------
def gather_unique(records: List[Record]) -> Tuple[List[Record], int]:
    """All ranks' records, one per ``(fname, slice_num)``, sorted; and how many duplicates were dropped.

    Under DDP this is a collective (every rank must call it); records are small (a few numbers per
    slice), so ``all_gather_object`` costs little next to the forward passes that produced them.
    """
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
            row["nmse"] = sse / math.fsum(r["ref_sq"] for r in rs)
            mse = sse / sum(r["numel"] for r in rs)
            row["psnr"] = 10 * math.log10(row["max_value"] ** 2 / mse) if mse > 0 else float("inf")
            row["ssim"] = float(np.mean([r["ssim"] for r in rs]))
            if "loss" in rs[0]:
                row["loss"] = float(np.mean([r["loss"] for r in rs]))
        if "equivariance_sse" in rs[0]:
            row["equivariance_nmse"] = math.fsum(r["equivariance_sse"] for r in rs) / math.fsum(
                r["equivariance_ref_sq"] for r in rs)
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
# seeded shifts, vectorised per-sample circular shifts
# --------------------------------------------------------------------------------------------
def _generator(*key: Any) -> torch.Generator:
    digest = hashlib.sha256(":".join(str(k) for k in key).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def volume_shift(seed: int, fname: str, max_shift: int = 16, dim: int = 2) -> torch.Tensor:
    """The one random shift in ``[-max_shift, max_shift]^dim`` of volume ``fname`` (seeded, (dim,)).

    A function of ``(seed, fname)`` only, so the shift is the same whatever the batch size,
    sample order or number of DDP ranks.
    """
    return random_shifts(1, dim, max_shift, _generator("volume", seed, fname))[0]


def dpsnr_shifts(seed: int, fname: str, n: int, max_shift: int = 16, dim: int = 2) -> torch.Tensor:
    """The ``n`` random shifts ``(n, dim)`` of the worst-case |dPSNR| of volume ``fname``, seeded by
    ``(seed, fname)``. Every slice of the volume gets the same ``n`` shifts, so one set of forward
    passes scores both conventions: each image over its ``n`` random shifts, and the volume."""
    return random_shifts(n, dim, max_shift, _generator("dpsnr", seed, fname))


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

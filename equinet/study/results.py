"""The study's ground floor for results: where a variant's run and its reports live, the columns
of ``results.csv`` (each defined once, with its help text and how it is read), and reading one
variant's row.

A column is a :class:`Column` in :data:`RESULT_COLUMNS`: adding a study metric is its function
(in :mod:`equinet.metrics`, written into the run's reports by ``equinet test``) plus one entry
there; ``results.csv``, the tables of ``results.md`` and its column list follow from it.
"""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np
import yaml

from equinet.files import atomic_write_text
from equinet.lightning.evaluation import group_means
from equinet.lightning.runs import CHECKPOINTS, LATEST, report_name
from equinet.study.config import INPUT, NETWORK, get_dotted

STUDY_JSON = "study.json"  # per run folder: what the study measured there (cost, training time)
EXAMPLE_FILE = "study_example.npz"  # per run folder: the shift example (the APS-U paper's Fig. 4)


# --------------------------------------------------------------------------------------------
# where a variant's run and its reports live (the one place that knows the run-folder layout)
# --------------------------------------------------------------------------------------------
class RunLayout:
    """Run folders of a study: ``<study>/runs/<variant>`` (the equinet CLI's ``--run.name``), with
    the test reports ``test_*`` and those of tagged evaluations ``test-<tag>_*`` (``--run.tag``)."""

    def __init__(self, study_dir: os.PathLike) -> None:
        self.study_dir = Path(study_dir)
        self.runs = self.study_dir / "runs"

    def folder(self, variant: str) -> Path:
        return self.runs / variant

    def location_args(self, variant: str) -> List[str]:
        """What puts an ``equinet fit|test`` into the variant's run folder."""
        return ["--trainer.default_root_dir", str(self.runs), "--run.name", variant]

    def evaluation_args(self, variant: str, tag: str) -> List[str]:
        """A tagged evaluation (the OOD test) of the variant's last checkpoint, into its folder."""
        return self.location_args(variant) + ["--run.tag", tag, "--ckpt_path", "last"]

    def report(self, variant: str, kind: str, tag: Optional[str] = None) -> Path:
        """``test_<kind>`` / ``test-<tag>_<kind>`` (``volumes.csv``, ``images.csv``, ``summary.md``)."""
        return self.folder(variant) / f"{report_name('test', tag)}_{kind}"

    def last_checkpoint(self, variant: str) -> Path:
        return self.folder(variant) / CHECKPOINTS / "last.ckpt"

    def config(self, variant: str, tag: Optional[str] = None) -> Path:
        return self.study_dir / "configs" / (f"{variant}-{tag}.yaml" if tag else f"{variant}.yaml")

    def log(self, variant: str) -> Path:
        """What a study worker printed while it ran the variant."""
        return self.study_dir / "logs" / f"{variant}.log"

    def variants(self) -> List[str]:
        """The run folders present (``latest``, the group's pointer to the newest, is not one)."""
        if not self.runs.is_dir():
            return []
        return sorted(
            p.name
            for p in self.runs.iterdir()
            if p.is_dir() and not p.is_symlink() and p.name != LATEST and not p.name.startswith(".")
        )


def read_json(path: Path) -> Dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def update_json(path: Path, **values: Any) -> Dict[str, Any]:
    """Merge ``values`` into the JSON file at ``path`` (written atomically)."""
    data = read_json(path)
    data.update(values)
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
    return data


def read_csv(path: Path) -> List[Dict[str, Any]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _number(text: Any) -> Any:
    if not isinstance(text, str) or text == "":
        return text
    try:
        return float(text) if any(c in text for c in ".eEn") else int(text)
    except ValueError:
        return text


def summary_values(path: Path) -> Dict[str, float]:
    """``| metric | value |`` rows of a ``test_summary.md``."""
    values: Dict[str, float] = {}
    if path.is_file():
        for match in re.finditer(r"^\| ([A-Za-z0-9_]+) \| ([-+0-9.eEinfa]+) \|$", path.read_text(), re.M):
            try:
                values[match.group(1)] = float(match.group(2))
            except ValueError:
                pass
    return values


# --------------------------------------------------------------------------------------------
# one variant's run folder, as the columns read it
# --------------------------------------------------------------------------------------------
class RunReports:
    """The files of one variant's run folder that the columns read, each read once."""

    def __init__(self, layout: RunLayout, variant: str) -> None:
        self.layout, self.variant = layout, variant
        self._csv: Dict[Tuple[str, Optional[str]], List[Dict[str, Any]]] = {}

    def _table(self, kind: str, tag: Optional[str]) -> List[Dict[str, Any]]:
        if (kind, tag) not in self._csv:
            self._csv[kind, tag] = read_csv(self.layout.report(self.variant, kind, tag))
        return self._csv[kind, tag]

    def volumes(self, tag: Optional[str] = None) -> List[Dict[str, Any]]:
        """Rows of ``test_volumes.csv`` (``tag``: of the tagged test, e.g. ``ood``)."""
        return self._table("volumes.csv", tag)

    def images(self, tag: Optional[str] = None) -> List[Dict[str, Any]]:
        """Rows of ``test_images.csv``."""
        return self._table("images.csv", tag)

    def summary(self, tag: Optional[str] = None) -> Dict[str, float]:
        return summary_values(self.layout.report(self.variant, "summary.md", tag))

    @cached_property
    def info(self) -> Dict[str, Any]:
        """The run's ``study.json`` (cost, training time, fit attempts)."""
        return read_json(self.layout.folder(self.variant) / STUDY_JSON)

    @cached_property
    def config(self) -> Dict[str, Any]:
        """How the run was trained: its own ``config.yaml`` (written by ``equinet fit``), else the study's."""
        folder = self.layout.folder(self.variant)
        path = next((p for p in (folder / "config.yaml", self.layout.config(self.variant)) if p.is_file()), None)
        return yaml.safe_load(path.read_text()) if path is not None else {}


@dataclass(frozen=True)
class VolumeMean:
    """Reads the mean over the test volumes of ``column`` of ``test_volumes.csv`` (``tag``: of a
    tagged test, e.g. ``ood``); a :class:`Column` with ``groups`` also gets each group's mean."""

    column: str
    tag: Optional[str] = None

    def __call__(self, run: RunReports) -> Optional[float]:
        vals = [float(v[self.column]) for v in run.volumes(self.tag) if v.get(self.column) not in (None, "")]
        return float(np.mean(vals)) if vals else None

    def groups(self, run: RunReports) -> Dict[str, float]:
        """``group -> mean`` over the volumes of each acquisition group (fastMRI's PD / PDFS)."""
        return {
            key.rpartition("_")[2]: value
            for key, value in group_means(run.volumes(self.tag), (self.column,)).items()
        }


def cost_value(key: str) -> Callable[[RunReports], Any]:
    """Reads ``key`` of the cost the study measured beside the reference (``study.json``)."""
    return lambda run: (run.info.get("cost") or {}).get(key)


def describe(config: Mapping[str, Any], variant: str) -> str:
    """A short human description of the variant's network (and training) for the tables."""
    network = get_dotted(config, NETWORK) or {}
    cls = str(network.get("class_path", "")).rpartition(".")[2]
    args = network.get("init_args") or {}
    if variant == INPUT:
        return "the network input (no network)"
    if cls == "UNet":
        kwargs = args.get("sampling_kwargs") or {}
        text = f"U-Net, {args.get('sampling', 'maxpool')}" + (
            "(" + ", ".join(f"{k}={v}" for k, v in kwargs.items()) + ")" if kwargs else ""
        )
    elif cls == "LiftediUNet":
        text = "iUNet" + (", adaptive grid" if args.get("adaptive_resampling") else "")
    else:
        text = cls or "?"
    shift = get_dotted(config, "model.shift_augmentation")
    if shift:
        text += f", random shifts +-{shift} (DA)"
    return text


# the worst-case |dPSNR| over images, by the name each version of the test summary uses
WORST_DPSNR_KEYS = ("worst_dpsnr_image", "worst_dpsnr_max")


def worst_dpsnr_over_images(run: RunReports) -> Optional[float]:
    """The paper's worst case: max over images of each image's worst |dPSNR| (exact from the
    per-image table; else the summary, under the name its version uses)."""
    per_image = [
        float(value)
        for r in run.images()
        for value in [r.get("worst_dpsnr_image", r.get("worst_dpsnr"))]  # (the column's old name)
        if value not in (None, "")
    ]
    if per_image:
        return max(per_image)
    summary = run.summary()
    return next((summary[k] for k in WORST_DPSNR_KEYS if k in summary), None)


def train_minutes(run: RunReports) -> Optional[float]:
    seconds = run.info.get("train_seconds")
    return None if seconds is None else seconds / 60


# --------------------------------------------------------------------------------------------
# the columns of results.csv
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Column:
    """One column of ``results.csv``: its name, help text, how it is read from a run folder, and
    where ``results.md`` shows it."""

    name: str
    help: str
    read: Callable[[RunReports], Any]
    table: str = ""  # the results.md table that shows it: main, worst, ood, cost ("" none)
    header: str = ""  # its header in that table
    fmt: str = "text"  # how that table prints it: text, sci, db, ssim, ratio, int, min
    place: int = 0  # its position among that table's columns (ties: the order of RESULT_COLUMNS)
    groups: bool = False  # also ``<name>_<group>`` per acquisition group (``read`` is a VolumeMean)
    trained: bool = False  # a property of a trained network: empty on the input row


RESULT_COLUMNS: Tuple[Column, ...] = (
    Column("variant", "the study variant (run folder `runs/<variant>`); `input` is the network input itself",
           lambda run: run.variant),
    Column("strategy", "the network and its down/upsampling", lambda run: describe(run.config, run.variant),
           table="cost", header="network"),
    Column("params", "trainable parameters",
           lambda run: 0 if run.variant == INPUT else cost_value("params")(run),
           table="cost", header="params", fmt="int", place=1),
    Column("psnr", "reconstruction PSNR in dB, per volume (fastMRI convention), mean over test volumes",
           VolumeMean("psnr"), table="main", header="PSNR (dB)", fmt="db", place=4, groups=True),
    Column("ssim", "reconstruction SSIM (7x7, the volume's data range), mean over test volumes",
           VolumeMean("ssim"), table="main", header="SSIM", fmt="ssim", place=5, groups=True),
    Column("nmse", "reconstruction NMSE, per volume, mean over test volumes",
           VolumeMean("nmse"), table="main", header="NMSE", fmt="sci", place=3, groups=True),
    Column("eq_nmse", "shift equivariance: NMSE between T_k(G(x)) and G(T_k(x)), one random circular shift k in "
           "[-16, 16]^2 per test volume, mean over volumes (0 = exactly equivariant)",
           VolumeMean("equivariance_nmse"), table="main", header="eq. NMSE", fmt="sci", place=1, groups=True,
           trained=True),
    Column("eq_ssim", "shift equivariance: SSIM between T_k(G(x)) and G(T_k(x)) (1 = exactly equivariant)",
           VolumeMean("equivariance_ssim"), table="main", header="eq. SSIM", fmt="ssim", place=2, groups=True,
           trained=True),
    Column("eq_nmse_ood", "eq_nmse on out-of-distribution natural images through the same forward model",
           VolumeMean("equivariance_nmse", "ood"), table="ood", header="eq. NMSE", fmt="sci", trained=True),
    Column("eq_ssim_ood", "eq_ssim on the out-of-distribution images",
           VolumeMean("equivariance_ssim", "ood"), table="ood", header="eq. SSIM", fmt="ssim", trained=True),
    Column("worst_dpsnr", "worst |PSNR(G(T_k x), T_k y) - PSNR(G(x), y)| in dB over 10 random shifts per test "
           "image, and over all images", worst_dpsnr_over_images,
           table="worst", header="per image, max over images (dB)", fmt="sci", trained=True),
    Column("worst_dpsnr_volume", "the APS-U reference code's convention: per test volume, every slice shifted "
           "alike, the worst |dPSNR| of the volume's PSNR over the same random shifts; mean over volumes",
           VolumeMean("worst_dpsnr_volume"), table="worst", header="per volume, mean over volumes (dB)",
           fmt="sci", trained=True),
    Column("step_time_ratio", "training step time / the baseline's, measured alternately in one process on the "
           "same batch", cost_value("step_time_ratio"), table="cost", header="step time", fmt="ratio", place=2),
    Column("peak_mem_ratio", "peak training-step tensor memory / the baseline's (same batch; profiler allocator "
           "peaks)", cost_value("peak_mem_ratio"), table="cost", header="peak memory", fmt="ratio", place=3),
    Column("train_minutes", "wall-clock training minutes (for information: depends on the machine and its load)",
           train_minutes, table="cost", header="training (min)", fmt="min", place=4),
    Column("psnr_ood", "reconstruction PSNR on the out-of-distribution images (mean over images)",
           VolumeMean("psnr", "ood")),
    Column("ssim_ood", "reconstruction SSIM on the out-of-distribution images (mean over images)",
           VolumeMean("ssim", "ood")),
)
COLUMNS: Tuple[str, ...] = tuple(c.name for c in RESULT_COLUMNS)  # results.csv: these first, in this order
GROUP_HELP = "the same over the volumes of one acquisition (pd: CORPD_FBK, pdfs: CORPDFS_FBK)"


def table_columns(table: str) -> List[Column]:
    """The columns ``results.md`` shows in ``table``, in their places."""
    return sorted((c for c in RESULT_COLUMNS if c.table == table), key=lambda c: c.place)


def read_row(layout: RunLayout, variant: str) -> Optional[Dict[str, Any]]:
    """The results row of one variant (every column of :data:`RESULT_COLUMNS`, then the
    ``<column>_<group>`` ones), or ``None`` if its test has not finished."""
    run = RunReports(layout, variant)
    if not run.volumes():
        return None
    untrained = variant == INPUT  # the identity is trivially equivariant: nothing to compare
    row: Dict[str, Any] = {c.name: None if c.trained and untrained else c.read(run) for c in RESULT_COLUMNS}
    per_group = {c.name: (c, c.read.groups(run)) for c in RESULT_COLUMNS if c.groups}
    groups = sorted({g for _, values in per_group.values() for g in values})
    for group in groups:
        for name, (column, values) in per_group.items():
            if group in values:
                row[f"{name}_{group}"] = None if column.trained and untrained else values[group]
    return row

"""``equinet study collect DIR``: results.csv, results.md and the figures from the run folders there.

Rows are read from the ordinary run reports (``test_volumes.csv``, ``test_images.csv``,
``test_summary.md`` of the test and of the OOD test) and the study's ``study.json`` per run
(cost, training time), so they can come from runs made anywhere (a SLURM array, sweep agents,
another machine) as long as their folders are gathered under ``<study>/runs/``. Whatever is
finished is collected; what is missing is said, not guessed.
"""

from __future__ import annotations

import csv
import io
import math
import platform
import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import yaml

from equinet.files import atomic_write_text
from equinet.lightning.evaluation import EQUIVARIANCE_COLUMNS, RECON_COLUMNS, group_means
from equinet.study.plan import STUDY_FILE, StudyError, load_study
from equinet.study.run import EXAMPLE_FILE, STUDY_JSON, RunLayout, read_json
from equinet.study.variants import INPUT, NETWORK, get_dotted

# results.csv: these columns first, in this order (then the per-group ones, e.g. psnr_pd)
COLUMNS = (
    "variant",
    "strategy",
    "params",
    "psnr",
    "ssim",
    "nmse",
    "eq_nmse",
    "eq_ssim",
    "eq_nmse_ood",
    "eq_ssim_ood",
    "worst_dpsnr",
    "step_time_ratio",
    "peak_mem_ratio",
    "train_minutes",
)
RENAME = {"equivariance_nmse": "eq_nmse", "equivariance_ssim": "eq_ssim"}
# the worst-case |dPSNR| over images, by the name each version of the test summary uses
WORST_DPSNR_KEYS = ("worst_dpsnr_image", "worst_dpsnr_max")
COLUMN_HELP = {
    "variant": "the study variant (run folder `runs/<variant>`); `input` is the network input itself",
    "strategy": "the network and its down/upsampling",
    "params": "trainable parameters",
    "psnr": "reconstruction PSNR in dB, per volume (fastMRI convention), mean over test volumes",
    "ssim": "reconstruction SSIM (7x7, the volume's data range), mean over test volumes",
    "nmse": "reconstruction NMSE, per volume, mean over test volumes",
    "eq_nmse": "shift equivariance: NMSE between T_k(G(x)) and G(T_k(x)), one random circular shift k in "
    "[-16, 16]^2 per test volume, mean over volumes (0 = exactly equivariant)",
    "eq_ssim": "shift equivariance: SSIM between T_k(G(x)) and G(T_k(x)) (1 = exactly equivariant)",
    "eq_nmse_ood": "eq_nmse on out-of-distribution natural images through the same forward model",
    "eq_ssim_ood": "eq_ssim on the out-of-distribution images",
    "worst_dpsnr": "worst |PSNR(G(T_k x), T_k y) - PSNR(G(x), y)| in dB over 10 random shifts per test "
    "image, and over all images",
    "step_time_ratio": "training step time / the baseline's, measured alternately in one process on the "
    "same batch",
    "peak_mem_ratio": "peak training-step tensor memory / the baseline's (same batch; profiler allocator "
    "peaks)",
    "train_minutes": "wall-clock training minutes (for information: depends on the machine and its load)",
}


# --------------------------------------------------------------------------------------------
# reading one run
# --------------------------------------------------------------------------------------------
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


def volume_means(volumes: List[Dict[str, Any]]) -> Dict[str, float]:
    """Means over volumes (and per group) of the reconstruction and equivariance columns."""
    out: Dict[str, float] = {}
    for col in RECON_COLUMNS + EQUIVARIANCE_COLUMNS:
        vals = [float(v[col]) for v in volumes if v.get(col) not in (None, "")]
        if vals:
            out[RENAME.get(col, col)] = float(np.mean(vals))
    for key, value in group_means(volumes).items():
        col, _, group = key.rpartition("_")
        out[f"{RENAME.get(col, col)}_{group}"] = value
    return out


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


def read_row(layout: RunLayout, variant: str) -> Optional[Dict[str, Any]]:
    """The results row of one variant, or ``None`` if its test has not finished."""
    volumes = read_csv(layout.report(variant, "volumes.csv"))
    if not volumes:
        return None
    # how the run was trained: its own config.yaml (written by `equinet fit`), else the study's
    config_path = next(
        (p for p in (layout.folder(variant) / "config.yaml", layout.config(variant)) if p.is_file()), None
    )
    config = yaml.safe_load(config_path.read_text()) if config_path is not None else {}
    row: Dict[str, Any] = {"variant": variant, "strategy": describe(config, variant)}
    row.update(volume_means(volumes))
    # the paper's worst case: max over images of each image's worst |dPSNR| (exact from the
    # per-image table; else the summary, under the name its version uses)
    per_image = [
        float(value)
        for r in read_csv(layout.report(variant, "images.csv"))
        for value in [r.get("worst_dpsnr_image", r.get("worst_dpsnr"))]  # (the column's old name)
        if value not in (None, "")
    ]
    summary = summary_values(layout.report(variant, "summary.md"))
    row["worst_dpsnr"] = (
        max(per_image) if per_image else next((summary[k] for k in WORST_DPSNR_KEYS if k in summary), None)
    )
    ood = volume_means(read_csv(layout.report(variant, "volumes.csv", tag="ood")))
    for col in ("eq_nmse", "eq_ssim", "psnr", "ssim"):
        if col in ood:
            row[f"{col}_ood"] = ood[col]
    info = read_json(layout.folder(variant) / STUDY_JSON)
    cost = info.get("cost") or {}
    for col in ("params", "step_time_ratio", "peak_mem_ratio"):
        if col in cost:
            row[col] = cost[col]
    if "train_seconds" in info:
        row["train_minutes"] = info["train_seconds"] / 60
    if variant == INPUT:  # the identity is trivially equivariant: nothing to compare
        for col in [c for c in row if c.startswith(("eq_", "worst_dpsnr"))]:
            row[col] = None
        row["params"] = 0
    return row


# --------------------------------------------------------------------------------------------
# the tables
# --------------------------------------------------------------------------------------------
def ordered_columns(rows: Sequence[Mapping[str, Any]]) -> List[str]:
    extra: List[str] = []
    for r in rows:
        extra += [k for k in r if k not in COLUMNS and k not in extra]
    return list(COLUMNS) + extra


def results_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    columns = ordered_columns(rows)
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow(
            {
                c: ("" if r.get(c) is None else repr(r[c]) if isinstance(r[c], float) else r[c])
                for c in columns
            }
        )
    return buf.getvalue()


def _fmt(value: Any, kind: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if kind == "sci":
        return "0" if value == 0 else f"{value:.2e}"
    if kind == "db":
        return f"{value:.2f}"
    if kind == "ssim":
        return f"{value:.4f}" if value < 0.99995 or value == 1 else f"{value:.6f}"
    if kind == "ratio":
        return f"{value:.2f}x"
    if kind == "int":
        return f"{int(value):,}"
    if kind == "min":
        return f"{value:.1f}"
    return str(value)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple]) -> str:
    """``columns``: (header, key, format) triples."""
    lines = [
        "| " + " | ".join(h for h, _, _ in columns) + " |",
        "|" + "|".join("---" if f == "text" else "---:" for _, _, f in columns) + "|",
    ]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(k), f) for _, k, f in columns) + " |")
    return "\n".join(lines)


def groups_of(rows: Sequence[Mapping[str, Any]]) -> List[str]:
    return sorted(
        {k.rpartition("_")[2] for r in rows for k in r if k.startswith("psnr_") and k != "psnr_ood"}
    )


def main_table(rows: Sequence[Mapping[str, Any]], suffix: str = "") -> str:
    """Equivariance and reconstruction (the paper's Table 1 / Table 4 layout); ``suffix="_pd"``
    etc. gives the same table over one acquisition's volumes."""
    return markdown_table(
        rows,
        [
            ("variant", "variant", "text"),
            ("eq. NMSE", f"eq_nmse{suffix}", "sci"),
            ("eq. SSIM", f"eq_ssim{suffix}", "ssim"),
            ("NMSE", f"nmse{suffix}", "sci"),
            ("PSNR (dB)", f"psnr{suffix}", "db"),
            ("SSIM", f"ssim{suffix}", "ssim"),
        ],
    )


def results_markdown(
    rows: Sequence[Mapping[str, Any]],
    study_config: Mapping[str, Any],
    notes: Sequence[str],
    figures: Sequence[Path],
    layout: RunLayout,
) -> str:
    name = study_config.get("name", "study")
    lines = [f"# equinet study: {name}", ""]
    if study_config.get("description"):
        lines += [str(study_config["description"]).strip(), ""]
    lines += [f"- {k}: {v}" for k, v in settings(study_config).items()]
    lines += ["", "## Equivariance and reconstruction (APS-U paper, Table 1 / Table 4)", "", main_table(rows)]
    for group in groups_of(rows):
        lines += ["", f"### {group.upper()} volumes only", "", main_table(rows, f"_{group}")]
    trained = [r for r in rows if r["variant"] != INPUT]
    lines += [
        "",
        "## Worst-case shift: largest |dPSNR| over 10 random shifts per image (Table 2)",
        "",
        markdown_table(
            trained, [("variant", "variant", "text"), ("worst abs dPSNR (dB)", "worst_dpsnr", "sci")]
        ),
    ]
    if any(r.get("eq_nmse_ood") is not None for r in trained):
        lines += [
            "",
            "## Out of distribution: natural images through the same forward model (Table 3)",
            "",
            markdown_table(
                trained,
                [
                    ("variant", "variant", "text"),
                    ("eq. NMSE", "eq_nmse_ood", "sci"),
                    ("eq. SSIM", "eq_ssim_ood", "ssim"),
                ],
            ),
        ]
    lines += [
        "",
        "## Cost (relative to the baseline, measured side by side)",
        "",
        markdown_table(
            trained,
            [
                ("variant", "variant", "text"),
                ("network", "strategy", "text"),
                ("params", "params", "int"),
                ("step time", "step_time_ratio", "ratio"),
                ("peak memory", "peak_mem_ratio", "ratio"),
                ("training (min)", "train_minutes", "min"),
            ],
        ),
    ]
    if figures:
        lines += ["", "## Figures", ""] + [f"- [{p.stem}](figures/{p.name})" for p in figures]
    lines += ["", "## Columns (results.csv)", ""] + [f"- `{k}`: {v}" for k, v in COLUMN_HELP.items()]
    if groups_of(rows):
        lines.append(
            "- `<column>_<group>`: the same over the volumes of one acquisition (pd: CORPD_FBK, "
            "pdfs: CORPDFS_FBK)"
        )
    lines += [
        "",
        "## Runs",
        "",
        "Each variant is an ordinary run folder `runs/<variant>` (config, checkpoints, logger "
        "output, the reports of the test and of the out-of-distribution test). Re-test one by itself, e.g.:",
        "",
        "```bash",
        f"equinet test --config {layout.config('APS')} {' '.join(layout.location_args('APS'))} "
        "--ckpt_path last",
        "```",
    ]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def settings(study_config: Mapping[str, Any]) -> Dict[str, str]:
    """The run's settings for the header of results.md."""
    import pytorch_lightning
    import torch

    import equinet

    run = study_config.get("run", {})
    trainer = run.get("trainer", {})
    data = run.get("data", {})
    data_args = data.get("init_args") or {}
    budget = ", ".join(
        f"{k} {trainer[k]}"
        for k in ("max_epochs", "max_steps", "max_time")
        if trainer.get(k) not in (None, -1)
    )
    ood = study_config.get("ood") or {}
    ood_args = get_dotted(ood, "data.init_args") or {}
    out = {
        "dataset": f"{str(data.get('class_path', '?')).rpartition('.')[2]} "
        f"(root: {data_args.get('root') or 'synthetic default, generated in the real format'}, "
        f"crop {data_args.get('crop_size', '?')}, batch {data_args.get('batch_size', '?')})",
        "budget": budget or "Lightning's default",
        "optimiser": str(get_dotted(run, "model.optimizer.class_path", "?")).rpartition(".")[2]
        + f" (lr {get_dotted(run, 'model.optimizer.init_args.lr', '?')})",
        "seed": str(run.get("seed_everything", 0)),
        "device": f"trainer accelerator {trainer.get('accelerator', 'auto')}, "
        f"devices {trainer.get('devices', 'auto')}",
        "variants": ", ".join(study_config.get("variants", [])),
        "versions": f"equinet {equinet.__version__}, torch {torch.__version__}, "
        f"pytorch-lightning {pytorch_lightning.__version__}, python {platform.python_version()}",
    }
    if ood:
        out["out of distribution"] = (
            f"{str(get_dotted(ood, 'data.class_path', '?')).rpartition('.')[2]} (root: "
            f"{ood_args.get('root') or 'images bundled with scikit-image'}, "
            f"{ood_args.get('num_images', '?')} images, forward model "
            f"{ood_args.get('forward_model', '?')})"
        )
    return out


# --------------------------------------------------------------------------------------------
# collect
# --------------------------------------------------------------------------------------------
def collect(study_dir: Path, log=print, figures: bool = True) -> List[Dict[str, Any]]:
    """Write ``results.csv``, ``results.md`` and ``figures/`` from the finished runs in ``study_dir``."""
    study_dir = Path(study_dir)
    if not (study_dir / STUDY_FILE).is_file():
        raise StudyError(
            f"{study_dir} is not a study folder (no {STUDY_FILE}); pass the folder that "
            "`equinet study` created (e.g. outputs/study/latest)"
        )
    study = load_study(None, config=yaml.safe_load((study_dir / STUDY_FILE).read_text()))
    layout = RunLayout(study_dir)
    found = layout.variants()
    order = [INPUT] + study.variants + [v for v in found if v not in study.variants and v != INPUT]
    rows, notes = [], []
    for variant in order:
        row = read_row(layout, variant)
        if row is None:
            if variant in study.variants or variant == INPUT:
                notes.append(
                    f"{variant}: no finished test in {layout.folder(variant)} (not run yet, or still running)"
                )
            continue
        missing = [
            c
            for c in ("eq_nmse_ood", "params")
            if row.get(c) is None and variant != INPUT and (c != "eq_nmse_ood" or study.ood)
        ]
        if missing:
            notes.append(f"{variant}: {', '.join(missing)} missing (its study stages did not finish)")
        rows.append(row)
    notes += [
        f"{r['variant']}: described by its run folder only (not in this study's variant list)"
        for r in rows
        if r["variant"] not in study.variants and r["variant"] != INPUT
    ]
    figure_paths: List[Path] = []
    if figures and rows:
        from equinet.study.figures import write_figures

        examples = {}
        for variant in [r["variant"] for r in rows]:
            path = layout.folder(variant) / EXAMPLE_FILE
            if path.is_file():
                with np.load(path) as data:
                    examples[variant] = {k: data[k] for k in data.files}
        figure_paths, figure_notes = write_figures(
            study_dir / "figures",
            rows,
            examples,
            reference=study.config["cost"].get("reference") or "baseline",
        )
        notes += figure_notes
    atomic_write_text(study_dir / "results.csv", results_csv(rows))
    atomic_write_text(
        study_dir / "results.md", results_markdown(rows, study.config, notes, figure_paths, layout)
    )
    for note in notes:
        log(f"collect: {note}")
    return rows

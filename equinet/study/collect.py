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
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence

import numpy as np
import yaml

from equinet.files import atomic_write_text
from equinet.study.config import INPUT, StudyError, get_dotted
from equinet.study.plan import STUDY_FILE, load_study
from equinet.study.results import (
    COLUMNS,
    EXAMPLE_FILE,
    GROUP_HELP,
    RESULT_COLUMNS,
    RunLayout,
    read_row,
    table_columns,
)


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
    """The acquisition groups with their own columns (``psnr_pd``, ...): ``["pd", "pdfs"]``."""
    grouped = {c.name for c in RESULT_COLUMNS if c.groups}
    return sorted(
        {
            group
            for r in rows
            for name, _, group in (k.rpartition("_") for k in r if k not in COLUMNS)
            if name in grouped
        }
    )


def column_table(rows: Sequence[Mapping[str, Any]], table: str, suffix: str = "") -> str:
    """The ``results.md`` table ``table`` (its columns are those of :data:`RESULT_COLUMNS` with
    that ``table``); ``suffix="_pd"`` etc. gives the same table over one acquisition's volumes."""
    return markdown_table(
        rows,
        [("variant", "variant", "text")]
        + [(c.header, f"{c.name}{suffix}", c.fmt) for c in table_columns(table)],
    )


def main_table(rows: Sequence[Mapping[str, Any]], suffix: str = "") -> str:
    """Equivariance and reconstruction (the paper's Table 1 / Table 4 layout)."""
    return column_table(rows, "main", suffix)


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
    shifts = get_dotted(study_config, "run.equivariance.num_dpsnr_shifts", 10)
    lines += [
        "",
        f"## Worst-case shift: largest |dPSNR| over {shifts} random shifts (Table 2)",
        "",
        column_table(trained, "worst"),
    ]
    if any(r.get(c.name) is not None for r in trained for c in table_columns("ood")):
        lines += [
            "",
            "## Out of distribution: natural images through the same forward model (Table 3)",
            "",
            column_table(trained, "ood"),
        ]
    lines += ["", "## Cost (relative to the baseline, measured side by side)", "", column_table(trained, "cost")]
    if figures:
        lines += ["", "## Figures", ""] + [f"- [{p.stem}](figures/{p.name})" for p in figures]
    lines += ["", "## Columns (results.csv)", ""] + [f"- `{c.name}`: {c.help}" for c in RESULT_COLUMNS]
    if groups_of(rows):
        lines.append(f"- `<column>_<group>`: {GROUP_HELP}")
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

"""``equinet study``: train every variant under one budget, then tables and figures.

    equinet study --config experiments/study/demo.yaml               # run (or continue) the study
    equinet study --config experiments/study/fastmri.yaml --data.root /data/knee --trainer.devices 4
    equinet study --config ... --dir outputs/study/knee --only APS-3   # one variant (SLURM task, sweep agent)
    equinet study --config experiments/study/demo.yaml --workers 1    # one variant after another, here
    equinet study collect outputs/study/knee                           # tables + figures from the runs there
    equinet study variants                                             # the built-in variants

Any ``--key value`` that is not a study option overrides the study's run config (an ordinary
``equinet fit`` config: ``--trainer.max_epochs 3``, ``--data.root /data``,
``--model.optimizer.init_args.lr 1e-4``); ``--ood.data.init_args.root /imagenet/val`` and other
keys of the study config override those.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import List, Optional

import torch

from equinet.lightning.runs import point_latest
from equinet.study.config import StudyError
from equinet.study.plan import check_study, load_study, resolve_folder
from equinet.study.run import LAUNCHERS, Launcher, StudyRunner, plan_workers
from equinet.study.variants import STUDY_VARIANTS, VARIANT_DESCRIPTIONS


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="equinet study",
        description="Train every sampling-strategy variant of a study under one budget, test each for "
        "reconstruction and shift equivariance (in and out of distribution), measure its cost, and write "
        "results.csv, results.md and figures/.",
        epilog="examples:\n"
        + __doc__.split("\n\n")[1]
        + "\n\nOther --key value pairs override the study's run "
        "config (see `equinet fit --help`), or the study's own keys (--ood.data.root, --cost.repeats, ...).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", "-c", type=Path, help="study config (experiments/study/<name>.yaml)")
    parser.add_argument("--only", nargs="+", metavar="VARIANT", help="run only these variants of the study")
    parser.add_argument(
        "--dir",
        type=Path,
        help="study folder (default: continue the newest <output>/<name>-* "
        "with the same settings, else a new timestamped one)",
    )
    parser.add_argument("--output", type=Path, default=Path("outputs/study"), help="where study folders go")
    parser.add_argument(
        "--new", action="store_true", help="start a new timestamped folder even if one matches"
    )
    parser.add_argument(
        "--launcher",
        choices=LAUNCHERS,
        default="auto",
        help="run fit/test in this process or one process per run (auto: subprocess when a run "
        "uses more than one device or node, because DDP re-executes the command per rank)",
    )
    parser.add_argument(
        "--workers",
        type=_workers,
        default=None,
        metavar="N|auto",
        help="variants run side by side in N worker processes, each writing its output to "
        "<dir>/logs/<variant>.log (auto: one per GPU; on a CPU cores // threads, where threads is "
        "the study's `threads` or cores // runs, so workers x threads = cores). The threads per run "
        "never depend on N: the results are the same for any N. 1: one after another, in this process",
    )
    parser.add_argument("--no-collect", action="store_true", help="skip tables and figures at the end")
    return parser


def _workers(text: str) -> Optional[int]:
    if text == "auto":
        return None
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1 or 'auto', got {text!r}")
    return int(text)


def run_study(argv: List[str], log=lambda line: print(line, flush=True)) -> Path:
    """Run (or continue) the study ``argv`` describes; returns its folder."""
    args, overrides = _parser().parse_known_args(argv)
    study = load_study(args.config, overrides)
    selected = check_study(study, args.only)
    folder, continued = resolve_folder(study, args.dir, args.output, args.new)
    launcher = Launcher(args.launcher, study.config.get("threads"))
    runner = StudyRunner(study, folder, launcher, log=log)
    placement = plan_workers(study, launcher, args.workers, runnable=len(runner.pending(selected)))
    launcher.threads = placement.threads
    torch.set_num_threads(placement.threads)  # the runs made in this process
    log(
        f"study {study.name!r}: {len(selected)} variant(s) + the input row -> {folder}"
        f"{' (continuing)' if continued else ''}; runs {placement.where}, "
        f"{placement.threads} torch thread(s) each"
    )
    runner.run(selected, placement)
    if runner.rank_zero:
        if args.dir is None:
            point_latest(folder.parent, folder)  # <output>/latest
        if not args.no_collect:
            finish(folder, log)
    return folder


def finish(folder: Path, log) -> None:
    from equinet.study.collect import collect, main_table

    start = time.perf_counter()
    rows = collect(folder, log=log)
    log(
        f"\n{main_table(rows)}\n\nresults: {folder / 'results.md'}, {folder / 'results.csv'}, "
        f"figures in {folder / 'figures'} (collected in {time.perf_counter() - start:.0f} s)"
    )


def main(argv: Optional[List[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "collect":
            parser = argparse.ArgumentParser(
                prog="equinet study collect",
                description="results.csv, results.md and figures/ from the runs in DIR",
            )
            parser.add_argument("dir", type=Path, help="the study folder (e.g. outputs/study/latest)")
            finish(parser.parse_args(argv[1:]).dir, print)
        elif argv and argv[0] == "variants":
            for name in STUDY_VARIANTS:
                print(f"{name:22s} {VARIANT_DESCRIPTIONS.get(name, '')}")
        else:
            run_study(argv)
    except StudyError as err:
        sys.stderr.write(f"equinet study: error: {err}\n")
        raise SystemExit(2) from None


if __name__ == "__main__":  # pragma: no cover
    main()

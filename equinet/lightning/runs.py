"""Where a run lives: one folder per run inside the config's group, and what ``last`` finds.

A config's ``trainer.default_root_dir`` (``runs/<dataset>/<strategy>``) names a *group* of runs.
Every run gets its own folder in it, so repeated runs, sweep runs and parallel agents never share
checkpoints or reports, and ``latest`` points at the newest::

    runs/synthetic/aps/
      20261130-104512-3fa2/   config.yaml  checkpoints/{last.ckpt,best-*.ckpt}  lightning_logs/ | wandb/
                              val_summary.md  test_summary.md  test_config.yaml  ...
      latest -> 20261130-104512-3fa2

``latest`` moves to a run when its training starts (its ``config.yaml`` is written); a command
that fails before writing anything leaves no folder behind.

The folder's name is, in this order:

1. ``--run.name NAME`` (the study names each variant's run this way);
2. the id every rank of one distributed launch agrees on: ``torchrun-<TORCHELASTIC_RUN_ID>`` or
   ``slurm-<SLURM_JOB_ID>-<SLURM_STEP_ID>`` for ranks started by torchrun/srun, and for the ranks
   Lightning spawns itself the ``EQUINET_RUN_ID`` their rank 0 exported;
3. the W&B run id ``WANDB_RUN_ID`` (set by ``wandb agent`` for each sweep run);
4. otherwise a new ``<date>-<time>-<4 hex>``, created with an exclusive ``mkdir`` so that two
   processes can never take the same one.

``--ckpt_path last`` / ``best`` mean that run's ``checkpoints/last.ckpt`` / ``best-*.ckpt``, where
"that run" is the named one (rules 1-3) or else the group's ``latest``. ``fit`` starts a fresh run
when there is none; ``validate``/``test``/``predict`` refuse, naming where they looked. An explicit
checkpoint file inside ``<run>/checkpoints/`` is evaluated into ``<run>``.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Tuple

log = logging.getLogger("equinet.runs")

RUN_ID_ENV = "EQUINET_RUN_ID"
LATEST = "latest"
CHECKPOINTS = "checkpoints"
DEFAULT_GROUP = "runs"


class RunFolderError(ValueError):
    """A run folder or checkpoint the command was asked for does not exist or is not valid."""


@dataclass
class RunOptions:
    """``--run.*``: which run of the group ``trainer.default_root_dir`` this command works on.

    Args:
        name: the run folder's name inside the group. An existing run of that name is resumed
            (``fit --ckpt_path last``) or evaluated; default: a new unique folder for ``fit``
            (or the launcher's / W&B's run id), the group's ``latest`` for ``--ckpt_path last``.
        tag: evaluate under another name: ``test --run.tag ood`` writes ``test-ood_summary.md``,
            ``test-ood_volumes.csv``, ... so one run can be scored on several datasets.
    """

    name: Optional[str] = None
    tag: Optional[str] = None


def check_run_name(name: str, what: str = "--run.name") -> str:
    """A run name is one plain folder name (no separators, not hidden, not ``latest``)."""
    if not name or name in (".", "..", LATEST) or name.startswith(".") or "/" in name or os.sep in name:
        raise RunFolderError(
            f"{what} {name!r} is not a usable run folder name: use one plain folder name "
            f"(letters, digits, '-', '_'; not {LATEST!r}, not starting with '.')"
        )
    return name


def shared_run_id(env: Mapping[str, str]) -> Optional[str]:
    """The run id all ranks of one distributed launch agree on (rule 2), or ``None`` outside one."""
    if int(env.get("WORLD_SIZE", "1") or 1) > 1 and env.get("TORCHELASTIC_RUN_ID", "none") != "none":
        return f"torchrun-{env['TORCHELASTIC_RUN_ID']}"
    if int(env.get("SLURM_NTASKS", "1") or 1) > 1 and env.get("SLURM_JOB_ID"):
        return f"slurm-{env['SLURM_JOB_ID']}-{env.get('SLURM_STEP_ID', '0')}"
    if env.get("LOCAL_RANK", "0") != "0" and env.get(RUN_ID_ENV):
        return env[RUN_ID_ENV]  # a rank Lightning spawned: its rank 0 exported the id
    return None


def is_rank_zero(env: Mapping[str, str]) -> bool:
    """Whether this process is global rank 0 (or not distributed), before any Trainer exists."""
    for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if env.get(key, "0") != "0":
            return False
    return True


def _new_run(group: Path) -> Path:
    group.mkdir(parents=True, exist_ok=True)
    while True:
        path = group / f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
        try:
            path.mkdir()
            return path
        except FileExistsError:  # another process took it this very second: draw again
            continue


def find_checkpoint(run: Path, which: str) -> Optional[Path]:
    """``last`` -> ``<run>/checkpoints/last.ckpt``; ``best`` -> the newest ``best-*.ckpt``."""
    folder = run / CHECKPOINTS
    if which == "last":
        path = folder / "last.ckpt"
        return path if path.is_file() else None
    best = sorted(folder.glob("best-*.ckpt"), key=lambda p: p.stat().st_mtime)
    return best[-1] if best else None


def resolve_run(
    group: Path, name: Optional[str], subcommand: str, ckpt_path: Optional[str], env: Mapping[str, str]
) -> Tuple[Path, Optional[str], bool]:
    """``(run folder, checkpoint to load, wandb_id)`` for one command (see the module doc).

    ``wandb_id`` is True when the folder's name is fit to be the W&B run id too: drawn here
    (rule 4, new and unique) or taken from ``WANDB_RUN_ID`` (rule 3).
    """
    group = Path(group)
    wandb_id = False
    if name is not None:
        check_run_name(name)
    else:
        name = shared_run_id(env)
        if not name and env.get("WANDB_RUN_ID"):
            name, wandb_id = check_run_name(env["WANDB_RUN_ID"], "WANDB_RUN_ID"), True
    run: Optional[Path] = group / name if name else None
    if ckpt_path in ("last", "best"):
        if run is None and (group / LATEST).is_dir():
            run = (group / LATEST).resolve()
        found = find_checkpoint(run, ckpt_path) if run is not None else None
        if found is None:
            if subcommand != "fit":
                where = run / CHECKPOINTS if run is not None else group / LATEST
                raise RunFolderError(
                    f"--ckpt_path {ckpt_path}: no {'last.ckpt' if ckpt_path == 'last' else 'best-*.ckpt'} in "
                    f"{where}; train first (equinet fit with the same config"
                    f"{' and --run.name ' + name if name else ''}), or pass a checkpoint file"
                )
            ckpt_path = None  # fit: nothing to resume, start fresh
            run = group / name if name else None
        else:
            ckpt_path = str(found)
    elif ckpt_path and run is None and subcommand != "fit":
        parent = Path(ckpt_path).resolve().parent
        if parent.name == CHECKPOINTS:
            run = parent.parent  # evaluate a run's checkpoint into that run
    if run is None:
        return _new_run(group), ckpt_path, True
    run.mkdir(parents=True, exist_ok=True)
    return run, ckpt_path, wandb_id


def point_latest(group: Path, run: Path) -> None:
    """Make ``<group>/latest`` a relative symlink to ``run`` (replaced atomically)."""
    group, run = Path(group), Path(run)
    if run.parent.resolve() != group.resolve():
        return  # a run folder outside the group (an explicit checkpoint's run): leave latest alone
    tmp = group / f".{LATEST}.tmp-{secrets.token_hex(4)}"
    try:
        os.symlink(run.name, tmp, target_is_directory=True)
        os.replace(tmp, group / LATEST)
    except OSError as err:  # a filesystem without symlinks: runs still work, `last` needs --run.name
        tmp.unlink(missing_ok=True)
        log.warning("could not point %s at %s (%s); use --run.name %s to find this run", group / LATEST, run, err,
                    run.name)


def remove_if_empty(run: Optional[Path]) -> None:
    """Remove a run folder that holds nothing (its command failed before it wrote anything)."""
    if run is None:
        return
    try:
        Path(run).rmdir()  # fails, harmlessly, unless the folder is empty
    except OSError:
        pass


def report_name(stage: str, tag: Optional[str]) -> str:
    """``test`` or ``test-<tag>``: the prefix of an evaluation's report files."""
    return f"{stage}-{check_run_name(tag, '--run.tag')}" if tag else stage

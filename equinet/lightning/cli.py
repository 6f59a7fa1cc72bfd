"""``equinet fit|validate|test|predict``: a LightningCLI around :class:`ReconstructionModule`.

Config layout (``experiments/configs/<dataset>/<strategy>.yaml``)::

    seed_everything: 0
    trainer: {...}                 # pytorch_lightning.Trainer arguments (strategy, devices, ...)
    model:                         # ReconstructionModule
      network: {class_path: equinet.models.UNet, init_args: {...}}
      loss: mse
      optimizer: {class_path: torch.optim.Adam, init_args: {lr: 0.001}}
      lr_scheduler: {class_path: torch.optim.lr_scheduler.StepLR, init_args: {...}}
    data: {class_path: equinet.data.FastMRIDataModule, init_args: {root: /data/knee, ...}}
    run: {name: null, tag: null}   # which run folder of the group trainer.default_root_dir
    checkpoint: {...}              # always-on RunCheckpoint: best by val/ssim + last.ckpt
    equivariance: {...}            # always-on EquivarianceEvaluation (runs in `test`)
    images: {...}                  # always-on ReconstructionImageLogger
    predictions: {...}             # always-on ReconstructionWriter (runs in `predict`)

Everything can be overridden on the command line (``--trainer.max_steps 10``, ``--data.root
/data/knee``, ``--model.network.init_args.sampling aps``); ``--print_config`` shows the result.
"""

from __future__ import annotations

import difflib
import importlib
import math
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any, List, Optional, Tuple

import yaml
from pytorch_lightning import LightningDataModule
from pytorch_lightning.accelerators import CPUAccelerator
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from pytorch_lightning.strategies import StrategyRegistry
from pytorch_lightning.utilities import rank_zero_info

# The data modules and networks are imported so that jsonargparse also resolves short class names
# (`--data FastMRIDataModule`, `--model.network UNet`), not only full class paths.
from equinet.data import FastMRIDataModule, ImageNetShiftDataModule, LoDoPaBDataModule  # noqa: F401
from equinet.data.base import ReconDataModule
from equinet.errors import debug_enabled, one_line
from equinet.files import atomic_write_text
from equinet.lightning.callbacks import (
    EquivarianceEvaluation,
    ReconstructionImageLogger,
    ResumableRNG,
    RunCheckpoint,
    find_callback,
)
from equinet.lightning.module import ReconstructionModule
from equinet.lightning.predictions import ReconstructionWriter
from equinet.lightning.runs import (
    DEFAULT_GROUP,
    RUN_ID_ENV,
    RunOptions,
    is_rank_zero,
    point_latest,
    remove_if_empty,
    report_name,
    resolve_run,
)
from equinet.models import LiftediUNet, UNet  # noqa: F401

CHECKPOINT_DEFAULTS = {
    "checkpoint.monitor": "val/ssim",
    "checkpoint.mode": "max",
    "checkpoint.save_last": True,
    "checkpoint.save_top_k": 1,
    "checkpoint.filename": "best-epoch{epoch:03d}-step{step:07d}",
    "checkpoint.auto_insert_metric_name": False,
}


# Loggers that write files: their save_dir defaults to the run folder (their own default is the
# working directory, where parallel runs would collide and docker containers would lose them).
FILE_LOGGERS = ("TensorBoardLogger", "CSVLogger", "WandbLogger")


class EquinetArgumentParser(LightningArgumentParser):
    """Parse errors on one line, with the closest valid option when a key is misspelt.

    jsonargparse prints the whole usage (60+ lines) before its error; here the error is the one
    line, e.g. ``equinet fit: error: unrecognized arguments: --trainer.max_epoch 1 (did you mean
    --trainer.max_epochs?)``. ``EQUINET_DEBUG=1`` (or ``JSONARGPARSE_DEBUG``) restores jsonargparse's
    own report.
    """

    def error(self, message: str, ex: Optional[Exception] = None) -> Any:
        if not self.exit_on_error or debug_enabled():
            return super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        prog = parser.prog.replace(" [options]", "")
        hint = _did_you_mean(parser, message)
        sys.stderr.write(f"{prog}: error: {_essence(message)}{hint}; `{prog} --help` lists the options\n")
        self.exit(2)


def _essence(message: str) -> str:
    """jsonargparse's message on one line; for a class given by ``class_path`` whose arguments are
    wrong, just that problem (not the list of every type of the union that did not match)."""
    lines = message.splitlines()
    key = re.match(r'Parser key "([^"]+)":', lines[0]) if lines else None
    for i, line in enumerate(lines):
        found = re.match(r"(\s*)- Problem with given class_path '([^']+)':\s*(.*)", line)
        if found and key:
            problem = "\n".join([found.group(3), *_takewhile_indented(lines[i + 1 :], len(found.group(1)))])
            text = f"{key.group(1)}: {found.group(2)}: {one_line(problem)}"
            if key.group(1) == "trainer.logger" and "save_dir" in problem:
                text += " (add --trainer.logger.save_dir . : '.' means the run folder)"
            return text
    return one_line(message)


def _takewhile_indented(lines: List[str], indent: int) -> List[str]:
    out = []
    for line in lines:
        if line.strip() and len(line) - len(line.lstrip()) <= indent:
            break
        out.append(line)
    return out


def _did_you_mean(parser: LightningArgumentParser, message: str) -> str:
    """`` (did you mean --trainer.max_epochs?)`` for the unknown options named in ``message``."""
    unknown = re.findall(r"(--[\w.-]+)", message) if "nrecognized arguments" in message else []
    unknown += ["--" + key for key in re.findall(r"(?:accept option|Option) '([\w.-]+)'", message)]
    known = sorted(set(re.findall(r"--[\w.-]+", parser.format_usage())))
    guesses = [g for u in unknown for g in difflib.get_close_matches(u.split("=")[0], known, 1, 0.85)]
    return f" (did you mean {', '.join(guesses)}?)" if guesses else ""


def check_trainer_strategy(strategy: Any) -> None:
    """A strategy given by name must be one Lightning knows: say which ones, before anything runs."""
    if not isinstance(strategy, str):
        return
    known = ["auto", *StrategyRegistry.available_strategies()]
    if strategy.lower() in known:
        return
    close = difflib.get_close_matches(strategy.lower(), known, n=1)
    main = [name for name in known if "_find_unused_parameters_" not in name]
    raise ValueError(
        f"--trainer.strategy {strategy!r} is not a Lightning strategy"
        + (f" (did you mean {close[0]!r}?)" if close else "")
        + f"; known: {', '.join(main)} (and the ddp* ones with _find_unused_parameters_true/false)"
    )


def check_data_source(data: Any) -> None:
    """An equinet DataModule's ``root``/``synthetic`` checked from the config, before anything is
    built (a missing root otherwise surfaces after the network is built and the Trainer set up)."""
    class_path = data.get("class_path") if hasattr(data, "get") else None
    if not isinstance(class_path, str) or "." not in class_path:
        return
    module, _, name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module), name, None)
    if isinstance(cls, type) and issubclass(cls, ReconDataModule):
        args = data.get("init_args") or {}
        cls.check_source(args.get("root"), bool(args.get("synthetic")))


def unsuitable_size(size: int, multiple) -> Optional[Tuple[int, str]]:
    """``None`` if ``size`` is divisible by every entry of ``multiple``; else ``(factor, "A or B")``:
    their least common multiple and the nearest positive sizes that are."""
    factor = math.lcm(*(int(m) for m in multiple))
    if size % factor == 0:
        return None
    nearest = dict.fromkeys((max(factor, size // factor * factor), -(-size // factor) * factor))
    return factor, " or ".join(str(n) for n in nearest)


def check_image_size(model: Any, datamodule: Any) -> None:
    """The data's crop must suit the network's ``size_multiple`` (U-Net, iUNet, LiftediUNet: 2**depth
    per axis): checked before any data are generated or cached, not at the first batch."""
    multiple = getattr(getattr(model, "network", None), "size_multiple", None)
    crop = getattr(datamodule, "crop_size", None)
    if not multiple or not isinstance(crop, int):
        return
    bad = unsuitable_size(crop, multiple)
    if bad:
        factor, nearest = bad
        raise ValueError(
            f"data crop_size={crop} does not suit the network: {type(model.network).__name__} needs sizes "
            f"divisible by {factor}; use --data.init_args.crop_size {nearest}"
        )


class RunConfigSaver(SaveConfigCallback):
    """Writes the resolved config into the run folder, atomically, on global rank 0, and keeps the
    group's ``latest`` and the run folder honest.

    ``fit`` writes ``config.yaml`` and points ``<group>/latest`` at the run (a run is the latest
    once it has started, not when a failing command created its folder); an evaluation writes
    ``<stage>[-<tag>]_config.yaml`` beside it, so evaluating a run (perhaps on other data) never
    overwrites how it was trained. A command failing before the run wrote anything removes the
    then empty run folder.
    """

    def __init__(self, *args: Any, report_name: Optional[str] = None, group: Optional[str] = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, save_to_log_dir=False, **kwargs)
        self.report_name = report_name
        self.group = group

    def save_config(self, trainer, pl_module, stage: str) -> None:
        run = Path(trainer.default_root_dir)
        name = "config.yaml" if stage == "fit" else f"{self.report_name or stage}_config.yaml"
        text = self.parser.dump(self.config, skip_none=False)
        atomic_write_text(run / name, text)
        if stage == "fit" and self.group is not None:
            point_latest(Path(self.group), run)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if trainer.is_global_zero:
            remove_if_empty(Path(trainer.default_root_dir))


class EquinetCLI(LightningCLI):
    """LightningCLI with equinet's run folders, always-on callbacks and safe checkpoint loading."""

    run_dir: Optional[Path] = None

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_class_arguments(RunOptions, "run",
                                   help="Which run folder of the group trainer.default_root_dir")
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        parser.set_defaults(CHECKPOINT_DEFAULTS)
        parser.add_lightning_class_args(EquivarianceEvaluation, "equivariance")
        parser.add_lightning_class_args(ReconstructionImageLogger, "images")
        parser.add_lightning_class_args(ReconstructionWriter, "predictions")

    def before_instantiate_classes(self) -> None:
        sub = self.subcommand
        if not sub:
            return
        cfg = self.config[sub]
        # user mistakes that would otherwise surface only after the network and Trainer are built
        check_data_source(cfg.get("data"))
        check_trainer_strategy(cfg.trainer.get("strategy"))
        # Load checkpoints with torch.load(weights_only=True) unless the user says otherwise
        # (--weights_only false, for trusted checkpoints that pickle arbitrary objects).
        if "weights_only" in cfg and cfg["weights_only"] is None:
            cfg["weights_only"] = True
        if sub == "predict" and cfg.get("return_predictions") is None:
            cfg.return_predictions = False  # ReconstructionWriter writes them; don't also hold all in memory
        self._place_run(sub, cfg)

    def _place_run(self, sub: str, cfg: Any) -> None:
        """Choose this command's run folder and route checkpoints, loggers and reports into it."""
        group = Path(cfg.trainer.default_root_dir or DEFAULT_GROUP)
        run, ckpt_path, wandb_id = resolve_run(group, cfg.run.name, sub, cfg.get("ckpt_path"), os.environ)
        self.run_dir = run
        cfg.trainer.default_root_dir = str(run)
        if "ckpt_path" in cfg:
            cfg.ckpt_path = ckpt_path
        if not cfg.checkpoint.dirpath:
            cfg.checkpoint.dirpath = str(run / "checkpoints")
        if not cfg.predictions.output_dir:
            name = "reconstructions" + (f"-{cfg.run.tag}" if cfg.run.tag else "")
            cfg.predictions.output_dir = str(run / name)
        loggers = cfg.trainer.logger
        for logger in loggers if isinstance(loggers, list) else [loggers]:
            if not hasattr(logger, "class_path") or logger.class_path.rsplit(".", 1)[-1] not in FILE_LOGGERS:
                continue
            args = logger.init_args
            if args.get("save_dir") in (None, "."):
                args.save_dir = os.environ.get("WANDB_DIR") if "Wandb" in logger.class_path else None
                args.save_dir = args.save_dir or str(run)
            if "Wandb" in logger.class_path and not (args.get("id") or args.get("version")):
                if wandb_id:
                    args.id = run.name  # the W&B run id is the folder's name: find one from the other
                elif not args.get("name"):
                    args.name = run.name
        os.environ[RUN_ID_ENV] = run.name  # the ranks Lightning spawns for DDP inherit it
        self.save_config_kwargs["report_name"] = report_name(sub, cfg.run.tag)
        self.save_config_kwargs["group"] = str(group)

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
            if self.subcommand:
                self._finish_instances(self.config[self.subcommand])
        except BaseException:
            if is_rank_zero(os.environ):
                remove_if_empty(self.run_dir)
            raise

    def _finish_instances(self, cfg: Any) -> None:
        """Checks that need the built objects, then what the run folder needs from them."""
        if cfg.trainer.get("sync_batchnorm") and self.trainer.world_size > 1 and isinstance(
                self.trainer.accelerator, CPUAccelerator):
            raise ValueError("--trainer.sync_batchnorm true needs GPUs (torch's SyncBatchNorm has no CPU "
                             "kernel); pass --trainer.sync_batchnorm false for distributed training on CPUs")
        check_image_size(self.model, self.datamodule)
        if isinstance(self.model, ReconstructionModule):
            self.model.report_tag = cfg.run.tag
            # The network/optimiser/scheduler configs (class_path + init_args, plain data), so that
            # the checkpoint rebuilds them: ReconstructionModule.load_from_checkpoint(path).
            config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))[self.subcommand]["model"]
            if config.get("init_from") is None:
                config.pop("init_from", None)  # as the module records it: only when fine-tuning
            self.model.save_hyperparameters(config)
        ckpt = cfg.get("ckpt_path")
        for callback in self.trainer.callbacks:
            if isinstance(callback, RunCheckpoint) and ckpt and callback.dirpath:
                callback.resuming = Path(ckpt).resolve().parent == Path(callback.dirpath).resolve()

    def _report(self) -> None:
        files = getattr(self.model, "evaluation", {}).get("files")
        if files and self.trainer.is_global_zero:
            rank_zero_info("equinet: wrote " + ", ".join(str(p) for p in files.values()))

    def after_validate(self) -> None:
        self._report()

    def after_test(self) -> None:
        self._report()

    def after_predict(self) -> None:
        writer = find_callback(self.trainer, ReconstructionWriter)
        if writer is not None and self.trainer.is_global_zero:
            rank_zero_info(f"equinet: wrote {len(writer.written)} reconstruction files "
                           f"({writer.resolve_format(self.datamodule)} format) to {writer.folder}")


def lightning_main(argv: Optional[List[str]] = None) -> EquinetCLI:
    """Run ``equinet <fit|validate|test|predict> ...``; ``argv`` starts with the subcommand."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # LightningCLI warns when given args while sys.argv has some: pass None when they are the same
    args = None if argv == sys.argv[1:] else argv
    with warnings.catch_warnings():
        # Lightning 2.6's LightningCLI itself calls jsonargparse APIs deprecated in jsonargparse
        # 4.49 (add_instantiator, instantiate_classes): nothing a user can act on, so deprecation
        # warnings raised from inside pytorch_lightning.cli are silenced here, nothing else.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"pytorch_lightning\.cli")
        return _run_cli(args)


def _run_cli(args: Optional[List[str]]) -> EquinetCLI:
    return EquinetCLI(
        model_class=ReconstructionModule,
        datamodule_class=LightningDataModule,
        subclass_mode_data=True,
        args=args,
        auto_configure_optimizers=False,  # one way to configure: model.optimizer / model.lr_scheduler
        save_config_callback=RunConfigSaver,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={"callbacks": [ResumableRNG()]},
        seed_everything_default=0,  # reproducible unless asked otherwise (Lightning's `True` also ends at 0)
        parser_kwargs={"prog": "equinet", "allow_abbrev": False},  # --trainer.max_epoch is an error
        parser_class=EquinetArgumentParser,
    )

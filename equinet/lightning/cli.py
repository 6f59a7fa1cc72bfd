"""``equinet fit|validate|test|predict``: a LightningCLI around :class:`ReconstructionModule`.

Config layout (``experiments/configs/<dataset>/<strategy>.yaml``)::

    seed_everything: 0
    trainer: {...}                 # pytorch_lightning.Trainer arguments (strategy, devices, ...)
    model:                         # ReconstructionModule
      network: {class_path: equinet.models.UNet, init_args: {...}}
      loss: mse
      optimizer: {class_path: torch.optim.Adam, init_args: {lr: 0.001}}
      lr_scheduler: {class_path: torch.optim.lr_scheduler.StepLR, init_args: {...}}
    data: {class_path: equinet.data.FastMRIDataModule, init_args: {root: null, ...}}
    checkpoint: {...}              # always-on RunCheckpoint: best by val/ssim + last.ckpt
    equivariance: {...}            # always-on EquivarianceEvaluation (runs in `test`)
    images: {...}                  # always-on ReconstructionImageLogger

Everything can be overridden on the command line (``--trainer.max_steps 10``, ``--data.root
/data/knee``, ``--model.network.init_args.sampling aps``); ``--print_config`` shows the result.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Any, List, Optional

from pytorch_lightning import LightningDataModule
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from pytorch_lightning.utilities import rank_zero_info

# The data modules and networks are imported so that jsonargparse also resolves short class names
# (`--data FastMRIDataModule`, `--model.network UNet`), not only full class paths.
from equinet.data import FastMRIDataModule, ImageNetShiftDataModule, LoDoPaBDataModule  # noqa: F401
from equinet.files import atomic_write_text
from equinet.lightning.callbacks import (
    EquivarianceEvaluation,
    ReconstructionImageLogger,
    ResumableRNG,
    RunCheckpoint,
)
from equinet.lightning.module import ReconstructionModule
from equinet.lightning.runs import (
    DEFAULT_GROUP,
    RUN_ID_ENV,
    RunOptions,
    is_rank_zero,
    point_latest,
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


class RunConfigSaver(SaveConfigCallback):
    """Writes the resolved config into the run folder, atomically, on global rank 0.

    ``fit`` writes ``config.yaml``; an evaluation writes ``<stage>[-<tag>]_config.yaml`` beside it,
    so evaluating a run (perhaps on other data) never overwrites how it was trained.
    """

    def __init__(self, *args: Any, report_name: Optional[str] = None, **kwargs: Any) -> None:
        super().__init__(*args, save_to_log_dir=False, **kwargs)
        self.report_name = report_name

    def save_config(self, trainer, pl_module, stage: str) -> None:
        name = "config.yaml" if stage == "fit" else f"{self.report_name or stage}_config.yaml"
        text = self.parser.dump(self.config, skip_none=False)
        atomic_write_text(Path(trainer.default_root_dir) / name, text)


class EquinetCLI(LightningCLI):
    """LightningCLI with equinet's run folders, always-on callbacks and safe checkpoint loading."""

    run_dir: Optional[Path] = None

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_class_arguments(RunOptions, "run", help="Which run folder of the group trainer.default_root_dir")
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        parser.set_defaults(CHECKPOINT_DEFAULTS)
        parser.add_lightning_class_args(EquivarianceEvaluation, "equivariance")
        parser.add_lightning_class_args(ReconstructionImageLogger, "images")

    def before_instantiate_classes(self) -> None:
        sub = self.subcommand
        if not sub:
            return
        cfg = self.config[sub]
        # Load checkpoints with torch.load(weights_only=True) unless the user says otherwise
        # (--weights_only false, for trusted checkpoints that pickle arbitrary objects).
        if "weights_only" in cfg and cfg["weights_only"] is None:
            cfg["weights_only"] = True
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
        if sub == "fit" and is_rank_zero(os.environ):
            point_latest(group, run)

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        sub = self.subcommand
        if not sub:
            return
        cfg = self.config[sub]
        if isinstance(self.model, ReconstructionModule):
            self.model.report_tag = cfg.run.tag
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
        parser_kwargs={"prog": "equinet"},
    )

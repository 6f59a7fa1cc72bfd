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

import sys
import warnings
from typing import List, Optional

from pytorch_lightning import LightningDataModule
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.utilities import rank_zero_info

# The data modules and networks are imported so that jsonargparse also resolves short class names
# (`--data FastMRIDataModule`, `--model.network UNet`), not only full class paths.
from equinet.data import FastMRIDataModule, ImageNetShiftDataModule, LoDoPaBDataModule  # noqa: F401
from equinet.lightning.callbacks import (
    EquivarianceEvaluation,
    ReconstructionImageLogger,
    ResumableRNG,
    RunCheckpoint,
)
from equinet.lightning.module import ReconstructionModule
from equinet.models import LiftediUNet, UNet  # noqa: F401

CHECKPOINT_DEFAULTS = {
    "checkpoint.monitor": "val/ssim",
    "checkpoint.mode": "max",
    "checkpoint.save_last": True,
    "checkpoint.save_top_k": 1,
    "checkpoint.filename": "best-epoch{epoch:03d}-step{step:07d}",
    "checkpoint.auto_insert_metric_name": False,
}


class EquinetCLI(LightningCLI):
    """LightningCLI with equinet's always-on callbacks and safe checkpoint loading by default."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        parser.set_defaults(CHECKPOINT_DEFAULTS)
        parser.add_lightning_class_args(EquivarianceEvaluation, "equivariance")
        parser.add_lightning_class_args(ReconstructionImageLogger, "images")

    def before_instantiate_classes(self) -> None:
        # Load checkpoints with torch.load(weights_only=True) unless the user says otherwise
        # (--weights_only false, for trusted checkpoints that pickle arbitrary objects).
        sub = self.subcommand
        if sub and "weights_only" in self.config[sub] and self.config[sub]["weights_only"] is None:
            self.config[sub]["weights_only"] = True

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
        save_config_kwargs={"overwrite": True},
        trainer_defaults={"callbacks": [ResumableRNG()]},
        seed_everything_default=0,  # reproducible unless asked otherwise (Lightning's `True` also ends at 0)
        parser_kwargs={"prog": "equinet"},
    )

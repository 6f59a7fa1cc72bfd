"""The reconstruction LightningModule: training logic only; the network is injected.

``ReconstructionModule(network=UNet(...))`` trains any image-to-image ``nn.Module`` (every
sampling strategy's U-Net, the iUNet, your own) on :class:`~equinet.data.ReconSample` batches.
Optimiser and LR scheduler are typed callables, so YAML configs choose them::

    model:
      network: {class_path: equinet.models.UNet, init_args: {channels: 64, sampling: aps}}
      loss: mse
      optimizer: {class_path: torch.optim.Adam, init_args: {lr: 0.001}}
      lr_scheduler: {class_path: torch.optim.lr_scheduler.StepLR, init_args: {step_size: 5, gamma: 0.5}}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Literal, Mapping, Optional, Sequence

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from pytorch_lightning.utilities import rank_zero_info
from torch import nn

from equinet.data.types import ReconSample
from equinet.lightning.batch import as_batch
from equinet.lightning.cuda_settings import warn_if_inexact
from equinet.lightning.evaluation import (
    SliceRecords,
    denormalise,
    gather_unique,
    group_means,
    slice_values,
    summarise,
    volume_metrics,
    write_report,
)
from equinet.lightning.runs import report_name
from equinet.metrics import circular_shift, random_shifts

LOSSES = ("mse", "l1", "ssim")


class ReconstructionModule(pl.LightningModule):
    """Train/evaluate an injected reconstruction network with fastMRI-convention metrics.

    Args:
        network: maps the normalised input ``(B, 1, H, W)`` to the normalised reconstruction
            (or its ``{class_path, init_args}`` config, as checkpoints made by the CLI store it).
        loss: ``mse`` (the APS-U/iUNet papers), ``l1`` (fastMRI's U-Net baseline) or ``ssim``
            (``1 - SSIM``, fastMRI's 7x7 ``SSIMLoss`` on de-normalised images with the
            volume's data range).
        optimizer: callable ``params -> Optimizer`` (default ``torch.optim.Adam``, lr 1e-3), or its
            ``{class_path, init_args}`` config.
        lr_scheduler: callable ``optimizer -> scheduler``, stepped once per epoch; ``None`` for
            a constant rate; or its ``{class_path, init_args}`` config. ``ReduceLROnPlateau``
            monitors ``val/loss``.
        output_clamp: at evaluation (validation, test, predict) the output is clamped to
            ``[-output_clamp, output_clamp]`` in normalised units, i.e. to
            ``mean +- output_clamp * std`` of the input in original units: the same +-6 range
            fastMRI's ``UnetDataTransform`` clamps inputs and targets to. Training sees the raw
            output (a clamp there would zero the gradient of out-of-range pixels). ``None``
            disables it.
        shift_augmentation: data augmentation by random circular shifts (the APS-U paper's
            "DA"): each training sample's input and target are rolled by the same shift, drawn
            uniformly from ``[-shift_augmentation, shift_augmentation]^2`` (the paper: 16) by the
            seeded torch RNG of the batch's device (drawn there, so the step does not wait on the
            host; checkpointed by :class:`~equinet.lightning.ResumableRNG`, every rank's own RNG states).
            Validation, test and predict inputs are never shifted. ``0`` (default) disables it.
        init_from: fine-tune from a fastMRI U-Net: a ``fastmri.pl_modules.UnetModule`` Lightning
            checkpoint or a ``fastmri.models.Unet`` state dict saved with ``torch.save`` (read with
            ``weights_only=True``). Its weights are loaded into ``network``, which must be an
            equinet ``UNet(layout="fastmri")`` of the same ``channels``/``depth`` (an error names the
            init_args to set) with the run's sampling; what the sampling adds (LPS scorers) keeps
            its initialisation. Checkpoints of the run hold the trained weights, so rebuilding one
            does not read this file again (it is recorded as ``initialised_from``).
        residual: learn the correction of the input, ``x + network(x)`` (residual learning, as in
            FBPConvNet, Jin et al. 2017): the network starts near the zero-filled/FBP input instead
            of having to learn the identity. Adding the input keeps every shift-equivariance
            property of the network. ``False`` (default) is the APS-U paper's plain U-Net.

    Validation logs ``val/loss``, ``val/nmse``, ``val/psnr``, ``val/ssim`` (means over volumes,
    exact under DDP); test logs the same under ``test/`` plus the equivariance metrics of an
    attached :class:`~equinet.lightning.EquivarianceEvaluation`, and writes
    ``<stage>_summary.md`` and CSV tables into ``trainer.default_root_dir`` (the run directory).
    """

    def __init__(
        self,
        network: nn.Module,
        loss: Literal["mse", "l1", "ssim"] = "mse",
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: Optional[LRSchedulerCallable] = None,
        output_clamp: Optional[float] = 6.0,
        shift_augmentation: int = 0,
        init_from: Optional[str] = None,
        residual: bool = False,
    ) -> None:
        super().__init__()
        # Checkpoints hold plain data only, so they load with torch.load(weights_only=True): the
        # network/optimiser/scheduler are stored when given as configs (class_path + init_args;
        # the equinet CLI records its configs so, and this __init__ rebuilds them), never as the
        # objects built in Python -- pass those again to load_from_checkpoint.
        given = {"network": network, "optimizer": optimizer, "lr_scheduler": lr_scheduler}
        self.save_hyperparameters("loss", "output_clamp", "shift_augmentation", "residual",
                                  *(["init_from"] if init_from is not None else []),
                                  *[k for k, v in given.items() if _plain_data(v)])
        network = from_config(network, nn.Module)
        optimizer = from_config(optimizer, OptimizerCallable)
        lr_scheduler = from_config(lr_scheduler, LRSchedulerCallable)
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if not isinstance(network, nn.Module):
            raise TypeError(f"network must be a torch.nn.Module, got {type(network).__name__}")
        if output_clamp is not None and output_clamp <= 0:
            raise ValueError(f"output_clamp must be positive or None, got {output_clamp}")
        if type(shift_augmentation) is not int or shift_augmentation < 0:
            raise ValueError(f"shift_augmentation must be an int >= 0 (pixels), got {shift_augmentation!r}")
        if init_from is not None:
            from equinet.models.fastmri_compat import init_from_fastmri

            new = init_from_fastmri(network, init_from)
            rank_zero_info(f"equinet: network initialised from the fastMRI U-Net {init_from}"
                           + (f"; new parameters keep their initialisation: {', '.join(new)}" if new else ""))
        self.init_from = init_from
        self.network = network
        self.loss_name = loss
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.output_clamp = output_clamp
        self.shift_augmentation = shift_augmentation
        if not isinstance(residual, bool):
            raise ValueError(f"residual must be true or false, got {residual!r}")
        self.residual = residual
        if loss == "ssim":
            from fastmri.losses import SSIMLoss

            self.ssim_loss = SSIMLoss()
        self._records = SliceRecords()
        self._contributions: List[Dict[str, Any]] = []
        self.evaluation: Dict[str, Any] = {}
        # suffix of the report names (`test-<tag>_summary.md`); the CLI sets it from --run.tag
        self.report_tag: Optional[str] = None
        self._checkpoint_progress: Optional[Dict[str, int]] = None

    # ---------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The network's reconstruction (``x + network(x)`` with ``residual``), clamped at evaluation
        (see ``output_clamp``)."""
        out = self.network(x)
        if self.residual:
            if out.shape != x.shape:
                raise ValueError(
                    f"residual: true adds the input to the network's output, so they must have one shape; "
                    f"the network maps {tuple(x.shape)} to {tuple(out.shape)} (set in_channels = out_channels)"
                )
            out = out + x
        if self.output_clamp is not None and not self.training:
            out = out.clamp(-self.output_clamp, self.output_clamp)
        return out

    def per_sample_loss(self, output: torch.Tensor, batch: Any) -> torch.Tensor:
        """The configured loss of each sample, shape ``(B,)``."""
        b = as_batch(batch)
        if self.loss_name == "mse":
            return F.mse_loss(output, b.target, reduction="none").flatten(1).mean(dim=1)
        if self.loss_name == "l1":
            return F.l1_loss(output, b.target, reduction="none").flatten(1).mean(dim=1)
        out, tgt = denormalise(output, b.mean, b.std), denormalise(b.target, b.mean, b.std)
        data_range = torch.as_tensor(b.max_value, dtype=out.dtype, device=out.device).reshape(-1).expand(out.shape[0])
        return self.ssim_loss(out, tgt, data_range, reduced=False).flatten(1).mean(dim=1)

    def augment(self, batch: Any) -> ReconSample:
        """The training batch with input and target circularly shifted together, one random
        shift per sample in ``[-shift_augmentation, shift_augmentation]^2`` (identity if 0)."""
        b = as_batch(batch)
        if not self.shift_augmentation:
            return b
        s = self.shift_augmentation
        dims = b.input.dim() - 2
        # drawn on the batch's device by its default generator (seeded by seed_everything and
        # checkpointed by ResumableRNG, each rank its own): no host round trip, no blocking copy
        shifts = random_shifts(b.input.shape[0], dims, s, device=b.input.device)
        return b._replace(input=circular_shift(b.input, shifts), target=circular_shift(b.target, shifts))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        b = self.augment(batch)
        loss = self.per_sample_loss(self(b.input), b).mean()
        # not on the progress bar: that would read the loss to the host (.item()) every batch;
        # the logger reads it every log_every_n_steps
        self.log("train/loss", loss, batch_size=b.input.shape[0])
        return loss

    # ---------------------------------------------------------------------------------------
    def _evaluation_step(self, batch: Any) -> Dict[str, torch.Tensor]:
        # per-slice metric terms computed on the device and kept there until the epoch ends
        b = as_batch(batch)
        output = self(b.input)
        values = slice_values(denormalise(b.target, b.mean, b.std), denormalise(output, b.mean, b.std), b.max_value)
        values["loss"] = self.per_sample_loss(output, b).detach()
        self._records.add(b.fname, b.slice_num, values)
        return {"output": output}

    def validation_step(self, batch: Any, batch_idx: int) -> Dict[str, torch.Tensor]:
        return self._evaluation_step(batch)

    def test_step(self, batch: Any, batch_idx: int) -> Dict[str, torch.Tensor]:
        return self._evaluation_step(batch)

    def predict_step(self, batch: Any, batch_idx: int) -> Dict[str, Any]:
        """De-normalised reconstructions (original units) with their ``fname``/``slice_num``."""
        b = as_batch(batch)
        return {"fname": b.fname, "slice_num": b.slice_num, "output": denormalise(self(b.input), b.mean, b.std)}

    def on_fit_start(self) -> None:
        # one line when the precision / TF32 flags break the network's exactness guarantee
        warn_if_inexact(self.network, self.trainer.precision, self.device.type)

    def on_validation_epoch_start(self) -> None:
        self._records.clear()
        self._contributions = []

    def on_test_epoch_start(self) -> None:
        self._records.clear()
        self._contributions = []

    def add_to_report(self, volumes: Sequence[Mapping[str, Any]] = (), images: Sequence[Mapping[str, Any]] = (),
                      meta: Optional[Mapping[str, Any]] = None) -> None:
        """Per-volume columns (joined on ``fname``), per-image rows and notes for the report of the
        evaluation under way: how a callback (e.g. :class:`~equinet.lightning.EquivarianceEvaluation`,
        from its ``on_test_epoch_end``) adds its metrics to the summary and tables."""
        self._contributions.append({"volumes": [dict(v) for v in volumes], "images": [dict(i) for i in images],
                                    "meta": dict(meta or {})})

    def on_validation_epoch_end(self) -> None:
        self._finish_evaluation("val")

    def on_test_epoch_end(self) -> None:
        self._finish_evaluation("test")

    def _finish_evaluation(self, stage: str) -> None:
        """Gather + de-duplicate slices over ranks, log volume means, write the report (rank 0)."""
        records, duplicates = gather_unique(self._records)
        self._records.clear()
        volumes = volume_metrics(records)
        images: List[Dict[str, Any]] = []
        meta: Dict[str, Any] = {}
        trainer = self.trainer
        for extra in self._contributions:  # what callbacks added (add_to_report)
            volumes = merge_records_by_volume(volumes, extra["volumes"])
            images += extra["images"]
            meta.update(extra["meta"])
        self._contributions = []
        groups = volume_groups(trainer, stage)
        for v in volumes:
            if v["fname"] in groups:
                v["group"] = groups[v["fname"]]
        summary = summarise(volumes, images)
        summary.update(group_means(volumes))
        # Lightning logs these at the step given by a logged "step" metric: the training step that
        # is evaluated, which the image panels of this evaluation use too
        self.log("step", float(self.evaluation_step), sync_dist=True)
        for name in ("loss", "nmse", "psnr", "ssim"):
            if name in summary:
                # the value is identical on every rank after the gather; sync_dist keeps it so
                # and silences Lightning's "use sync_dist in distributed" warning
                self.log(f"{stage}/{name}", summary[name], sync_dist=True, prog_bar=name == "ssim")
        self.evaluation = {"stage": stage, "volumes": volumes, "images": images, "summary": summary,
                           "slices": len(records), "duplicates_dropped": duplicates}
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        ckpt = getattr(trainer, "ckpt_path", None)
        progress = {"epoch": trainer.current_epoch, "global_step": trainer.global_step}
        if self._evaluates_checkpoint():
            progress = self._checkpoint_progress  # evaluating a checkpoint: its training progress
        meta = {"data": describe_data(trainer.datamodule), "network": _describe(self),
                "epoch": progress["epoch"], "global step": progress["global_step"],
                "checkpoint": ckpt or "(weights in memory)", "volumes": len(volumes), "slices": len(records),
                "duplicate slices dropped (distributed sampler padding)": duplicates,
                "world size": trainer.world_size, **meta}
        self.evaluation["files"] = write_report(Path(trainer.default_root_dir), report_name(stage, self.report_tag),
                                                volumes, images, summary, meta)

    def _evaluates_checkpoint(self) -> bool:
        return self.trainer.state.fn != "fit" and self._checkpoint_progress is not None

    @property
    def evaluation_step(self) -> int:
        """The logger step of an evaluation's scalars and image panels: the training step evaluated
        (``trainer.global_step`` during fit; the checkpoint's step when evaluating a checkpoint)."""
        if self._evaluates_checkpoint():
            return int(self._checkpoint_progress.get("global_step") or 0)
        return self.trainer.global_step

    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        # the checkpoint holds the trained weights: rebuilding it must not re-read init_from
        hparams = checkpoint.get(self.CHECKPOINT_HYPER_PARAMS_KEY)
        if isinstance(hparams, Mapping) and hparams.get("init_from") is not None:
            checkpoint[self.CHECKPOINT_HYPER_PARAMS_KEY] = {**hparams, "init_from": None,
                                                            "initialised_from": hparams["init_from"]}

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        # remembered for the reports of validate/test runs: which training state is evaluated
        self._checkpoint_progress = {"epoch": checkpoint.get("epoch"), "global_step": checkpoint.get("global_step")}

    # ---------------------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameters())
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer)
        config: Dict[str, Any] = {"scheduler": scheduler, "interval": "epoch"}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            config["monitor"] = "val/loss"
        return {"optimizer": optimizer, "lr_scheduler": config}


def _describe(module: ReconstructionModule) -> str:
    """``UNet(sampling=aps, sampling_kwargs={'filter_size': 1}, ...)`` for reports."""
    net = module.network
    args = module.hparams.get("network", {}).get("init_args") if isinstance(module.hparams.get("network"), dict) else None
    if args is None:
        args = {k: getattr(net, k) for k in ("sampling", "sampling_kwargs", "widths") if hasattr(net, k)}
    return f"{type(net).__name__}(" + ", ".join(f"{k}={v}" for k, v in args.items()) + ")"


def volume_groups(trainer: Optional[pl.Trainer], stage: str) -> Dict[str, str]:
    """``{fname: group}`` from the DataModule's ``volume_groups(stage)`` if it has one (fastMRI: the
    acquisition, PD or PDFS), so reports can split the metrics by group."""
    datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
    method = getattr(datamodule, "volume_groups", None)
    return dict(method(stage)) if callable(method) else {}


def describe_data(datamodule: Any) -> str:
    """Which data an evaluation ran on, for its report: the dataset root, or that the data were
    the generated synthetic dataset (an equinet DataModule says so itself)."""
    if datamodule is None:
        return "dataloaders passed to the Trainer directly"
    if hasattr(datamodule, "data_description"):
        return datamodule.data_description()
    return type(datamodule).__name__


def from_config(value: Any, kind: Any) -> Any:
    """The object a ``{class_path, init_args}`` config describes (built by jsonargparse as the CLI
    builds it, for the type ``kind``); any other value is returned as it is."""
    if not (isinstance(value, dict) and "class_path" in value):
        return value
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--value", type=kind)
    return parser.instantiate(parser.parse_object({"value": value})).value


def _plain_data(value: Any) -> bool:
    """True for JSON-like data (what ``torch.load(weights_only=True)`` reads back)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain_data(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain_data(v) for k, v in value.items())
    return False


def merge_records_by_volume(volumes: List[Dict[str, Any]], extra: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Join two per-volume tables on ``fname``."""
    by_name = {v["fname"]: dict(v) for v in volumes}
    for e in extra:
        by_name.setdefault(e["fname"], {"fname": e["fname"]}).update(
            {k: v for k, v in e.items() if k not in ("slices", "max_value") or k not in by_name[e["fname"]]})
    return [by_name[k] for k in sorted(by_name)]


__all__ = ["LOSSES", "ReconstructionModule", "merge_records_by_volume"]

"""Running a study: every variant is an ordinary run folder made by ``equinet fit`` + ``equinet test``.

Per variant ``v`` (run folder ``<study>/runs/<v>``), in order, each stage skipped when its
output exists -- so a killed study continues where it stopped, and resuming an interrupted
training is Lightning's ``--ckpt_path last``:

1. ``fit``  (``equinet fit --config configs/v.yaml ... --ckpt_path last``),
2. ``test`` on the held-out split (the run's test reports: reconstruction and equivariance),
3. ``ood``: ``test`` of the same checkpoint on the out-of-distribution set (if configured),
4. ``extras``: the shift example of the paper's Fig. 4 (``study_example.npz``) and the cost
   columns next to the baseline (``study.json``), computed here, in the study process.

The reference row ``input`` (the network input scored against the target) is the same
``equinet test`` with an identity network. Runs go in-process (no import cost per run) unless
a run uses more than one device or node: Lightning's DDP launcher re-executes the current
command for every rank, so such a run gets its own ``python -m equinet fit|test`` process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch

from equinet.files import atomic_write
from equinet.lightning.runs import is_rank_zero
from equinet.study.config import INPUT, NETWORK, StudyError, get_dotted, instantiate
from equinet.study.plan import Study, write_plan
from equinet.study.results import EXAMPLE_FILE, STUDY_JSON, RunLayout, read_json, read_row, update_json

LAUNCHERS = ("auto", "inprocess", "subprocess")


# --------------------------------------------------------------------------------------------
# launching equinet fit/test
# --------------------------------------------------------------------------------------------
def device_count(trainer: Mapping[str, Any]) -> int:
    """How many processes Lightning would start for this trainer config (devices x nodes)."""
    devices = trainer.get("devices", "auto")
    accelerator = str(trainer.get("accelerator", "auto"))
    gpus = torch.cuda.device_count()
    if isinstance(devices, (list, tuple)):
        count = len(devices)
    elif isinstance(devices, int):
        count = (gpus or 1) if devices == -1 else devices
    else:
        text = str(devices).strip()
        if text == "auto":
            count = 1 if accelerator == "cpu" else max(1, gpus)
        elif text == "-1":
            count = max(1, gpus)
        elif "," in text:
            count = len([t for t in text.split(",") if t.strip()])
        else:
            count = int(text) if text.isdigit() else 1
    return max(1, count) * max(1, int(trainer.get("num_nodes", 1) or 1))


class Launcher:
    """Runs ``equinet fit|test ARGS`` in this process or as ``python -m equinet ...``."""

    def __init__(self, mode: str = "auto", threads: Optional[int] = None) -> None:
        if mode not in LAUNCHERS:
            raise StudyError(f"launcher must be one of {LAUNCHERS}, got {mode!r}")
        self.mode = mode
        self.threads = threads

    def resolve(self, run_config: Mapping[str, Any]) -> str:
        if self.mode != "auto":
            return self.mode
        return "subprocess" if device_count(run_config.get("trainer") or {}) > 1 else "inprocess"

    def __call__(self, argv: Sequence[str], run_config: Mapping[str, Any]) -> None:
        if self.resolve(run_config) == "inprocess":
            from equinet.lightning.cli import lightning_main

            # as if `equinet fit ...` had been typed (LightningCLI warns when its args differ from
            # sys.argv); afterwards undo what a run changes globally (trainer.deterministic)
            saved = (
                sys.argv,
                torch.are_deterministic_algorithms_enabled(),
                torch.is_deterministic_algorithms_warn_only_enabled(),
                os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
            )
            sys.argv = [saved[0][0] if saved[0] else "equinet", *argv]
            try:
                lightning_main(list(argv))
            finally:
                sys.argv = saved[0]
                torch.use_deterministic_algorithms(saved[1], warn_only=saved[2])
                if saved[3] is None:
                    os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
            return
        env = dict(os.environ)
        if self.threads:
            env["OMP_NUM_THREADS"] = str(self.threads)
        done = subprocess.run([sys.executable, "-m", "equinet", *argv], env=env)
        if done.returncode != 0:
            raise StudyError(
                f"`equinet {' '.join(argv)}` failed with exit code {done.returncode} (its output is above)"
            )


# --------------------------------------------------------------------------------------------
# the study-process stages: shift example (Fig. 4) and cost
# --------------------------------------------------------------------------------------------
def study_device(run_config: Mapping[str, Any]) -> torch.device:
    """The one device the study process uses for its own measurements."""
    accelerator = str(get_dotted(run_config, "trainer.accelerator", "auto"))
    if accelerator != "cpu" and torch.cuda.is_available():
        return torch.device("cuda", 0)
    if (
        accelerator in ("auto", "mps")
        and getattr(torch.backends, "mps", None)
        and torch.backends.mps.is_available()
    ):
        return torch.device("mps")
    return torch.device("cpu")


def load_trained(config: Mapping[str, Any], checkpoint: Path):
    """The variant's ReconstructionModule with the weights of ``checkpoint`` (eval mode)."""
    from equinet.lightning.module import ReconstructionModule

    network = instantiate(get_dotted(config, NETWORK))
    module = ReconstructionModule(network, output_clamp=get_dotted(config, "model.output_clamp", 6.0))
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    module.load_state_dict(state)
    return module.eval()


class StudyData:
    """The test split of the study's data, built once in the study process (Fig. 4, cost batch)."""

    def __init__(self, run_config: Mapping[str, Any]) -> None:
        self.spec = run_config["data"]
        self._module = None

    @property
    def module(self):
        if self._module is None:
            module = instantiate(self.spec)
            module.setup("test")
            self._module = module
        return self._module

    def sample(self, index: Optional[int]):
        """Test sample ``index``; by default the middle slice of the first test volume."""
        dataset = self.module.test_set
        if index is None:
            raw = getattr(dataset, "raw_samples", None)  # fastMRI: (fname, slice, metadata) per sample
            index = sum(1 for s in raw if s.fname == raw[0].fname) // 2 if raw else 0
        return dataset[int(index)]

    def batch(self):
        return next(iter(self.module.test_dataloader()))


@torch.no_grad()
def shift_example(module, sample, shift: Sequence[int], device: torch.device) -> Dict[str, np.ndarray]:
    """The APS-U paper's Fig. 4 for one image: ``x``, ``T_k x``, ``G(x)``, ``G(T_k x)``, the target,
    and the PSNR of both outputs (against ``y`` and ``T_k y``), in original units."""
    from equinet.metrics import circular_shift, psnr

    module = module.to(device)
    x = sample.input[None].to(device)
    k = [int(s) for s in shift]
    out = module(x)
    out_shifted = module(circular_shift(x, k))
    mean, std = float(sample.mean), float(sample.std)

    def original(t: torch.Tensor) -> torch.Tensor:
        return (t * std + mean)[0, 0].double().cpu()

    target = original(sample.target[None].to(device))
    max_value = float(sample.max_value)
    before = psnr(target.numpy(), original(out).numpy(), max_value)
    after = psnr(circular_shift(target, k).numpy(), original(out_shifted).numpy(), max_value)
    return {
        "input": original(x).numpy(),
        "shifted_input": original(circular_shift(x, k)).numpy(),
        "output": original(out).numpy(),
        "shifted_output": original(out_shifted).numpy(),
        "target": target.numpy(),
        "shift": np.array(k),
        "psnr": np.array(before),
        "psnr_shifted": np.array(after),
        "max_value": np.array(max_value),
        "fname": np.array(str(sample.fname)),
        "slice_num": np.array(int(sample.slice_num)),
    }


def save_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)


# --------------------------------------------------------------------------------------------
# the study
# --------------------------------------------------------------------------------------------
def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


class StudyRunner:
    """Runs the selected variants of ``study`` into ``study_dir`` (see the module docstring)."""

    def __init__(
        self,
        study: Study,
        study_dir: Path,
        launcher: Launcher,
        log: Callable[[str], None] = lambda line: print(line, flush=True),
    ) -> None:
        self.study = study
        self.layout = RunLayout(study_dir)
        self.launcher = launcher
        self.log = log
        self.data = StudyData(study.run)
        self.device = study_device(study.run)
        self.rank_zero = is_rank_zero(os.environ)  # under srun/torchrun every rank runs the study

    # -- stages ------------------------------------------------------------------------------
    def finished(self, variant: str) -> bool:
        """All of the variant's results exist (a killed study does not redo it)."""
        lay = self.layout
        if not lay.report(variant, "volumes.csv").is_file():
            return False
        if self.study.ood and not lay.report(variant, "volumes.csv", tag="ood").is_file():
            return False
        if variant == INPUT:
            return True
        info = read_json(lay.folder(variant) / STUDY_JSON)
        return "cost" in info and (lay.folder(variant) / EXAMPLE_FILE).is_file()

    def run_variant(self, variant: str) -> None:
        lay, cfg = self.layout, self.study.variant_config(variant)
        folder = lay.folder(variant)
        config_path = str(lay.config(variant))
        is_input = variant == INPUT
        if not lay.report(variant, "volumes.csv").is_file():
            if not is_input:
                if self.rank_zero:  # counted before it starts: a killed attempt shows as one
                    update_json(
                        folder / STUDY_JSON,
                        fit_attempts=read_json(folder / STUDY_JSON).get("fit_attempts", 0) + 1,
                    )
                start = time.perf_counter()
                self.launcher(
                    ["fit", "--config", config_path, *lay.location_args(variant), "--ckpt_path", "last"], cfg
                )
                if self.rank_zero:  # wall-clock time of the attempts that finished
                    info = read_json(folder / STUDY_JSON)
                    update_json(
                        folder / STUDY_JSON,
                        train_seconds=info.get("train_seconds", 0.0) + time.perf_counter() - start,
                    )
            test = ["test", "--config", config_path, *lay.location_args(variant), "--verbose", "false"]
            self.launcher(test if is_input else test + ["--ckpt_path", "last"], cfg)
        if self.study.ood and not lay.report(variant, "volumes.csv", tag="ood").is_file():
            ood = [
                "test",
                "--config",
                str(lay.config(variant, "ood")),
                "--verbose",
                "false",
                *(
                    lay.location_args(variant) + ["--run.tag", "ood"]
                    if is_input
                    else lay.evaluation_args(variant, "ood")
                ),
            ]
            self.launcher(ood, self.study.ood_config(variant))
        if is_input or not self.rank_zero:
            return
        self.extras(variant, cfg)

    def extras(self, variant: str, cfg: Mapping[str, Any]) -> None:
        """Fig. 4 example and cost columns, computed in the study process."""
        folder = self.layout.folder(variant)
        example_path = folder / EXAMPLE_FILE
        if not example_path.is_file():
            module = load_trained(cfg, self.layout.last_checkpoint(variant))
            examples = self.study.config["examples"]
            arrays = shift_example(
                module, self.data.sample(examples.get("index")), examples.get("shift", (8, 5)), self.device
            )
            save_npz(example_path, arrays)
        if "cost" not in read_json(folder / STUDY_JSON):
            update_json(folder / STUDY_JSON, cost=self.cost(variant, cfg))

    def cost(self, variant: str, cfg: Mapping[str, Any]) -> Dict[str, Any]:
        from equinet.study.cost import measure_cost

        settings = self.study.config["cost"]
        reference = settings.get("reference") or variant
        seed = int(get_dotted(cfg, "seed_everything", 0) or 0)
        torch.manual_seed(seed)
        network = instantiate(get_dotted(cfg, NETWORK))
        torch.manual_seed(seed)
        ref_network = instantiate(get_dotted(self.study.variant_config(reference), NETWORK))
        batch = self.data.batch()
        same = get_dotted(self.study.variant_config(reference), NETWORK) == get_dotted(cfg, NETWORK)
        result = measure_cost(
            network,
            ref_network,
            batch.input,
            batch.target,
            self.device,
            repeats=int(settings.get("repeats", 7)),
            warmup=int(settings.get("warmup", 2)),
            same=same,
        )
        result["reference"] = reference
        return result

    # -- the loop ------------------------------------------------------------------------------
    def run(self, variants: Sequence[str]) -> List[str]:
        """Run ``variants`` (plus the input row) with progress lines; returns those run now."""
        if self.rank_zero:
            write_plan(self.study, self.layout.study_dir)
        todo = [INPUT] + [v for v in variants if v != INPUT]
        n = len(todo)
        spent: List[float] = []
        ran: List[str] = []
        study_start = time.perf_counter()
        for i, variant in enumerate(todo, 1):
            tag = f"[{i}/{n}] {variant}"
            if self.finished(variant):
                self.log(f"{tag}: finished earlier, results read back from {self.layout.folder(variant)}")
                continue
            left = sum(1 for v in todo[i - 1 :] if v != INPUT and not self.finished(v))
            eta = (
                f"; ETA for the rest of the study ~{_minutes(np.mean(spent) * left)}"
                if spent and left
                else ""
            )
            self.log(f"{tag}: starting{eta}")
            start = time.perf_counter()
            self.run_variant(variant)
            seconds = time.perf_counter() - start
            if variant != INPUT:
                spent.append(seconds)
            ran.append(variant)
            left = sum(1 for v in todo[i:] if v != INPUT and not self.finished(v))
            eta = f"; ~{_minutes(np.mean(spent) * left)} left for {left} more" if left and spent else ""
            self.log(f"{tag}: finished in {_minutes(seconds)}{self._headline(variant)}{eta}")
        self.log(
            f"study: {len(ran)} run(s) in {_minutes(time.perf_counter() - study_start)} -> "
            f"{self.layout.study_dir}"
        )
        return ran

    def _headline(self, variant: str) -> str:
        try:
            row = read_row(self.layout, variant)
        except (OSError, ValueError):
            return ""
        if not row:
            return ""
        parts = [f"PSNR {row['psnr']:.2f} dB"] if row.get("psnr") is not None else []
        if variant != INPUT and row.get("eq_nmse") is not None:
            parts.append(f"eq. NMSE {row['eq_nmse']:.2e}")
        return " (" + ", ".join(parts) + ")" if parts else ""

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
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

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
        self._representative: Optional[Tuple[int, str]] = None

    @property
    def module(self):
        if self._module is None:
            module = instantiate(self.spec)
            module.setup("test")
            self._module = module
        return self._module

    def sample(self, index: Optional[int]):
        """Test sample ``index``; by default the representative one (:meth:`representative`)."""
        dataset = self.module.test_set
        if index is None:
            index, _ = self.representative()
        return dataset[int(index)]

    def representative(self) -> Tuple[int, str]:
        """The test slice whose zero-filled input has the median SSIM against its target (a
        typical input, not a best or worst case; the lower median for an even count), and why."""
        from equinet.metrics import ssim_per_slice

        if self._representative is not None:
            return self._representative
        dataset = self.module.test_set
        scores = []
        for i in range(len(dataset)):  # one slice at a time: each has its own size and data range
            sample = dataset[i]
            mean, std = float(sample.mean), float(sample.std)
            x = (sample.input.double() * std + mean).reshape(1, *sample.input.shape[-2:])
            y = (sample.target.double() * std + mean).reshape(1, *sample.target.shape[-2:])
            scores.append(float(ssim_per_slice(y, x, float(sample.max_value))[0]))
        order = np.argsort(np.asarray(scores), kind="stable")
        index = int(order[(len(order) - 1) // 2])
        why = f"median zero-filled SSIM ({scores[index]:.3f}) of the {len(scores)} test slices"
        self._representative = (index, why)
        return self._representative

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
            index = examples.get("index")
            why = f"test sample {index} (the study's examples.index)"
            if index is None:
                index, why = self.data.representative()
            arrays = shift_example(module, self.data.sample(index), examples.get("shift", (8, 5)), self.device)
            arrays["selection"] = np.array(why)
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
    def pending(self, variants: Sequence[str]) -> List[str]:
        """The input row and ``variants`` that have not finished yet, in study order."""
        return [v for v in [INPUT] + [v for v in variants if v != INPUT] if not self.finished(v)]

    def run(self, variants: Sequence[str], placement: Optional["Placement"] = None) -> List[str]:
        """Run ``variants`` (plus the input row) with one line per start and finish; returns those
        run now. ``placement``: how many worker processes run side by side (default: one, here)."""
        placement = placement or Placement(1, None, [None])
        if self.rank_zero:
            write_plan(self.study, self.layout.study_dir)
        todo = [INPUT] + [v for v in variants if v != INPUT]
        tags = {v: f"[{i}/{len(todo)}] {v}" for i, v in enumerate(todo, 1)}
        pending = []
        for variant in todo:
            if self.finished(variant):
                self.log(f"{tags[variant]}: finished earlier, results read back from {self.layout.folder(variant)}")
            else:
                pending.append(variant)
        wall, cpu = time.perf_counter(), cpu_seconds()
        progress = _Progress(self, tags, pending, placement.workers)
        if placement.workers > 1 and len(pending) > 1:
            self._run_workers(pending, placement, progress)
        else:
            for variant in pending:
                progress.start(variant)
                start = time.perf_counter()
                self.run_variant(variant)
                progress.finish(variant, time.perf_counter() - start)
        wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
        cores = usable_cores()
        self.log(
            f"study time: {_minutes(wall)} wall, {_minutes(cpu)} CPU on {cores} core{'s' * (cores > 1)}: "
            f"CPU / wall = {cpu / wall if wall > 0 else 0.0:.2f} ({len(progress.ran)} run(s), "
            f"{min(placement.workers, max(1, len(pending)))} worker(s)) -> {self.layout.study_dir}"
        )
        return progress.ran

    def _run_workers(self, pending: List[str], placement: "Placement", progress: "_Progress") -> None:
        """Run ``pending`` in ``placement.workers`` worker processes (spawned: CUDA-safe), at most
        one variant per worker at a time; each worker's output goes to ``logs/<variant>.log``."""
        import multiprocessing
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
        from concurrent.futures.process import BrokenProcessPool

        prepare_data(self.study)  # generated data and caches: once, here, not by every worker at once
        context = multiprocessing.get_context("spawn")
        devices = context.Queue()
        for device in placement.devices:
            devices.put(device)
        logs = self.layout.log(INPUT).parent
        todo, running, failed = list(pending), {}, []
        with ProcessPoolExecutor(
            placement.workers,
            mp_context=context,
            initializer=_worker_start,
            initargs=(devices, placement.threads, str(logs)),
        ) as pool:
            while todo or running:
                while todo and len(running) < placement.workers and not failed:
                    variant = todo.pop(0)
                    progress.start(variant, f"log: {self.layout.log(variant)}")
                    future = pool.submit(
                        _worker_run, self.study, str(self.layout.study_dir), self.launcher.mode,
                        placement.threads, variant,
                    )
                    running[future] = variant
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    variant = running.pop(future)
                    try:
                        seconds, cpu = future.result()
                    except BrokenProcessPool:
                        failed.append(f"{variant}: its worker process died (killed? out of memory?)")
                        todo = []
                    except Exception as err:  # noqa: BLE001 -- reported with the variant's log below
                        failed.append(f"{variant}: {err}")
                    else:
                        progress.finish(variant, seconds, cpu)
                        continue
                    self.log(f"{progress.tags[variant]}: FAILED; its output: {self.layout.log(variant)}")
        if failed:
            raise StudyError(
                "study stopped: " + "; ".join(failed) + f". Outputs in {logs}; the same command "
                "continues the study (finished variants are kept, an interrupted training resumes)."
            )

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


class _Progress:
    """The study's progress lines: one per variant start and finish, with times and an estimate."""

    def __init__(self, runner: StudyRunner, tags: Mapping[str, str], pending: Sequence[str], workers: int) -> None:
        self.runner, self.tags, self.left, self.workers = runner, tags, list(pending), max(1, workers)
        self.spent: List[float] = []
        self.ran: List[str] = []

    def _eta(self, prefix: str) -> str:
        trained = [v for v in self.left if v != INPUT]
        if not (self.spent and trained):
            return ""
        rest = np.mean(self.spent) * len(trained) / min(self.workers, len(trained))
        return f"; {prefix} ~{_minutes(rest)} for {len(trained)} more"

    def start(self, variant: str, where: str = "") -> None:
        self.runner.log(f"{self.tags[variant]}: starting{f' ({where})' if where else ''}{self._eta('ETA')}")

    def finish(self, variant: str, seconds: float, cpu: Optional[float] = None) -> None:
        self.left.remove(variant)
        self.ran.append(variant)
        if variant != INPUT:
            self.spent.append(seconds)
        cpu_text = f", {_minutes(cpu)} CPU" if cpu is not None else ""
        self.runner.log(
            f"{self.tags[variant]}: finished in {_minutes(seconds)}{cpu_text}{self.runner._headline(variant)}"
            f"{self._eta('then')}"
        )


# --------------------------------------------------------------------------------------------
# workers: variants side by side (CPU cores or one GPU each)
# --------------------------------------------------------------------------------------------
@dataclass
class Placement:
    """How a study's runs share the machine: ``workers`` processes side by side, ``threads``
    torch CPU threads per run (``None``: torch's default), ``devices[i]`` the CUDA device that
    worker ``i`` sees (``CUDA_VISIBLE_DEVICES``; ``None``: unchanged)."""

    workers: int
    threads: Optional[int]
    devices: List[Optional[str]]
    where: str = "in this process"


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. under SLURM or taskset)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def cuda_devices(run_config: Mapping[str, Any]) -> List[str]:
    """The CUDA devices a run of ``run_config`` may use (ids as ``CUDA_VISIBLE_DEVICES`` names them)."""
    if str(get_dotted(run_config, "trainer.accelerator", "auto")) == "cpu" or not torch.cuda.is_available():
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = [d.strip() for d in visible.split(",") if d.strip()] if visible else []
    return [names[i] if i < len(names) else str(i) for i in range(torch.cuda.device_count())]


def distributed(env: Mapping[str, str]) -> bool:
    """Whether this study process is one rank of several (torchrun, srun): its runs join the others."""
    world = [env.get("WORLD_SIZE"), env.get("SLURM_NTASKS") if "SLURM_PROCID" in env else None]
    return any(str(w).isdigit() and int(w) > 1 for w in world)


def plan_workers(
    study: Study,
    launcher: Launcher,
    requested: Optional[int] = None,
    runnable: Optional[int] = None,
    cores: Optional[int] = None,
    gpus: Optional[Sequence[str]] = None,
) -> Placement:
    """How many variants run side by side, and with how many threads each.

    On GPUs one worker per device (each sees only its own); on a CPU as many workers as cores
    allow, ``workers x threads = cores``. The threads per run are the study's ``threads``, or
    (``null``) ``cores // min(cores, runs of the study)``: a function of the study and the machine
    only, never of ``--workers`` or of what is left to run, so a study's numbers do not depend on
    how many workers ran it (a CPU's kernels round differently with another thread count). Runs
    that each use several devices (DDP) or a study started on several ranks run one at a time.
    ``runnable``: how many runs are left (no more workers than that).
    """
    cores = usable_cores() if cores is None else int(cores)
    gpus = list(cuda_devices(study.run) if gpus is None else gpus)
    runs = 1 + len(study.variants)  # the input row is a run too
    slots = len(gpus) or cores
    threads = study.config.get("threads") or max(1, cores // min(slots, runs))
    if requested is not None and requested < 1:
        raise StudyError(f"--workers must be >= 1 (or auto), got {requested}")
    alone = "in this process" if launcher.resolve(study.run) == "inprocess" else "as subprocesses"
    if device_count(study.run.get("trainer") or {}) > 1 or distributed(os.environ):
        if requested and requested > 1:
            raise StudyError(
                f"--workers {requested}: these runs use several devices or processes each (DDP, or a "
                "study on several ranks), so they run one after another; use --workers 1, or give "
                "each run one device (--trainer.devices 1) to run them side by side"
            )
        return Placement(1, threads, [None], alone)
    if requested is None:
        requested = len(gpus) if gpus else max(1, cores // threads)
    workers = max(1, min(requested, runs if runnable is None else max(1, runnable)))
    if workers == 1:
        return Placement(1, threads, [None], alone)
    if not gpus:
        return Placement(workers, threads, [None] * workers, f"in {workers} worker processes side by side")
    where = "one GPU each" if len(gpus) >= workers else f"sharing {len(gpus)} GPU(s)"
    return Placement(
        workers, threads, [gpus[i % len(gpus)] for i in range(workers)], f"in {workers} worker processes, {where}"
    )


def prepare_data(study: Study) -> None:
    """What Lightning's ``prepare_data`` does on one process (generated data, caches), for the
    study's data and OOD data, before workers that would each do it at once."""
    for spec in (study.run["data"], study.ood_data() if study.ood else None):
        if spec is not None:
            instantiate(spec).prepare_data()


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (workers, subprocess runs)."""
    try:
        import resource
    except ImportError:  # not on Unix: this process only
        return time.process_time()
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@contextmanager
def output_to(path: Path):
    """This process's stdout and stderr (file descriptors 1 and 2, so also what C code and
    subprocesses write) appended to ``path`` while inside."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    try:
        with open(path, "a") as f:
            os.dup2(f.fileno(), 1)
            os.dup2(f.fileno(), 2)
            yield
            sys.stdout.flush()
            sys.stderr.flush()
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


_WORKER: Dict[str, Any] = {}  # per worker process: its device, threads and StudyRunner


def _worker_start(devices, threads: Optional[int], logs: str) -> None:
    """A worker's start: its one CUDA device (before CUDA starts), its threads, its own log."""
    try:
        device = devices.get(timeout=60)
    except Exception:  # noqa: BLE001 -- more workers than devices listed: share the default
        device = None
    if device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(device)
    if threads:
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(int(threads))
    _WORKER.update(device=device, threads=torch.get_num_threads())
    # what the worker prints between variants (import warnings, ...) stays off the study's console
    path = Path(logs) / f"worker-{os.getpid()}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a")
    os.dup2(f.fileno(), 1)
    os.dup2(f.fileno(), 2)
    _WORKER["log"] = f


def _worker_run(study: Study, study_dir: str, mode: str, threads: Optional[int], variant: str):
    """Run one variant in a worker process; returns its wall-clock and CPU seconds."""
    runner = _WORKER.get("runner")
    if runner is None or str(runner.layout.study_dir) != study_dir:
        runner = _WORKER["runner"] = StudyRunner(study, Path(study_dir), Launcher(mode, threads), log=print)
    start, cpu = time.perf_counter(), cpu_seconds()
    with output_to(runner.layout.log(variant)):
        device = _WORKER.get("device")
        print(
            f"# equinet study worker pid {os.getpid()}, {_WORKER.get('threads')} torch thread(s)"
            f"{f', CUDA device {device}' if device is not None else ''}: {variant}, started "
            f"{time.strftime('%Y-%m-%d %H:%M:%S')}",
            flush=True,
        )
        try:
            runner.run_variant(variant)
        except BaseException as err:  # noqa: BLE001 -- the traceback goes to the variant's log
            traceback.print_exc()
            raise StudyError(f"{type(err).__name__}: {str(err).strip() or 'failed'}") from None
    return time.perf_counter() - start, cpu_seconds() - cpu

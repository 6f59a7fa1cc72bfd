"""One prepared check of equinet on a device (issue 19): ``make gpu-check`` on a CUDA machine,
``make gpu-check GPU_CHECK_ARGS="--device cpu --quick"`` anywhere. Writes one report with every
figure (default ``outputs/gpu-check/report.md``) and exits 1 if a step failed.

Steps (each timed, each with its own time limit, sized to fit 8 min on one GPU, 5 min on 2 CPU cores
with ``--quick``):

1. ``environment``: torch, device, compute capability, the ``torch.backends`` flags that matter.
2. ``exactness``: every adaptive U-Net (APS 1/3/5, LPS, orthogonal-adaptive; random-init and
   briefly trained) and the adaptive iUNet on the tie families of ``tests/_ties_helpers.py``
   (zero, constant, checkerboards, stripes, ramps, lattices, hot pixel, blocks, natural ...),
   run *on the device*: worst equivariance NMSE over 4 shifts against the CPU contract (1e-12).
3. ``pytest``: the exactness and tie tests (``tests/test_ties.py``, ``tests/test_emulated_backend.py``,
   ``tests/test_cuda_settings.py``; CPU references, the slow ones skipped with ``--quick``).
4. ``training``: one short fit of every strategy (and the iUNet) on the device under ``32-true``
   and ``bf16-mixed``: step time, final loss, whether the exactness warning fired.
5. ``unet_step`` / ``iunet_memory`` / ``host_syncs``: the benchmarks with ``--device`` (small sizes
   with ``--quick``); ``host_syncs.py`` is reported "missing" where the checkout lacks it.
6. ``study``: a 2-variant study (baseline, APS) on synthetic data on the device.
7. ``ddp``: a 1-device DDP fit (``--trainer.strategy ddp --trainer.devices 1``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(REPO / "tests"))  # the tie families and toy data of the test suite

import torch  # noqa: E402

STEPS = ("environment", "exactness", "pytest", "training", "unet_step", "iunet_memory", "host_syncs", "study", "ddp")
CONTRACT_NMSE = 1e-12


class Step:
    """One step's outcome: ``ok`` / ``miss`` (ran, a figure misses its target) / ``fail`` / ``missing``
    (a script this checkout lacks) / ``skipped`` (the time budget was spent)."""

    def __init__(self, name: str) -> None:
        self.name, self.status, self.seconds, self.lines = name, "ok", 0.0, []  # type: ignore[var-annotated]

    def add(self, text: str) -> None:
        self.lines.append(text)

    def table(self, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        self.add("| " + " | ".join(header) + " |")
        self.add("|" + "|".join("---" for _ in header) + "|")
        for row in rows:
            self.add("| " + " | ".join(_fmt(v) for v in row) + " |")
        self.add("")


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if (v == 0 or 1e-3 <= abs(v) < 1e4) else f"{v:.2e}"
    return str(v)


def _env(device: str) -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "tests"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("WANDB_MODE", "offline")
    return env


_BANNERS = ("GPU available:", "TPU available:", "💡 Tip:", "`Trainer.fit` stopped:", "HPU available:")


def _is_banner(line: str) -> bool:
    """Lightning's per-Trainer banner lines, repeated for every fit; they carry no figure."""
    return line.lstrip().startswith(_BANNERS)


def _run(step: Step, cmd: List[str], timeout: float, device: str, cwd: Path = REPO, tail: int = 60) -> int:
    """Run ``cmd``, put its last ``tail`` output lines in the report; returns the exit status."""
    step.add(f"`{' '.join(str(c) for c in cmd)}`")
    try:
        # One stream in the order it was written (unbuffered), so the tail holds the script's own table
        # and not only Lightning's stderr banner printed after it.
        env = dict(_env(device), PYTHONUNBUFFERED="1")
        proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=timeout, check=False)
        out, rc = proc.stdout, proc.returncode
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        out, rc = out + f"\n(timed out after {timeout:.0f} s)", 124
    lines = [ln for ln in out.splitlines() if ln.strip() and not _is_banner(ln)]
    step.add("```")
    step.lines.extend(lines[-tail:])
    step.add("```")
    step.add(f"exit status {rc}")
    if rc != 0:
        step.status = "fail"
    return rc


# --------------------------------------------------------------------------------------------
# the steps
# --------------------------------------------------------------------------------------------
def step_environment(step: Step, device: str, quick: bool) -> None:
    rows = [("python", platform.python_version()), ("torch", torch.__version__), ("device", device),
            ("torch.cuda.is_available()", torch.cuda.is_available())]
    if device.startswith("cuda"):
        idx = torch.device(device).index or 0
        major, minor = torch.cuda.get_device_capability(idx)
        rows += [("GPU", torch.cuda.get_device_name(idx)), ("compute capability", f"sm_{major}{minor}"),
                 ("CUDA (torch build)", torch.version.cuda), ("cuDNN", torch.backends.cudnn.version()),
                 ("GPU memory (GiB)", round(torch.cuda.get_device_properties(idx).total_memory / 2**30, 1))]
    rows += [("torch.backends.cudnn.allow_tf32", torch.backends.cudnn.allow_tf32),
             ("torch.backends.cuda.matmul.allow_tf32", torch.backends.cuda.matmul.allow_tf32),
             ("float32_matmul_precision", torch.get_float32_matmul_precision()),
             ("torch.backends.cudnn.deterministic", torch.backends.cudnn.deterministic),
             ("torch.backends.cudnn.benchmark", torch.backends.cudnn.benchmark),
             ("CPU threads", torch.get_num_threads())]
    step.table(("setting", "value"), rows)


def exactness_rows(device: str, quick: bool, names: Optional[Sequence[str]] = None) -> List[List[object]]:
    """Worst equivariance NMSE per network on the tie families, run on ``device`` (float32)."""
    from _ties_helpers import ADAPTIVE, FAMILIES, adaptive_iunet, batch, equivariance_nmse, unet

    shifts = [(1, 0), (3, -5), (-7, 2), (16, 16)]
    rows: List[List[object]] = []
    names = names or (QUICK_EXACTNESS if quick else list(ADAPTIVE) + ["iUNet"])
    for trained in (False,) if quick else (False, True):
        for name in (n for n in names if n != "iUNet"):
            net = _copy(unet(name, 2, trained)).to(device)
            x = batch(FAMILIES, 2, 32, channels=2).to(device)
            worst = torch.stack([equivariance_nmse(net, x, k) for k in shifts]).amax(0).cpu()
            rows.append([f"UNet {name}", "trained" if trained else "init", len(FAMILIES), float(worst.max()),
                         _at(worst, FAMILIES), "-", "ok" if worst.max() <= CONTRACT_NMSE else "MISS"])
        if "iUNet" in names:
            net = _copy(adaptive_iunet(2, trained)).to(device)
            x = batch(FAMILIES, 2, 32, channels=4).to(device)
            decided = net.grid_choices_decided(x).cpu()
            worst = torch.stack([equivariance_nmse(net, x, k) for k in shifts]).amax(0).cpu()
            with torch.no_grad():
                inv = ((net.inverse(net(x)) - x).flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1)).max().item()
            w = float(worst[decided].max()) if decided.any() else 0.0
            rows.append(["iUNet adaptive", "trained" if trained else "init", f"{int(decided.sum())} decided", w,
                         _at(torch.where(decided, worst, torch.zeros_like(worst)), FAMILIES), f"{inv:.1e}",
                         "ok" if w <= CONTRACT_NMSE and inv <= 1e-5 else "MISS"])
    # bf16 autocast (what bf16-mixed runs): measured, no promise (README 'What is exact')
    unets = [n for n in names if n != "iUNet"]
    for name in unets[:1] if quick else unets:
        net = _copy(unet(name, 2, False)).to(device)
        x = batch(FAMILIES, 2, 32, channels=2).to(device)
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16):
            worst = torch.stack([equivariance_nmse(net, x, k) for k in shifts]).amax(0).cpu()
        rows.append([f"UNet {name}", "init, bf16 autocast", len(FAMILIES), float(worst.max()),
                     _at(worst, FAMILIES), "-", "measured"])
    return rows


def _at(worst: torch.Tensor, families: Sequence[str]) -> str:
    """The input family of the worst NMSE ("-" when every one is 0)."""
    return families[int(worst.argmax())] if worst.max() > 0 else "-"


QUICK_EXACTNESS = ["aps", "aps-5", "lps", "orthogonal-adaptive", "iUNet"]


def _copy(net):
    import copy

    return copy.deepcopy(net)


@contextlib.contextmanager
def tf32(on: bool):
    """Both TF32 flags set to ``on`` inside the block (restored after)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = on
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def step_exactness(step: Step, device: str, quick: bool) -> None:
    step.add("Run with what equinet requires (README 'What is exact'): float32, TF32 off.")
    step.add("")
    with tf32(False):
        rows = exactness_rows(device, quick)
    if device.startswith("cuda"):  # and what PyTorch's defaults give (cuDNN TF32 on): measured
        with tf32(True):
            for row in exactness_rows(device, True, names=["aps", "orthogonal-adaptive", "iUNet"]):
                row[1] += ", TF32 on"
                row[-1] = "measured"
                rows.append(row)
    step.table(("network", "weights", "inputs", "worst NMSE", "at", "inverse rel. err", f"<= {CONTRACT_NMSE:g}"), rows)
    if any(r[-1] == "MISS" for r in rows):
        step.status = "miss"
        step.add("A MISS on cuda means this backend's convolutions do not round the same at every position "
                 "(README 'What is exact': rounding-level equivariance is what is guaranteed there).")


def step_pytest(step: Step, device: str, quick: bool) -> None:
    tests = ["tests/test_ties.py", "tests/test_emulated_backend.py", "tests/test_cuda_settings.py"]
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", *tests]
    cmd += ["-m", "not slow"]  # the slow ones (1D/3D trained iUNets) would not fit the 8 min
    _run(step, cmd, timeout=180, device=device, tail=8)


def training_rows(device: str, quick: bool, precisions: Sequence[str] = ("32-true", "bf16-mixed"),
                  networks: Optional[Sequence[str]] = None, steps: int = 2) -> List[List[object]]:
    """A short fit (``steps`` Adam steps) of each network under each precision on ``device``."""
    import pytorch_lightning as pl
    from _lightning_helpers import ToyReconData

    from equinet.lightning import ExactnessWarning, ReconstructionModule

    rows: List[List[object]] = []
    accelerator = "gpu" if device.startswith("cuda") else "cpu"
    for name in networks or list(NETWORKS):
        for precision in precisions:
            torch.manual_seed(0)
            net = NETWORKS[name]()
            module = ReconstructionModule(net, optimizer=lambda p: torch.optim.Adam(p, lr=3e-3))
            trainer = pl.Trainer(accelerator=accelerator, precision=precision,
                                 devices=[torch.device(device).index or 0] if accelerator == "gpu" else 1, max_steps=steps,
                                 logger=False, enable_checkpointing=False, enable_progress_bar=False,
                                 enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                                 log_every_n_steps=1)
            data = ToyReconData(train_slices=[4, 4], size=16 if quick else 64, batch_size=2 if quick else 4)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                t0 = time.perf_counter()
                trainer.fit(module, datamodule=data)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                seconds = time.perf_counter() - t0
            fired = any(issubclass(w.category, ExactnessWarning) for w in caught)
            loss = float(trainer.callback_metrics.get("train/loss", float("nan")))
            rows.append([name, precision, trainer.global_step, loss, seconds / max(trainer.global_step, 1),
                         "yes" if fired else "no", "ok" if math.isfinite(loss) and trainer.global_step == steps else "MISS"])
    return rows


def _unet(sampling: str, **kwargs):
    def build():
        from equinet.models import UNet

        return UNet(1, 1, channels=4, depth=2, sampling=sampling, sampling_kwargs=kwargs or None,
                    padding_mode="circular")
    return build


def _lifted_iunet():
    """The study's 1-channel iUNet: a 1x1 lift, the adaptive iUNet, a 1x1 projection."""
    from equinet.models.iunet import LiftediUNet

    return LiftediUNet(1, 1, channels=4, depth=2, architecture=1, adaptive_resampling=True,
                       padding_mode="circular", verbose=0)


NETWORKS: Dict[str, Callable[[], torch.nn.Module]] = {
    "maxpool": _unet("maxpool"), "avgpool": _unet("avgpool"), "strided_conv": _unet("strided_conv"),
    "blur (LPF-3)": _unet("blur", filter_size=3), "aps": _unet("aps"), "aps-3": _unet("aps", filter_size=3),
    "lps": _unet("lps"), "orthogonal": _unet("orthogonal"),
    "orthogonal-adaptive": _unet("orthogonal", adaptive=True), "iUNet adaptive": _lifted_iunet,
}


def step_training(step: Step, device: str, quick: bool) -> None:
    rows = training_rows(device, quick)
    step.table(("network", "precision", "steps", "last loss", "fit s / step (with setup)", "ExactnessWarning", "status"),
               rows)
    if any(r[-1] != "ok" for r in rows):
        step.status = "miss"
    step.add("The warning is expected for bf16-mixed on every network with a guarantee (and for TF32 on CUDA).")


def _bench_sizes(quick: bool, device: str) -> Dict[str, List[str]]:
    if quick:
        return {"unet_step": ["--channels", "4", "--depth", "2", "--size", "32", "--batch", "2", "--repeats", "2"],
                "iunet_memory": ["--depths", "1", "2", "--channels", "4", "--levels", "2", "--size", "32", "--batch",
                                 "2", "--repeats", "1"],
                "host_syncs": ["--channels", "4", "--depth", "2", "--size", "32", "--batch", "2", "--train-steps", "2"]}
    return {"unet_step": ["--channels", "16", "--depth", "4", "--size", "128", "--batch", "8", "--repeats", "5"],
            "iunet_memory": ["--depths", "2", "4", "8", "--channels", "16", "--levels", "4", "--size", "128",
                             "--batch", "4", "--repeats", "3"],
            "host_syncs": ["--channels", "16", "--depth", "4", "--size", "128", "--batch", "8"]}


def _supported(script: Path, args: List[str], device: str) -> List[str]:
    """``args`` without the options ``script --help`` does not list (a benchmark on another branch)."""
    try:
        usage = subprocess.run([sys.executable, str(script), "--help"], cwd=REPO, env=_env(device), capture_output=True,
                               text=True, timeout=120, check=False).stdout
    except subprocess.TimeoutExpired:
        return args
    out, i = [], 0
    while i < len(args):
        j = i + 1
        while j < len(args) and not args[j].startswith("--"):
            j += 1
        if args[i] in usage:
            out += args[i:j]
        i = j
    return out


def _bench(name: str, step: Step, device: str, quick: bool) -> None:
    script = REPO / "experiments" / "benchmarks" / f"{name}.py"
    if not script.exists():
        step.status = "missing"
        step.add(f"missing: {script.relative_to(REPO)} is not in this checkout")
        return
    args = _supported(script, ["--device", device] + _bench_sizes(quick, device)[name], device)
    _run(step, [sys.executable, str(script), *args], timeout=120 if quick else 150, device=device, tail=40)


def step_unet_step(step: Step, device: str, quick: bool) -> None:
    _bench("unet_step", step, device, quick)


def step_iunet_memory(step: Step, device: str, quick: bool) -> None:
    _bench("iunet_memory", step, device, quick)


def step_host_syncs(step: Step, device: str, quick: bool) -> None:
    _bench("host_syncs", step, device, quick)


def study_config(device: str, quick: bool) -> Dict[str, object]:
    """A 2-variant study (baseline, APS) on small synthetic knee data, on ``device``."""
    size = 32 if quick else 64
    return {
        "name": "gpu-check", "requires_root": False, "threads": 1, "variants": ["baseline", "APS"],
        "run": {
            "seed_everything": 0,
            "trainer": {"accelerator": "gpu" if device.startswith("cuda") else "cpu", "devices": 1,
                        "max_steps": 4 if quick else 40, "logger": False, "enable_progress_bar": False,
                        "enable_model_summary": False, "log_every_n_steps": 1},
            "model": {"network": {"class_path": "equinet.models.UNet", "init_args": {
                "in_channels": 1, "out_channels": 1, "channels": 4 if quick else 16, "depth": 2,
                "sampling": "maxpool", "padding_mode": "circular"}},
                "optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": 0.003}}},
            "data": {"class_path": "equinet.data.FastMRIDataModule", "init_args": {
                "challenge": "singlecoil", "mask_type": "random", "center_fractions": [0.08], "accelerations": [4],
                "crop_size": size, "batch_size": 4, "num_workers": 0, "synthetic": True, "synthetic_volumes": 3,
                "synthetic_slices": 2, "synthetic_size": size}},
            "equivariance": {"max_shift": 16, "num_dpsnr_shifts": 2, "seed": 0},
            "images": {"num_images": 0},
        },
        "ood": {"data": {"class_path": "equinet.data.ImageNetShiftDataModule", "init_args": {
            "root": None, "synthetic": True, "num_images": 4, "crop_size": size, "forward_model": "mri",
            "batch_size": 4, "synthetic_num": 4, "synthetic_size": size + 16, "progress": False}},
            "num_dpsnr_shifts": 0},
        "cost": {"reference": "baseline", "repeats": 1, "warmup": 0},
    }


def step_study(step: Step, device: str, quick: bool, out: Path) -> None:
    import yaml

    folder = out / "study"
    config = out / "study.yaml"
    config.write_text(yaml.safe_dump(study_config(device, quick), sort_keys=False))
    env_dir = out / "data_cache"
    os.environ.setdefault("EQUINET_DATA_DIR", str(env_dir))
    rc = _run(step, [sys.executable, "-m", "equinet", "study", "--config", config, "--dir", folder,
                     "--workers", "1"], timeout=150 if quick else 200, device=device, tail=15)
    results = folder / "results.md"
    if rc == 0 and results.exists():
        step.add("results.md:")
        step.lines.extend(results.read_text().splitlines()[:40])


DDP_CONFIG = """\
seed_everything: 3
trainer:
  accelerator: {accelerator}
  strategy: ddp
  devices: 1
  max_epochs: 1
  enable_progress_bar: false
  enable_model_summary: false
  log_every_n_steps: 1
model:
  network:
    class_path: equinet.models.UNet
    init_args: {{channels: 4, depth: 2, sampling: aps, padding_mode: circular}}
data:
  class_path: _lightning_helpers.ToyReconData
  init_args: {{train_slices: [3, 3, 2], val_slices: [3, 2, 2], size: 32, batch_size: 2}}
equivariance: {{num_dpsnr_shifts: 2}}
images: {{num_images: 0}}
"""


def step_ddp(step: Step, device: str, quick: bool, out: Path) -> None:
    config = out / "ddp.yaml"
    config.write_text(DDP_CONFIG.format(accelerator="gpu" if device.startswith("cuda") else "cpu"))
    rc = _run(step, [sys.executable, "-m", "equinet", "fit", "--config", config, "--trainer.default_root_dir",
                     out / "ddp", "--run.name", "ddp"], timeout=150, device=device, tail=12)
    summary = out / "ddp" / "ddp" / "val_summary.md"
    if rc == 0 and summary.exists():
        step.lines.extend(summary.read_text().splitlines()[:25])
    elif rc == 0:
        step.status = "fail"
        step.add(f"no {summary}")


# --------------------------------------------------------------------------------------------
def run_step(name: str, device: str, quick: bool, out: Path) -> Step:
    step = Step(name)
    fn = globals()[f"step_{name}"]
    t0 = time.perf_counter()
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            fn(step, device, quick, out) if name in ("study", "ddp") else fn(step, device, quick)
    except Exception:  # a step's crash is reported, the others still run
        step.status = "fail"
        step.add("```")
        step.lines.extend(traceback.format_exc().splitlines()[-25:])
        step.add("```")
    step.seconds = time.perf_counter() - t0
    return step


def write_report(steps: List[Step], path: Path, device: str, quick: bool, total: float) -> None:
    lines = [f"# equinet gpu-check: {device}{' (--quick)' if quick else ''}", "",
             f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}; total {total:.0f} s", "",
             "| step | status | seconds |", "|---|---|---|"]
    lines += [f"| {s.name} | {s.status} | {s.seconds:.1f} |" for s in steps]
    for s in steps:
        lines += ["", f"## {s.name} ({s.status}, {s.seconds:.1f} s)", "", *s.lines]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--quick", action="store_true", help="small sizes (a CPU run in <= 5 min on 2 cores)")
    parser.add_argument("--out", default=str(REPO / "outputs" / "gpu-check"), help="report folder")
    parser.add_argument("--only", nargs="+", choices=STEPS, help="run only these steps")
    parser.add_argument("--strict", action="store_true", help="exit 1 on a missed target too (not only a failed step)")
    parser.add_argument("--budget", type=float, default=480.0,
                        help="seconds; steps that would start after it are reported as skipped (default 480)")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"gpu_check: --device {args.device}, but torch sees no CUDA device (torch {torch.__version__}, "
              f"built for CUDA {torch.version.cuda}). On a machine without a GPU run: "
              "make gpu-check GPU_CHECK_ARGS=\"--device cpu --quick\"", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = out / "report.md"
    t0 = time.perf_counter()
    steps: List[Step] = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as work:
        for name in args.only or STEPS:
            if time.perf_counter() - t0 > args.budget:
                step = Step(name)
                step.status = "skipped"
                step.add(f"skipped: the {args.budget:.0f} s budget was spent before this step")
                steps.append(step)
                continue
            print(f"gpu_check: {name} ...", flush=True)
            step = run_step(name, args.device, args.quick, Path(work))
            steps.append(step)
            print(f"gpu_check: {name}: {step.status} ({step.seconds:.1f} s)", flush=True)
            write_report(steps, report, args.device, args.quick, time.perf_counter() - t0)  # partial reports survive
    total = time.perf_counter() - t0
    write_report(steps, report, args.device, args.quick, total)
    print(f"gpu_check: report {report} ({total:.0f} s)")
    bad = [s.name for s in steps if s.status == "fail" or (args.strict and s.status in ("miss", "skipped"))]
    if bad:
        print(f"gpu_check: failed: {', '.join(bad)}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

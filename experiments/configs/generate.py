"""Write ``experiments/configs/<dataset>/<strategy>.yaml`` (and ``experiments/study/<name>.yaml``)
from the tables below and the strategy table ``equinet.study.variants.VARIANTS``.

Every config is a complete, self-contained file a user can read and pass alone
(``equinet fit --config experiments/configs/fastmri/aps.yaml``); the shared parts live here
once instead of being copy-pasted 18 times. Edit a table, run

    python experiments/configs/generate.py

and commit the result; ``tests/test_cli_configs.py`` fails if the files are out of sync.
(jsonargparse has no reliable "include a base file, then override" inside one YAML file, so the
composition happens here rather than in the configs.)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # run as a script from a checkout
from equinet.study.variants import STUDY_VARIANTS, VARIANTS  # noqa: E402  (the one strategy table)

# the strategies that get a config per dataset, named as in VARIANTS; the file is the name in
# lower case (experiments/configs/fastmri/aps-3.yaml is VARIANTS["APS-3"])
CONFIG_STRATEGIES = ("maxpool", "LPF-3", "APS", "APS-3", "LPS", "orthogonal")
# config name -> UNet(sampling=..., sampling_kwargs=...)
STRATEGIES: Dict[str, Dict[str, Any]] = {
    name.lower(): {"sampling": VARIANTS[name].sampling, "sampling_kwargs": dict(VARIANTS[name].options) or None}
    for name in CONFIG_STRATEGIES
}

# dataset -> what differs between datasets (the paper's hyper-parameters for the real ones)
DATASETS: Dict[str, Dict[str, Any]] = {
    "fastmri": {
        "comment": "fastMRI single-coil knee, 4x random masks (APS-U paper Sec. 4.1): U-Net 64..1024 channels,\n"
                   "4 downsamplings, circular padding, MSE, Adam lr 1e-3, StepLR(5, 0.5), 50 epochs,\n"
                   "batch 16 per device (N GPUs: N x 16 per step, BatchNorm synced over all of them).",
        "max_epochs": 50, "deterministic": False, "log_every_n_steps": 50, "sync_batchnorm": True,
        "lr": 1e-3, "step_size": 5, "gamma": 0.5, "channels": 64,
        "data": {"class_path": "equinet.data.FastMRIDataModule", "init_args": {
            "root": None, "challenge": "singlecoil", "mask_type": "random", "center_fractions": [0.08],
            "accelerations": [4], "crop_size": 320, "batch_size": 16, "num_workers": 8,
            "pin_memory": True}},  # GPU configs: page-locked batches, asynchronous host-to-device copies
    },
    "lodopab": {
        "comment": "LoDoPaB-CT, FBP input, 352x352 crops (APS-U paper Sec. 4.2): U-Net 64..1024 channels,\n"
                   "4 downsamplings, circular padding, MSE, Adam lr 1e-2, StepLR(5, 0.1), 20 epochs,\n"
                   "batch 8 per device (N GPUs: N x 8 per step, BatchNorm synced over all of them).",
        "max_epochs": 20, "deterministic": False, "log_every_n_steps": 50, "sync_batchnorm": True,
        "lr": 1e-2, "step_size": 5, "gamma": 0.1, "channels": 64,
        "data": {"class_path": "equinet.data.LoDoPaBDataModule", "init_args": {
            "root": None, "crop_size": 352, "batch_size": 8, "num_workers": 8, "pin_memory": True}},
    },
    "synthetic": {
        "comment": "Synthetic knee volumes in the real fastMRI format (generated once, cached; no download):\n"
                   "the fastMRI recipe shrunk to run on a laptop CPU in minutes. Deterministic algorithms\n"
                   "('warn': on a GPU, ops without a deterministic kernel warn instead of failing).",
        "max_epochs": 2, "deterministic": "warn", "log_every_n_steps": 1, "sync_batchnorm": False,
        "lr": 1e-3, "step_size": 5, "gamma": 0.5, "channels": 8,
        "data": {"class_path": "equinet.data.FastMRIDataModule", "init_args": {
            "challenge": "singlecoil", "mask_type": "random", "center_fractions": [0.08],
            "accelerations": [4], "crop_size": 64, "batch_size": 4, "num_workers": 0,
            "synthetic": True, "synthetic_volumes": 4, "synthetic_slices": 4, "synthetic_size": 64}},
    },
}


def build(dataset: str, strategy: str) -> Dict[str, Any]:
    """The config of one (dataset, strategy) pair as a plain dict."""
    d, s = DATASETS[dataset], STRATEGIES[strategy]
    network_args: Dict[str, Any] = {"in_channels": 1, "out_channels": 1, "channels": d["channels"], "depth": 4,
                                    "sampling": s["sampling"]}
    if s["sampling_kwargs"]:
        network_args["sampling_kwargs"] = dict(s["sampling_kwargs"])
    network_args["padding_mode"] = "circular"
    return {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "auto",
            "devices": "auto",
            "strategy": "auto",
            "precision": "32-true",
            "max_epochs": d["max_epochs"],
            "deterministic": d["deterministic"],
            "default_root_dir": f"runs/{dataset}/{strategy}",
            "log_every_n_steps": d["log_every_n_steps"],
            "sync_batchnorm": d["sync_batchnorm"],
            "callbacks": [{"class_path": "pytorch_lightning.callbacks.LearningRateMonitor",
                           "init_args": {"logging_interval": "epoch"}}],
        },
        "model": {
            "network": {"class_path": "equinet.models.UNet", "init_args": network_args},
            "loss": "mse",
            "optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": d["lr"]}},
            "lr_scheduler": {"class_path": "torch.optim.lr_scheduler.StepLR",
                             "init_args": {"step_size": d["step_size"], "gamma": d["gamma"]}},
            "output_clamp": 6.0,
        },
        "data": {"class_path": d["data"]["class_path"], "init_args": dict(d["data"]["init_args"])},
        "checkpoint": {"monitor": "val/ssim", "mode": "max", "save_last": True, "save_top_k": 1},
        "equivariance": {"max_shift": 16, "num_dpsnr_shifts": 10, "seed": 0},
        "images": {"num_images": 2, "every_n_epochs": 1},
    }


def render(dataset: str, strategy: str) -> str:
    """The YAML text of one config, with a header saying where it comes from."""
    header = [f"# equinet: {dataset} x {strategy}"]
    header += [f"# {line}" for line in DATASETS[dataset]["comment"].splitlines()]
    header += ["# Run: equinet fit --config experiments/configs/" f"{dataset}/{strategy}.yaml"
               + (" --data.root /path/to/data  (required)" if dataset != "synthetic" else ""),
               "# Generated by experiments/configs/generate.py (edit the tables there, then re-run it)."]
    body = yaml.safe_dump(build(dataset, strategy), sort_keys=False, default_flow_style=False, width=100)
    return "\n".join(header) + "\n" + body


def expected_files() -> Dict[Path, str]:
    return {HERE / ds / f"{st}.yaml": render(ds, st) for ds in DATASETS for st in STRATEGIES}


# --------------------------------------------------------------------------------------------
# studies: experiments/study/<name>.yaml (`equinet study --config ...`)
# --------------------------------------------------------------------------------------------
STUDY_DIR = HERE.parent / "study"
PAPER_VARIANTS = ["baseline", "baseline+DA", "LPF-2", "LPF-3", "LPF-5", "APS", "APS-2", "APS-3", "APS-5",
                  "LPS", "orthogonal", "orthogonal-adaptive", "iUNet"]
IMAGENET = "equinet.data.ImageNetShiftDataModule"

STUDIES: Dict[str, Dict[str, Any]] = {
    "demo": {
        "comment": "The demo (`make demo`): synthetic knee phantoms (PD / PDFS) in the real fastMRI format,\n"
                   "4x equispaced undersampling, small U-Nets (12 channels, depth 3), 768 Adam steps;\n"
                   "workers x threads = cores (2 workers of 1 thread on 2 cores), 11.6 CPU-minutes (6.2 min wall). Every\n"
                   "variant learns (+0.25-0.28 SSIM, +5.3 (iUNet) to +6.0 dB over the zero-filled input),\n"
                   "APS/LPS/orthogonal-adaptive are exactly shift-equivariant, the trained baseline is not,\n"
                   "LPF and DA lie between (the APS-U paper's picture).",
        "dataset": "synthetic",
        "variants": ["baseline", "baseline+DA", "LPF-3", "APS", "LPS", "orthogonal", "orthogonal-adaptive",
                     "iUNet"],
        "threads": 1,
        "run": {"trainer.accelerator": "cpu", "trainer.devices": 1, "trainer.max_epochs": 6,
                "trainer.check_val_every_n_epoch": 3, "trainer.log_every_n_steps": 16,
                "trainer.enable_model_summary": False, "model.network.init_args.channels": 12,
                "model.network.init_args.depth": 3, "model.optimizer.init_args.lr": 3e-3,
                "model.lr_scheduler": {"class_path": "torch.optim.lr_scheduler.CosineAnnealingLR",
                                       "init_args": {"T_max": 6}},
                "data.init_args.mask_type": "equispaced",
                "data.init_args.crop_size": 64, "data.init_args.batch_size": 4,
                "data.init_args.synthetic_volumes": 64, "data.init_args.synthetic_slices": 8,
                "data.init_args.synthetic_size": 64, "images.every_n_epochs": 0},
        "ood": {"root": None, "synthetic": True, "num_images": 16, "crop_size": 64, "forward_model": "mri",
                "batch_size": 8, "synthetic_num": 16, "synthetic_size": 96},
        "cost": {"reference": "baseline", "repeats": 5, "warmup": 1},
        # the demo's iUNet has 16 channels (406k parameters, 1.5x the U-Net's 272k): its couplings act
        # on half the channels, and at the U-Net's 12 it stays further behind (README, "The iUNet")
        "define": {"iUNet": {**STUDY_VARIANTS["iUNet"], "model.network.init_args.channels": 16}},
    },
    "fastmri": {
        "comment": "The APS-U paper's fastMRI study (Tables 1-3): every variant with the paper's recipe\n"
                   "(experiments/configs/fastmri/*.yaml) on fastMRI single-coil knee, PD/PDFS split, OOD on\n"
                   "ImageNet val. Needs --data.root (singlecoil_train/, singlecoil_val/); pass\n"
                   "--ood.data.init_args.root /path/to/imagenet/val for the paper's 1000 ImageNet images\n"
                   "(default: images bundled with scikit-image, in ImageNet's JPEG layout).",
        "dataset": "fastmri",
        "variants": PAPER_VARIANTS,
        "threads": None,
        "requires_root": True,
        "run": {},
        "ood": {"root": None, "synthetic": True, "num_images": 1000, "crop_size": 320, "forward_model": "mri",
                "batch_size": 16, "num_workers": 8},
        "cost": {"reference": "baseline", "repeats": 7, "warmup": 2},
    },
    "lodopab": {
        "comment": "The APS-U paper's LoDoPaB-CT study (Table 4) plus OOD equivariance through the CT\n"
                   "forward model: every variant with the paper's recipe (experiments/configs/lodopab/*).\n"
                   "Needs --data.root (ground_truth_*/observation_* HDF5 files); FBPs are cached once.",
        "dataset": "lodopab",
        "variants": PAPER_VARIANTS,
        "threads": None,
        "requires_root": True,
        "run": {},
        "ood": {"root": None, "synthetic": True, "num_images": 1000, "crop_size": 352, "forward_model": "ct",
                "batch_size": 8, "num_workers": 8},
        "cost": {"reference": "baseline", "repeats": 7, "warmup": 2},
    },
}


def _set(config: Dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        config = config.setdefault(part, {})
    config[leaf] = value


def build_study(name: str) -> Dict[str, Any]:
    """The study config ``name``: the dataset's maxpool (baseline) config as its run config."""
    spec = STUDIES[name]
    run = build(spec["dataset"], "maxpool")
    del run["trainer"]["default_root_dir"]  # the study places every run in its own folder
    for key, value in spec["run"].items():
        _set(run, key, value)
    study: Dict[str, Any] = {"name": name, "requires_root": spec.get("requires_root", False),
                             "threads": spec["threads"], "variants": list(spec["variants"]), "run": run}
    study["ood"] = {"data": {"class_path": IMAGENET, "init_args": dict(spec["ood"])}, "num_dpsnr_shifts": 0}
    study["cost"] = dict(spec["cost"])
    study["examples"] = {"shift": [8, 5], "index": None}
    if spec.get("define"):
        study["define"] = {name: dict(overrides) for name, overrides in spec["define"].items()}
    return study


def render_study(name: str) -> str:
    root = "" if not STUDIES[name].get("requires_root") else " --data.root /path/to/data"
    header = [f"# equinet study: {name}"] + [f"# {line}" for line in STUDIES[name]["comment"].splitlines()]
    header += [f"# Run: equinet study --config experiments/study/{name}.yaml{root}",
               "# Generated by experiments/configs/generate.py (edit the tables there, then re-run it)."]
    body = yaml.safe_dump(build_study(name), sort_keys=False, default_flow_style=False, width=100)
    return "\n".join(header) + "\n" + body


def expected_study_files() -> Dict[Path, str]:
    return {STUDY_DIR / f"{name}.yaml": render_study(name) for name in STUDIES}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if any file differs instead of writing")
    args = parser.parse_args(argv)
    stale = []
    for path, text in {**expected_files(), **expected_study_files()}.items():
        if path.exists() and path.read_text() == text:
            continue
        stale.append(path)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    for p in stale:
        print(("stale: " if args.check else "wrote: ") + str(p.relative_to(HERE.parents[1])))
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())

"""A study's plan: its config, its variants' run configs, its folder, and the checks done before
any training starts.

A study config (``experiments/study/<name>.yaml``)::

    name: demo
    run: {...}          # an ordinary `equinet fit` config: data, budget, seed, optimiser and the
                        # baseline's network; every variant is this config plus its overrides
    variants: [baseline, baseline+DA, LPF-3, APS, LPS, orthogonal-adaptive, iUNet]
    define: {}          # new (or redefined) variants: name -> {dotted.config.key: value}
    requires_root: false  # true for real-data studies: refuse to start without --data.root
    threads: null       # torch CPU threads of an in-process study (null: torch's default)
    ood:                # out-of-distribution equivariance (APS-U paper Table 3); null to skip
      data: {class_path: equinet.data.ImageNetShiftDataModule, init_args: {...}}
      num_dpsnr_shifts: 0
    cost: {reference: baseline, repeats: 7, warmup: 2}
    examples: {shift: [8, 5], index: null}
    init_from: null     # a fastMRI U-Net checkpoint (UnetModule .ckpt or Unet state dict): every
                        # variant fine-tunes from its weights with its own sampling, under the same
                        # budget; the network's channels/depth/layout follow the checkpoint

``equinet study --config FILE --trainer.max_epochs 3 --data.root /data`` overrides a run-config
key; keys whose first part is one of the study's own (``ood.…``, ``cost.…``, ``threads``, ...)
override the study config.
"""

from __future__ import annotations

import copy
import datetime
import inspect
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import yaml

from equinet.files import atomic_write_text
from equinet.lightning.cli import unsuitable_size
from equinet.study.config import (
    INPUT,
    NETWORK,
    StudyError,
    apply_overrides,
    class_key,
    flatten,
    get_dotted,
    instantiate,
    parse_overrides,
    resolve_class,
    set_dotted,
)
from equinet.study.variants import UNET, known_variants

STUDY_KEYS = (
    "name",
    "description",
    "run",
    "variants",
    "define",
    "requires_root",
    "threads",
    "ood",
    "cost",
    "examples",
    "init_from",
)
DEFAULTS: Dict[str, Any] = {
    "description": "",
    "define": {},
    "requires_root": False,
    "threads": None,
    "ood": None,
    "cost": {"reference": "baseline", "repeats": 7, "warmup": 2},
    "examples": {"shift": [8, 5], "index": None},
    "init_from": None,
}
# Where a run executes, not what it computes: a study folder may be continued with other values.
PLACEMENT_KEYS = (
    "run.trainer.accelerator",
    "run.trainer.devices",
    "run.trainer.num_nodes",
    "run.trainer.strategy",
    "run.trainer.logger",
    "run.trainer.enable_progress_bar",
    "run.data.init_args.num_workers",
    "run.data.init_args.pin_memory",
    "run.data.init_args.progress",
    "ood.data.init_args.num_workers",
    "ood.data.init_args.progress",
    "threads",
)
STUDY_FILE = "study.yaml"


# --------------------------------------------------------------------------------------------
# the config
# --------------------------------------------------------------------------------------------
@dataclass
class Study:
    """A loaded study config (after command-line overrides) and what follows from it."""

    config: Dict[str, Any]
    source: Optional[Path] = None
    definitions: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    # the U-Net init_args of the init_from checkpoint's architecture (None without init_from)
    init_network: Optional[Dict[str, Any]] = None

    @property
    def name(self) -> str:
        return str(self.config["name"])

    @property
    def run(self) -> Dict[str, Any]:
        return self.config["run"]

    @property
    def variants(self) -> List[str]:
        return list(self.config["variants"])

    @property
    def ood(self) -> Optional[Dict[str, Any]]:
        return self.config.get("ood")

    def ood_data(self) -> Dict[str, Any]:
        """The OOD DataModule config: the ImageNet folder ``ood.data.root`` if given, else the
        natural images bundled with the installed packages (``synthetic: true``; never a download)."""
        assert self.ood is not None
        data = copy.deepcopy(self.ood["data"])
        args = data.setdefault("init_args", {})
        args["synthetic"] = not args.get("root")
        return data

    def variant_config(self, variant: str) -> Dict[str, Any]:
        """The complete ``equinet fit`` config of one variant (the input row: an identity network)."""
        if variant == INPUT:
            config = copy.deepcopy(self.run)
            set_dotted(config, NETWORK, {"class_path": "torch.nn.Identity"})
            set_dotted(config, "model.residual", False)  # the input itself, not input + input
            return config
        config = apply_overrides(self.run, self.definitions[variant])
        if self.config.get("init_from"):
            # every variant starts from the same fastMRI weights: its network takes their architecture
            set_dotted(config, "model.init_from", self.config["init_from"])
            if get_dotted(config, f"{NETWORK}.class_path") in (UNET, "UNet"):
                for key, value in (self.init_network or {}).items():
                    set_dotted(config, f"{NETWORK}.init_args.{key}", value)
                get_dotted(config, f"{NETWORK}.init_args").pop("norm", None)  # the fastMRI layout's
        return config

    def ood_config(self, variant: str) -> Dict[str, Any]:
        """The variant's config evaluated on the out-of-distribution data (``equinet test`` only)."""
        cfg = self.variant_config(variant)
        cfg["data"] = self.ood_data()
        if self.ood.get("num_dpsnr_shifts") is not None:
            set_dotted(cfg, "equivariance.num_dpsnr_shifts", int(self.ood["num_dpsnr_shifts"]))
        return cfg


def load_study(
    path: Optional[os.PathLike], overrides: Sequence[str] = (), config: Optional[Mapping] = None
) -> Study:
    """Read a study YAML (or take ``config``), apply ``--key value`` overrides, fill the defaults."""
    if config is None:
        if path is None:
            raise StudyError("give the study config: equinet study --config experiments/study/demo.yaml")
        path = Path(path)
        if not path.is_file():
            raise StudyError(f"study config {path} does not exist (shipped: experiments/study/*.yaml)")
        config = yaml.safe_load(path.read_text()) or {}
    if not isinstance(config, Mapping):
        raise StudyError(f"{path}: a study config is a mapping with keys {list(STUDY_KEYS)}")
    cfg = copy.deepcopy(dict(config))
    unknown = sorted(set(cfg) - set(STUDY_KEYS))
    if unknown:
        raise StudyError(f"{path}: unknown study key(s) {unknown}; a study config has {list(STUDY_KEYS)}")
    for key, value in DEFAULTS.items():
        if key not in cfg:
            cfg[key] = copy.deepcopy(value)
        elif isinstance(value, dict) and isinstance(cfg[key], dict):
            cfg[key] = {**value, **cfg[key]}
    for key, value in parse_overrides(overrides):
        head = key.split(".")[0]
        key = key if head in STUDY_KEYS else f"run.{key}"
        set_dotted(cfg, class_key(cfg, key), value)
    for key in ("name", "run", "variants"):
        if not cfg.get(key):
            raise StudyError(f"{path or 'study config'}: missing {key!r}")
    if not isinstance(cfg["variants"], list) or not all(isinstance(v, str) for v in cfg["variants"]):
        raise StudyError(f"variants must be a list of names, got {cfg['variants']!r}")
    cfg["run"].setdefault("trainer", {}).pop("default_root_dir", None)  # the study places every run
    study = Study(cfg, Path(path) if path is not None else None)
    study.definitions = known_variants(cfg.get("define"))
    if cfg.get("init_from"):
        study.init_network = _init_network(cfg)
    return study


def _init_network(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """Resolve ``init_from`` to an absolute path (runs start elsewhere) and read its architecture."""
    from equinet.models.fastmri_compat import FastMRIWeightsError, fastmri_architecture, network_arguments, \
        read_fastmri_checkpoint

    cfg["init_from"] = str(Path(cfg["init_from"]).expanduser().resolve())
    try:
        state_dict, _ = read_fastmri_checkpoint(cfg["init_from"])
    except FastMRIWeightsError as err:
        raise StudyError(f"init_from: {err}") from None
    return network_arguments(fastmri_architecture(state_dict))


# --------------------------------------------------------------------------------------------
# what a network and its data need of each other
# --------------------------------------------------------------------------------------------
def crop_size(data_spec: Mapping[str, Any]) -> Optional[int]:
    """The square crop a DataModule config feeds the network (its ``crop_size``)."""
    value = (data_spec.get("init_args") or {}).get("crop_size")
    if value is None:
        param = inspect.signature(resolve_class(data_spec["class_path"]).__init__).parameters.get("crop_size")
        value = None if param is None or param.default is inspect.Parameter.empty else param.default
    return None if value is None else int(value)


def size_multiple(network) -> Optional[Tuple[int, ...]]:
    """The spatial sizes the network needs inputs divisible by (every equinet network's ``size_multiple``)."""
    value = getattr(network, "size_multiple", None)
    if value is None:
        return None
    return tuple(int(v) for v in value) if isinstance(value, (tuple, list)) else (int(value),)


# --------------------------------------------------------------------------------------------
# checks before any training
# --------------------------------------------------------------------------------------------
def check_study(study: Study, only: Optional[Sequence[str]] = None) -> List[str]:
    """Everything that can be known wrong before training; returns the variants to run.

    Raises :class:`StudyError` naming the problem: unknown variants (listing the known ones),
    ``--only`` names outside the study, a network that cannot take the crop, a real-data study
    without ``--data.root`` (or with one that does not exist), a missing OOD root.
    """
    known = study.definitions
    unknown = [v for v in study.variants if v not in known]
    if unknown:
        raise StudyError(
            f"unknown variant(s) {unknown} in {study.source or 'the study config'}; known variants: "
            f"{', '.join(known)} (or define new ones under 'define:')"
        )
    dupes = sorted({v for v in study.variants if study.variants.count(v) > 1})
    if dupes or INPUT in study.variants:
        raise StudyError(
            f"variants must be distinct and not {INPUT!r} (the reference row is always added); "
            f"got {study.variants}"
        )
    selected = list(study.variants)
    if only:
        outside = [v for v in only if v not in study.variants and v != INPUT]
        if outside:
            raise StudyError(
                f"--only {outside}: not variants of study {study.name!r}, whose variants are "
                f"{', '.join(study.variants)}"
            )
        selected = [v for v in study.variants if v in only]
    reference = study.config["cost"].get("reference")
    if reference and reference not in known:
        raise StudyError(f"cost.reference {reference!r} is not a known variant; known: {', '.join(known)}")

    data = study.run.get("data") or {}
    if "class_path" not in data:
        raise StudyError("run.data must name a DataModule (class_path + init_args)")
    root = (data.get("init_args") or {}).get("root")
    if study.config.get("requires_root") and not root:
        raise StudyError(
            f"study {study.name!r} trains on real data: pass the dataset root, e.g. "
            f"--data.root /data/{study.name} (see the header of {study.source or 'the study config'})"
        )
    if root and not Path(root).expanduser().is_dir():
        raise StudyError(f"data.root {root} does not exist or is not a folder")
    ood_root = get_dotted(study.ood or {}, "data.init_args.root")
    if ood_root and not Path(ood_root).expanduser().is_dir():
        raise StudyError(
            f"ood.data.init_args.root {ood_root} does not exist or is not a folder "
            "(a folder of ImageNet val JPEGs; null uses the images bundled with scikit-image)"
        )

    # the DataModules' own checks of their arguments (root vs synthetic, options), before training
    for where, spec in (("run.data", data), ("ood.data", study.ood_data() if study.ood else None)):
        if spec is not None:
            try:
                instantiate(spec)
            except (TypeError, ValueError) as err:
                raise StudyError(f"{where}: {err}") from None

    crops = {"run.data": crop_size(data)}
    if study.ood:
        crops["ood.data"] = crop_size(study.ood["data"])
    for variant in dict.fromkeys(selected + ([reference] if reference else [])):
        cfg = study.variant_config(variant)
        try:
            network = instantiate(get_dotted(cfg, NETWORK))
        except (TypeError, ValueError) as err:
            raise StudyError(
                f"variant {variant!r}: cannot build its network from {get_dotted(cfg, NETWORK)}: {err}"
            ) from None
        if study.config.get("init_from"):
            from equinet.models.fastmri_compat import FastMRIWeightsError, init_from_fastmri

            try:
                init_from_fastmri(network, study.config["init_from"])
            except FastMRIWeightsError as err:
                raise StudyError(
                    f"variant {variant!r} cannot start from the fastMRI U-Net of init_from: {err}; "
                    "remove it from variants, or run the study without init_from"
                ) from None
        multiple = size_multiple(network)
        for where, crop in crops.items():
            if crop is None or multiple is None:
                continue
            bad = unsuitable_size(crop, multiple)
            if bad:
                factor, nearest = bad
                raise StudyError(
                    f"variant {variant!r}: its network needs inputs divisible by {factor} but "
                    f"{where}.init_args.crop_size is {crop}; use crop_size {nearest}, "
                    "or a smaller network depth"
                )
    return selected


# --------------------------------------------------------------------------------------------
# the study folder
# --------------------------------------------------------------------------------------------
def comparable(config: Mapping[str, Any]) -> Dict[str, Any]:
    """The study config's keys that decide its results (placement keys dropped), flattened."""
    flat = flatten(config)
    return {k: v for k, v in flat.items() if not any(k == p or k.startswith(p + ".") for p in PLACEMENT_KEYS)}


def config_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> List[str]:
    """``key: old -> new`` for every result-deciding key that differs."""
    a, b = comparable(old), comparable(new)
    return [
        f"{k}: {a.get(k, '(unset)')!r} -> {b.get(k, '(unset)')!r}"
        for k in sorted(set(a) | set(b))
        if a.get(k, "(unset)") != b.get(k, "(unset)")
    ]


def read_study_file(folder: Path) -> Optional[Dict[str, Any]]:
    path = Path(folder) / STUDY_FILE
    return yaml.safe_load(path.read_text()) if path.is_file() else None


def resolve_folder(
    study: Study, folder: Optional[os.PathLike], output: os.PathLike = "outputs/study", new: bool = False
) -> Tuple[Path, bool]:
    """The study folder to use and whether it continues an earlier one.

    ``folder`` given: that folder (refused if it holds a study with other settings). Otherwise
    the newest ``<output>/<name>-*`` folder with the same settings is continued (so the same
    command resumes a killed study), else -- or with ``new`` -- ``<output>/<name>-<timestamp>``.
    """
    if folder is not None:
        folder = Path(folder)
        old = read_study_file(folder)
        if old is not None:
            diff = config_differences(old, study.config)
            if diff:
                raise StudyError(
                    f"{folder} holds study {old.get('name')!r} run with other settings; refusing to "
                    f"mix results. Differences (folder -> now):\n  "
                    + "\n  ".join(diff)
                    + "\nUse another --dir (or none, for a new timestamped folder)."
                )
            return folder, True
        if folder.exists() and any(p.name != "runs" for p in folder.iterdir()):
            raise StudyError(
                f"{folder} exists and is not a study folder (no {STUDY_FILE}); choose an empty or new --dir"
            )
        return folder, False
    output = Path(output)
    if not new and output.is_dir():
        for candidate in sorted(output.glob(f"{study.name}-*"), key=lambda p: p.name, reverse=True):
            old = read_study_file(candidate)
            if old is not None and not config_differences(old, study.config):
                return candidate, True
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    candidate = output / f"{study.name}-{stamp}"
    n = 2
    while candidate.exists():
        candidate = output / f"{study.name}-{stamp}-{n}"
        n += 1
    return candidate, False


def write_plan(study: Study, folder: Path) -> None:
    """``study.yaml`` (the settings) and ``configs/<variant>.yaml`` (each run's full config)."""
    folder.mkdir(parents=True, exist_ok=True)
    if read_study_file(folder) is None:
        atomic_write_text(folder / STUDY_FILE, yaml.safe_dump(study.config, sort_keys=False, width=100))
    for variant in [INPUT] + study.variants:
        write_yaml(folder / "configs" / f"{variant}.yaml", study.variant_config(variant))
        if study.ood:
            write_yaml(folder / "configs" / f"{variant}-ood.yaml", study.ood_config(variant))


def write_yaml(path: Path, data: Mapping[str, Any]) -> None:
    text = yaml.safe_dump(dict(data), sort_keys=False, width=100)
    if not path.is_file() or path.read_text() != text:
        atomic_write_text(path, text)

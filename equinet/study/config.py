"""The study's ground floor for configs: nested config dicts addressed by dotted keys, the
``{class_path, init_args}`` specs inside them, and ``--key value`` overrides.

A run config is an ordinary ``equinet fit`` config (nested dicts, as the YAML reads); a study
variant is a set of dotted-key overrides of it (``{"model.network.init_args.sampling": "aps"}``).
Everything here is plain dict work (plus building a class from its path); it imports nothing of
the study's other modules.
"""

from __future__ import annotations

import copy
import importlib
import inspect
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import yaml

NETWORK = "model.network"  # where a run config holds its network spec
INPUT = "input"  # the reference row's name: the network input itself (an identity network), scored as a variant
SHORT_NAMES = ("equinet.models", "equinet.data", "torch.nn")  # where a class_path without dots is looked up


class StudyError(ValueError):
    """A study that cannot start (or continue) as asked; the message says what would work."""


# --------------------------------------------------------------------------------------------
# dotted keys on nested dicts
# --------------------------------------------------------------------------------------------
def get_dotted(config: Mapping[str, Any], key: str, default: Any = None) -> Any:
    """``config[a][b][c]`` for ``key = "a.b.c"``, or ``default`` where a part is missing."""
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def set_dotted(config: Dict[str, Any], key: str, value: Any) -> None:
    """``config[a][b][c] = value`` for ``key = "a.b.c"`` (creating the dicts on the way)."""
    parts = key.split(".")
    node = config
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = copy.deepcopy(value)


def flatten(config: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    """``{"a.b.c": value}`` for every leaf of a nested dict (lists are leaves)."""
    flat: Dict[str, Any] = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, path + "."))
        else:
            flat[path] = value
    return flat


def class_key(config: Mapping[str, Any], key: str) -> str:
    """``run.data.root`` -> ``run.data.init_args.root`` where ``run.data`` is a ``class_path`` spec
    (the shorthand the equinet CLI accepts, ``--data.root``)."""
    parts, out, node = key.split("."), [], config
    for part in parts:
        if isinstance(node, Mapping) and "class_path" in node and part not in ("class_path", "init_args"):
            out.append("init_args")
            node = node.get("init_args") or {}
        out.append(part)
        node = node.get(part) if isinstance(node, Mapping) else None
    return ".".join(out)


# --------------------------------------------------------------------------------------------
# classes from config specs (what jsonargparse does for the CLI)
# --------------------------------------------------------------------------------------------
def resolve_class(class_path: str):
    """The class of ``class_path`` (full dotted path, or a short name from equinet.models/.data)."""
    if "." in class_path:
        module, _, name = class_path.rpartition(".")
        return getattr(importlib.import_module(module), name)
    for module in SHORT_NAMES:
        cls = getattr(importlib.import_module(module), class_path, None)
        if cls is not None:
            return cls
    raise StudyError(f"cannot resolve class {class_path!r}; give its full path (e.g. equinet.models.UNet)")


def instantiate(spec: Any) -> Any:
    """``{class_path, init_args}`` -> the object (nested specs instantiated too)."""
    if isinstance(spec, Mapping) and "class_path" in spec:
        args = {k: instantiate(v) for k, v in (spec.get("init_args") or {}).items()}
        return resolve_class(spec["class_path"])(**args)
    return spec


def class_parameters(class_path: str) -> Optional[set]:
    """Constructor parameter names of ``class_path`` (``None`` if it takes ``**kwargs``)."""
    params = inspect.signature(resolve_class(class_path).__init__).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return None
    return {n for n in params if n != "self"}


# --------------------------------------------------------------------------------------------
# overrides
# --------------------------------------------------------------------------------------------
def apply_overrides(config: Mapping[str, Any], overrides: Mapping[str, Any]) -> Dict[str, Any]:
    """A copy of ``config`` with dotted-key ``overrides`` applied.

    A variant that changes the network class (``model.network.class_path``) keeps the base
    network's arguments the new class also takes (``in_channels``, ``channels``, ``depth``,
    ``padding_mode``, ...), so e.g. the iUNet row has the U-Net's width and depth. A
    ``...sampling_kwargs`` override of ``None`` removes the key (the strategy's defaults).
    """
    out = copy.deepcopy(dict(config))
    new_class = overrides.get(f"{NETWORK}.class_path")
    if new_class is not None and new_class != get_dotted(out, f"{NETWORK}.class_path"):
        accepted = class_parameters(new_class)
        args = get_dotted(out, f"{NETWORK}.init_args") or {}
        kept = {k: v for k, v in args.items() if accepted is None or k in accepted}
        set_dotted(out, NETWORK, {"class_path": new_class, "init_args": kept})
    for key, value in overrides.items():
        if key == f"{NETWORK}.class_path":
            continue
        if value is None and key.endswith("sampling_kwargs"):
            parent, _, leaf = key.rpartition(".")
            node = get_dotted(out, parent)
            if isinstance(node, dict):
                node.pop(leaf, None)
            continue
        set_dotted(out, key, value)
    return out


def parse_overrides(args: Sequence[str]) -> List[Tuple[str, Any]]:
    """``["--trainer.max_epochs", "3", "--data.root=/d"]`` -> ``[("trainer.max_epochs", 3), ...]``.

    Values are YAML (``3`` is an int, ``null`` is None, ``[1, 2]`` a list).
    """
    pairs: List[Tuple[str, Any]] = []
    i = 0
    args = list(args)
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) < 3:
            raise StudyError(f"expected --key value overrides, got {arg!r}")
        if "=" in arg:
            key, text = arg[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args):
                raise StudyError(f"override {arg} has no value")
            key, text = arg[2:], args[i + 1]
            i += 2
        pairs.append((key, yaml.safe_load(text)))
    return pairs

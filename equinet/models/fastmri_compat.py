"""fastMRI's U-Net in equinet: its weights into ``UNet(layout="fastmri")`` with any sampling, and back.

``fastmri.models.Unet`` (Zbontar et al. 2018, the fastMRI leaderboard's U-Net baseline) is
equinet's ``UNet(layout="fastmri", sampling="avgpool", padding_mode="zeros")`` with the same
parameters under other names. :func:`fastmri_key_map` names every fastMRI parameter's
equinet counterpart:

=====================================================  ==========================================
fastMRI                                                equinet
=====================================================  ==========================================
``down_sample_layers.0.layers.{0,4}.weight``           ``inc.<conv>.weight`` (the two 3x3 convs)
``down_sample_layers.l.layers.{0,4}.weight``, l >= 1   ``encoders.(l-1).<conv>.weight``
``conv.layers.{0,4}.weight`` (the bottleneck)          ``encoders.(depth-1).<conv>.weight``
``up_transpose_conv.j.layers.0.weight``                the 2x2 stride-2 transposed conv of
                                                       ``ups.(depth-1-j)``
``up_conv.j.layers.{0,4}.weight``, j < depth-1         ``decoders.(depth-1-j).<conv>.weight``
``up_conv.(depth-1).0.layers.{0,4}.weight``            ``decoders.0.<conv>.weight``
``up_conv.(depth-1).1.{weight,bias}`` (1x1 head)       ``head.{weight,bias}``
=====================================================  ==========================================

fastMRI's instance norms have no parameters (``affine=False``) and no running statistics, and
neither do the fastMRI layout's. Another strategy (``aps``, ``lps``, ``blur``, ``maxpool``,
``strided_conv``) keeps every one of these tensors -- its encoder still sees the skip's channels
and its upsampler still has the 2x2 stride-2 transposed convolution -- and adds only its own
parameters (the LPS scorers, a strided convolution), which keep their fresh initialisation:
:func:`new_parameters` lists them. Strategies that change the channel count (``orthogonal``) or
have no transposed convolution (``up="bilinear"``) cannot take these weights and say so.

Torch only: nothing here imports fastmri; a ``fastmri.models.Unet`` is recognised by its
``state_dict``.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

if TYPE_CHECKING:  # the U-Net builds itself from these functions (UNet.from_fastmri): no import back
    from equinet.models.unet import UNet

FASTMRI_UNET_PREFIX = "unet."  # fastmri.pl_modules.UnetModule holds the Unet as ``self.unet``
_CONVBLOCK_CONVS = ("layers.0", "layers.4")  # the two 3x3 convs of fastMRI's ConvBlock
_EXAMPLE_KEY = "down_sample_layers.0.layers.0.weight"


class FastMRIWeightsError(ValueError):
    """fastMRI weights that do not fit (or are not) a ``fastmri.models.Unet``; says what was found."""


# --------------------------------------------------------------------------------------------
# what fastMRI's state dict holds
# --------------------------------------------------------------------------------------------
def fastmri_unet_keys(num_pool_layers: int) -> List[str]:
    """Every parameter name of ``fastmri.models.Unet(num_pool_layers=...)``'s state dict."""
    d = num_pool_layers
    keys = [f"down_sample_layers.{i}.{c}.weight" for i in range(d) for c in _CONVBLOCK_CONVS]
    keys += [f"conv.{c}.weight" for c in _CONVBLOCK_CONVS]
    keys += [f"up_transpose_conv.{j}.layers.0.weight" for j in range(d)]
    keys += [f"up_conv.{j}.{c}.weight" for j in range(d - 1) for c in _CONVBLOCK_CONVS]
    keys += [f"up_conv.{d - 1}.0.{c}.weight" for c in _CONVBLOCK_CONVS]
    keys += [f"up_conv.{d - 1}.1.weight", f"up_conv.{d - 1}.1.bias"]
    return keys


def _few(keys, n: int = 3) -> str:
    keys = list(keys)
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def fastmri_architecture(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, int]:
    """``{in_chans, out_chans, chans, num_pool_layers}`` of a ``fastmri.models.Unet`` state dict,
    after checking it holds exactly that network's parameters (shapes included)."""
    levels = {int(m.group(1)) for k in state_dict for m in [re.match(r"down_sample_layers\.(\d+)\.", k)] if m}
    if not levels or _EXAMPLE_KEY not in state_dict:
        raise FastMRIWeightsError(
            f"not a fastmri.models.Unet state dict: no {_EXAMPLE_KEY} among its keys ({_few(state_dict)})")
    depth = max(levels) + 1
    expected = fastmri_unet_keys(depth)
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in set(expected)]
    if missing or unexpected:
        raise FastMRIWeightsError(
            f"not a fastmri.models.Unet(num_pool_layers={depth}) state dict: "
            + "; ".join(part for part in (f"missing {_few(missing)}" if missing else "",
                                          f"unexpected {_few(unexpected)}" if unexpected else "") if part))
    chans, in_chans = state_dict[_EXAMPLE_KEY].shape[:2]
    out_chans = state_dict[f"up_conv.{depth - 1}.1.weight"].shape[0]
    return {"in_chans": int(in_chans), "out_chans": int(out_chans), "chans": int(chans), "num_pool_layers": depth}


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _strip_module_prefix(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """``UnetModule``'s keys (``unet.<Unet key>``) without the prefix; other dicts unchanged."""
    if state_dict and all(k.startswith(FASTMRI_UNET_PREFIX) for k in state_dict):
        return {k[len(FASTMRI_UNET_PREFIX):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def fastmri_weights(obj: Any, source: str = "the given object") -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """``(state_dict, hyper_parameters)`` of a fastMRI U-Net given as a ``fastmri.models.Unet``
    (or ``UnetModule``), its state dict, or a ``UnetModule`` Lightning checkpoint dict
    (``{"state_dict": {"unet.…": …}, "hyper_parameters": {...}}``); the state dict is checked to be
    exactly a ``fastmri.models.Unet``'s."""
    hparams: Dict[str, Any] = {}
    if isinstance(obj, nn.Module):
        hparams = {k: getattr(obj, k) for k in ("drop_prob",) if hasattr(obj, k)}
        state_dict, what = obj.state_dict(), f"{type(obj).__name__} module"
    elif isinstance(obj, Mapping) and "state_dict" in obj:
        state_dict = obj["state_dict"]
        hparams = dict(obj.get("hyper_parameters") or {})
        version = obj.get("pytorch-lightning_version")
        what = "a Lightning checkpoint" + (f" (pytorch-lightning {version})" if version else "")
        if not _is_tensor_dict(state_dict):
            raise FastMRIWeightsError(f"{source}: {what} whose state_dict is not a dict of tensors")
    elif _is_tensor_dict(obj):
        state_dict, what = obj, "a state dict"
    else:
        found = f"a dict with keys {_few(obj)}" if isinstance(obj, Mapping) else f"a {type(obj).__name__}"
        raise FastMRIWeightsError(
            f"{source}: expected a fastmri.models.Unet, its state_dict or a fastMRI UnetModule checkpoint; "
            f"found {found}")
    state_dict = _strip_module_prefix(state_dict)
    try:
        fastmri_architecture(state_dict)
    except FastMRIWeightsError as err:
        raise FastMRIWeightsError(f"{source}: {what}, but {err}") from None
    return state_dict, hparams


def read_fastmri_checkpoint(path: os.PathLike) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """``(state_dict, hyper_parameters)`` of a fastMRI ``UnetModule`` checkpoint or a bare
    ``fastmri.models.Unet`` state dict saved with ``torch.save``; loaded with
    ``torch.load(weights_only=True)`` (nothing in the file is executed)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FastMRIWeightsError(f"{path}: no such file (a fastMRI UnetModule checkpoint or Unet state dict)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        detail = next((line for line in lines if "GLOBAL" in line), None)
        if detail is None and not zipfile.is_zipfile(path):
            reason = next((line for line in lines if "Unsupported" in line), type(err).__name__)
            raise FastMRIWeightsError(f"{path}: not a torch checkpoint (torch.load cannot read it: {reason})") from None
        raise FastMRIWeightsError(
            f"{path}: torch.load(weights_only=True) refused it ({detail or type(err).__name__}); "
            "it pickles objects other than tensors and plain data. Save just the weights: "
            "torch.save(model.state_dict(), PATH)") from None
    except Exception as err:  # not a torch file at all (HDF5, truncated zip, ...)
        message = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise FastMRIWeightsError(f"{path}: not a torch checkpoint ({type(err).__name__}: {message})") from None
    return fastmri_weights(obj, source=path)


# --------------------------------------------------------------------------------------------
# the mapping
# --------------------------------------------------------------------------------------------
def _conv_names(block: nn.Module) -> List[str]:
    return [name for name, m in block.named_children() if isinstance(m, nn.modules.conv._ConvNd)]


def _transposed_conv_name(up: nn.Module, level: int, unet: UNet) -> str:
    found = [name for name, m in up.named_modules()
             if isinstance(m, nn.modules.conv._ConvTransposeNd) and m.kernel_size == (2,) * unet.dim
             and m.stride == (2,) * unet.dim]
    if len(found) != 1:
        raise FastMRIWeightsError(
            f"UNet(sampling={unet.sampling!r}, sampling_kwargs={unet.sampling_kwargs}) cannot take fastMRI's "
            f"weights: its level-{level} upsampler {type(up).__name__} has {len(found)} 2x2 stride-2 transposed "
            "convolutions, fastMRI's up_transpose_conv needs exactly one (use a strategy with a transposed-conv "
            "upsampler: avgpool, maxpool, strided_conv, blur, aps, lps)")
    return found[0]


def fastmri_key_map(unet: UNet) -> Dict[str, str]:
    """fastMRI parameter name -> the name of the ``unet`` parameter that holds it (module docstring)."""
    if unet.layout != "fastmri" or unet.dim != 2:
        raise FastMRIWeightsError(
            f"fastMRI weights need UNet(layout='fastmri', dim=2); got layout={unet.layout!r}, dim={unet.dim}")
    d = unet.depth
    if d < 1:
        raise FastMRIWeightsError("fastmri.models.Unet has at least one pooling layer; got UNet(depth=0)")

    def block(fastmri_prefix: str, equinet_prefix: str, module: nn.Module) -> Dict[str, str]:
        return {f"{fastmri_prefix}.{c}.weight": f"{equinet_prefix}.{name}.weight"
                for c, name in zip(_CONVBLOCK_CONVS, _conv_names(module))}

    mapping = block("down_sample_layers.0", "inc", unet.inc)
    for level in range(1, d):
        mapping.update(block(f"down_sample_layers.{level}", f"encoders.{level - 1}", unet.encoders[level - 1]))
    mapping.update(block("conv", f"encoders.{d - 1}", unet.encoders[d - 1]))
    for j in range(d):
        level = d - 1 - j
        name = _transposed_conv_name(unet.ups[level], level, unet)
        mapping[f"up_transpose_conv.{j}.layers.0.weight"] = f"ups.{level}.{name}.weight"
        prefix = f"up_conv.{j}" if j < d - 1 else f"up_conv.{j}.0"
        mapping.update(block(prefix, f"decoders.{level}", unet.decoders[level]))
    mapping[f"up_conv.{d - 1}.1.weight"] = "head.weight"
    mapping[f"up_conv.{d - 1}.1.bias"] = "head.bias"
    return mapping


def new_parameters(unet: UNet) -> List[str]:
    """The ``unet`` parameters (and persistent buffers) fastMRI has no counterpart for: what the
    sampling strategy adds (LPS scorers, ...); they keep their fresh initialisation."""
    mapped = set(fastmri_key_map(unet).values())
    return [k for k in unet.state_dict() if k not in mapped]


def load_fastmri_state_dict(unet: UNet, state_dict: Mapping[str, torch.Tensor]) -> List[str]:
    """Copy a ``fastmri.models.Unet`` state dict into ``unet`` (``layout="fastmri"``) by name;
    returns :func:`new_parameters` (left as initialised). Every fastMRI tensor is used."""
    arch = fastmri_architecture(state_dict)
    mapping = fastmri_key_map(unet)
    expected = {"in_chans": unet.in_channels, "out_chans": unet.out_channels, "chans": unet.widths[0],
                "num_pool_layers": unet.depth}
    wrong = {k: (arch[k], v) for k, v in expected.items() if arch[k] != v}
    doubling = unet.widths == [unet.widths[0] * 2**level for level in range(unet.depth + 1)]
    if wrong or not doubling:
        raise FastMRIWeightsError(
            f"the fastMRI U-Net has {', '.join(f'{k}={v}' for k, v in arch.items())} but the UNet has "
            f"in_channels={unet.in_channels}, out_channels={unet.out_channels}, channels={unet.widths}, "
            f"depth={unet.depth}; build it as UNet(in_channels={arch['in_chans']}, out_channels={arch['out_chans']}, "
            f"channels={arch['chans']}, depth={arch['num_pool_layers']}, layout='fastmri', ...)")
    own = unet.state_dict()
    converted = {}
    for fastmri_key, key in mapping.items():
        src, dst = state_dict[fastmri_key], own[key]
        if src.shape != dst.shape:
            raise FastMRIWeightsError(
                f"fastMRI's {fastmri_key} {tuple(src.shape)} does not fit {key} {tuple(dst.shape)} of "
                f"UNet(sampling={unet.sampling!r}): the strategy changes the channel counts fastMRI's blocks have")
        converted[key] = src
    missing, unexpected = unet.load_state_dict(converted, strict=False)
    assert not unexpected, unexpected
    return list(missing)


# --------------------------------------------------------------------------------------------
# back to fastMRI
# --------------------------------------------------------------------------------------------
def check_fastmri_layout(unet: UNet) -> None:
    """Raise unless ``unet`` computes what a ``fastmri.models.Unet`` with its weights would."""
    up = unet.sampling_kwargs.get("up", "transposed")
    problems = [f"{name}={value!r}" for name, value, want in (
        ("layout", unet.layout, "fastmri"), ("sampling", unet.sampling, "avgpool"), ("up", up, "transposed"),
        ("padding_mode", unet.padding_mode, "zeros"), ("dim", unet.dim, 2)) if value != want]
    if problems:
        raise FastMRIWeightsError(
            "to_fastmri_state_dict needs the network fastmri.models.Unet is (layout='fastmri', sampling='avgpool' "
            f"with transposed-conv up, padding_mode='zeros', dim=2); this UNet has {', '.join(problems)}, so "
            "fastMRI would compute another function with its weights")


def to_fastmri_state_dict(unet: UNet) -> Dict[str, torch.Tensor]:
    """The ``unet``'s weights under ``fastmri.models.Unet``'s names (copies), for
    ``fastmri.models.Unet(**fastmri_init_args(unet)).load_state_dict(...)``."""
    check_fastmri_layout(unet)
    mapping = fastmri_key_map(unet)
    extra = new_parameters(unet)
    if extra:  # cannot happen for avgpool; guards a strategy that adds weights to the layout
        raise FastMRIWeightsError(f"UNet parameters without a fastMRI counterpart: {_few(extra)}")
    own = unet.state_dict()
    return {fastmri_key: own[key].detach().clone() for fastmri_key, key in mapping.items()}


def fastmri_init_args(unet: UNet) -> Dict[str, Any]:
    """``fastmri.models.Unet``'s constructor arguments for ``unet``'s architecture."""
    check_fastmri_layout(unet)
    return {"in_chans": unet.in_channels, "out_chans": unet.out_channels, "chans": unet.widths[0],
            "num_pool_layers": unet.depth, "drop_prob": unet.drop_prob}


# --------------------------------------------------------------------------------------------
# fine-tuning from a file (the CLI's --model.init_from, a study's init_from)
# --------------------------------------------------------------------------------------------
def network_arguments(arch: Mapping[str, int]) -> Dict[str, Any]:
    """The ``UNet`` init_args of a fastMRI architecture (:func:`fastmri_architecture`)."""
    return {"in_channels": arch["in_chans"], "out_channels": arch["out_chans"], "channels": arch["chans"],
            "depth": arch["num_pool_layers"], "layout": "fastmri"}


def init_from_fastmri(network: nn.Module, path: os.PathLike) -> List[str]:
    """Load the fastMRI U-Net weights of the file ``path`` into ``network`` (an equinet ``UNet``
    with fastMRI's architecture and any sampling); returns :func:`new_parameters`.

    The run's network is not derived from the file, it must match it (so the run's config and
    its checkpoints describe the network they hold); a mismatch names the init_args to set.
    """
    state_dict, _ = read_fastmri_checkpoint(path)
    arch = fastmri_architecture(state_dict)
    wanted = network_arguments(arch)
    if not all(hasattr(network, a) for a in ("layout", "widths", "depth", "in_channels", "out_channels")):
        raise FastMRIWeightsError(
            f"init_from {os.fspath(path)}: fastMRI U-Net weights need the network equinet.models.UNet "
            f"(with {_flags(wanted)}); got {type(network).__name__}")
    have = {"in_channels": network.in_channels, "out_channels": network.out_channels,
            "channels": network.widths[0] if network.widths == [network.widths[0] * 2**level for level in
                                                                range(network.depth + 1)] else network.widths,
            "depth": network.depth, "layout": network.layout}
    differ = [k for k in wanted if have[k] != wanted[k]]
    if differ:
        raise FastMRIWeightsError(
            f"init_from {os.fspath(path)} holds fastmri.models.Unet(in_chans={arch['in_chans']}, "
            f"out_chans={arch['out_chans']}, chans={arch['chans']}, num_pool_layers={arch['num_pool_layers']}) "
            f"but the network has {', '.join(f'{k}={have[k]!r}' for k in differ)}; set "
            f"{_flags({k: wanted[k] for k in differ})}")
    try:
        return load_fastmri_state_dict(network, state_dict)
    except FastMRIWeightsError as err:
        raise FastMRIWeightsError(f"init_from {os.fspath(path)}: {err}") from None


def _flags(args: Mapping[str, Any]) -> str:
    return " ".join(f"--model.network.init_args.{k} {v}" for k, v in args.items())

"""FastMRI's U-Net in equinet -- the same function with avgpool, every weight carried over,
exact shift equivariance with APS/LPS, the way back into fastMRI, and clear errors."""

from __future__ import annotations

import functools

import hypothesis.strategies as st
import pytest
import torch
from _ties_helpers import FAMILIES, batch, equivariance_nmse
from fastmri.models import Unet
from hypothesis import given, settings

from equinet.models import UNet
from equinet.models.fastmri_compat import (
    FastMRIWeightsError,
    fastmri_init_args,
    fastmri_key_map,
    fastmri_unet_keys,
    new_parameters,
    read_fastmri_checkpoint,
    to_fastmri_state_dict,
)


def fastmri_unet(chans=8, num_pool_layers=3, in_chans=1, out_chans=1, drop_prob=0.0, seed=0) -> Unet:
    """A randomly initialised fastMRI U-Net (its own default initialisation, seeded)."""
    torch.manual_seed(seed)
    return Unet(in_chans, out_chans, chans=chans, num_pool_layers=num_pool_layers, drop_prob=drop_prob)


def fit_briefly(net: torch.nn.Module, x: torch.Tensor, steps: int = 6) -> torch.nn.Module:
    """A few Adam steps towards a blurred copy of ``x``: weights that are trained, not random."""
    target = torch.nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    net.train()
    for _ in range(steps):
        opt.zero_grad()
        (net(x) - target).square().mean().backward()
        opt.step()
    return net.eval()


def rel_max_error(reference: torch.Tensor, got: torch.Tensor) -> float:
    return ((reference.double() - got.double()).abs().max() / reference.double().abs().max()).item()


# ---------------------------------------------------------------------------------------------
# avgpool = fastMRI's network, every parameter mapped
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("chans,num_pool_layers", [(8, 2), (8, 3), (8, 4), (32, 2), (32, 4)])
def test_avgpool_conversion_computes_what_fastmri_computes(chans, num_pool_layers):
    """Even sizes and sizes that become odd after pooling (fastMRI floors them and reflect-pads the
    upsampled map): relative max error <= 1e-6 (measured: 0, the same operations in the same order)."""
    reference = fastmri_unet(chans, num_pool_layers, seed=chans + num_pool_layers).eval()
    net = UNet.from_fastmri(reference).eval()
    g = torch.Generator().manual_seed(num_pool_layers)
    sizes = [(64, 48), (48, 80)] + [(37, 53), (66, 34), (2**num_pool_layers + 3, 45)]  # odd at some level
    for size in sizes:
        x = torch.randn(2, 1, *size, generator=g)
        with torch.no_grad():
            want, got = reference(x), net(x)
        assert got.shape == want.shape
        assert rel_max_error(want, got) <= 1e-6, (size, rel_max_error(want, got))


@settings(max_examples=8, deadline=None)
@given(chans=st.sampled_from([8, 32]), num_pool_layers=st.integers(2, 4), height=st.integers(16, 70),
       width=st.integers(16, 70), channels=st.sampled_from([(1, 1), (2, 3)]), seed=st.integers(0, 1000),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_avgpool_conversion_property_over_sizes_channels_dtypes(chans, num_pool_layers, height, width,
                                                               channels, seed, dtype):
    reference = fastmri_unet(chans, num_pool_layers, *channels, seed=seed).to(dtype).eval()
    net = UNet.from_fastmri(reference).eval()
    assert next(net.parameters()).dtype == dtype
    x = torch.randn(1, channels[0], height, width, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    with torch.no_grad():
        assert rel_max_error(reference(x), net(x)) <= 1e-6


def test_trained_weights_and_dropout_carry_over_in_train_mode_too():
    """drop_prob is fastMRI's (Dropout2d after every block activation): with the same seed the two
    networks draw the same channel masks, so even training-mode outputs agree."""
    reference = fastmri_unet(8, 3, drop_prob=0.3)
    x = batch(["natural", "natural_zero_background"], 2, 48, channels=1)
    fit_briefly(reference, x)
    net = UNet.from_fastmri(reference)
    assert net.drop_prob == 0.3
    reference.train(), net.train()
    torch.manual_seed(5)
    want = reference(x)
    torch.manual_seed(5)
    got = net(x)
    assert rel_max_error(want, got) <= 1e-6
    torch.manual_seed(6)
    assert rel_max_error(want, net(x)) > 1e-3  # the masks matter: a different seed differs


@pytest.mark.parametrize("num_pool_layers", [2, 3, 4])
@pytest.mark.parametrize("sampling,kwargs", [("avgpool", {}), ("maxpool", {}), ("blur", {"filter_size": 3}),
                                             ("aps", {}), ("aps", {"filter_size": 3}), ("lps", {}),
                                             ("strided_conv", {})])
def test_every_fastmri_parameter_is_mapped_and_only_new_ones_are_left(num_pool_layers, sampling, kwargs):
    reference = fastmri_unet(8, num_pool_layers)
    source = reference.state_dict()
    assert sorted(source) == sorted(fastmri_unet_keys(num_pool_layers))
    net = UNet.from_fastmri(reference, sampling=sampling, sampling_kwargs=kwargs, padding_mode="circular")
    mapping = fastmri_key_map(net)
    assert sorted(mapping) == sorted(source)  # none left
    assert len(set(mapping.values())) == len(mapping)  # no two onto one
    own = net.state_dict()
    for fastmri_key, key in mapping.items():
        assert torch.equal(own[key], source[fastmri_key]), (fastmri_key, key)
    new = new_parameters(net)
    assert sorted(new) == sorted(set(own) - set(mapping.values()))  # none unexplained
    if sampling == "lps":
        assert new and all(".logits." in k and k.startswith("downs.") for k in new)
    elif sampling == "strided_conv":
        assert new and all(k.startswith("downs.") and ".conv." in k for k in new)
    else:
        assert new == []


def test_the_mapping_is_not_the_identity_of_names():
    """The output test can fail: any one fastMRI tensor replaced by another draw changes the output
    (so a mapping that swapped levels or blocks could not pass it)."""
    reference = fastmri_unet(8, 3).eval()
    x = torch.randn(1, 1, 32, 32)
    g = torch.Generator().manual_seed(0)
    for key, value in reference.state_dict().items():
        sd = dict(reference.state_dict())
        sd[key] = torch.randn(value.shape, generator=g) * 0.3
        with torch.no_grad():
            assert rel_max_error(reference(x), UNet.from_fastmri(sd).eval()(x)) > 1e-3, key


# ---------------------------------------------------------------------------------------------
# the APS/LPS conversions are exactly shift-equivariant
# ---------------------------------------------------------------------------------------------
ADAPTIVE = {"aps": ("aps", {}), "aps-3": ("aps", {"filter_size": 3}), "lps": ("lps", {}),
            "lps-3": ("lps", {"filter_size": 3})}
SHIFTS = [(1, 1), (3, 0), (0, 5), (-7, 2), (16, -11)]


@functools.lru_cache(maxsize=None)
def fastmri_source(trained: bool) -> Unet:
    reference = fastmri_unet(8, 3, in_chans=2, out_chans=2, seed=3)
    if trained:
        fit_briefly(reference, torch.cat([batch(["natural", "natural", "hot_pixel", "checker2"], 2, 32, 2, seed=s)
                                          for s in (0, 1)]))
    return reference.eval()


@functools.lru_cache(maxsize=None)
def converted(name: str, trained: bool) -> UNet:
    sampling, kwargs = {**ADAPTIVE, "avgpool": ("avgpool", {}), "blur": ("blur", {"filter_size": 3})}[name]
    torch.manual_seed(1)  # the LPS scorers' initialisation
    return UNet.from_fastmri(fastmri_source(trained), sampling=sampling, sampling_kwargs=kwargs,
                             padding_mode="circular").eval()


@pytest.mark.parametrize("trained", [False, True])
def test_aps_and_lps_conversions_are_exactly_equivariant_on_every_tie_family(trained):
    """Natural images and the degenerate/symmetric inputs of tests/test_ties.py in one batch: every
    APS/LPS conversion meets NMSE <= 1e-12, where the avgpool and blur conversions (the same weights)
    miss it by orders of magnitude."""
    x = batch(FAMILIES, 2, 32)
    for control in ("avgpool", "blur"):
        worst = torch.stack([equivariance_nmse(converted(control, trained), x, k) for k in SHIFTS]).amax(0)
        natural = FAMILIES.index("natural")
        assert worst[natural] > 1e-6, (control, worst[natural].item())
    for name in ADAPTIVE:
        worst = torch.stack([equivariance_nmse(converted(name, trained), x, k) for k in SHIFTS]).amax(0)
        assert worst.max() <= 1e-12, (name, trained, dict(zip(FAMILIES, worst.tolist())))


@settings(max_examples=6, deadline=None)
@given(names=st.lists(st.sampled_from(FAMILIES), min_size=1, max_size=3), trained=st.booleans(),
       seed=st.integers(0, 50), shift=st.tuples(st.integers(-16, 16), st.integers(-16, 16)))
def test_aps_and_lps_conversions_equivariance_property(names, trained, seed, shift):
    x = batch(names, 2, 32, seed=seed)
    for name in ADAPTIVE:
        nmse = equivariance_nmse(converted(name, trained), x, shift)
        assert nmse.max() <= 1e-12, (name, names, shift, nmse.tolist())


# ---------------------------------------------------------------------------------------------
# back to fastMRI
# ---------------------------------------------------------------------------------------------
def test_fine_tuned_avgpool_weights_go_back_into_fastmri():
    reference = fastmri_unet(8, 3, drop_prob=0.1)
    net = UNet.from_fastmri(reference)
    x = batch(["natural", "blocks"], 2, 40, channels=1)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    fit_briefly(net, x)
    assert any(not torch.equal(before[k], v) for k, v in net.state_dict().items())
    args = fastmri_init_args(net)
    assert args == {"in_chans": 1, "out_chans": 1, "chans": 8, "num_pool_layers": 3, "drop_prob": 0.1}
    back = Unet(**args)
    back.load_state_dict(net.to_fastmri_state_dict())  # strict: every key, nothing else
    back.eval()
    with torch.no_grad():
        for size in ((40, 40), (43, 37)):
            y = torch.randn(2, 1, *size)
            assert torch.equal(back(y), net(y))


@pytest.mark.parametrize("kwargs, problem", [
    ({"sampling": "aps", "padding_mode": "circular"}, "sampling='aps', padding_mode='circular'"),
    ({"sampling": "lps"}, "sampling='lps'"),
    ({"sampling": "blur"}, "sampling='blur'"),
    ({"sampling": "avgpool", "padding_mode": "circular"}, "padding_mode='circular'"),
])
def test_to_fastmri_refuses_strategies_fastmri_cannot_compute(kwargs, problem):
    net = UNet.from_fastmri(fastmri_unet(8, 2), **kwargs)
    with pytest.raises(FastMRIWeightsError, match=f"this UNet has {problem}, so fastMRI would compute"):
        to_fastmri_state_dict(net)
    with pytest.raises(FastMRIWeightsError, match="layout='fastmri'"):
        UNet(1, 1, channels=8, depth=2, sampling="avgpool").to_fastmri_state_dict()


# ---------------------------------------------------------------------------------------------
# sizes and bad input
# ---------------------------------------------------------------------------------------------
def test_sizes_fastmri_cannot_take_and_odd_sizes_with_polyphase_strategies_are_clear_errors():
    net = UNet.from_fastmri(fastmri_unet(8, 3))
    with pytest.raises(ValueError, match=r"needs spatial sizes of at least \(8, 8\); got \(7, 40\)"):
        net(torch.randn(1, 1, 7, 40))
    assert net.size_multiple == (1, 1)
    aps = UNet.from_fastmri(fastmri_unet(8, 3), sampling="aps", padding_mode="circular")
    assert aps.size_multiple == (8, 8)
    with pytest.raises(ValueError, match=r"divisible by \(8, 8\); got \(37, 40\)"):
        aps(torch.randn(1, 1, 37, 40))
    # the equinet layout keeps its divisibility rule for avgpool
    with pytest.raises(ValueError, match="divisible by"):
        UNet(1, 1, channels=4, depth=3, sampling="avgpool")(torch.randn(1, 1, 37, 40))


def test_bad_state_dicts_and_strategies_get_clear_errors():
    sd = fastmri_unet(8, 3).state_dict()
    with pytest.raises(FastMRIWeightsError, match="missing up_conv.2.1.bias"):
        UNet.from_fastmri({k: v for k, v in sd.items() if k != "up_conv.2.1.bias"})
    with pytest.raises(FastMRIWeightsError, match="unexpected extra.weight"):
        UNet.from_fastmri({**sd, "extra.weight": torch.zeros(1)})
    with pytest.raises(FastMRIWeightsError, match="no down_sample_layers.0.layers.0.weight among its keys"):
        UNet.from_fastmri({"inc.0.weight": torch.zeros(1)})
    with pytest.raises(FastMRIWeightsError, match="found a list"):
        UNet.from_fastmri([1, 2])
    with pytest.raises(FastMRIWeightsError, match="has 0 2x2 stride-2 transposed convolutions"):
        UNet.from_fastmri(sd, sampling="avgpool", sampling_kwargs={"up": "bilinear"})
    with pytest.raises(FastMRIWeightsError, match="cannot take fastMRI's weights|changes the channel counts"):
        UNet.from_fastmri(sd, sampling="orthogonal")
    wrong = UNet(1, 1, channels=16, depth=3, layout="fastmri")
    from equinet.models.fastmri_compat import load_fastmri_state_dict

    with pytest.raises(FastMRIWeightsError, match=r"chans=8.*channels=\[16, 32, 64, 128\].*channels=8, depth=3"):
        load_fastmri_state_dict(wrong, sd)
    with pytest.raises(ValueError, match="layout='fastmri' has fastMRI's affine-free instance norm"):
        UNet(layout="fastmri", norm="batch")


# ---------------------------------------------------------------------------------------------
# files: UnetModule checkpoints and bare state dicts
# ---------------------------------------------------------------------------------------------
def write_unet_module_checkpoint(path, model: Unet, **hparams) -> None:
    """A checkpoint in the format fastmri.pl_modules.UnetModule's Lightning trainer writes (that
    module cannot run on Lightning 2 here): the Unet's tensors under ``unet.``, its hparams."""
    torch.save({
        "epoch": 49, "global_step": 1234, "pytorch-lightning_version": "1.9.5",
        "state_dict": {f"unet.{k}": v for k, v in model.state_dict().items()},
        "hyper_parameters": {"in_chans": model.in_chans, "out_chans": model.out_chans, "chans": model.chans,
                             "num_pool_layers": model.num_pool_layers, "drop_prob": model.drop_prob, "lr": 0.001,
                             "lr_step_size": 40, "lr_gamma": 0.1, "weight_decay": 0.0, **hparams},
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.001, "params": [0]}]}],
        "lr_schedulers": [{"step_size": 40, "gamma": 0.1}], "callbacks": {}, "loops": {},
    }, path)


def test_unet_module_checkpoints_and_bare_state_dicts_are_read(tmp_path):
    model = fastmri_unet(8, 2, drop_prob=0.2)
    write_unet_module_checkpoint(tmp_path / "epoch=49.ckpt", model)
    torch.save(model.state_dict(), tmp_path / "unet.pt")
    for name in ("epoch=49.ckpt", "unet.pt"):
        state_dict, hparams = read_fastmri_checkpoint(tmp_path / name)
        assert sorted(state_dict) == sorted(model.state_dict())
        assert all(torch.equal(state_dict[k], v) for k, v in model.state_dict().items())
    assert read_fastmri_checkpoint(tmp_path / "epoch=49.ckpt")[1]["drop_prob"] == 0.2
    ckpt = torch.load(tmp_path / "epoch=49.ckpt", weights_only=True)
    assert UNet.from_fastmri(ckpt).drop_prob == 0.2


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


def test_wrong_files_name_the_file_and_what_was_found(tmp_path):
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    torch.save({"state_dict": {"network.inc.0.weight": torch.zeros(2)}, "pytorch-lightning_version": "2.6.6"},
               tmp_path / "equinet.ckpt")
    torch.save({"epoch": 3}, tmp_path / "other.pt")
    torch.save({"payload": _Evil()}, tmp_path / "evil.pt")
    cases = {
        "missing.ckpt": "no such file",
        "notes.txt": "not a torch checkpoint",
        "equinet.ckpt": "a Lightning checkpoint (pytorch-lightning 2.6.6), but not a fastmri.models.Unet state "
                        "dict: no down_sample_layers.0.layers.0.weight among its keys (network.inc.0.weight)",
        "other.pt": "found a dict with keys epoch",
        "evil.pt": "torch.load(weights_only=True) refused it (Trying to load unsupported GLOBAL posix.system",
    }
    for name, message in cases.items():
        with pytest.raises(FastMRIWeightsError) as err:
            read_fastmri_checkpoint(tmp_path / name)
        text = str(err.value)
        assert text.startswith(str(tmp_path / name)) and message in text and "\n" not in text, text


def test_readme_snippet_runs():
    """The README's "Start from your fastMRI model" snippet, as written."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Start from your fastMRI model", 1)[1].split("\n## ", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert "UNet.from_fastmri" in code and "to_fastmri_state_dict" in code
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert isinstance(namespace["back"], Unet)

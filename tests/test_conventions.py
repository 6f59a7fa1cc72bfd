"""Equinet uses Lightning's public API only -- no ``_``-prefixed import, override or
attribute -- so the pins can move; CLI checkpoints still rebuild their network by themselves and
load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
import textwrap
from pathlib import Path

import pytest
import torch
from _lightning_helpers import REPO, run_cli

import equinet
from equinet.lightning import ReconstructionModule

LIGHTNING_PACKAGES = ("pytorch_lightning", "lightning", "lightning_fabric", "lightning_utilities")


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _lightning_module(name: str) -> bool:
    return name.split(".")[0] in LIGHTNING_PACKAGES


def private_lightning_imports(source: str) -> list:
    """``import``/``from ... import`` statements that reach a ``_``-prefixed Lightning name."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and _lightning_module(node.module):
            parts = node.module.split(".")
            names = [a.name for a in node.names]
            if any(map(_is_private, parts)) or any(map(_is_private, names)):
                found.append(f"line {node.lineno}: from {node.module} import {', '.join(names)}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if _lightning_module(alias.name) and any(map(_is_private, alias.name.split("."))):
                    found.append(f"line {node.lineno}: import {alias.name}")
    return found


def private_lightning_members(cls: type) -> list:
    """Private names a class defines or uses on ``self`` that a Lightning base class also has:
    an override of, or a reach into, Lightning's internals."""
    bases = [b for b in cls.__mro__[1:] if _lightning_module(b.__module__)]
    if not bases:
        return []
    theirs = set()
    for base in bases:
        theirs |= {name for name in vars(base) if _is_private(name)}
        try:
            theirs |= set(re.findall(r"self\.(_\w+)", inspect.getsource(base)))
        except (OSError, TypeError):
            pass
    ours = {name for name in vars(cls) if _is_private(name)}
    ours |= set(re.findall(r"self\.(_\w+)", inspect.getsource(cls)))
    return sorted(
        f"{cls.__module__}.{cls.__qualname__}.{name}" for name in ours & theirs if _is_private(name)
    )


def equinet_modules():
    for info in pkgutil.walk_packages(equinet.__path__, "equinet."):
        yield importlib.import_module(info.name)


def test_no_private_lightning_import_override_or_attribute():
    files = sorted(Path(equinet.__file__).parent.rglob("*.py"))
    assert len(files) > 20
    imports = {
        str(p.relative_to(REPO)): found for p in files if (found := private_lightning_imports(p.read_text()))
    }
    assert not imports, imports
    members, classes = [], 0
    for module in equinet_modules():
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__ and any(
                _lightning_module(b.__module__) for b in cls.__mro__[1:]
            ):
                classes += 1
                members += private_lightning_members(cls)
    assert classes >= 8  # the module, the DataModules, the callbacks, the CLI, its parser
    assert not members, members


def test_the_check_has_teeth():
    """What the old code did is caught: the private context variable and a private override."""
    assert private_lightning_imports(
        "from pytorch_lightning.core.mixins.hparams_mixin import _given_hyperparameters"
    )
    assert private_lightning_imports("from pytorch_lightning.utilities._pytree import tree_flatten")
    assert private_lightning_imports("import lightning_fabric._graveyard")
    assert not private_lightning_imports(
        "from pytorch_lightning.cli import LightningCLI\nfrom os import _exit"
    )

    from pytorch_lightning.callbacks import ModelCheckpoint

    namespace = {"ModelCheckpoint": ModelCheckpoint, "__name__": "planted"}
    source = textwrap.dedent("""
        class Planted(ModelCheckpoint):
            def _find_last_checkpoints(self, trainer):
                return set()
    """)
    exec(compile(source, "planted.py", "exec"), namespace)
    planted = namespace["Planted"]
    theirs = set(vars(ModelCheckpoint))
    assert "_find_last_checkpoints" in theirs and "_find_last_checkpoints" in vars(planted)
    assert not _is_private("__init__") and _is_private("_trainer")


CONFIG = textwrap.dedent("""
    seed_everything: 0
    trainer: {accelerator: cpu, devices: 1, max_epochs: 1, enable_progress_bar: false, logger: false,
              enable_model_summary: false, limit_train_batches: 2}
    model:
      network:
        class_path: equinet.models.UNet
        init_args: {channels: 4, depth: 2, sampling: aps, padding_mode: circular}
      optimizer: {class_path: torch.optim.SGD, init_args: {lr: 0.05, momentum: 0.5}}
      lr_scheduler: {class_path: torch.optim.lr_scheduler.StepLR, init_args: {step_size: 3}}
    data:
      class_path: _lightning_helpers.ToyReconData
      init_args: {train_slices: [2, 2], val_slices: [2, 1], size: 32, batch_size: 2}
    equivariance: {num_dpsnr_shifts: 1}
    images: {num_images: 0}
""")


@pytest.mark.filterwarnings(
    "ignore:.*does not have many workers.*", "ignore:.*smaller than the logging interval.*"
)
def test_a_cli_checkpoint_loads_weights_only_and_rebuilds_its_network(tmp_path):
    from equinet.models import UNet

    config = tmp_path / "unet.yaml"
    config.write_text(CONFIG)
    cli = run_cli(
        "fit", "--config", str(config), "--trainer.default_root_dir", str(tmp_path), "--run.name", "a"
    )
    path = tmp_path / "a" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(path, weights_only=True)  # plain data only
    hparams = ckpt["hyper_parameters"]
    assert hparams["network"] == {
        "class_path": "equinet.models.UNet",
        "init_args": {**hparams["network"]["init_args"], "channels": 4, "depth": 2, "sampling": "aps"},
    }
    assert hparams["optimizer"]["class_path"] == "torch.optim.SGD" and hparams["loss"] == "mse"
    assert not [k for k in hparams if k.startswith("_")]  # no Lightning-internal keys

    loaded = ReconstructionModule.load_from_checkpoint(path)  # no network= needed
    assert isinstance(loaded.network, UNet) and loaded.network.sampling == "aps"
    for name, value in loaded.state_dict().items():
        assert torch.equal(value, ckpt["state_dict"][name]), name
    trained = cli.model.eval()
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(loaded.eval()(x), trained(x))
    optimizer = loaded.configure_optimizers()
    assert isinstance(optimizer["optimizer"], torch.optim.SGD)
    assert (
        optimizer["optimizer"].defaults["lr"] == 0.05 and optimizer["optimizer"].defaults["momentum"] == 0.5
    )
    assert isinstance(optimizer["lr_scheduler"]["scheduler"], torch.optim.lr_scheduler.StepLR)
    assert loaded.hparams == hparams  # loading keeps the config, so its own checkpoints rebuild too


def test_a_python_made_module_stores_no_objects():
    from _lightning_helpers import TinyNet

    module = ReconstructionModule(network=TinyNet(), optimizer=torch.optim.SGD)
    # lr_scheduler=None and shift_augmentation=0 are plain data
    assert set(module.hparams) == {"loss", "lr_scheduler", "output_clamp", "residual", "shift_augmentation"}

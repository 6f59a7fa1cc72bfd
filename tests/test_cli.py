"""The ``equinet`` command: usage, --help, --print_config, jsonargparse's errors for bad input."""

from __future__ import annotations

import textwrap

import pytest
import yaml
from _lightning_helpers import run_cli

TOY = textwrap.dedent("""
    trainer: {accelerator: cpu, devices: 1, max_epochs: 1}
    model:
      network:
        class_path: _lightning_helpers.TinyNet
        init_args: {channels: 4}
    data:
      class_path: _lightning_helpers.ToyReconData
""")


@pytest.fixture
def toy_config(tmp_path):
    path = tmp_path / "toy.yaml"
    path.write_text(TOY)
    return str(path)


def _exit(capsys, *argv):
    with pytest.raises(SystemExit) as exc:
        run_cli(*argv)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_usage_lists_the_commands(capsys):
    run_cli()
    out = capsys.readouterr().out
    for command in ("fit", "validate", "test", "predict", "data", "equivariance"):
        assert command in out
    code, _, err = _exit(capsys, "frobnicate")
    assert code == 2 and "unknown command 'frobnicate'" in err


@pytest.mark.parametrize("sub", ["fit", "validate", "test", "predict"])
def test_help(capsys, sub):
    code, out, _ = _exit(capsys, sub, "--help")
    assert code == 0
    assert out.startswith(f"usage: equinet [options] {sub}")
    for flag in ("--model.network", "--model.loss", "--model.optimizer", "--model.lr_scheduler", "--data",
                 "--checkpoint.monitor", "--equivariance.num_dpsnr_shifts", "--images.num_images", "--ckpt_path",
                 "--print_config"):
        assert flag in out, flag


def test_print_config_applies_overrides(capsys, toy_config):
    code, out, _ = _exit(capsys, "fit", "--config", toy_config, "--trainer.max_steps", "3",
                         "--data.batch_size", "5", "--model.loss", "l1",
                         "--model.optimizer", "torch.optim.SGD", "--model.optimizer.lr", "0.5", "--print_config")
    assert code == 0
    cfg = yaml.safe_load(out)
    assert cfg["trainer"]["max_steps"] == 3
    assert cfg["data"]["init_args"]["batch_size"] == 5
    assert cfg["model"]["loss"] == "l1"
    assert cfg["model"]["optimizer"] == {"class_path": "torch.optim.SGD", "init_args": cfg["model"]["optimizer"][
        "init_args"]} and cfg["model"]["optimizer"]["init_args"]["lr"] == 0.5
    # equinet's always-on callbacks and defaults
    assert cfg["checkpoint"]["monitor"] == "val/ssim" and cfg["checkpoint"]["save_last"] is True
    assert cfg["equivariance"] == {"max_shift": 16, "num_dpsnr_shifts": 10, "seed": 0}


@pytest.mark.parametrize("argv, message", [
    (["--model.bogus", "1"], "unrecognized arguments: --model.bogus"),
    (["--model.loss", "huber"], "Expected a typing.Literal['mse', 'l1', 'ssim']. Got value: huber"),
    (["--data.init_args.nonsense", "3"], "nonsense"),
    (["--trainer.max_steps", "many"], "trainer.max_steps"),
    (["--model.network.init_args.channels", "x"], "channels"),
])
def test_bad_keys_and_values_get_clear_errors(capsys, toy_config, argv, message):
    code, _, err = _exit(capsys, "fit", "--config", toy_config, *argv)
    assert code == 2
    assert message in err
    assert "error:" in err


def test_bad_config_file_key(capsys, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(TOY + "modle: {loss: mse}\n")
    code, _, err = _exit(capsys, "fit", "--config", str(path))
    assert code == 2 and "modle" in err


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


@pytest.mark.filterwarnings("ignore:.*does not have many workers.*")
def test_cli_refuses_checkpoints_that_unpickle_code(toy_config, tmp_path):
    """`--ckpt_path last` finding a tampered last.ckpt: the load is weights_only, nothing runs."""
    import pickle

    import torch

    (tmp_path / "runs" / "a" / "checkpoints").mkdir(parents=True)
    torch.save({"state_dict": {}, "epoch": 0, "global_step": 0, "payload": _Evil()},
               tmp_path / "runs" / "a" / "checkpoints" / "last.ckpt")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        run_cli("fit", "--config", toy_config, "--trainer.default_root_dir", str(tmp_path / "runs"),
                "--run.name", "a", "--trainer.logger", "false", "--ckpt_path", "last")


def test_short_class_names_resolve(tmp_path):
    """`--data FastMRIDataModule --model.network UNet` work as well as full class paths."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "equinet", "fit", "--data", "FastMRIDataModule", "--model.network", "UNet",
         "--print_config"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "class_path: equinet.data.FastMRIDataModule" in done.stdout
    assert "class_path: equinet.models.UNet" in done.stdout

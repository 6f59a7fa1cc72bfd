"""A study's ``init_from`` fine-tunes every variant from the same fastMRI U-Net checkpoint."""

from __future__ import annotations

import copy

import pytest
import yaml
from test_fastmri_cli import RecordValidations, reference_validation_loss
from test_fastmri_compat import fastmri_unet, write_unet_module_checkpoint
from _lightning_helpers import run_cli
from test_study_plan import RUN

from equinet.study.config import StudyError, get_dotted
from equinet.study.plan import check_study, load_study, write_plan


def toy_study(tmp_path, variants, overrides=(), **changes):
    run = copy.deepcopy(RUN)
    run["data"] = {"class_path": "_lightning_helpers.ToyReconData", "init_args": {"size": 32, "batch_size": 2}}
    run["model"]["loss"] = "l1"
    run["model"]["network"]["init_args"]["padding_mode"] = "zeros"  # fastMRI's: avgpool = its function
    run["trainer"].update({"num_sanity_val_steps": -1, "logger": False, "enable_progress_bar": False,
                           "enable_model_summary": False,
                           "callbacks": [{"class_path": "test_fastmri_cli.RecordValidations"}]})
    config = {"name": "ft", "run": run, "variants": list(variants), "cost": {"reference": "avgpool"}, **changes}
    return load_study(None, overrides, config=config)


@pytest.mark.filterwarnings("ignore:.*does not have many workers.*")
def test_every_variant_starts_from_the_checkpoint_with_its_own_sampling(tmp_path, monkeypatch):
    model = fastmri_unet(8, 3, seed=2)
    write_unet_module_checkpoint(tmp_path / "unet.ckpt", model)
    monkeypatch.chdir(tmp_path)
    study = toy_study(tmp_path, ["avgpool", "APS", "LPS"], init_from="unet.ckpt")
    assert study.config["init_from"] == str(tmp_path / "unet.ckpt")  # absolute: runs start elsewhere
    assert check_study(study) == ["avgpool", "APS", "LPS"]
    for variant, sampling in (("avgpool", "avgpool"), ("APS", "aps"), ("LPS", "lps")):
        cfg = study.variant_config(variant)
        args = get_dotted(cfg, "model.network.init_args")
        assert cfg["model"]["init_from"] == str(tmp_path / "unet.ckpt")
        assert args["sampling"] == sampling and args["layout"] == "fastmri" and "norm" not in args
        assert (args["channels"], args["depth"]) == (8, 3)  # the checkpoint's, not the run config's 4 / 2
        assert cfg["trainer"] == study.variant_config("avgpool")["trainer"]  # the same budget
    assert "init_from" not in study.variant_config("input")["model"]
    write_plan(study, tmp_path / "plan")
    # the planned avgpool run starts at the fastMRI model's validation loss
    RecordValidations.seen = []
    planned = tmp_path / "plan" / "configs" / "avgpool.yaml"
    assert yaml.safe_load(planned.read_text())["model"]["init_from"] == str(tmp_path / "unet.ckpt")
    run_cli("fit", "--config", str(planned), "--trainer.max_steps", "-1", "--trainer.max_epochs", "1",
            "--trainer.default_root_dir",
            str(tmp_path / "runs"))
    sanity = [loss for checking, loss, _ in RecordValidations.seen if checking]
    reference = reference_validation_loss(model)
    assert len(sanity) == 1 and abs(sanity[0] - reference) <= 1e-6 * reference, (sanity, reference)


@pytest.mark.parametrize("variant, message", [
    ("iUNet", "variant 'iUNet' cannot start from the fastMRI U-Net of init_from: init_from "),
    ("orthogonal", "variant 'orthogonal' cannot start from the fastMRI U-Net of init_from: init_from "),
])
def test_variants_that_cannot_take_the_weights_are_refused_before_training(tmp_path, variant, message):
    write_unet_module_checkpoint(tmp_path / "unet.ckpt", fastmri_unet(8, 2))
    study = toy_study(tmp_path, ["avgpool", variant], init_from=str(tmp_path / "unet.ckpt"))
    with pytest.raises(StudyError, match=message):
        check_study(study)


def test_a_wrong_init_from_file_fails_when_the_study_is_loaded(tmp_path):
    (tmp_path / "x.ckpt").write_text("nope")
    with pytest.raises(StudyError, match=r"init_from: .*x.ckpt: not a torch checkpoint"):
        toy_study(tmp_path, ["avgpool"], init_from=str(tmp_path / "x.ckpt"))


def test_init_from_is_a_study_override(tmp_path):
    write_unet_module_checkpoint(tmp_path / "unet.ckpt", fastmri_unet(8, 2))
    study = toy_study(tmp_path, ["APS"], overrides=["--init_from", str(tmp_path / "unet.ckpt")])
    assert study.variant_config("APS")["model"]["init_from"] == str(tmp_path / "unet.ckpt")
    assert "init_from" not in toy_study(tmp_path, ["APS"]).variant_config("APS")["model"]

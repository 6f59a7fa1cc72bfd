"""The study's plan: variants as config overrides, and the clear errors before any training."""

from __future__ import annotations

import copy

import pytest
import yaml

from equinet.study.config import StudyError, apply_overrides, flatten, get_dotted, parse_overrides, set_dotted
from equinet.study.plan import check_study, config_differences, load_study, resolve_folder, write_plan
from equinet.study.run import device_count
from equinet.study.variants import STUDY_VARIANTS, VARIANT_DESCRIPTIONS, VARIANTS, available_variants, known_variants

RUN = {
    "seed_everything": 0,
    "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": 2},
    "model": {
        "network": {
            "class_path": "equinet.models.UNet",
            "init_args": {
                "in_channels": 1,
                "out_channels": 1,
                "channels": 4,
                "depth": 2,
                "sampling": "maxpool",
                "padding_mode": "circular",
                "norm": "batch",
            },
        }
    },
    "data": {
        "class_path": "equinet.data.FastMRIDataModule",
        "init_args": {"synthetic": True, "crop_size": 32},
    },
}


def study(**changes):
    config = {"name": "unit", "run": copy.deepcopy(RUN), "variants": ["baseline", "APS"]}
    config.update(changes)
    return load_study(None, config=config)


def test_builtin_variants_cover_the_paper_and_equinet():
    paper = {"baseline", "baseline+DA", "LPF-2", "LPF-3", "LPF-5", "APS", "APS-2", "APS-3", "APS-5"}
    ours = {"LPS", "orthogonal", "orthogonal-adaptive", "iUNet"}
    assert paper | ours <= set(STUDY_VARIANTS)
    assert set(available_variants()) == set(VARIANTS)  # every strategy is registered


def test_one_strategy_table_names_the_configs_the_study_variants_and_their_descriptions():
    """experiments/configs/<dataset>/<name>.yaml is VARIANTS[<Name>] (lower case), and so is the study row."""
    from _lightning_helpers import REPO

    by_file_name = {name.lower(): name for name in VARIANTS}
    for dataset in ("synthetic", "fastmri", "lodopab"):
        stems = sorted(p.stem for p in (REPO / "experiments" / "configs" / dataset).glob("*.yaml"))
        assert len(stems) == 6 and set(stems) <= set(by_file_name), (dataset, stems)
        for stem in stems:
            strategy = VARIANTS[by_file_name[stem]]
            args = yaml.safe_load((REPO / "experiments" / "configs" / dataset / f"{stem}.yaml").read_text())
            args = args["model"]["network"]["init_args"]
            assert (args["sampling"], args.get("sampling_kwargs") or {}) == tuple(strategy), stem
    net = "model.network.init_args"
    for name, (sampling, options) in VARIANTS.items():
        row = STUDY_VARIANTS["baseline" if name == "maxpool" else name]
        assert (row[f"{net}.sampling"], row[f"{net}.sampling_kwargs"] or {}) == (sampling, options), name
    assert list(VARIANT_DESCRIPTIONS) == list(STUDY_VARIANTS) and all(VARIANT_DESCRIPTIONS.values())


def test_variant_overrides_change_only_what_the_name_says():
    base = study().run
    aps = apply_overrides(base, STUDY_VARIANTS["APS-3"])
    assert get_dotted(aps, "model.network.init_args.sampling") == "aps"
    assert get_dotted(aps, "model.network.init_args.sampling_kwargs") == {"filter_size": 3}
    assert get_dotted(aps, "model.network.init_args.channels") == 4 and aps["data"] == base["data"]
    da = apply_overrides(base, STUDY_VARIANTS["baseline+DA"])
    assert get_dotted(da, "model.shift_augmentation") == 16
    assert get_dotted(da, "model.network") == get_dotted(
        apply_overrides(base, STUDY_VARIANTS["baseline"]), "model.network"
    )
    # back to no options: a variant without sampling_kwargs drops the base's
    with_kwargs = apply_overrides(base, STUDY_VARIANTS["LPF-5"])
    assert "sampling_kwargs" not in get_dotted(
        apply_overrides(with_kwargs, STUDY_VARIANTS["baseline"]), "model.network.init_args"
    )
    assert base == study().run  # nothing was changed in place


def test_variants_share_data_seed_budget_optimiser_and_evaluation():
    """A variant changes its network (and DA its training shifts); nothing else."""
    s = study()
    base = flatten(s.run)
    for name in STUDY_VARIANTS:
        changed = {k for k, v in flatten(s.variant_config(name)).items() if base.get(k, "unset") != v}
        changed |= set(base) - set(flatten(s.variant_config(name)))
        assert all(k.startswith("model.network.") or k == "model.shift_augmentation" for k in changed), (
            name,
            changed,
        )
    assert {
        k for k in flatten(s.variant_config("input")) if base.get(k) != flatten(s.variant_config("input"))[k]
    } <= {"model.network.class_path", "model.residual"}
    assert get_dotted(s.variant_config("input"), "model.residual") is False


def test_the_input_row_is_the_input_even_when_the_networks_learn_a_residual():
    s = study()
    set_dotted(s.run, "model.residual", True)
    assert get_dotted(s.variant_config("input"), "model.network.class_path") == "torch.nn.Identity"
    assert get_dotted(s.variant_config("input"), "model.residual") is False  # x, not x + Identity(x)
    assert all(get_dotted(s.variant_config(v), "model.residual") is True for v in STUDY_VARIANTS)


def test_changing_the_network_class_keeps_the_arguments_it_takes():
    iunet = apply_overrides(study().run, STUDY_VARIANTS["iUNet"])
    net = get_dotted(iunet, "model.network")
    assert net["class_path"] == "equinet.models.LiftediUNet"
    args = net["init_args"]
    assert args["channels"] == 4 and args["depth"] == 2 and args["padding_mode"] == "circular"
    assert "sampling" not in args and "norm" not in args  # the U-Net's own arguments are dropped
    assert args["adaptive_resampling"] is False


def test_overrides_route_to_run_or_study_config():
    assert parse_overrides(["--trainer.max_steps", "7", "--data.root=/x", "--ood", "null"]) == [
        ("trainer.max_steps", 7),
        ("data.root", "/x"),
        ("ood", None),
    ]
    s = load_study(
        None,
        ["--trainer.max_steps", "7", "--cost.repeats", "3", "--variants", "[APS]"],
        config={"name": "u", "run": RUN, "variants": ["baseline"]},
    )
    assert s.run["trainer"]["max_steps"] == 7 and s.config["cost"]["repeats"] == 3 and s.variants == ["APS"]
    assert s.config["cost"]["reference"] == "baseline"  # defaults filled in around the override
    with pytest.raises(StudyError, match="expected --key value"):
        parse_overrides(["trainer.max_steps", "3"])
    with pytest.raises(StudyError, match="has no value"):
        parse_overrides(["--trainer.max_steps"])


def test_unknown_variants_are_refused_with_the_known_ones_listed():
    with pytest.raises(StudyError) as err:
        check_study(study(variants=["baseline", "APS-7", "LSP"]))
    message = str(err.value)
    assert "['APS-7', 'LSP']" in message and "APS-3" in message and "orthogonal-adaptive" in message
    with pytest.raises(StudyError, match="not variants of study 'unit'.*baseline, APS"):
        check_study(study(), only=["LPS"])
    with pytest.raises(StudyError, match="distinct"):
        check_study(study(variants=["APS", "APS"]))


def test_defined_variants_are_usable_and_checked():
    s = study(
        variants=["baseline", "APS-7"],
        define={
            "APS-7": {
                "model.network.init_args.sampling": "aps",
                "model.network.init_args.sampling_kwargs": {"filter_size": 7},
            }
        },
    )
    assert check_study(s) == ["baseline", "APS-7"]
    assert get_dotted(s.variant_config("APS-7"), "model.network.init_args.sampling_kwargs") == {
        "filter_size": 7
    }
    with pytest.raises(ValueError, match="folder name"):
        known_variants({"a/b": {}})
    with pytest.raises(ValueError, match="must map config keys"):
        known_variants({"x": ["model.loss", "l1"]})
    bad = study(variants=["odd"], define={"odd": {"model.network.init_args.sampling": "nonesuch"}})
    with pytest.raises(StudyError, match="variant 'odd': cannot build its network"):
        check_study(bad)


def test_a_crop_the_network_cannot_take_is_refused_before_training():
    s = load_study(
        None,
        ["--data.init_args.crop_size", "36", "--model.network.init_args.depth", "3"],
        config={"name": "u", "run": RUN, "variants": ["baseline", "iUNet"]},
    )
    with pytest.raises(
        StudyError, match=r"variant 'baseline'.*divisible by 8 but.*crop_size is 36; use crop_size 32 or 40,"
    ):
        check_study(s)
    tiny = load_study(
        None,
        ["--data.init_args.crop_size", "4", "--model.network.init_args.depth", "3"],
        config={"name": "u", "run": RUN, "variants": ["baseline"]},
    )
    with pytest.raises(StudyError, match=r"crop_size is 4; use crop_size 8, or a smaller"):
        check_study(tiny)
    ood = study(
        ood={"data": {"class_path": "equinet.data.ImageNetShiftDataModule", "init_args": {"crop_size": 30}}}
    )
    with pytest.raises(StudyError, match="ood.data.init_args.crop_size is 30"):
        check_study(ood)


def test_real_data_studies_need_an_existing_root(tmp_path):
    with pytest.raises(StudyError, match="trains on real data: pass the dataset root.*--data.root"):
        check_study(study(requires_root=True))
    missing = load_study(
        None,
        ["--data.init_args.root", str(tmp_path / "nope")],
        config={"name": "u", "run": RUN, "variants": ["baseline"], "requires_root": True},
    )
    with pytest.raises(StudyError, match="nope does not exist"):
        check_study(missing)
    ood = study(
        ood={
            "data": {
                "class_path": "equinet.data.ImageNetShiftDataModule",
                "init_args": {"root": str(tmp_path / "imagenet"), "crop_size": 32},
            }
        }
    )
    with pytest.raises(StudyError, match="ood.data.init_args.root .*imagenet does not exist"):
        check_study(ood)


def test_the_data_modules_own_checks_run_before_training(tmp_path):
    both = load_study(
        None, ["--data.root", str(tmp_path)], config={"name": "u", "run": RUN, "variants": ["APS"]}
    )
    with pytest.raises(
        StudyError, match=r"run.data: FastMRIDataModule: root=.* and synthetic=True exclude each other"
    ):
        check_study(both)
    # the OOD set: the ImageNet folder if given, else the bundled images (never both, never neither)
    ood = {"data": {"class_path": "equinet.data.ImageNetShiftDataModule", "init_args": {"crop_size": 32}}}
    assert study(ood=ood).ood_data()["init_args"]["synthetic"] is True
    given = load_study(
        None,
        ["--ood.data.root", str(tmp_path)],
        config={"name": "u", "run": RUN, "variants": ["APS"], "ood": ood},
    )
    assert given.ood_data()["init_args"] == {"crop_size": 32, "root": str(tmp_path), "synthetic": False}
    assert given.ood_config("APS")["data"] == given.ood_data()


def test_a_study_folder_of_other_settings_is_refused_naming_the_keys(tmp_path):
    s = study()
    folder, continued = resolve_folder(s, tmp_path / "st")
    assert not continued
    write_plan(s, folder)
    assert sorted(p.name for p in (folder / "configs").iterdir()) == [
        "APS.yaml",
        "baseline.yaml",
        "input.yaml",
    ]
    # the same settings (placement may differ) continue the folder
    same = load_study(
        None, ["--trainer.devices", "4"], config=yaml.safe_load((folder / "study.yaml").read_text())
    )
    assert resolve_folder(same, folder) == (folder, True)
    other = load_study(
        None,
        ["--trainer.max_steps", "5", "--model.optimizer.init_args.lr", "0.1"],
        config=yaml.safe_load((folder / "study.yaml").read_text()),
    )
    with pytest.raises(StudyError) as err:
        resolve_folder(other, folder)
    message = str(err.value)
    assert "refusing to mix" in message and "run.trainer.max_steps: 2 -> 5" in message
    assert "run.model.optimizer.init_args.lr: '(unset)' -> 0.1" in message and "devices" not in message
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("x")
    with pytest.raises(StudyError, match="not a study folder"):
        resolve_folder(s, tmp_path / "junk")


def test_without_dir_the_newest_matching_folder_is_continued(tmp_path):
    s = study()
    first, continued = resolve_folder(s, None, tmp_path)
    assert not continued and first.name.startswith("unit-")
    write_plan(s, first)
    assert resolve_folder(s, None, tmp_path) == (first, True)
    new, continued = resolve_folder(s, None, tmp_path, new=True)
    assert new != first and not continued
    changed = load_study(None, ["--trainer.max_steps", "9"], config=s.config)
    other, continued = resolve_folder(changed, None, tmp_path)
    assert other != first and not continued
    assert config_differences(s.config, changed.config) == ["run.trainer.max_steps: 2 -> 9"]


@pytest.mark.parametrize(
    "trainer, count",
    [
        ({"accelerator": "cpu", "devices": 1}, 1),
        ({"accelerator": "cpu", "devices": "auto"}, 1),
        ({"devices": 4}, 4),
        ({"devices": "0,1"}, 2),
        ({"devices": [0, 1, 2]}, 3),
        ({"devices": 2, "num_nodes": 3}, 6),
        ({"devices": "2"}, 2),
    ],
)
def test_runs_on_several_devices_get_their_own_process(trainer, count):
    assert device_count(trainer) == count

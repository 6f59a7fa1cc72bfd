"""experiments/study/*.yaml are generated and parse; the study sweeps run one variant per agent
(`equinet study --only <variant>` into one shared folder), as ``wandb agent`` renders them."""

from __future__ import annotations

import pytest
import yaml
from test_cli_configs import generate
from _lightning_helpers import REPO
from test_sweep import grid, render

from equinet.study.cli import _parser
from equinet.study.plan import check_study, load_study

STUDY_SWEEPS = sorted((REPO / "experiments" / "sweeps").glob("study_*.yaml"))


def test_study_configs_are_generated_and_in_sync():
    expected = generate.expected_study_files()
    assert sorted(expected) == sorted((REPO / "experiments" / "study").glob("*.yaml"))
    assert {p.stem for p in expected} == {"demo", "fastmri", "lodopab"}
    for path, text in expected.items():
        assert path.read_text() == text, f"{path} is stale: run python experiments/configs/generate.py"


@pytest.mark.parametrize("name", ["demo", "fastmri", "lodopab"])
def test_shipped_studies_pass_their_checks(name, tmp_path):
    extra = [] if name == "demo" else ["--data.root", str(tmp_path)]
    study = load_study(REPO / "experiments" / "study" / f"{name}.yaml", extra)
    thin = load_study(
        REPO / "experiments" / "study" / f"{name}.yaml", extra + ["--model.network.channels", "2"]
    )
    selected = check_study(thin)  # every network is built and checked against the crop (thin: fast)
    required = {"baseline", "baseline+DA", "APS", "LPS", "orthogonal-adaptive", "iUNet"}
    assert required <= set(selected) and any(v.startswith("LPF-") for v in selected)
    # the paper's recipe: the run config is the dataset's maxpool config from experiments/configs
    if name != "demo":
        recipe = yaml.safe_load((REPO / "experiments" / "configs" / name / "maxpool.yaml").read_text())
        recipe["trainer"].pop("default_root_dir")
        recipe["data"]["init_args"]["root"] = str(tmp_path)
        assert study.run == recipe
        assert (
            study.config["requires_root"]
            and study.ood["data"]["init_args"]["crop_size"] == recipe["data"]["init_args"]["crop_size"]
        )


@pytest.mark.parametrize("path", STUDY_SWEEPS, ids=lambda p: p.stem)
def test_study_sweep_runs_each_variant_of_its_study_once(path, tmp_path, monkeypatch):
    monkeypatch.setenv("EQUINET_DATA_ROOT", str(tmp_path))
    sweep = yaml.safe_load(path.read_text())
    assert sweep["method"] == "grid" and list(sweep["parameters"]) == ["only"]
    cmd = sweep["command"]
    assert cmd[:3] == ["${env}", "equinet", "study"] and cmd[-1] == "${args}"
    study_file = REPO / cmd[cmd.index("--config") + 1]
    variants = load_study(study_file, ["--data.root", str(tmp_path)]).variants
    thin = ["--model.network.channels", "2"]  # (fast to build; the networks' shape checks are the same)
    assert sweep["parameters"]["only"]["values"] == variants  # every variant, once
    folders = set()
    for values in grid(sweep):
        argv = render(sweep, values)
        assert argv[:3] == ["/usr/bin/env", "equinet", "study"]
        args, overrides = _parser().parse_known_args(argv[3:])
        assert args.only == [values["only"]] and args.no_collect
        folders.add(args.dir)
        study = load_study(args.config, overrides + thin)
        assert study.run["data"]["init_args"]["root"] == str(tmp_path)
        assert check_study(study, args.only) == [values["only"]]
    assert len(folders) == 1  # all agents fill one study folder

"""Docker/docker-compose.yml validates against the Compose
Specification schema, offline; the Dockerfile installs what the README installs.

No Docker engine is needed: the schema is the copy vendored by the ``check-jsonschema``
package (``check_jsonschema/builtin_schemas/vendor/compose-spec.json``, Apache-2.0, from
github.com/compose-spec/compose-spec), validated with ``jsonschema``.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import time
from importlib import resources
from pathlib import Path

import pytest
import yaml

jsonschema = pytest.importorskip("jsonschema")

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker" / "docker-compose.yml"
DOCKERFILE = REPO / "docker" / "Dockerfile"


def compose_validator():
    schema_file = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(schema_file.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _compose():
    return yaml.safe_load(COMPOSE.read_text())  # resolves the x-equinet anchor / merge keys


def test_compose_file_validates_against_compose_spec():
    validator = compose_validator()
    doc = _compose()
    errors = sorted(validator.iter_errors(doc), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)
    # ... and the validator has teeth: typical mistakes are rejected
    bad = copy.deepcopy(doc)
    bad["services"]["train"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] = "gpu"
    assert list(validator.iter_errors(bad))
    bad = copy.deepcopy(doc)
    bad["services"]["train"]["gpus_typo"] = "all"
    assert list(validator.iter_errors(bad))


def test_compose_services_have_gpus_volumes_shm_and_env_credentials():
    services = _compose()["services"]
    assert set(services) == {"train", "sweep-agent"}
    for name, svc in services.items():
        devices = svc["deploy"]["resources"]["reservations"]["devices"]
        assert devices and all("gpu" in d["capabilities"] for d in devices), name
        assert svc["shm_size"]
        targets = {re.search(r":(/[^:]*)(?::ro|:rw)?$", v).group(1) for v in svc["volumes"]}
        assert {"/data", "/workspace/runs"} <= targets, name
        assert svc["build"]["dockerfile"] == "docker/Dockerfile"
        # the key is passed through from the host environment, never given a value here
        assert "WANDB_API_KEY" in svc["environment"] and svc["environment"]["WANDB_API_KEY"] is None
    agent = services["sweep-agent"]
    assert agent["entrypoint"][0] == "claim-gpu" and "wandb agent" in agent["command"][0]
    assert "gpu-locks:/locks" in agent["volumes"] and "scale" not in agent.get("deploy", {})  # scalable
    assert services["train"]["command"][0] == "fit"


def test_compose_is_set_up_for_multi_gpu_ddp_data_root_and_uid():
    services = _compose()["services"]
    for name, svc in services.items():
        assert svc["init"] is True, name  # signals forwarded, worker processes reaped
        assert svc["ulimits"]["memlock"] == {"soft": -1, "hard": -1}, name  # NCCL pins memory
        assert svc["ulimits"]["stack"]["soft"] >= 64 * 2**20, name
        assert int(svc["shm_size"].rstrip("gb")) >= 8, name
        # the host's dataset folder comes from EQUINET_DATA_ROOT (required), read-only at /data
        data = next(v for v in svc["volumes"] if v.endswith(":/data:ro"))
        assert data.startswith("${EQUINET_DATA_ROOT:?"), data
        assert svc["environment"]["EQUINET_DATA_ROOT"] == "/data", name
        # files written to the mounts belong to the user who built and runs it
        assert svc["user"] == "${EQUINET_UID:-1000}:${EQUINET_GID:-1000}", name
        assert svc["build"]["args"] == {"UID": "${EQUINET_UID:-1000}", "GID": "${EQUINET_GID:-1000}"}, name
    train = services["train"]["command"]
    assert train[train.index("--data.root") + 1] == "/data"
    for path in (COMPOSE, DOCKERFILE):
        assert "/data/knee" not in path.read_text(), path  # no hard-coded dataset
    docker = DOCKERFILE.read_text()
    assert re.search(r"^ARG UID=", docker, re.MULTILINE) and re.search(r"^ARG GID=", docker, re.MULTILINE)
    assert "WANDB_DIR" not in re.sub(r"#.*", "", docker)  # W&B files go into each run's folder
    assert "EQUINET_UID" in COMPOSE.read_text() and "id -g" in COMPOSE.read_text()  # documented


def test_no_credentials_in_any_file():
    pattern = re.compile(r"(?i)(api[_-]?key\s*[:=]\s*['\"]?[0-9a-f]{20,}|\b[0-9a-f]{40}\b)")
    files = [p for d in ("docker", "experiments/configs", "experiments/sweeps") for p in (REPO / d).rglob("*")
             if p.is_file() and p.suffix in (".yml", ".yaml", ".sh", "", ".dockerignore", ".py")]
    assert files
    for p in files:
        assert not pattern.search(p.read_text()), p


def _requirements_files(text: str):
    return re.findall(r"pip install[^\n]*?-r\s+(\S+)", text)


def test_dockerfile_installs_what_the_readme_installs():
    docker = DOCKERFILE.read_text()
    # the README's install path is `make install|test|demo`, which installs these:
    makefile = (REPO / "Makefile").read_text()
    assert "make test" in (REPO / "README.md").read_text()
    assert [Path(f).name for f in _requirements_files(makefile)] == ["requirements-test.txt"]
    assert [Path(f).name for f in _requirements_files(docker)] == ["requirements.txt"]
    # the image ships the runtime pins only; the test tools come on top for make test / CI
    runtime = (REPO / "requirements.txt").read_text()
    test = (REPO / "requirements-test.txt").read_text().splitlines()
    assert "-r requirements.txt" in test
    for tool in ("pytest", "hypothesis", "jsonschema", "check-jsonschema"):
        assert not re.search(rf"^{tool}\b", runtime, re.MULTILINE), tool
        assert any(re.match(rf"{tool}==", line) for line in test), tool
    assert re.search(r"COPY requirements\.txt ", docker)
    # the project itself without re-resolving dependencies, as the Makefile does
    assert "--no-deps" in re.search(r"pip install[^\n]*/opt/equinet(?:\s|$)", docker).group(0)
    assert "--no-deps" in re.search(r"pip install[^\n]*-e \.", makefile).group(0)
    # CUDA PyTorch base whose torch is the pinned one
    base = re.search(r"ARG BASE_IMAGE=(\S+)", docker).group(1)
    torch_pin = re.search(r"^torch==(\S+)$", (REPO / "requirements.txt").read_text(), re.MULTILINE).group(1)
    assert re.fullmatch(rf"pytorch/pytorch:{re.escape(torch_pin)}-cuda[\d.]+-cudnn\d+-(runtime|devel)", base)
    # non-root user, equinet entrypoint
    users = re.findall(r"^USER (\S+)", docker, re.MULTILINE)
    assert users and users[-1] not in ("root", "0")
    assert re.search(r'^ENTRYPOINT \["equinet"\]', docker, re.MULTILINE)
    # everything the image copies exists and is let through by the Dockerfile's .dockerignore
    allowed = [line[1:].rstrip("/") for line in (REPO / "docker" / "Dockerfile.dockerignore").read_text().splitlines()
               if line.startswith("!")]
    for line in re.findall(r"^COPY (?:--\S+ )*(.+) \S+$", docker, re.MULTILINE):
        for src in line.split():
            assert (REPO / src).exists(), src
            assert src in allowed, f"{src} is excluded from the build context"


def _make_python(tmp_path, *names):
    """The Python the Makefile picks with only ``names`` on PATH (each a real Python >= 3.10,
    ``python3`` a fake 3.9); ``(exit status, stdout + stderr)``."""
    import sys

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    for name in names:
        if name == "python3":  # an old interpreter: fails the version check
            (bin_dir / name).write_text("#!/bin/sh\nexit 1\n")
            (bin_dir / name).chmod(0o755)
        else:
            (bin_dir / name).symlink_to(sys.executable)
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path)}  # only these interpreters are found
    proc = subprocess.run([shutil.which("make"), "-s", "-f", str(REPO / "Makefile"), "--eval",
                           "print-python: ; $(info $(PYTHON))", "print-python", ".venv/bin/python"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stdout + proc.stderr


def test_makefile_takes_any_python_from_3_10_and_prefers_3_11(tmp_path):
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    rc, out = _make_python(tmp_path / "a", "python3", "python3.12", "python3.11")
    assert out.splitlines()[0] == "python3.11"
    rc, out = _make_python(tmp_path / "b", "python3", "python3.10")
    assert out.splitlines()[0] == "python3.10" and rc == 0 and (tmp_path / "b" / ".venv" / "bin" / "python").exists()
    rc, out = _make_python(tmp_path / "c", "python3")  # only a Python older than 3.10
    assert rc != 0 and "equinet needs Python >= 3.10; none of python3.11" in out and "make PYTHON=" in out


def test_claim_gpu_gives_each_agent_its_own_gpu(tmp_path):
    """Three agents on a 2-GPU node: GPUs 0 and 1 taken once each, the third refused."""
    script = REPO / "docker" / "claim-gpu.sh"
    env = {"PATH": "/usr/bin:/bin", "GPU_LOCK_DIR": str(tmp_path), "EQUINET_GPU_COUNT": "2"}
    cmd = ["sh", str(script), "sh", "-c", 'echo "gpu=$CUDA_VISIBLE_DEVICES"; sleep 3']
    first = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    time.sleep(1)
    third = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30, check=False)
    outs = sorted(p.communicate(timeout=30)[0].strip() for p in first)
    assert outs == ["gpu=0", "gpu=1"]
    assert third.returncode == 1 and "all 2 GPUs are taken" in third.stderr
    # locks are released with the processes: a new agent gets GPU 0 again
    again = subprocess.run(["sh", str(script), "sh", "-c", 'echo "gpu=$CUDA_VISIBLE_DEVICES"'], env=env,
                           capture_output=True, text=True, timeout=30, check=True)
    assert again.stdout.strip() == "gpu=0"


def _claim(tmp_path, *args, count="2", **popen):
    import sys

    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "GPU_LOCK_DIR": str(tmp_path),
           "EQUINET_GPU_COUNT": count}
    cmd = ["sh", str(REPO / "docker" / "claim-gpu.sh"), *args]
    if popen:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=False)


def test_claim_gpu_says_when_the_nvidia_runtime_is_missing(tmp_path):
    proc = _claim(tmp_path, "sh", "-c", "echo ran", count="0")
    assert proc.returncode == 3 and "ran" not in proc.stdout
    assert "no GPU is visible" in proc.stderr and "NVIDIA" in proc.stderr and "taken" not in proc.stderr
    for args in ((), ("--all", "sh", "-c", "echo ran")):
        assert _claim(tmp_path, *args, count="0" if args else "2").returncode in (2, 3)


def test_train_takes_every_gpu_lock_and_agents_then_find_none(tmp_path):
    """`claim-gpu --all` (the train service) holds every GPU's lock while it runs; an agent is then
    refused, and a second train run too; with an agent on one GPU, train is refused."""
    train = _claim(tmp_path, "--all", "sh", "-c", 'echo "gpus=${CUDA_VISIBLE_DEVICES-all}"; sleep 4', popen=True)
    time.sleep(1.5)
    agent = _claim(tmp_path, "sh", "-c", "echo agent")
    second = _claim(tmp_path, "--all", "sh", "-c", "echo train2")
    out, err = train.communicate(timeout=30)
    assert train.returncode == 0 and out.strip() == "gpus=all" and "running on all 2 GPUs" in err
    assert agent.returncode == 1 and "all 2 GPUs are taken" in agent.stderr
    assert second.returncode != 0 and "GPU 0 of 2 is taken" in second.stderr
    # released with the run: an agent on GPU 0 now blocks a train run on GPU 0 (GPU 1 is free)
    agent = _claim(tmp_path, "sh", "-c", 'echo "gpu=$CUDA_VISIBLE_DEVICES"; sleep 4', popen=True)
    time.sleep(1.5)
    blocked = _claim(tmp_path, "--all", "sh", "-c", "echo train3")
    assert agent.communicate(timeout=30)[0].strip() == "gpu=0"
    assert blocked.returncode != 0 and "GPU 0 of 2 is taken" in blocked.stderr and "train3" not in blocked.stdout


def test_compose_train_service_locks_gpus_like_the_agents():
    train = _compose()["services"]["train"]
    assert train["entrypoint"] == ["claim-gpu", "--all", "equinet"]
    assert "gpu-locks:/locks" in train["volumes"]
    assert _compose()["services"]["sweep-agent"]["entrypoint"][0] == "claim-gpu"


def test_image_works_for_any_runtime_user_and_states_its_gpus():
    docker = DOCKERFILE.read_text()
    env = dict(re.findall(r"^\s+(HOME|XDG_CACHE_HOME|XDG_CONFIG_HOME|MPLCONFIGDIR)=(\S+)", docker, re.MULTILINE))
    assert env["HOME"] == "/workspace/home" and all(v.startswith("/workspace/home") for v in env.values()), env
    chmod = re.search(r"chmod 1777 ([^\n\\]+(?:\\\n[^\n\\]+)*)", docker).group(1).replace("\\\n", " ").split()
    for path in ("/locks", env["HOME"], env["XDG_CACHE_HOME"], env["XDG_CONFIG_HOME"], env["MPLCONFIGDIR"]):
        assert path in chmod, path
        assert re.search(rf"mkdir -p [^\n]*{re.escape(path)}(/|\s|$)", docker), path  # (a parent of a created one)
    base = re.search(r"ARG BASE_IMAGE=(\S+)", docker).group(1)
    assert "cuda13.0" in base
    readme = (REPO / "README.md").read_text()
    for text in (docker, COMPOSE.read_text(), readme):
        assert "sm_75" in text and re.search(r"driver >= 580", text)
    assert "claim-gpu --all" in readme and "any runtime user" in readme.lower()

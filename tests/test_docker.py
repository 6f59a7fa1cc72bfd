"""Must show 4 (compose half): docker/docker-compose.yml validates against the Compose
Specification schema, offline; the Dockerfile installs what the README installs.

No Docker engine is needed: the schema is the copy vendored by the ``check-jsonschema``
package (``check_jsonschema/builtin_schemas/vendor/compose-spec.json``, Apache-2.0, from
github.com/compose-spec/compose-spec), validated with ``jsonschema``.
"""

from __future__ import annotations

import copy
import json
import re
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
    assert [Path(f).name for f in _requirements_files(makefile)] == ["requirements.txt"]
    assert [Path(f).name for f in _requirements_files(docker)] == ["requirements.txt"]
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

"""Shared test setup: offline W&B, deterministic hypothesis profile, small thread count."""

import os

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# Tests run many tiny tensor ops: one intra-op thread avoids OpenMP barrier overhead, which
# dominates tiny convolutions and explodes when processes (DDP ranks, CLI subprocesses) share
# the two cores. Subprocesses inherit the variable.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

# Deterministic by default so CI is reproducible; HYPOTHESIS_PROFILE=explore searches anew.
settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    max_examples=25,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)
settings.register_profile("explore", deadline=None, max_examples=200)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(autouse=True)
def _seed_torch():
    torch.manual_seed(0)
    yield


# Small synthetic datasets in the real file formats, generated once per test session.
@pytest.fixture(scope="session")
def knee(tmp_path_factory):
    from _data_helpers import knee_root

    return knee_root(tmp_path_factory)


@pytest.fixture(scope="session")
def lodopab(tmp_path_factory):
    from _data_helpers import lodopab_root

    return lodopab_root(tmp_path_factory)


@pytest.fixture(scope="session")
def imagenet(tmp_path_factory):
    from _data_helpers import imagenet_root

    return imagenet_root(tmp_path_factory)


@pytest.fixture(scope="session")
def independent_knee(tmp_path_factory):
    """fastMRI single-coil files of natural images written without equinet (``_independent_data``)."""
    from _independent_data import write_fastmri_root

    return write_fastmri_root(tmp_path_factory.getbasetemp() / "independent-data" / "knee")

# Two commands a new user needs: `make demo` and `make test`. Both create .venv on first use.
#
# Python: the first of python3.11, 3.12, 3.13, 3.14, 3.10, python3 that is >= 3.10 (3.11 first:
# it is the version the pinned wheels are known to install for); `make PYTHON=/path/to/python`
# chooses another. The venv gets the runtime pins and the test tools (requirements-test.txt);
# the Docker image gets the runtime pins only (requirements.txt).
PYTHON_CANDIDATES := python3.11 python3.12 python3.13 python3.14 python3.10 python3
PYTHON ?= $(shell for p in $(PYTHON_CANDIDATES); do \
	"$$p" -c 'import sys; sys.exit(sys.version_info < (3, 10))' >/dev/null 2>&1 && { echo "$$p"; break; }; done)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.equinet-installed
export WANDB_MODE ?= offline

.PHONY: demo test test-all bench install clean gpu-check

$(PY):
	@if [ -z "$(PYTHON)" ]; then \
	  echo "equinet needs Python >= 3.10; none of $(PYTHON_CANDIDATES) is one. Install one (3.11 preferred)" \
	       "or run: make PYTHON=/path/to/python3.x $(MAKECMDGOALS)" >&2; exit 1; fi
	@"$(PYTHON)" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null || { \
	  echo "PYTHON=$(PYTHON) is not Python >= 3.10 (equinet needs 3.10 or newer)" >&2; exit 1; }
	"$(PYTHON)" -m venv $(VENV)

# Re-install only when the pins or the package metadata change (idempotent). pip's bytecode pass
# is serial (about 55 s on 2 cores, most of it torch); compileall does the same on every core
# (about 20 s). Its status is ignored: a file that does not compile (torch ships one in Python 3.12
# syntax) fails the same way when imported, as with pip's own pass.
$(STAMP): requirements.txt requirements-test.txt setup.cfg pyproject.toml | $(PY)
	$(PY) -m pip install -q --no-compile -r requirements-test.txt
	$(PY) -m pip install -q --no-compile --no-deps --no-build-isolation -e .
	$(PY) -m compileall -q -j 0 "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" >/dev/null || true
	touch $(STAMP)

install: $(STAMP)

# The demo study: every sampling strategy trained under one budget on synthetic knee data, the
# APS-U paper's tables and figures in outputs/study/latest (about 6.5 min on 2 idle CPU cores, 8 min
# with the first install). Running it again reads the finished study back; DEMO_ARGS=--new starts
# afresh.
demo: $(STAMP)
	$(PY) -m equinet study --config experiments/study/demo.yaml $(DEMO_ARGS)

# The default suite runs in one process per core (pytest-xdist; TEST_WORKERS=0 runs it serially).
# test-all stays serial: its slow tests time studies and benchmarks that want the whole machine.
TEST_WORKERS ?= auto
test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS)

test-all: $(STAMP)
	$(PY) -m pytest -q -m "slow or not slow"

bench: $(STAMP)
	$(PY) experiments/benchmarks/aps_speed.py
	$(PY) experiments/benchmarks/orthogonal_speed.py
	$(PY) experiments/benchmarks/unet_step.py
	$(PY) experiments/benchmarks/tie_overhead.py
	$(PY) experiments/benchmarks/iunet_memory.py
	$(PY) experiments/benchmarks/data_throughput.py
	$(PY) experiments/benchmarks/host_syncs.py --check

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis

# One prepared check of equinet on a device (experiments/gpu_check.py): exactness and tie tests,
# a training step of every strategy under 32-true and bf16-mixed, the benchmarks, a 2-variant
# study and a 1-device DDP fit; report in outputs/gpu-check/report.md. On a CUDA machine: make
# gpu-check (<= 8 min on one GPU); without one: make gpu-check GPU_CHECK_ARGS="--device cpu --quick".
GPU_CHECK_ARGS ?=
gpu-check: $(STAMP)
	$(PY) experiments/gpu_check.py $(GPU_CHECK_ARGS)

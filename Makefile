# Two commands a new user needs: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.equinet-installed
export WANDB_MODE ?= offline

.PHONY: demo test test-all bench install clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Re-install only when the pins or the package metadata change (idempotent).
$(STAMP): requirements.txt setup.cfg pyproject.toml | $(PY)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m equinet equivariance

test: $(STAMP)
	$(PY) -m pytest -q

test-all: $(STAMP)
	$(PY) -m pytest -q -m "slow or not slow"

bench: $(STAMP)
	$(PY) experiments/benchmarks/aps_speed.py
	$(PY) experiments/benchmarks/orthogonal_speed.py
	$(PY) experiments/benchmarks/unet_step.py
	$(PY) experiments/benchmarks/iunet_memory.py
	$(PY) experiments/benchmarks/data_throughput.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis

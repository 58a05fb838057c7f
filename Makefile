# The two commands: `make demo` (the main job on the built-in data) and `make test` (the suite).
# Both set themselves up on a fresh machine: .venv with the project and its test extras.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.canbench-installed
PYTEST_ARGS ?=
export OMP_NUM_THREADS ?= 2

.PHONY: install test test-slow test-slurm lint demo clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

lint: install
	$(VENV)/bin/ruff check .

# Default suite: CPU, no SLURM, no GPU (gpu tests skip themselves without one).
test: install lint
	$(VENV)/bin/pytest -m "not slow and not slurm" $(PYTEST_ARGS)

test-slow: install
	$(VENV)/bin/pytest -m "slow and not slurm" $(PYTEST_ARGS)

# Needs the local SLURM cluster (slurm/cluster.sh up); .ci/run brings it up and down.
test-slurm: install
	$(VENV)/bin/pytest -m slurm $(PYTEST_ARGS)

demo: install
	$(VENV)/bin/canbench demo

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache runs reports/out

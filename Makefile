# Two commands on a fresh machine: `make demo` and `make test`. Both create or reuse .venv/.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch first, pinned: an unpinned torch pulls a multi-GB CUDA build on these machines.
TORCH_SPEC ?= torch==2.13.0
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: setup demo test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

demo: setup
	$(PY) -m jobs.meta_train --config configs/digits.yaml --out runs/demo --overwrite

test: setup
	$(PY) -m pytest -q --durations=15 tests

bench: setup
	$(PY) -m benchmarks.meta_step

clean:
	rm -rf runs .pytest_cache

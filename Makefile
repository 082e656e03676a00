# Two commands on a fresh machine: `make demo` and `make test`. Both create or reuse .venv/.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch first, pinned: an unpinned torch pulls a multi-GB CUDA build on these machines.
TORCH_SPEC ?= torch==2.13.0
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: setup demo test bench gpu-check clean

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

# torch and drray's own code only (no Ray, no setup): on a GPU machine `make gpu-check PY=python3`
# (benchmarks/gpu_check.py says how to run it on the device machine). Writes runs/gpu_check.json.
GPU_CHECK_ARGS ?=
gpu-check:
	$(PY) -m benchmarks.gpu_check $(GPU_CHECK_ARGS)

clean:
	rm -rf runs .pytest_cache

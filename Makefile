# Entry points for a newcomer: `make demo` and `make test`. Both create the venv themselves.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.unisono-installed
# Shared 2-core machines: oversubscribed BLAS/OpenMP threads make numerics slow and erratic.
export OMP_NUM_THREADS ?= 1
export OPENBLAS_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1
export NUMBA_NUM_THREADS ?= 1

.PHONY: setup tools demo test lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	# Debian's python3 needs python3-venv for this (the script installs what is missing)
	$(PYTHON) -c "import ensurepip" 2>/dev/null || bash .ci/install-reference-tools
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip >/dev/null
	# torch first, so that no dependency pulls the multi-GB CUDA build
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "$(TORCH_SPEC)"
	$(PY) -m pip install -e ".[dev]"
	touch $(STAMP)

demo: setup
	$(VENV)/bin/unisono demo

# Debian packages: python3-venv and the reference tools (bart, ismrmrd-tools, ismrmrd-schema)
tools:
	bash .ci/install-reference-tools

test: tools setup
	$(PY) -m pytest -n 2 -q

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) unisono-demo .pytest_cache

# One-command entry points (see README "Quick start"). Each target sets up
# what it needs on a fresh machine: a virtual environment in $(VENV), torch,
# the other dependencies, and the compiled extension (built in place).
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python

.PHONY: setup bench test clean gpu-check

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.deps: $(PY) pyproject.toml
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q "$(TORCH)" numpy pybind11 ninja tqdm pytest expecttest hypothesis matplotlib \
		onnx onnxscript onnxruntime
	touch $@

# Build the extension in place (editable install) so that both the installed
# package and the source tree import the same compiled _C.
setup: $(VENV)/.deps
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .

bench: setup
	$(PY) -m rnnattn.bench $(BENCH_ARGS)

test: setup
	$(PY) -m pytest tests -q $(TEST_ARGS)

# On a machine with a GPU: build the CUDA kernels in place with that machine's
# own python and torch (PYTHON), run the CUDA tests, compute-sanitizer and the
# GPU benchmark; results under gpu-results/<date>/ (see .ci/gpu_check.sh).
gpu-check:
	PYTHON="$(PYTHON)" bash .ci/gpu_check.sh

clean:
	rm -rf build *.egg-info rnnattn/_C*.so

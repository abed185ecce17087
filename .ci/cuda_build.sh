#!/usr/bin/env bash
# CUDA build check, for CI machines that have nvcc but no GPU.
#
# On a fresh clone with nothing installed by hand: makes a virtual
# environment inside the clone (.venv-cuda), installs a CUDA build of torch
# into it, compiles rnnattn with its CUDA kernels (FORCE_CUDA=1, in place)
# and runs the test suite against that build. A CUDA compile or link error
# therefore fails CI; the CUDA tests themselves skip without a GPU and run
# where one is present. Nothing is cached outside the clone.
#
# Knobs (environment): PYTHON (python3), CUDA_VENV (.venv-cuda),
# CUDA_TORCH (torch==2.14.1), CUDA_HOME (found from nvcc when unset),
# TORCH_CUDA_ARCH_LIST (8.0;9.0+PTX), MAX_JOBS (all cores).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
stamp() { echo "-- $1 ($(( $(date +%s) - start )) s)"; }

PYTHON=${PYTHON:-python3}
VENV=${CUDA_VENV:-.venv-cuda}
TORCH_SPEC=${CUDA_TORCH:-torch==2.14.1}

# 1. Environment: a venv with a CUDA build of torch (its nvidia-* wheels bring
#    the CUDA runtime and library headers).
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install -q --no-cache-dir --upgrade pip setuptools wheel
# The same test dependencies as the Makefile's (tqdm and matplotlib are used by rnnattn.bench).
"$PY" -m pip install -q --no-cache-dir "$TORCH_SPEC" numpy pybind11 ninja tqdm pytest expecttest hypothesis matplotlib
"$PY" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda)'
"$PY" -c 'import sys, torch; sys.exit(torch.version.cuda is None)' || {
  echo "cuda_build.sh: $TORCH_SPEC is not a CUDA build of torch" >&2; exit 1; }
stamp "venv ready"

# 2. Toolkit. The nvcc on PATH may be a wrapper script, so CUDA_HOME (which
#    torch needs: include/, lib64/, bin/nvcc) is taken from where the real
#    nvcc says it lives (_HERE_ in its --dryrun output).
if [ -z "${CUDA_HOME:-}" ]; then
  command -v nvcc >/dev/null || { echo "cuda_build.sh: no nvcc on PATH; set CUDA_HOME" >&2; exit 1; }
  probe=$(mktemp -d)
  touch "$probe/probe.cu"
  nvcc_bin=$(nvcc --dryrun -c "$probe/probe.cu" -o "$probe/probe.o" 2>&1 | sed -n 's/^#\$ _HERE_=//p' | head -n 1)
  rm -rf "$probe"
  [ -n "$nvcc_bin" ] || { echo "cuda_build.sh: could not locate the CUDA toolkit; set CUDA_HOME" >&2; exit 1; }
  CUDA_HOME=$(cd "$nvcc_bin/.." && pwd)
fi
export CUDA_HOME
# Headers of the CUDA libraries torch's headers include (cusparse.h, cublas_v2.h, ...)
# come with torch's nvidia-* wheels: nvidia/cu13/include (CUDA 13 wheels) or
# nvidia/<lib>/include (older ones).
SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
for d in "$SITE"/nvidia/*/include; do
  [ -d "$d" ] && CPATH="$d${CPATH:+:$CPATH}"
done
export CPATH="${CPATH:-}"
echo "CUDA_HOME=$CUDA_HOME"
"$CUDA_HOME/bin/nvcc" --version | tail -n 2

# 3. Build in place, CUDA kernels forced on (no GPU here). A separate build
#    folder keeps it apart from the CPU build's objects.
export FORCE_CUDA=1
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-8.0;9.0+PTX}"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
"$PY" setup.py -q build_ext --inplace --build-temp build/temp-cuda
"$PY" -c 'import rnnattn; assert rnnattn._load.WITH_CUDA, "rnnattn._C was built without CUDA"; print("rnnattn._C built with CUDA kernels")'
stamp "CUDA build done"

# 4. The test suite against this build (CPU tests run; CUDA tests skip without a GPU).
"$PY" -m pytest tests -x -q
stamp "cuda_build.sh finished"

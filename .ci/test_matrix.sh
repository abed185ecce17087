#!/usr/bin/env bash
# Runs the README's test command (`make test`) with another Python and torch,
# in a virtual environment of its own inside the clone.
#
#   bash .ci/test_matrix.sh PYVER TORCHSPEC VENV
#   e.g. bash .ci/test_matrix.sh 3.9 torch==2.4.1 .venv-py39-torch2.4
#
# PYVER (3.9, 3.12, ...) is looked up among pyenv's Pythons
# ($(pyenv root)/versions/PYVER.*, newest patch release first; $PYENV_ROOT or
# ~/.pyenv when pyenv is not on PATH), then as pythonPYVER on PATH; the
# script fails if none of them is that Python.
# TORCHSPEC is the pip requirement for torch. Everything else is the
# Makefile's: the venv, torch and its dependency list, the in-place build
# and the pytest command, i.e. `make test PYTHON=... VENV=... TORCH=...`.
#
# Builds of different venvs do not mix: `make setup` (pip's editable install)
# compiles every time from scratch in a temporary build folder and then
# writes rnnattn/_C.<python tag>.so in place. Different Pythons get different
# files (_C.cpython-39-*.so, _C.cpython-312-*.so); venvs of the same Python
# share one, which each `make test` relinks against its own torch first.
#
# pip's cache is off here (the torch wheels are GBs).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -ne 3 ]; then
  echo "usage: $0 PYVER TORCHSPEC VENV   (e.g. 3.9 torch==2.4.1 .venv-py39-torch2.4)" >&2
  exit 2
fi
PYVER=$1 TORCH_SPEC=$2 VENV=$3
start=$(date +%s)
stamp() { echo "-- [python $PYVER, $TORCH_SPEC] $1 ($(( $(date +%s) - start )) s)"; }

# 1. The interpreter: pyenv's, else pythonX.Y on PATH; it must say it is X.Y.
is_pyver() {
  "$1" -c "import sys; sys.exit(sys.version_info[:2] != tuple(map(int, '$PYVER'.split('.'))))" 2>/dev/null
}
PYTHON=
root=$(pyenv root 2>/dev/null) || root=${PYENV_ROOT:-$HOME/.pyenv}   # pyenv itself need not be on PATH
for cand in $(ls -d "$root/versions/$PYVER".* 2>/dev/null | sort -rV); do
  if [ -x "$cand/bin/python" ] && is_pyver "$cand/bin/python"; then PYTHON="$cand/bin/python"; break; fi
done
if [ -z "$PYTHON" ] && command -v "python$PYVER" >/dev/null 2>&1 && is_pyver "python$PYVER"; then
  PYTHON=$(command -v "python$PYVER")
fi
if [ -z "$PYTHON" ]; then
  echo "test_matrix.sh: no Python $PYVER here (neither \$(pyenv root)/versions/$PYVER.* nor python$PYVER on PATH)" >&2
  exit 1
fi
echo "== Python $PYVER ($PYTHON), $TORCH_SPEC, venv $VENV"

export PIP_NO_CACHE_DIR=1
MK=(make --no-print-directory PYTHON="$PYTHON" VENV="$VENV" TORCH="$TORCH_SPEC")

# 2. venv + torch + the Makefile's other dependencies.
"${MK[@]}" "$VENV/.deps"
"$VENV/bin/python" -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__)'
stamp "venv ready"

# 3. The README's test command in this venv: builds the extension in place
#    against this venv's torch, then runs the suite (pytest prints its own time).
"${MK[@]}" test
stamp "finished"

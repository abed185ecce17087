#!/usr/bin/env bash
# Runs the CUDA kernels of csrc/cuda on the CPU and checks them (see README.md
# here): builds check_kernels from this folder's sources and the kernel
# headers themselves, then runs it.
#
#   bash tests/emulation/run.sh            # every case, every schedule
#   bash tests/emulation/run.sh --quick    # a subset covering every kernel (CI)
#   bash tests/emulation/run.sh --filter attention/linear --list   # other options: main.cpp
#
# Needs g++ with C++20 and torch's headers (c10::Half, c10::BFloat16,
# at::opmath_type): PYTHON names a python with torch installed (default: the
# repository's .venv if there is one, else python3). Objects are kept in
# build/emulation and rebuilt when a file they include changes.
# Knobs: CXX (g++), JOBS (compile and run threads; default: usable CPUs).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$root/.venv/bin/python" ]; then PYTHON="$root/.venv/bin/python"; else PYTHON=python3; fi
fi
CXX=${CXX:-g++}
JOBS=${JOBS:-$(nproc)}
inc=$("$PYTHON" -c 'import torch.utils.cpp_extension as c; print(c.include_paths()[0])') || {
  echo "run.sh: $PYTHON cannot import torch (set PYTHON to a python with torch installed)" >&2; exit 1; }

out="$root/build/emulation"
mkdir -p "$out"
flags=(-std=c++20 -O2 -g0 -pthread -Wall -Wno-unused-function -Wno-unknown-pragmas
       -I"$here/include" -I"$here" -I"$inc")
srcs=(cuda_emu.cpp check_attention.cpp check_rnn.cpp main.cpp)
bin="$out/check_kernels"
# Other flags or another compiler: rebuild everything.
stamp=$( { echo "${flags[*]}"; "$CXX" --version; } | sha256sum | cut -c1-16)
if [ "$(cat "$out/stamp" 2>/dev/null)" != "$stamp" ]; then rm -f "$out"/*.o "$out"/*.d "$bin"; fi

stale() {  # object $1 is missing or older than a file it was built from
  local o=$1 d=${1%.o}.d f
  [ -f "$o" ] && [ -f "$d" ] || return 0
  for f in $(sed -e 's/^[^:]*://' -e 's/\\$//' "$d"); do [ "$f" -nt "$o" ] && return 0; done
  return 1
}

t0=$(date +%s)
pids=() objs=() built=0
for s in "${srcs[@]}"; do
  o="$out/${s%.cpp}.o"
  objs+=("$o")
  stale "$o" || continue
  [ "$built" = 1 ] || echo "run.sh: compiling into $out ($CXX, $JOBS at a time)"
  built=1
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do sleep 0.2; done
  "$CXX" "${flags[@]}" -MMD -MF "${o%.o}.d" -c "$here/$s" -o "$o" &
  pids+=($!)
done
fail=0
for p in "${pids[@]}"; do wait "$p" || fail=1; done
[ "$fail" = 0 ] || { echo "run.sh: compile failed" >&2; rm -f "$bin"; exit 1; }
if [ "$built" = 1 ] || [ ! -x "$bin" ]; then
  "$CXX" -pthread "${objs[@]}" -o "$bin"
  echo "$stamp" > "$out/stamp"
  echo "run.sh: built in $(( $(date +%s) - t0 )) s"
fi
exec "$bin" --jobs "$JOBS" "$@"

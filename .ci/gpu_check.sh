#!/usr/bin/env bash
# make gpu-check: everything that needs a GPU, in one command, on a machine
# with an NVIDIA GPU, the CUDA toolkit (nvcc) and a CUDA build of torch in
# its own python (nothing is installed; no network needed). Steps:
#   1. preflight: torch sees a GPU, torch is a CUDA build, nvcc, pytest;
#   2. build rnnattn in place with its CUDA kernels (FORCE_CUDA=1) for this
#      GPU's architecture;
#   3. the CUDA tests (pytest -k cuda: tests/test_rnn_cuda.py and the CUDA
#      cases of the other files), which must not all skip;
#   4. compute-sanitizer memcheck, racecheck and synccheck on small runs of
#      every kernel (.ci/gpu_kernels_small.py), where compute-sanitizer is
#      installed;
#   5. the GPU benchmark: python -m rnnattn.bench --gpu --device cuda, in
#      float32 and bfloat16, RNN and pooling sections separately.
# Every result goes under one folder, GPU_RESULTS (default
# gpu-results/<date>-<time>), with summary.txt listing each step's status.
# A failed step is reported and the others still run (except after a failed
# preflight or build); the exit status is 1 if any step failed.
#
# Knobs (environment): PYTHON (python3), GPU_RESULTS, TORCH_CUDA_ARCH_LIST
# (default: this GPU's), MAX_JOBS (all cores), CUDA_HOME (torch's guess),
# BENCH_BUDGET (seconds of timing per benchmark case, 0.5), STEP_TIMEOUT
# (seconds, per test / sanitizer / benchmark step, 300).
# Meant to finish within 8 minutes on a 16-core H100/H200 machine (an
# estimate: not yet run on one).
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
start=$(date +%s)
PYTHON=${PYTHON:-python3}
OUT=${GPU_RESULTS:-gpu-results/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
BENCH_BUDGET=${BENCH_BUDGET:-0.5}
STEP_TIMEOUT=${STEP_TIMEOUT:-300}
summary="$OUT/summary.txt"
: > "$summary"
failed=0

log() { echo "gpu-check: $*" | tee -a "$OUT/gpu_check.log"; }
record() {  # record STATUS STEP [DETAIL]
  local line
  line=$(printf '%-7s %-34s %5ss  %s' "$1" "$2" "$(( $(date +%s) - step_start ))" "${3:-}")
  echo "$line" >> "$summary"
  log "$line"
  [ "$1" = FAIL ] && failed=1
  return 0
}
finish() {
  log "results in $OUT ($(( $(date +%s) - start )) s in all)"
  echo "---- summary ($OUT/summary.txt)"
  cat "$summary"
  exit "$failed"
}
die() {  # a step everything else needs failed
  record FAIL "$1" "$2"
  log "stopping: $2"
  finish
}
# step NAME LOGFILE CMD...: runs CMD with the step timeout, output to LOGFILE.
step() {
  local name=$1 logf=$2 rc
  shift 2
  step_start=$(date +%s)
  log "-- $name (log: $logf)"
  timeout --kill-after=10 "$STEP_TIMEOUT" "$@" > "$OUT/$logf" 2>&1
  rc=$?
  if [ $rc = 0 ]; then
    record ok "$name"
  elif [ $rc = 124 ] || [ $rc = 137 ]; then
    record FAIL "$name" "timed out after ${STEP_TIMEOUT}s (see $logf)"
  else
    record FAIL "$name" "exit status $rc (see $logf; last lines below)"
    tail -n 15 "$OUT/$logf" | sed 's/^/    /' | tee -a "$OUT/gpu_check.log"
  fi
  return $rc
}

# ---- 1. preflight ----------------------------------------------------------------
step_start=$(date +%s)
log "results go to $OUT"
command -v "$PYTHON" > /dev/null || die preflight "PYTHON=$PYTHON not found (set PYTHON to the python with torch)"
"$PYTHON" - > "$OUT/machine.txt" 2>&1 <<'EOF' || die preflight "$(tail -n 1 "$OUT/machine.txt")"
import platform, sys
try:
    import torch
except ImportError as e:
    sys.exit(f"torch is not importable from {sys.executable}: {e}")
print("python", platform.python_version(), sys.executable)
print("torch", torch.__version__, "CUDA", torch.version.cuda, "cuDNN", torch.backends.cudnn.version())
if torch.version.cuda is None:
    sys.exit(f"torch {torch.__version__} is not a CUDA build")
if not torch.cuda.is_available():
    sys.exit("torch.cuda.is_available() is False: no GPU visible (driver? CUDA_VISIBLE_DEVICES?)")
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"gpu {i}: {p.name}, sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, "
          f"{p.total_memory / 2**30:.0f} GiB")
from torch.utils.cpp_extension import CUDA_HOME
print("CUDA_HOME", CUDA_HOME)
EOF
command -v nvidia-smi > /dev/null && nvidia-smi >> "$OUT/machine.txt" 2>&1
nproc | sed 's/^/cpus /' >> "$OUT/machine.txt"
git -C "$root" log -1 --format='rnnattn commit %H %s' >> "$OUT/machine.txt" 2>/dev/null
git -C "$root" status --porcelain -uno | sed 's/^/dirty: /' >> "$OUT/machine.txt" 2>/dev/null
cat "$OUT/machine.txt" | tee -a "$OUT/gpu_check.log"
if [ -z "${CUDA_HOME:-}" ]; then
  CUDA_HOME=$(sed -n 's/^CUDA_HOME //p' "$OUT/machine.txt")
  [ "$CUDA_HOME" = None ] && CUDA_HOME=""
fi
[ -n "$CUDA_HOME" ] && [ -x "$CUDA_HOME/bin/nvcc" ] || \
  die preflight "no CUDA toolkit: torch found no nvcc (CUDA_HOME='$CUDA_HOME'); set CUDA_HOME to the folder holding bin/nvcc"
export CUDA_HOME
"$CUDA_HOME/bin/nvcc" --version | tail -n 2 | tee -a "$OUT/machine.txt"
have_pytest=1
"$PYTHON" -c 'import pytest' 2> /dev/null || have_pytest=0
record ok preflight "$(grep '^gpu 0' "$OUT/machine.txt")"

# ---- 2. build in place -------------------------------------------------------------
step_start=$(date +%s)
arch=$("$PYTHON" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$arch}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
export FORCE_CUDA=1
# Headers of CUDA libraries that come with torch's nvidia-* wheels, if any.
site=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
for d in "$site"/nvidia/*/include; do [ -d "$d" ] && CPATH="$d${CPATH:+:$CPATH}"; done
export CPATH="${CPATH:-}"
log "-- build (TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST, MAX_JOBS=$MAX_JOBS; log: build.txt)"
"$PYTHON" setup.py build_ext --inplace --build-temp build/temp-gpu > "$OUT/build.txt" 2>&1 || {
  tail -n 30 "$OUT/build.txt" | sed 's/^/    /'
  die build "setup.py build_ext failed (see build.txt)"
}
"$PYTHON" -c 'import rnnattn, sys; sys.exit(0 if rnnattn._load.WITH_CUDA else "rnnattn._C has no CUDA kernels")' \
  >> "$OUT/build.txt" 2>&1 || die build "the build has no CUDA kernels (see build.txt)"
record ok build "sm_${arch/./}"

# ---- 3. CUDA tests -----------------------------------------------------------------
if [ "$have_pytest" = 1 ]; then
  if step "CUDA tests (pytest -k cuda)" pytest_cuda.txt \
      "$PYTHON" -m pytest tests -q -k cuda -rs -p no:cacheprovider --junitxml "$OUT/pytest_cuda.xml"; then
    # Passing because everything skipped is a failure here.
    "$PYTHON" - "$OUT/pytest_cuda.xml" <<'EOF' || record FAIL "CUDA tests ran" "$(tail -n 1 "$OUT/pytest_cuda.txt")"
import sys, xml.etree.ElementTree as ET
r = ET.parse(sys.argv[1]).getroot()
s = r if r.tag == "testsuite" else r.find("testsuite")
n, skipped = int(s.get("tests")), int(s.get("skipped"))
print(f"{n} CUDA tests, {skipped} skipped")
sys.exit(1 if n == 0 or skipped == n else 0)
EOF
  fi
else
  step_start=$(date +%s)
  record FAIL "CUDA tests (pytest -k cuda)" "pytest is not installed for $PYTHON (pip install pytest)"
fi

# ---- 4. compute-sanitizer ------------------------------------------------------------
sanitizer=$(command -v compute-sanitizer || true)
[ -z "$sanitizer" ] && [ -x "$CUDA_HOME/bin/compute-sanitizer" ] && sanitizer="$CUDA_HOME/bin/compute-sanitizer"
[ -z "$sanitizer" ] && [ -x "$CUDA_HOME/compute-sanitizer/compute-sanitizer" ] && \
  sanitizer="$CUDA_HOME/compute-sanitizer/compute-sanitizer"
step "kernels once (no sanitizer)" kernels_small.txt "$PYTHON" .ci/gpu_kernels_small.py
if [ -n "$sanitizer" ]; then
  for tool in memcheck racecheck synccheck; do
    step "compute-sanitizer $tool" "sanitizer_$tool.txt" \
      "$sanitizer" --tool "$tool" --error-exitcode 9 "$PYTHON" .ci/gpu_kernels_small.py
  done
else
  step_start=$(date +%s)
  record skipped "compute-sanitizer" "not found on PATH or in $CUDA_HOME"
fi

# ---- 5. benchmark ----------------------------------------------------------------------
have_matplotlib=1
"$PYTHON" -c 'import matplotlib' 2> /dev/null || have_matplotlib=0
for dtype in float32 bfloat16; do
  for section in rnn pool; do
    stem="bench_${section}_${dtype}"
    extra=()
    [ "$have_matplotlib" = 1 ] && extra=(--plot "$OUT/$stem.png")
    step "bench $section $dtype" "$stem.txt" "$PYTHON" -m rnnattn.bench --gpu --device cuda --dtype "$dtype" \
      --only "$section" --budget "$BENCH_BUDGET" --no-progress --json "$OUT/$stem.json" --csv "$OUT/$stem.csv" \
      "${extra[@]}"
  done
done

finish

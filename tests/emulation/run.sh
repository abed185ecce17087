#!/usr/bin/env bash
# Builds and runs check_kernels.cpp: the CUDA RNN kernels executed on the CPU
# (one std::thread per CUDA thread). Needs g++ with C++20 and torch's headers
# (for c10::Half / c10::BFloat16): PYTHON names a python with torch installed.
# Slow on a small machine (thousands of threads meeting at barriers): minutes.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
PYTHON=${PYTHON:-python3}
inc=$("$PYTHON" -c 'import torch.utils.cpp_extension as c; print(c.include_paths()[0])')
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The kernels as they are, but for the two lines only a GPU compiler understands.
sed -e 's/extern __shared__ float4 smem_f4\[\];/float4* smem_f4 = emu_block_smem();/' \
    -e 's/#include <cooperative_groups.h>/#include "cuda_shim.h"/' \
    "$here/../../csrc/cuda/rnn_persistent.cuh" > "$work/rnn_persistent.cuh"
cp "$here/../../csrc/cuda/rnn_pointwise.cuh" "$here/cuda_shim.h" "$work/"
g++ -std=c++20 -O1 -pthread -I"$work" -I"$inc" "$here/check_kernels.cpp" -o "$work/check_kernels"
stdbuf -oL "$work/check_kernels"

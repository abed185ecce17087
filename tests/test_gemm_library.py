"""The large float32 GEMMs in either library (csrc/cpu/blas.h).

Products of at least 2^23 multiply-adds run in oneDNN on x86 CPUs not made by
Intel (MKL runs its generic kernels there), elsewhere in the BLAS (MKL);
RNNATTN_CPU_GEMM=blas|onednn forces one, read once per process. The shapes
below put every GEMM of a call above that size: the input GEMM, each step's
recurrent GEMM (one slice of the units per thread on 2 and 3 threads, the
backward's slices kept compact for oneDNN: recurrent_gemm.h) and the
backward's dX, dW_ih and dW_hh. With oneDNN, walks of enough steps multiply
their full steps by weights reordered once per call instead
(csrc/cpu/packed_weights.h; test_steps_on_packed_weights_match_torch).
test_both_libraries reruns them in a process forced to each library, and to
oneDNN without the packed weights."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.nn.utils.rnn import pack_sequence

import rnnattn

T, B, I, H = 3, 64, 300, 640
# 64 sequences: the later steps have fewer rows than the first.
LENGTHS = [3] * 40 + [2] * 20 + [1] * 4


def _inputs(packed, dtype):
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randn(L, I, generator=g, dtype=torch.float64) for L in LENGTHS]
    if packed:
        return pack_sequence([s.to(dtype) for s in seqs])
    return torch.randn(T, B, I, generator=g, dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("cell", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_large_float32_gemms_match_torch(bidirectional, packed, threads, cell):
    forced = os.environ.get("RNNATTN_CPU_GEMM")
    if forced is not None:
        assert rnnattn._C.cpu_gemm() == forced
    torch.manual_seed(0)
    theirs = getattr(torch.nn, cell)(I, H, bidirectional=bidirectional).double()
    ours = getattr(rnnattn, cell)(I, H, bidirectional=bidirectional)
    ours.load_state_dict({k: v.float() for k, v in theirs.state_dict().items()})
    dirs = 2 if bidirectional else 1
    h0 = torch.randn(dirs, B, H, dtype=torch.float64) * 0.5
    state = (h0, torch.randn_like(h0)) if cell == "LSTM" else h0

    def call(module, dtype):
        x = _inputs(packed, dtype)
        leaf = (x.data if packed else x).requires_grad_()
        if packed:
            x = torch.nn.utils.rnn.PackedSequence(leaf, x.batch_sizes)
        s = tuple(t.to(dtype) for t in state) if cell == "LSTM" else state.to(dtype)
        out, _ = module(x, s)
        out = out.data if packed else out
        w = torch.randn(out.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        grads = torch.autograd.grad((out * w.to(dtype)).sum(), [leaf, *module.parameters()])
        return out, grads

    _matches_torch(call, ours, theirs, threads)


def _matches_torch(call, ours, theirs, threads):
    """call(module, dtype) -> (output, grads): rnnattn's float32 module on
    `threads` threads against torch's in float64. Returns the names of the
    operators rnnattn's call ran (the profiler's)."""
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            out, grads = call(ours, torch.float32)
    finally:
        torch.set_num_threads(prev)
    ref, ref_grads = call(theirs, torch.float64)
    tol = dict(rtol=2e-4, atol=2e-4)
    torch.testing.assert_close(out.double(), ref, **tol)
    assert len(grads) == len(ref_grads)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a.double(), b, **tol)
    return {e.key for e in prof.key_averages()}


# Steps enough for the packed weights (recurrence.h kPackMinSteps): 64
# sequences, the first 4 steps hold all of them, the last two fewer.
PACKED_T = 6
PACKED_LENGTHS = [6] * 40 + [5] * 20 + [4] * 4


@pytest.mark.parametrize("cell", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("packed", [False, True])
def test_steps_on_packed_weights_match_torch(packed, threads, cell):
    """Where oneDNN runs the large float32 steps, the steps of the first
    step's rows multiply by weights oneDNN reordered once per call
    (csrc/cpu/packed_weights.h; the GRU's backward keeps the plain path):
    outputs and grads against torch's module in float64, and the packed
    operator is what ran, exactly when rnnattn._C.cpu_packed_weights() says
    so (RNNATTN_CPU_PACKED_WEIGHTS=0 turns it off: test_both_libraries)."""
    torch.manual_seed(0)
    theirs = getattr(torch.nn, cell)(I, H).double()
    ours = getattr(rnnattn, cell)(I, H)
    ours.load_state_dict({k: v.float() for k, v in theirs.state_dict().items()})
    g = torch.Generator().manual_seed(1)
    if packed:
        seqs = [torch.randn(L, I, generator=g, dtype=torch.float64) for L in PACKED_LENGTHS]
    else:
        x = torch.randn(PACKED_T, B, I, generator=g, dtype=torch.float64)

    def call(module, dtype):
        if packed:
            xs = pack_sequence([s.to(dtype) for s in seqs])
            leaf = xs.data.requires_grad_()
            xs = torch.nn.utils.rnn.PackedSequence(leaf, xs.batch_sizes)
        else:
            leaf = xs = x.to(dtype).requires_grad_()
        out, _ = module(xs)
        out = out.data if packed else out
        w = torch.randn(out.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        return out, torch.autograd.grad((out * w.to(dtype)).sum(), [leaf, *module.parameters()])

    ran = _matches_torch(call, ours, theirs, threads)
    assert ("mkldnn::_linear_pointwise" in ran) == rnnattn._C.cpu_packed_weights(), sorted(ran)


@pytest.mark.parametrize("lib", ["blas", "onednn", "onednn-unpacked"])
def test_both_libraries(lib):
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, RNNATTN_CPU_GEMM=lib.split("-")[0], PYTHONPATH=str(root))
    if lib == "onednn-unpacked":
        env["RNNATTN_CPU_PACKED_WEIGHTS"] = "0"
    lib = lib.split("-")[0]
    probe = subprocess.run([sys.executable, "-c", "import rnnattn; print(rnnattn._C.cpu_gemm())"],
                           cwd=root, env=env, capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr[-2000:]
    if probe.stdout.strip() != lib:
        pytest.skip(f"this torch's oneDNN GEMM does not take float32 on this CPU, or not at float32 "
                    f"precision (ATen's mkldnn_matmul needs AVX-512 or AVX-NE-CONVERT; torch 2.4.1's "
                    f"rounded like bfloat16 on an AMX Xeon; csrc/cpu/blas.h): runs {probe.stdout.strip()}")
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k", "not both_libraries"],
        cwd=root, env=env, capture_output=True, text=True,
    )
    assert r.returncode == 0 and " passed" in r.stdout, r.stdout[-3000:] + r.stderr[-2000:]

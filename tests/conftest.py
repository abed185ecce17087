"""Shared test helpers: the devices every parity/gradcheck/opcheck test runs on, the
CPU kernel builds (ISA levels) a check can be run under, and the second-order
(double backward) checks of a module."""
import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import rnnattn

# CUDA cases run where a GPU and a CUDA build of rnnattn are present, and are
# reported as skipped (not silently dropped) elsewhere.
_cuda_ok = torch.cuda.is_available() and rnnattn._load.WITH_CUDA
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not _cuda_ok, reason="needs a GPU and a CUDA build of rnnattn")),
]


# The layer ops' parity grid, shared by the RNN and the GRU/LSTM op tests.
SHAPES = [  # (T, B, I, H)
    (1, 1, 1, 1),
    (1, 3, 5, 7),
    (5, 1, 4, 6),
    (7, 3, 5, 9),
    (4, 2, 33, 17),
    (3, 5, 8, 65),
    # Fewer than 4 rows in all: the step reads W_hh as stored (small_gemm_nt),
    # with whole vectors and ragged tails of k and n.
    (1, 2, 5, 37),
    (3, 1, 4, 20),
]

# ---- the CPU kernels' builds ------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
# The builds of csrc/cpu (isa.h), lowest first ("amx": the avx512 build with
# AMX tiles for the bfloat16 steps' products, small_gemm_bf16.h). A test run
# takes the highest the CPU has; RNNATTN_CPU_ISA forces a lower one in a
# subprocess.
CPU_ISAS = ["base", "avx2", "avx512", "amx"]


@functools.lru_cache(maxsize=None)
def _isa_runs(isa: str) -> bool:
    env = dict(os.environ, RNNATTN_CPU_ISA=isa, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", "import rnnattn; print(rnnattn._C.cpu_isa())"],
                       cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout.split()[-1] == isa


def run_under_isa(isa: str, script: str, done: str) -> None:
    """Runs `script` in a subprocess with RNNATTN_CPU_ISA=isa and checks that
    it printed `done`; skips, with the reason, where this CPU cannot run that
    build (AVX-512 on an AVX2 machine: compiled, and its vector logic checked
    by tests/test_cpu_kernel_widths.py, but not run)."""
    if not _isa_runs(isa):
        pytest.skip(f"this CPU cannot run the {isa} build of the CPU kernels")
    env = dict(os.environ, RNNATTN_CPU_ISA=isa, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0 and done in r.stdout, r.stderr[-3000:]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ---- second derivatives of a module (double backward) ----------------------------


def flat_tensors(x):
    """Every tensor in a nested output (tuples, PackedSequence: its data), in order."""
    if isinstance(x, torch.nn.utils.rnn.PackedSequence):
        return [x.data]
    if isinstance(x, (tuple, list)):
        return [t for e in x for t in flat_tensors(e)]
    return [x] if torch.is_tensor(x) else []


def second_order_grads(module, args, kwargs=None, seed=0):
    """A gradient penalty through ``module(*args, **kwargs)``: g = d(loss)/d(w)
    with create_graph=True for every input tensor and parameter w that
    requires grad (loss: the outputs against fixed random weights), then
    d(sum g**2)/d(w). Returns g and those grads (zeros where unused). The
    RNG is seeded before the call (dropout draws the same masks)."""
    kwargs = kwargs or {}
    torch.manual_seed(seed)
    outs = flat_tensors(module(*args, **kwargs))
    wrt = [t for t in flat_tensors(list(args) + list(kwargs.values())) if t.requires_grad]
    wrt += [p for p in module.parameters() if p.requires_grad]
    gen = torch.Generator().manual_seed(1)
    loss = sum((o * torch.randn(o.shape, generator=gen, dtype=o.dtype).to(o.device)).sum() for o in outs)
    g = torch.autograd.grad(loss, wrt, create_graph=True, allow_unused=True)
    penalty = sum((t**2).sum() for t in g if t is not None)
    gg = torch.autograd.grad(penalty, wrt, allow_unused=True)
    return [torch.zeros_like(w) if t is None else t.detach() for ts in (g, gg) for t, w in zip(ts, wrt)]


def assert_same_second_order(ours, ref, args, kwargs=None, seed=0, tol=None):
    """rnnattn's module and torch's (same state_dict) give the same grads and
    second-order grads of a gradient penalty."""
    tol = tol or dict(rtol=1e-10, atol=1e-10)
    got = second_order_grads(ours, args, kwargs, seed)
    want = second_order_grads(ref, args, kwargs, seed)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **tol)


def module_gradgradcheck(module, args, kwargs=None, fast_mode=True):
    """torch.autograd.gradgradcheck of ``module(*args, **kwargs)`` in every
    input tensor that requires grad and every parameter (as torch's module
    test suite's test_gradgrad does)."""
    from torch.utils._pytree import tree_flatten, tree_unflatten

    flat, spec = tree_flatten((tuple(args), dict(kwargs or {})))
    where = [k for k, t in enumerate(flat) if torch.is_tensor(t) and t.requires_grad]
    names = [n for n, _ in module.named_parameters()]
    params = [p.detach().requires_grad_() for _, p in module.named_parameters()]

    def f(*ts):
        full = list(flat)
        for k, t in zip(where, ts[: len(where)]):
            full[k] = t
        a, kw = tree_unflatten(full, spec)
        out = torch.func.functional_call(module, dict(zip(names, ts[len(where) :])), a, kw)
        return tuple(flat_tensors(out))

    return torch.autograd.gradgradcheck(f, [flat[k] for k in where] + params, fast_mode=fast_mode)

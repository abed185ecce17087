"""The CUDA RNN kernels (csrc/cuda/rnn.cu) on a GPU.

Both recurrence paths are run explicitly through RNNATTN_RNN_CUDA_PATH:
"persistent" (one cooperative kernel, W_hh in shared memory; raises instead of
falling back) and "fallback" (per-step cuBLAS GEMM + pointwise kernel).
Checked: parity with rnnattn.reference (float64 on the CPU, from the very
same rounded inputs) and with torch.nn.RNN (cuDNN) for every dtype, packed
and reversed input, gradcheck and opcheck on CUDA, the path rule, every
output element written (outputs allocated over NaN-poisoned memory), streams
and devices. Everything here skips without a GPU and a CUDA build.
"""
import copy
import math

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pack_sequence

import rnnattn
from rnnattn import ops, reference

CUDA_OK = torch.cuda.is_available() and rnnattn._load.WITH_CUDA
pytestmark = pytest.mark.skipif(not CUDA_OK, reason="needs a GPU and a CUDA build of rnnattn")

ENV = "RNNATTN_RNN_CUDA_PATH"
PATHS = ["persistent", "fallback"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
# Max error allowed, relative to max(1, |expected|max) and elementwise (rtol).
# Half precisions are held to a float64 oracle run on the same rounded
# inputs, so the bound covers the kernel's own roundings (about 2-4 ulps of
# the storage type on outputs, a few more on gradients summed over rows).
TOL = {torch.float64: 1e-10, torch.float32: 3e-5, torch.float16: 5e-3, torch.bfloat16: 2e-2}


@pytest.fixture(autouse=True)
def _exact_float32():
    """No TF32 in cuBLAS or cuDNN, so float32 results are IEEE float32 throughout."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def use_path(monkeypatch, path):
    monkeypatch.setenv(ENV, path)


def paths_for(dtype):
    """float64 has only the fallback path (the persistent one rejects it, see below)."""
    return ["fallback"] if dtype == torch.float64 else PATHS


def make_case(T, B, I, H, lengths=None, bias=True):
    """float64 CPU arguments of rnn_layer; weights scaled so tanh is neither saturated nor linear."""
    f = dict(dtype=torch.float64)
    if lengths is not None:
        B = len(lengths)
    w_ih = torch.randn(H, I, **f) / math.sqrt(I)
    w_hh = torch.randn(H, H, **f) * (0.9 / math.sqrt(H))
    b_ih = torch.randn(H, **f) * 0.1 if bias else None
    b_hh = torch.randn(H, **f) * 0.1 if bias else None
    hx = torch.randn(B, H, **f) * 0.5
    if lengths is None:
        x, bs = torch.randn(T, B, I, **f), None
    else:
        p = pack_sequence([torch.randn(L, I, **f) for L in lengths])
        x, bs = p.data, p.batch_sizes
    return [x, bs, hx, w_ih, w_hh, b_ih, b_hh]


def cast(args, dtype, device):
    """Floating tensors to dtype/device; batch_sizes stays an int64 CPU tensor."""
    return [a.to(device=device, dtype=dtype) if torch.is_tensor(a) and a.is_floating_point() else a for a in args]


def outputs_and_grads(fn, args, relu, reverse, go, gh):
    """[output, h_n, grads of every floating input] of fn under the loss <out, go> + <h_n, gh>."""
    args = [a.detach().requires_grad_() if torch.is_tensor(a) and a.is_floating_point() else a for a in args]
    out, hn = fn(*args, relu, reverse)
    leaves = [a for a in args if torch.is_tensor(a) and a.requires_grad]
    grads = torch.autograd.grad((out * go).sum() + (hn * gh).sum(), leaves)
    return [out.detach(), hn.detach(), *grads]


def assert_matches(actual, expected, dtype, what=""):
    tol = TOL[dtype]
    for i, (a, e) in enumerate(zip(actual, expected)):
        a, e = a.detach().double().cpu(), e.detach().double().cpu()
        scale = max(1.0, e.abs().max().item()) if e.numel() else 1.0
        torch.testing.assert_close(a, e, rtol=tol, atol=tol * scale, msg=lambda m: f"{what} result {i}: {m}")


def check_against_reference(args64, dtype, relu, reverse):
    """Runs the CUDA op in dtype and the reference in float64 on the same rounded values."""
    args = cast(args64, dtype, "cuda")
    out_shape = (*args64[0].shape[:-1], args64[3].shape[0])
    go = torch.randn(out_shape, dtype=torch.float64).to(dtype)
    gh = torch.randn(args64[2].shape, dtype=torch.float64).to(dtype)
    got = outputs_and_grads(ops.rnn_layer, args, relu, reverse, go.cuda(), gh.cuda())
    want = outputs_and_grads(
        reference.rnn_layer, cast(args, torch.float64, "cpu"), relu, reverse, go.double(), gh.double()
    )
    assert len(got) == len(want)
    for g in got:
        assert g.is_cuda and g.dtype == dtype
    assert_matches(got, want, dtype)


PADDED = [  # (T, B, I, H): T=1, B=1, odd H, H % 4 != 0, H > 128 (several float4 columns per lane),
    (1, 1, 1, 1),  # B > 64 (several staged chunks per step)
    (5, 3, 4, 10),
    (7, 2, 33, 129),
    (3, 9, 16, 256),
    (4, 70, 8, 36),
]
PACKED = [[1], [5, 4, 4, 2, 1], [6, 1], [3] * 5 + [2] * 66]


@pytest.mark.parametrize("case", [("padded", s) for s in PADDED] + [("packed", p) for p in PACKED], ids=str)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("path", PATHS)
def test_matches_reference(path, dtype, relu, reverse, case, monkeypatch):
    if path not in paths_for(dtype):
        pytest.skip("float64 has no persistent path (test_forced_persistent_errors checks the error)")
    use_path(monkeypatch, path)
    kind, spec = case
    args64 = make_case(*spec) if kind == "padded" else make_case(max(spec), 0, 6, 24, lengths=spec)
    check_against_reference(args64, dtype, relu, reverse)


@pytest.mark.parametrize("path", PATHS)
def test_long_sequence(path, monkeypatch):
    """Hundreds of steps: the double-buffered exchange and one barrier per step hold up."""
    use_path(monkeypatch, path)
    check_against_reference(make_case(300, 3, 5, 96), torch.float32, False, False)


@pytest.mark.parametrize("path", PATHS)
def test_no_bias(path, monkeypatch):
    use_path(monkeypatch, path)
    check_against_reference(make_case(4, 3, 5, 20, bias=False), torch.float32, True, True)


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("path", PATHS)
def test_module_matches_cudnn(path, dtype, nonlinearity, packed, monkeypatch):
    """rnnattn.RNN (2 layers, bidirectional) in dtype vs torch.nn.RNN on cuDNN in
    float32 (float64 for float64) with the same, rounded, weights and inputs."""
    if path not in paths_for(dtype):
        pytest.skip("float64 has no persistent path")
    use_path(monkeypatch, path)
    ref_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    I, H, T, lengths = 12, 40, 9, [9, 7, 7, 3, 1]
    B = len(lengths)
    oracle = nn.RNN(I, H, num_layers=2, bidirectional=True, nonlinearity=nonlinearity).cuda()
    ours = rnnattn.convert(copy.deepcopy(oracle)).to(dtype)
    assert type(ours) is rnnattn.RNN
    oracle.to(ref_dtype)
    with torch.no_grad():
        for p_ref, p in zip(oracle.parameters(), ours.parameters()):
            p_ref.copy_(p)  # the oracle sees exactly the rounded weights
    x = torch.randn(T, B, I, device="cuda").to(dtype)
    h0 = (torch.randn(4, B, H, device="cuda") * 0.5).to(dtype)
    go = torch.randn(T, B, 2 * H, device="cuda").to(dtype)
    gh = torch.randn(4, B, H, device="cuda").to(dtype)

    def run(module, dt):
        xi = x.to(dt).requires_grad_()
        hi = h0.to(dt).requires_grad_()
        if packed:
            out, hn = module(pack_padded_sequence(xi, torch.tensor(lengths)), hi)
            out_p = pack_padded_sequence(go.to(dt), torch.tensor(lengths))
            out, go_used = out.data, out_p.data
        else:
            out, hn = module(xi, hi)
            go_used = go.to(dt)
        loss = (out * go_used).sum() + (hn * gh.to(dt)).sum()
        grads = torch.autograd.grad(loss, [xi, hi, *module.parameters()])
        return [out, hn, *grads]

    got = run(ours, dtype)
    want = run(oracle, ref_dtype)
    for g in got:
        assert g.dtype == dtype
    assert_matches(got, want, dtype, "rnnattn.RNN vs cuDNN")


@pytest.mark.parametrize("packed", [None, [4, 3, 3, 1]])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("relu", [False, True])
def test_gradcheck_float64(relu, reverse, packed):
    args = cast(make_case(3, 2, 3, 5, lengths=packed), torch.float64, "cuda")
    args = [a.requires_grad_() if torch.is_tensor(a) and a.is_floating_point() else a for a in args]
    assert torch.autograd.gradcheck(lambda *a: ops.rnn_layer(*a, relu, reverse), args, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("packed", [None, [4, 3, 3, 1]])
@pytest.mark.parametrize("path", PATHS)
def test_opcheck(path, packed, monkeypatch):
    use_path(monkeypatch, path)
    args = cast(make_case(4, 3, 5, 6, lengths=packed), torch.float32, "cuda")
    args = [a.requires_grad_() if torch.is_tensor(a) and a.is_floating_point() else a for a in args]
    torch.library.opcheck(torch.ops.rnnattn.rnn_forward, (*args, False, True))
    x, bs, hx, w_ih, w_hh, _, _ = [a.detach() if torch.is_tensor(a) else a for a in args]
    out, _ = ops.rnn_layer(x, bs, hx, w_ih, w_hh)
    for need in [(True, True), (False, True), (True, False)]:
        torch.library.opcheck(
            torch.ops.rnnattn.rnn_backward,
            (torch.randn_like(out), torch.randn_like(hx), x, bs, hx, w_ih, w_hh, out, False, False, *need),
        )


def test_grads_not_needed_come_back_empty():
    x, bs, hx, w_ih, w_hh, _, _ = cast(make_case(3, 2, 4, 5), torch.float32, "cuda")
    out, _ = ops.rnn_layer(x, bs, hx, w_ih, w_hh)
    dx, dhx, dwi, dwh, db = torch.ops.rnnattn.rnn_backward(
        torch.randn_like(out), torch.randn_like(hx), x, bs, hx, w_ih, w_hh, out, False, False, False, False
    )
    assert dx.numel() == dwi.numel() == dwh.numel() == db.numel() == 0
    assert dhx.shape == hx.shape and dhx.is_cuda and torch.isfinite(dhx).all()


def test_torch_compile_fullgraph():
    args = cast(make_case(5, 3, 4, 6), torch.float32, "cuda")
    args = [a.requires_grad_() if torch.is_tensor(a) and a.is_floating_point() else a for a in args]

    def f(*a):
        out, hn = ops.rnn_layer(*a, False, False)
        return out.sum() + hn.sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(*args), f(*args))
    leaves = [a for a in args if torch.is_tensor(a) and a.requires_grad]
    for a, b in zip(torch.autograd.grad(compiled(*args), leaves), torch.autograd.grad(f(*args), leaves)):
        torch.testing.assert_close(a, b)


# ---- the path rule --------------------------------------------------------


def _run_path(monkeypatch, path, args):
    use_path(monkeypatch, path)
    H = args[3].shape[0]
    go = torch.randn(*args[0].shape[:-1], H, device="cuda")
    gh = torch.randn(args[2].shape[0], H, device="cuda")
    return outputs_and_grads(ops.rnn_layer, args, False, False, go, gh)


def test_auto_rule_small_problem_runs_persistent(monkeypatch):
    """B=4, H=64 is well inside the rule: "auto" gives the persistent kernel's bits."""
    args = cast(make_case(6, 4, 8, 64), torch.float32, "cuda")
    torch.manual_seed(1)
    auto = _run_path(monkeypatch, "auto", args)
    torch.manual_seed(1)
    persistent = _run_path(monkeypatch, "persistent", args)
    for a, p in zip(auto, persistent):
        assert torch.equal(a, p)


def test_auto_rule_large_problem_runs_fallback(monkeypatch):
    """B=1024, H=1024: past the work limit (B*R*H > 2^20 for any GPU), so "auto" is the fallback."""
    args = cast(make_case(2, 1024, 8, 1024), torch.float32, "cuda")
    torch.manual_seed(1)
    auto = _run_path(monkeypatch, "auto", args)
    torch.manual_seed(1)
    fallback = _run_path(monkeypatch, "fallback", args)
    for a, f in zip(auto, fallback):
        assert torch.equal(a, f)


def test_hidden_beyond_persistent_limit(monkeypatch):
    """H=4096 does not fit on chip: "persistent" says why, "auto" falls back and is right."""
    args = cast(make_case(2, 2, 4, 4096), torch.float32, "cuda")
    use_path(monkeypatch, "persistent")
    with pytest.raises(RuntimeError, match=r"RNNATTN_RNN_CUDA_PATH=persistent.*hidden_size 4096 is too large"):
        ops.rnn_layer(*args)
    use_path(monkeypatch, "auto")
    out, hn = ops.rnn_layer(*args)
    rout, rhn = reference.rnn_layer(*cast(args, torch.float64, "cpu"))
    assert_matches([out, hn], [rout, rhn], torch.float32)


def test_forced_persistent_errors(monkeypatch):
    use_path(monkeypatch, "persistent")
    args = cast(make_case(2, 2, 3, 4), torch.float64, "cuda")
    with pytest.raises(RuntimeError, match="supports float32, float16 and bfloat16 only"):
        ops.rnn_layer(*args)
    use_path(monkeypatch, "fastest")
    with pytest.raises(RuntimeError, match="RNNATTN_RNN_CUDA_PATH must be 'auto', 'persistent' or 'fallback'"):
        ops.rnn_layer(*cast(args, torch.float32, "cuda"))


# ---- every output element written -----------------------------------------


def _poison_allocator():
    """Fills free blocks of the CUDA caching allocator with 0xFF bytes (NaN in
    every float dtype) and returns their address ranges: tensors allocated
    next are carved from them, so an element a kernel forgets to write stays NaN."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    blocks = [torch.full((64 << 20,), 255, dtype=torch.uint8, device="cuda")]  # large pool
    blocks += [torch.full((1 << 20,), 255, dtype=torch.uint8, device="cuda") for _ in range(16)]  # small pool
    ranges = [(b.data_ptr(), b.data_ptr() + b.numel()) for b in blocks]
    torch.cuda.synchronize()
    del blocks
    return ranges


def _assert_poisoned(t, ranges):
    if t.numel():
        assert any(lo <= t.data_ptr() < hi for lo, hi in ranges), "output was not allocated over poisoned memory"


@pytest.mark.parametrize("packed", [None, [7, 7, 5, 2, 2, 1]])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("path", PATHS)
def test_outputs_fully_written(path, dtype, packed, monkeypatch):
    if path not in paths_for(dtype):
        pytest.skip("float64 has no persistent path")
    use_path(monkeypatch, path)
    args = cast(make_case(7, 40, 24, 72, lengths=packed), dtype, "cuda")
    x, bs, hx, w_ih, w_hh, b_ih, b_hh = args
    go = torch.randn(*x.shape[:-1], 72, device="cuda").to(dtype)
    gh = torch.randn_like(hx)
    cpu = cast(args, torch.float64, "cpu")
    want_fwd = torch.ops.rnnattn.rnn_forward(*cpu, False, False)

    ranges = _poison_allocator()
    fwd = torch.ops.rnnattn.rnn_forward(*args, False, False)
    torch.cuda.synchronize()
    for t in fwd:
        _assert_poisoned(t, ranges)
        assert torch.isfinite(t).all()
    assert_matches(fwd, want_fwd, dtype, "forward")

    want_bwd = torch.ops.rnnattn.rnn_backward(
        go.double().cpu(), gh.double().cpu(), cpu[0], bs, cpu[2], cpu[3], cpu[4], fwd[0].double().cpu(),
        False, False, True, True,
    )
    ranges = _poison_allocator()
    bwd = torch.ops.rnnattn.rnn_backward(go, gh, x, bs, hx, w_ih, w_hh, fwd[0], False, False, True, True)
    torch.cuda.synchronize()
    for t in bwd:
        _assert_poisoned(t, ranges)
        assert torch.isfinite(t).all()
    assert_matches(bwd, want_bwd, dtype, "backward")


# ---- edge shapes, streams, devices, bad input ------------------------------


@pytest.mark.parametrize("shape", [(0, 3, 4, 5), (3, 0, 4, 5)], ids=str)
@pytest.mark.parametrize("path", PATHS)
def test_empty_shapes_match_cpu(path, shape, monkeypatch):
    """No steps, or no batch rows: same results as the CPU kernel, and no empty launch."""
    use_path(monkeypatch, path)
    cpu = make_case(*shape)
    gpu = cast(cpu, torch.float32, "cuda")
    got = torch.ops.rnnattn.rnn_forward(*gpu, False, False)
    want = torch.ops.rnnattn.rnn_forward(*cpu, False, False)
    assert_matches(got, want, torch.float32)
    x, bs, hx, w_ih, w_hh = gpu[:5]
    go, gh = torch.randn_like(got[0]), torch.randn_like(got[1])
    got_b = torch.ops.rnnattn.rnn_backward(go, gh, x, bs, hx, w_ih, w_hh, got[0], False, False, True, True)
    c = cast([go, gh, x, hx, w_ih, w_hh, got[0]], torch.float64, "cpu")
    want_b = torch.ops.rnnattn.rnn_backward(c[0], c[1], c[2], bs, c[3], c[4], c[5], c[6], False, False, True, True)
    for a, b in zip(got_b, want_b):
        assert a.shape == b.shape
    assert_matches(got_b, want_b, torch.float32)


@pytest.mark.parametrize("path", PATHS)
def test_side_stream(path, monkeypatch):
    """Kernels, GEMMs and the schedule copy all go to the current stream."""
    use_path(monkeypatch, path)
    args = cast(make_case(6, 5, 7, 48, lengths=None), torch.float32, "cuda")
    want = ops.rnn_layer(*args, False, True)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        got = ops.rnn_layer(*args, False, True)
    torch.cuda.current_stream().wait_stream(side)
    for g, w in zip(got, want):
        assert torch.equal(g, w)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
@pytest.mark.parametrize("path", PATHS)
def test_second_device(path, monkeypatch):
    """Tensors on cuda:1 while cuda:0 is current: the device guard puts all work on cuda:1."""
    use_path(monkeypatch, path)
    args64 = make_case(4, 3, 5, 32, lengths=[4, 3, 1])
    want = ops.rnn_layer(*cast(args64, torch.float32, "cuda:0"))
    with torch.cuda.device(0):
        got = ops.rnn_layer(*cast(args64, torch.float32, "cuda:1"))
    for g, w in zip(got, want):
        assert g.device == torch.device("cuda:1")
        assert torch.equal(g.cpu(), w.cpu())


def test_bad_input_on_cuda():
    x, bs, hx, w_ih, w_hh, b_ih, b_hh = cast(make_case(3, 3, 4, 5, lengths=[3, 2, 1]), torch.float32, "cuda")
    with pytest.raises(RuntimeError, match="batch_sizes must be a 1-D int64 CPU tensor"):
        torch.ops.rnnattn.rnn_forward(x, bs.cuda(), hx, w_ih, w_hh, b_ih, b_hh, False, False)
    with pytest.raises(RuntimeError, match="hx is on cpu but input is on cuda"):
        torch.ops.rnnattn.rnn_forward(x, bs, hx.cpu(), w_ih, w_hh, b_ih, b_hh, False, False)
    with pytest.raises(RuntimeError, match="must equal the number of packed input rows"):
        torch.ops.rnnattn.rnn_forward(x[:-1], bs, hx, w_ih, w_hh, b_ih, b_hh, False, False)
    with pytest.raises(RuntimeError, match="hidden_size .* must be greater than zero"):
        torch.ops.rnnattn.rnn_forward(x, bs, hx[:, :0], w_ih[:0], w_hh[:0, :0], None, None, False, False)

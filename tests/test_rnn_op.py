"""The fused one-layer RNN operator against the plain-PyTorch reference."""

import pytest
import torch
from torch.nn.utils.rnn import pack_sequence

from rnnattn import ops, reference
from conftest import CPU_ISAS, DEVICES, SHAPES, run_under_isa

F64 = dict(dtype=torch.float64)


def make_case(T, B, I, H, device, dtype=torch.float64, packed_lengths=None, bias=True, grad=False):
    """Weights scaled so tanh is neither saturated nor linear."""
    g = dict(device=device, dtype=dtype)
    if packed_lengths is not None:
        B = len(packed_lengths)
    w_ih = torch.randn(H, I, **g) / I**0.5
    w_hh = torch.randn(H, H, **g) / H**0.5
    b_ih = torch.randn(H, **g) * 0.1 if bias else None
    b_hh = torch.randn(H, **g) * 0.1 if bias else None
    hx = torch.randn(B, H, **g) * 0.5
    if packed_lengths is None:
        x, bs = torch.randn(T, B, I, **g), None
    else:
        seqs = [torch.randn(L, I, **g) for L in packed_lengths]
        p = pack_sequence(seqs, enforce_sorted=True)
        x, bs = p.data, p.batch_sizes
    args = [x, bs, hx, w_ih, w_hh, b_ih, b_hh]
    if grad:
        for a in args:
            if a is not None and a.is_floating_point():
                a.requires_grad_(True)
    return args


PACKED = [  # lengths, longest first
    [1],
    [3, 3, 1],
    [5, 4, 4, 2, 1],
    [6, 1],
]


def assert_close(a, b, dtype):
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_backward_padded(shape, reverse, relu, dtype, device):
    T, B, I, H = shape
    args = make_case(T, B, I, H, device, dtype, grad=True)
    out, hn = ops.rnn_layer(*args, relu, reverse)
    rout, rhn = reference.rnn_layer(*args, relu, reverse)
    assert out.shape == (T, B, H) and hn.shape == (B, H)
    assert_close(out, rout, dtype)
    assert_close(hn, rhn, dtype)
    go, gh = torch.randn_like(out), torch.randn_like(hn)
    leaves = [a for a in args if a is not None and a.requires_grad]
    g = torch.autograd.grad((out * go).sum() + (hn * gh).sum(), leaves)
    rg = torch.autograd.grad((rout * go).sum() + (rhn * gh).sum(), leaves)
    for a, b in zip(g, rg):
        assert_close(a, b, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("lengths", PACKED)
def test_forward_backward_packed(lengths, relu, reverse, device):
    args = make_case(None, len(lengths), 5, 6, device, packed_lengths=lengths, grad=True)
    out, hn = ops.rnn_layer(*args, relu, reverse)
    rout, rhn = reference.rnn_layer(*args, relu, reverse)
    assert_close(out, rout, torch.float64)
    assert_close(hn, rhn, torch.float64)
    go, gh = torch.randn_like(out), torch.randn_like(hn)
    leaves = [a for a in args if a is not None and a.requires_grad]
    g = torch.autograd.grad((out * go).sum() + (hn * gh).sum(), leaves)
    rg = torch.autograd.grad((rout * go).sum() + (rhn * gh).sum(), leaves)
    for a, b in zip(g, rg):
        assert_close(a, b, torch.float64)


# The CPU kernel picks a path per step by its work rows*H*H: up to 2^19 a
# single-threaded small GEMM, above it BLAS, above 2^21 split by columns of
# W_hh across threads (H = 515: slices of whole cache lines plus a ragged
# last one). These lengths give batch sizes 9, 6, 3, 1: the packed full-batch
# step, unpacked BLAS steps and a small step, met in both directions.
BIG_H = 515
BIG_LENGTHS = [4, 3, 3, 2, 2, 2, 1, 1, 1]


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("packed", [False, True])
def test_step_paths_and_thread_splits(packed, reverse, dtype, threads):
    torch.manual_seed(0)
    lengths = BIG_LENGTHS if packed else None
    args = make_case(4, len(BIG_LENGTHS), 7, BIG_H, "cpu", packed_lengths=lengths, grad=True)
    # float32 runs on the same values; the reference stays float64.
    ours = [a.detach().to(dtype).requires_grad_() if a is not None and a.is_floating_point() else a
            for a in args]
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out, hn = ops.rnn_layer(*ours, False, reverse)
        go, gh = torch.randn_like(out), torch.randn_like(hn)
        leaves = [a for a in ours if a is not None and a.requires_grad]
        g = torch.autograd.grad((out * go).sum() + (hn * gh).sum(), leaves)
    finally:
        torch.set_num_threads(prev)
    rout, rhn = reference.rnn_layer(*args, False, reverse)
    rleaves = [a for a in args if a is not None and a.requires_grad]
    rg = torch.autograd.grad((rout * go.double()).sum() + (rhn * gh.double()).sum(), rleaves)
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.double(), rout, **tol)
    torch.testing.assert_close(hn.double(), rhn, **tol)
    for a, b in zip(g, rg):
        torch.testing.assert_close(a.double(), b, **tol)


def test_packed_hn_is_state_at_each_sequence_end():
    """h_n of a packed batch holds each sequence's own last state, not step T's."""
    lengths = [4, 2, 1]
    args = make_case(None, 3, 3, 4, "cpu", packed_lengths=lengths)
    out, hn = ops.rnn_layer(*args)
    # Rows of the packed output at each sequence's final step.
    starts = torch.cumsum(torch.cat([torch.zeros(1, dtype=torch.long), args[1][:-1]]), 0)
    for b, L in enumerate(lengths):
        torch.testing.assert_close(hn[b], out[starts[L - 1] + b], rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("packed", [None, [3, 2, 2]])
def test_gradcheck(packed, reverse, bias, device):
    args = make_case(3, 2, 3, 4, device, packed_lengths=packed, bias=bias, grad=True)
    fn = lambda *a: ops.rnn_layer(*a, False, reverse)  # noqa: E731
    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_relu(device):
    args = make_case(4, 2, 3, 5, device, grad=True)
    assert torch.autograd.gradcheck(lambda *a: ops.rnn_layer(*a, True, False), args)


@pytest.mark.parametrize("device", DEVICES)
def test_only_some_inputs_need_grad(device):
    """need_input_grad / need_weight_grad skip work without changing the grads asked for."""
    x, bs, hx, w_ih, w_hh, b_ih, b_hh = make_case(3, 2, 3, 4, device)
    w_hh.requires_grad_(True)
    out, hn = ops.rnn_layer(x, bs, hx, w_ih, w_hh, b_ih, b_hh)
    (g,) = torch.autograd.grad(out.sum(), [w_hh])
    rout, _ = reference.rnn_layer(x, bs, hx, w_ih, w_hh, b_ih, b_hh)
    (rg,) = torch.autograd.grad(rout.sum(), [w_hh])
    assert_close(g, rg, torch.float64)
    x.requires_grad_(True)
    w_hh.requires_grad_(False)
    out, hn = ops.rnn_layer(x, bs, hx, w_ih, w_hh, b_ih, b_hh)
    (g,) = torch.autograd.grad(hn.sum(), [x])
    rout, rhn = reference.rnn_layer(x, bs, hx, w_ih, w_hh, b_ih, b_hh)
    (rg,) = torch.autograd.grad(rhn.sum(), [x])
    assert_close(g, rg, torch.float64)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("packed", [None, [3, 3, 1]])
@pytest.mark.parametrize("leaf", ["x", "hx", "w_ih", "w_hh", "b_ih", "b_hh", "w_hh+b_hh"])
def test_each_input_alone_gets_its_grad(leaf, packed, device):
    """The autograd kernel maps each argument to its graph edge (batch_sizes
    and the biases may be absent) and asks the kernel only for what is needed."""
    args = make_case(3, 3, 4, 5, device, packed_lengths=packed)
    names = ["x", "batch_sizes", "hx", "w_ih", "w_hh", "b_ih", "b_hh"]
    leaves = [args[names.index(n)].requires_grad_() for n in leaf.split("+")]
    out, hn = ops.rnn_layer(*args)
    rout, rhn = reference.rnn_layer(*args)
    loss = lambda o, h: (o * torch.linspace(-1, 1, o.numel(), **F64, device=device).view_as(o)).sum() + h.sum()  # noqa: E731
    g = torch.autograd.grad(loss(out, hn), leaves)
    rg = torch.autograd.grad(loss(rout, rhn), leaves)
    for a, b in zip(g, rg):
        assert_close(a, b, torch.float64)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("packed", [None, [3, 1]])
def test_opcheck(packed, device):
    args = make_case(3, 2, 3, 4, device, packed_lengths=packed, grad=True)
    torch.library.opcheck(torch.ops.rnnattn.rnn_forward, (*args, False, True))
    x, bs, hx, w_ih, w_hh, _, _ = [a.detach() if torch.is_tensor(a) else a for a in args]
    out, _ = ops.rnn_layer(x, bs, hx, w_ih, w_hh)
    for need in [(True, True), (False, True), (True, False)]:
        torch.library.opcheck(
            torch.ops.rnnattn.rnn_backward,
            (torch.randn_like(out), torch.randn_like(hx), x, bs, hx, w_ih, w_hh, out, False, False, *need),
        )


# --- both directions of a layer in one autograd node ------------------------


def bidirectional_reference(x, bs, hx_f, hx_b, w_f, w_b):
    out_f, h_f = reference.rnn_layer(x, bs, hx_f, *w_f, False, False)
    out_b, h_b = reference.rnn_layer(x, bs, hx_b, *w_b, False, True)
    return torch.cat([out_f, out_b], -1), h_f, h_b


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("packed", [None, [5, 4, 4, 2, 1]])
# Which inputs need grads, and which outputs the loss uses.
@pytest.mark.parametrize("grads", ["all", "input", "backward weights", "h_n only", "output only"])
def test_bidirectional_layer_matches_two_directions(grads, packed, bias, device):
    x, bs, hx_f, *w_f = make_case(5, 3, 4, 6, device, packed_lengths=packed, bias=bias)
    _, _, hx_b, *w_b = make_case(5, 3, 4, 6, device, packed_lengths=packed, bias=bias)
    leaves = {"all": [x, hx_f, hx_b, *w_f, *w_b], "input": [x], "backward weights": w_b,
              "h_n only": [x, hx_f, *w_f, *w_b], "output only": [x, hx_b, *w_f]}[grads]
    leaves = [t.requires_grad_() for t in leaves if t is not None]
    out, h_f, h_b = ops.rnn_bidirectional_layer(x, bs, hx_f, hx_b, w_f, w_b)
    rout, rh_f, rh_b = bidirectional_reference(x, bs, hx_f, hx_b, w_f, w_b)
    for a, b in [(out, rout), (h_f, rh_f), (h_b, rh_b)]:
        assert_close(a, b, torch.float64)

    def loss(o, hf, hb):
        terms = {"h_n only": [hf, hb], "output only": [o]}.get(grads, [o, hf, hb])
        return sum((t * torch.linspace(-1, 1, t.numel(), **F64, device=device).view_as(t)).sum()
                   for t in terms)

    g = torch.autograd.grad(loss(out, h_f, h_b), leaves)
    rg = torch.autograd.grad(loss(rout, rh_f, rh_b), leaves)
    for a, b in zip(g, rg):
        assert_close(a, b, torch.float64)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("packed", [None, [3, 2, 2]])
def test_gradcheck_bidirectional_layer(packed, device):
    x, bs, hx_f, *w_f = make_case(3, 2, 3, 4, device, packed_lengths=packed, grad=True)
    _, _, hx_b, *w_b = make_case(3, 2, 3, 4, device, packed_lengths=packed, grad=True)
    fn = lambda x, hf, hb, *w: ops.rnn_bidirectional_layer(x, bs, hf, hb, w[:4], w[4:])  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, hx_f, hx_b, *w_f, *w_b), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("packed", [None, [3, 3, 1]])
def test_backward_reads_row_strided_output_in_place(packed):
    """A direction's half of a (..., 2H) output, and of its grad, is passed to
    rnn_backward as a view with a row stride; other layouts are copied. Either
    way the grads equal those from contiguous tensors."""
    x, bs, hx, w_ih, w_hh, _, _ = make_case(3, 3, 4, 5, "cpu", packed_lengths=packed)
    out, _ = ops.rnn_layer(x, bs, hx, w_ih, w_hh)
    gout, gh = torch.randn_like(out), torch.randn_like(hx)
    H = out.shape[-1]

    def half_of_wide(t):  # t as the middle third of a wider tensor
        wide = torch.full((*t.shape[:-1], 3 * H), float("nan"), **F64)
        wide[..., H : 2 * H] = t
        return wide[..., H : 2 * H]

    def time_major_view_of_batch_major(t):  # uneven row strides
        return t.transpose(0, 1).contiguous().transpose(0, 1)

    layouts = [half_of_wide] + ([time_major_view_of_batch_major] if packed is None else [])
    want = torch.ops.rnnattn.rnn_backward(gout, gh, x, bs, hx, w_ih, w_hh, out, False, False, True, True)
    for layout in layouts:
        got = torch.ops.rnnattn.rnn_backward(
            layout(gout), gh, x, bs, hx, w_ih, w_hh, layout(out), False, False, True, True
        )
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)


def test_torch_compile_fullgraph():
    args = make_case(5, 3, 4, 6, "cpu", grad=True)

    def f(*a):
        out, hn = ops.rnn_layer(*a, False, False)
        return out.sum() + hn.sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(*args), f(*args))
    g1 = torch.autograd.grad(compiled(*args), [a for a in args if a is not None and a.requires_grad])
    g2 = torch.autograd.grad(f(*args), [a for a in args if a is not None and a.requires_grad])
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)


BAD = [
    # (description, mutate(args) -> args, message regex)
    ("input rank", lambda a: [a[0][0]] + a[1:], r"input must be \(T, B, input_size\)"),
    ("input size", lambda a: [a[0][..., :-1]] + a[1:], r"input.size\(-1\) = 2 must equal input_size = 3"),
    ("hx batch", lambda a: a[:2] + [a[2][:1]] + a[3:], r"hx batch size 1 does not match input batch size 2"),
    ("hx hidden", lambda a: a[:2] + [a[2][:, :3]] + a[3:], r"hx must be \(batch, 4\)"),
    ("w_hh shape", lambda a: a[:4] + [a[4][:3]] + a[5:], r"w_hh must be \(4, 4\)"),
    ("b_ih shape", lambda a: a[:5] + [a[5][:2]] + a[6:], r"b_ih must be \(4\)"),
    ("dtype", lambda a: a[:2] + [a[2].float()] + a[3:], r"hx has dtype Float but input has dtype Double"),
    ("one bias", lambda a: a[:6] + [None], r"b_ih and b_hh must both be given"),
    ("no steps", lambda a: [a[0][:0]] + a[1:], r"input must have at least one time step"),
]


@pytest.mark.parametrize("name,mutate,msg", BAD, ids=[b[0] for b in BAD])
def test_bad_arguments_raise_clear_errors(name, mutate, msg):
    args = make_case(3, 2, 3, 4, "cpu")
    with pytest.raises(RuntimeError, match=msg):
        ops.rnn_layer(*mutate(args))


@pytest.mark.parametrize(
    "batch_sizes,msg",
    [
        ([2, 3], r"batch_sizes\[1\] = 3 must be in \[1, 2\]"),
        ([2, 0], r"batch_sizes\[1\] = 0 must be in \[1, 2\]"),
        ([1, 1], r"batch_sizes\[0\] = 1 must equal the batch size of hx \(2\)"),
        ([2, 1, 1], r"sum\(batch_sizes\) = 4 must equal the number of packed input rows \(3\)"),
    ],
)
def test_bad_batch_sizes(batch_sizes, msg):
    _, _, hx, w_ih, w_hh, b_ih, b_hh = make_case(3, 2, 3, 4, "cpu")
    x = torch.randn(3, 3, **F64)
    with pytest.raises(RuntimeError, match=msg):
        ops.rnn_layer(x, torch.tensor(batch_sizes), hx, w_ih, w_hh, b_ih, b_hh)


def test_batch_sizes_must_be_int64_cpu():
    _, _, hx, w_ih, w_hh, b_ih, b_hh = make_case(3, 2, 3, 4, "cpu")
    with pytest.raises(RuntimeError, match="batch_sizes must be a 1-D int64 CPU tensor"):
        ops.rnn_layer(torch.randn(3, 3, **F64), torch.tensor([2, 1], dtype=torch.int32), hx, w_ih, w_hh, b_ih, b_hh)


def test_non_contiguous_inputs():
    x, bs, hx, w_ih, w_hh, b_ih, b_hh = make_case(4, 3, 5, 6, "cpu")
    xt = x.transpose(0, 1).contiguous().transpose(0, 1)  # same values, other strides
    w = w_hh.t().contiguous().t()
    out, hn = ops.rnn_layer(xt, bs, hx, w_ih, w, b_ih, b_hh)
    rout, rhn = reference.rnn_layer(x, bs, hx, w_ih, w_hh, b_ih, b_hh)
    assert_close(out, rout, torch.float64)
    assert_close(hn, rhn, torch.float64)


def test_nan_in_output_buffer_does_not_leak():
    """Every output element is written (the kernel never reads an uninitialised buffer)."""
    args = make_case(6, 4, 5, 7, "cpu")
    for _ in range(3):  # the caching allocator may hand the same blocks back
        junk = torch.full((6 * 4 * 7 * 4,), float("nan"), dtype=torch.float64)
        del junk
        out, hn = ops.rnn_layer(*args)
        assert torch.isfinite(out).all() and torch.isfinite(hn).all()


def test_float32_tanh_is_accurate_everywhere():
    """The vectorized float tanh of the CPU kernel (csrc/cpu/activation.cpp)
    stays within a few ulp of tanh over the whole range, and keeps NaN/inf."""
    z = torch.cat([
        torch.linspace(-20, 20, 400_001),
        torch.logspace(-30, 1.5, 20_000), -torch.logspace(-30, 1.5, 20_000),
        torch.tensor([0.0, -0.0, float("nan"), float("inf"), -float("inf"), 1e30, -1e30]),
    ])
    for c in z.split(2048):
        H = c.numel()
        # tanh(0 * x + 0 * h + b) with b = c: the kernel's activation of c.
        out, _ = ops.rnn_layer(torch.zeros(1, 1, 1), None, torch.zeros(1, H), torch.zeros(H, 1), torch.zeros(H, H),
                               c, torch.zeros(H))
        got, want = out.reshape(-1).double(), torch.tanh(c.double())
        assert torch.equal(torch.isnan(got), torch.isnan(want))
        ok = ~torch.isnan(want)
        nonzero = ok & (want != 0)  # 0 + (-0.0) is +0.0 before the kernel sees it
        assert torch.equal(torch.signbit(got[nonzero]), torch.signbit(want[nonzero]))
        ulp = (torch.nextafter(want.float(), torch.tensor(float("inf"))).double() - want.float().double()).abs()
        assert ((got - want).abs()[ok] <= 8 * ulp[ok]).all()


# --- double backward (create_graph=True) -------------------------------------

DOUBLE_CASES = {  # (T, B, I, H, packed lengths, bias, relu, reverse)
    "T1-B1": (1, 1, 1, 1, None, True, False, False),
    "odd-reverse": (3, 2, 3, 5, None, True, False, True),
    "no-bias-relu": (2, 3, 3, 2, None, False, True, False),
    "packed": (None, 3, 2, 3, [3, 2, 1], True, False, False),
    "packed-reverse-no-bias": (None, 3, 2, 3, [3, 3, 1], False, False, True),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", DOUBLE_CASES)
def test_gradgradcheck(case, device):
    T, B, I, H, lengths, bias, relu, reverse = DOUBLE_CASES[case]
    x, bs, hx, w_ih, w_hh, b_ih, b_hh = make_case(T, B, I, H, device, packed_lengths=lengths, bias=bias, grad=True)

    def fn(x, hx, w_ih, w_hh, *b):
        return ops.rnn_layer(x, bs, hx, w_ih, w_hh, *(b or (None, None)), relu, reverse)

    inputs = [t for t in (x, hx, w_ih, w_hh, b_ih, b_hh) if t is not None]
    assert torch.autograd.gradgradcheck(fn, inputs)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("packed", [None, [3, 2, 2]])
def test_gradgradcheck_bidirectional_layer(packed, device):
    x, bs, hx_f, *w_f = make_case(2, 2, 3, 3, device, packed_lengths=packed, grad=True)
    _, _, hx_b, *w_b = make_case(2, 2, 3, 3, device, packed_lengths=packed, grad=True)
    fn = lambda x, hf, hb, *w: ops.rnn_bidirectional_layer(x, bs, hf, hb, w[:4], w[4:])  # noqa: E731
    assert torch.autograd.gradgradcheck(fn, (x, hx_f, hx_b, *w_f, *w_b))


def ops_called(fn):
    """The rnnattn operators that ``fn()`` runs (profiler records)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.name for e in prof.events() if e.name.startswith("rnnattn::")}


def penalty_grads(layer, args, leaves, inputs):
    """A gradient penalty: g = d(out . u + h_n . v)/d(inputs) with
    create_graph=True, then the grads of sum(g**2) w.r.t. the leaves."""
    out, hn = layer(*args)
    u = torch.linspace(-1, 1, out.numel(), **F64).view_as(out)
    g = torch.autograd.grad((out * u).sum() + hn.sum(), inputs, create_graph=True)
    return g, torch.autograd.grad(sum((t**2).sum() for t in g), leaves)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_first_order_backward_stays_fused_double_backward_matches_reference(bidirectional):
    """Without create_graph the fused rnn_backward runs and its grads carry
    no graph; with it the differentiable op runs instead, with the same
    first-order grads, and the second-order grads are the reference's."""
    x, bs, hx, *w = make_case(4, 3, 3, 5, "cpu", grad=True)
    _, _, hx_b, *w_b = make_case(4, 3, 3, 5, "cpu", grad=True)
    leaves = [x, hx, *w] + ([hx_b, *w_b] if bidirectional else [])
    if bidirectional:
        def layer(x, hx, hx_b, *w):
            out, h_f, h_b = ops.rnn_bidirectional_layer(x, bs, hx, hx_b, w[:4], w[4:])
            return out, torch.stack([h_f, h_b])

        def ref(x, hx, hx_b, *w):
            out, h_f, h_b = bidirectional_reference(x, bs, hx, hx_b, w[:4], w[4:])
            return out, torch.stack([h_f, h_b])

        args = (x, hx, hx_b, *w, *w_b)
    else:
        layer = lambda *a: ops.rnn_layer(*a)  # noqa: E731
        ref = lambda *a: reference.rnn_layer(*a)  # noqa: E731
        args = (x, bs, hx, *w)

    def first_order():
        out, hn = layer(*args)
        first_order.grads = torch.autograd.grad(out.sum() + hn.sum(), leaves)

    assert ops_called(first_order) >= {"rnnattn::rnn_forward", "rnnattn::rnn_backward"}
    assert "rnnattn::rnn_backward_differentiable" not in ops_called(first_order)
    assert not any(g.requires_grad for g in first_order.grads)

    def second_order():
        second_order.result = penalty_grads(layer, args, leaves, [x, w[1]])

    called = ops_called(second_order)
    assert "rnnattn::rnn_backward_differentiable" in called and "rnnattn::rnn_backward" not in called
    g, gg = second_order.result
    rg, rgg = penalty_grads(ref, args, leaves, [x, w[1]])
    for a, b in zip(g + gg, rg + rgg):
        assert_close(a, b, torch.float64)


def test_double_backward_through_the_biases_alone():
    """Only the biases require grad: the grads still depend on them (through
    the pre-activations), so the penalty's grads must not come out zero."""
    x, bs, hx, w_ih, w_hh, b_ih, b_hh = make_case(3, 2, 3, 4, "cpu")
    for b in (b_ih, b_hh):
        b.requires_grad_()
    args = (x, bs, hx, w_ih, w_hh, b_ih, b_hh)
    g, gg = penalty_grads(ops.rnn_layer, args, [b_ih, b_hh], [b_ih])
    rg, rgg = penalty_grads(reference.rnn_layer, args, [b_ih, b_hh], [b_ih])
    assert gg[0].abs().max() > 1e-3
    for a, b in zip(g + gg, rg + rgg):
        assert_close(a, b, torch.float64)


def test_double_backward_with_an_argument_passed_twice():
    """w_ih is w_hh and b_ih is b_hh: each position gets its own grad, as in
    the first-order backward, and autograd sums them once."""
    x, bs, hx, _, w, b, _ = make_case(3, 2, 4, 4, "cpu")
    w.requires_grad_(), b.requires_grad_()
    args = (x, bs, hx, w, w, b, b)
    g, gg = penalty_grads(ops.rnn_layer, args, [w, b], [w, b])
    rg, rgg = penalty_grads(reference.rnn_layer, args, [w, b], [w, b])
    for a, b in zip(g + gg, rg + rgg):
        assert_close(a, b, torch.float64)


BASELINE_ISA_CHECK = """
import sys, torch
sys.path.insert(0, "tests")
from test_rnn_op import make_case
from rnnattn import ops, reference
torch.manual_seed(0)
# (T, B, H); (1, 1, ·) and (1, 3, ·): under 4 rows in all, W_hh read as stored (small_gemm_nt)
for T, B, H in [(5, 3, 7), (5, 3, 64), (5, 3, 65), (1, 1, 37), (1, 3, 20)]:
    for dtype, tol in ((torch.float32, 2e-5), (torch.float64, 1e-10)):
        for relu in (False, True):
            for reverse in (False, True):
                args = make_case(T, B, 4, H, "cpu", dtype)
                got = ops.rnn_layer(*args, relu, reverse)
                want = reference.rnn_layer(*args, relu, reverse)
                for a, b in zip(got, want):
                    torch.testing.assert_close(a, b, rtol=tol, atol=tol)
print("checked")
"""


@pytest.mark.parametrize("isa", CPU_ISAS)
def test_every_isa_build_matches_reference(isa):
    """Each build of the CPU kernels (baseline, AVX2, AVX-512; RNNATTN_CPU_ISA
    forces one) must agree with the reference."""
    run_under_isa(isa, BASELINE_ISA_CHECK, "checked")

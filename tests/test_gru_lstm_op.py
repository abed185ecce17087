"""The fused GRU and LSTM layer ops against the plain-PyTorch reference.

One tester for both cells: a case is the op's positional arguments, built by
``make_case``; ``run(cell, args, reverse)`` calls ``rnnattn.ops`` or
``rnnattn.reference`` with the same arguments."""

import pytest
import torch
from torch.nn.utils.rnn import pack_sequence

from conftest import CPU_ISAS, SHAPES, run_under_isa

from rnnattn import ops, reference

GATES = {"gru": 3, "lstm": 4}
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=2e-5, atol=2e-5)}


def make_case(cell, T, B, I, H, dtype=torch.float64, lengths=None, bias=True, proj=0, grad=True):
    """Positional arguments of ops.gru_layer / ops.lstm_layer (without reverse).
    Weights scaled so the gates are neither saturated nor linear."""
    g = dict(dtype=dtype)
    if lengths is not None:
        B = len(lengths)
    G = GATES[cell]
    Hs = proj or H
    w_ih = torch.randn(G * H, I, **g) / I**0.5
    w_hh = torch.randn(G * H, Hs, **g) / Hs**0.5
    b_ih = torch.randn(G * H, **g) * 0.3 if bias else None
    b_hh = torch.randn(G * H, **g) * 0.3 if bias else None
    hx = torch.randn(B, Hs, **g) * 0.5
    if lengths is None:
        x, bs = torch.randn(T, B, I, **g), None
    else:
        p = pack_sequence([torch.randn(L, I, **g) for L in lengths], enforce_sorted=True)
        x, bs = p.data, p.batch_sizes
    if cell == "gru":
        args = [x, bs, hx, w_ih, w_hh, b_ih, b_hh]
    else:
        cx = torch.randn(B, H, **g) * 0.5
        w_hr = torch.randn(proj, H, **g) / H**0.5 if proj else None
        args = [x, bs, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr]
    if grad:
        for a in args:
            if a is not None and a.is_floating_point():
                a.requires_grad_(True)
    return args


def run(cell, args, reverse, impl=ops):
    fn = impl.gru_layer if cell == "gru" else impl.lstm_layer
    return fn(*args, reverse=reverse) if impl is reference else fn(*args, reverse)


def leaves(args):
    return [a for a in args if a is not None and a.requires_grad]


def check_against_reference(cell, args, reverse, dtype, ref_args=None):
    """Outputs and every grad of ops vs reference (reference in float64 when
    ref_args are the float64 originals)."""
    ref_args = ref_args if ref_args is not None else args
    outs = run(cell, args, reverse)
    routs = run(cell, ref_args, reverse, reference)
    tol = TOL[dtype]
    for o, r in zip(outs, routs):
        assert o.shape == r.shape
        torch.testing.assert_close(o.double(), r.double(), **tol)
    ws = [torch.randn_like(r) for r in routs]
    g = torch.autograd.grad(sum((o * w.to(o.dtype)).sum() for o, w in zip(outs, ws)), leaves(args))
    rg = torch.autograd.grad(sum((o * w).sum() for o, w in zip(routs, ws)), leaves(ref_args))
    assert len(g) == len(rg)
    for a, b in zip(g, rg):
        torch.testing.assert_close(a.double(), b.double(), **tol)


PACKED = [[1], [3, 3, 1], [5, 4, 4, 2, 1], [6, 1]]


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_padded_matches_reference(shape, reverse, dtype, cell):
    T, B, I, H = shape
    args = make_case(cell, T, B, I, H, dtype)
    check_against_reference(cell, args, reverse, dtype)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("lengths", PACKED)
def test_packed_matches_reference(lengths, bias, reverse, cell):
    args = make_case(cell, None, None, 5, 6, lengths=lengths, bias=bias)
    check_against_reference(cell, args, reverse, torch.float64)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("lengths", [None, [5, 4, 4, 2, 1]])
@pytest.mark.parametrize("shape", [(1, 1, 3, 5, 1), (4, 3, 5, 7, 3), (3, 2, 4, 66, 17)])
def test_lstm_projection_matches_reference(shape, lengths, reverse):
    T, B, I, H, P = shape
    args = make_case("lstm", T, B, I, H, lengths=lengths, proj=P)
    check_against_reference("lstm", args, reverse, torch.float64)


# Per step the kernel picks small_gemm (rows * k * H <= 2^19 per gate block),
# else BLAS split by hidden units across threads (above 2^21 multiply-adds
# in all), the full-batch steps with W_hh packed where that pays. These
# lengths give batch sizes 12, 8, 4, 1 at H = 259: the full-batch step split
# in two parts, an unpacked BLAS step and small steps, met in both
# directions; odd H gives ragged unit slices.
BIG_H = 259
BIG_LENGTHS = [4, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1]


def check_on_threads(cell, args, reverse, threads, dtype):
    """The op's outputs and grads on `threads` threads in `dtype` against the
    reference in float64."""
    ours = [a.detach().to(dtype).requires_grad_() if a is not None and a.is_floating_point() else a
            for a in args]
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=2e-4, atol=2e-4)
        outs = run(cell, ours, reverse)
        ws = [torch.randn_like(o) for o in outs]
        g = torch.autograd.grad(sum((o * w).sum() for o, w in zip(outs, ws)), leaves(ours))
    finally:
        torch.set_num_threads(prev)
    routs = run(cell, args, reverse, reference)
    rg = torch.autograd.grad(sum((o * w.double()).sum() for o, w in zip(routs, ws)), leaves(args))
    for o, r in zip(outs, routs):
        torch.testing.assert_close(o.double(), r, **tol)
    for a, b in zip(g, rg):
        torch.testing.assert_close(a.double(), b, **tol)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("packed", [False, True])
def test_step_paths_and_thread_splits(packed, reverse, dtype, threads, cell):
    lengths = BIG_LENGTHS if packed else None
    args = make_case(cell, 4, len(BIG_LENGTHS), 7, BIG_H, lengths=lengths)
    check_on_threads(cell, args, reverse, threads, dtype)


# A cell's large steps pack W_hh with MKL (float32 only) where the packed
# operands fit the call's budget (recurrence.h, packed_rows). On one thread
# at H = 259 a forward packs 3 (GRU) or 4 (LSTM) operands of about 9 MiB
# each; its budget, the reserve, is 4H or 5H values a row: these 7700-8200
# rows hold 32-42 MB. Packed input: the later steps have fewer rows than the
# packed operand's and call sgemm instead.
@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("packed", [False, True])
def test_large_steps_with_w_hh_packed(packed, reverse, cell):
    lengths = [64] * 100 + list(range(60, 32, -1)) if packed else None
    args = make_case(cell, 64, 128, 7, BIG_H, lengths=lengths)
    check_on_threads(cell, args, reverse, 1, torch.float32)


# Small steps of at least 2^19 multiply-adds split their units across the
# threads (recurrence.h, small_parts), and a run of them is walked in one
# parallel region with a barrier between steps (unit_parts.h,
# walk_unit_parts; not in the AVX-512 build, so on an AVX-512 CPU
# test_every_isa_build_matches_reference runs these cases in the others).
# At H = 200 these shapes make every step such a step
# when padded (7 in a row, forward and backward); packed, the batch falls
# 12, 10, 9, 7, 5, 3, 2 rows: a run of 5 split steps whose rows end within
# the run, then single-threaded ones (reversed: the other way round). On 2
# and 3 threads (3 slices of the units).
SPLIT_LENGTHS = [7, 7, 6, 5, 5, 4, 4, 3, 3, 2, 1, 1]


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("packed", [False, True])
def test_runs_of_split_small_steps(packed, reverse, threads, cell):
    lengths = SPLIT_LENGTHS if packed else None
    args = make_case(cell, 7, 12, 5, 200, lengths=lengths)
    check_on_threads(cell, args, reverse, threads, torch.float64)


# Where the steps are single-threaded small steps and the input GEMM is >=
# 2^21 multiply-adds in all, the walk goes in chunks while a second thread
# runs the next chunk's input GEMM (forward, I <= 2H) and the chunk before's
# dX and dW_ih (backward, I <= H) (recurrence.h, overlap_steps). These
# shapes take both (8 rows a step, chunks of 8 steps) for all three cells,
# padded and packed (unsorted), both directions, with and without grad
# (GRU/LSTM inference overlaps up to 32 steps; beyond, A is made per 32-step
# chunk instead), against torch's modules in float64.
OVERLAP_IH = {"RNN": (128, 128), "GRU": (128, 128), "LSTM": (96, 96)}  # (I, H)
def module_matches_torch_on_threads(cell, I, H, x, lengths, packed, grad, threads, h0=False):
    """rnnattn's bidirectional module `cell` (RNN/GRU/LSTM) against torch's
    with the same weights, in float64 at 1e-10: outputs, final states and,
    with grad, the grads of the input and every weight. rnnattn's forward and
    backward run on `threads` threads; the batch is packed (unsorted, these
    lengths) or padded; the initial state random (h0) or zero."""
    import rnnattn
    from torch.nn.utils.rnn import pack_padded_sequence

    ours = getattr(rnnattn, cell)(I, H, bidirectional=True).double()
    ref = getattr(torch.nn, cell)(I, H, bidirectional=True).double()
    ref.load_state_dict(ours.state_dict())
    state0 = None
    if h0:
        state0 = torch.randn(2, x.shape[1], H, dtype=x.dtype)
        if cell == "LSTM":
            state0 = (state0, torch.randn(2, x.shape[1], H, dtype=x.dtype))

    def call(module, xin):
        inp = pack_padded_sequence(xin, lengths, enforce_sorted=False) if packed else xin
        out, state = module(inp, state0)
        out = out.data if packed else out
        return [out] + (list(state) if isinstance(state, tuple) else [state])

    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        xo = x.clone().requires_grad_(grad)
        with torch.set_grad_enabled(grad):
            outs = call(ours, xo)
            if grad:
                ws = [torch.randn_like(o) for o in outs]
                g = torch.autograd.grad(sum((o * w).sum() for o, w in zip(outs, ws)),
                                        [xo, *ours.parameters()])
    finally:
        torch.set_num_threads(prev)
    xr = x.clone().requires_grad_(grad)
    with torch.set_grad_enabled(grad):
        routs = call(ref, xr)
    for o, r in zip(outs, routs):
        torch.testing.assert_close(o, r, rtol=1e-10, atol=1e-10)
    if grad:
        rg = torch.autograd.grad(sum((r * w).sum() for r, w in zip(routs, ws)), [xr, *ref.parameters()])
        for a, b in zip(g, rg):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("cell", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("T", [30, 41])
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("grad", [False, True])
def test_input_gemm_overlapped_with_the_walk(grad, packed, T, cell):
    torch.manual_seed(0)
    B, (I, H) = 8, OVERLAP_IH[cell]
    x = torch.randn(T, B, I, dtype=torch.float64)
    lengths = torch.tensor([T, T - 3, T, 5, T - 1, 1, T - 7, 9])
    module_matches_torch_on_threads(cell, I, H, x, lengths, packed, grad, threads=2)


# From 16 rows a step, small steps are walked with the batch rows split
# into one contiguous block per thread (cut to balance the row-steps of a
# packed batch), each thread walking every step on its own rows
# (recurrence.h, row_parts, row_blocks), forward and backward. Batches of 20
# and 24 rows on 2 and 3 threads (2 or 3 blocks), padded and packed
# (unsorted, sequences ending at different steps in every block), both directions,
# T past one 32-step chunk of A (inference), with and without grad, h0 zero
# or given, against torch's modules in float64; H not a multiple of the
# vector width.
@pytest.mark.parametrize("cell", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("B,threads", [(20, 2), (24, 3)])
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("h0", [False, True])
def test_batch_rows_walked_on_separate_threads(h0, grad, packed, B, threads, cell):
    torch.manual_seed(0)
    T, I, H = 37, 6, {"RNN": 70, "GRU": 45, "LSTM": 37}[cell]
    x = torch.randn(T, B, I, dtype=torch.float64)
    lengths = torch.tensor([T - (5 * k) % 23 for k in range(B)])
    module_matches_torch_on_threads(cell, I, H, x, lengths, packed, grad, threads, h0)


def test_packed_final_states_are_each_sequence_end():
    """h_n / c_n of a packed batch hold each sequence's own last state."""
    lengths = [4, 2, 1]
    for cell in ("gru", "lstm"):
        args = make_case(cell, None, None, 3, 4, lengths=lengths, grad=False)
        out, hn = run(cell, args, False)[:2]
        starts = torch.cumsum(torch.cat([torch.zeros(1, dtype=torch.long), args[1][:-1]]), 0)
        for b, L in enumerate(lengths):
            torch.testing.assert_close(hn[b], out[starts[L - 1] + b], rtol=0, atol=0)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("packed", [None, [3, 2, 2]])
def test_gradcheck(packed, reverse, bias, cell):
    args = make_case(cell, 3, 2, 3, 4, lengths=packed, bias=bias)
    assert torch.autograd.gradcheck(lambda *a: run(cell, list(a), reverse), args, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("packed", [None, [3, 2, 2]])
def test_gradcheck_lstm_projection(packed):
    args = make_case("lstm", 3, 2, 3, 5, lengths=packed, proj=2)
    assert torch.autograd.gradcheck(lambda *a: run("lstm", list(a), True), args, eps=1e-6, atol=1e-7, rtol=1e-5)


NAMES = {
    "gru": ["x", "batch_sizes", "hx", "w_ih", "w_hh", "b_ih", "b_hh"],
    "lstm": ["x", "batch_sizes", "hx", "cx", "w_ih", "w_hh", "b_ih", "b_hh", "w_hr"],
}


@pytest.mark.parametrize(
    "cell,leaf",
    [("gru", n) for n in ["x", "hx", "w_ih", "w_hh", "b_ih", "b_hh", "w_hh+b_hh"]]
    + [("lstm", n) for n in ["x", "hx", "cx", "w_ih", "w_hh", "b_ih", "b_hh", "w_hr", "b_ih+b_hh"]],
)
@pytest.mark.parametrize("packed", [None, [3, 3, 1]])
def test_each_input_alone_gets_its_grad(leaf, packed, cell):
    """The autograd kernel maps each argument to its graph edge (batch_sizes,
    the biases and w_hr may be absent) and asks the kernel only for what is needed."""
    args = make_case(cell, 3, 3, 4, 5, lengths=packed, proj=2 if cell == "lstm" else 0, grad=False)
    want = [args[NAMES[cell].index(n)].requires_grad_() for n in leaf.split("+")]
    outs = run(cell, args, False)
    routs = run(cell, args, False, reference)

    def loss(os):
        return sum((o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view_as(o)).sum() for o in os)

    g = torch.autograd.grad(loss(outs), want)
    rg = torch.autograd.grad(loss(routs), want)
    for a, b in zip(g, rg):
        torch.testing.assert_close(a, b, **TOL[torch.float64])
    if leaf == "b_ih+b_hh":
        assert g[0].data_ptr() != g[1].data_ptr()  # their .grad buffers must not alias


@pytest.mark.parametrize(
    "cell,used", [("gru", "output"), ("gru", "h_n")] + [("lstm", u) for u in ["output", "h_n", "c_n", "h_n+c_n"]]
)
@pytest.mark.parametrize("packed", [None, [3, 3, 1]])
def test_backward_from_some_outputs(used, cell, packed):
    """The autograd kernels do not materialize grads (the reserve would get a
    zero grad as large as itself): outputs left unused get zeros only where
    the fused backward reads them."""
    names = ["output", "h_n", "c_n"]
    args = make_case(cell, 4, 3, 3, 5, lengths=packed)
    outs, routs = run(cell, args, True), run(cell, args, True, reference)
    pick = [names.index(n) for n in used.split("+")]
    g = torch.autograd.grad(sum((outs[i] * (i + 2)).sum() for i in pick), leaves(args))
    rg = torch.autograd.grad(sum((routs[i] * (i + 2)).sum() for i in pick), leaves(args))
    for a, b in zip(g, rg):
        torch.testing.assert_close(a, b, **TOL[torch.float64])


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("packed", [None, [3, 2, 2]])
def test_opcheck(packed, cell):
    args = make_case(cell, 3, 2, 3, 4, lengths=packed, grad=True)
    op = torch.ops.rnnattn.gru_forward if cell == "gru" else torch.ops.rnnattn.lstm_forward
    torch.library.opcheck(op, (*args, True))
    torch.library.opcheck(op, (*args, True, False))  # inference: an empty reserve
    outs = [o.detach() for o in op(*args, False)]
    d = [a.detach() if torch.is_tensor(a) else a for a in args]
    for need_input, need_weight in [(True, True), (False, True), (True, False), (False, False)]:
        if cell == "gru":
            x, bs, hx, w_ih, w_hh = d[:5]
            bargs = (torch.randn_like(outs[0]), torch.randn_like(outs[1]), x, bs, hx, w_ih, w_hh, outs[0],
                     outs[2], False, need_input, need_weight)
            torch.library.opcheck(torch.ops.rnnattn.gru_backward, bargs)
        else:
            x, bs, hx, cx, w_ih, w_hh, _, _, w_hr = d
            bargs = (torch.randn_like(outs[0]), torch.randn_like(outs[1]), torch.randn_like(outs[2]), x, bs, hx, cx,
                     w_ih, w_hh, w_hr, outs[0], outs[3], False, need_input, need_weight)
            torch.library.opcheck(torch.ops.rnnattn.lstm_backward, bargs)


def test_opcheck_lstm_projection():
    args = make_case("lstm", 3, 2, 3, 5, proj=3)
    torch.library.opcheck(torch.ops.rnnattn.lstm_forward, (*args, False))


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_torch_compile_fullgraph(cell):
    args = make_case(cell, 4, 3, 5, 6, grad=True)
    fn = torch.compile(lambda *a: run(cell, list(a), False), fullgraph=True, backend="aot_eager")
    outs = fn(*args)
    routs = run(cell, args, False, reference)
    for o, r in zip(outs, routs):
        torch.testing.assert_close(o, r, **TOL[torch.float64])
    g = torch.autograd.grad(sum(o.sum() for o in outs), leaves(args))
    rg = torch.autograd.grad(sum(o.sum() for o in routs), leaves(args))
    for a, b in zip(g, rg):
        torch.testing.assert_close(a, b, **TOL[torch.float64])


def _set(args, cell, name, value):
    args = list(args)
    args[NAMES[cell].index(name)] = value
    return args


@pytest.mark.parametrize(
    "cell,name,make,msg",
    [
        ("gru", "w_ih", lambda a: a[3][:-1], r"w_ih must be \(3\*hidden_size, input_size\)"),
        ("gru", "w_hh", lambda a: a[4][:, :-1], r"w_hh must be \(18, 6\)"),
        ("gru", "b_hh", lambda a: a[6][:-1], r"b_hh must be \(18\)"),
        ("gru", "hx", lambda a: a[2][:, :-1], r"hx must be \(batch, 6\)"),
        ("lstm", "cx", lambda a: a[3][:, :-1], r"cx must be \(2, 6\)"),
        ("lstm", "w_hr", lambda a: torch.randn(7, 6, dtype=torch.float64), r"w_hr must be \(proj_size, 6\)"),
        ("lstm", "w_ih", lambda a: a[4].float(), r"w_ih has dtype Float but input has dtype Double"),
        ("lstm", "w_ih", lambda a: a[4][:-2], r"w_ih must be \(4\*hidden_size, input_size\)"),
    ],
)
def test_bad_arguments_raise_clear_errors(cell, name, make, msg):
    args = make_case(cell, 3, 2, 4, 6, grad=False)
    with pytest.raises(RuntimeError, match=msg):
        run(cell, _set(args, cell, name, make(args)), False)


def test_reserve_of_the_wrong_shape_is_rejected():
    args = make_case("gru", 3, 2, 4, 6, grad=False)
    out, hn, reserve = torch.ops.rnnattn.gru_forward(*args, False)
    x, bs, hx, w_ih, w_hh = args[:5]
    with pytest.raises(RuntimeError, match=r"reserve must be the contiguous \(6, 24\)"):
        torch.ops.rnnattn.gru_backward(out, hn, x, bs, hx, w_ih, w_hh, out, reserve[:, :-1], False, True, True)


# ---- double backward (create_graph=True) ----------------------------------------

DOUBLE_CASES = {  # (T, B, I, H, packed lengths, bias, proj, reverse)
    "T1-B1": (1, 1, 1, 1, None, True, 0, False),
    "odd-reverse": (3, 2, 3, 3, None, True, 0, True),
    "no-bias": (2, 3, 2, 2, None, False, 0, False),
    "packed-reverse": (None, None, 2, 2, [3, 2, 1], True, 0, True),
    "proj": (2, 2, 3, 3, None, True, 2, False),
    "packed-proj-no-bias": (None, None, 2, 3, [2, 2, 1], False, 1, True),
}


@pytest.mark.parametrize(
    "cell,case", [(c, k) for c in ("gru", "lstm") for k, v in DOUBLE_CASES.items() if c == "lstm" or not v[6]]
)
def test_gradgradcheck(case, cell):
    T, B, I, H, lengths, bias, proj, reverse = DOUBLE_CASES[case]
    args = make_case(cell, T, B, I, H, lengths=lengths, bias=bias, proj=proj)
    where = [i for i, a in enumerate(args) if a is not None and a.requires_grad]

    def fn(*tensors):
        full = list(args)
        for i, t in zip(where, tensors):
            full[i] = t
        return run(cell, full, reverse)[: 2 if cell == "gru" else 3]

    assert torch.autograd.gradgradcheck(fn, [args[i] for i in where])


def _ops_called(fn):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.name for e in prof.events() if e.name.startswith("rnnattn::")}


def _penalty_grads(cell, args, impl, inputs):
    """Gradient penalty: g = d(loss)/d(inputs) with create_graph=True, then
    the grads of sum(g**2) w.r.t. every leaf."""
    outs = run(cell, args, False, impl)
    loss = sum((o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view_as(o)).sum() for o in outs)
    g = torch.autograd.grad(loss, inputs, create_graph=True)
    return list(g) + list(torch.autograd.grad(sum((t**2).sum() for t in g), leaves(args)))


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_first_order_backward_stays_fused_double_backward_matches_reference(cell):
    """Without create_graph the fused backward runs (its grads carry no
    graph); with it the differentiable op, and the second-order grads are the
    reference's."""
    args = make_case(cell, 3, 2, 3, 4, proj=2 if cell == "lstm" else 0)

    def first_order():
        first_order.grads = torch.autograd.grad(run(cell, args, False)[0].sum(), leaves(args))

    called = _ops_called(first_order)
    assert f"rnnattn::{cell}_backward" in called and f"rnnattn::{cell}_backward_differentiable" not in called
    assert not any(g.requires_grad for g in first_order.grads)

    def second_order():
        second_order.grads = _penalty_grads(cell, args, ops, [args[0], args[4]])

    called = _ops_called(second_order)
    assert f"rnnattn::{cell}_backward_differentiable" in called and f"rnnattn::{cell}_backward" not in called
    want = _penalty_grads(cell, args, reference, [args[0], args[4]])
    for a, b in zip(second_order.grads, want):
        torch.testing.assert_close(a, b, **TOL[torch.float64])
    # The first-order grads are the fused backward's.
    for a, b in zip(first_order.grads, torch.autograd.grad(run(cell, args, False)[0].sum(), leaves(args),
                                                           create_graph=True)):
        torch.testing.assert_close(a, b, **TOL[torch.float64])


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_double_backward_through_the_biases_alone(cell):
    """Only the biases require grad: the grads still depend on them."""
    args = make_case(cell, 3, 2, 3, 4, grad=False)
    i = NAMES[cell].index("b_ih")
    b = [args[i].requires_grad_(), args[i + 1].requires_grad_()]
    got = _penalty_grads(cell, args, ops, b)
    want = _penalty_grads(cell, args, reference, b)
    assert got[-1].abs().max() > 1e-3
    for a, r in zip(got, want):
        torch.testing.assert_close(a, r, **TOL[torch.float64])


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_non_contiguous_inputs(cell):
    args = make_case(cell, 4, 3, 5, 6, grad=False)
    x = args[0]
    xt = x.transpose(0, 1).contiguous().transpose(0, 1)  # same values, other strides
    assert not xt.is_contiguous()
    a = run(cell, [xt] + args[1:], False)
    b = run(cell, args, False)
    for o, r in zip(a, b):
        torch.testing.assert_close(o, r, rtol=0, atol=0)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize(
    "shape,lengths",
    [((1, 1, 1, 1), None), ((7, 3, 5, 9), None), ((4, 9, 7, BIG_H), None), (None, BIG_LENGTHS)]
    # Over 32 steps A is computed in chunks of 32 steps: one step over, a
    # partial last chunk, the parallel large steps, packed rows across chunks.
    + [((32, 2, 3, 5), None), ((33, 2, 3, 5), None), ((70, 3, 5, 9), None), ((40, 9, 7, BIG_H), None)]
    + [((None, None, 3, 6), [70, 41, 33, 32, 5, 1])],
)
def test_inference_keeps_no_reserve_and_matches_reference(shape, lengths, reverse, dtype, cell):
    """With grad mode off the layer runs the forward with train=False: no
    reserve kept (the GRU's R_n in step scratch, the LSTM's c_t not stored;
    A made for 32 steps at a time), the same results."""
    T, B, I, H = shape if shape is not None else (None, None, 7, BIG_H)
    args = make_case(cell, T, B, I, H, lengths=lengths, grad=False)
    ours = [a.to(dtype) if a is not None and a.is_floating_point() else a for a in args]
    with torch.no_grad():
        outs = run(cell, ours, reverse)
        raw = (torch.ops.rnnattn.gru_forward if cell == "gru" else torch.ops.rnnattn.lstm_forward)(*ours, reverse, False)
    assert raw[-1].numel() == 0  # the reserve
    routs = run(cell, args, reverse, reference)
    tol = TOL[torch.float64] if dtype == torch.float64 else dict(rtol=2e-4, atol=2e-4)
    for o, r in zip(outs, routs):
        torch.testing.assert_close(o.double(), r, **tol)


BASELINE_ISA_CHECK = """
import sys, torch
sys.path.insert(0, "tests")
from test_gru_lstm_op import check_against_reference, make_case
torch.manual_seed(0)
torch.set_num_threads(2)  # the small steps' unit split (B=8, H=128) runs in parts
for cell in ("gru", "lstm"):
    # (T, B): the small-step path; under 4 rows in all, W_hh read as stored (small_gemm_nt)
    # (4, 12, 259): large steps, split by units (BLAS calls, then the build's pointwise)
    for (T, B, H) in [(5, 3, 7), (5, 3, 64), (5, 3, 65), (1, 1, 37), (1, 3, 20), (4, 8, 128),
                      (4, 12, 259)]:
        for dtype in (torch.float64, torch.float32):
            for reverse in (False, True):
                args = make_case(cell, T, B, 4, H, dtype)
                check_against_reference(cell, args, reverse, dtype)
# Runs of small steps split across threads (the AVX-512 build keeps small
# steps on one thread, so on such a CPU the other builds cover the split).
from test_gru_lstm_op import test_runs_of_split_small_steps
for cell in ("gru", "lstm"):
    for threads in (2, 3):
        for reverse in (False, True):
            for packed in (False, True):
                test_runs_of_split_small_steps(packed, reverse, threads, cell)
print("checked")
"""


@pytest.mark.parametrize("isa", CPU_ISAS)
def test_every_isa_build_matches_reference(isa):
    """Each build of the CPU kernels (small GEMM in both layouts, the gates'
    sigmoid/tanh; RNNATTN_CPU_ISA forces one): the GRU and LSTM must agree
    with the reference there."""
    run_under_isa(isa, BASELINE_ISA_CHECK, "checked")


# On 2 threads, where dW_hh's multiply-adds are within 1.5x of dX's and
# dW_ih's together (Hs against 2I a row), the backward runs dW_hh and the
# bias grads on one thread and dX and dW_ih on the other (recurrence.h,
# side_by_side): here 2I = 38 against H = 37, padded and packed (unsorted),
# against torch's modules in float64, every grad.
@pytest.mark.parametrize("cell", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("packed", [False, True])
def test_weight_grads_side_by_side_on_two_threads(packed, cell):
    torch.manual_seed(0)
    T, B, I, H = 9, 5, 19, 37
    x = torch.randn(T, B, I, dtype=torch.float64)
    lengths = torch.tensor([7, 9, 2, 9, 5])
    module_matches_torch_on_threads(cell, I, H, x, lengths, packed, True, threads=2)

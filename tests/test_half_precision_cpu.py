"""bfloat16 and float16 on the CPU: the layer ops, the cells, the modules and the
pooling run the fused kernels, in float32 inside, with their results and what the
backward keeps (output, reserve) in the input's dtype (csrc/cpu/half.h); the layer
ops convert one chunk of steps at a time (half_layer.h), the pooling one slice of
the batch (attention.cpp).

The yardstick is the float64 computation from the same half-precision inputs and
weights: the fused results may differ from it by the final rounding to the dtype
(and the backward by the rounding of what it keeps), and must be at least as close
to it as torch's own modules in that dtype."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import rnnattn
from rnnattn import attention_ops as A
from rnnattn import ops, reference

HALF = [torch.bfloat16, torch.float16]
# Outputs: one rounding to the dtype (2^-8 relative for bfloat16, 2^-11 for
# float16). Grads: the backward also reads the saved output and gates rounded
# to the dtype, over several steps. bfloat16 on a CPU with AVX512-BF16 also
# rounds h_{t-1} to bfloat16 in each step's recurrent product (as torch's
# bfloat16 modules do; csrc/cpu/small_gemm_bf16.h): up to two units in the
# last place after many steps.
OUT_TOL = {torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2), torch.float16: dict(rtol=1e-3, atol=1e-3)}
GRAD_TOL = {torch.bfloat16: dict(rtol=4e-2, atol=4e-2), torch.float16: dict(rtol=6e-3, atol=6e-3)}
GATES = {"rnn": 1, "gru": 3, "lstm": 4}


def layer_case(cell, T, B, I, H, dtype, lengths=None, proj=0):
    """Positional arguments of ops.<cell>_layer in dtype (requiring grad)."""
    G, Hs = GATES[cell], proj or H
    args = {
        "w_ih": torch.randn(G * H, I) / I**0.5,
        "w_hh": torch.randn(G * H, Hs) / Hs**0.5,
        "b_ih": torch.randn(G * H) * 0.3,
        "b_hh": torch.randn(G * H) * 0.3,
        "hx": torch.randn(B if lengths is None else len(lengths), Hs) * 0.5,
    }
    if lengths is None:
        x, bs = torch.randn(T, B, I), None
    else:
        p = nn.utils.rnn.pack_sequence([torch.randn(n, I) for n in lengths])
        x, bs = p.data, p.batch_sizes
    h = lambda t: t.to(dtype).requires_grad_()  # noqa: E731
    if cell == "lstm":
        cx = torch.randn(args["hx"].shape[0], H) * 0.5
        w_hr = torch.randn(proj, H) / H**0.5 if proj else None
        return [h(x), bs, h(args["hx"]), h(cx), h(args["w_ih"]), h(args["w_hh"]), h(args["b_ih"]),
                h(args["b_hh"]), h(w_hr) if proj else None]
    return [h(x), bs, h(args["hx"]), h(args["w_ih"]), h(args["w_hh"]), h(args["b_ih"]), h(args["b_hh"])]


def as_float64(args):
    return [a.detach().double().requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
            for a in args]


def run_layer(cell, args, impl):
    fn = getattr(impl, f"{cell}_layer")
    if cell == "rnn":  # relu=False, reverse=True
        return fn(*args, False, True)
    return fn(*args, True) if impl is ops else fn(*args, reverse=True)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize(
    "cell,shape,lengths,proj",
    [
        ("rnn", (6, 3, 5, 9), None, 0),
        ("rnn", (None, None, 4, 33), [5, 3, 1], 0),
        ("gru", (6, 3, 5, 9), None, 0),
        ("gru", (None, None, 4, 17), [5, 3, 1], 0),
        ("lstm", (6, 3, 5, 9), None, 0),
        ("lstm", (None, None, 4, 17), [5, 3, 1], 3),
        ("lstm", (40, 2, 3, 6), None, 0),  # inference: A in chunks of 32 steps
    ],
)
def test_layer_ops_in_half_precision(cell, shape, lengths, proj, dtype):
    T, B, I, H = shape
    args = layer_case(cell, T, B, I, H, dtype, lengths, proj)
    ref_args = as_float64(args)
    outs, routs = run_layer(cell, args, ops), run_layer(cell, ref_args, reference)
    for o, r in zip(outs, routs):
        assert o.dtype == dtype
        torch.testing.assert_close(o.double(), r, **OUT_TOL[dtype])
    with torch.no_grad():
        for o, r in zip(run_layer(cell, args, ops), routs):
            torch.testing.assert_close(o.double(), r, **OUT_TOL[dtype])
    ws = [torch.randn_like(r) for r in routs]
    leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    rleaves = [a for a in ref_args if isinstance(a, torch.Tensor) and a.requires_grad]
    g = torch.autograd.grad(sum((o * w.to(dtype)).sum() for o, w in zip(outs, ws)), leaves)
    rg = torch.autograd.grad(sum((o * w.to(dtype).double()).sum() for o, w in zip(routs, ws)), rleaves)
    for a, b in zip(g, rg):
        assert a.dtype == dtype
        torch.testing.assert_close(a.double(), b, **GRAD_TOL[dtype])


def _transposed_layout(t):
    """The same values stored column-major (a weight built as W^T and
    transposed back, a state sliced from a (H, B) buffer): not contiguous."""
    if not isinstance(t, torch.Tensor) or t.dim() != 2:
        return t
    return t.detach().T.contiguous().T.requires_grad_(t.requires_grad)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize(
    "cell,shape,lengths,proj",
    [
        ("rnn", (6, 3, 5, 9), None, 0),
        ("gru", (6, 3, 5, 9), None, 0),
        ("lstm", (6, 3, 5, 9), None, 0),
        ("lstm", (None, None, 4, 17), [5, 3, 1], 3),
        ("gru", (12, 16, 8, 256), None, 0),  # steps past small_gemm's size
        ("rnn", (64, 4, 64, 256), None, 0),  # the input GEMM beside the walk
    ],
)
def test_half_layer_ops_read_any_weight_and_state_layout(cell, shape, lengths, proj, dtype):
    """Weights and states stored column-major give the very same outputs and
    grads as the same values stored row-major (the float32 copies of half
    weights are made contiguous: half.h up(); a transposed W_hh read as rows
    gave errors of 0.1-2 at these shapes)."""
    T, B, I, H = shape
    args = layer_case(cell, T, B, I, H, dtype, lengths, proj)
    strided = [_transposed_layout(a) for a in args]
    assert any(isinstance(a, torch.Tensor) and not a.is_contiguous() for a in strided)
    outs, souts = run_layer(cell, args, ops), run_layer(cell, strided, ops)
    for o, so in zip(outs, souts):
        assert torch.equal(o, so)
    ws = [torch.randn_like(o) for o in outs]
    leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    sleaves = [a for a in strided if isinstance(a, torch.Tensor) and a.requires_grad]
    g = torch.autograd.grad(sum((o * w).sum() for o, w in zip(outs, ws)), leaves)
    sg = torch.autograd.grad(sum((o * w).sum() for o, w in zip(souts, ws)), sleaves)
    for a, b in zip(g, sg):
        assert torch.equal(a, b)


def _up(args):
    return [a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]


CHUNKED = [  # several chunks each (half_layer.h: chunks of >= 32 rows)
    ("rnn", (70, 8, 5, 9), None, 0),
    ("rnn", (None, None, 4, 33), [70, 70, 41, 12, 3], 0),
    ("gru", (70, 8, 5, 9), None, 0),
    ("gru", (None, None, 4, 17), [70, 70, 41, 12, 3], 0),
    ("lstm", (70, 8, 5, 9), None, 0),
    ("lstm", (None, None, 4, 17), [70, 70, 41, 12, 3], 3),
    # input GEMMs of >= 2^21 multiply-adds a chunk: within each chunk the input
    # GEMM and the input grads run beside the walk (recurrence.h, overlap_steps),
    # dW_ih summed over the chunks
    ("rnn", (64, 4, 64, 256), None, 0),
    ("lstm", (64, 8, 96, 96), None, 0),
    # steps past small_gemm's size: in a bfloat16 call on a CPU with
    # AVX512-BF16 they still take small_gemm_bf16 (recurrence.h), the rows
    # split across threads from 16 rows (a batch that shrinks, too), else
    # the units
    ("gru", (12, 16, 8, 256), None, 0),
    ("lstm", (None, None, 6, 192), [12, 12, 11, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 2], 0),
    ("rnn", (40, 4, 8, 1024), None, 0),
    # chunks whose GEMMs reach oneDNN's size with bfloat16 steps: the Elman
    # RNN's and the LSTM's over a padded batch run once over all the rows
    # after the walk (half_layer.h whole_sequence_gemms; the RNN's (40, 4,
    # 8, 1024) above too), T = 1 without the output's shifted rows; the
    # GRU's and a packed batch's a chunk at a time
    ("lstm", (20, 8, 16, 512), None, 0),
    ("rnn", (1, 32, 8, 1024), None, 0),
    ("gru", (20, 8, 16, 512), None, 0),
    ("rnn", (None, None, 8, 1024), [12, 12, 9, 9, 9, 2], 0),
    # few rows: the kept gate grads take fewer bytes than the float32
    # weight-grad sums, so every cell's GEMMs run once after the walk in
    # plain loops (half_product.h), the GRU's dR apart; a packed batch's
    # a chunk at a time in the float32 op
    ("gru", (100, 1, 32, 64), None, 0),
    ("lstm", (90, 2, 32, 64), None, 0),
    ("rnn", (100, 2, 32, 64), None, 0),
    ("gru", (None, None, 32, 64), [60, 40, 7], 0),
    # a wide input: chunks of about 70 rows whose x and dX rows (over 2^14
    # values) convert through ATen, the small ones in plain loops
    ("gru", (64, 8, 300, 32), None, 0),
    # with RNNATTN_CPU_BF16_STEPS=library (the default on AMX CPUs) the steps
    # of 20 rows go to the library's bfloat16 GEMM and those of 14 and 6 rows
    # to small_gemm_bf16: the walk changes path both ways
    ("lstm", (None, None, 6, 192), [12] * 6 + [9] * 8 + [3] * 6, 0),
]


# Where every step is a fused large bfloat16 step (steps of 8 and 16 rows at
# H = 512 go to the library's GEMM on AMX CPUs): a chunk holds only its A,
# and runs to more rows (half_layer.h kLeanChunkRows), in inference and in
# training, where the steps write the bfloat16 reserve themselves (layer.h
# reserve16): the LSTM at (40, 16, 16, 512) in 5 chunks of 8 steps, where
# the float32 rows' bound cuts 20 of 2; the GRU in 4 of 10; a packed batch,
# whose reserve rows shrink with it. Training keeps the reserve, so its
# bytes bound lets those run in one chunk; past kLeanChunkRows rows (80
# steps of 16) it takes two, each writing its own rows of the reserve.
LEAN = [
    ("lstm", (40, 16, 16, 512), None, 0),
    ("gru", (40, 16, 16, 512), None, 0),
    ("lstm", (None, None, 16, 512), [40] * 8 + [30] * 4 + [12] * 4, 0),
    ("lstm", (80, 16, 16, 512), None, 0),
    ("gru", (80, 16, 16, 512), None, 0),
]


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("cell,shape,lengths,proj", CHUNKED + LEAN)
def test_half_layer_in_chunks_matches_one_float32_call(cell, shape, lengths, proj, reverse, dtype):
    """A half-precision layer op runs the float32 engine over chunks of steps,
    carrying the state across them and summing the weight grads. Its results
    must be those of one float32 call on the same (converted) tensors, rounded
    to the dtype: within a few units in the last place, where a wrong state or
    grad carried across a chunk's edge is off by O(1). (Where the input GEMM
    runs in the dtype itself, A is rounded too: the looser tolerances.)"""
    _check_chunks_against_float32(cell, shape, lengths, proj, reverse, dtype)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("cell,shape,lengths,proj", [c for c in CHUNKED if c[0] == "rnn"])
def test_half_rnn_relu_in_chunks_matches_one_float32_call(cell, shape, lengths, proj, dtype):
    """The same for the Elman RNN with relu, whose large bfloat16 steps take
    the fused step's relu build (cell_kernels.h rnn_forward_fused_lanes)."""
    _check_chunks_against_float32(cell, shape, lengths, proj, False, dtype, relu=True)


def _library_half_gemm(dtype):
    """Whether the input GEMM runs in the dtype itself (half.h library_half_gemm):
    A is then rounded to it too, and results are held to the looser tolerances."""
    forced = os.environ.get("RNNATTN_CPU_HALF_GEMM")
    return forced == "library" or (forced is None and dtype == torch.bfloat16 and _cpu_has_native_bf16())


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("cell,shape,lengths,proj", [c for c in CHUNKED if c[0] != "rnn"] + LEAN)
def test_half_inference_in_chunks_matches_one_float32_call(cell, shape, lengths, proj, reverse, dtype):
    """The GRU's and the LSTM's forward with train=False, whose chunks are cut
    by what they hold in inference (LEAN above). Its output and final state
    must be those of one float32 inference call, as in training (the Elman
    RNN's op has no inference form: the tests above)."""
    T, B, I, H = shape
    op = getattr(torch.ops.rnnattn, f"{cell}_forward")
    args = [a.detach() if isinstance(a, torch.Tensor) else a for a in layer_case(cell, T, B, I, H, dtype, lengths, proj)]
    library = _library_half_gemm(dtype)
    eps = torch.finfo(dtype).eps
    tol = OUT_TOL[dtype] if library else dict(rtol=2 * eps, atol=2 * eps)
    outs = op(*args, reverse, False)
    outs32 = op(*_up(args), reverse, False)
    n_results = 2 if cell == "gru" else 3  # output, h_n[, c_n]; the reserve is empty
    assert outs[-1].numel() == 0 and outs32[-1].numel() == 0
    for o, r in zip(outs[:n_results], outs32[:n_results]):
        assert o.dtype == dtype
        torch.testing.assert_close(o.float(), r.to(dtype).float(), **tol)


def _check_chunks_against_float32(cell, shape, lengths, proj, reverse, dtype, relu=False):
    T, B, I, H = shape
    op = lambda name: getattr(torch.ops.rnnattn, f"{cell}_{name}")  # noqa: E731
    # torch.ops.rnnattn.<cell>_forward's tensors, without its flags
    args = [a.detach() if isinstance(a, torch.Tensor) else a for a in layer_case(cell, T, B, I, H, dtype, lengths, proj)]
    fwd_flags = [relu, reverse] if cell == "rnn" else [reverse, True]
    library = _library_half_gemm(dtype)
    eps = torch.finfo(dtype).eps
    out_tol = OUT_TOL[dtype] if library else dict(rtol=2 * eps, atol=2 * eps)
    grad_tol = GRAD_TOL[dtype] if library else dict(rtol=4 * eps, atol=4 * eps)
    if relu and library:
        # relu does not contract the rounding of A and h_t as tanh does: at
        # (40, 4, 8, 1024) 2 of 163840 outputs drift past 1.6e-2 (0.017; the
        # unfused step's results bit for bit, as before its fused build),
        # where a wrong state is O(1) off.
        out_tol = {k: 2 * v for k, v in out_tol.items()}
        grad_tol = {k: 2 * v for k, v in grad_tol.items()}
    outs = op("forward")(*args, *fwd_flags)
    outs32 = op("forward")(*_up(args), *fwd_flags)
    n_results = 2 if cell == "rnn" else 3 if cell == "gru" else 4
    for o, r in zip(outs[:n_results], outs32[:n_results]):  # output, h_n[, c_n][, reserve]
        assert o.dtype == dtype
        torch.testing.assert_close(o.float(), r.to(dtype).float(), **out_tol)
    # The backward from the half-precision forward's saved tensors.
    gen = torch.Generator().manual_seed(1)
    g_out = torch.randn(outs[0].shape, generator=gen).to(dtype)
    g_h = torch.randn(outs[1].shape, generator=gen).to(dtype)
    x, bs = args[0], args[1]
    if cell == "rnn":
        hx, w_ih, w_hh = args[2], args[3], args[4]
        bargs = [g_out, g_h, x, bs, hx, w_ih, w_hh, outs[0], relu, reverse]
    elif cell == "gru":
        hx, w_ih, w_hh = args[2], args[3], args[4]
        bargs = [g_out, g_h, x, bs, hx, w_ih, w_hh, outs[0], outs[2], reverse]
    else:
        hx, cx, w_ih, w_hh, w_hr = args[2], args[3], args[4], args[5], args[8]
        g_c = torch.randn(outs[2].shape, generator=gen).to(dtype)
        bargs = [g_out, g_h, g_c, x, bs, hx, cx, w_ih, w_hh, w_hr, outs[0], outs[3], reverse]
    for need_input, need_weight in [(True, True), (True, False), (False, True)]:
        grads = op("backward")(*bargs, need_input, need_weight)
        grads32 = op("backward")(*_up(bargs), need_input, need_weight)
        for g, r in zip(grads, grads32):
            assert g.dtype == dtype and g.shape == r.shape
            tol = dict(grad_tol)
            if library and dtype == torch.bfloat16 and g.numel() > 0:
                # The dh steps in bfloat16 round dG_t too: grads near zero
                # beside large ones are off by a small share of the largest.
                tol["atol"] = max(tol["atol"], 1e-2 * r.abs().max().item())
            torch.testing.assert_close(g.float(), r.to(dtype).float(), **tol)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_reserve_is_kept_in_the_input_dtype(cell, dtype):
    args = [a.detach() if isinstance(a, torch.Tensor) else a for a in layer_case(cell, 4, 2, 3, 5, dtype)]
    op = getattr(torch.ops.rnnattn, f"{cell}_forward")
    reserve = op(*args, False, True)[-1]
    assert reserve.dtype == dtype and reserve.shape[0] == 8


def _max_error(outs, truth):
    return max((o.double() - t).abs().max().item() for o, t in zip(outs, truth))


def _flat(out):
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for o in out for t in _flat(o)]


MODULES = [
    (rnnattn.RNN, nn.RNN, dict(num_layers=2, bidirectional=True)),
    (rnnattn.GRU, nn.GRU, dict(num_layers=2)),
    (rnnattn.LSTM, nn.LSTM, dict(bidirectional=True, proj_size=3)),
]


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("ours_cls,theirs_cls,kw", MODULES)
def test_modules_in_half_precision_are_at_least_as_close_as_torchs(ours_cls, theirs_cls, kw, dtype):
    """Against the float64 module with the same (rounded) weights and input:
    outputs and every grad at least as close as torch's module in the dtype."""
    theirs = theirs_cls(5, 8, **kw).to(dtype)
    ours = ours_cls(5, 8, **kw).to(dtype)
    ours.load_state_dict(theirs.state_dict())
    truth_module = theirs_cls(5, 8, **kw).double()
    truth_module.load_state_dict(theirs.state_dict())
    x = torch.randn(7, 3, 5).to(dtype)
    results = {}
    for name, m, xin in [("ours", ours, x), ("theirs", theirs, x), ("truth", truth_module, x.double())]:
        xin = xin.detach().requires_grad_()
        outs = _flat(m(xin))
        gen = torch.Generator().manual_seed(1)
        ws = [torch.randn(o.shape, generator=gen).to(dtype).double() for o in outs]
        loss = sum((o.double() * w).sum() for o, w in zip(outs, ws))
        grads = torch.autograd.grad(loss, [xin, *m.parameters()])
        results[name] = (outs, grads)
    assert all(o.dtype == dtype for o in results["ours"][0])
    for part in (0, 1):
        truth = [t.double() for t in results["truth"][part]]
        err_ours = _max_error(results["ours"][part], truth)
        err_theirs = _max_error(results["theirs"][part], truth)
        tol = (OUT_TOL if part == 0 else GRAD_TOL)[dtype]["atol"]
        assert err_ours <= max(1.25 * err_theirs, tol), (part, err_ours, err_theirs)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("ours_cls,theirs_cls", [(rnnattn.RNNCell, nn.RNNCell), (rnnattn.GRUCell, nn.GRUCell),
                                                 (rnnattn.LSTMCell, nn.LSTMCell)])
def test_cells_in_half_precision(ours_cls, theirs_cls, dtype):
    theirs = theirs_cls(5, 7).to(dtype)
    ours = ours_cls(5, 7).to(dtype)
    ours.load_state_dict(theirs.state_dict())
    truth = theirs_cls(5, 7).double()
    truth.load_state_dict(theirs.state_dict())
    for x in (torch.randn(3, 5).to(dtype), torch.randn(5).to(dtype)):
        got, want = _flat(ours(x)), _flat(truth(x.double()))
        for a, b in zip(got, want):
            assert a.dtype == dtype
            torch.testing.assert_close(a.double(), b, **OUT_TOL[dtype])


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("chunk,heads", [(0, 1), (4, 2)])
def test_pooling_in_half_precision(dtype, chunk, heads):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4, 11, 19, generator=gen).to(dtype).requires_grad_()
    w = (torch.randn(heads, 19, generator=gen) * 0.3).to(dtype).requires_grad_()
    lengths = torch.tensor([11, 0, 6, 1])
    out = A.attention_pool(x, w, None, lengths, None, chunk)
    x64, w64 = (t.detach().double().requires_grad_() for t in (x, w))
    ref = reference.attention_pool(x64, w64, None, lengths, None, chunk)
    for o, r in zip(out, ref):
        assert o.dtype == dtype
        torch.testing.assert_close(o.double(), r, **OUT_TOL[dtype])
    gen = torch.Generator().manual_seed(4)
    ws = [torch.randn(r.shape, generator=gen).to(dtype) for r in ref]
    g = torch.autograd.grad(out, (x, w), ws)
    rg = torch.autograd.grad(ref, (x64, w64), [v.double() for v in ws])
    for a, b in zip(g, rg):
        assert a.dtype == dtype
        torch.testing.assert_close(a.double(), b, **GRAD_TOL[dtype])


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("scores", [False, True])
@pytest.mark.parametrize("valid", ["lengths", "mask"])
def test_pooling_over_batch_slices_matches_one_float32_call(dtype, scores, valid):
    """Half-precision pooling runs the float32 kernel over slices of the batch
    (~256 KiB of float32 H a thread: 2 sequences of (64, 512) a thread here,
    so 13 sequences take several slices). Each result must be the float32
    call's on the same converted tensors, rounded to the dtype; the weight
    grad is summed over the slices in float32."""
    gen = torch.Generator().manual_seed(5)
    B, T, D, heads, chunk = 13, 64, 512, 2, 16
    x = torch.randn(T, B, D, generator=gen).to(dtype).transpose(0, 1)  # a time-major view
    lengths = torch.randint(0, T + 1, (B,), generator=gen)
    mask = torch.rand(B, T, generator=gen) < 0.7
    lm = (lengths, None) if valid == "lengths" else (None, mask)
    if scores:
        src = torch.randn(B, T, heads, generator=gen).to(dtype)
        fwd, bwd = torch.ops.rnnattn.attention_pool_scores_forward, torch.ops.rnnattn.attention_pool_scores_backward
    else:
        src = (torch.randn(heads, D, generator=gen) * 0.05).to(dtype)
        fwd, bwd = torch.ops.rnnattn.attention_pool_forward, torch.ops.rnnattn.attention_pool_backward
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        pre = [x, src] if scores else [x, src, None]
        out = fwd(*pre, *lm, chunk)
        out32 = fwd(*[t.float() if t is not None else t for t in pre], *lm, chunk)
        eps = torch.finfo(dtype).eps
        for o, r in zip(out, out32):
            assert o.dtype == dtype
            torch.testing.assert_close(o.float(), r.to(dtype).float(), rtol=2 * eps, atol=2 * eps)
        gc = torch.randn(out[0].shape, generator=gen).to(dtype)
        gw = torch.randn(out[1].shape, generator=gen).to(dtype)
        args = [gc, gw, x, src, *lm, out[0], out[1], chunk, True, True]
        grads = bwd(*args)
        grads32 = bwd(*[t.float() if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in args])
        for g, r in zip(grads, grads32):
            assert g.dtype == dtype and g.shape == r.shape
            torch.testing.assert_close(g.float(), r.to(dtype).float(), rtol=4 * eps, atol=4 * eps)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("dtype", HALF)
def test_half_and_float32_tensors_do_not_mix(dtype):
    args = [a.detach() if isinstance(a, torch.Tensor) else a for a in layer_case("gru", 3, 2, 3, 4, dtype)]
    args[2] = args[2].float()  # hx
    with pytest.raises(RuntimeError, match=f"hx has dtype Float but input has dtype {'BFloat16' if dtype == torch.bfloat16 else 'Half'}"):
        ops.gru_layer(*args, False)


def _cpu_flags() -> list:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return []


def _cpu_has_native_bf16() -> bool:
    flags = _cpu_flags()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _cpu_has_avx512_bf16() -> bool:
    return "avx512_bf16" in _cpu_flags()


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_inference_matches_training_forward(cell, dtype):
    """Inference keeps less than training (one step's gates where bfloat16 steps
    make their own A, csrc/cpu/layer.h ws_one_step; a chunk of steps' A otherwise)
    but computes the same: the outputs of a module under no_grad and with grad
    are equal, bit for bit. Padded and packed (unsorted), 2 layers, both
    directions; B = 1 (chunks of 32 steps), a batch that shrinks, W_ih's
    bfloat16 pairs over 1 MiB for the GRU and LSTM (library input GEMM), and
    steps past small_step's size (on AMX CPUs the library's bfloat16 GEMM in
    unit parts, recurrence.h lib_step; the LSTM's A read in bfloat16 where
    every step is such a step, layer.h a16)."""
    torch.manual_seed(0)
    M = {"rnn": rnnattn.RNN, "gru": rnnattn.GRU, "lstm": rnnattn.LSTM}[cell]
    for T, B, I, H in [(70, 1, 5, 7), (9, 20, 3, 40), (3, 2, 520, 300), (5, 24, 8, 320)]:
        m = M(I, H, num_layers=2, bidirectional=True).to(dtype)
        x = torch.randn(T, B, I).to(dtype)
        lengths = torch.tensor([T] + [1 + (5 * k) % T for k in range(1, B)])
        for inp in (x, nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)):
            with torch.no_grad():
                infer = m(inp)
            train = m(inp)
            outs = [infer[0], train[0]]
            if isinstance(inp, nn.utils.rnn.PackedSequence):
                outs = [o.data for o in outs]
            assert torch.equal(outs[0], outs[1].detach()), (T, B, I, H)


def test_input_gemm_runs_in_the_dtype_where_chosen():
    """bfloat16's input GEMM goes to ATen's mm in bfloat16 where the CPU has native
    bf16 arithmetic or RNNATTN_CPU_HALF_GEMM=library, and nowhere else; where the
    steps multiply in bfloat16 themselves (AVX512-BF16 and the avx512 kernels,
    csrc/cpu/half.h bf16_steps), each step makes its own A in bfloat16 instead."""
    how = os.environ.get("RNNATTN_CPU_HALF_GEMM")
    library = how == "library" if how in ("library", "float32") else _cpu_has_native_bf16()
    bf16_steps = library and _cpu_has_avx512_bf16() and rnnattn._C.cpu_isa() in ("avx512", "amx")
    want = library and not bf16_steps
    args = [a.detach() if isinstance(a, torch.Tensor) else a for a in layer_case("gru", 5, 2, 3, 4, torch.bfloat16)]
    with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        ops.gru_layer(*args, False)
    names = [e.name for e in prof.events()]
    assert ("aten::mm" in names) == want, names


def test_large_bf16_steps_take_the_chosen_path():
    """rnnattn._C.cpu_bf16_steps() names how bfloat16 steps multiply here: in
    float32 without bf16 steps (csrc/cpu/half.h bf16_steps), else in
    small_gemm_bf16, with the large ones in oneDNN's bfloat16 GEMM where
    RNNATTN_CPU_BF16_STEPS=library or, unset, the CPU has AMX-BF16 or oneDNN's
    packed weights take bfloat16 ("kernel+packed": on W_hh reordered once a
    call, unless RNNATTN_CPU_PACKED_WEIGHTS=0; "kernel+library": on W_hh as
    stored). A packed call runs oneDNN's packed-weight operator, and only
    then. That GEMM rounds its product to bfloat16, small_gemm_bf16 sums in
    float32: a large step's results differ between the two paths, a small
    step's do not."""
    how = os.environ.get("RNNATTN_CPU_BF16_STEPS")
    bf16_steps = rnnattn._C.cpu_bf16_steps()
    if bf16_steps == "float32":
        pytest.skip("no bfloat16 steps here (they need AVX512-BF16 and the avx512 kernels)")
    library = ("kernel+library", "kernel+packed")
    if how == "kernel":
        assert bf16_steps == "kernel"
    elif how == "library" or "amx_bf16" in _cpu_flags():
        assert bf16_steps in library
    else:
        assert bf16_steps in ("kernel", "kernel+packed")
    if os.environ.get("RNNATTN_CPU_PACKED_WEIGHTS") == "0":
        assert bf16_steps != "kernel+packed"
    if os.environ.get("RNNATTN_CPU_HALF_GEMM") == "float32":
        return
    args = [a.detach() if isinstance(a, torch.Tensor) else a for a in layer_case("lstm", 4, 40, 8, 128, torch.bfloat16)]
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        ops.lstm_layer(*args, True)
    assert ("mkldnn::_linear_pointwise" in {e.name for e in prof.events()}) == (bf16_steps == "kernel+packed")
    root = Path(__file__).resolve().parents[1]
    script = (
        "import sys, torch, rnnattn; sys.path.insert(0, 'tests');"
        "from test_half_precision_cpu import layer_case;"
        "torch.manual_seed(0);"
        "outs = [];"
        "[outs.extend(rnnattn.ops.lstm_layer(*[a.detach() if isinstance(a, torch.Tensor) else a"
        " for a in layer_case('lstm', 4, B, 8, 128, torch.bfloat16)], False)) for B in (2, 40)];"
        "torch.save(outs, sys.argv[1])"
    )
    results = {}
    for choice in ("kernel", "library"):
        env = dict(os.environ, RNNATTN_CPU_BF16_STEPS=choice, PYTHONPATH=str(root))
        out = Path(root / f".bf16_steps_{choice}_{os.getpid()}.pt")
        try:
            r = subprocess.run([sys.executable, "-c", script, str(out)], cwd=root, env=env,
                               capture_output=True, text=True)
            assert r.returncode == 0, r.stderr[-2000:]
            results[choice] = torch.load(out)
        finally:
            out.unlink(missing_ok=True)
    small = zip(results["kernel"][:3], results["library"][:3])  # B = 2: 2 x 128 x 512 a step
    large = zip(results["kernel"][3:], results["library"][3:])  # B = 40: past small_step's size
    assert all(torch.equal(a, b) for a, b in small)
    assert not all(torch.equal(a, b) for a, b in large)


def test_the_other_bf16_step_choice():
    """The large bfloat16 steps go to the library's bfloat16 GEMM on AMX CPUs and
    to small_gemm_bf16 elsewhere (csrc/cpu/half.h bf16_library_steps); this
    process runs the CPU's choice, and RNNATTN_CPU_BF16_STEPS forces the other:
    the tests above must pass with it too."""
    if rnnattn._C.cpu_bf16_steps() == "float32":
        pytest.skip("no bfloat16 steps here (they need AVX512-BF16 and the avx512 kernels)")
    if os.environ.get("RNNATTN_CPU_BF16_STEPS") is not None:
        pytest.skip("forced in this process already")
    other = "kernel" if rnnattn._C.cpu_bf16_steps() != "kernel" else "library"
    _run_this_file_with(RNNATTN_CPU_BF16_STEPS=other)


def test_library_bf16_steps_on_w_hh_as_stored():
    """Where oneDNN's packed weights do not take bfloat16 (or
    RNNATTN_CPU_PACKED_WEIGHTS=0), the library steps hand oneDNN W_hh as
    stored (csrc/cpu/half.h bf16_library_steps): the tests above must pass
    that way too."""
    if rnnattn._C.cpu_bf16_steps() == "float32":
        pytest.skip("no bfloat16 steps here (they need AVX512-BF16 and the avx512 kernels)")
    if os.environ.get("RNNATTN_CPU_BF16_STEPS") is not None:
        pytest.skip("forced in this process already")
    _run_this_file_with(RNNATTN_CPU_BF16_STEPS="library", RNNATTN_CPU_PACKED_WEIGHTS="0")


@pytest.mark.parametrize("how", ["library", "float32"])
def test_both_input_gemm_choices(how):
    """The forward's input GEMM runs in the half dtype through ATen on CPUs with
    native half arithmetic, else in float32 (csrc/cpu/half.h); this CPU takes one,
    RNNATTN_CPU_HALF_GEMM forces each: the tests above must pass with both."""
    _run_this_file_with(RNNATTN_CPU_HALF_GEMM=how)


def _run_this_file_with(**variables):
    """This file's tests (but those that rerun it) in a new process with the
    environment variables set: they must pass."""
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root), **variables)
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
         "-k", "not both_input_gemm and not other_bf16_step and not on_w_hh_as_stored"],
        cwd=root, env=env, capture_output=True, text=True,
    )
    assert r.returncode == 0 and " passed" in r.stdout, r.stdout[-3000:] + r.stderr[-2000:]

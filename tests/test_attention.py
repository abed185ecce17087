"""Attention pooling: the fused operators and rnnattn.AttentionPooling against
the plain-PyTorch reference (rnnattn/reference.py), gradcheck, opcheck,
torch.compile, and the edge cases with defined behaviour.

CUDA cases run where a GPU and a CUDA build are present, and skip otherwise.
"""
import itertools
import zlib

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from conftest import CPU_ISAS, run_under_isa

import rnnattn
from rnnattn import attention_ops as A
from rnnattn import reference as R
from rnnattn.attention import attention_pooling

HAS_CUDA = torch.cuda.is_available() and rnnattn._load.WITH_CUDA
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU and a CUDA build"))]
F64 = dict(rtol=1e-10, atol=1e-12)


def _seed(*key) -> torch.Generator:
    """A generator seeded from the test's parameters (stable across runs)."""
    return torch.Generator().manual_seed(zlib.crc32(repr(key).encode()))


def _lengths(kind, B, T, gen):
    if kind is None:
        return None
    if kind == "full":
        return torch.full((B,), T, dtype=torch.long)
    # Random, always including a 0 and a T when B allows.
    lengths = torch.randint(0, T + 1, (B,), generator=gen)
    lengths[0] = T
    if B > 1:
        lengths[1] = 0
    return lengths


def _mask(kind, B, T, gen):
    if kind is None:
        return None
    m = torch.rand(B, T, generator=gen) > 0.35
    if kind == "holes":  # arbitrary pattern, with one fully masked row
        if B > 2:
            m[2] = False
        return m
    raise ValueError(kind)


def _input(B, T, D, layout, dtype, device, gen):
    """(B, T, D) as the kernel receives it: contiguous, a time-major view, or
    with a strided feature dim (which the op must copy)."""
    if layout == "batch":
        x = torch.randn(B, T, D, generator=gen, dtype=torch.float64)
    elif layout == "time":
        x = torch.randn(T, B, D, generator=gen, dtype=torch.float64).transpose(0, 1)
    elif layout == "strided":
        x = torch.randn(B, T, 2 * D, generator=gen, dtype=torch.float64)[..., ::2]
    return x.to(device=device, dtype=dtype)


def _check_parity(fused, ref, inputs, gen, tol=F64):
    """Outputs and grads (from both outputs) of fused vs ref on the same inputs."""
    leaves = [t.detach().requires_grad_(True) for t in inputs]
    out_f = fused(*leaves)
    leaves_r = [t.detach().requires_grad_(True) for t in inputs]
    out_r = ref(*leaves_r)
    for f, r in zip(out_f, out_r):
        torch.testing.assert_close(f, r, **tol)
    gouts = [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o) for o in out_f]
    g_f = torch.autograd.grad(out_f, leaves, gouts)
    g_r = torch.autograd.grad(out_r, leaves_r, gouts)
    for f, r in zip(g_f, g_r):
        torch.testing.assert_close(f, r, **tol)


# ---- operator parity over a grid ---------------------------------------------------

GRID = list(
    itertools.product(
        [(1, 1, 1), (1, 5, 8), (3, 1, 4), (4, 9, 33), (5, 17, 64)],  # (B, T, D)
        [None, "rand", "full"],  # lengths
        [None, "holes"],  # mask
        [0, 1, 4, 100],  # chunk_size
    )
)


@pytest.mark.parametrize("shape,lengths_kind,mask_kind,chunk", GRID)
@pytest.mark.parametrize("heads", [1, 3])
def test_linear_op_matches_reference(shape, lengths_kind, mask_kind, chunk, heads):
    B, T, D = shape
    gen = _seed(shape, lengths_kind, mask_kind, chunk, heads)
    lengths, mask = _lengths(lengths_kind, B, T, gen), _mask(mask_kind, B, T, gen)
    layout = ("batch", "time", "strided")[(B + T + chunk) % 3]
    x = _input(B, T, D, layout, torch.float64, "cpu", gen)
    w = torch.randn(heads, D, generator=gen, dtype=torch.float64)
    b = torch.randn(heads, generator=gen, dtype=torch.float64)
    _check_parity(
        lambda x, w, b: A.attention_pool(x, w, b, lengths, mask, chunk),
        lambda x, w, b: R.attention_pool(x, w, b, lengths, mask, chunk),
        (x, w, b),
        gen,
    )


@pytest.mark.parametrize("shape,lengths_kind,mask_kind,chunk", GRID)
@pytest.mark.parametrize("heads", [1, 2])
def test_scores_op_matches_reference(shape, lengths_kind, mask_kind, chunk, heads):
    B, T, D = shape
    gen = _seed(shape, lengths_kind, mask_kind, chunk, heads, 1)
    lengths, mask = _lengths(lengths_kind, B, T, gen), _mask(mask_kind, B, T, gen)
    layout = ("batch", "time", "strided")[(B + T + chunk + 1) % 3]
    x = _input(B, T, D, layout, torch.float64, "cpu", gen)
    # Scores in (T, B, k) memory order, as the module hands them for time-major input.
    s = torch.randn(T, B, heads, generator=gen, dtype=torch.float64).transpose(0, 1) * 3
    _check_parity(
        lambda x, s: A.attention_pool_scores(x, s, lengths, mask, chunk),
        lambda x, s: R.attention_pool_scores(x, s, lengths, mask, chunk),
        (x, s),
        gen,
    )


def test_outputs_have_defined_shapes_and_weights_sum_to_one():
    gen = torch.Generator().manual_seed(0)
    B, T, D, k, K = 4, 10, 6, 2, 4
    x = torch.randn(B, T, D, generator=gen, dtype=torch.float64)
    w = torch.randn(k, D, generator=gen, dtype=torch.float64)
    lengths = torch.tensor([10, 7, 4, 0])
    c, a = A.attention_pool(x, w, None, lengths, None, K)
    assert c.shape == (B, 3, k, D) and a.shape == (B, k, T)
    sums = torch.stack([a[..., 0:4].sum(-1), a[..., 4:8].sum(-1), a[..., 8:10].sum(-1)], -1)  # (B, k, C)
    expect = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=torch.float64)
    torch.testing.assert_close(sums, expect[:, None, :].expand(B, k, 3), **F64)
    assert (a[1, :, 7:] == 0).all() and (c[3] == 0).all()


# ---- gradcheck ------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("chunk,use_mask", [(0, False), (3, True)])
def test_gradcheck_linear(device, chunk, use_mask):
    gen = torch.Generator().manual_seed(1)
    B, T, D, k = 3, 7, 5, 2
    x = torch.randn(B, T, D, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    w = torch.randn(k, D, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    b = torch.randn(k, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    lengths = torch.tensor([7, 4, 0])
    mask = (torch.rand(B, T, generator=gen) > 0.3).to(device) if use_mask else None
    assert torch.autograd.gradcheck(lambda x, w, b: A.attention_pool(x, w, b, lengths, mask, chunk), (x, w, b))
    # From each output alone too (the other grad arrives as None).
    assert torch.autograd.gradcheck(lambda x, w: A.attention_pool(x, w, None, lengths, mask, chunk)[0], (x, w))
    assert torch.autograd.gradcheck(lambda x, w: A.attention_pool(x, w, None, lengths, mask, chunk)[1], (x, w))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("leaf", ["x", "w", "b", "x+b"])
def test_each_input_alone_gets_its_grad(leaf, device):
    """The autograd kernel asks the fused backward only for what is needed,
    and the bias (whose grad is exactly zero) may be the only leaf."""
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(3, 5, 4, generator=gen, dtype=torch.float64).to(device)
    w = torch.randn(2, 4, generator=gen, dtype=torch.float64).to(device)
    b = torch.randn(2, generator=gen, dtype=torch.float64).to(device)
    lengths = torch.tensor([5, 2, 4])
    named = {"x": x, "w": w, "b": b}
    leaves = [named[n].requires_grad_() for n in leaf.split("+")]
    c, a = A.attention_pool(x, w, b, lengths)
    rc, ra = R.attention_pool(x, w, b, lengths)
    g = torch.autograd.grad(c.sum() + (a * a).sum(), leaves)
    rg = torch.autograd.grad(rc.sum() + (ra * ra).sum(), leaves)
    for got, want in zip(g, rg):
        torch.testing.assert_close(got, want, **F64)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("chunk", [0, 2])
def test_gradcheck_scores(device, chunk):
    gen = torch.Generator().manual_seed(2)
    B, T, D, k = 3, 6, 4, 2
    x = torch.randn(B, T, D, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    s = torch.randn(B, T, k, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    mask = (torch.rand(B, T, generator=gen) > 0.3).to(device)
    lengths = torch.tensor([6, 0, 5]).to(device)
    assert torch.autograd.gradcheck(lambda x, s: A.attention_pool_scores(x, s, lengths, mask, chunk), (x, s))


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_additive_module_params(device):
    """H, W, b_W, v and the score bias, through the whole additive path, time-major."""
    gen = torch.Generator().manual_seed(3)
    T, B, D, A_, k = 5, 3, 4, 3, 2
    x = torch.randn(T, B, D, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    W = torch.randn(A_, D, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    bW = torch.randn(A_, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    v = torch.randn(k, A_, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    b = torch.randn(k, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    lengths = torch.tensor([5, 2, 0])

    def f(x, W, bW, v, b):
        return attention_pooling(
            x, v, b, lengths, chunk_size=2, batch_first=False, proj_weight=W, proj_bias=bW
        )

    assert torch.autograd.gradcheck(f, (x, W, bW, v, b))


# ---- opcheck and torch.compile --------------------------------------------------------


def _opcheck_samples(device):
    gen = torch.Generator().manual_seed(4)
    B, T, D = 3, 6, 5
    x = torch.randn(B, T, D, generator=gen).to(device)
    xt = torch.randn(T, B, D, generator=gen).to(device).transpose(0, 1)
    w = torch.randn(2, D, generator=gen).to(device)
    b = torch.randn(2, generator=gen).to(device)
    s = torch.randn(B, T, 2, generator=gen).to(device)
    lengths = torch.tensor([6, 3, 0])
    mask = (torch.rand(B, T, generator=gen) > 0.3).to(device)
    linear = [
        (x, w, None, None, None, 0),
        (xt.requires_grad_(), w.requires_grad_(), b.requires_grad_(), lengths, None, 4),
        (x.requires_grad_(), w, None, lengths.to(device), mask, 2),
    ]
    scores = [
        (x, s, None, None, 0),
        (xt, s.requires_grad_(), lengths, mask, 4),
    ]
    return linear, scores


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    linear, scores = _opcheck_samples(device)
    for args in linear:
        torch.library.opcheck(torch.ops.rnnattn.attention_pool_forward.default, args)
    for args in scores:
        torch.library.opcheck(torch.ops.rnnattn.attention_pool_scores_forward.default, args)
    # The backward ops on their own (fake kernels, schemas), grad_weights given and None.
    x, w, _, lengths, mask, chunk = (t.detach() if isinstance(t, torch.Tensor) else t for t in linear[2])
    c, a = A.attention_pool(x, w, None, lengths, mask, chunk)
    for ga in (torch.randn_like(a), None):
        torch.library.opcheck(
            torch.ops.rnnattn.attention_pool_backward.default,
            (torch.randn_like(c), ga, x, w, lengths, mask, c, a, chunk, True, True),
        )
    xt, s, lengths, mask, chunk = (t.detach() if isinstance(t, torch.Tensor) else t for t in scores[1])
    c, a = A.attention_pool_scores(xt, s, lengths, mask, chunk)
    torch.library.opcheck(
        torch.ops.rnnattn.attention_pool_scores_backward.default,
        (torch.randn_like(c), torch.randn_like(a), xt, s, lengths, mask, c, a, chunk, True, False),
    )


@pytest.mark.parametrize("score", ["linear", "additive"])
def test_torch_compile_fullgraph(score):
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(5)
    m = rnnattn.AttentionPooling(6, heads=2, score=score, chunk_size=3 if score == "additive" else None)
    x = torch.randn(4, 7, 6, generator=gen, requires_grad=True)
    lengths = torch.tensor([7, 5, 1, 0])
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    c1, a1 = compiled(x, lengths)
    (c1.sum() + (a1 * a1).sum()).backward()
    g1 = x.grad.clone()
    x.grad = None
    c2, a2 = m(x, lengths)
    (c2.sum() + (a2 * a2).sum()).backward()
    torch.testing.assert_close(c1, c2)
    torch.testing.assert_close(a1, a2)
    torch.testing.assert_close(g1, x.grad)


# ---- module ---------------------------------------------------------------------------


def _module_reference(m, x_bt, lengths, mask):
    """What AttentionPooling computes, from reference.py, batch-major input."""
    K = m.chunk_size or 0
    if m.score == "linear":
        c, a = R.attention_pool(x_bt, m.weight, m.bias, lengths, mask, K)
    else:
        valid = R.valid_steps(x_bt.shape[0], x_bt.shape[1], lengths, mask, x_bt.device)
        clean = x_bt.masked_fill(~valid.unsqueeze(-1), 0)
        s = R.additive_scores(clean, m.proj.weight, m.proj.bias, m.weight, m.bias)
        c, a = R.attention_pool_scores(x_bt, s, lengths, mask, K)
    B = x_bt.shape[0]
    c = c.reshape(B, c.shape[1], -1) if K else c.reshape(B, -1)
    return c, (a.squeeze(1) if m.heads == 1 else a)


MODULE_GRID = list(
    itertools.product(
        ["linear", "additive"],
        [1, 2],  # heads
        [None, 3],  # chunk_size
        [True, False],  # batch_first
        ["lengths", "mask", "packed", "none"],
    )
)


@pytest.mark.parametrize("score,heads,chunk,batch_first,valid_by", MODULE_GRID)
def test_module_matches_reference(score, heads, chunk, batch_first, valid_by):
    gen = _seed(score, heads, chunk, batch_first, valid_by)
    B, T, D = 4, 8, 6
    torch.manual_seed(0)
    m = rnnattn.AttentionPooling(
        D, heads=heads, score=score, attn_size=5 if score == "additive" else None, bias=heads == 2,
        chunk_size=chunk, batch_first=batch_first, dtype=torch.float64,
    )
    x_bt = torch.randn(B, T, D, generator=gen, dtype=torch.float64)
    lengths = torch.tensor([8, 3, 6, 1])
    mask = torch.rand(B, T, generator=gen) > 0.3 if valid_by == "mask" else None
    ref_lengths = lengths if valid_by in ("lengths", "packed") else None
    x_in = x_bt if batch_first else x_bt.transpose(0, 1).contiguous()
    if valid_by == "packed":
        inp, kw = pack_padded_sequence(x_in, lengths, batch_first=batch_first, enforce_sorted=False), {}
    else:
        inp, kw = x_in, {"lengths": ref_lengths, "mask": mask}
    c, a = m(inp, **kw)
    c_ref, a_ref = _module_reference(m, x_bt, ref_lengths, mask)
    assert c.shape == c_ref.shape and a.shape == a_ref.shape
    torch.testing.assert_close(c, c_ref, **F64)
    torch.testing.assert_close(a, a_ref, **F64)
    # Grads of every parameter (from both outputs) match the reference's.
    gc, ga = torch.randn(c.shape, generator=gen, dtype=torch.float64), torch.randn(a.shape, generator=gen, dtype=torch.float64)
    params = list(m.parameters())
    g = torch.autograd.grad((c, a), params, (gc, ga))
    g_ref = torch.autograd.grad(_module_reference(m, x_bt, ref_lengths, mask), params, (gc, ga))
    for p, q in zip(g, g_ref):
        torch.testing.assert_close(p, q, **F64)


def test_module_packed_sequence_from_rnnattn_rnn():
    gen = torch.Generator().manual_seed(6)
    rnn = rnnattn.RNN(3, 6, batch_first=True)
    pool = rnnattn.AttentionPooling(6)
    x = torch.randn(4, 5, 3, generator=gen)
    lengths = torch.tensor([2, 5, 1, 4])
    out, _ = rnn(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
    c, a = pool(out)
    padded, _ = rnn(x)  # the padding steps differ, but the pooling never sees them
    c2, a2 = pool(padded, lengths=lengths)
    torch.testing.assert_close(c, c2)
    torch.testing.assert_close(a, a2)
    assert c.shape == (4, 6) and a.shape == (4, 5)


def test_module_defaults_and_parameters():
    m = rnnattn.AttentionPooling(8)
    assert [n for n, _ in m.named_parameters()] == ["weight"]
    assert m.weight.shape == (1, 8) and m.bias is None and m.output_size == 8
    assert m.weight.abs().max() <= 1 / 8**0.5
    m = rnnattn.AttentionPooling(8, heads=3, score="additive", attn_size=4, bias=True)
    names = dict(m.named_parameters())
    assert set(names) == {"weight", "bias", "proj.weight", "proj.bias"}
    assert names["weight"].shape == (3, 4) and names["bias"].shape == (3,) and names["proj.weight"].shape == (4, 8)
    assert "heads=3" in repr(m) and "additive" in repr(m)


def test_score_bias_cannot_change_the_result_and_gets_zero_grad():
    gen = torch.Generator().manual_seed(7)
    m = rnnattn.AttentionPooling(5, heads=2, bias=True, dtype=torch.float64)
    with torch.no_grad():
        m.bias.copy_(torch.tensor([3.0, -40.0]))
    x = torch.randn(3, 6, 5, generator=gen, dtype=torch.float64)
    c, a = m(x)
    (c.sum() + a.pow(2).sum()).backward()
    assert torch.equal(m.bias.grad, torch.zeros(2, dtype=torch.float64))
    c0, a0 = R.attention_pool(x, m.weight, None)
    torch.testing.assert_close(c, c0.reshape(3, -1), **F64)


# ---- edge cases -----------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("score", ["linear", "additive"])
def test_padding_with_nan_and_inf_does_not_leak(device, score):
    gen = torch.Generator().manual_seed(8)
    B, T, D = 3, 6, 4
    x = torch.randn(B, T, D, generator=gen, dtype=torch.float64).to(device)
    lengths = torch.tensor([6, 4, 0])
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, 1] = mask[0, 4] = False
    valid = R.valid_steps(B, T, lengths, mask, "cpu").to(device)
    poisoned = x.clone()
    poisoned[~valid] = float("nan")
    poisoned[2, 0, 0] = float("inf")
    m = rnnattn.AttentionPooling(D, heads=2, score=score, chunk_size=4, dtype=torch.float64).to(device)

    def run(inp):
        inp = inp.clone().requires_grad_()
        c, a = m(inp, lengths=lengths, mask=mask.to(device))
        grads = torch.autograd.grad((c, a), [inp, *m.parameters()], (torch.ones_like(c), torch.ones_like(a)))
        return c, a, grads

    clean = run(x.masked_fill(~valid.unsqueeze(-1), 0))
    dirty = run(poisoned)
    for p, q in zip([*clean[:2], *clean[2]], [*dirty[:2], *dirty[2]]):
        assert torch.isfinite(q).all()
        torch.testing.assert_close(p, q, **F64)
    assert (dirty[2][0][~valid] == 0).all()  # grad of H at invalid steps


@pytest.mark.parametrize("device", DEVICES)
def test_length_zero_gives_zero_context_weights_and_grads(device):
    x = torch.randn(2, 4, 3, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(1, 3, dtype=torch.float64, device=device, requires_grad=True)
    c, a = A.attention_pool(x, w, None, torch.tensor([0, 4]), None, 0)
    assert (c[0] == 0).all() and (a[0] == 0).all() and (a[1] > 0).all()
    (c.sum() + a.sum()).backward()
    assert (x.grad[0] == 0).all() and torch.isfinite(w.grad).all()
    # Zero steps at all (T = 0): context zeros, no weights.
    c, a = A.attention_pool(x[:, :0], w, None, torch.tensor([0, 0]), None, 0)
    assert c.shape == (2, 1, 1, 3) and (c == 0).all() and a.shape == (2, 1, 0)
    c, a = A.attention_pool(x[:, :0], w, None, None, None, 2)
    assert c.shape == (2, 0, 1, 3)


@pytest.mark.parametrize("device", DEVICES)
def test_single_step_takes_all_the_weight(device):
    x = torch.randn(3, 1, 5, device=device)
    m = rnnattn.AttentionPooling(5, heads=2).to(device)
    c, a = m(x)
    assert torch.equal(a, torch.ones(3, 2, 1, device=device))
    torch.testing.assert_close(c, x[:, 0].repeat(1, 2))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_large_scores_are_stable(device, dtype):
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(4, 50, 16, generator=gen, dtype=torch.float64) * 300  # scores ~ 1e4, exp overflows
    w = torch.randn(2, 16, generator=gen, dtype=torch.float64)
    s = torch.randn(4, 50, 2, generator=gen, dtype=torch.float64) * 1e4
    lengths = torch.tensor([50, 20, 1, 7])
    for fused, ref, args in (
        (A.attention_pool, R.attention_pool, (w, None)),
        (A.attention_pool_scores, R.attention_pool_scores, (s,)),
    ):
        c, a = fused(x.to(device, dtype), *[t.to(device, dtype) if t is not None else None for t in args], lengths, None, 0)
        c_ref, a_ref = ref(x, *args, lengths, None, 0)
        assert torch.isfinite(c).all() and torch.isfinite(a).all()
        tol = F64 if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-3)
        # Near-one-hot weights: compare against the float64 reference, scaled.
        torch.testing.assert_close(c.double(), c_ref, rtol=tol["rtol"], atol=tol["atol"] * 300)
        torch.testing.assert_close(a.double(), a_ref, **tol)


def test_minus_inf_scores_weigh_zero_and_nan_scores_propagate():
    x = torch.randn(2, 4, 3, dtype=torch.float64)
    s = torch.randn(2, 4, 1, dtype=torch.float64)
    s[0, 0, 0] = float("-inf")
    s[1, 2, 0] = float("nan")
    c, a = A.attention_pool_scores(x, s, None, None, 0)
    c_ref, a_ref = R.attention_pool_scores(x, s, None, None, 0)
    assert a[0, 0, 0] == 0
    torch.testing.assert_close(c[0], c_ref[0], **F64)
    torch.testing.assert_close(a[0], a_ref[0], **F64)
    assert torch.isnan(c[1]).all() and torch.isnan(a[1]).all()  # as torch.softmax does


@pytest.mark.parametrize("bad", [torch.tensor([5, 6]), torch.tensor([-1, 2])])
def test_lengths_out_of_range_is_an_error(bad):
    x = torch.randn(2, 5, 3)
    w = torch.randn(1, 3)
    with pytest.raises(RuntimeError, match=r"lengths\[\d\] = -?\d+ is out of range"):
        A.attention_pool(x, w, None, bad, None, 0)
    with pytest.raises(RuntimeError, match=r"lengths\[\d\] = -?\d+ is out of range"):
        A.attention_pool_scores(x, torch.randn(2, 5, 1), bad, None, 0)
    with pytest.raises(RuntimeError, match="out of range"):
        rnnattn.AttentionPooling(3)(x, lengths=bad)
    with pytest.raises(RuntimeError, match="out of range"):  # the plain-PyTorch fallback checks too
        rnnattn.AttentionPooling(3, dtype=torch.bfloat16)(x.bfloat16(), lengths=bad)


def test_bad_arguments_are_clear_errors():
    x = torch.randn(2, 5, 3)
    w = torch.randn(1, 3)
    op = A.attention_pool
    cases = [
        (lambda: op(x, w.double(), None, None, None, 0), "weight has dtype"),
        (lambda: op(x, torch.randn(1, 4), None, None, None, 0), r"weight must be \(heads, D\)"),
        (lambda: op(x, w, torch.randn(2), None, None, 0), r"bias must be \(heads,\)"),
        (lambda: op(x, w, None, torch.tensor([1, 2, 3]), None, 0), r"lengths must be \(B,\)"),
        (lambda: op(x, w, None, torch.tensor([1.0, 2.0]), None, 0), "lengths must be an integer"),
        (lambda: op(x, w, None, None, torch.ones(2, 4, dtype=torch.bool), 0), r"mask must be \(B, T\)"),
        (lambda: op(x, w, None, None, torch.ones(2, 5), 0), "mask must be a bool"),
        (lambda: op(x, w, None, None, None, -1), "chunk_size must be >= 0"),
        (lambda: op(x[0], w, None, None, None, 0), r"input must be \(B, T, D\)"),
        (lambda: op(x.int(), w.int(), None, None, None, 0), "input must be a floating-point tensor, got Int"),
        (lambda: A.attention_pool_scores(x, torch.randn(2, 4, 1), None, None, 0), r"scores must be \(B, T, heads\)"),
    ]
    for fn, msg in cases:
        with pytest.raises(RuntimeError, match=msg):
            fn()
    m = rnnattn.AttentionPooling(3)
    for fn, msg in [
        (lambda: m(x.double()), "dtype"),
        (lambda: m(torch.randn(2, 5, 4)), "input_size=3"),
        (lambda: m(x[0]), "3-D"),
        (lambda: m(x, mask=torch.ones(5, 2, dtype=torch.bool)), r"batch-major"),
        (lambda: m(pack_padded_sequence(x, torch.tensor([5, 2]), batch_first=True), lengths=torch.tensor([5, 2])), "PackedSequence"),
        (lambda: m.to("meta")(x), "is on meta"),
    ]:
        with pytest.raises(RuntimeError, match=msg):
            fn()
    for kw, msg in [
        (dict(score="dot"), "score"),
        (dict(heads=0), "heads"),
        (dict(chunk_size=0), "chunk_size"),
        (dict(attn_size=4), "attn_size applies only"),
    ]:
        with pytest.raises(ValueError, match=msg):
            rnnattn.AttentionPooling(3, **kw)


# ---- double backward (create_graph=True) ------------------------------------------------

DOUBLE_CASES = {  # (B, T, D, heads, lengths, mask, chunk_size, layout)
    "B1-T1-D1": (1, 1, 1, 1, None, False, 0, "batch"),
    "lengths-heads": (3, 4, 3, 2, [4, 2, 0], False, 0, "time"),
    "mask-chunks": (2, 5, 3, 1, None, True, 2, "batch"),
    "both-chunks-heads": (3, 4, 2, 3, [4, 1, 3], True, 3, "strided"),
}


def _double_case(name, device):
    B, T, D, k, lengths, use_mask, chunk, layout = DOUBLE_CASES[name]
    gen = _seed("double", name)
    x = _input(B, T, D, layout, torch.float64, device, gen).requires_grad_()
    lengths = torch.tensor(lengths) if lengths is not None else None
    mask = _mask("holes", B, T, gen).to(device) if use_mask else None
    return x, k, lengths, mask, chunk, gen


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", DOUBLE_CASES)
def test_gradgradcheck_linear(case, device):
    x, k, lengths, mask, chunk, gen = _double_case(case, device)
    w = torch.randn(k, x.shape[-1], generator=gen, dtype=torch.float64).to(device).requires_grad_()
    b = torch.randn(k, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    fast = dict(fast_mode=x.numel() > 8)  # random projections of the Jacobians (cheaper), beyond the tiniest case
    assert torch.autograd.gradgradcheck(
        lambda x, w, b: A.attention_pool(x, w, b, lengths, mask, chunk), (x, w, b), **fast
    )
    # From the context alone: the weights' grad arrives as None.
    assert torch.autograd.gradgradcheck(
        lambda x, w: A.attention_pool(x, w, None, lengths, mask, chunk)[0], (x, w), **fast
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", DOUBLE_CASES)
def test_gradgradcheck_scores(case, device):
    x, k, lengths, mask, chunk, gen = _double_case(case, device)
    B, T, _ = x.shape
    s = (torch.randn(T, B, k, generator=gen, dtype=torch.float64).transpose(0, 1) * 2).to(device).requires_grad_()
    fast = dict(fast_mode=x.numel() > 8)
    assert torch.autograd.gradgradcheck(
        lambda x, s: A.attention_pool_scores(x, s, lengths, mask, chunk), (x, s), **fast
    )
    # From the weights alone: the context's grad arrives as None.
    assert torch.autograd.gradgradcheck(
        lambda s: A.attention_pool_scores(x, s, lengths, mask, chunk)[1], (s,), **fast
    )


@pytest.mark.parametrize(
    "score,heads,chunk,valid_by",
    [("linear", 1, None, "lengths"), ("linear", 2, 2, "mask"), ("additive", 2, None, "packed"),
     ("additive", 1, 3, "lengths")],
)
def test_gradgradcheck_module(score, heads, chunk, valid_by):
    """AttentionPooling's input and parameters, through the whole module."""
    torch.manual_seed(0)
    B, T, D = 3, 5, 3
    pool = rnnattn.AttentionPooling(D, heads=heads, score=score, attn_size=2 if score == "additive" else None,
                                    bias=True, chunk_size=chunk, batch_first=False).double()
    names = [n for n, _ in pool.named_parameters()]
    x = torch.randn(T, B, D, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([5, 2, 4])
    mask = torch.rand(B, T) > 0.3

    def f(x, *params):
        args = {"lengths": (x, lengths, None), "mask": (x, None, mask),
                "packed": (pack_padded_sequence(x, lengths, enforce_sorted=False), None, None)}[valid_by]
        return torch.func.functional_call(pool, dict(zip(names, params)), args)

    params = [p.detach().requires_grad_() for p in pool.parameters()]
    op = "attention_pool_scores" if score == "additive" else "attention_pool"
    called = _pool_ops_called(lambda: torch.autograd.grad(f(x, *params)[0].sum(), params, create_graph=True))
    assert f"rnnattn::{op}_backward_differentiable" in called  # the fused op's double backward is tested
    assert torch.autograd.gradgradcheck(f, (x, *params), fast_mode=True)


def _pool_ops_called(fn):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.name for e in prof.events() if e.name.startswith("rnnattn::attention_pool")}


@pytest.mark.parametrize("scores", [False, True])
def test_first_order_backward_stays_fused_double_backward_matches_reference(scores):
    """Without create_graph the fused backward runs (its grads carry no
    graph); with it the differentiable op, with the same first-order grads
    and the reference's second-order ones. NaN padding reaches neither."""
    gen = torch.Generator().manual_seed(5)
    B, T, D, k = 3, 6, 4, 2
    x = torch.randn(B, T, D, generator=gen, dtype=torch.float64)
    x[1, 4:] = float("nan")  # padding: never read
    x.requires_grad_()
    second = (torch.randn(B, T, k, generator=gen, dtype=torch.float64) if scores
              else torch.randn(k, D, generator=gen, dtype=torch.float64)).requires_grad_()
    lengths = torch.tensor([6, 4, 0])
    name = "attention_pool_scores" if scores else "attention_pool"
    fused = getattr(A, name)
    ref = getattr(R, name)
    call = (lambda f: f(x, second, lengths, None, 2)) if scores else (lambda f: f(x, second, None, lengths, None, 2))

    def loss(f):
        c, a = call(f)
        return (c * torch.linspace(-1, 1, c.numel(), dtype=c.dtype).view_as(c)).sum() + (a * a).sum()

    def first_order():
        first_order.grads = torch.autograd.grad(loss(fused), [x, second])

    called = _pool_ops_called(first_order)
    assert f"rnnattn::{name}_backward" in called and f"rnnattn::{name}_backward_differentiable" not in called
    assert not any(g.requires_grad for g in first_order.grads)

    def create_graph():
        create_graph.grads = torch.autograd.grad(loss(fused), [x, second], create_graph=True)

    called = _pool_ops_called(create_graph)
    assert f"rnnattn::{name}_backward_differentiable" in called and f"rnnattn::{name}_backward" not in called
    g = create_graph.grads
    # The penalty's backward runs the fused backward once more, first order:
    # the loss's grad of the weights (2a) depends on the output.
    got = list(g) + list(torch.autograd.grad(sum((t**2).sum() for t in g), [x, second]))
    rg = torch.autograd.grad(loss(ref), [x, second], create_graph=True)
    want = list(rg) + list(torch.autograd.grad(sum((t**2).sum() for t in rg), [x, second]))
    for a, b in zip(got, want):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, **F64)
    for a, b in zip(first_order.grads, g):
        torch.testing.assert_close(a, b, **F64)


def test_double_backward_bias_grad_is_exactly_zero():
    """The linear score's bias: its grad is a constant zero on both paths."""
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)
    c, _ = A.attention_pool(x, w, b, None, None, 0)
    gx, gb = torch.autograd.grad((c**2).sum(), [x, b], create_graph=True)
    assert gx.requires_grad and torch.equal(gb, torch.zeros_like(b))
    (gx**2).sum().backward()
    assert b.grad is None or torch.equal(b.grad, torch.zeros_like(b))


def test_bfloat16_module_matches_float32():
    """bfloat16 runs the fused CPU kernel (float32 inside, csrc/cpu/half.h)."""
    gen = torch.Generator().manual_seed(10)
    x = torch.randn(3, 6, 4, generator=gen)
    m = rnnattn.AttentionPooling(4, heads=2, score="additive")
    lengths = torch.tensor([6, 2, 0])
    c32, a32 = m(x, lengths=lengths)
    c16, a16 = m.to(torch.bfloat16)(x.bfloat16(), lengths=lengths)
    assert c16.dtype == torch.bfloat16 and c16.shape == c32.shape
    torch.testing.assert_close(c16.float(), c32, rtol=0.05, atol=0.05)
    torch.testing.assert_close(a16.float(), a32, rtol=0.05, atol=0.02)


_BASELINE_ISA_CHECK = """
import torch
from rnnattn import attention_ops as A, reference as R
g = torch.Generator().manual_seed(0)
x = torch.randn(5, 13, 37, generator=g, dtype=torch.float64, requires_grad=True)
w = torch.randn(2, 37, generator=g, dtype=torch.float64, requires_grad=True)
lengths, mask = torch.tensor([13, 0, 7, 1, 12]), torch.rand(5, 13, generator=g) > 0.3
for chunk in (0, 4):
    out = A.attention_pool(x, w, None, lengths, mask, chunk)
    ref = R.attention_pool(x, w, None, lengths, mask, chunk)
    gouts = [torch.randn(o.shape, generator=g, dtype=torch.float64) for o in out]
    for p, q in zip([*out, *torch.autograd.grad(out, (x, w), gouts)], [*ref, *torch.autograd.grad(ref, (x, w), gouts)]):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)
print("baseline ISA ok")
"""


@pytest.mark.parametrize("isa", CPU_ISAS)
def test_every_isa_build_matches_reference(isa):
    """The CPU kernels are built for baseline x86-64, AVX2+FMA and AVX-512,
    picked at run time; RNNATTN_CPU_ISA forces each build this CPU runs."""
    run_under_isa(isa, _BASELINE_ISA_CHECK, "baseline ISA ok")


# ---- CUDA: parity in every dtype --------------------------------------------------------


@pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU and a CUDA build")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape,chunk,heads", [((3, 17, 33), 0, 1), ((5, 64, 256), 5, 3), ((2, 300, 40), 0, 2)])
def test_cuda_matches_reference(dtype, shape, chunk, heads):
    gen = torch.Generator().manual_seed(11)
    B, T, D = shape
    tol = {
        torch.float64: F64,
        torch.float32: dict(rtol=1e-4, atol=1e-5),
        torch.float16: dict(rtol=1e-2, atol=1e-2),
        torch.bfloat16: dict(rtol=5e-2, atol=5e-2),
    }[dtype]
    x = torch.randn(T, B, D, generator=gen, dtype=torch.float64).transpose(0, 1)  # a time-major view
    w = torch.randn(heads, D, generator=gen, dtype=torch.float64) / D**0.5
    s = torch.randn(B, T, heads, generator=gen, dtype=torch.float64)
    lengths = torch.randint(0, T + 1, (B,), generator=gen)
    mask = torch.rand(B, T, generator=gen) > 0.2
    mask_d = mask.cuda()
    cases = [
        (lambda x, w: A.attention_pool(x, w, None, lengths, mask_d, chunk),
         lambda x, w: R.attention_pool(x, w, None, lengths, mask, chunk), (x, w)),
        (lambda x, s: A.attention_pool_scores(x, s, lengths.cuda(), mask_d, chunk),
         lambda x, s: R.attention_pool_scores(x, s, lengths, mask, chunk), (x, s)),
    ]
    for fused, ref, leaves in cases:
        dev = [t.to("cuda", dtype).requires_grad_() for t in leaves]
        host = [t.clone().requires_grad_() for t in leaves]
        out, ref_out = fused(*dev), ref(*host)
        for o, r in zip(out, ref_out):
            assert o.dtype == dtype
            torch.testing.assert_close(o.double().cpu(), r.detach(), **tol)
        gouts = [torch.randn(o.shape, generator=gen, dtype=torch.float64) for o in out]
        g = torch.autograd.grad(out, dev, [t.to("cuda", dtype) for t in gouts])
        g_ref = torch.autograd.grad(ref_out, host, gouts)
        for p, q in zip(g, g_ref):
            scale = max(1.0, q.abs().max().item())
            torch.testing.assert_close(p.double().cpu() / scale, q / scale, **tol)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU and a CUDA build")
def test_cuda_module_and_device_mismatch():
    m = rnnattn.AttentionPooling(8, heads=2, score="additive", chunk_size=4).cuda()
    x = torch.randn(3, 10, 8, device="cuda")
    lengths = torch.tensor([10, 3, 0])  # CPU lengths with CUDA input: fine
    c, a = m(x, lengths=lengths)
    m_cpu = rnnattn.AttentionPooling(8, heads=2, score="additive", chunk_size=4)
    m_cpu.load_state_dict(m.state_dict())
    c2, a2 = m_cpu(x.cpu(), lengths=lengths)
    torch.testing.assert_close(c.cpu(), c2, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a.cpu(), a2, rtol=1e-4, atol=1e-5)
    with pytest.raises(RuntimeError, match="is on"):
        m(x.cpu())
    with pytest.raises(RuntimeError, match="weight is on"):
        A.attention_pool(x, torch.randn(1, 8), None, None, None, 0)
    with pytest.raises(RuntimeError, match="mask is on"):
        A.attention_pool(x, torch.randn(1, 8, device="cuda"), None, None, torch.ones(3, 10, dtype=torch.bool), 0)
    with pytest.raises(RuntimeError, match="out of range"):
        A.attention_pool(x, torch.randn(1, 8, device="cuda"), None, torch.tensor([1, 2, 11], device="cuda"), None, 0)

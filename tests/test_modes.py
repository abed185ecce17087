"""The modules in PyTorch's other modes (rnnattn/_modes.py, issue 11):
autocast gives torch's output dtypes, and torch.func transforms (grad, vjp,
jacrev, functional_call, vmap) run and agree with torch's modules."""
import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, jacrev, vjp, vmap

import rnnattn
from rnnattn import _modes

SEQ = [
    (rnnattn.RNN, nn.RNN, dict(num_layers=2, bidirectional=True)),
    (rnnattn.RNN, nn.RNN, dict(nonlinearity="relu", bias=False)),
    (rnnattn.GRU, nn.GRU, dict(num_layers=2)),
    (rnnattn.LSTM, nn.LSTM, dict(proj_size=2, bidirectional=True)),
]
CELLS = [(rnnattn.RNNCell, nn.RNNCell, {}), (rnnattn.GRUCell, nn.GRUCell, {}), (rnnattn.LSTMCell, nn.LSTMCell, {})]
ALL = SEQ + CELLS


def _pair(ours, theirs, kw, dtype=torch.float64):
    torch.manual_seed(0)
    t = theirs(3, 4, **kw).to(dtype)
    r = ours(3, 4, **kw).to(dtype)
    r.load_state_dict(t.state_dict())
    return r, t


def _input(ours, dtype=torch.float64, batch=2):
    cell = issubclass(ours, (nn.RNNCell, nn.GRUCell, nn.LSTMCell))
    return torch.randn(*((batch,) if cell else (5, batch)), 3, dtype=dtype)


def _flat(out):
    if isinstance(out, tuple):
        return [t for o in out for t in _flat(o)]
    return [out]


def _ids(cases):
    return [f"{o.__name__}-{kw}" for o, _, kw in cases]


@pytest.mark.parametrize("ours,theirs,kw", ALL, ids=_ids(ALL))
def test_cpu_autocast_gives_torchs_dtypes_and_values(ours, theirs, kw):
    r, t = _pair(ours, theirs, kw, torch.float32)
    x = _input(ours, torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, want = _flat(r(x)), _flat(t(x))
    assert [g.dtype for g in got] == [w.dtype for w in want]
    if ours is rnnattn.RNN:  # torch has a CPU autocast rule for rnn_tanh/relu (not for the GRU, LSTM)
        assert [w.dtype for w in want] == [torch.bfloat16, torch.bfloat16]
    for g, w in zip(got, want):
        assert torch.equal(g, w)


@pytest.mark.parametrize("score", ["linear", "additive"])
def test_cpu_autocast_pooling_takes_half_input_beside_float32_parameters(score):
    """Under autocast the pooling's input may be half precision (rnnattn.RNN's
    output is bfloat16 there, by torch's rule) while its parameters stay
    float32, as torch's layers allow: the pooling and the default classifier
    (a bidirectional RNN) run, close to float32, compiled too (the lengths'
    values are not checked in the graph)."""
    torch.manual_seed(0)
    p = rnnattn.AttentionPooling(6, heads=2, score=score)
    H = torch.randn(3, 5, 6)
    lengths = torch.tensor([5, 2, 4])
    want = p(H, lengths)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = p(H.bfloat16(), lengths)
        try:
            compiled = torch.compile(p, fullgraph=True, backend="aot_eager")(H, lengths)
        finally:
            torch._dynamo.reset()
    for g, c, w in zip(got, compiled, want):
        torch.testing.assert_close(g.float(), w, rtol=3e-2, atol=3e-2)
        torch.testing.assert_close(c.float(), w, rtol=3e-2, atol=3e-2)
    m = rnnattn.RNNAttentionClassifier(3, 4, 6)
    x = torch.randn(2, 5, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, weights = m(x)
    torch.testing.assert_close(logits.float(), m(x)[0], rtol=5e-2, atol=5e-2)
    assert weights.shape == (2, 5)


@pytest.mark.parametrize("ours,theirs,kw", ALL, ids=_ids(ALL))
def test_forward_mode_ad_matches_torch(ours, theirs, kw):
    """Dual tensors (torch.autograd.forward_ad, outside torch.func): the
    fused Functions have no jvp, so the modules run the reference there."""
    import torch.autograd.forward_ad as fwAD

    r, t = _pair(ours, theirs, kw)
    x, v = _input(ours), _input(ours)
    tangents = []
    for m in (r, t):
        with fwAD.dual_level():
            tangents.append([fwAD.unpack_dual(o).tangent for o in _flat(m(fwAD.make_dual(x, v)))])
    for g, w in zip(*tangents):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


def test_forward_mode_ad_through_attention_pooling():
    import torch.autograd.forward_ad as fwAD

    torch.manual_seed(0)
    p = rnnattn.AttentionPooling(3).double()
    H, dH = torch.randn(2, 5, 3, dtype=torch.float64), torch.randn(2, 5, 3, dtype=torch.float64)
    with fwAD.dual_level():
        context = fwAD.unpack_dual(p(fwAD.make_dual(H, dH))[0]).tangent
    want = torch.func.jvp(lambda H: rnnattn.reference.attention_pool(H, p.weight, None)[0].squeeze(1), (H,), (dH,))[1]
    torch.testing.assert_close(context, want.reshape(context.shape), rtol=1e-10, atol=1e-12)


@pytest.mark.skipif(not _modes._dynamo_reads_functorch, reason="TorchDynamo of this torch breaks the graph on the "
                    "functorch flag: the fused path is kept while compiling (rnnattn/_modes.py)")
@pytest.mark.parametrize("ours,theirs,kw", ALL, ids=_ids(ALL))
def test_compiled_func_grad_matches_torch(ours, theirs, kw):
    """torch.compile(torch.func.grad(f)): inside the compiled transform the
    modules run the reference (the C++ Functions raised there, and the
    bidirectional RNN's Python Function gave zero grads)."""
    r, t = _pair(ours, theirs, kw)
    x = _input(ours)

    def loss(m):
        return lambda x: sum(o.pow(2).sum() for o in _flat(m(x)))

    torch._dynamo.reset()
    try:
        got = torch.compile(grad(loss(r)), backend="aot_eager", fullgraph=True)(x)
    finally:
        torch._dynamo.reset()  # (as test_drop_in_modules' compile tests: no frames left behind)
    torch.testing.assert_close(got, grad(loss(t))(x), rtol=1e-10, atol=1e-12)


def test_modes_say_which_path():
    assert _modes.plain_path("cpu") is None and _modes.plain_step_path() is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert _modes.plain_path("cpu") == "torch" and _modes.plain_step_path() == "torch"
    seen = []
    grad(lambda x: (seen.append((_modes.plain_path("cpu"), _modes.plain_step_path())), x.sum())[1])(torch.ones(2))
    assert seen == [("reference", "reference")]


def _loss(params, module, x):
    return sum(o.pow(2).sum() for o in _flat(functional_call(module, params, (x,))))


@pytest.mark.parametrize("ours,theirs,kw", ALL, ids=_ids(ALL))
def test_func_grad_jacrev_vjp_match_torch(ours, theirs, kw):
    r, t = _pair(ours, theirs, kw)
    x = _input(ours)
    params = {k: v.detach() for k, v in t.named_parameters()}
    g_r, g_t = grad(_loss)(params, r, x), grad(_loss)(params, t, x)
    assert g_r.keys() == g_t.keys()
    for k in g_t:
        torch.testing.assert_close(g_r[k], g_t[k], rtol=1e-10, atol=1e-12)
    j_r = jacrev(lambda x: _loss(params, r, x))(x)
    j_t = jacrev(lambda x: _loss(params, t, x))(x)
    torch.testing.assert_close(j_r, j_t, rtol=1e-10, atol=1e-12)
    out_r, pull_r = vjp(lambda x: _flat(r(x))[0], x)
    out_t, pull_t = vjp(lambda x: _flat(t(x))[0], x)
    torch.testing.assert_close(out_r, out_t, rtol=1e-10, atol=1e-12)
    v = torch.randn_like(out_t)
    torch.testing.assert_close(pull_r(v)[0], pull_t(v)[0], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("ours,theirs,kw", ALL, ids=_ids(ALL))
def test_vmap_over_a_batch_of_inputs(ours, theirs, kw):
    r, t = _pair(ours, theirs, kw)
    xs = torch.stack([_input(ours) for _ in range(3)])
    got = vmap(lambda x: _flat(r(x))[0])(xs)
    want = torch.stack([_flat(t(x))[0] for x in xs])
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_func_grad_through_attention_pooling():
    torch.manual_seed(0)
    p = rnnattn.AttentionPooling(4, heads=2).double()
    H = torch.randn(3, 6, 4, dtype=torch.float64)
    lengths = torch.tensor([6, 2, 4])
    params = {k: v.detach() for k, v in p.named_parameters()}
    f = lambda params, H: functional_call(p, params, (H,), dict(lengths=lengths))[0].pow(2).sum()  # noqa: E731
    g_params, g_H = grad(f, argnums=(0, 1))(params, H)
    leaves = [H.clone().requires_grad_(), *[v.clone().requires_grad_() for v in params.values()]]
    want = torch.autograd.grad(f(dict(zip(params, leaves[1:])), leaves[0]), leaves)
    torch.testing.assert_close(g_H, want[0], rtol=1e-10, atol=1e-12)
    for g, w in zip(g_params.values(), want[1:]):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


def test_fused_path_is_kept_outside_the_modes():
    """First-order eager calls still run the fused kernels (their autograd
    node is the C++ function), not torch's or the reference."""
    r = rnnattn.RNN(3, 4)
    out, _ = r(torch.randn(5, 2, 3, requires_grad=True))
    assert "RnnFunction" in out.grad_fn.name()


@pytest.mark.skipif(
    not (torch.cuda.is_available() and rnnattn._load.WITH_CUDA), reason="needs a GPU and a CUDA build of rnnattn"
)
@pytest.mark.parametrize("amp", [torch.float16, torch.bfloat16])
def test_cuda_autocast_runs_the_rnn_kernels_in_the_autocast_dtype(amp):
    """Under CUDA autocast rnnattn.RNN runs its kernels in the autocast dtype
    (float32 accumulation) and gives torch's (cuDNN's) output dtypes and
    values. (Written without a GPU at hand: never run yet.)"""
    r, t = _pair(rnnattn.RNN, nn.RNN, dict(num_layers=2, bidirectional=True), torch.float32)
    r, t = r.cuda(), t.cuda()
    x = torch.randn(7, 3, 3, device="cuda", requires_grad=True)
    with torch.autocast("cuda", dtype=amp):
        got, want = _flat(r(x)), _flat(t(x))
        assert _modes.cuda_autocast_dtype("cuda") == amp
    assert [g.dtype for g in got] == [w.dtype for w in want]
    for g, w in zip(got, want):
        torch.testing.assert_close(g.float(), w.float(), rtol=2e-2, atol=2e-2)
    got[0].float().sum().backward()  # grads reach the float32 parameters
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in r.parameters())

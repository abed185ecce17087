"""The per-call fast paths (issues 12 and 14): the cells' C++ operators
(csrc/cell_ops.cpp), their pybind entry points, the modules' C++ layer
stack (csrc/stack.cpp) and their C++ eager call (csrc/module_call.cpp),
against the paths they shortcut."""
import pytest
import torch
from torch import nn
from torch.library import opcheck

import rnnattn
from rnnattn import _C, functional

CELLS = [("rnn", rnnattn.RNNCell, nn.RNNCell), ("gru", rnnattn.GRUCell, nn.GRUCell),
         ("lstm", rnnattn.LSTMCell, nn.LSTMCell)]


def _cell_args(cell, module, x, h):
    hx = None if h is None else ([h, h.flip(-1)] if cell == "lstm" else h)
    w = (module.weight_ih, module.weight_hh, module.bias_ih, module.bias_hh)
    return (x, hx, *w, False) if cell == "rnn" else (x, hx, *w)


@pytest.mark.parametrize("cell,ours,_", CELLS)
@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("given", [True, False])
def test_cell_ops_pass_opcheck_and_the_binding_is_the_op(cell, ours, _, batched, given):
    torch.manual_seed(0)
    m = ours(5, 7).double()
    x = torch.randn(*((3,) if batched else ()), 5, dtype=torch.float64, requires_grad=True)
    h = torch.randn(*((3,) if batched else ()), 7, dtype=torch.float64) if given else None
    args = _cell_args(cell, m, x, h)
    op = getattr(torch.ops.rnnattn, f"{cell}_cell")
    opcheck(op, args)
    via_op, via_binding = op(*args), getattr(_C, f"{cell}_cell")(*args)
    for a, b in zip(*(v if isinstance(v, (tuple, list)) else (v,) for v in (via_op, via_binding))):
        assert torch.equal(a, b)


@pytest.mark.parametrize("cell,ours,theirs", CELLS)
def test_cells_without_a_kernel_run_atens_cell(cell, ours, theirs):
    # No kernel on the "meta" device: the op runs at::*_cell, as torch's module does.
    t = theirs(5, 7).to("meta")
    r = ours(5, 7).to("meta")
    for x in (torch.randn(3, 5, device="meta"), torch.randn(5, device="meta")):
        a, b = t(x), r(x)
        for u, v in zip(*(o if isinstance(o, tuple) else (o,) for o in (a, b))):
            assert (u.shape, u.dtype, u.device) == (v.shape, v.dtype, v.device)


@pytest.mark.parametrize("cell,ours,theirs", CELLS)
def test_cell_errors_are_torchs(cell, ours, theirs):
    t, r = theirs(5, 7), ours(5, 7)
    bad = [
        (torch.randn(2, 3, 5), None),  # 3-D input
        (torch.randn(3, 4), None),  # wrong input size
    ]
    h = torch.randn(2, 7)
    bad.append((torch.randn(3, 5), (h, h) if cell == "lstm" else h))  # batch mismatch
    h3 = torch.randn(1, 3, 7)
    bad.append((torch.randn(3, 5), (h3, h3) if cell == "lstm" else h3))  # 3-D state
    for x, hx in bad:
        with pytest.raises(Exception) as want:
            t(x, hx)
        with pytest.raises(type(want.value)) as got:
            r(x, hx)
        assert str(got.value) == str(want.value)


STACKS = [
    dict(num_layers=1),
    dict(num_layers=3, bidirectional=True),
    dict(num_layers=2, bias=False),
    dict(num_layers=2, dropout=0.5),
]


@pytest.mark.parametrize("kw", STACKS)
@pytest.mark.parametrize("cls", [rnnattn.RNN, rnnattn.GRU, rnnattn.LSTM])
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("grad", [False, True])
def test_cpp_stack_matches_functional(kw, cls, packed, grad):
    """The eager layer stack (csrc/stack.cpp) and rnnattn.functional (what
    torch.compile traces) give the same outputs, states, dropout draws and grads."""
    torch.manual_seed(0)
    extra = dict(proj_size=3) if cls is rnnattn.LSTM and kw.get("num_layers") == 3 else {}
    m = cls(4, 6, **kw, **extra).double().train()
    T, B = 5, 3
    x = torch.randn(T, B, 4, dtype=torch.float64, requires_grad=grad)
    if packed:
        data = nn.utils.rnn.pack_padded_sequence(x, [5, 3, 2])
        inp, batch_sizes = data.data, data.batch_sizes
    else:
        inp, batch_sizes = x, None
    dirs = 2 if m.bidirectional else 1
    hs = m.proj_size or m.hidden_size
    h0 = torch.randn(m.num_layers * dirs, B, hs, dtype=torch.float64)
    c0 = torch.randn(m.num_layers * dirs, B, m.hidden_size, dtype=torch.float64)
    weights = [getattr(m, n) for n in m._flat_weights_names]
    hx = (h0, c0) if cls is rnnattn.LSTM else h0
    cell = {rnnattn.RNN: 0, rnnattn.GRU: 2, rnnattn.LSTM: 3}[cls]
    with torch.set_grad_enabled(grad):
        torch.manual_seed(1)
        fast = m._stack(cell, inp, batch_sizes, h0, c0 if cls is rnnattn.LSTM else None, weights)
        torch.manual_seed(1)
        common = (inp, batch_sizes, hx, weights, m.num_layers, m.bias, m.bidirectional)
        flags = dict(dropout=m.dropout, training=True)
        if cls is rnnattn.RNN:
            out, h = functional.rnn(*common, **flags)
            slow = [out, h]
        elif cls is rnnattn.GRU:
            out, h = functional.gru(*common, **flags)
            slow = [out, h]
        else:
            out, (h, c) = functional.lstm(*common, proj=m.proj_size > 0, **flags)
            slow = [out, h, c]
    assert len(fast) == len(slow)
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    if grad:
        leaves = [x, *m.parameters()]
        ga = torch.autograd.grad(sum(t.sum() for t in fast), leaves, retain_graph=True)
        gb = torch.autograd.grad(sum(t.sum() for t in slow), leaves)
        for a, b in zip(ga, gb):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_streaming_loop_matches_torch_with_state_carried():
    """100 steps of each cell and of each module at T=1, state carried, in
    float64: the latency benchmark's loop gives torch's values."""
    torch.manual_seed(0)
    for _, ours, theirs in CELLS:
        t = theirs(3, 5).double()
        r = ours(3, 5).double()
        r.load_state_dict(t.state_dict())
        x = torch.randn(1, 3, dtype=torch.float64)
        ht = hr = None
        for _ in range(100):
            ht, hr = t(x, ht), r(x, hr)
        for a, b in zip(*(v if isinstance(v, tuple) else (v,) for v in (ht, hr))):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    for ours, theirs in [(rnnattn.RNN, nn.RNN), (rnnattn.GRU, nn.GRU), (rnnattn.LSTM, nn.LSTM)]:
        t = theirs(3, 5).double()
        r = ours(3, 5).double()
        r.load_state_dict(t.state_dict())
        x = torch.randn(1, 1, 3, dtype=torch.float64)
        ht = hr = None
        for _ in range(100):
            (_, ht), (_, hr) = t(x, ht), r(x, hr)
        for a, b in zip(*(v if isinstance(v, tuple) else (v,) for v in (ht, hr))):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


SEQ = [(rnnattn.RNN, nn.RNN), (rnnattn.GRU, nn.GRU), (rnnattn.LSTM, nn.LSTM)]
EAGER_KW = [
    dict(),
    dict(batch_first=True),
    dict(num_layers=2, bidirectional=True),
    dict(num_layers=2, bias=False, dropout=0.5),
    dict(proj_size=3),
]


def _full_path_only(module):
    """The module with its C++ eager call switched off: forward's full path."""
    module._eager_call = lambda *args: None
    return module


# proj_size is the LSTM's; with grad a bidirectional RNN runs functional.rnn
# (one autograd node per layer), not the eager call.
EAGER_CASES = [
    (ours, theirs, kw, grad)
    for ours, theirs in SEQ
    for kw in EAGER_KW
    for grad in (True, False)
    if ("proj_size" not in kw or ours is rnnattn.LSTM)
    and not (ours is rnnattn.RNN and kw.get("bidirectional") and grad)
]


@pytest.mark.parametrize("ours,theirs,kw,grad", EAGER_CASES)
@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("given", [True, False])
def test_eager_call_matches_the_full_path_and_torch(ours, theirs, kw, grad, batched, given, monkeypatch):
    """The C++ eager call (csrc/module_call.cpp) serves the padded calls
    (it is taken: the full path's layer stack is not reached) and gives the
    full path's and torch's outputs, states, dropout draws and grads."""
    torch.manual_seed(0)
    t = theirs(4, 6, **kw).double().train()
    fast = ours(4, 6, **kw).double().train()
    fast.load_state_dict(t.state_dict())
    full = _full_path_only(ours(4, 6, **kw).double().train())
    full.load_state_dict(t.state_dict())
    T, B = 5, 3
    shape = ((B, T) if kw.get("batch_first") else (T, B)) if batched else (T,)
    x = torch.randn(*shape, 4, dtype=torch.float64)
    D = 2 if t.bidirectional else 1
    hs = t.proj_size or t.hidden_size
    h = torch.randn(t.num_layers * D, *((B,) if batched else ()), hs, dtype=torch.float64)
    c = torch.randn(t.num_layers * D, *((B,) if batched else ()), t.hidden_size, dtype=torch.float64)
    hx = ((h, c) if ours is rnnattn.LSTM else h) if given else None

    def run(m):
        xi = x.clone().requires_grad_(grad)
        with torch.set_grad_enabled(grad):
            torch.manual_seed(1)
            out, state = m(xi, hx)
        flat = [out, *(state if isinstance(state, tuple) else (state,))]
        grads = []
        if grad:
            grads = torch.autograd.grad(sum((v * v).sum() for v in flat), [xi, *m.parameters()])
        return flat, grads

    monkeypatch.setattr(type(fast), "_layers", lambda *a: pytest.fail("the full path ran"))
    got = run(fast)
    monkeypatch.undo()
    for want in (run(full), run(t)):
        for a, b in zip(got[0] + list(got[1]), want[0] + list(want[1])):
            assert a.shape == b.shape
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("ours,theirs", SEQ)
def test_eager_call_leaves_bad_arguments_to_torchs_checks(ours, theirs):
    """For every argument a valid call would not have, the C++ eager call
    returns [] (it raises nothing of its own) and the module raises torch's
    error, type and message."""
    torch.manual_seed(0)
    t, r = theirs(4, 6), ours(4, 6)
    lstm = ours is rnnattn.LSTM
    x = torch.randn(5, 3, 4)

    def state(*shape, dtype=torch.float32):
        h = torch.randn(*shape, 6, dtype=dtype)
        return (h, torch.randn(*shape, 6, dtype=dtype)) if lstm else h

    bad = [
        (torch.randn(3, 4, 4, 4), None),  # 4-D input
        (torch.randn(5, 3, 7), None),  # wrong input_size
        (x.double(), None),  # dtype other than the weights'
        (torch.randn(0, 3, 4), None),  # no steps
        (x, state(2, 3)),  # two states for one layer
        (x, state(1, 2)),  # batch mismatch
        (x, state(3)),  # 2-D state for batched input
        (torch.randn(5, 4), state(1, 3)),  # 3-D state for unbatched input
    ]
    if lstm:
        h = torch.randn(1, 3, 6)
        bad += [(x, (h, torch.randn(1, 3, 5))), (x, (torch.randn(1, 2, 6), h))]  # c / h sizes
    cell = {rnnattn.RNN: 0, rnnattn.GRU: 2, rnnattn.LSTM: 3}[ours]
    for inp, hx in bad:
        h, c = (hx if lstm else (hx, None)) if hx is not None else (None, None)
        assert _C.module_forward(
            cell, inp, h, c, r._weights(), 1, False, True, 4, 6, 6, False, 0.0, False
        ) == []
        with pytest.raises(Exception) as want:
            t(inp, hx)
        with pytest.raises(type(want.value)) as got:
            r(inp, hx)
        assert str(got.value) == str(want.value)
    # A state of another dtype: torch's kernel reports it in its words, the
    # full path in its own (rnn.py's _check_same).
    h, c = (state(1, 3, dtype=torch.float64) if lstm else (state(1, 3, dtype=torch.float64), None))
    assert _C.module_forward(cell, x, h, c, r._weights(), 1, False, True, 4, 6, 6, False, 0.0, False) == []
    with pytest.raises(RuntimeError, match="dtype"):
        r(x, (h, c) if lstm else h)


@pytest.mark.parametrize("ours,theirs", SEQ)
def test_weights_are_read_as_torch_reads_them(ours, theirs):
    """The modules read their weights where torch's do: swapped in by
    torch.func.functional_call, or computed by a parametrization (the
    weight is then no entry of _parameters)."""
    torch.manual_seed(0)
    t = theirs(4, 6).double()
    r = ours(4, 6).double()
    r.load_state_dict(t.state_dict())
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    other = {n: torch.randn_like(p) for n, p in t.named_parameters()}
    got = torch.func.functional_call(r, other, (x,))[0]
    torch.testing.assert_close(got, torch.func.functional_call(t, other, (x,))[0], rtol=1e-10, atol=1e-10)
    assert not torch.allclose(got, r(x)[0])  # the swapped weights were used

    class Half(nn.Module):
        def forward(self, w):
            return w * 0.5

    for m in (t, r):
        nn.utils.parametrize.register_parametrization(m, "weight_hh_l0", Half())
    assert "weight_hh_l0" not in r._parameters
    torch.testing.assert_close(r(x)[0], t(x)[0], rtol=1e-10, atol=1e-10)

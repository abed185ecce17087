"""The per-call fast paths (issue 14): the cells' C++ operators
(csrc/cell_ops.cpp), their pybind entry points, and the modules' C++ layer
stack (csrc/stack.cpp), against the paths they shortcut."""
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

"""rnnattn.RNN / RNNCell / convert as drop-in replacements for torch.nn."""
import functools
import io
import itertools

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnattn
from conftest import DEVICES, assert_same_second_order, module_gradgradcheck

TOL64 = dict(rtol=1e-10, atol=1e-10)


def twins(*args, device="cpu", dtype=torch.float64, **kwargs):
    """An nn.RNN and an rnnattn.RNN holding the same weights."""
    ref = nn.RNN(*args, device=device, dtype=dtype, **kwargs)
    ours = rnnattn.RNN(*args, device=device, dtype=dtype, **kwargs)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def grads(module, loss, extra):
    leaves = list(extra) + list(module.parameters())
    return torch.autograd.grad(loss, leaves, retain_graph=True)


def assert_all_close(xs, ys, **tol):
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys):
        torch.testing.assert_close(x, y, **tol)


CONFIGS = list(
    itertools.product(
        [1, 2],  # num_layers
        [False, True],  # bidirectional
        [False, True],  # batch_first
        ["tanh", "relu"],
        [True, False],  # bias
    )
)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layers,bidir,batch_first,nl,bias", CONFIGS)
def test_matches_nn_rnn_padded(layers, bidir, batch_first, nl, bias, device):
    T, B, I, H = 5, 3, 4, 7
    ref, ours = twins(I, H, layers, nonlinearity=nl, bias=bias, batch_first=batch_first,
                      bidirectional=bidir, device=device)
    shape = (B, T, I) if batch_first else (T, B, I)
    x = torch.randn(shape, dtype=torch.float64, device=device, requires_grad=True)
    h0 = torch.randn(layers * (2 if bidir else 1), B, H, dtype=torch.float64, device=device, requires_grad=True)
    for hx in (None, h0):
        o1, h1 = ref(x, hx)
        o2, h2 = ours(x, hx)
        torch.testing.assert_close(o2, o1, **TOL64)
        torch.testing.assert_close(h2, h1, **TOL64)
        go, gh = torch.randn_like(o1), torch.randn_like(h1)
        extra = [x] if hx is None else [x, h0]
        assert_all_close(
            grads(ours, (o2 * go).sum() + (h2 * gh).sum(), extra),
            grads(ref, (o1 * go).sum() + (h1 * gh).sum(), extra),
            **TOL64,
        )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bidir", [False, True])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("lengths", [[5, 2, 4, 1, 5], [1], [3, 3]])
def test_matches_nn_rnn_packed_unsorted(lengths, layers, bidir, device):
    T, I, H = max(lengths), 3, 6
    B = len(lengths)
    ref, ours = twins(I, H, layers, bidirectional=bidir, device=device)
    x = torch.randn(T, B, I, dtype=torch.float64, device=device, requires_grad=True)
    h0 = torch.randn(layers * (2 if bidir else 1), B, H, dtype=torch.float64, device=device, requires_grad=True)
    packed = pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=False)
    o1, h1 = ref(packed, h0)
    o2, h2 = ours(packed, h0)
    assert isinstance(o2, nn.utils.rnn.PackedSequence)
    torch.testing.assert_close(o2.data, o1.data, **TOL64)
    assert torch.equal(o2.batch_sizes, o1.batch_sizes)
    assert torch.equal(o2.unsorted_indices, o1.unsorted_indices)
    torch.testing.assert_close(h2, h1, **TOL64)
    p1, _ = pad_packed_sequence(o1)
    p2, _ = pad_packed_sequence(o2)
    go, gh = torch.randn_like(p1), torch.randn_like(h1)
    assert_all_close(
        grads(ours, (p2 * go).sum() + (h2 * gh).sum(), [x, h0]),
        grads(ref, (p1 * go).sum() + (h1 * gh).sum(), [x, h0]),
        **TOL64,
    )


@pytest.mark.parametrize("batch_first", [False, True])
def test_unbatched_input(batch_first):
    ref, ours = twins(3, 5, 2, bidirectional=True, batch_first=batch_first)
    x = torch.randn(4, 3, dtype=torch.float64)
    h0 = torch.randn(4, 5, dtype=torch.float64)
    for hx in (None, h0):
        o1, h1 = ref(x, hx)
        o2, h2 = ours(x, hx)
        assert o2.shape == o1.shape == (4, 10) and h2.shape == h1.shape == (4, 5)
        torch.testing.assert_close(o2, o1, **TOL64)
        torch.testing.assert_close(h2, h1, **TOL64)


def test_float32_matches_nn_rnn():
    ref, ours = twins(16, 32, 2, dtype=torch.float32, bidirectional=True)
    x = torch.randn(20, 4, 16)
    o1, h1 = ref(x)
    o2, h2 = ours(x)
    torch.testing.assert_close(o2, o1, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h2, h1, rtol=1e-5, atol=1e-5)


def test_empty_batch_matches_nn_rnn():
    ref, ours = twins(3, 4)
    x = torch.randn(5, 0, 3, dtype=torch.float64)
    o1, h1 = ref(x)
    o2, h2 = ours(x)
    assert o2.shape == o1.shape and h2.shape == h1.shape


def test_dropout_between_layers_uses_the_same_random_stream():
    """In training mode nn.RNN drops out each layer's output but the last; so do we."""
    ref, ours = twins(3, 8, 3, dropout=0.5)
    ref.train()
    ours.train()
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    torch.manual_seed(1)
    o1, h1 = ref(x)
    torch.manual_seed(1)
    o2, h2 = ours(x)
    torch.testing.assert_close(o2, o1, **TOL64)
    torch.testing.assert_close(h2, h1, **TOL64)
    ours.eval()
    ref.eval()
    torch.testing.assert_close(ours(x)[0], ref(x)[0], **TOL64)


def test_same_parameters_and_state_dict_both_ways():
    ref = nn.RNN(3, 5, 2, bidirectional=True)
    ours = rnnattn.RNN(3, 5, 2, bidirectional=True)
    assert [(n, p.shape) for n, p in ref.named_parameters()] == [(n, p.shape) for n, p in ours.named_parameters()]
    ours.load_state_dict(ref.state_dict())
    ref2 = nn.RNN(3, 5, 2, bidirectional=True)
    ref2.load_state_dict(ours.state_dict())
    for a, b in zip(ref.parameters(), ref2.parameters()):
        assert torch.equal(a, b)
    assert repr(ours) == repr(ref)
    assert isinstance(ours, nn.RNNBase)


def test_save_and_load_whole_module():
    _, ours = twins(3, 4, 2)
    buf = io.BytesIO()
    torch.save(ours, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert type(loaded) is rnnattn.RNN
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    torch.testing.assert_close(loaded(x)[0], ours(x)[0], rtol=0, atol=0)


@pytest.mark.parametrize("packed", [False, True])
def test_bidirectional_stack_saves_each_layer_output_once(packed):
    """For the backward, a bidirectional stack keeps each layer's (.., 2H)
    output once (it is also the next layer's input) and the initial states:
    no per-direction copies beside the concatenation."""
    T, B, I, H, L = 5, 3, 4, 6, 2
    ours = rnnattn.RNN(I, H, L, bidirectional=True).double()
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    inp = nn.utils.rnn.pack_padded_sequence(x, [5, 4, 2]) if packed else x
    rows = 11 if packed else T * B
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        ours(inp)
    leaves = {t.untyped_storage().data_ptr() for t in [x, *ours.parameters()]}
    if packed:
        leaves.add(inp.data.untyped_storage().data_ptr())
    activations = sum(n for ptr, n in saved.items() if ptr not in leaves)
    # batch_sizes is saved too (an int64 CPU tensor, T entries) when packed.
    expected = 8 * (L * rows * 2 * H + L * 2 * B * H) + (8 * T if packed else 0)
    assert activations == expected


@pytest.mark.parametrize("layers,bidir", [(1, False), (2, True)])
def test_outputs_can_be_detached_in_place_like_nn_rnn(layers, bidir):
    """Truncated BPTT code calls h.detach_(), which fails on views."""
    for rnn in twins(3, 4, layers, bidirectional=bidir):
        out, h = rnn(torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True))
        h.detach_()
        out.detach_()
        assert not h.requires_grad and not out.requires_grad


@pytest.mark.parametrize("layers,bidir,batch_first", [(1, False, False), (2, True, False), (1, True, True)])
def test_in_place_change_of_the_output_is_a_loud_error(layers, bidir, batch_first):
    """The backward reads the states from the output (as cuDNN's does): an
    in-place change must raise autograd's error, never give wrong grads."""
    _, ours = twins(3, 4, layers, bidirectional=bidir, batch_first=batch_first)
    out, _ = ours(torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True))
    out.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


def test_torch_compile_fullgraph_module():
    _, ours = twins(4, 6, 2, bidirectional=True)
    x = torch.randn(5, 3, 4, dtype=torch.float64, requires_grad=True)
    compiled = torch.compile(ours, fullgraph=True, backend="aot_eager")
    o1, h1 = compiled(x)
    o2, h2 = ours(x)
    torch.testing.assert_close(o1, o2, **TOL64)
    g1 = torch.autograd.grad(o1.sum() + h1.sum(), [x])
    g2 = torch.autograd.grad(o2.sum() + h2.sum(), [x])
    torch.testing.assert_close(g1[0], g2[0], **TOL64)


# --- same errors as nn.RNN ---------------------------------------------------

ERROR_CASES = [
    ("input 4-D", lambda: (torch.randn(2, 3, 4, 5),), None),
    ("input 1-D", lambda: (torch.randn(4),), None),
    ("wrong input size", lambda: (torch.randn(5, 2, 7),), None),
    ("wrong h0 shape", lambda: (torch.randn(5, 2, 4), torch.randn(1, 3, 6)), None),
    ("h0 2-D for batched input", lambda: (torch.randn(5, 2, 4), torch.randn(2, 6)), None),
    ("h0 3-D for unbatched input", lambda: (torch.randn(5, 4), torch.randn(1, 1, 6)), None),
    ("input dtype", lambda: (torch.randn(5, 2, 4, dtype=torch.float64),), None),
    ("zero-length sequence", lambda: (torch.randn(0, 2, 4),), None),
    ("h0 on another device", lambda: (torch.randn(5, 2, 4), torch.randn(1, 2, 6, device="meta")), None),
]


@pytest.mark.parametrize("name,make", [c[:2] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES])
def test_same_errors_as_nn_rnn(name, make):
    ref, ours = nn.RNN(4, 6), rnnattn.RNN(4, 6)
    args = make()
    with pytest.raises(Exception) as e_ref:
        ref(*args)
    with pytest.raises(Exception) as e_ours:
        ours(*args)
    assert type(e_ours.value) is type(e_ref.value)
    assert str(e_ours.value) == str(e_ref.value)


def test_h0_dtype_mismatch_is_a_clear_error():
    ours = rnnattn.RNN(4, 6)
    with pytest.raises(RuntimeError, match=r"hx dtype \(torch.float64\) does not match input dtype \(torch.float32\)"):
        ours(torch.randn(5, 2, 4), torch.randn(1, 2, 6, dtype=torch.float64))


def test_zero_length_in_a_packed_batch_is_rejected():
    with pytest.raises(RuntimeError, match="Length of all samples has to be greater than 0"):
        rnnattn.RNN(4, 6)(pack_padded_sequence(torch.randn(3, 2, 4), torch.tensor([3, 0]), enforce_sorted=False))


# --- RNNCell -----------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("nl", ["tanh", "relu"])
@pytest.mark.parametrize("bias", [True, False])
def test_cell_matches_nn_rnncell(nl, bias, device):
    ref = nn.RNNCell(3, 5, bias=bias, nonlinearity=nl, device=device, dtype=torch.float64)
    ours = rnnattn.RNNCell(3, 5, bias=bias, nonlinearity=nl, device=device, dtype=torch.float64)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(4, 3, dtype=torch.float64, device=device, requires_grad=True)
    h = torch.randn(4, 5, dtype=torch.float64, device=device, requires_grad=True)
    for args in [(x,), (x, h), (x[0],), (x[0], h[0])]:
        y1, y2 = ref(*args), ours(*args)
        torch.testing.assert_close(y2, y1, **TOL64)
        g = torch.randn_like(y1)
        assert_all_close(grads(ours, (y2 * g).sum(), [x]), grads(ref, (y1 * g).sum(), [x]), **TOL64)


CELL_ERRORS = [
    ("input 3-D", lambda: (torch.randn(2, 3, 4),)),
    ("hx 3-D", lambda: (torch.randn(2, 3), torch.randn(1, 2, 4))),
    ("input size", lambda: (torch.randn(2, 5),)),
    ("batch", lambda: (torch.randn(2, 3), torch.randn(3, 4))),
    ("hidden size", lambda: (torch.randn(2, 3), torch.randn(2, 5))),
]


@pytest.mark.parametrize("name,make", CELL_ERRORS, ids=[c[0] for c in CELL_ERRORS])
def test_cell_same_errors_as_nn(name, make):
    args = make()
    with pytest.raises(Exception) as e_ref:
        nn.RNNCell(3, 4)(*args)
    with pytest.raises(Exception) as e_ours:
        rnnattn.RNNCell(3, 4)(*args)
    assert type(e_ours.value) is type(e_ref.value)
    assert str(e_ours.value) == str(e_ref.value)


def test_cell_dtype_mismatch_is_a_clear_error():
    with pytest.raises(RuntimeError, match="RNNCell input dtype"):
        rnnattn.RNNCell(3, 4)(torch.randn(2, 3, dtype=torch.float64))


# --- convert -------------------------------------------------------------------


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(3, 4), nn.Tanh())
        self.rnn = nn.RNN(4, 5, 2, bidirectional=True)
        self.cell = nn.RNNCell(10, 6)
        self.lstm = nn.LSTM(4, 3)  # left alone

    def forward(self, x):
        out, _ = self.rnn(self.encoder(x))
        return self.cell(out[-1]), self.lstm(self.encoder(x))[0]


def test_convert_swaps_rnns_and_keeps_the_parameters():
    model = Model().double()
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    before = model(x)
    params = {n: p for n, p in model.named_parameters()}
    converted = rnnattn.convert(model)
    assert converted is model
    assert type(model.rnn) is rnnattn.RNN and type(model.cell) is rnnattn.RNNCell
    assert type(model.lstm) is rnnattn.LSTM  # all six of torch's recurrent modules are swapped
    for n, p in model.named_parameters():
        assert p is params[n]  # an optimizer built before convert still holds them
    after = model(x)
    assert_all_close(after, before, **TOL64)
    assert type(rnnattn.convert(nn.RNN(2, 3))) is rnnattn.RNN


# --- PyTorch's own nn.RNN module tests ----------------------------------------


def _module_db_samples():
    from torch.testing._internal.common_modules import module_db

    (info,) = [m for m in module_db if m.module_cls is nn.RNN]
    return info.module_inputs_func(info, device="cpu", dtype=torch.float64, requires_grad=True, training=True)


@pytest.mark.parametrize("sample", range(32))
def test_pytorch_module_db_samples(sample):
    """torch's own nn.RNN samples (common_modules.module_db) run on rnnattn.RNN,
    with the state_dict copied from nn.RNN, give nn.RNN's outputs and grads."""
    samples = _module_db_samples()
    assert len(samples) >= 32
    s = samples[sample]
    torch.manual_seed(0)
    ref = nn.RNN(*s.constructor_input.args, **s.constructor_input.kwargs).double()
    ours = rnnattn.RNN(*s.constructor_input.args, **s.constructor_input.kwargs).double()
    ours.load_state_dict(ref.state_dict())
    args, kwargs = s.forward_input.args, s.forward_input.kwargs
    o1, h1 = ref(*args, **kwargs)
    o2, h2 = ours(*args, **kwargs)
    torch.testing.assert_close(o2, o1, **TOL64)
    torch.testing.assert_close(h2, h1, **TOL64)
    leaves = [a for a in args if torch.is_tensor(a) and a.requires_grad]
    assert_all_close(grads(ours, o2.sum() + h2.sum(), leaves), grads(ref, o1.sum() + h1.sum(), leaves), **TOL64)


# --- second derivatives (create_graph=True): gradient penalties -------------------
# nn.RNN's double backward on the CPU is the reference (cuDNN has none).

SECOND_ORDER = [  # layers, bidirectional, packed, nonlinearity, bias, batch_first
    (1, False, False, "tanh", True, False),
    (2, True, False, "tanh", True, True),
    (2, True, True, "tanh", True, False),
    (1, False, True, "relu", False, False),
    (2, False, False, "relu", True, False),
    (1, True, True, "relu", False, True),
]


@pytest.mark.parametrize("layers,bidir,packed,nl,bias,batch_first", SECOND_ORDER)
def test_second_order_matches_nn_rnn(layers, bidir, packed, nl, bias, batch_first):
    T, B, I, H = 4, 3, 3, 5
    ref, ours = twins(I, H, layers, nonlinearity=nl, bias=bias, batch_first=batch_first, bidirectional=bidir)
    x = torch.randn((B, T, I) if batch_first else (T, B, I), dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(layers * (2 if bidir else 1), B, H, dtype=torch.float64, requires_grad=True)
    inp = pack_padded_sequence(x, torch.tensor([4, 2, 3]), batch_first=batch_first, enforce_sorted=False) if packed else x
    assert_same_second_order(ours, ref, (inp, h0))
    assert_same_second_order(ours, ref, (inp,))


def test_gradient_penalty_runs_the_differentiable_fused_op():
    """A critic's gradient penalty through rnnattn.RNN: the module's grads
    equal nn.RNN's, the create_graph backward runs rnn_backward_differentiable
    and a plain backward the fused rnn_backward."""
    ref, ours = twins(3, 4, 2, bidirectional=True)
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)

    def penalty(module):
        out, _ = module(x)
        (g,) = torch.autograd.grad(out.sum(), x, create_graph=True)
        ((g.norm(dim=-1) - 1) ** 2).mean().backward()

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        penalty(ours)
    called = {e.name for e in prof.events()}
    assert "rnnattn::rnn_backward_differentiable" in called
    penalty(ref)
    for (n, p), q in zip(ours.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, **TOL64, msg=n)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        ours(x)[0].sum().backward()
    called = {e.name for e in prof.events()}
    assert "rnnattn::rnn_backward" in called and "rnnattn::rnn_backward_differentiable" not in called


@pytest.mark.parametrize("packed", [False, True])
def test_gradgradcheck_bidirectional_two_layers(packed):
    ours = rnnattn.RNN(2, 3, 2, bidirectional=True, dtype=torch.float64)
    x = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    inp = pack_padded_sequence(x, torch.tensor([3, 2]), enforce_sorted=False) if packed else x
    assert module_gradgradcheck(ours, (inp, h0))


@pytest.mark.parametrize("nl", ["tanh", "relu"])
def test_gradgradcheck_cell(nl):
    cell = rnnattn.RNNCell(3, 4, nonlinearity=nl, dtype=torch.float64)
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    h = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    assert module_gradgradcheck(cell, (x, h), fast_mode=False)
    assert module_gradgradcheck(cell, (x[0],), fast_mode=False)  # unbatched, no state given


@functools.lru_cache(maxsize=None)
def _module_db_eval_samples(cls):
    from torch.testing._internal.common_modules import module_db

    (info,) = [m for m in module_db if m.module_cls is cls]
    return info.module_inputs_func(info, device="cpu", dtype=torch.float64, requires_grad=True, training=False)


# nn.RNN's 32 samples are 16 configurations (bias, bidirectional,
# batch_first, nonlinearity), each twice: without h_0 (H = 2) and with it
# (H = 3). One of each pair, alternating, keeps this file's time down; all 32
# are compared with nn.RNN's second derivatives in test_drop_in_modules.py.
@pytest.mark.parametrize(
    "cls,sample", [(nn.RNN, 2 * k + k % 2) for k in range(16)] + [(nn.RNNCell, i) for i in range(3)]
)
def test_pytorch_module_db_gradgrad(cls, sample):
    """PyTorch's module suite's test_gradgrad: gradgradcheck of the module
    in its inputs and parameters over torch's own nn.RNN / nn.RNNCell samples."""
    samples = _module_db_eval_samples(cls)
    assert len(samples) > sample
    s = samples[sample]
    twin = {nn.RNN: rnnattn.RNN, nn.RNNCell: rnnattn.RNNCell}[cls]
    ours = twin(*s.constructor_input.args, **s.constructor_input.kwargs).double().eval()
    assert module_gradgradcheck(ours, s.forward_input.args, s.forward_input.kwargs)

"""rnnattn's six recurrent modules in place of torch's: PyTorch's own
module_db samples (torch.testing._internal.common_modules: packed sequences,
unbatched input, h_0 given or None, dropout, both training modes) and its
error samples, plus a grid of configurations, each against torch's module
holding the same state_dict."""
import contextlib
import itertools

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import rnnattn
from conftest import assert_same_second_order, module_gradgradcheck

TOL64 = dict(rtol=1e-10, atol=1e-10)
TWINS = {
    nn.RNN: rnnattn.RNN, nn.GRU: rnnattn.GRU, nn.LSTM: rnnattn.LSTM,
    nn.RNNCell: rnnattn.RNNCell, nn.GRUCell: rnnattn.GRUCell, nn.LSTMCell: rnnattn.LSTMCell,
}


def tensors(x):
    """Every tensor in a nested output (tuples, PackedSequence), in order."""
    if isinstance(x, PackedSequence):
        return [x.data]
    if isinstance(x, (tuple, list)):
        return [t for e in x for t in tensors(e)]
    return [x] if torch.is_tensor(x) else []


def pair(torch_cls, args, kwargs, dtype=torch.float64):
    """torch's module and rnnattn's twin with the same weights."""
    torch.manual_seed(0)
    ref = torch_cls(*args, **kwargs).to(dtype)
    ours = TWINS[torch_cls](*args, **kwargs).to(dtype)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def check_same(ref, ours, args, kwargs, seed=0):
    """Outputs and the grads of every input and parameter agree (the same
    RNG state before each call: dropout draws the same masks)."""
    torch.manual_seed(seed)
    o1 = tensors(ref(*args, **kwargs))
    torch.manual_seed(seed)
    o2 = tensors(ours(*args, **kwargs))
    assert len(o1) == len(o2)
    for a, b in zip(o2, o1):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, **TOL64)
    leaves = [t for t in tensors(list(args) + list(kwargs.values())) if t.requires_grad]
    ws = [torch.randn_like(t) for t in o1]
    if not leaves and not any(p.requires_grad for p in ref.parameters()):
        return

    def grads(module, outs):
        params = list(module.parameters())
        return torch.autograd.grad(sum((o * w).sum() for o, w in zip(outs, ws)), leaves + params,
                                   allow_unused=True)

    for a, b in zip(grads(ours, o2), grads(ref, o1)):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, **TOL64)


def _infos(cls):
    from torch.testing._internal.common_modules import module_db

    return [m for m in module_db if m.module_cls is cls]


def _samples(cls, training):
    (info,) = _infos(cls)
    return info.module_inputs_func(info, device="cpu", dtype=torch.float64, requires_grad=True, training=training)


def _error_samples(cls):
    (info,) = _infos(cls)
    return info.module_error_inputs_func(info, device="cpu", dtype=torch.float64, requires_grad=True, training=True)


SAMPLE_CASES = [(c, t, i) for c in TWINS for t in (True, False) for i in range(len(_samples(c, t)))]
ERROR_CASES = [(c, i) for c in TWINS for i in range(len(_error_samples(c)))]


def _case_id(case):
    return "-".join(str(getattr(v, "__name__", v)) for v in case)


def _sample_pair(case):
    """torch's module and ours (same state) for a module_db sample, both in
    its training mode, and the sample."""
    cls, training, i = case
    s = _samples(cls, training)[i]
    ref, ours = pair(cls, s.constructor_input.args, s.constructor_input.kwargs)
    ref.train(training)
    ours.train(training)
    return ref, ours, s


@pytest.mark.parametrize("case", SAMPLE_CASES, ids=_case_id)
def test_pytorch_module_db_samples(case):
    ref, ours, s = _sample_pair(case)
    check_same(ref, ours, s.forward_input.args, s.forward_input.kwargs)


@pytest.mark.parametrize("case", ERROR_CASES, ids=_case_id)
def test_pytorch_module_db_error_samples(case):
    """The same error type and message as torch's module."""
    from torch.testing._internal.common_modules import ModuleErrorEnum

    cls, i = case
    e = _error_samples(cls)[i]
    mi = e.module_error_input
    ctor = lambda c: c(*mi.constructor_input.args, **mi.constructor_input.kwargs)  # noqa: E731
    if e.error_on == ModuleErrorEnum.CONSTRUCTION_ERROR:
        for c in (cls, TWINS[cls]):
            with pytest.raises(e.error_type, match=e.error_regex):
                ctor(c)
        return
    for c in (cls, TWINS[cls]):
        m = ctor(c).double()
        with pytest.raises(e.error_type, match=e.error_regex):
            m(*mi.forward_input.args, **mi.forward_input.kwargs)


CONFIGS = list(itertools.product([nn.GRU, nn.LSTM], [1, 3], [False, True], [False, True], [True, False]))


@pytest.mark.parametrize("cls,layers,bidir,batch_first,bias", CONFIGS)
def test_matches_torch_padded(cls, layers, bidir, batch_first, bias):
    T, B, I, H = 5, 3, 4, 7
    ref, ours = pair(cls, (I, H, layers), dict(bias=bias, batch_first=batch_first, bidirectional=bidir))
    x = torch.randn((B, T, I) if batch_first else (T, B, I), dtype=torch.float64, requires_grad=True)
    D = layers * (2 if bidir else 1)
    h0 = torch.randn(D, B, H, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(D, B, H, dtype=torch.float64, requires_grad=True)
    for hx in (None, h0 if cls is nn.GRU else (h0, c0)):
        check_same(ref, ours, (x,) if hx is None else (x, hx), {})


@pytest.mark.parametrize("proj", [1, 3])
@pytest.mark.parametrize("bidir", [False, True])
@pytest.mark.parametrize("packed", [False, True])
def test_lstm_proj_size_matches_torch(proj, bidir, packed):
    T, B, I, H, L = 4, 3, 5, 6, 2
    ref, ours = pair(nn.LSTM, (I, H, L), dict(proj_size=proj, bidirectional=bidir))
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    D = L * (2 if bidir else 1)
    hx = (torch.randn(D, B, proj, dtype=torch.float64, requires_grad=True),
          torch.randn(D, B, H, dtype=torch.float64, requires_grad=True))
    inp = pack_padded_sequence(x, torch.tensor([4, 1, 3]), enforce_sorted=False) if packed else x
    check_same(ref, ours, (inp, hx), {})
    check_same(ref, ours, (inp,), {})


@pytest.mark.parametrize("cls", [nn.GRU, nn.LSTM])
@pytest.mark.parametrize("bidir", [False, True])
@pytest.mark.parametrize("lengths", [[5, 2, 4, 1, 5], [1], [3, 3]])
def test_matches_torch_packed_unsorted(cls, bidir, lengths):
    T, I, H, B = max(lengths), 3, 6, len(lengths)
    ref, ours = pair(cls, (I, H, 2), dict(bidirectional=bidir))
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    packed = pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=False)
    D = 2 * (2 if bidir else 1)
    h0 = torch.randn(D, B, H, dtype=torch.float64, requires_grad=True)
    hx = h0 if cls is nn.GRU else (h0, torch.randn(D, B, H, dtype=torch.float64, requires_grad=True))
    check_same(ref, ours, (packed, hx), {})
    check_same(ref, ours, (packed,), {})


@pytest.mark.parametrize("cls", [nn.GRU, nn.LSTM])
def test_unbatched_and_float32(cls):
    ref, ours = pair(cls, (4, 5, 2), dict(batch_first=True))
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    check_same(ref, ours, (x,), {})
    ref32, ours32 = ref.float(), ours.float()
    x32 = torch.randn(3, 6, 4)
    for a, b in zip(tensors(ours32(x32)), tensors(ref32(x32))):
        torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("cls", [nn.GRU, nn.LSTM])
def test_dropout_between_layers_uses_torchs_random_stream(cls):
    ref, ours = pair(cls, (4, 5, 3), dict(dropout=0.5))
    ref.train(), ours.train()
    x = torch.randn(6, 2, 4, dtype=torch.float64, requires_grad=True)
    check_same(ref, ours, (x,), {}, seed=7)


@pytest.mark.parametrize("cls", [nn.GRUCell, nn.LSTMCell])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("given", [True, False])
def test_cells_match_torch(cls, bias, batched, given):
    ref, ours = pair(cls, (4, 6), dict(bias=bias))
    shape = (3,) if batched else ()
    x = torch.randn(*shape, 4, dtype=torch.float64, requires_grad=True)
    h = torch.randn(*shape, 6, dtype=torch.float64, requires_grad=True)
    hx = h if cls is nn.GRUCell else (h, torch.randn(*shape, 6, dtype=torch.float64, requires_grad=True))
    check_same(ref, ours, (x, hx) if given else (x,), {})


@pytest.mark.parametrize("cls", [nn.GRU, nn.LSTM, nn.GRUCell, nn.LSTMCell])
def test_state_dict_and_parameters_are_torchs(cls):
    ref, ours = pair(cls, (4, 6), {})
    assert list(ref.state_dict()) == list(ours.state_dict())
    assert [p.shape for p in ref.parameters()] == [p.shape for p in ours.parameters()]
    ref.load_state_dict(ours.state_dict())


@pytest.mark.parametrize("cls", [nn.GRU, nn.LSTM, nn.GRUCell, nn.LSTMCell])
def test_devices_without_a_kernel_run_torchs_implementation(cls):
    """A device without rnnattn kernels (here "meta"; a GPU for the GRU/LSTM):
    the module runs torch's implementation, with torch's results."""
    ref, ours = pair(cls, (4, 6), {}, dtype=torch.float32)
    ref, ours = ref.to("meta"), ours.to("meta")
    x = torch.randn(5, 2, 4, device="meta") if cls in (nn.GRU, nn.LSTM) else torch.randn(2, 4, device="meta")
    got, want = tensors(ours(x)), tensors(ref(x))
    assert [(t.shape, t.dtype, t.device.type) for t in got] == [(t.shape, t.dtype, t.device.type) for t in want]


@pytest.mark.parametrize("cls", [nn.GRU, nn.LSTM])
def test_torch_compile_fullgraph_module(cls):
    ref, ours = pair(cls, (4, 6, 2), dict(bidirectional=True))
    x = torch.randn(5, 3, 4, dtype=torch.float64, requires_grad=True)
    compiled = torch.compile(ours, fullgraph=True, backend="aot_eager")
    out = tensors(compiled(x))
    want = tensors(ref(x))
    for a, b in zip(out, want):
        torch.testing.assert_close(a, b, **TOL64)
    g = torch.autograd.grad(sum(o.sum() for o in out), [x])
    rg = torch.autograd.grad(sum(o.sum() for o in want), [x])
    torch.testing.assert_close(g[0], rg[0], **TOL64)


@pytest.mark.parametrize("how", ["no_grad", "frozen"])
@pytest.mark.parametrize("cls", [nn.RNN, nn.GRU, nn.LSTM])
def test_torch_compile_fullgraph_inference(cls, how):
    """A compiled bidirectional module where no grad is needed (under no_grad,
    or every parameter frozen): the RNN's two-direction autograd.Function
    made TorchDynamo fail there, so its forward runs alone (ops.py)."""
    ref, ours = pair(cls, (4, 6, 2), dict(bidirectional=True))
    if how == "frozen":
        ours.requires_grad_(False)
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    compiled = torch.compile(ours, fullgraph=True, backend="aot_eager")
    try:
        with torch.no_grad() if how == "no_grad" else contextlib.nullcontext():
            out = tensors(compiled(x))
    finally:
        # Leave no compiled frames behind: torch 2.4's TorchDynamo allows 8 per
        # code object in the whole process, which the later compile tests need.
        torch._dynamo.reset()
    for a, b in zip(out, tensors(ref(x))):
        torch.testing.assert_close(a, b, **TOL64)


def test_convert_swaps_all_six_and_keeps_the_parameters():
    model = nn.ModuleDict({"rnn": nn.RNN(3, 4), "gru": nn.GRU(3, 4), "lstm": nn.LSTM(3, 4, proj_size=2),
                           "rc": nn.RNNCell(3, 4), "gc": nn.GRUCell(3, 4), "lc": nn.LSTMCell(3, 4)})
    params = dict(model.named_parameters())
    rnnattn.convert(model)
    assert [type(m) for m in model.values()] == [rnnattn.RNN, rnnattn.GRU, rnnattn.LSTM, rnnattn.RNNCell,
                                                 rnnattn.GRUCell, rnnattn.LSTMCell]
    for n, p in model.named_parameters():
        assert p is params[n]


# ---- second derivatives (create_graph=True) -------------------------------------------
# torch's modules' double backward on the CPU is the reference.


@pytest.mark.parametrize("case", SAMPLE_CASES, ids=_case_id)
def test_pytorch_module_db_samples_second_order(case):
    """A gradient penalty through every module_db sample of the six modules
    (both training modes; dropout draws the same masks): the grads and the
    penalty's grads of every input and parameter equal torch's."""
    ref, ours, s = _sample_pair(case)
    assert_same_second_order(ours, ref, s.forward_input.args, s.forward_input.kwargs)


@pytest.mark.parametrize("cls,proj", [(nn.GRU, 0), (nn.LSTM, 0), (nn.LSTM, 2)])
@pytest.mark.parametrize("packed", [False, True])
def test_second_order_bidirectional_two_layers_match_torch(cls, proj, packed):
    T, B, I, H = 4, 3, 3, 4
    ref, ours = pair(cls, (I, H, 2), dict(bidirectional=True, **({"proj_size": proj} if proj else {})))
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4, B, proj or H, dtype=torch.float64, requires_grad=True)
    hx = h0 if cls is nn.GRU else (h0, torch.randn(4, B, H, dtype=torch.float64, requires_grad=True))
    inp = pack_padded_sequence(x, torch.tensor([4, 1, 3]), enforce_sorted=False) if packed else x
    assert_same_second_order(ours, ref, (inp, hx))
    assert_same_second_order(ours, ref, (inp,))


@pytest.mark.parametrize("cls", [nn.GRUCell, nn.LSTMCell])
@pytest.mark.parametrize("bias", [True, False])
def test_second_order_cells_match_torch(cls, bias):
    ref, ours = pair(cls, (3, 4), dict(bias=bias))
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    h = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    hx = h if cls is nn.GRUCell else (h, torch.randn(2, 4, dtype=torch.float64, requires_grad=True))
    assert_same_second_order(ours, ref, (x, hx))
    assert_same_second_order(ours, ref, (x[0],))


def test_second_order_runs_the_differentiable_fused_ops():
    """The create_graph backward of GRU / LSTM runs their differentiable ops
    (not torch's modules), a plain backward the fused ones."""
    x = torch.randn(3, 2, 3, dtype=torch.float64, requires_grad=True)
    for cls, cell in [(rnnattn.GRU, "gru"), (rnnattn.LSTM, "lstm")]:
        m = cls(3, 4, dtype=torch.float64)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            (g,) = torch.autograd.grad(m(x)[0].sum(), x, create_graph=True)
            (g**2).sum().backward()
        called = {e.name for e in prof.events()}
        assert f"rnnattn::{cell}_backward_differentiable" in called and f"rnnattn::{cell}_forward" in called
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            m(x)[0].sum().backward()
        called = {e.name for e in prof.events()}
        assert f"rnnattn::{cell}_backward" in called and f"rnnattn::{cell}_backward_differentiable" not in called


GRADGRAD_CASES = [
    (nn.GRU, (2, 2, 2), dict(bidirectional=True), False),
    (nn.GRU, (2, 3, 1), dict(batch_first=True), True),
    (nn.LSTM, (2, 2, 2), dict(bidirectional=True), True),
    (nn.LSTM, (2, 3, 1), dict(proj_size=2, bias=False), False),
    (nn.GRUCell, (2, 3), {}, False),
    (nn.LSTMCell, (2, 3), {}, False),
]


@pytest.mark.parametrize("cls,args,kwargs,packed", GRADGRAD_CASES, ids=lambda v: getattr(v, "__name__", None))
def test_gradgradcheck(cls, args, kwargs, packed):
    """gradgradcheck of the module in its input, states and parameters."""
    ours = TWINS[cls](*args, **kwargs).double()
    cell = cls in (nn.GRUCell, nn.LSTMCell)
    shape = (2, args[0]) if cell else ((2, 3) if ours.batch_first else (3, 2)) + (args[0],)  # T = 3, B = 2
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    if cell:
        inputs = (x,)
    elif packed:
        inputs = (pack_padded_sequence(x, torch.tensor([3, 2]), batch_first=ours.batch_first, enforce_sorted=False),)
    else:
        inputs = (x,)
    if not cell:
        D = args[2] * (2 if ours.bidirectional else 1)
        h0 = torch.randn(D, 2, ours.proj_size or ours.hidden_size, dtype=torch.float64, requires_grad=True)
        c0 = torch.randn(D, 2, ours.hidden_size, dtype=torch.float64, requires_grad=True)
        inputs += (h0 if cls is nn.GRU else (h0, c0),)
    assert module_gradgradcheck(ours, inputs, fast_mode=not cell)

"""Who is timed: for one case, the fused op and what a user would otherwise run.

Every contender gets the same weights and inputs (its own copies, so no two
share a ``.grad``) and exposes

* ``step()``: one timed iteration. In "fwd+bwd" it clears the gradients
  (``grad = None``, as ``optimizer.zero_grad()`` does), runs the forward and
  backpropagates fixed random output gradients to the input and every
  parameter; in "fwd" it runs the forward under ``no_grad``.
* ``check()``: the values the contenders must agree on (outputs, and in
  "fwd+bwd" the gradients), so the benchmark never compares unequal work.
* ``reset()``: drops gradients left by earlier calls, so that a memory
  measurement starts from the same state for everyone.

RNN, GRU, LSTM: ``rnnattn.RNN`` vs ``torch.nn.RNN`` (its native CPU loop;
cuDNN on CUDA) vs ``rnnattn.functional.rnn`` with
``rnnattn.reference.rnn_layer`` (the plain-PyTorch recurrence, one op per
step, autograd for the backward); the same for ``GRU`` and ``LSTM``. On
CUDA the RNN also has ``persistent`` and ``fallback``: ``rnnattn.RNN`` with
its recurrence path forced through ``RNNATTN_RNN_CUDA_PATH`` (n/a where the
persistent kernel cannot run), and ``rnnattn``'s note says which path the
path rule took.

Attention pooling: ``rnnattn.AttentionPooling`` vs the eager composition
(``H @ w``, ``masked_fill``, ``softmax``, ``bmm``) vs ``torch.compile`` of
that same function vs ``F.scaled_dot_product_attention`` (one query ``w``
over keys = values = ``H``, ``scale=1``; it returns the context only). The
baselines get their boolean mask precomputed, outside the timed call; the
fused module is given the lengths (on the CPU, as a DataLoader yields them).
"""
import copy
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import rnnattn
from rnnattn import functional, ops, reference

from .cases import TORCH_MODULE


@dataclass
class Contender:
    step: Callable[[], object]
    check: Callable[[], List[Tensor]]
    reset: Callable[[], None] = lambda: None
    note: str = ""


@dataclass
class Built:
    """The contenders of one case, and why any are missing."""

    contenders: Dict[str, Contender] = field(default_factory=dict)
    skipped: Dict[str, str] = field(default_factory=dict)


def spread_lengths(T: int, B: int) -> List[int]:
    """``B`` lengths spread evenly from ``T`` down to ``max(1, T // 4)``,
    longest first (sorted, as ``pack_padded_sequence`` wants by default)."""
    lo = max(1, T // 4)
    if B == 1:
        return [T]
    return [round(T - (T - lo) * i / (B - 1)) for i in range(B)]


def _leaf(t: Tensor, grad: bool) -> Tensor:
    return t.detach().clone().requires_grad_(grad)


def _clear(tensors: Sequence[Tensor]) -> Callable[[], None]:
    def reset() -> None:
        for t in tensors:
            t.grad = None

    return reset


def _make(
    forward: Callable[[], Sequence[Tensor]],
    leaves: Sequence[Tensor],
    grads: Sequence[Tensor],
    mode: str,
    note: str = "",
) -> Contender:
    """Wraps ``forward`` (returning the tensors to differentiate, in the
    order of ``grads``) into a Contender for ``mode``."""
    reset = _clear(leaves)
    if mode == "fwd":

        def step():
            with torch.no_grad():
                return forward()

        def check():
            return [t.detach() for t in step()]

    else:

        def step():
            reset()
            outs = forward()
            torch.autograd.backward(list(outs), list(grads[: len(outs)]))
            return outs

        def check():
            outs = step()
            return [t.detach() for t in outs] + [t.grad for t in leaves]

    return Contender(step, check, reset, note)


# ---------------------------------------------------------------------------
# RNN

PATH_ENV = "RNNATTN_RNN_CUDA_PATH"


def with_path(path: Optional[str], fn: Callable[[], object]) -> object:
    """Runs ``fn`` with ``RNNATTN_RNN_CUDA_PATH=path`` (None: unset), then
    restores the variable (the CUDA kernels read it at every call)."""
    old = os.environ.get(PATH_ENV)
    if path is None:
        os.environ.pop(PATH_ENV, None)
    else:
        os.environ[PATH_ENV] = path
    try:
        return fn()
    finally:
        if old is None:
            os.environ.pop(PATH_ENV, None)
        else:
            os.environ[PATH_ENV] = old


def _forced(path: str, c: Contender) -> Contender:
    return Contender(
        step=lambda: with_path(path, c.step), check=lambda: with_path(path, c.check), reset=c.reset, note=c.note
    )


def path_rule_choice(module: nn.Module, inp, case) -> str:
    """Which recurrence path the CUDA path rule takes for ``module(inp)``:
    both paths are deterministic, so the output is bitwise the persistent
    kernel's exactly when the rule picked it (in every layer)."""
    with torch.no_grad():
        out = module(inp)[0]
        try:
            forced = with_path("persistent", lambda: module(inp)[0])
        except RuntimeError:  # the persistent kernel cannot run here
            return "fallback"
    same = torch.equal(out.data if case.packed else out, forced.data if case.packed else forced)
    if same:
        return "persistent"
    return "fallback" if case.layers == 1 and not case.bidirectional else "fallback in some layer"


_OURS = {"rnn": rnnattn.RNN, "gru": rnnattn.GRU, "lstm": rnnattn.LSTM}
_THEIRS = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}
_REFERENCE = {
    "rnn": (functional.rnn, reference.rnn_layer),
    "gru": (functional.gru, reference.gru_layer),
    "lstm": (functional.lstm, reference.lstm_layer),
}


_GATES = {"rnn": 1, "gru": 3, "lstm": 4}


def gemm_floor(case, rows: int, device, dtype) -> Contender:
    """The physical yardstick of a recurrent case: its multiply-adds run as
    large GEMMs on the same threads, with no recurrence in the way. For each
    layer and direction over all ``rows`` (T*B, or the packed rows): the
    input projection X W_ih^T and the recurrent product H W_hh^T, and with
    the backward also dX, dW_ih, dH and dW_hh. Its values are not the
    recurrence's (``check`` returns None: nothing to compare)."""
    G = _GATES[case.cell] * case.H
    D = 2 if case.bidirectional else 1
    mm = []  # (A, B) pairs of every GEMM, operands made once
    for layer in range(case.layers):
        width = case.I if layer == 0 else D * case.H
        for _ in range(D):
            x = torch.randn(rows, width, device=device, dtype=dtype)
            h = torch.randn(rows, case.H, device=device, dtype=dtype)
            w_ih = torch.randn(G, width, device=device, dtype=dtype)
            w_hh = torch.randn(G, case.H, device=device, dtype=dtype)
            mm += [(x, w_ih.T), (h, w_hh.T)]
            if case.mode == "fwd+bwd":
                dg = torch.randn(rows, G, device=device, dtype=dtype)
                mm += [(dg, w_ih), (dg.T, x), (dg, w_hh), (dg.T, h)]

    def step():
        with torch.no_grad():
            return [torch.mm(a, b) for a, b in mm]

    return Contender(step, lambda: None, note="the same multiply-adds as large GEMMs (no recurrence)")


def rnn_contenders(case, device, dtype, names: Sequence[str], seed: int = 0) -> Built:
    """rnnattn.RNN / GRU / LSTM (by ``case.cell``) vs torch's module vs the
    reference composition."""
    built = Built()
    torch.manual_seed(seed)
    bi = case.bidirectional
    cell = case.cell
    lstm = cell == "lstm"
    ours = _OURS[cell](case.I, case.H, num_layers=case.layers, bidirectional=bi).to(device, dtype)
    # Inference runs in eval mode, as a user would (cuDNN then keeps no
    # reserve space for a backward).
    training = case.mode == "fwd+bwd"
    ours.train(training)
    D = 2 if bi else 1
    x = torch.randn(case.T, case.B, case.I, device=device, dtype=dtype)
    batch_sizes = None
    if case.packed:
        lengths = torch.tensor(spread_lengths(case.T, case.B))
        packed = pack_padded_sequence(x, lengths, enforce_sorted=True)
        x, batch_sizes = packed.data, packed.batch_sizes
    state_shape = (case.layers * D, case.B, case.H)
    g_out = torch.randn(*x.shape[:-1], D * case.H, device=device, dtype=dtype)
    grads = (g_out,) + tuple(torch.randn(state_shape, device=device, dtype=dtype) for _ in range(1 + lstm))
    need_grad = training

    def wrap(inp: Tensor):
        return PackedSequence(inp, batch_sizes) if case.packed else inp

    def flat(out, h):
        """(output, h_n[, c_n]) as a flat tuple, in the order of ``grads``."""
        return ((out.data if isinstance(out, PackedSequence) else out),) + (tuple(h) if lstm else (h,))

    def module_forward(module: nn.Module, inp: Tensor):
        def forward():
            return flat(*module(wrap(inp)))

        return forward

    for name in names:
        if name == "rnnattn":
            inp = _leaf(x, need_grad)
            note = "" if ops.has_kernel(x.device, dtype, cell) else "no rnnattn kernel here: ran torch's path"
            if device.type == "cuda" and cell == "rnn" and not note:
                note = "path rule chose " + path_rule_choice(ours, wrap(x), case)
            built.contenders[name] = _make(
                module_forward(ours, inp), [inp, *ours.parameters()], grads, case.mode, note
            )
        elif name in ("persistent", "fallback"):
            if device.type != "cuda" or cell != "rnn" or not ops.has_kernel(x.device, dtype):
                built.skipped[name] = "needs rnnattn's CUDA kernels"
                continue
            mine = copy.deepcopy(ours)
            inp = _leaf(x, need_grad)
            c = _make(module_forward(mine, inp), [inp, *mine.parameters()], grads, case.mode,
                      f"rnnattn with {PATH_ENV}={name}")
            built.contenders[name] = _forced(name, c)
        elif name == TORCH_MODULE[cell]:
            theirs = _THEIRS[cell](case.I, case.H, num_layers=case.layers, bidirectional=bi).to(device, dtype)
            theirs.load_state_dict(ours.state_dict())
            theirs.train(training)
            inp = _leaf(x, need_grad)
            note = "cuDNN" if device.type == "cuda" and torch.backends.cudnn.is_available() else ""
            built.contenders[name] = _make(
                module_forward(theirs, inp), [inp, *theirs.parameters()], grads, case.mode, note
            )
        elif name == "GEMM floor":
            built.contenders[name] = gemm_floor(case, x.shape[0] if case.packed else case.T * case.B, device, dtype)
        elif name == "reference":
            inp = _leaf(x, need_grad)
            weights = [_leaf(getattr(ours, n), need_grad) for n in ours._flat_weights_names]
            stack, layer = _REFERENCE[cell]

            def forward(inp=inp, weights=weights, stack=stack, layer=layer):
                hx = torch.zeros(state_shape, device=device, dtype=dtype)
                out, h = stack(inp, batch_sizes, (hx, hx) if lstm else hx, weights, case.layers, True, bi,
                               layer=layer)
                return flat(out, h)

            built.contenders[name] = _make(forward, [inp, *weights], grads, case.mode)
        else:
            raise ValueError(
                f"unknown {cell} contender {name!r}; expected one of {', '.join(case.contenders)}"
                + (", persistent, fallback" if cell == "rnn" else "")
            )
    return built


# ---------------------------------------------------------------------------
# Attention pooling


def eager_pool(H: Tensor, w: Tensor, mask: Tensor):
    """Attention pooling as a user writes it in PyTorch: ``(context, weights)``."""
    scores = (H @ w).masked_fill(~mask, float("-inf"))  # (B, T)
    a = torch.softmax(scores, dim=1)
    context = torch.bmm(a.unsqueeze(1), H).squeeze(1)  # (B, D)
    return context, a


def sdpa_pool(H: Tensor, w: Tensor, mask: Tensor) -> Tensor:
    """The same pooling as one ``scaled_dot_product_attention`` call."""
    B, _, D = H.shape
    q = w.reshape(1, 1, D).expand(B, 1, D)
    return F.scaled_dot_product_attention(q, H, H, attn_mask=mask.unsqueeze(1), scale=1.0).squeeze(1)


def has_attention_pooling() -> bool:
    return hasattr(rnnattn, "AttentionPooling")


def _query_parameter(module: nn.Module, D: int) -> Tensor:
    """The learned query of a heads=1, linear-score, bias-free pooling module."""
    params = [p for p in module.parameters() if p.numel() == D]
    if len(params) != 1:
        shapes = [tuple(p.shape) for p in module.parameters()]
        raise RuntimeError(
            f"rnnattn.AttentionPooling({D}): expected one query parameter of {D} elements, found {shapes}"
        )
    return params[0]


def pool_contenders(case, device, dtype, names: Sequence[str], seed: int = 0) -> Built:
    built = Built()
    if not has_attention_pooling():
        for n in names:
            built.skipped[n] = "rnnattn has no AttentionPooling yet"
        return built
    torch.manual_seed(seed)
    B, T, D = case.B, case.T, case.D
    ours = rnnattn.AttentionPooling(D, device=device, dtype=dtype)
    ours.train(case.mode == "fwd+bwd")
    w0 = _query_parameter(ours, D)
    with torch.no_grad():  # a query of typical scale, whatever the module's init
        w0.copy_(torch.randn(D, device=device, dtype=dtype).reshape(w0.shape) / D**0.5)
    H0 = torch.randn(B, T, D, device=device, dtype=dtype)
    lens = spread_lengths(T, B)
    perm = torch.randperm(B)
    # The module gets CPU lengths, as a DataLoader's collate function yields
    # them; the baselines get a ready mask on the device.
    lengths = torch.tensor(lens)[perm]
    mask = torch.arange(T, device=device).unsqueeze(0) < lengths.to(device).unsqueeze(1)
    g_c = torch.randn(B, D, device=device, dtype=dtype)
    need_grad = case.mode == "fwd+bwd"
    compiled = None

    for name in names:
        H = _leaf(H0, need_grad)
        if name == "rnnattn":

            def forward(H=H):
                return (ours(H, lengths=lengths)[0],)

            built.contenders[name] = _make(forward, [H, *ours.parameters()], (g_c,), case.mode)
            continue
        w = _leaf(w0.reshape(D), need_grad)
        if name == "eager":
            fn = eager_pool
        elif name == "compile":
            if compiled is None:
                # A fresh cache per case: dynamo caps recompilations of one
                # function (then silently runs it eagerly), and a grid has
                # more shapes than that cap. fullgraph: fail, never fall back.
                torch._dynamo.reset()
                compiled = torch.compile(eager_pool, dynamic=False, fullgraph=True)
            fn = compiled
        elif name == "sdpa":
            built.contenders[name] = _make(
                lambda H=H, w=w: (sdpa_pool(H, w, mask),), [H, w], (g_c,), case.mode, "context only"
            )
            continue
        else:
            raise ValueError(f"unknown pooling contender {name!r}; expected one of rnnattn, eager, compile, sdpa")
        built.contenders[name] = _make(lambda H=H, w=w, fn=fn: (fn(H, w, mask)[0],), [H, w], (g_c,), case.mode)
    return built


def build(case, device, dtype, names: Sequence[str], seed: int = 0) -> Built:
    if case.section == "latency":
        from . import latency

        return latency.build(case, device, dtype, names, seed)
    if case.section == "pool":
        return pool_contenders(case, device, dtype, names, seed)
    return rnn_contenders(case, device, dtype, names, seed)

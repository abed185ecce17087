"""Python bindings of the compiled operators: fake (meta) kernels, and the
differentiable entry points.

``torch.ops.rnnattn.rnn_forward`` / ``rnn_backward`` are registered in C++
(csrc/ops.cpp), and so is the autograd of ``rnn_forward``
(csrc/rnn_autograd.cpp: the backward is the fused ``rnn_backward``; a Python
wrapper would cost more per call than a small RNN's whole forward). A
backward under ``create_graph=True`` that must itself be differentiable
(double backward, e.g. a gradient penalty) runs
``rnn_backward_differentiable`` instead, which recomputes the layer with
:mod:`rnnattn.reference` (see ``rnnattn/_differentiable_backward.py``); the
same holds for the GRU, the LSTM and the pooling operators. Here the
forward and backward ops get a fake kernel each (``torch.library.register_fake``), so
``torch.compile`` and other tracing see output shapes without running the
kernel.

:func:`rnn_layer` is the differentiable entry point for one layer and one
direction, :func:`rnn_bidirectional_layer` for both directions of a layer;
everything else (layers, dropout) is composition in ``rnnattn.functional``.
"""
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from . import _load  # noqa: F401  (registers torch.ops.rnnattn.*)
from . import _differentiable_backward  # noqa: F401  (the kernels of the *_backward_differentiable ops)

__all__ = ["rnn_layer", "rnn_bidirectional_layer", "gru_layer", "lstm_layer", "has_kernel"]

_CPU_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)  # half: float32 inside
_CUDA_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def has_kernel(device: torch.device, dtype: torch.dtype, cell: str = "rnn") -> bool:
    """Whether the compiled kernels of ``cell`` ("rnn", "gru" or "lstm")
    cover tensors of this device and dtype. The GRU and LSTM have CPU kernels
    only so far."""
    if device.type == "cpu":
        return dtype in _CPU_DTYPES
    if device.type == "cuda":
        return cell == "rnn" and _load.WITH_CUDA and dtype in _CUDA_DTYPES
    return False


def rnn_layer(
    input: Tensor,
    batch_sizes: Optional[Tensor],
    hx: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Optional[Tensor] = None,
    b_hh: Optional[Tensor] = None,
    relu: bool = False,
    reverse: bool = False,
) -> Tuple[Tensor, Tensor]:
    """One Elman RNN layer in one direction, fused (differentiable).

    Args:
        input: ``(T, B, I)`` time-major, or ``(N, I)`` packed rows when
            ``batch_sizes`` is given.
        batch_sizes: ``None`` for padded input, else the int64 CPU tensor of a
            :class:`~torch.nn.utils.rnn.PackedSequence` (non-increasing).
        hx: ``(B, H)`` initial state.
        w_ih, w_hh, b_ih, b_hh: as in :class:`torch.nn.RNN`.
        relu: ReLU instead of tanh.
        reverse: run from the last step to the first (second direction).

    Returns:
        ``(output, h_n)``: output has the leading shape of ``input`` and ``H``
        features; ``h_n`` is ``(B, H)``.
    """
    return torch.ops.rnnattn.rnn_forward(input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, relu, reverse)


def gru_layer(
    input: Tensor,
    batch_sizes: Optional[Tensor],
    hx: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Optional[Tensor] = None,
    b_hh: Optional[Tensor] = None,
    reverse: bool = False,
) -> Tuple[Tensor, Tensor]:
    """One GRU layer in one direction, fused (differentiable); torch's math,
    gate order (r, z, n) and bias placement. Arguments as :func:`rnn_layer`
    with ``w_ih`` ``(3H, I)``, ``w_hh`` ``(3H, H)``, biases ``(3H,)``.
    Returns ``(output, h_n)``.

    With grad mode off no backward can run, so the kernel keeps no reserve
    (what the backward would read) beyond what a step needs."""
    output, h_n, _ = torch.ops.rnnattn.gru_forward(
        input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, reverse, torch.is_grad_enabled()
    )
    return output, h_n


def lstm_layer(
    input: Tensor,
    batch_sizes: Optional[Tensor],
    hx: Tensor,
    cx: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Optional[Tensor] = None,
    b_hh: Optional[Tensor] = None,
    w_hr: Optional[Tensor] = None,
    reverse: bool = False,
) -> Tuple[Tensor, Tensor, Tensor]:
    """One LSTM layer in one direction, fused (differentiable); torch's math
    and gate order (i, f, g, o). ``w_ih`` ``(4H, I)``, ``w_hh`` ``(4H, P)``,
    biases ``(4H,)``, ``cx`` ``(B, H)``; ``w_hr`` ``(P, H)`` projects the
    state to ``proj_size`` P (then ``hx``, ``h_n`` and the output are P wide,
    else H). Returns ``(output, h_n, c_n)``. No reserve is kept with grad
    mode off (as :func:`gru_layer`)."""
    output, h_n, c_n, _ = torch.ops.rnnattn.lstm_forward(
        input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, torch.is_grad_enabled()
    )
    return output, h_n, c_n


def _maybe_empty(needed: bool, like: Tensor, shape):
    """A fake grad: ``shape`` when asked for, else the kernels' empty tensor."""
    return like.new_empty(shape if needed else (0,))


def _out_shape(input: Tensor, hidden: int):
    return (*input.shape[:-1], hidden)


@torch.library.register_fake("rnnattn::rnn_forward")
def _rnn_forward_fake(input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, relu, reverse):
    torch._check(input.dim() == (2 if batch_sizes is not None else 3), lambda: "rnnattn: bad input rank")
    torch._check(w_ih.dim() == 2 and input.shape[-1] == w_ih.shape[1], lambda: "rnnattn: input size mismatch")
    hidden = w_ih.shape[0]
    return input.new_empty(_out_shape(input, hidden)), hx.new_empty(hx.shape)


@torch.library.register_fake("rnnattn::rnn_backward")
def _rnn_backward_fake(
    grad_output, grad_hn, input, batch_sizes, hx, w_ih, w_hh, output, relu, reverse, need_input_grad, need_weight_grad
):
    return (
        _maybe_empty(need_input_grad, input, input.shape),
        hx.new_empty(hx.shape),
        _maybe_empty(need_weight_grad, w_ih, w_ih.shape),
        _maybe_empty(need_weight_grad, w_hh, w_hh.shape),
        _maybe_empty(need_weight_grad, w_ih, (w_ih.shape[0],)),
    )


def _rows(input: Tensor, batch_sizes) -> int:
    return input.shape[0] if batch_sizes is not None else input.shape[0] * input.shape[1]


@torch.library.register_fake("rnnattn::gru_forward")
def _gru_forward_fake(input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, reverse, train=True):
    torch._check(input.dim() == (2 if batch_sizes is not None else 3), lambda: "rnnattn: bad input rank")
    torch._check(w_ih.dim() == 2 and input.shape[-1] == w_ih.shape[1], lambda: "rnnattn: input size mismatch")
    hidden = w_ih.shape[0] // 3
    reserve = input.new_empty((_rows(input, batch_sizes), 4 * hidden) if train else (0,))
    return input.new_empty(_out_shape(input, hidden)), hx.new_empty(hx.shape), reserve


@torch.library.register_fake("rnnattn::gru_backward")
def _gru_backward_fake(
    grad_output, grad_hn, input, batch_sizes, hx, w_ih, w_hh, output, reserve, reverse, need_input_grad,
    need_weight_grad,
):
    return (
        _maybe_empty(need_input_grad, input, input.shape),
        hx.new_empty(hx.shape),
        _maybe_empty(need_weight_grad, w_ih, w_ih.shape),
        _maybe_empty(need_weight_grad, w_hh, w_hh.shape),
        _maybe_empty(need_weight_grad, w_ih, (w_ih.shape[0],)),
        _maybe_empty(need_weight_grad, w_ih, (w_ih.shape[0],)),
    )


@torch.library.register_fake("rnnattn::lstm_forward")
def _lstm_forward_fake(input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, train=True):
    torch._check(input.dim() == (2 if batch_sizes is not None else 3), lambda: "rnnattn: bad input rank")
    torch._check(w_ih.dim() == 2 and input.shape[-1] == w_ih.shape[1], lambda: "rnnattn: input size mismatch")
    hidden = w_ih.shape[0] // 4
    state = w_hr.shape[0] if w_hr is not None else hidden
    reserve = input.new_empty((_rows(input, batch_sizes), 5 * hidden) if train else (0,))
    return input.new_empty(_out_shape(input, state)), hx.new_empty(hx.shape), cx.new_empty(cx.shape), reserve


@torch.library.register_fake("rnnattn::lstm_backward")
def _lstm_backward_fake(
    grad_output, grad_hn, grad_cn, input, batch_sizes, hx, cx, w_ih, w_hh, w_hr, output, reserve, reverse,
    need_input_grad, need_weight_grad,
):
    return (
        _maybe_empty(need_input_grad, input, input.shape),
        hx.new_empty(hx.shape),
        cx.new_empty(cx.shape),
        _maybe_empty(need_weight_grad, w_ih, w_ih.shape),
        _maybe_empty(need_weight_grad, w_hh, w_hh.shape),
        _maybe_empty(need_weight_grad, w_ih, (w_ih.shape[0],)),
        _maybe_empty(need_weight_grad and w_hr is not None, w_ih, w_hr.shape if w_hr is not None else (0,)),
    )


def _direction_grads(grad_output, grad_hn, input, batch_sizes, hx, w_ih, w_hh, output, relu, reverse, need):
    """Grads of one layer and direction from the fused backward kernel.

    ``need`` holds needs_input_grad of (input, batch_sizes, hx, w_ih, w_hh,
    b_ih, b_hh); returns the grads in that order (None where not needed).
    ``grad_output`` and ``output`` may be strided views (one direction's half
    of a bidirectional output): the CPU kernel reads them in place."""
    if grad_output is None:
        grad_output = torch.zeros_like(output)
    if grad_hn is None:
        grad_hn = torch.zeros_like(hx)
    need_input = bool(need[0])
    need_weight = bool(any(need[3:7]))
    dx, dhx, dwi, dwh, db = torch.ops.rnnattn.rnn_backward(
        grad_output, grad_hn, input, batch_sizes, hx, w_ih, w_hh, output,
        relu, reverse, need_input, need_weight,
    )
    # b_ih and b_hh enter as a sum, so they share one grad; each gets its own
    # tensor so that their .grad buffers never alias.
    return (
        dx if need_input else None,
        None,
        dhx if need[2] else None,
        dwi if need[3] else None,
        dwh if need[4] else None,
        db if need[5] else None,
        (db.clone() if need[5] else db) if need[6] else None,
    )


def _direction_grads_differentiable(grad_output, grad_hn, input, batch_sizes, hx, weights, relu, reverse, need):
    """The same grads as :func:`_direction_grads`, recorded for double
    backward (rnnattn/_differentiable_backward.py): ``weights`` is
    ``(w_ih, w_hh, b_ih, b_hh)``."""
    if grad_output is None:
        grad_output = torch.zeros(*input.shape[:-1], hx.shape[-1], dtype=hx.dtype, device=hx.device)
    if grad_hn is None:
        grad_hn = torch.zeros_like(hx)
    flags = [int(bool(n)) for n in (need[0], *need[2:7])]
    dx, dhx, dwi, dwh, dbi, dbh = torch.ops.rnnattn.rnn_backward_differentiable(
        grad_output, grad_hn, input, batch_sizes, hx, *weights, relu, reverse, flags
    )
    return tuple(g if n else None for g, n in zip((dx, None, dhx, dwi, dwh, dbi, dbh), need))


class _BidirectionalLayer(torch.autograd.Function):
    """Both directions of one layer; the (..., 2H) output is saved once.

    Composing two ``rnn_layer`` calls with ``torch.cat`` keeps each
    direction's output alive for its backward beside the concatenation: the
    layer's activations twice. Here each direction's backward gets its half of
    the saved concatenation as a strided view instead."""

    @staticmethod
    def forward(input, batch_sizes, hx_f, hx_b, relu, *weights):
        w_f, w_b = weights[:4], weights[4:]
        out_f, h_f = torch.ops.rnnattn.rnn_forward(input, batch_sizes, hx_f, *w_f, relu, False)
        out_b, h_b = torch.ops.rnnattn.rnn_forward(input, batch_sizes, hx_b, *w_b, relu, True)
        return torch.cat([out_f, out_b], dim=-1), h_f, h_b

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, batch_sizes, hx_f, hx_b, relu, *weights = inputs
        # The fused backward does not read the biases (which may be None);
        # the differentiable one (double backward) recomputes the forward and
        # does (parameters: saving them costs no memory).
        ctx.save_for_backward(input, batch_sizes, hx_f, hx_b, *weights, output[0])
        ctx.relu = relu

    @staticmethod
    def backward(ctx, grad_output, grad_hf, grad_hb):
        input, batch_sizes, hx_f, hx_b, *weights, output = ctx.saved_tensors
        w_f, w_b = weights[:4], weights[4:]
        H = w_f[1].shape[0]
        need = ctx.needs_input_grad
        halves = [grad_output[..., :H], grad_output[..., H:]] if grad_output is not None else [None, None]
        states = [(hx_f, grad_hf, w_f), (hx_b, grad_hb, w_b)]
        # create_graph=True with something here requiring grad: the grads must
        # themselves be differentiable, which the fused kernel's are not.
        differentiable = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (grad_output, grad_hf, grad_hb, input, hx_f, hx_b, *weights)
        )
        grads = []
        for d, (hx, gh, w) in enumerate(states):
            dneed = (need[0], False, need[2 + d], *need[5 + 4 * d : 9 + 4 * d])
            if differentiable:
                grads.append(_direction_grads_differentiable(
                    halves[d], gh, input, batch_sizes, hx, w, ctx.relu, d == 1, dneed))
            else:
                out = output[..., :H] if d == 0 else output[..., H:]
                grads.append(_direction_grads(
                    halves[d], gh, input, batch_sizes, hx, w[0], w[1], out, ctx.relu, d == 1, dneed))
        (dx_f, _, dh_f, *dw_f), (dx_b, _, dh_b, *dw_b) = grads
        dx = None
        if need[0]:
            dx = dx_f + dx_b if differentiable else dx_f.add_(dx_b)
        return (dx, None, dh_f, dh_b, None, *dw_f, *dw_b)


def rnn_bidirectional_layer(
    input: Tensor,
    batch_sizes: Optional[Tensor],
    hx_f: Tensor,
    hx_b: Tensor,
    weights_f: Sequence[Optional[Tensor]],
    weights_b: Sequence[Optional[Tensor]],
    relu: bool = False,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Both directions of one layer, fused (differentiable): the same values
    as ``torch.cat`` of two :func:`rnn_layer` calls, with the layer's output
    kept once for the backward instead of twice.

    ``weights_f`` / ``weights_b`` are ``(w_ih, w_hh, b_ih, b_hh)`` (biases may
    be None). Returns ``(output, h_n_forward, h_n_backward)`` with ``output``
    ``(..., 2H)``."""
    args = (input, batch_sizes, hx_f, hx_b, relu, *weights_f, *weights_b)
    if not (torch.is_grad_enabled() and any(isinstance(t, Tensor) and t.requires_grad for t in args)):
        # No backward to keep the output for: the forward alone (which
        # torch.compile traces; the Function it could not where no grad is
        # needed).
        return _BidirectionalLayer.forward(*args)
    return _BidirectionalLayer.apply(*args)

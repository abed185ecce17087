"""Python bindings of the compiled operators: autograd and fake (meta) kernels.

``torch.ops.rnnattn.rnn_forward`` / ``rnn_backward`` are registered in C++
(csrc/ops.cpp). Here they get

* a fake kernel each (``torch.library.register_fake``), so ``torch.compile``
  and other tracing see output shapes without running the kernel, and
* a backward (``torch.library.register_autograd``) that calls the fused
  ``rnn_backward`` kernel.

:func:`rnn_layer` is the differentiable entry point for one layer and one
direction; everything else (layers, directions, dropout) is composition in
``rnnattn.functional``.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from . import _load  # noqa: F401  (registers torch.ops.rnnattn.*)

__all__ = ["rnn_layer", "has_kernel"]

_CPU_DTYPES = (torch.float32, torch.float64)
_CUDA_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def has_kernel(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the compiled RNN kernels cover tensors of this device and dtype."""
    if device.type == "cpu":
        return dtype in _CPU_DTYPES
    if device.type == "cuda":
        return _load.WITH_CUDA and dtype in _CUDA_DTYPES
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
    def maybe(needed, like, shape):
        return like.new_empty(shape if needed else (0,))

    return (
        maybe(need_input_grad, input, input.shape),
        hx.new_empty(hx.shape),
        maybe(need_weight_grad, w_ih, w_ih.shape),
        maybe(need_weight_grad, w_hh, w_hh.shape),
        maybe(need_weight_grad, w_ih, (w_ih.shape[0],)),
    )


def _rnn_setup_context(ctx, inputs, output):
    input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, relu, reverse = inputs
    ctx.save_for_backward(input, batch_sizes, hx, w_ih, w_hh, output[0])
    ctx.relu = relu
    ctx.reverse = reverse
    ctx.has_bias = b_ih is not None


def _rnn_backward(ctx, grad_output, grad_hn):
    input, batch_sizes, hx, w_ih, w_hh, output = ctx.saved_tensors
    if grad_output is None:
        grad_output = torch.zeros_like(output)
    if grad_hn is None:
        grad_hn = torch.zeros_like(hx)
    need = ctx.needs_input_grad
    need_input = bool(need[0])
    need_weight = bool(any(need[3:7]))
    dx, dhx, dwi, dwh, db = torch.ops.rnnattn.rnn_backward(
        grad_output, grad_hn, input, batch_sizes, hx, w_ih, w_hh, output,
        ctx.relu, ctx.reverse, need_input, need_weight,
    )
    # b_ih and b_hh enter as a sum, so they share one grad; each gets its own
    # tensor so that their .grad buffers never alias.
    db_ih = db if ctx.has_bias and need[5] else None
    db_hh = db.clone() if ctx.has_bias and need[6] else None
    return (
        dx if need_input else None,
        None,
        dhx if need[2] else None,
        dwi if need[3] else None,
        dwh if need[4] else None,
        db_ih,
        db_hh,
        None,
        None,
    )


torch.library.register_autograd("rnnattn::rnn_forward", _rnn_backward, setup_context=_rnn_setup_context)

"""Python bindings of the attention-pooling operators: entry points and fake kernels.

The four operators are registered in C++ (csrc/ops.cpp; their conventions are
in csrc/attention_common.h):

* ``attention_pool_forward(input, weight, bias, lengths, mask, chunk_size)``:
  linear score ``e_t = input_t . weight_h`` per head, masked softmax, weighted
  sum, fully fused (one pass over ``input``);
* ``attention_pool_scores_forward(input, scores, lengths, mask, chunk_size)``:
  the same pooling with the scores ``(B, T, k)`` given (computed by GEMMs, as
  for the additive score ``v . tanh(W input_t + b)``);

each with a fused ``*_backward`` that takes the grads of both outputs; their
autograd is registered in C++ (csrc/attention_autograd.cpp). Under
``create_graph=True`` (double backward) the autograd kernel runs
``*_backward_differentiable`` instead, which recomputes the pooling with
:mod:`rnnattn.reference` (rnnattn/_differentiable_backward.py). Here they
get a fake kernel each (shapes for ``torch.compile`` and other tracing).

:func:`attention_pool` and :func:`attention_pool_scores` are the
differentiable entry points, in the operators' raw shapes: ``context``
``(B, C, k, D)`` and ``weights`` ``(B, k, T)``. The module
:class:`rnnattn.AttentionPooling` builds on them.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from . import _load  # noqa: F401  (registers torch.ops.rnnattn.*)
# The attention kernels cover the same devices and dtypes as the RNN kernels.
from .ops import has_kernel

__all__ = ["attention_pool", "attention_pool_scores", "has_kernel", "num_chunks"]


def num_chunks(steps: int, chunk_size: int) -> int:
    """Context rows per sequence: 1 without chunks (``chunk_size == 0``), else ``ceil(T / K)``."""
    return 1 if chunk_size == 0 else (steps + chunk_size - 1) // chunk_size


def attention_pool(
    input: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    lengths: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    chunk_size: int = 0,
) -> Tuple[Tensor, Tensor]:
    """Fused linear-score attention pooling (differentiable in ``input``, ``weight``, ``bias``).

    Args:
        input: ``(B, T, D)``; any strides on ``B`` and ``T`` (pass time-major
            data as ``x.transpose(0, 1)``: it is not copied).
        weight: ``(k, D)``, one score vector per head.
        bias: ``(k,)`` or ``None``. It shifts all scores of a head equally and
            softmax is shift-invariant, so it changes neither output and its
            grad is exactly zero; accepted so that a module's bias parameter
            is part of the graph.
        lengths: ``(B,)`` integers in ``[0, T]`` (CPU or ``input``'s device);
            step ``t`` of row ``b`` is valid iff ``t < lengths[b]``.
        mask: ``(B, T)`` bool, ``True`` = valid step (any pattern). With both,
            a step must be valid under both.
        chunk_size: ``0`` pools whole sequences; ``K > 0`` pools each run of
            ``K`` steps separately (the last one ragged).

    Returns:
        ``(context, weights)``: ``(B, C, k, D)`` with ``C = num_chunks(T, chunk_size)``
        and ``(B, k, T)``. Invalid steps weigh 0; a chunk without valid
        steps gets context 0. Invalid steps of ``input`` are never read.
    """
    return torch.ops.rnnattn.attention_pool_forward(input, weight, bias, lengths, mask, chunk_size)


def attention_pool_scores(
    input: Tensor,
    scores: Tensor,
    lengths: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    chunk_size: int = 0,
) -> Tuple[Tensor, Tensor]:
    """Fused masked softmax + weighted sum with the scores given (differentiable
    in ``input`` and ``scores``).

    ``scores`` is ``(B, T, k)`` (any strides); everything else as in
    :func:`attention_pool`. Scores at invalid steps are never read.
    """
    return torch.ops.rnnattn.attention_pool_scores_forward(input, scores, lengths, mask, chunk_size)


# ---- fake (meta) kernels ----------------------------------------------------


def _fake_outputs(input: Tensor, heads, chunk_size: int):
    torch._check(input.dim() == 3, lambda: f"rnnattn.attention_pool: input must be (B, T, D), got {input.dim()}-D")
    torch._check(chunk_size >= 0, lambda: "rnnattn.attention_pool: chunk_size must be >= 0")
    B, T, D = input.shape
    chunks = 1 if chunk_size == 0 else (T + chunk_size - 1) // chunk_size
    return input.new_empty((B, chunks, heads, D)), input.new_empty((B, heads, T))


@torch.library.register_fake("rnnattn::attention_pool_forward")
def _attention_pool_fake(input, weight, bias, lengths, mask, chunk_size):
    torch._check(
        weight.dim() == 2 and weight.shape[1] == input.shape[-1],
        lambda: "rnnattn.attention_pool: weight must be (heads, D)",
    )
    return _fake_outputs(input, weight.shape[0], chunk_size)


@torch.library.register_fake("rnnattn::attention_pool_scores_forward")
def _attention_pool_scores_fake(input, scores, lengths, mask, chunk_size):
    torch._check(scores.dim() == 3, lambda: "rnnattn.attention_pool_scores: scores must be (B, T, heads)")
    return _fake_outputs(input, scores.shape[2], chunk_size)


def _grad_like(t: Tensor) -> Tensor:
    # The kernels give grads the layout of the tensor (a transposed view
    # keeps its strides when it is dense); empty_like does the same.
    return torch.empty_like(t)


@torch.library.register_fake("rnnattn::attention_pool_backward")
def _attention_pool_backward_fake(
    grad_context, grad_weights, input, weight, lengths, mask, context, weights, chunk_size, need_input, need_weight
):
    none = input.new_empty((0,))
    x = input if input.stride(-1) == 1 else input.contiguous()
    return (_grad_like(x) if need_input else none, weight.new_empty(weight.shape) if need_weight else none)


@torch.library.register_fake("rnnattn::attention_pool_scores_backward")
def _attention_pool_scores_backward_fake(
    grad_context, grad_weights, input, scores, lengths, mask, context, weights, chunk_size, need_input, need_scores
):
    none = input.new_empty((0,))
    x = input if input.stride(-1) == 1 else input.contiguous()
    return (_grad_like(x) if need_input else none, _grad_like(scores) if need_scores else none)


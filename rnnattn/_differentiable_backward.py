"""Double backward: the grads of the fused operators as a differentiable function.

The fused ``*_backward`` kernels have no backward of their own. When a
backward runs with ``create_graph=True`` and the grads it computes must
themselves be differentiable (one of its inputs -- the incoming grads, the
forward's inputs, hidden states or weights -- requires grad), the autograd
kernels (csrc/rnn_autograd.cpp, gru_lstm_autograd.cpp,
attention_autograd.cpp, and :class:`rnnattn.ops._BidirectionalLayer`) call
the ``rnnattn::*_backward_differentiable`` operators registered here
instead. Each recomputes the forward from the saved inputs with the
plain-PyTorch math of :mod:`rnnattn.reference` and returns
``torch.autograd.grad(recomputed outputs, inputs, grads, create_graph=True)``
-- as activation checkpointing recomputes -- so the grads carry a graph back
to the grads and to the saved inputs (which keep their ``grad_fn``), and
second (and higher) derivatives follow from PyTorch's own autograd.

First-order backward (no ``create_graph``, or nothing requiring grad) never
comes here: it stays the fused kernel.

The schemas are in csrc/ops.cpp; the only kernel of each is
CompositeImplicitAutograd, the Python functions below. Convention of all
five: ``need`` holds one 0/1 per differentiable argument of the forward (in
the forward's argument order, the tensors only: batch_sizes, lengths and
mask excluded), and the result holds one grad per such argument, an empty
tensor (numel 0) where not needed.
"""
from typing import List, Optional, Sequence

import torch
from torch import Tensor

from . import _load  # noqa: F401  (the schemas: torch.ops.rnnattn.*_backward_differentiable)
from . import reference

__all__ = ["differentiable_grads"]


def differentiable_grads(
    forward, args: Sequence[Optional[Tensor]], grad_outputs: Sequence[Optional[Tensor]], need: Sequence[int]
) -> List[Tensor]:
    """``forward(*args)``'s vector-Jacobian product with ``grad_outputs``,
    recorded for differentiation (``create_graph=True``).

    ``args`` are the forward's differentiable arguments (None where absent),
    ``need`` a 0/1 for each. Each needed argument enters the recompute
    through an alias of its own, so that an argument passed twice (w_ih is
    w_hh, b_ih is b_hh) gets the grad of its own position only, as from the
    fused backward. A ``grad_outputs`` entry may be None (that output got no
    grad). Returns one tensor per argument: the grad, or an empty tensor
    where not needed."""
    need = [bool(n) and a is not None for n, a in zip(need, args)]
    # Alias only what needs a grad: the others enter as they are (they still
    # carry their own graph, through which the result stays differentiable).
    alias = [a.view_as(a) if n else a for a, n in zip(args, need)]
    wanted = [a for a, n in zip(alias, need) if n]
    got: Sequence[Optional[Tensor]] = [None] * len(wanted)
    if wanted:
        with torch.enable_grad():
            outputs = forward(*alias)
            pairs = [(o, g) for o, g in zip(outputs, grad_outputs) if g is not None and o.requires_grad]
            if pairs:
                got = torch.autograd.grad(
                    [o for o, _ in pairs], wanted, [g for _, g in pairs], create_graph=True, allow_unused=True
                )
    result, it = [], iter(got)
    for a, n in zip(args, need):
        if not n:
            ref = a if a is not None else args[0]
            result.append(ref.new_empty((0,)))
            continue
        g = next(it)
        result.append(torch.zeros_like(a) if g is None else g)
    return result


# ---- the five operators' kernels ---------------------------------------------


def _rnn(grad_output, grad_hn, input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, relu, reverse, need):
    def forward(input, hx, w_ih, w_hh, b_ih, b_hh):
        return reference.rnn_layer(input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, relu, reverse)

    return differentiable_grads(forward, (input, hx, w_ih, w_hh, b_ih, b_hh), (grad_output, grad_hn), need)


def _gru(grad_output, grad_hn, input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, reverse, need):
    def forward(input, hx, w_ih, w_hh, b_ih, b_hh):
        return reference.gru_layer(input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, reverse)

    return differentiable_grads(forward, (input, hx, w_ih, w_hh, b_ih, b_hh), (grad_output, grad_hn), need)


def _lstm(
    grad_output, grad_hn, grad_cn, input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, need
):
    def forward(input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr):
        return reference.lstm_layer(input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, reverse)

    return differentiable_grads(
        forward, (input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr), (grad_output, grad_hn, grad_cn), need
    )


def _attention_pool(grad_context, grad_weights, input, weight, lengths, mask, chunk_size, need):
    # The score bias is not an argument: neither output depends on it
    # (softmax is shift-invariant), so the autograd kernel gives it the
    # exact zero grad itself, on both paths.
    def forward(input, weight):
        return reference.attention_pool(input, weight, None, lengths, mask, chunk_size)

    return differentiable_grads(forward, (input, weight), (grad_context, grad_weights), need)


def _attention_pool_scores(grad_context, grad_weights, input, scores, lengths, mask, chunk_size, need):
    def forward(input, scores):
        return reference.attention_pool_scores(input, scores, lengths, mask, chunk_size)

    return differentiable_grads(forward, (input, scores), (grad_context, grad_weights), need)


_lib = torch.library.Library("rnnattn", "IMPL")
for _name, _fn in [
    ("rnn_backward_differentiable", _rnn),
    ("gru_backward_differentiable", _gru),
    ("lstm_backward_differentiable", _lstm),
    ("attention_pool_backward_differentiable", _attention_pool),
    ("attention_pool_scores_backward_differentiable", _attention_pool_scores),
]:
    _lib.impl(_name, _fn, "CompositeImplicitAutograd")

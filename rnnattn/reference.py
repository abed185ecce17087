"""The math of rnnattn's operators in plain PyTorch: the oracle for tests.

Written for reading, not speed: one loop over time, no fusion. Each function
has the same signature and results as the fused operator it checks.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor


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
    """One Elman RNN layer, one direction: ``h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)``.

    ``input`` is ``(T, B, I)``, or ``(N, I)`` packed rows with ``batch_sizes``
    (step ``t`` holds the first ``batch_sizes[t]`` sequences). With
    ``reverse`` the recurrence runs from each sequence's last step to its
    first. Returns ``(output, h_n)``; ``h_n[b]`` is the state after the last
    step sequence ``b`` took.
    """
    act = torch.relu if relu else torch.tanh
    if batch_sizes is None:
        T, B = input.shape[0], input.shape[1]
        batch_sizes = torch.full((T,), B, dtype=torch.long)
        rows = input.reshape(T * B, -1)
    else:
        rows = input
    sizes = [int(b) for b in batch_sizes]
    starts = [sum(sizes[:t]) for t in range(len(sizes))]
    state = hx
    outs = [None] * len(sizes)
    order = range(len(sizes) - 1, -1, -1) if reverse else range(len(sizes))
    for t in order:
        b = sizes[t]
        x_t = rows[starts[t] : starts[t] + b]
        z = x_t @ w_ih.T + state[:b] @ w_hh.T
        if b_ih is not None:
            z = z + b_ih + b_hh
        h = act(z)
        outs[t] = h
        # Sequences that have not started yet (reverse) or have ended
        # (forward) keep their state.
        state = torch.cat([h, state[b:]], 0)
    output = torch.cat(outs, 0).reshape(*input.shape[:-1], w_ih.shape[0])
    return output, state

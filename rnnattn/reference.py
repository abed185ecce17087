"""The math of rnnattn's operators in plain PyTorch: the oracle for tests.

Written for reading, not speed: one loop over time, no fusion. Each function
has the same signature and results as the fused operator it checks.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor


def _walk(input, batch_sizes, states, reverse, step):
    """Runs ``step(x_t, states_t) -> (h_t, new_states)`` over time, each step
    on its ``batch_sizes[t]`` active rows; rows outside them keep their
    states (their sequence ended, or with ``reverse`` has not started).
    Returns the output (``input``'s leading shape) and the final states."""
    if batch_sizes is None:
        # (Sizes as ints, not a tensor read back: torch.compile traces a
        # padded call, a torch.func transform in it included, in one graph.)
        T, B = input.shape[0], input.shape[1]
        sizes = [B] * T
        rows = input.reshape(T * B, -1)
    else:
        rows = input
        sizes = [int(b) for b in batch_sizes]
    starts = [sum(sizes[:t]) for t in range(len(sizes))]
    outs = [None] * len(sizes)
    order = range(len(sizes) - 1, -1, -1) if reverse else range(len(sizes))
    for t in order:
        b = sizes[t]
        h, new = step(rows[starts[t] : starts[t] + b], [s[:b] for s in states])
        outs[t] = h
        states = [torch.cat([n, s[b:]], 0) for n, s in zip(new, states)]
    output = torch.cat(outs, 0)
    output = output.reshape(*input.shape[:-1], output.shape[-1])
    return output, states


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

    def step(x, states):
        z = x @ w_ih.T + states[0] @ w_hh.T
        if b_ih is not None:
            z = z + b_ih + b_hh
        h = act(z)
        return h, [h]

    output, (h_n,) = _walk(input, batch_sizes, [hx], reverse, step)
    return output, h_n


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
    """One GRU layer, one direction, as ``torch.nn.GRU`` computes it (gates r, z, n):
    ``r = σ(A_r + R_r)``, ``z = σ(A_z + R_z)``, ``n = tanh(A_n + r * R_n)``,
    ``h = (1 - z) * n + z * h_prev`` with ``A = x W_ih^T + b_ih`` and
    ``R = h_prev W_hh^T + b_hh``. Arguments and results as :func:`rnn_layer`."""

    def step(x, states):
        h = states[0]
        a = x @ w_ih.T
        r_ = h @ w_hh.T
        if b_ih is not None:
            a, r_ = a + b_ih, r_ + b_hh
        a_r, a_z, a_n = a.chunk(3, 1)
        r_r, r_z, r_n = r_.chunk(3, 1)
        r = torch.sigmoid(a_r + r_r)
        z = torch.sigmoid(a_z + r_z)
        n = torch.tanh(a_n + r * r_n)
        h = (1 - z) * n + z * h
        return h, [h]

    output, (h_n,) = _walk(input, batch_sizes, [hx], reverse, step)
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
    """One LSTM layer, one direction, as ``torch.nn.LSTM`` computes it (gates
    i, f, g, o): ``c = f * c_prev + i * g``, ``h = o * tanh(c)`` [``@ W_hr^T``
    with a projection]. Returns ``(output, h_n, c_n)``."""

    def step(x, states):
        h, c = states
        z = x @ w_ih.T + h @ w_hh.T
        if b_ih is not None:
            z = z + b_ih + b_hh
        zi, zf, zg, zo = z.chunk(4, 1)
        c = torch.sigmoid(zf) * c + torch.sigmoid(zi) * torch.tanh(zg)
        h = torch.sigmoid(zo) * torch.tanh(c)
        if w_hr is not None:
            h = h @ w_hr.T
        return h, [h, c]

    output, (h_n, c_n) = _walk(input, batch_sizes, [hx, cx], reverse, step)
    return output, h_n, c_n


# ---- attention pooling --------------------------------------------------------
#
# Shapes as in the fused operators (csrc/attention_common.h): input (B, T, D);
# weight (k, D) or scores (B, T, k); context (B, C, k, D); weights (B, k, T).


def valid_steps(
    batch: int, steps: int, lengths: Optional[Tensor], mask: Optional[Tensor], device: torch.device
) -> Tensor:
    """``(B, T)`` bool: ``t < lengths[b]`` (when given) and ``mask[b, t]`` (when given)."""
    valid = torch.ones(batch, steps, dtype=torch.bool, device=device)
    if lengths is not None:
        valid = valid & (torch.arange(steps, device=device) < lengths.to(device).reshape(-1, 1))
    if mask is not None:
        valid = valid & mask.to(device)
    return valid


def attention_pool_scores(
    input: Tensor,
    scores: Tensor,
    lengths: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    chunk_size: int = 0,
) -> Tuple[Tensor, Tensor]:
    """Softmax of ``scores`` over the valid steps of each chunk, and the weighted sum of ``input``.

    ``chunk_size == 0`` takes the whole sequence as one chunk; else chunk
    ``c`` holds steps ``[c*K, (c+1)*K)`` (the last one may be shorter).
    Invalid steps weigh 0 and a chunk without valid steps pools to 0.
    Returns ``context (B, C, k, D)`` and ``weights (B, k, T)``.
    """
    B, T, D = input.shape
    k = scores.shape[-1]
    valid = valid_steps(B, T, lengths, mask, input.device)
    # What sits at invalid steps (padding, maybe NaN) must not reach the
    # result nor the grads: replace it before any arithmetic.
    x = input.masked_fill(~valid.unsqueeze(-1), 0)
    e = scores.masked_fill(~valid.unsqueeze(-1), float("-inf"))

    # Cut time into C chunks of K steps, padding the last with invalid steps.
    K = chunk_size if chunk_size > 0 else max(T, 1)
    C = (T + K - 1) // K if chunk_size > 0 else 1
    pad = C * K - T
    x = torch.nn.functional.pad(x, (0, 0, 0, pad)).reshape(B, C, K, D)
    e = torch.nn.functional.pad(e, (0, 0, 0, pad), value=float("-inf")).reshape(B, C, K, k)
    v = torch.nn.functional.pad(valid, (0, pad)).reshape(B, C, K, 1)

    # A chunk with no valid step would be softmax(all -inf) = NaN: give it
    # zero scores instead; its weights are zeroed just below anyway.
    e = torch.where(v.any(dim=2, keepdim=True), e, torch.zeros_like(e))
    a = torch.softmax(e, dim=2).masked_fill(~v, 0)  # (B, C, K, k)

    context = torch.einsum("bckh,bckd->bchd", a, x)
    weights = a.reshape(B, C * K, k)[:, :T].transpose(1, 2)
    return context, weights


def attention_pool(
    input: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    lengths: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    chunk_size: int = 0,
) -> Tuple[Tensor, Tensor]:
    """Attention pooling with the linear score ``e_t = input_t . weight_h + bias_h`` (one per head)."""
    valid = valid_steps(input.shape[0], input.shape[1], lengths, mask, input.device)
    x = input.masked_fill(~valid.unsqueeze(-1), 0)
    scores = x @ weight.T
    if bias is not None:
        scores = scores + bias
    return attention_pool_scores(input, scores, lengths, mask, chunk_size)


def additive_scores(
    input: Tensor,
    proj_weight: Tensor,
    proj_bias: Optional[Tensor],
    weight: Tensor,
    bias: Optional[Tensor] = None,
) -> Tensor:
    """The additive (Bahdanau / hierarchical-attention) score ``e_t = v_h . tanh(W input_t + b) + bias_h``.

    ``proj_weight`` ``(A, D)`` and ``proj_bias`` ``(A,)`` are ``W`` and ``b``;
    ``weight`` ``(k, A)`` holds the ``v_h``. Returns ``(B, T, k)``.
    """
    u = torch.tanh(torch.nn.functional.linear(input, proj_weight, proj_bias))
    return torch.nn.functional.linear(u, weight, bias)

"""``rnnattn.AttentionPooling``: attention softmax pooling over a sequence of
states, on the fused kernels of :mod:`rnnattn.attention_ops`.

Given states ``H`` (one per time step), each head ``h`` scores every valid
step, ``a = softmax(e)`` over the valid steps, and pools ``c_h = sum_t a_t H_t``.
The contexts of the heads are concatenated. Two scores:

* ``"linear"``: ``e_t = w_h . H_t`` -- one fused operator, one pass over ``H``;
* ``"additive"`` (hierarchical-attention / Bahdanau style):
  ``e_t = v_h . tanh(W H_t + b)`` -- ``W H_t`` and ``v_h . u_t`` are GEMMs,
  then the fused operator does the masked softmax, the weighted sum and
  their backward.

With ``chunk_size=K`` each run of ``K`` steps is pooled on its own (softmax
inside the chunk), giving ``ceil(T / K)`` contexts per sequence.
"""
import math
from typing import Optional, Tuple, Union

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from . import _export, attention_ops, reference
from ._modes import _is_exporting, plain_torch_mode

__all__ = ["AttentionPooling", "attention_pooling"]


def attention_pooling(
    input: Union[Tensor, PackedSequence],
    weight: Tensor,
    bias: Optional[Tensor] = None,
    lengths: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    *,
    chunk_size: Optional[int] = None,
    batch_first: bool = True,
    proj_weight: Optional[Tensor] = None,
    proj_bias: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor]:
    """Functional form of :class:`AttentionPooling` (same inputs and outputs).

    ``weight`` ``(k, D)`` holds the score vectors; with ``proj_weight``
    ``(A, D)`` (and ``proj_bias`` ``(A,)``) the score is additive,
    ``e_t = weight_h . tanh(proj_weight H_t + proj_bias)``, and ``weight`` is
    ``(k, A)``. ``bias`` ``(k,)`` is added to the scores (which cannot change
    the result).
    """
    K = _check_chunk_size(chunk_size)
    unsort = None
    padding_is_clean = False
    if isinstance(input, PackedSequence):
        if lengths is not None or mask is not None:
            raise RuntimeError(
                "AttentionPooling: a PackedSequence carries its own lengths; pass lengths=None, mask=None"
            )
        unsort = input.unsorted_indices
        # Pad in the packed (sorted) order and reorder only the small outputs.
        src, lengths = pad_packed_sequence(PackedSequence(input.data, input.batch_sizes))
        src_batch_first = False
        padding_is_clean = True  # pad_packed_sequence fills with zeros
    else:
        if not isinstance(input, Tensor) or input.dim() != 3:
            shape = tuple(input.shape) if isinstance(input, Tensor) else type(input).__name__
            raise RuntimeError(
                "AttentionPooling: input must be a 3-D tensor ("
                + ("B, T, D" if batch_first else "T, B, D")
                + f") or a PackedSequence, got {shape}"
            )
        src, src_batch_first = input, batch_first
    # x is (B, T, D) whatever the memory layout: time-major data stays put.
    x = src if src_batch_first else src.transpose(0, 1)
    B, T, D = x.shape
    additive = proj_weight is not None
    # Under autocast the input may come in its dtype (a recurrent module's
    # output) beside float32 parameters, as torch's own layers allow.
    autocast = x.device.type in ("cpu", "cuda") and torch.is_autocast_enabled(x.device.type)
    _check_params(x, weight, bias, proj_weight, proj_bias, same_dtype=not autocast)
    lengths = _as_lengths(lengths, B, x.device)
    mask = _as_mask(mask, B, T, x.device)
    fused = attention_ops.has_kernel(x.device, x.dtype) and not plain_torch_mode(x.device.type)
    if fused and autocast:
        # (CUDA) the fused ops take one dtype: the parameters in the input's,
        # as autocast's products would take them. On the CPU, autocast runs
        # the plain path, whose products autocast casts itself.
        weight, bias, proj_weight, proj_bias = (
            p if p is None else p.to(x.dtype) for p in (weight, bias, proj_weight, proj_bias)
        )
    if not fused and lengths is not None and not _export.exporting() and not torch.compiler.is_compiling():
        # The fused ops check on their own; an exported or compiled graph
        # cannot branch on values.
        _check_lengths_values(lengths, T)

    if not additive:
        pool = attention_ops.attention_pool if fused else reference.attention_pool
        if not fused and _is_exporting():
            pool = _export.attention_pool  # the reference's reshapes would fix T in torch.export
        context, weights = pool(x, weight, bias, lengths, mask, K)
    else:
        if (lengths is not None or mask is not None) and not padding_is_clean:
            # Padding may hold anything (NaN included). The fused pooling never
            # reads it, but the projection GEMM runs over every step, and
            # 0 * NaN in its backward would reach grad W: zero it first.
            valid = reference.valid_steps(B, T, lengths, mask, x.device)
            valid = valid if src_batch_first else valid.T
            src = src.masked_fill(~valid.unsqueeze(-1), 0)
        u = torch.tanh(nn.functional.linear(src, proj_weight, proj_bias))
        scores = nn.functional.linear(u, weight, bias)
        scores = scores if src_batch_first else scores.transpose(0, 1)
        pool = attention_ops.attention_pool_scores if fused else reference.attention_pool_scores
        if not fused and _is_exporting():
            pool = _export.attention_pool_scores
        context, weights = pool(x, scores, lengths, mask, K)

    heads = weight.shape[0]
    context = context.reshape(B, context.shape[1], heads * D) if K else context.reshape(B, heads * D)
    if heads == 1:
        weights = weights.squeeze(1)
    if unsort is not None:
        context = context.index_select(0, unsort)
        weights = weights.index_select(0, unsort)
    return context, weights


class AttentionPooling(nn.Module):
    r"""Attention softmax pooling of a sequence of states, fused on CPU and CUDA.

    For every sequence ``b`` and head ``h``:

    .. math::
        e_t = w_h \cdot H_t \ \text{(linear)} \quad\text{or}\quad
        e_t = v_h \cdot \tanh(W H_t + b_W) \ \text{(additive)}, \qquad
        a = \operatorname{softmax}_{t \text{ valid}}(e), \qquad
        c_h = \sum_t a_t H_t

    and the output context is ``[c_1, ..., c_heads]``.

    Args:
        input_size: ``D``, the size of each state.
        heads: number of score vectors; their contexts are concatenated.
        score: ``"linear"`` or ``"additive"``.
        attn_size: ``A``, size of the additive score's hidden layer
            (default ``input_size``); only for ``score="additive"``.
        bias: add a learnable bias (one per head) to the scores. Softmax is
            shift-invariant, so this bias can never change the weights or the
            context, and its gradient is exactly zero: it is a dead parameter,
            off by default and offered only for checkpoints that have one.
            (The additive score's inner bias ``b_W``, inside the ``tanh``,
            does matter and is always there.)
        chunk_size: ``None`` pools each whole sequence; ``K`` pools each run
            of ``K`` steps separately (softmax inside the chunk; the last chunk
            may be shorter), as the hierarchical split of a long sequence.
        batch_first: input is ``(B, T, D)`` if ``True``, ``(T, B, D)`` if not.
            (Outputs, ``lengths`` and ``mask`` are batch-major either way.)

    Inputs: ``input, lengths=None, mask=None``
        * **input**: ``(B, T, D)`` or ``(T, B, D)``, or a ``PackedSequence``
          (e.g. from :class:`rnnattn.RNN`); its lengths are then used, and the
          outputs come in the original (unsorted) batch order.
        * **lengths**: ``(B,)`` integers in ``[0, T]``, on any device; step
          ``t`` of sequence ``b`` is valid iff ``t < lengths[b]``. Lengths
          on the CPU are checked without a device sync.
        * **mask**: ``(B, T)`` bool, ``True`` = valid step; any pattern, not
          only a prefix. With both given a step must be valid under both.

    Outputs: ``(context, weights)``
        * **context**: ``(B, heads * D)``, or ``(B, ceil(T / K), heads * D)``
          with ``chunk_size=K``.
        * **weights**: ``(B, T)`` if ``heads == 1`` else ``(B, heads, T)``;
          zero at invalid steps, summing to 1 over the valid steps of each
          chunk.

    Invalid steps are never read: padding holding NaN or inf cannot reach the
    outputs or the gradients of the valid part. A sequence (or chunk) with no
    valid step, e.g. length 0, gets context 0 and weights 0 (and zero grads).

    Parameters (initialised like :class:`torch.nn.Linear`: uniform in
    :math:`\pm 1/\sqrt{\text{fan\_in}}`, so initial scores are small and the
    initial weights close to uniform, i.e. near mean pooling):
        * **weight**: ``(heads, D)`` (linear) or ``(heads, A)`` (additive).
        * **bias**: ``(heads,)`` if ``bias=True`` (initialised to 0).
        * **proj**: ``nn.Linear(D, A)``, additive score only.

    Devices and dtypes without a compiled kernel (CPU half, MPS, ...) run the
    same math in plain PyTorch (:mod:`rnnattn.reference`).
    """

    def __init__(
        self,
        input_size: int,
        heads: int = 1,
        score: str = "linear",
        attn_size: Optional[int] = None,
        bias: bool = False,
        chunk_size: Optional[int] = None,
        batch_first: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        if not isinstance(input_size, int) or input_size < 1:
            raise ValueError(f"AttentionPooling: input_size must be a positive int, got {input_size!r}")
        if not isinstance(heads, int) or heads < 1:
            raise ValueError(f"AttentionPooling: heads must be a positive int, got {heads!r}")
        if score not in ("linear", "additive"):
            raise ValueError(f"AttentionPooling: score must be 'linear' or 'additive', got {score!r}")
        _check_chunk_size(chunk_size)
        self.input_size = input_size
        self.heads = heads
        self.score = score
        self.chunk_size = chunk_size
        self.batch_first = batch_first
        if score == "additive":
            attn_size = input_size if attn_size is None else attn_size
            if not isinstance(attn_size, int) or attn_size < 1:
                raise ValueError(f"AttentionPooling: attn_size must be a positive int, got {attn_size!r}")
            self.attn_size = attn_size
            self.proj = nn.Linear(input_size, attn_size, **factory)
        else:
            if attn_size is not None:
                raise ValueError("AttentionPooling: attn_size applies only to score='additive'")
            self.attn_size = None
            self.proj = None
        self.weight = nn.Parameter(torch.empty(heads, self.attn_size or input_size, **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(heads, **factory))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    @property
    def output_size(self) -> int:
        """Features of the context: ``heads * input_size``."""
        return self.heads * self.input_size

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.weight.shape[1])
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.zeros_(self.bias)
        if self.proj is not None:
            self.proj.reset_parameters()

    def extra_repr(self) -> str:
        s = f"{self.input_size}, heads={self.heads}, score={self.score!r}"
        if self.attn_size is not None:
            s += f", attn_size={self.attn_size}"
        if self.bias is not None:
            s += ", bias=True"
        if self.chunk_size is not None:
            s += f", chunk_size={self.chunk_size}"
        if not self.batch_first:
            s += ", batch_first=False"
        return s

    def forward(
        self,
        input: Union[Tensor, PackedSequence],
        lengths: Optional[Tensor] = None,
        mask: Optional[Tensor] = None,
    ) -> Tuple[Tensor, Tensor]:  # noqa: D102  (documented above)
        data = input.data if isinstance(input, PackedSequence) else input
        if isinstance(data, Tensor) and data.dim() >= 1 and data.shape[-1] != self.input_size:
            raise RuntimeError(
                f"AttentionPooling: input.size(-1) must be input_size={self.input_size}, got {data.shape[-1]}"
            )
        return attention_pooling(
            input,
            self.weight,
            self.bias,
            lengths,
            mask,
            chunk_size=self.chunk_size,
            batch_first=self.batch_first,
            proj_weight=self.proj.weight if self.proj is not None else None,
            proj_bias=self.proj.bias if self.proj is not None else None,
        )


# ---- argument checks ------------------------------------------------------------


def _check_chunk_size(chunk_size) -> int:
    """The operators' ``chunk_size``: 0 for None."""
    if chunk_size is None:
        return 0
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"AttentionPooling: chunk_size must be None or a positive int, got {chunk_size!r}")
    return chunk_size


def _check_params(x: Tensor, weight: Tensor, bias, proj_weight, proj_bias, same_dtype: bool = True) -> None:
    for name, p, shape in (("weight", weight, "(heads, D)"), ("bias", bias, "(heads,)"),
                           ("proj_weight", proj_weight, "(A, D)"), ("proj_bias", proj_bias, "(A,)")):
        if not (isinstance(p, Tensor) or (p is None and name != "weight")):
            raise TypeError(
                f"AttentionPooling: {name} must be a {shape} tensor{'' if name == 'weight' else ' or None'}, "
                f"got {type(p).__name__}"
            )
    D = x.shape[-1]
    score_dim = proj_weight.shape[0] if proj_weight is not None else D
    if proj_weight is not None and (proj_weight.dim() != 2 or proj_weight.shape[1] != D):
        raise RuntimeError(f"AttentionPooling: proj_weight must be (A, {D}), got {tuple(proj_weight.shape)}")
    if weight.dim() != 2 or weight.shape[1] != score_dim:
        raise RuntimeError(f"AttentionPooling: weight must be (heads, {score_dim}), got {tuple(weight.shape)}")
    for name, p in (("weight", weight), ("bias", bias), ("proj.weight", proj_weight), ("proj.bias", proj_bias)):
        if p is None:
            continue
        if same_dtype and p.dtype != x.dtype:
            raise RuntimeError(
                f"AttentionPooling: input has dtype {x.dtype} but {name} has dtype {p.dtype}; "
                "convert one of them (e.g. module.to(input.dtype))"
            )
        if p.device != x.device:
            raise RuntimeError(
                f"AttentionPooling: input is on {x.device} but {name} is on {p.device}; "
                "move one of them (e.g. module.to(input.device))"
            )


def _as_lengths(lengths, batch: int, device: torch.device) -> Optional[Tensor]:
    if lengths is None:
        return None
    if not isinstance(lengths, Tensor):
        lengths = torch.as_tensor(lengths)
    if lengths.dtype == torch.bool or lengths.is_floating_point() or lengths.is_complex():
        raise RuntimeError(f"AttentionPooling: lengths must be an integer tensor, got {lengths.dtype}")
    if lengths.dim() != 1 or lengths.shape[0] != batch:
        raise RuntimeError(f"AttentionPooling: lengths must be (B,) = ({batch},), got {tuple(lengths.shape)}")
    # CPU lengths stay on the CPU (checked there without a device sync).
    if lengths.device.type != "cpu" and lengths.device != device:
        lengths = lengths.to(device)
    return lengths


def _as_mask(mask, batch: int, steps: int, device: torch.device) -> Optional[Tensor]:
    if mask is None:
        return None
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        got = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
        raise RuntimeError(f"AttentionPooling: mask must be a bool tensor (True = valid step), got {got}")
    if mask.shape != (batch, steps):
        raise RuntimeError(
            f"AttentionPooling: mask must be (B, T) = ({batch}, {steps}) (batch-major even when "
            f"batch_first=False), got {tuple(mask.shape)}"
        )
    return mask.to(device)


def _check_lengths_values(lengths: Tensor, steps: int) -> None:
    bad = (lengths < 0) | (lengths > steps)
    if bool(bad.any()):
        b = int(bad.nonzero()[0, 0])
        raise RuntimeError(
            f"AttentionPooling: lengths[{b}] = {int(lengths[b])} is out of range; "
            f"lengths must lie in [0, T] = [0, {steps}]"
        )

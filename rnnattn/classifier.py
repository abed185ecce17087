"""``rnnattn.RNNAttentionClassifier``: sequence classifier built from the
package's two fused operators.

    [Embedding] -> rnnattn.RNN | GRU | LSTM -> rnnattn.AttentionPooling [-> chunk reduction] -> Dropout -> Linear

Variable lengths are handled by packing: padded input with ``lengths`` is
packed before the RNN (so a bidirectional RNN's reverse direction starts at
each sequence's true end, not in the padding), and the packed RNN output goes
to the pooling as it is, whose softmax then only covers each sequence's steps.
Under torch.export (and so the default ONNX exporter) packing cannot be
traced: the padded input goes to the recurrence with the lengths, which it
applies as packing would (ONNX's sequence_lens; rnnattn._export), and the
pooling masks by them.

Chunked pooling (``chunk_size=K``) gives one context per chunk of K steps,
``(B, ceil(T/K), D')``; the classifier reduces that to ``(B, D')`` with
``chunk_reduce``:

* ``"attention"`` (default): a second, single-head AttentionPooling over the
  chunk contexts (hierarchical attention: which steps matter within a chunk,
  then which chunks matter), masked to each sequence's chunks;
* ``"mean"``: the mean of each sequence's valid chunk contexts.

Either way the classifier returns the *effective* per-step weights: the weight
each step carries in the pooled vector (within-chunk weight times the weight
of its chunk), so for every head they sum to 1 over a sequence's valid steps,
chunked or not, and read the same way.
"""
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from . import _export
from ._modes import _is_exporting
from .attention import AttentionPooling
from .rnn import GRU, LSTM, RNN

__all__ = ["RNNAttentionClassifier"]

_CHUNK_REDUCTIONS = ("attention", "mean")
_CELLS = {"rnn": RNN, "gru": GRU, "lstm": LSTM}


class RNNAttentionClassifier(nn.Module):
    """Classifies sequences with an RNN followed by attention pooling.

    Args:
        num_classes: number of output logits.
        input_size: features per step of float input ``(B, T, input_size)``.
            Leave ``None`` when ``vocab_size`` is given.
        hidden_size: RNN hidden size per direction.
        cell: ``"rnn"`` (:class:`rnnattn.RNN`), ``"gru"`` (:class:`rnnattn.GRU`)
            or ``"lstm"`` (:class:`rnnattn.LSTM`): the recurrent layer.
        num_layers, nonlinearity, bidirectional, dropout: as in
            :class:`torch.nn.RNN` (``dropout`` between RNN layers;
            ``nonlinearity`` only with ``cell="rnn"``).
        vocab_size: when given, the input is integer token ids ``(B, T)`` and
            goes through ``nn.Embedding(vocab_size, embedding_dim,
            padding_idx)`` first.
        embedding_dim: embedding width (default ``hidden_size``).
        padding_idx: passed to ``nn.Embedding``.
        heads, score, attn_size, chunk_size: the
            :class:`rnnattn.AttentionPooling` options (its score ``bias`` is
            left out: softmax ignores it).
        chunk_reduce: ``"attention"`` or ``"mean"``, how per-chunk contexts are
            reduced when ``chunk_size`` is set (see the module docstring).
        head_dropout: dropout on the pooled vector before the output layer.
        batch_first: layout of padded input (``(B, T, ...)`` if True, else
            ``(T, B, ...)``); ignored for PackedSequence input.
        device, dtype: for every parameter.

    Forward:
        ``model(input, lengths=None) -> (logits, weights)``

        * ``input``: float ``(B, T, F)`` (or ``(T, B, F)``), integer token ids
          ``(B, T)`` (or ``(T, B)``) when ``vocab_size`` is set, or a
          PackedSequence of either (e.g. from ``pack_sequence(...,
          enforce_sorted=False)``).
        * ``lengths``: ``(B,)`` valid steps per sequence of padded input
          (1 <= length <= T); ``None`` means every sequence is T long. Not
          allowed with a PackedSequence, which carries its own lengths.
        * ``logits``: ``(B, num_classes)``, in the input's batch order.
        * ``weights``: ``(B, T)``, or ``(B, heads, T)`` with ``heads > 1``, the
          attention each step gets (zeros past a sequence's length); T is the
          padded input's length, or the longest sequence of a PackedSequence.

    Saving: ``state_dict`` and ``torch.save(model)`` both work; the recurrent
    layer's keys are those of torch's module (``torch.nn.RNN``, ``GRU``, ``LSTM``). ``DistributedDataParallel`` works as for any module
    (tested: gloo, CPU, fused ops). ``torch.compile(fullgraph=True)`` covers
    equal-length padded input without ``lengths``; variable lengths are
    data-dependent (packing) and compile with graph breaks. Padded input, with or
    without ``lengths``, exports with both ONNX exporters and ``torch.export``
    (README, "Export"); PackedSequence input does not.
    """

    def __init__(
        self,
        num_classes: int,
        input_size: Optional[int] = None,
        hidden_size: int = 64,
        num_layers: int = 1,
        nonlinearity: str = "tanh",
        bidirectional: bool = False,
        dropout: float = 0.0,
        vocab_size: Optional[int] = None,
        embedding_dim: Optional[int] = None,
        padding_idx: Optional[int] = None,
        cell: str = "rnn",
        heads: int = 1,
        score: str = "linear",
        attn_size: Optional[int] = None,
        chunk_size: Optional[int] = None,
        chunk_reduce: str = "attention",
        head_dropout: float = 0.0,
        batch_first: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        if (input_size is None) == (vocab_size is None):
            raise ValueError(
                "RNNAttentionClassifier: give exactly one of input_size (float features) and vocab_size "
                f"(token ids), got input_size={input_size}, vocab_size={vocab_size}"
            )
        if cell not in _CELLS:
            raise ValueError(f"RNNAttentionClassifier: cell must be one of {tuple(_CELLS)}, got {cell!r}")
        if cell != "rnn" and nonlinearity != "tanh":
            raise ValueError(f"RNNAttentionClassifier: nonlinearity applies to cell='rnn' only, got cell={cell!r}")
        if num_classes < 1:
            raise ValueError(f"RNNAttentionClassifier: num_classes must be >= 1, got {num_classes}")
        if chunk_reduce not in _CHUNK_REDUCTIONS:
            raise ValueError(f"RNNAttentionClassifier: chunk_reduce must be one of {_CHUNK_REDUCTIONS}, got {chunk_reduce!r}")
        self.num_classes = num_classes
        self.batch_first = batch_first
        self.chunk_size = chunk_size
        self.chunk_reduce = chunk_reduce if chunk_size is not None else None

        if vocab_size is not None:
            embedding_dim = embedding_dim or hidden_size
            self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=padding_idx, **factory)
            rnn_input = embedding_dim
        else:
            self.embedding = None
            rnn_input = input_size
        self.cell = cell
        extra = {"nonlinearity": nonlinearity} if cell == "rnn" else {}
        self.rnn = _CELLS[cell](
            rnn_input, hidden_size, num_layers, bias=True, batch_first=batch_first, dropout=dropout,
            bidirectional=bidirectional, **extra, **factory,
        )
        state = hidden_size * (2 if bidirectional else 1)
        self.pool = AttentionPooling(
            state, heads=heads, score=score, attn_size=attn_size, chunk_size=chunk_size,
            batch_first=batch_first, **factory,
        )
        pooled = heads * state
        # Chunk contexts always come out batch-major, hence batch_first=True here.
        self.chunk_pool = (
            AttentionPooling(pooled, heads=1, score=score, attn_size=attn_size, batch_first=True, **factory)
            if self.chunk_reduce == "attention"
            else None
        )
        self.head_dropout = nn.Dropout(head_dropout)
        self.out = nn.Linear(pooled, num_classes, **factory)

    def forward(self, input: Union[Tensor, PackedSequence], lengths: Optional[Union[Tensor, Sequence[int]]] = None
                ) -> Tuple[Tensor, Tensor]:
        given = lengths is not None
        x, lengths, total = self._prepare(input, lengths)
        if isinstance(x, Tensor) and _is_exporting():
            # torch.export: padded input stays padded (packing depends on the values
            # of lengths); the recurrence takes the lengths itself (ONNX's
            # sequence_lens) and the pooling masks by them.
            lengths_or_none = lengths if given else None
            states = _export.module_forward(self.rnn, x, lengths=lengths_or_none)[0]
            context, weights = self.pool(states, lengths=lengths_or_none)
        else:
            states, _ = self.rnn(x)
            context, weights = self.pool(states)
        if self.chunk_reduce is not None:
            context, weights = self._reduce_chunks(context, weights, lengths)
        if weights.size(-1) < total:
            # Packed input pools over max(lengths) steps; report padded input's T.
            weights = nn.functional.pad(weights, (0, total - weights.size(-1)))
        logits = self.out(self.head_dropout(context))
        return logits, weights

    def _prepare(self, input, lengths) -> Tuple[Union[Tensor, PackedSequence], Tensor, int]:
        """Embeds and packs the input (not under torch.export). Returns (rnn input,
        lengths (B,) int64 CPU in batch order (may be None when not needed), T of
        the weights to return)."""
        if isinstance(input, PackedSequence):
            if _is_exporting():
                raise RuntimeError(
                    "RNNAttentionClassifier: PackedSequence input cannot be exported with torch.export or "
                    "torch.onnx.export(dynamo=True) (its batch_sizes are data the graph would depend on); "
                    "export padded input and lengths instead"
                )
            if lengths is not None:
                raise ValueError("RNNAttentionClassifier: lengths must be None for PackedSequence input (it carries its own)")
            data = self._embed(input.data, packed=True)
            x = PackedSequence(data, input.batch_sizes, input.sorted_indices, input.unsorted_indices)
            # Only the chunk reduction needs the lengths themselves.
            lengths = _packed_lengths(input) if self.chunk_reduce is not None else None
            return x, lengths, int(input.batch_sizes.numel())

        if not isinstance(input, Tensor):
            raise _export.input_type_error("RNNAttentionClassifier", input)
        x = self._embed(input, packed=False)
        batch_dim, time_dim = (0, 1) if self.batch_first else (1, 0)
        B, T = x.size(batch_dim), x.size(time_dim)
        if lengths is None:
            return x, torch.full((B,), T, dtype=torch.long), T
        lengths = torch.as_tensor(lengths).to("cpu")
        if lengths.shape != (B,) or lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
            raise ValueError(
                f"RNNAttentionClassifier: lengths must be an integer tensor of shape (B,) = ({B},), "
                f"got {lengths.dtype} of shape {tuple(lengths.shape)}"
            )
        # (An exported graph cannot branch on values: the check is left out there.)
        if not _export.exporting() and B > 0 and (int(lengths.min()) < 1 or int(lengths.max()) > T):
            raise ValueError(
                f"RNNAttentionClassifier: lengths must lie in [1, T={T}], got min {int(lengths.min())}, "
                f"max {int(lengths.max())}"
            )
        lengths = lengths.long()
        if _is_exporting() or B == 0:  # (pack_padded_sequence refuses an empty batch)
            return x, lengths, T
        return pack_padded_sequence(x, lengths, batch_first=self.batch_first, enforce_sorted=False), lengths, T

    def _embed(self, x: Tensor, packed: bool) -> Tensor:
        want = 1 if packed else 2  # dims of token ids; features add one
        if self.embedding is not None:
            if x.dtype.is_floating_point or x.dtype == torch.bool or x.dim() != want:
                raise ValueError(
                    f"RNNAttentionClassifier: with vocab_size set, input must be integer token ids of "
                    f"{'(N,) packed data' if packed else '(B, T) or (T, B)'}, got {x.dtype} of shape {tuple(x.shape)}"
                )
            return self.embedding(x)
        if not x.dtype.is_floating_point or x.dim() != want + 1 or x.size(-1) != self.rnn.input_size:
            raise ValueError(
                f"RNNAttentionClassifier: input must be floating point of "
                f"{'(N, F) packed data' if packed else '(B, T, F) or (T, B, F)'} with F = input_size = "
                f"{self.rnn.input_size}, got {x.dtype} of shape {tuple(x.shape)}"
            )
        return x

    def _reduce_chunks(self, chunks: Tensor, weights: Tensor, lengths: Tensor) -> Tuple[Tensor, Tensor]:
        """(B, n_chunks, D') -> (B, D'), and the within-chunk weights -> effective weights."""
        K = self.chunk_size
        n = chunks.size(1)
        chunk_lengths = ((lengths + K - 1) // K).to(chunks.device)
        if self.chunk_pool is not None:
            context, chunk_weights = self.chunk_pool(chunks, lengths=chunk_lengths)
        else:
            valid = torch.arange(n, device=chunks.device) < chunk_lengths.unsqueeze(1)
            chunk_weights = valid.to(chunks.dtype) / chunk_lengths.unsqueeze(1).to(chunks.dtype)
            context = torch.einsum("bn,bnd->bd", chunk_weights, chunks)
        T = weights.size(-1)
        # (B, T): weight of step t's chunk (an index, not repeat_interleave + [:T], whose
        # size relation would make torch.export specialise T)
        per_step = chunk_weights.index_select(1, torch.arange(T, device=chunks.device) // K)
        if weights.dim() == 3:
            per_step = per_step.unsqueeze(1)
        return context, weights * per_step


def _packed_lengths(packed: PackedSequence) -> Tensor:
    """Length of each sequence of a PackedSequence, in its original batch order."""
    batch_sizes = packed.batch_sizes
    B = int(batch_sizes[0]) if batch_sizes.numel() else 0
    sorted_lengths = (batch_sizes.unsqueeze(1) > torch.arange(B)).sum(0)
    if packed.unsorted_indices is not None:
        return sorted_lengths[packed.unsorted_indices.cpu()]
    return sorted_lengths

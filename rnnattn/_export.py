"""How :class:`rnnattn.RNN`, ``GRU``, ``LSTM`` and the classifier export.

Exporters cannot look inside the fused operators, so under export
(``torch.export``, both ONNX exporters, ``torch.jit.trace``) the modules run
the recurrence one layer at a time on the same parameters, in a form each
exporter keeps whole, so that an ONNX graph holds ONNX's own RNN / GRU / LSTM
operators (which every ONNX runtime runs fast):

* ``torch.jit.trace`` (the TorchScript ONNX exporter, ``dynamo=False``):
  torch's ``aten::rnn_tanh`` / ``rnn_relu`` / ``gru`` / ``lstm``, which that
  exporter maps onto ONNX's operators itself;
* ``torch.onnx.export(dynamo=True)``: the ONNX operator itself, through
  ``torch.onnx.ops.symbolic_multi_out``. torch's own ops would not do: its
  export decomposes ``aten::rnn_tanh`` into a loop over the example's steps
  (an unrolled graph of fixed length);
* plain ``torch.export``: the ops ``rnnattn::export_rnn_layer`` and
  ``rnnattn::export_lstm_layer`` defined here, which keep the sequence length
  symbolic (torch.export fixes it for nn.RNN, GRU and LSTM alike) and run
  torch's ops when the exported program runs.

Variable lengths (``lengths``, from RNNAttentionClassifier) go to ONNX as
``sequence_lens`` (to the export ops as an input; they pack inside): the
reverse direction starts at each sequence's own last step, with no packing in
the graph. ONNX's LSTM has no projection (``proj_size``): for ONNX
:func:`_lstm_projected` rewrites a projected LSTM as one without.
"""
from typing import List, Optional, Tuple

import torch
from torch import Tensor, _VF
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from . import reference
from ._modes import _is_exporting

__all__ = ["exporting", "module_forward"]


def exporting() -> bool:
    """True under ``torch.export`` (both ONNX exporters) or ``torch.jit.trace``."""
    if torch.compiler.is_compiling():  # torch.jit.is_tracing is not for TorchDynamo
        return _is_exporting()
    return torch.jit.is_tracing() or _is_exporting()


def input_type_error(name: str, input) -> TypeError:
    """The error for input that is neither a Tensor nor a PackedSequence."""
    hint = ""
    if isinstance(input, tuple) and torch.jit.is_tracing():
        hint = (
            " (torch.jit.trace, which torch.onnx.export(dynamo=False) runs, passes a PackedSequence input "
            "as a plain tuple: PackedSequence input cannot be exported; export padded input instead)"
        )
    return TypeError(f"{name}: input must be a Tensor or a PackedSequence, got {type(input).__name__}{hint}")


def module_forward(module, input, hx=None, lengths: Optional[Tensor] = None):
    """``module.forward`` of an rnnattn.RNN / GRU / LSTM under export, with the
    same inputs and outputs; ``lengths`` ``(B,)`` (padded input only) gives each
    sequence's valid steps, as packing would (outputs past a length are 0,
    ``h_n`` is the state at each sequence's own end)."""
    name = f"rnnattn.{type(module).__name__}"
    if isinstance(input, PackedSequence):
        if torch.jit.is_tracing():
            # The TorchScript exporter maps torch's packed recurrence onto sequence_lens.
            return module._torch_cls.forward(module, input, hx)
        raise RuntimeError(
            f"{name}: PackedSequence input cannot be exported with torch.export or torch.onnx.export(dynamo=True) "
            "(its batch_sizes are data the graph would depend on); export padded input instead "
            "(RNNAttentionClassifier takes padded input and lengths), or use dynamo=False"
        )
    if input.dim() not in (2, 3):
        raise ValueError(f"{name}: Expected input to be 2D or 3D, got {input.dim()}D instead")
    lstm = module.mode == "LSTM"
    batched = input.dim() == 3
    if not batched:
        input = input.unsqueeze(0 if module.batch_first else 1)
        if hx is not None:
            hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1)) if lstm else hx.unsqueeze(1)
    x = input.transpose(0, 1) if module.batch_first else input  # (T, B, I)
    D = 2 if module.bidirectional else 1
    H = module.hidden_size
    P = module.proj_size if lstm and module.proj_size > 0 else H
    if hx is None:
        h0 = x.new_zeros(module.num_layers * D, x.size(1), P)
        hx = (h0, x.new_zeros(module.num_layers * D, x.size(1), H)) if lstm else h0
    module.check_forward_args(input, hx, None)
    h0, c0 = hx if lstm else (hx, None)
    if lengths is not None:
        lengths = lengths.to(torch.long)

    weights = [getattr(module, n) for n in module._flat_weights_names]
    per_layer = len(weights) // module.num_layers
    h_n, c_n = [], []
    for layer in range(module.num_layers):
        if layer > 0 and module.dropout > 0 and module.training:
            x = torch.nn.functional.dropout(x, module.dropout, True)
        params = weights[layer * per_layer : (layer + 1) * per_layer]
        h = h0[layer * D : (layer + 1) * D]
        c = c0[layer * D : (layer + 1) * D] if lstm else None
        if lstm and module.proj_size > 0 and torch.onnx.is_in_onnx_export():  # (either exporter)
            x, h, c = _lstm_projected(x, h, c, params, lengths, D)
        else:
            x, h, c = _layer(module.mode, x, h, c, params, lengths, D == 2)
        h_n.append(h)
        c_n.append(c)

    output = x.transpose(0, 1) if module.batch_first else x
    h_n = torch.cat(h_n, 0)
    hidden = (h_n, torch.cat(c_n, 0)) if lstm else h_n
    if not batched:
        output = output.squeeze(0 if module.batch_first else 1)
        hidden = (hidden[0].squeeze(1), hidden[1].squeeze(1)) if lstm else hidden.squeeze(1)
    return output, hidden


def _layer(mode: str, x, h0, c0, params, lengths, bidirectional: bool):
    """One layer, both directions: ``(output (T, B, D*H), h_n (D, B, H), c_n or None)``."""
    if not _is_exporting():  # torch.jit.trace: torch's ops, which the TorchScript exporter maps itself
        return _torch_layer(mode, x, h0, c0, params, lengths, bidirectional)
    if torch.onnx.is_in_onnx_export():
        return _onnx_layer(mode, x, h0, c0, params, lengths, bidirectional)
    if mode == "LSTM":
        return torch.ops.rnnattn.export_lstm_layer(x, h0, c0, params, lengths, bidirectional)
    out, h = torch.ops.rnnattn.export_rnn_layer(x, h0, params, lengths, mode, bidirectional)
    return out, h, None


def _lstm_projected(x, h0, c0, params, lengths, D: int):
    """One LSTM layer with ``proj_size`` as an LSTM without projection, which ONNX has.

    torch's LSTM projects ``h_t = W_hr u_t`` with ``u_t = o_t * tanh(c_t)``, so the
    recurrent term ``W_hh h_{t-1} = (W_hh W_hr) u_{t-1}``: run on ``u`` with
    ``W_hh W_hr`` as the recurrent weight and project the outputs. ``h_0`` is not
    a projection of any ``u``; it enters through the input instead: each
    direction's input gets ``h_0`` (weighted by its own ``W_hh``) at that
    direction's first step and 0 elsewhere, while ``u_0 = 0``.
    """
    per = len(params) // D
    # Each direction's first step, (T, 1) or (T, B). Step numbers come from x, not
    # from sizes in Python, which torch.jit.trace would fix to the example's.
    step = torch.ones_like(x[:, :1, 0], dtype=torch.long).cumsum(0)  # (T, 1): 1 .. T
    firsts = [step == 1]
    if D == 2:
        firsts.append(step == (lengths.to(x.device) if lengths is not None else step[-1]))
    extra, flat, w_hr = [], [], []
    for d in range(D):
        w_ih, w_hh, *biases, proj = params[d * per : (d + 1) * per]
        extra.append(firsts[d].unsqueeze(-1).to(x.dtype) * h0[d])  # (T, B, P): h_0 at the first step
        blocks = [w_ih] + [w_hh if j == d else torch.zeros_like(w_hh) for j in range(D)]
        flat += [torch.cat(blocks, 1), w_hh @ proj, *biases]
        w_hr.append(proj)
    u0 = c0.new_zeros(c0.shape)
    out, u_n, c_n = _layer("LSTM", torch.cat([x, *extra], -1), u0, c0, flat, lengths, D == 2)
    # Project each direction (chunk, not unflatten: jit.trace would fix unflatten's sizes).
    out = torch.cat([u @ w.T for u, w in zip(out.chunk(D, -1), w_hr)], -1)
    return out, torch.stack([u_n[d] @ w_hr[d].T for d in range(D)]), c_n


_TORCH_OPS = {"RNN_TANH": _VF.rnn_tanh, "RNN_RELU": _VF.rnn_relu, "GRU": _VF.gru, "LSTM": _VF.lstm}


def _torch_layer(mode, x, h0, c0, params, lengths, bidirectional):
    """One layer by torch's own op (what the export ops compute)."""
    op = _TORCH_OPS[mode]
    D = 2 if bidirectional else 1
    has_biases = len(params) // D >= 4  # [w_ih, w_hh, b_ih, b_hh, (w_hr)]
    hx = [h0, c0] if mode == "LSTM" else h0
    if lengths is None:
        out, *hidden = op(x, hx, params, has_biases, 1, 0.0, False, bidirectional, False)
    else:
        packed = pack_padded_sequence(x, lengths.cpu(), enforce_sorted=False)
        order = packed.sorted_indices
        hx = [h.index_select(1, order) for h in hx] if mode == "LSTM" else hx.index_select(1, order)
        data, *hidden = op(packed.data, packed.batch_sizes, hx, params, has_biases, 1, 0.0, False, bidirectional)
        packed_out = PackedSequence(data, packed.batch_sizes, order, packed.unsorted_indices)
        out = pad_packed_sequence(packed_out, total_length=x.size(0))[0]
        hidden = [h.index_select(1, packed.unsorted_indices) for h in hidden]
    return out, hidden[0], hidden[1] if mode == "LSTM" else None


# ---- the export ops -------------------------------------------------------------
#
# input (T, B, I) time-major; hx, cx (D, B, H); weights as torch's _flat_weights of
# one layer ([w_ih, w_hh, (b_ih, b_hh), (w_hr)] per direction); lengths (B,) or None.


@torch.library.custom_op("rnnattn::export_rnn_layer", mutates_args=())
def export_rnn_layer(
    input: Tensor, hx: Tensor, weights: List[Tensor], lengths: Optional[Tensor], mode: str, bidirectional: bool
) -> Tuple[Tensor, Tensor]:
    """One Elman RNN (``mode`` "RNN_TANH" / "RNN_RELU") or GRU ("GRU") layer; see the module docstring."""
    out, h, _ = _torch_layer(mode, input, hx, None, weights, lengths, bidirectional)
    return out, h


@torch.library.custom_op("rnnattn::export_lstm_layer", mutates_args=())
def export_lstm_layer(
    input: Tensor, hx: Tensor, cx: Tensor, weights: List[Tensor], lengths: Optional[Tensor], bidirectional: bool
) -> Tuple[Tensor, Tensor, Tensor]:
    """One LSTM layer; see the module docstring."""
    return _torch_layer("LSTM", input, hx, cx, weights, lengths, bidirectional)


@export_rnn_layer.register_fake
def _(input, hx, weights, lengths, mode, bidirectional):
    return input.new_empty(input.shape[0], input.shape[1], hx.shape[0] * hx.shape[2]), torch.empty_like(hx)


@export_lstm_layer.register_fake
def _(input, hx, cx, weights, lengths, bidirectional):
    out = input.new_empty(input.shape[0], input.shape[1], hx.shape[0] * hx.shape[2])
    return out, torch.empty_like(hx), torch.empty_like(cx)


# ---- ONNX ---------------------------------------------------------------------------------

# torch's gate blocks in ONNX's order: GRU r,z,n -> z,r,h; LSTM i,f,g,o -> i,o,f,c.
_GATE_ORDER = {"RNN_TANH": (0,), "RNN_RELU": (0,), "GRU": (1, 0, 2), "LSTM": (0, 3, 1, 2)}


def _onnx_layer(mode, x, h0, c0, params, lengths, bidirectional):
    """One layer as one node of ONNX's RNN / GRU / LSTM, for torch.onnx.export(dynamo=True)."""
    symbolic = getattr(getattr(torch.onnx, "ops", None), "symbolic_multi_out", None)
    if symbolic is None:
        raise RuntimeError(
            "rnnattn: torch.onnx.export(dynamo=True) of a recurrence needs torch >= 2.8 (torch.onnx.ops); "
            "use dynamo=False with this torch"
        )
    D = 2 if bidirectional else 1
    per = len(params) // D  # [w_ih, w_hh] or [w_ih, w_hh, b_ih, b_hh] per direction
    dirs = [params[d * per : (d + 1) * per] for d in range(D)]
    order = _GATE_ORDER[mode]

    def gates(w):  # (slices, not chunk: the ONNX optimizer folds Slice on weights, not Split)
        n = w.shape[0] // len(order)
        return torch.cat([w[g * n : (g + 1) * n] for g in order]) if len(order) > 1 else w

    W = torch.stack([gates(p[0]) for p in dirs])  # (D, G*H, I)
    R = torch.stack([gates(p[1]) for p in dirs])  # (D, G*H, H)
    # ONNX's B is [Wb, Rb]: b_ih and b_hh stay apart (the GRU's b_hn sits inside r * (...)).
    B = torch.stack([torch.cat([gates(p[2]), gates(p[3])]) for p in dirs]) if per == 4 else None
    seq_lens = lengths.to(torch.int32) if lengths is not None else None
    T, N, H = x.shape[0], x.shape[1], h0.shape[2]
    attrs = {"hidden_size": H, "direction": "bidirectional" if bidirectional else "forward"}
    inputs = [x, W, R, B, seq_lens, h0]
    if mode == "LSTM":
        inputs.append(c0)
    elif mode == "GRU":
        attrs["linear_before_reset"] = 1  # torch's n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
    else:
        attrs["activations"] = ["Tanh" if mode == "RNN_TANH" else "Relu"] * D
    n_out = 3 if mode == "LSTM" else 2
    shapes = [(T, D, N, H), (D, N, H), (D, N, H)][:n_out]
    op_type = mode if mode in ("GRU", "LSTM") else "RNN"
    y, h_n, *c_n = symbolic(op_type, inputs, attrs, dtypes=[x.dtype] * n_out, shapes=shapes)
    # y (T, D, B, H) -> (T, B, D*H), torch's layout
    return y.transpose(1, 2).flatten(2), h_n, c_n[0] if c_n else None


# ---- attention pooling ---------------------------------------------------------------------------


def attention_pool(input, weight, bias, lengths, mask, chunk_size: int):
    """:func:`rnnattn.reference.attention_pool` for torch.export (see :func:`attention_pool_scores`)."""
    valid = reference.valid_steps(input.shape[0], input.shape[1], lengths, mask, input.device)
    scores = input.masked_fill(~valid.unsqueeze(-1), 0) @ weight.T
    if bias is not None:
        scores = scores + bias
    return attention_pool_scores(input, scores, lengths, mask, chunk_size)


def attention_pool_scores(input, scores, lengths, mask, chunk_size: int):
    """:func:`rnnattn.reference.attention_pool_scores` for torch.export.

    The reference pads T to C*K and reshapes it into (C, K) (K = max(T, 1)
    unchunked); the size relations that implies (T <= C*K, whether the padding
    is empty, 1 % max(T, 1)) make torch.export specialise T (to odd T, say).
    Here the (C, K) grid of steps is gathered by an index instead (steps past
    T masked), and the per-step weights are read back the same way.
    """
    B, T, D = input.shape
    K = chunk_size
    valid = reference.valid_steps(B, T, lengths, mask, input.device)
    x = input.masked_fill(~valid.unsqueeze(-1), 0)
    e = scores.masked_fill(~valid.unsqueeze(-1), float("-inf")).transpose(1, 2)  # (B, k, T)
    if K:
        C = (T + K - 1) // K
        grid = torch.arange(C * K, device=input.device).view(C, K)  # the step at each place of each chunk
        e = e[..., grid.clamp(max=T - 1)].masked_fill(grid >= T, float("-inf"))  # (B, k, C, K)
    peak = e.amax(-1, keepdim=True)
    p = torch.exp(e - peak.masked_fill(peak == float("-inf"), 0))  # 0 at invalid steps
    a = p / p.sum(-1, keepdim=True).clamp_min(torch.finfo(p.dtype).tiny)  # a chunk without valid steps: 0
    if not K:  # one chunk of T steps (3-D matmul: a 4-D one would reshape T)
        return (a @ x).unsqueeze(1), a  # (B, 1, k, D), (B, k, T)
    step = torch.arange(T, device=input.device)
    context = a.transpose(1, 2) @ x[:, grid.clamp(max=T - 1)]  # (B, C, k, K) @ (B, C, K, D)
    return context, a[..., step // K, step % K]

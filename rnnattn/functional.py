"""Multi-layer, bidirectional RNN / GRU / LSTM as composition of the fused
one-layer ops.

The layout of ``weights`` and ``hx`` is exactly torch's (``_flat_weights``:
per layer, per direction ``w_ih, w_hh[, b_ih, b_hh][, w_hr]``; ``hx``:
``(num_layers * num_directions, B, H)``, for the LSTM a pair ``(h_0, c_0)``),
so a module can hand its parameters over unchanged.
"""
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from . import ops

LayerFn = Callable[..., Tuple[Tensor, ...]]


def _params(weights: Sequence[Tensor], k: int, bias: bool, proj: bool = False):
    """(w_ih, w_hh, b_ih, b_hh, w_hr) of layer-direction k; None where absent."""
    n = 2 + 2 * bias + proj
    w = list(weights[n * k : n * k + n])
    b_ih, b_hh = (w[2], w[3]) if bias else (None, None)
    return w[0], w[1], b_ih, b_hh, (w[-1] if proj else None)


def _check_stack(fn: str, states, weights: Sequence[Tensor], num_layers: int, bias: bool,
                 directions: int, proj: bool = False) -> None:
    """The counts the layers index by: ``num_layers``, the flat ``weights``
    and the first dim of each state (``(num_layers * D, B, H)``). The layer
    ops check the rest (each weight's and state's shape and dtype)."""
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError(f"{fn}: num_layers must be a positive int, got {num_layers!r}")
    per = 2 + 2 * bool(bias) + bool(proj)
    layout = "w_ih, w_hh" + (", b_ih, b_hh" if bias else "") + (", w_hr" if proj else "")
    if len(weights) != num_layers * directions * per:
        raise ValueError(
            f"{fn}: expected {num_layers * directions * per} weights ({layout} for each of "
            f"{num_layers} layer(s) x {directions} direction(s), torch's _flat_weights order), got {len(weights)}"
        )
    for name, h in states:
        if not isinstance(h, Tensor):
            raise TypeError(f"{fn}: {name} must be a Tensor, got {type(h).__name__}")
        if h.dim() != 3 or h.size(0) != num_layers * directions:
            raise ValueError(
                f"{fn}: {name} must be (num_layers * num_directions, B, H) = ({num_layers * directions}, B, H), "
                f"got {tuple(h.shape)}"
            )


def _stack(input: Tensor, num_layers: int, dropout: float, training: bool, run_layer):
    """Runs ``run_layer(x, l) -> (output, [states of each direction])`` for
    every layer, with dropout (as torch's modules) on the output of every
    layer but the last when ``training``. Returns the last output and each
    kind of state stacked over layers and directions."""
    finals: List[Tuple[Tensor, ...]] = []
    x = input
    for l in range(num_layers):
        x, states = run_layer(x, l)
        finals += states
        if dropout > 0 and training and l < num_layers - 1:
            x = F.dropout(x, p=dropout, training=True)
    # stack, not a view of the states: like torch's, h_n may be detach_()ed.
    return x, [torch.stack(list(s), 0) for s in zip(*finals)]


def _each_direction(x: Tensor, l: int, directions: int, run_one):
    """One layer as ``run_one(x, k, reverse) -> (output, states)`` per
    direction; the directions' outputs concatenated on the last dim."""
    outs, states = [], []
    for d in range(directions):
        out, st = run_one(x, l * directions + d, d == 1)
        outs.append(out)
        states.append(st)
    return (outs[0] if directions == 1 else torch.cat(outs, dim=-1)), states


def rnn(
    input: Tensor,
    batch_sizes: Optional[Tensor],
    hx: Tensor,
    weights: Sequence[Tensor],
    num_layers: int,
    bias: bool,
    bidirectional: bool,
    relu: bool = False,
    dropout: float = 0.0,
    training: bool = False,
    layer: LayerFn = ops.rnn_layer,
) -> Tuple[Tensor, Tensor]:
    """Runs a stack of Elman RNN layers on time-major input.

    ``input`` is ``(T, B, I)`` or, with ``batch_sizes``, the ``(N, I)`` data of
    a PackedSequence. Dropout (as in ``nn.RNN``) is applied to the output of
    every layer but the last when ``training``. ``layer`` is the one-layer,
    one-direction function: the fused op by default, the reference in tests.
    With the fused op, the two directions of a layer run as one autograd node
    (:func:`rnnattn.ops.rnn_bidirectional_layer`), which saves the layer's
    output once for the backward.

    Returns ``(output, h_n)`` with ``output`` ``(T, B, D*H)`` (or ``(N, D*H)``)
    and ``h_n`` ``(num_layers * D, B, H)``.
    """
    directions = 2 if bidirectional else 1
    _check_stack("rnnattn.functional.rnn", [("hx", hx)], weights, num_layers, bias, directions)

    def run_one(x, k, reverse):
        w_ih, w_hh, b_ih, b_hh, _ = _params(weights, k, bias)
        out, h = layer(x, batch_sizes, hx[k], w_ih, w_hh, b_ih, b_hh, relu, reverse)
        return out, (h,)

    def run_layer(x, l):
        if directions == 2 and layer is ops.rnn_layer:
            # One autograd node for both directions keeps the layer's output
            # once for the backward, not twice (see ops.rnn_bidirectional_layer).
            k = 2 * l
            w_f, w_b = _params(weights, k, bias)[:4], _params(weights, k + 1, bias)[:4]
            x, h_f, h_b = ops.rnn_bidirectional_layer(x, batch_sizes, hx[k], hx[k + 1], w_f, w_b, relu)
            return x, [(h_f,), (h_b,)]
        return _each_direction(x, l, directions, run_one)

    output, (h_n,) = _stack(input, num_layers, dropout, training, run_layer)
    return output, h_n


def gru(
    input: Tensor,
    batch_sizes: Optional[Tensor],
    hx: Tensor,
    weights: Sequence[Tensor],
    num_layers: int,
    bias: bool,
    bidirectional: bool,
    dropout: float = 0.0,
    training: bool = False,
    layer: LayerFn = ops.gru_layer,
) -> Tuple[Tensor, Tensor]:
    """A stack of GRU layers, as :func:`rnn` (``layer`` is
    :func:`rnnattn.ops.gru_layer` or the reference's). Returns ``(output, h_n)``."""
    directions = 2 if bidirectional else 1
    _check_stack("rnnattn.functional.gru", [("hx", hx)], weights, num_layers, bias, directions)

    def run_one(x, k, reverse):
        w_ih, w_hh, b_ih, b_hh, _ = _params(weights, k, bias)
        out, h = layer(x, batch_sizes, hx[k], w_ih, w_hh, b_ih, b_hh, reverse)
        return out, (h,)

    output, (h_n,) = _stack(
        input, num_layers, dropout, training, lambda x, l: _each_direction(x, l, directions, run_one)
    )
    return output, h_n


def lstm(
    input: Tensor,
    batch_sizes: Optional[Tensor],
    hx: Tuple[Tensor, Tensor],
    weights: Sequence[Tensor],
    num_layers: int,
    bias: bool,
    bidirectional: bool,
    proj: bool = False,
    dropout: float = 0.0,
    training: bool = False,
    layer: LayerFn = ops.lstm_layer,
) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
    """A stack of LSTM layers, as :func:`rnn`; ``hx`` is ``(h_0, c_0)`` and
    ``proj`` says whether ``weights`` hold a ``w_hr`` per layer-direction
    (``proj_size > 0``). Returns ``(output, (h_n, c_n))``."""
    directions = 2 if bidirectional else 1
    if not (isinstance(hx, (tuple, list)) and len(hx) == 2):
        raise TypeError("rnnattn.functional.lstm: hx must be a pair (h_0, c_0) of tensors")
    h0, c0 = hx
    _check_stack("rnnattn.functional.lstm", [("hx[0]", h0), ("hx[1]", c0)], weights, num_layers, bias,
                 directions, proj)

    def run_one(x, k, reverse):
        w_ih, w_hh, b_ih, b_hh, w_hr = _params(weights, k, bias, proj)
        out, h, c = layer(x, batch_sizes, h0[k], c0[k], w_ih, w_hh, b_ih, b_hh, w_hr, reverse)
        return out, (h, c)

    output, (h_n, c_n) = _stack(
        input, num_layers, dropout, training, lambda x, l: _each_direction(x, l, directions, run_one)
    )
    return output, (h_n, c_n)

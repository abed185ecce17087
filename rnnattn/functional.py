"""Multi-layer, bidirectional RNN as composition of the fused one-layer op.

The layout of ``weights`` and ``hx`` is exactly ``torch.nn.RNN``'s
(``_flat_weights``: per layer, per direction ``w_ih, w_hh[, b_ih, b_hh]``;
``hx``: ``(num_layers * num_directions, B, H)``), so a module can hand its
parameters over unchanged.
"""
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from . import ops

LayerFn = Callable[..., Tuple[Tensor, Tensor]]


def _layer_weights(weights: Sequence[Tensor], k: int, bias: bool) -> List[Optional[Tensor]]:
    """(w_ih, w_hh, b_ih, b_hh) of layer-direction k; biases None without bias."""
    if bias:
        return list(weights[4 * k : 4 * k + 4])
    return [weights[2 * k], weights[2 * k + 1], None, None]


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
    """Runs a stack of RNN layers on time-major input.

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
    h_n: List[Tensor] = []
    x = input
    for l in range(num_layers):
        k = l * directions
        if directions == 2 and layer is ops.rnn_layer:
            # One autograd node for both directions keeps the layer's output
            # once for the backward, not twice (see ops.rnn_bidirectional_layer).
            w_f, w_b = _layer_weights(weights, k, bias), _layer_weights(weights, k + 1, bias)
            x, h_f, h_b = ops.rnn_bidirectional_layer(x, batch_sizes, hx[k], hx[k + 1], w_f, w_b, relu)
            h_n += [h_f, h_b]
        else:
            outs: List[Tensor] = []
            for d in range(directions):
                w = _layer_weights(weights, k + d, bias)
                out, h = layer(x, batch_sizes, hx[k + d], *w, relu, d == 1)
                outs.append(out)
                h_n.append(h)
            x = outs[0] if directions == 1 else torch.cat(outs, dim=-1)
        if dropout > 0 and training and l < num_layers - 1:
            x = F.dropout(x, p=dropout, training=True)
    # stack, not a view of the states: like nn.RNN's, h_n may be detach_()ed.
    return x, torch.stack(h_n, 0)

"""``rnnattn.RNN`` and ``rnnattn.RNNCell``: drop-in replacements for
``torch.nn.RNN`` and ``torch.nn.RNNCell`` running on the fused kernels.

They are built on torch's own base classes (``nn.RNNBase``, ``nn.RNNCell``),
so the parameters (names, shapes, initialisation), ``state_dict``, ``repr``
and argument checks are torch's own; only ``forward`` differs, and only in how
it computes. ``RNN`` derives from ``nn.RNNBase`` rather than ``nn.RNN``
because TorchDynamo refuses to trace ``nn.RNN`` instances; rnnattn.RNN
compiles with ``torch.compile(fullgraph=True)``. Devices
and dtypes without a compiled kernel (see :func:`rnnattn.ops.has_kernel`) run
torch's implementation, so the module works everywhere ``nn.RNN`` does.
"""
import copy

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from . import functional, ops

__all__ = ["RNN", "RNNCell", "convert"]


class RNN(nn.RNNBase):
    __doc__ = (
        "Drop-in replacement for :class:`torch.nn.RNN` (same arguments, parameters,\n"
        "state_dict, inputs and outputs) computed by rnnattn's fused kernels.\n\n"
        "Each layer and direction is one call of the fused operator: the input\n"
        "projection is a single GEMM over all steps, the recurrence a tight\n"
        "loop with no per-step dispatch, and the backward a hand-written BPTT.\n"
        "PackedSequence input is walked directly (no padding).\n\n"
        "As with nn.RNN on cuDNN, the backward reads the hidden states from the\n"
        "output, so modifying the output in place before backward() raises\n"
        "autograd's in-place error; use out-of-place ops on it.\n\n"
        "torch.nn.RNN's documentation follows.\n\n" + (nn.RNN.__doc__ or "")
    )

    # torch 2.4's TorchDynamo specialises on a module whose class is not its own
    # and traces only a few torch.nn methods of it, so forward's calls of
    # RNNBase's (check_forward_args, ...) break fullgraph; this has 2.4 trace it
    # as an ordinary object, as torch 2.5+ does anyway (inline_inbuilt_nn_modules).
    if tuple(int(v) for v in torch.__version__.split(".")[:2]) < (2, 5):
        torchdynamo_force_dynamic = True

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        nonlinearity: str = "tanh",
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        modes = {"tanh": "RNN_TANH", "relu": "RNN_RELU"}
        if nonlinearity not in modes:
            raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
        self.nonlinearity = nonlinearity
        super().__init__(
            modes[nonlinearity], input_size, hidden_size, num_layers, bias, batch_first, dropout,
            bidirectional, device=device, dtype=dtype,
        )

    def forward(self, input, hx=None):  # noqa: D102  (documented above)
        # The current parameters by name (what nn.RNN's _update_flat_weights
        # refreshes _flat_weights from; TorchDynamo before 2.5 cannot trace that call).
        weights = [getattr(self, n) if hasattr(self, n) else None for n in self._flat_weights_names]
        data = input.data if isinstance(input, PackedSequence) else input
        if not ops.has_kernel(data.device, data.dtype) or any(
            w.device != data.device for w in weights
        ):
            # No fused kernel here (or a mismatch torch will report): torch's path.
            return nn.RNN.forward(self, input, hx)

        directions = 2 if self.bidirectional else 1
        orig_input = input
        if isinstance(orig_input, PackedSequence):
            input, batch_sizes, sorted_indices, unsorted_indices = input
            if hx is None:
                hx = torch.zeros(
                    self.num_layers * directions, int(batch_sizes[0]), self.hidden_size,
                    dtype=input.dtype, device=input.device,
                )
            else:
                hx = self.permute_hidden(hx, sorted_indices)
            is_batched = True
        else:
            batch_sizes = sorted_indices = unsorted_indices = None
            if input.dim() not in (2, 3):
                raise ValueError(f"RNN: Expected input to be 2D or 3D, got {input.dim()}D tensor instead")
            is_batched = input.dim() == 3
            batch_dim = 0 if self.batch_first else 1
            if not is_batched:
                input = input.unsqueeze(batch_dim)
                if hx is not None:
                    if hx.dim() != 2:
                        raise RuntimeError(
                            f"For unbatched 2-D input, hx should also be 2-D but got {hx.dim()}-D tensor"
                        )
                    hx = hx.unsqueeze(1)
            elif hx is not None and hx.dim() != 3:
                raise RuntimeError(f"For batched 3-D input, hx should also be 3-D but got {hx.dim()}-D tensor")
            if hx is None:
                hx = torch.zeros(
                    self.num_layers * directions, input.size(batch_dim), self.hidden_size,
                    dtype=input.dtype, device=input.device,
                )
        self.check_forward_args(input, hx, batch_sizes)
        _check_same(input, hx)
        if batch_sizes is None and self.batch_first:
            input = input.transpose(0, 1)
        if batch_sizes is None and input.size(0) == 0:
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")

        output, hidden = functional.rnn(
            input, batch_sizes, hx, weights, self.num_layers, self.bias, self.bidirectional,
            relu=self.nonlinearity == "relu", dropout=self.dropout, training=self.training,
        )

        if isinstance(orig_input, PackedSequence):
            return PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices), self.permute_hidden(
                hidden, unsorted_indices
            )
        if self.batch_first:
            output = output.transpose(0, 1)
        if not is_batched:
            output = output.squeeze(0 if self.batch_first else 1)
            hidden = hidden.squeeze(1)
        return output, hidden


class RNNCell(nn.RNNCell):
    __doc__ = (
        "Drop-in replacement for :class:`torch.nn.RNNCell` on rnnattn's fused kernel\n"
        "(one time step of :class:`rnnattn.RNN`).\n\n"
        "torch.nn.RNNCell's documentation follows.\n\n" + (nn.RNNCell.__doc__ or "")
    )

    def forward(self, input: Tensor, hx=None) -> Tensor:  # noqa: D102
        if not ops.has_kernel(input.device, input.dtype) or self.weight_ih.device != input.device:
            return super().forward(input, hx)
        if input.dim() not in (1, 2):
            raise ValueError(f"RNNCell: Expected input to be 1D or 2D, got {input.dim()}D instead")
        if hx is not None and hx.dim() not in (1, 2):
            raise ValueError(f"RNNCell: Expected hidden to be 1D or 2D, got {hx.dim()}D instead")
        is_batched = input.dim() == 2
        if not is_batched:
            input = input.unsqueeze(0)
        if hx is None:
            hx = torch.zeros(input.size(0), self.hidden_size, dtype=input.dtype, device=input.device)
        elif not is_batched:
            hx = hx.unsqueeze(0)
        if input.size(1) != self.input_size:
            raise RuntimeError(
                f"input has inconsistent input_size: got {input.size(1)} expected {self.input_size}"
            )
        if hx.size(0) != input.size(0):
            raise RuntimeError(
                f"Input batch size {input.size(0)} doesn't match hidden0 batch size {hx.size(0)}"
            )
        if hx.size(1) != self.hidden_size:
            raise RuntimeError(
                f"hidden0 has inconsistent hidden_size: got {hx.size(1)}, expected {self.hidden_size}"
            )
        _check_same(input, hx, weight=self.weight_ih)
        out, _ = ops.rnn_layer(
            input.unsqueeze(0), None, hx, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh,
            self.nonlinearity == "relu", False,
        )
        out = out.squeeze(0)
        return out if is_batched else out.squeeze(0)


def _check_same(input: Tensor, hx: Tensor, weight: Tensor = None) -> None:
    """dtype/device agreement of input, hx (and the cell's weights)."""
    if weight is not None and input.dtype != weight.dtype:
        raise RuntimeError(f"RNNCell input dtype ({input.dtype}) does not match weight dtype ({weight.dtype})")
    if hx.dtype != input.dtype:
        raise RuntimeError(f"hx dtype ({hx.dtype}) does not match input dtype ({input.dtype})")
    if hx.device != input.device:
        raise RuntimeError(
            f"Input and hidden tensors are not at the same device, found input tensor at "
            f"{input.device} and hidden tensor at {hx.device}"
        )


def convert(module: nn.Module) -> nn.Module:
    """Swaps every ``torch.nn.RNN`` / ``torch.nn.RNNCell`` inside ``module``
    (``module`` itself included) for its rnnattn twin, in place.

    The new modules take over the very same ``Parameter`` objects, so weights,
    their ``.grad`` and any optimizer already holding them carry over. Returns
    the (possibly new) root module.
    """
    if type(module) in _TWINS:
        return _twin(module)
    for name, child in module.named_children():
        new = convert(child)
        if new is not child:
            setattr(module, name, new)
    return module


_TWINS = {nn.RNN: RNN, nn.RNNCell: RNNCell}


def _twin(old: nn.Module) -> nn.Module:
    cls = _TWINS[type(old)]
    # The twin adds no state of its own, so it is the same object contents
    # under the new class. Containers (parameters, buffers, hooks) are copied
    # one level deep so the two modules do not edit each other's registries,
    # while the Parameter objects themselves are shared.
    new = cls.__new__(cls)
    new.__dict__.update({k: copy.copy(v) if isinstance(v, (dict, list)) else v for k, v in old.__dict__.items()})
    return new

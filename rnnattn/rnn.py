"""``rnnattn.RNN``, ``GRU``, ``LSTM`` and their cells: drop-in replacements
for torch's six recurrent modules running on the fused kernels.

They are built on torch's own base classes (``nn.RNNBase``, ``nn.RNNCell``,
``nn.GRUCell``, ``nn.LSTMCell``), so the parameters (names, shapes,
initialisation), ``state_dict``, ``repr`` and argument checks are torch's own;
only ``forward`` differs, and only in how it computes. The sequence modules
derive from ``nn.RNNBase`` rather than ``nn.RNN`` / ``nn.GRU`` / ``nn.LSTM``
because TorchDynamo refuses to trace instances of those; they compile with
``torch.compile(fullgraph=True)``. Devices and dtypes without a compiled
kernel (see :func:`rnnattn.ops.has_kernel`) run torch's implementation, so
each module works everywhere its torch twin does.
"""
import copy

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from . import _export, functional, ops
from ._modes import cuda_autocast_dtype, plain_torch_mode

__all__ = ["RNN", "GRU", "LSTM", "RNNCell", "GRUCell", "LSTMCell", "convert"]


class _FusedRNNBase(nn.RNNBase):
    """The forward shared by :class:`RNN`, :class:`GRU` and :class:`LSTM`:
    torch's argument handling (PackedSequence, unbatched input, ``h_0``
    given or None, batch_first) and checks, then the fused layers of
    :mod:`rnnattn.functional`. Devices and dtypes without a compiled kernel
    run torch's own forward (``_torch_cls``)."""

    _torch_cls = nn.RNNBase
    _cell = "rnn"  # rnnattn.ops.has_kernel's name of the cell

    # TorchDynamo before 2.5 treats an nn.Module subclass as a "static" module
    # and traces only a few torch.nn methods of it, so forward's calls of
    # RNNBase's (check_forward_args, ...) break fullgraph; this has 2.4 trace it
    # as an ordinary object, as torch 2.5+ does anyway (inline_inbuilt_nn_modules).
    if tuple(int(v) for v in torch.__version__.split(".")[:2]) < (2, 5):
        torchdynamo_force_dynamic = True

    def _zeros(self, batch: int, size: int, like: Tensor) -> Tensor:
        directions = 2 if self.bidirectional else 1
        return torch.zeros(self.num_layers * directions, batch, size, dtype=like.dtype, device=like.device)

    def forward(self, input, hx=None):  # noqa: D102  (documented on the subclasses)
        # The current parameters by name (what torch's _update_flat_weights
        # refreshes _flat_weights from; TorchDynamo before 2.5 cannot trace that call).
        weights = [getattr(self, n) if hasattr(self, n) else None for n in self._flat_weights_names]
        data = input.data if isinstance(input, PackedSequence) else input
        if not isinstance(data, Tensor):
            raise _export.input_type_error(f"rnnattn.{type(self).__name__}", input)
        device_type = data.device.type
        if (
            not ops.has_kernel(data.device, data.dtype, self._cell)
            or plain_torch_mode(device_type)
            or any(w.device != data.device for w in weights)
        ):
            # No fused kernel here, a mode the kernels do not serve (rnnattn._modes),
            # or a mismatch torch will report: torch's path (under export, layer
            # by layer in ops that become ONNX's RNN / GRU / LSTM: rnnattn._export).
            if _export.exporting():
                return _export.module_forward(self, input, hx)
            return self._torch_cls.forward(self, input, hx)
        amp = cuda_autocast_dtype(device_type)

        lstm = self.mode == "LSTM"
        h_size = self.proj_size if lstm and self.proj_size > 0 else self.hidden_size
        orig_input = input
        if isinstance(orig_input, PackedSequence):
            input, batch_sizes, sorted_indices, unsorted_indices = input
            if hx is None:
                batch = int(batch_sizes[0])
                hx = self._zeros(batch, h_size, input)
                if lstm:
                    hx = (hx, self._zeros(batch, self.hidden_size, input))
            else:
                hx = self.permute_hidden(hx, sorted_indices)
            is_batched = True
        else:
            batch_sizes = sorted_indices = unsorted_indices = None
            if input.dim() not in (2, 3):
                tensor = " tensor" if self.mode.startswith("RNN") else ""
                raise ValueError(
                    f"{type(self).__name__}: Expected input to be 2D or 3D, got {input.dim()}D{tensor} instead"
                )
            is_batched = input.dim() == 3
            batch_dim = 0 if self.batch_first else 1
            if not is_batched:
                input = input.unsqueeze(batch_dim)
            if hx is None:
                batch = input.size(batch_dim)
                hx = self._zeros(batch, h_size, input)
                if lstm:
                    hx = (hx, self._zeros(batch, self.hidden_size, input))
            elif lstm:
                want = 3 if is_batched else 2
                if hx[0].dim() != want or hx[1].dim() != want:
                    kind = "batched 3-D" if is_batched else "unbatched 2-D"
                    raise RuntimeError(
                        f"For {kind} input, hx and cx should also be {want}-D but got "
                        f"({hx[0].dim()}-D, {hx[1].dim()}-D) tensors"
                    )
                if not is_batched:
                    hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
            elif not is_batched:
                if hx.dim() != 2:
                    raise RuntimeError(
                        f"For unbatched 2-D input, hx should also be 2-D but got {hx.dim()}-D tensor"
                    )
                hx = hx.unsqueeze(1)
            elif hx.dim() != 3:
                raise RuntimeError(f"For batched 3-D input, hx should also be 3-D but got {hx.dim()}-D tensor")
        self.check_forward_args(input, hx, batch_sizes)
        for h in hx if lstm else (hx,):
            _check_same(input, h)
        if amp is not None and amp != input.dtype and ops.has_kernel(data.device, amp, self._cell):
            # CUDA autocast: the kernels run in its dtype, as cuDNN does.
            input = input.to(amp)
            hx = tuple(h.to(amp) for h in hx) if lstm else hx.to(amp)
            weights = [w.to(amp) for w in weights]
        if batch_sizes is None and self.batch_first:
            input = input.transpose(0, 1)
        if batch_sizes is None and input.size(0) == 0:
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")  # torch's words, every mode

        output, hidden = self._layers(input, batch_sizes, hx, weights)

        if isinstance(orig_input, PackedSequence):
            return PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices), self.permute_hidden(
                hidden, unsorted_indices
            )
        if self.batch_first:
            output = output.transpose(0, 1)
        if not is_batched:
            output = output.squeeze(0 if self.batch_first else 1)
            hidden = (hidden[0].squeeze(1), hidden[1].squeeze(1)) if lstm else hidden.squeeze(1)
        return output, hidden


def _module_doc(torch_cls, what: str) -> str:
    return (
        f"Drop-in replacement for :class:`torch.nn.{torch_cls.__name__}` (same arguments, parameters,\n"
        "state_dict, inputs and outputs) computed by rnnattn's fused kernels.\n\n"
        f"{what}\n\n"
        "PackedSequence input is walked directly (no padding). As with cuDNN, the\n"
        "backward reads the hidden states from the output, so modifying the\n"
        "output in place before backward() raises autograd's in-place error;\n"
        "use out-of-place ops on it.\n\n"
        f"torch.nn.{torch_cls.__name__}'s documentation follows.\n\n" + (torch_cls.__doc__ or "")
    )


class RNN(_FusedRNNBase):
    __doc__ = _module_doc(
        nn.RNN,
        "Each layer and direction is one call of the fused operator: the input\n"
        "projection is a single GEMM over all steps, the recurrence a tight\n"
        "loop with no per-step dispatch, and the backward a hand-written BPTT.",
    )
    _torch_cls = nn.RNN

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

    def _layers(self, input, batch_sizes, hx, weights):
        return functional.rnn(
            input, batch_sizes, hx, weights, self.num_layers, self.bias, self.bidirectional,
            relu=self.nonlinearity == "relu", dropout=self.dropout, training=self.training,
        )


class GRU(_FusedRNNBase):
    __doc__ = _module_doc(
        nn.GRU,
        "Gates r, z, n with torch's math, gate order and bias placement\n"
        "(n = tanh(W_in x + b_in + r * (W_hn h + b_hn))). CPU float32/float64 run\n"
        "the fused kernels; other devices and dtypes run torch's nn.GRU (cuDNN on\n"
        "a GPU).",
    )
    _torch_cls = nn.GRU
    _cell = "gru"

    def __init__(self, *args, **kwargs):
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        super().__init__("GRU", *args, **kwargs)

    def _layers(self, input, batch_sizes, hx, weights):
        return functional.gru(
            input, batch_sizes, hx, weights, self.num_layers, self.bias, self.bidirectional,
            dropout=self.dropout, training=self.training,
        )


class LSTM(_FusedRNNBase):
    __doc__ = _module_doc(
        nn.LSTM,
        "Gates i, f, g, o with torch's math and gate order; ``proj_size``\n"
        "projects h with W_hr as torch does. CPU float32/float64 run the fused\n"
        "kernels; other devices and dtypes run torch's nn.LSTM (cuDNN on a GPU).",
    )
    _torch_cls = nn.LSTM
    _cell = "lstm"
    # torch's LSTM-specific handling of the (h_0, c_0) pair.
    get_expected_cell_size = nn.LSTM.get_expected_cell_size
    check_forward_args = nn.LSTM.check_forward_args
    permute_hidden = nn.LSTM.permute_hidden

    def __init__(self, *args, **kwargs):
        super().__init__("LSTM", *args, **kwargs)

    def _layers(self, input, batch_sizes, hx, weights):
        return functional.lstm(
            input, batch_sizes, hx, weights, self.num_layers, self.bias, self.bidirectional,
            proj=self.proj_size > 0, dropout=self.dropout, training=self.training,
        )


def _check_cell_input(module: nn.Module, input: Tensor, states) -> None:
    """torch's checks of a cell's input and states (``_VF.*_cell``'s messages);
    ``states`` holds ``(label, tensor)``: ("0", hx) or ("0", h), ("1", c)."""
    if input.size(1) != module.input_size:
        raise RuntimeError(
            f"input has inconsistent input_size: got {input.size(1)} expected {module.input_size}"
        )
    for label, h in states:
        if h.size(0) != input.size(0):
            raise RuntimeError(
                f"Input batch size {input.size(0)} doesn't match hidden{label} batch size {h.size(0)}"
            )
        if h.size(1) != module.hidden_size:
            raise RuntimeError(
                f"hidden{label} has inconsistent hidden_size: got {h.size(1)}, expected {module.hidden_size}"
            )
        _check_same(input, h, weight=module.weight_ih)


def _cell_doc(torch_cls, what: str) -> str:
    return (
        f"Drop-in replacement for :class:`torch.nn.{torch_cls.__name__}` on rnnattn's fused kernel\n"
        f"({what}).\n\n"
        f"torch.nn.{torch_cls.__name__}'s documentation follows.\n\n" + (torch_cls.__doc__ or "")
    )


def _one_state_cell_forward(module, torch_cls, input: Tensor, hx, cell: str, step) -> Tensor:
    """The forward of the RNN and GRU cells (one state): torch's checks and
    unbatched handling, then ``step(x (1, B, I), hx (B, H)) -> output``, one
    time step of the fused layer. Without a kernel here: torch's forward."""
    if (
        not ops.has_kernel(input.device, input.dtype, cell)
        or plain_torch_mode(input.device.type)
        or module.weight_ih.device != input.device
    ):
        return torch_cls.forward(module, input, hx)
    name = type(module).__name__
    if input.dim() not in (1, 2):
        raise ValueError(f"{name}: Expected input to be 1D or 2D, got {input.dim()}D instead")
    if hx is not None and hx.dim() not in (1, 2):
        raise ValueError(f"{name}: Expected hidden to be 1D or 2D, got {hx.dim()}D instead")
    is_batched = input.dim() == 2
    if not is_batched:
        input = input.unsqueeze(0)
    if hx is None:
        hx = torch.zeros(input.size(0), module.hidden_size, dtype=input.dtype, device=input.device)
    elif not is_batched:
        hx = hx.unsqueeze(0)
    _check_cell_input(module, input, [("0", hx)])
    out = step(input.unsqueeze(0), hx).squeeze(0)
    return out if is_batched else out.squeeze(0)


class RNNCell(nn.RNNCell):
    __doc__ = _cell_doc(nn.RNNCell, "one time step of :class:`rnnattn.RNN`")

    def forward(self, input: Tensor, hx=None) -> Tensor:  # noqa: D102
        def step(x, h):
            relu = self.nonlinearity == "relu"
            return ops.rnn_layer(x, None, h, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh, relu)[0]

        return _one_state_cell_forward(self, nn.RNNCell, input, hx, "rnn", step)


class GRUCell(nn.GRUCell):
    __doc__ = _cell_doc(nn.GRUCell, "one time step of :class:`rnnattn.GRU`")

    def forward(self, input: Tensor, hx=None) -> Tensor:  # noqa: D102
        def step(x, h):
            return ops.gru_layer(x, None, h, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)[0]

        return _one_state_cell_forward(self, nn.GRUCell, input, hx, "gru", step)


class LSTMCell(nn.LSTMCell):
    __doc__ = _cell_doc(nn.LSTMCell, "one time step of :class:`rnnattn.LSTM`")

    def forward(self, input: Tensor, hx=None):  # noqa: D102
        if (
            not ops.has_kernel(input.device, input.dtype, "lstm")
            or plain_torch_mode(input.device.type)
            or self.weight_ih.device != input.device
        ):
            return super().forward(input, hx)
        if input.dim() not in (1, 2):
            raise ValueError(f"LSTMCell: Expected input to be 1D or 2D, got {input.dim()}D instead")
        if hx is not None:
            for idx, value in enumerate(hx):
                if value.dim() not in (1, 2):
                    raise ValueError(f"LSTMCell: Expected hx[{idx}] to be 1D or 2D, got {value.dim()}D instead")
        is_batched = input.dim() == 2
        if not is_batched:
            input = input.unsqueeze(0)
        if hx is None:
            zeros = torch.zeros(input.size(0), self.hidden_size, dtype=input.dtype, device=input.device)
            hx = (zeros, zeros)
        elif not is_batched:
            hx = (hx[0].unsqueeze(0), hx[1].unsqueeze(0))
        _check_cell_input(self, input, [("0", hx[0]), ("1", hx[1])])
        _, h, c = ops.lstm_layer(
            input.unsqueeze(0), None, hx[0], hx[1], self.weight_ih, self.weight_hh, self.bias_ih,
            self.bias_hh, None, False,
        )
        return (h, c) if is_batched else (h.squeeze(0), c.squeeze(0))


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
    """Swaps every torch recurrent module (``nn.RNN``, ``nn.GRU``, ``nn.LSTM``
    and their cells) inside ``module`` (``module`` itself included) for its
    rnnattn twin, in place.

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


_TWINS = {
    nn.RNN: RNN, nn.GRU: GRU, nn.LSTM: LSTM, nn.RNNCell: RNNCell, nn.GRUCell: GRUCell, nn.LSTMCell: LSTMCell,
}


def _twin(old: nn.Module) -> nn.Module:
    cls = _TWINS[type(old)]
    # The twin adds no state of its own, so it is the same object contents
    # under the new class. Containers (parameters, buffers, hooks) are copied
    # one level deep so the two modules do not edit each other's registries,
    # while the Parameter objects themselves are shared.
    new = cls.__new__(cls)
    new.__dict__.update({k: copy.copy(v) if isinstance(v, (dict, list)) else v for k, v in old.__dict__.items()})
    return new

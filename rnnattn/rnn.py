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

from . import _C, _export, functional, ops, reference
from ._modes import cuda_autocast_dtype, plain_path, plain_step_path

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

    def _stack(self, cell: int, input, batch_sizes, hx, cx, weights):
        """Eager calls: the layers of functional.rnn / gru / lstm in one C++
        call (csrc/stack.cpp; ``cell`` is its StackCell number), which saves
        a streaming model's per-call Python glue. torch.compile traces
        rnnattn.functional instead."""
        return _C.stack_forward(
            cell, input, batch_sizes, hx, cx, weights, self.num_layers, self.bidirectional, self.bias,
            self.proj_size > 0, float(self.dropout), self.training,
        )

    def _weights(self):
        """The current parameters by name: what torch's _update_flat_weights
        refreshes _flat_weights from (TorchDynamo before 2.5 cannot trace
        that call). Read from _parameters, which torch.func.functional_call
        swaps too; a name missing there (a parametrized weight,
        torch.nn.utils.parametrize) is read as an attribute. (Four getattr
        calls through nn.Module.__getattr__ cost ~5 us at batch 1.)"""
        params = self._parameters
        try:
            return [params[n] for n in self._flat_weights_names]
        except KeyError:
            return [getattr(self, n, None) for n in self._flat_weights_names]

    def _stack_serves(self) -> bool:
        """Whether an eager call runs the C++ layer stack (_stack), rather
        than rnnattn.functional; the RNN says no in one case."""
        return True

    def _eager_call(self, input: Tensor, hx, weights):
        """A padded eager call on the fused kernels in one C++ function
        (csrc/module_call.cpp), or None where the call needs forward's full
        path: another mode or device, packed input, or any argument that
        forward's checks (torch's) must judge and report."""
        device = input.device
        if (
            plain_path(device.type) is not None
            or torch.compiler.is_compiling()
            or not self._stack_serves()
            or not ops.has_kernel(device, input.dtype, self._cell)
            or weights[0].device != device
            or cuda_autocast_dtype(device.type) is not None
        ):
            return None
        lstm = self.mode == "LSTM"
        if hx is None:
            h = c = None
        elif lstm:
            if not (isinstance(hx, tuple) and len(hx) == 2):
                return None
            h, c = hx
        else:
            h, c = hx, None
        if not (h is None or isinstance(h, Tensor)) or not (c is None or isinstance(c, Tensor)):
            return None
        out = _C.module_forward(
            self._stack_cell(), input, h, c, weights, self.num_layers, self.bidirectional, self.bias,
            self.input_size, self.hidden_size, self.proj_size or self.hidden_size, self.batch_first,
            float(self.dropout), self.training,
        )
        if not out:
            return None
        return (out[0], (out[1], out[2])) if lstm else (out[0], out[1])

    def forward(self, input, hx=None):  # noqa: D102  (documented on the subclasses)
        weights = self._weights()
        if type(input) is Tensor:
            out = self._eager_call(input, hx, weights)
            if out is not None:
                return out
        data = input.data if isinstance(input, PackedSequence) else input
        if not isinstance(data, Tensor):
            raise _export.input_type_error(f"rnnattn.{type(self).__name__}", input)
        device = data.device
        device_type = device.type
        path = plain_path(device_type)
        if (
            not ops.has_kernel(device, data.dtype, self._cell)
            or path == "torch"
            or weights[0].device != device  # (the layer ops check the others)
        ):
            # No fused kernel here, a mode the kernels do not serve (rnnattn._modes),
            # or a mismatch torch will report: torch's path (under export, layer
            # by layer in ops that become ONNX's RNN / GRU / LSTM: rnnattn._export).
            if _export.exporting():
                return _export.module_forward(self, input, hx)
            return self._torch_cls.forward(self, input, hx)
        amp = cuda_autocast_dtype(device_type)

        lstm = self.mode == "LSTM"
        if lstm and hx is not None:
            if not isinstance(hx, (tuple, list)):
                raise TypeError(f"rnnattn.LSTM: hx must be a tuple (h_0, c_0) of tensors, got {type(hx).__name__}")
            if len(hx) != 2:
                raise RuntimeError("lstm expects two hidden states")  # torch's words
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
        if amp is not None and amp != input.dtype and ops.has_kernel(device, amp, self._cell):
            # CUDA autocast: the kernels run in its dtype, as cuDNN does.
            input = input.to(amp)
            hx = tuple(h.to(amp) for h in hx) if lstm else hx.to(amp)
            weights = [w.to(amp) for w in weights]
        if batch_sizes is None and self.batch_first:
            input = input.transpose(0, 1)
        if batch_sizes is None and input.size(0) == 0:
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")  # torch's words, every mode

        if path == "reference":  # torch.func transforms: elementary ops
            output, hidden = self._functional(input, batch_sizes, hx, weights, self._reference_layer)
        else:
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
        **kwargs,
    ) -> None:
        if "proj_size" in kwargs:  # torch's error; any other keyword is RNNBase's TypeError
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        modes = {"tanh": "RNN_TANH", "relu": "RNN_RELU"}
        if nonlinearity not in modes:
            raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
        self.nonlinearity = nonlinearity
        super().__init__(
            modes[nonlinearity], input_size, hidden_size, num_layers, bias, batch_first, dropout,
            bidirectional, device=device, dtype=dtype, **kwargs,
        )

    _reference_layer = staticmethod(reference.rnn_layer)

    def _functional(self, input, batch_sizes, hx, weights, layer=ops.rnn_layer):
        return functional.rnn(
            input, batch_sizes, hx, weights, self.num_layers, self.bias, self.bidirectional,
            relu=self.mode == "RNN_RELU", dropout=self.dropout, training=self.training, layer=layer,
        )

    def _stack_serves(self) -> bool:
        # With grad, functional.rnn runs both directions of a layer as one
        # autograd node, which keeps the layer's output once for the backward.
        return not (self.bidirectional and torch.is_grad_enabled())

    def _stack_cell(self) -> int:
        # self.mode, not self.nonlinearity: torch's forward reads the mode
        # fixed at construction.
        return int(self.mode == "RNN_RELU")

    def _layers(self, input, batch_sizes, hx, weights):
        if torch.compiler.is_compiling() or not self._stack_serves():
            return self._functional(input, batch_sizes, hx, weights)
        return self._stack(self._stack_cell(), input, batch_sizes, hx, None, weights)


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

    _reference_layer = staticmethod(reference.gru_layer)

    def _functional(self, input, batch_sizes, hx, weights, layer=ops.gru_layer):
        return functional.gru(
            input, batch_sizes, hx, weights, self.num_layers, self.bias, self.bidirectional,
            dropout=self.dropout, training=self.training, layer=layer,
        )

    def _stack_cell(self) -> int:
        return 2

    def _layers(self, input, batch_sizes, hx, weights):
        if torch.compiler.is_compiling():
            return self._functional(input, batch_sizes, hx, weights)
        return self._stack(self._stack_cell(), input, batch_sizes, hx, None, weights)


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

    _reference_layer = staticmethod(reference.lstm_layer)

    def _functional(self, input, batch_sizes, hx, weights, layer=ops.lstm_layer):
        return functional.lstm(
            input, batch_sizes, hx, weights, self.num_layers, self.bias, self.bidirectional,
            proj=self.proj_size > 0, dropout=self.dropout, training=self.training, layer=layer,
        )

    def _stack_cell(self) -> int:
        return 3

    def _layers(self, input, batch_sizes, hx, weights):
        if torch.compiler.is_compiling():
            return self._functional(input, batch_sizes, hx, weights)
        output, h_n, c_n = self._stack(self._stack_cell(), input, batch_sizes, hx[0], hx[1], weights)
        return output, (h_n, c_n)


def _cell_doc(torch_cls, what: str) -> str:
    return (
        f"Drop-in replacement for :class:`torch.nn.{torch_cls.__name__}` on rnnattn's fused kernel\n"
        f"({what}).\n\n"
        f"torch.nn.{torch_cls.__name__}'s documentation follows.\n\n" + (torch_cls.__doc__ or "")
    )


# The cells' whole forward (torch's argument handling and checks, then one
# fused step) is one C++ operator, csrc/cell_ops.cpp: a streaming decoder
# calls a cell once per token, so its per-call cost is the decoder's cost.
# Eager calls go straight through the pybind binding; torch.compile traces
# the registered operator.


def _reference_step(module, layer, input: Tensor, hx, *flags):
    """One step of ``module`` (a cell) by the reference ``layer`` (torch.func
    transforms): torch's handling of unbatched input and a missing state,
    then the layer at T = 1. (Argument errors: torch's messages come from the
    fused path; here the shapes are assumed valid, as a transform's trace of
    a working model has them.)"""
    lstm = isinstance(module, nn.LSTMCell)
    batched = input.dim() == 2
    x = input if batched else input.unsqueeze(0)
    if hx is None:
        zeros = x.new_zeros(x.size(0), module.hidden_size)
        hx = (zeros, zeros) if lstm else zeros
    elif not batched:
        hx = (hx[0].unsqueeze(0), hx[1].unsqueeze(0)) if lstm else hx.unsqueeze(0)
    w = (module.weight_ih, module.weight_hh, module.bias_ih, module.bias_hh)
    if lstm:
        _, h, c = layer(x.unsqueeze(0), None, hx[0], hx[1], *w)
        return (h, c) if batched else (h.squeeze(0), c.squeeze(0))
    h = layer(x.unsqueeze(0), None, hx, *w, *flags)[1]
    return h if batched else h.squeeze(0)


def _cell_argument_error(module, input, hx, error: TypeError) -> TypeError:
    """The error for a cell's binding refusing its arguments (pybind's
    TypeError lists every overload and prints each weight): which argument
    is not what the cell takes, or the binding's own error where both are
    (a TypeError from inside the operator)."""
    name = f"rnnattn.{type(module).__name__}"
    if not isinstance(input, Tensor):
        return TypeError(f"{name}: input must be a Tensor, got {type(input).__name__}")
    if isinstance(module, nn.LSTMCell):
        if hx is not None and not (
            isinstance(hx, (tuple, list)) and all(isinstance(h, Tensor) for h in hx)
        ):
            return TypeError(f"{name}: hx must be a tuple (h_0, c_0) of tensors or None, got {type(hx).__name__}")
    elif hx is not None and not isinstance(hx, Tensor):
        return TypeError(f"{name}: hx must be a Tensor or None, got {type(hx).__name__}")
    return error


def _fused_step(module, op: str, args):
    """One cell step on the fused operator ``op`` (``rnn_cell``, ...):
    the registered operator while compiling, else its pybind entry point,
    whose refusal of an argument's type is reported by name."""
    if torch.compiler.is_compiling():
        return getattr(torch.ops.rnnattn, op)(*args)
    try:
        return getattr(_C, op)(*args)
    except TypeError as e:
        raise _cell_argument_error(module, args[0], args[1], e) from None


class RNNCell(nn.RNNCell):
    __doc__ = _cell_doc(nn.RNNCell, "one time step of :class:`rnnattn.RNN`")

    def forward(self, input: Tensor, hx=None) -> Tensor:  # noqa: D102
        path = plain_step_path()
        if path == "reference":
            return _reference_step(self, reference.rnn_layer, input, hx, self.nonlinearity == "relu")
        if path == "torch":
            return super().forward(input, hx)
        args = (input, hx, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh, self.nonlinearity == "relu")
        return _fused_step(self, "rnn_cell", args)


class GRUCell(nn.GRUCell):
    __doc__ = _cell_doc(nn.GRUCell, "one time step of :class:`rnnattn.GRU`")

    def forward(self, input: Tensor, hx=None) -> Tensor:  # noqa: D102
        path = plain_step_path()
        if path == "reference":
            return _reference_step(self, reference.gru_layer, input, hx)
        if path == "torch":
            return super().forward(input, hx)
        args = (input, hx, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        return _fused_step(self, "gru_cell", args)


class LSTMCell(nn.LSTMCell):
    __doc__ = _cell_doc(nn.LSTMCell, "one time step of :class:`rnnattn.LSTM`")

    def forward(self, input: Tensor, hx=None):  # noqa: D102
        path = plain_step_path()
        if path == "reference":
            return _reference_step(self, reference.lstm_layer, input, hx)
        if path == "torch":
            return super().forward(input, hx)
        args = (input, hx, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        return _fused_step(self, "lstm_cell", args)


def _check_same(input: Tensor, hx: Tensor) -> None:
    """dtype/device agreement of input and hx."""
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

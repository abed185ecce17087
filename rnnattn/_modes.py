"""Which implementation a module call takes.

The fused operators serve eager calls, first-order autograd and
``torch.compile``. A few modes of PyTorch need what they cannot give; there
the modules run plain PyTorch instead, so that they keep working as torch's
own modules do:

* ``"torch"``, torch's computation (and the reference pooling): under
  **export** (``torch.export``, both ONNX exporters, ``torch.jit.trace``) the
  sequence modules run rnnattn/_export.py, one op per layer that exporters
  turn into ONNX's RNN / GRU / LSTM operators, and the cells torch's own
  forward; under **autocast on the CPU** torch's module forward, so that the
  output dtypes follow torch's CPU autocast rules (bfloat16 for ``nn.RNN``
  and ``nn.RNNCell``, which have one; float32 for the GRU and LSTM, which do
  not). A model cast to bfloat16 (``model.bfloat16()``) runs the fused CPU
  kernels.
* ``"reference"``, rnnattn's plain-PyTorch reference (rnnattn/reference.py):
  under **torch.func transforms** (``grad``, ``vjp``, ``jacrev``, ``vmap``),
  which cannot run a C++ ``autograd::Function``, and inside
  ``torch.autograd.forward_ad.dual_level()`` (forward-mode AD: the fused
  Functions have no jvp). torch's own modules are no
  help there: ``vmap`` has no batching rule for ``aten::rnn_tanh``,
  ``aten::lstm`` or ``aten::lstm_cell``; the reference is elementary ops.

Each check is a flag read (about a microsecond together, measured), so the
fused path's per-call cost barely changes.
"""
from typing import Optional

import torch

__all__ = ["plain_path", "plain_step_path", "plain_torch_mode", "cuda_autocast_dtype"]

# torch.compiler.is_exporting arrived in torch 2.5; before it, torch.export
# traces with TorchDynamo (is_compiling) and the custom ops export as they are.
_is_exporting = getattr(torch.compiler, "is_exporting", lambda: False)


# Eager-mode flag reads, bound once (each attribute lookup costs): the
# checks below run on every call of every module.
_any_autocast = torch._C._is_any_autocast_enabled
_tracing = torch._C._is_tracing
_functorch = torch._C._are_functorch_transforms_active
_forward_ad = torch.autograd.forward_ad  # _current_level: -1 outside dual_level()
# Whether TorchDynamo reads _functorch() at trace time (a constant in the
# graph): torch 2.13 does (tested); torch 2.4's breaks the graph on it. The
# versions between are not known, so they keep the fused path while compiling.
_dynamo_reads_functorch = torch.torch_version.TorchVersion(torch.__version__) >= (2, 13)


def _path(autocast_device: Optional[str]) -> Optional[str]:
    """The path under the active modes; ``autocast_device``: the device type
    whose autocast sends a call to torch's module ("cpu" for the sequence
    modules on the CPU, None: any device, for the cells; "" none)."""
    if torch.compiler.is_compiling():
        # torch.compile traces the ops themselves, but not through a torch.func
        # transform inside the compiled function (TorchDynamo reads the flag
        # below at trace time): the C++ Functions raise there, the Python one
        # gave zero grads (torch.compile(torch.func.grad(f))).
        if _is_exporting() or _autocast(autocast_device):
            return "torch"
        if _dynamo_reads_functorch and _functorch():
            return "reference"
        return None
    if _any_autocast() and _autocast(autocast_device):
        return "torch"
    if _tracing() or _is_exporting():
        return "torch"
    if _functorch() or getattr(_forward_ad, "_current_level", -1) >= 0:
        return "reference"
    return None


def _autocast(device: Optional[str]) -> bool:
    if device is None:
        return torch._C._is_any_autocast_enabled()
    return device != "" and torch.is_autocast_enabled(device)


def plain_path(device_type: str) -> Optional[str]:
    """None while the fused operators serve a call of the sequence modules on
    ``device_type``, else ``"torch"`` or ``"reference"`` (module docstring).
    Autocast on CUDA is served: see :func:`cuda_autocast_dtype`."""
    return _path("cpu" if device_type == "cpu" else "")


def plain_step_path() -> Optional[str]:
    """:func:`plain_path` for the one-step cells, which run torch's cell under
    autocast on any device: a step is a few small GEMMs, which torch's cell
    runs in the autocast dtype through its autocast rules."""
    return _path(None)


def cuda_autocast_dtype(device_type: str):
    """The dtype that autocast asks CUDA recurrences to run in, or None: the
    CUDA kernels run in it (as cuDNN does under autocast)."""
    if device_type == "cuda" and torch.is_autocast_enabled("cuda"):
        return torch.get_autocast_dtype("cuda")
    return None


def plain_torch_mode(device_type: str) -> bool:
    """Whether a call on ``device_type`` leaves the fused operators (either
    plain path): what the pooling asks, which has one plain implementation."""
    return plain_path(device_type) is not None

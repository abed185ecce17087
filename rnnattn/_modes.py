"""Which implementation a module call takes.

The fused operators serve eager calls, first-order autograd and
``torch.compile``. A few modes of PyTorch need what they cannot give; there
the modules run plain PyTorch instead, so that they keep working as torch's
own modules do:

* ``"torch"``, torch's own module forward (and the reference pooling):
  under **export** (``torch.export``, both ONNX exporters, ``torch.jit.trace``),
  where torch's recurrent modules become ONNX's RNN / GRU / LSTM operators
  that every ONNX runtime runs fast; and under **autocast on the CPU**, where
  torch's modules compute in the autocast dtype (bfloat16), for which the CPU
  kernels have no build yet.
* ``"reference"``, rnnattn's plain-PyTorch reference (rnnattn/reference.py):
  under **torch.func transforms** (``grad``, ``vjp``, ``jacrev``, ``vmap``),
  which cannot run a C++ ``autograd::Function``. torch's own modules are no
  help there: ``vmap`` has no batching rule for ``aten::rnn_tanh``,
  ``aten::lstm`` or ``aten::lstm_cell``; the reference is elementary ops.

Each check is a flag read (well under a microsecond together), so the fused
path's per-call cost does not change.
"""
from typing import Optional

import torch

__all__ = ["plain_path", "plain_step_path", "plain_torch_mode", "cuda_autocast_dtype"]

# torch.compiler.is_exporting arrived in torch 2.5; before it, torch.export
# traces with TorchDynamo (is_compiling) and the custom ops export as they are.
_is_exporting = getattr(torch.compiler, "is_exporting", lambda: False)


def _path(autocast: bool) -> Optional[str]:
    if torch.compiler.is_compiling():
        # torch.compile traces the ops themselves (and handles torch.func
        # inside a compiled function on its own).
        return "torch" if autocast or _is_exporting() else None
    if autocast or torch.jit.is_tracing() or _is_exporting():
        return "torch"
    if torch._C._are_functorch_transforms_active():
        return "reference"
    return None


def plain_path(device_type: str) -> Optional[str]:
    """None while the fused operators serve a call of the sequence modules on
    ``device_type``, else ``"torch"`` or ``"reference"`` (module docstring).
    Autocast on CUDA is served: see :func:`cuda_autocast_dtype`."""
    return _path(device_type == "cpu" and torch.is_autocast_enabled("cpu"))


def plain_step_path() -> Optional[str]:
    """:func:`plain_path` for the one-step cells, which run torch's cell under
    autocast on any device: a step is a few small GEMMs, which torch's cell
    runs in the autocast dtype through its autocast rules."""
    return _path(torch._C._is_any_autocast_enabled())


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

"""Which implementation a module call takes.

The fused operators serve eager calls, autograd (first order) and
``torch.compile``. A few modes of PyTorch need what they cannot give, and
there the modules run plain PyTorch instead, so that they keep working as
torch's own modules do:

* **export** (``torch.export``, both ONNX exporters, ``torch.jit.trace``):
  torch's recurrent modules become ONNX's RNN / GRU / LSTM operators, which
  every ONNX runtime runs fast, and the pooling becomes standard operators;
* **torch.func transforms** (``grad``, ``vjp``, ``jacrev``, ``vmap``): a C++
  ``autograd::Function`` cannot run under functorch's transforms;
* **autocast on the CPU**: torch's modules compute in the autocast dtype
  (bfloat16), for which the CPU kernels have no build yet.

Each check is a flag read (well under a microsecond together), so the fused
path's per-call cost does not change.
"""
import torch

__all__ = ["plain_torch_mode", "plain_torch_step", "cuda_autocast_dtype"]

# torch.compiler.is_exporting arrived in torch 2.5; before it, torch.export
# traces with TorchDynamo (is_compiling) and the custom ops export as they are.
_is_exporting = getattr(torch.compiler, "is_exporting", lambda: False)


def plain_torch_mode(device_type: str) -> bool:
    """True while a mode is active that the fused operators do not serve on
    ``device_type`` (see the module docstring): the caller runs torch's
    implementation."""
    cpu_autocast = device_type == "cpu" and torch.is_autocast_enabled("cpu")
    if torch.compiler.is_compiling():
        # torch.compile traces the ops themselves (and handles torch.func
        # inside a compiled function on its own).
        return cpu_autocast or _is_exporting()
    return (
        cpu_autocast
        or torch.jit.is_tracing()
        or torch._C._are_functorch_transforms_active()
        or _is_exporting()
    )


def cuda_autocast_dtype(device_type: str):
    """The dtype that autocast asks CUDA recurrences to run in, or None: the
    CUDA kernels run in it (as cuDNN does under autocast)."""
    if device_type == "cuda" and torch.is_autocast_enabled("cuda"):
        return torch.get_autocast_dtype("cuda")
    return None


def plain_torch_step() -> bool:
    """:func:`plain_torch_mode` for the one-step cells, under autocast on any
    device: a step is a few small GEMMs, which torch's cell runs in the
    autocast dtype through its autocast rules."""
    if torch.compiler.is_compiling():
        return torch._C._is_any_autocast_enabled() or _is_exporting()
    return (
        torch._C._is_any_autocast_enabled()
        or torch.jit.is_tracing()
        or torch._C._are_functorch_transforms_active()
        or _is_exporting()
    )

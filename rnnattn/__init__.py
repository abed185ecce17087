"""rnnattn: fused RNN and attention-pooling kernels for PyTorch.

Public API:

* :class:`RNN`, :class:`RNNCell`: drop-in replacements for ``torch.nn.RNN`` /
  ``torch.nn.RNNCell``; :func:`convert` swaps them into an existing model.
* :mod:`rnnattn.ops`: the differentiable fused operators.
* :mod:`rnnattn.reference`: the same math in plain PyTorch.
"""
from . import _load  # noqa: F401  (clear error if the extension is missing)
from . import functional, ops, reference  # noqa: F401
from .rnn import RNN, RNNCell, convert
from . import attention_ops  # noqa: F401  (autograd/fake of the attention ops)
from .attention import AttentionPooling

__version__ = "0.1.0"

__all__ = ["RNN", "RNNCell", "convert", "ops", "functional", "reference", "AttentionPooling", "attention_ops"]

"""rnnattn: fused RNN and attention-pooling kernels for PyTorch.

Public API:

* :class:`RNN`, :class:`GRU`, :class:`LSTM`, :class:`RNNCell`, :class:`GRUCell`,
  :class:`LSTMCell`: drop-in replacements for torch's recurrent modules;
  :func:`convert` swaps them into an existing model.
* :mod:`rnnattn.ops`: the differentiable fused operators.
* :mod:`rnnattn.reference`: the same math in plain PyTorch.
"""
import torch

from . import _load  # noqa: F401  (clear error if the extension is missing)
from . import functional, ops, reference  # noqa: F401
from .rnn import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell, convert
from . import attention_ops  # noqa: F401  (fake kernels of the attention ops)
from .attention import AttentionPooling
from .classifier import RNNAttentionClassifier

__version__ = "0.1.0"

# Whole-model checkpoints (torch.save(model)) load with torch.load's default
# weights_only=True once rnnattn is imported: its module classes, and the
# torch modules the classifier is built from, are allowed globals. (torch
# allows no nn.Module class by default; these hold only parameters, buffers
# and plain attributes.)
# (set: a module's _non_persistent_buffers_set; torch 2.4's unpickler does
# not allow it by default, later ones do.)
torch.serialization.add_safe_globals(
    [RNN, GRU, LSTM, RNNCell, GRUCell, LSTMCell, AttentionPooling, RNNAttentionClassifier,
     torch.nn.Linear, torch.nn.Dropout, torch.nn.Embedding, set]
)

__all__ = [
    "RNN", "GRU", "LSTM", "RNNCell", "GRUCell", "LSTMCell", "convert", "ops", "functional", "reference",
    "AttentionPooling", "attention_ops", "RNNAttentionClassifier",
]

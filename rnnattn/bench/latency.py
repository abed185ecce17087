"""The latency section: one streaming step at a time, where the per-call
cost is the whole cost (decoders, online classifiers, RL agents).

Each case runs 100 calls in a Python loop, carrying the state from call to
call as a streaming model does, at batch 1 (input 32, hidden 64):

* ``cell``: ``h = cell(x, h)`` (LSTMCell: ``(h, c)``), rnnattn's cell vs
  torch's;
* ``T=1``: ``out, h = module(x, h)`` with ``x`` of one time step, rnnattn's
  RNN / GRU / LSTM vs torch's.

"fwd" runs the loop under ``no_grad``; "fwd+bwd" records it and
backpropagates from the last state to the input and every parameter. The
table reports the time per call (the loop's time / 100). The floors are
issue 14's: rnnattn at most 0.8x torch's time under no_grad and at most
1.0x with grad (speedup >= 1.25x / 1.0x); the sequence modules' floor is
for no_grad.
"""
from dataclasses import dataclass, field
from typing import Dict, Sequence, Tuple

import torch
from torch import nn

import rnnattn

from .cases import Floor, MODES

CONTENDERS = ("rnnattn", "torch")
CALLS = 100  # calls per timed loop


@dataclass(frozen=True)
class LatencyCase:
    cell: str  # "rnn", "gru" or "lstm"
    form: str  # "cell" or "T=1"
    mode: str
    B: int = 1
    I: int = 32
    H: int = 64
    floors: Tuple[object, ...] = field(default=(), compare=False)

    section = "latency"
    contenders = CONTENDERS
    calls = CALLS

    @property
    def kind(self) -> str:
        name = {"rnn": "RNN", "gru": "GRU", "lstm": "LSTM"}[self.cell]
        return f"{name}Cell" if self.form == "cell" else f"{name} T=1"

    @property
    def shape(self) -> Dict[str, int]:
        return {"B": self.B, "I": self.I, "H": self.H}

    @property
    def key(self) -> str:
        return f"latency/{self.cell}-{self.form}/B{self.B}-I{self.I}-H{self.H}/{self.mode}"


def _floors(form: str, mode: str) -> Tuple[object, ...]:
    if mode == "fwd":
        return (Floor("torch", 1.25),)
    return (Floor("torch", 1.0),) if form == "cell" else ()


def grid() -> list:
    return [
        LatencyCase(cell, form, mode, floors=_floors(form, mode))
        for form in ("cell", "T=1")
        for cell in ("rnn", "gru", "lstm")
        for mode in MODES
    ]


_CELLS = {
    "rnn": (rnnattn.RNNCell, nn.RNNCell),
    "gru": (rnnattn.GRUCell, nn.GRUCell),
    "lstm": (rnnattn.LSTMCell, nn.LSTMCell),
}
_MODULES = {"rnn": (rnnattn.RNN, nn.RNN), "gru": (rnnattn.GRU, nn.GRU), "lstm": (rnnattn.LSTM, nn.LSTM)}


def build(case: LatencyCase, device, dtype, names: Sequence[str], seed: int = 0):
    """The Contenders (``contenders.Built``) of a latency case: rnnattn's
    module and torch's, with the same weights."""
    from .contenders import Built, _leaf, _make

    built = Built()
    torch.manual_seed(seed)
    ours_cls, theirs_cls = (_CELLS if case.form == "cell" else _MODULES)[case.cell]
    theirs = theirs_cls(case.I, case.H).to(device, dtype)
    ours = ours_cls(case.I, case.H).to(device, dtype)
    ours.load_state_dict(theirs.state_dict())
    lstm = case.cell == "lstm"
    x0 = torch.randn(case.B, case.I, device=device, dtype=dtype)
    if case.form == "T=1":
        x0 = x0.unsqueeze(0)  # (T=1, B, I)
    g = torch.randn(case.B, case.H, device=device, dtype=dtype)
    if case.form == "T=1":
        g = g.unsqueeze(0)
    grads = (g, g) if lstm else (g,)
    train = case.mode == "fwd+bwd"
    for name in names:
        module = {"rnnattn": ours, "torch": theirs}.get(name)
        if module is None:
            raise ValueError(f"unknown latency contender {name!r}; expected one of {', '.join(CONTENDERS)}")
        x = _leaf(x0, train)

        if case.form == "cell":

            def forward(m=module, x=x):
                h = None
                for _ in range(CALLS):
                    h = m(x, h)
                return tuple(h) if lstm else (h,)

        else:

            def forward(m=module, x=x):
                h = None
                for _ in range(CALLS):
                    _, h = m(x, h)
                return tuple(h) if lstm else (h,)

        built.contenders[name] = _make(forward, [x, *module.parameters()], grads, case.mode)
    return built

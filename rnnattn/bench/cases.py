"""What is timed: the benchmark cases, the named grids, and the speed floors.

A case is one shape in one mode ("fwd": inference under ``no_grad``;
"fwd+bwd": forward, then backward to the input and every parameter). Each
case is timed for every contender of its section side by side (see
``contenders.py``); the fused one is always called ``rnnattn``.

Floors are the promises the README makes (speedup = baseline time / rnnattn
time, and peak memory no larger than the baseline's); the report marks each
one met or unmet, so the grids below must contain exactly those cases.
"""
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

MODES = ("fwd", "fwd+bwd")

# "GEMM floor": the case's multiply-adds as large GEMMs (contenders.gemm_floor).
RNN_CONTENDERS = ("rnnattn", "nn.RNN", "reference", "GEMM floor")
GRU_CONTENDERS = ("rnnattn", "nn.GRU", "reference", "GEMM floor")
LSTM_CONTENDERS = ("rnnattn", "nn.LSTM", "reference", "GEMM floor")
POOL_CONTENDERS = ("rnnattn", "eager", "compile", "sdpa")
CELL_CONTENDERS = {"rnn": RNN_CONTENDERS, "gru": GRU_CONTENDERS, "lstm": LSTM_CONTENDERS}
TORCH_MODULE = {"rnn": "nn.RNN", "gru": "nn.GRU", "lstm": "nn.LSTM"}
# On CUDA the RNN also runs with each recurrence path forced
# (RNNATTN_RNN_CUDA_PATH, see csrc/cuda/rnn.cu): what calibrates the path rule.
RNN_CUDA_PATHS = ("persistent", "fallback")


def contenders_for(case, device_type: str) -> Tuple[str, ...]:
    """The contenders of ``case`` on a device of type ``device_type``."""
    if case.section == "rnn" and device_type == "cuda":
        return tuple(case.contenders) + RNN_CUDA_PATHS
    return tuple(case.contenders)


@dataclass(frozen=True)
class Floor:
    """``rnnattn`` must be at least ``min_speedup`` times faster than ``baseline``."""

    baseline: str
    min_speedup: float

    def describe(self) -> str:
        return f"speedup vs {self.baseline} >= {self.min_speedup:g}x"


@dataclass(frozen=True)
class MemoryFloor:
    """``rnnattn``'s peak memory must not exceed ``baseline``'s."""

    baseline: str

    def describe(self) -> str:
        return f"peak memory <= {self.baseline}"


@dataclass(frozen=True)
class RNNCase:
    """``nn.RNN(I, H, num_layers=layers, bidirectional=...)`` (or ``nn.GRU`` /
    ``nn.LSTM``, by ``cell``) on ``(T, B, I)`` input (time-major, torch's
    default). ``packed`` feeds a PackedSequence whose lengths spread evenly
    from ``T`` down to ``T // 4``."""

    B: int
    T: int
    I: int
    H: int
    mode: str
    layers: int = 1
    bidirectional: bool = False
    packed: bool = False
    floors: Tuple[object, ...] = field(default=(), compare=False)
    cell: str = "rnn"  # "rnn", "gru" or "lstm": also the report's section

    @property
    def section(self) -> str:
        return self.cell

    @property
    def contenders(self) -> Tuple[str, ...]:
        # The plain-PyTorch GRU/LSTM reference (one autograd op per gate and
        # step) takes tens of seconds a call at H = 1024 and says nothing the
        # smaller shapes do not: it is timed up to H = 256.
        if self.cell != "rnn" and self.H > 256:
            return tuple(n for n in CELL_CONTENDERS[self.cell] if n != "reference")
        return CELL_CONTENDERS[self.cell]

    @property
    def kind(self) -> str:
        s = f"{self.layers} layer" + ("s" if self.layers > 1 else "")
        if self.bidirectional:
            s += " bidir"
        if self.packed:
            s += " packed"
        return s

    @property
    def shape(self) -> Dict[str, int]:
        return {"B": self.B, "T": self.T, "I": self.I, "H": self.H}

    @property
    def key(self) -> str:
        tag = f"L{self.layers}" + ("bi" if self.bidirectional else "") + ("-packed" if self.packed else "")
        return f"{self.cell}/{tag}/B{self.B}-T{self.T}-I{self.I}-H{self.H}/{self.mode}"


@dataclass(frozen=True)
class PoolCase:
    """Attention pooling of ``H`` ``(B, T, D)`` with one learned query
    (``heads=1``, linear score), masked by per-sequence lengths spread evenly
    from ``T`` down to ``T // 4`` (in shuffled order)."""

    B: int
    T: int
    D: int
    mode: str
    floors: Tuple[object, ...] = field(default=(), compare=False)

    section = "pool"
    contenders = POOL_CONTENDERS
    kind = "lengths mask"

    @property
    def shape(self) -> Dict[str, int]:
        return {"B": self.B, "T": self.T, "D": self.D}

    @property
    def key(self) -> str:
        return f"pool/B{self.B}-T{self.T}-D{self.D}/{self.mode}"



# ---------------------------------------------------------------------------
# The floors (issue 5 for the RNN, issue 10 for the GRU and LSTM): the cases
# that carry them must be in the default grid.

_MEM = MemoryFloor("nn.RNN")
_MEM_GRU = MemoryFloor("nn.GRU")
_MEM_LSTM = MemoryFloor("nn.LSTM")
_FLOOR_TABLE: Dict[Tuple[str, Tuple[int, ...], str], Tuple[object, ...]] = {
    # (section, shape, mode) -> floors
    ("rnn", (1, 100, 32, 64), "fwd+bwd"): (Floor("nn.RNN", 3.0), _MEM),
    ("rnn", (16, 100, 64, 128), "fwd+bwd"): (Floor("nn.RNN", 3.0), _MEM),
    ("rnn", (64, 100, 512, 1024), "fwd+bwd"): (Floor("nn.RNN", 1.2), _MEM),
    ("rnn", (1, 100, 32, 64), "fwd"): (Floor("nn.RNN", 2.0), _MEM),
    ("rnn", (16, 100, 64, 128), "fwd"): (Floor("nn.RNN", 2.0), _MEM),
    ("rnn", (64, 100, 512, 1024), "fwd"): (_MEM,),
    ("pool", (64, 128, 256), "fwd+bwd"): (Floor("eager", 2.0),),
    # GRU and LSTM: fwd+bwd speedups as issue 10 asks; forward never slower.
    ("gru", (1, 100, 32, 64), "fwd+bwd"): (Floor("nn.GRU", 5.0), _MEM_GRU),
    ("gru", (16, 100, 64, 128), "fwd+bwd"): (Floor("nn.GRU", 2.5), _MEM_GRU),
    ("gru", (64, 100, 512, 1024), "fwd+bwd"): (Floor("nn.GRU", 1.2), _MEM_GRU),
    ("gru", (1, 100, 32, 64), "fwd"): (Floor("nn.GRU", 1.0), _MEM_GRU),
    ("gru", (16, 100, 64, 128), "fwd"): (Floor("nn.GRU", 1.0), _MEM_GRU),
    ("gru", (64, 100, 512, 1024), "fwd"): (Floor("nn.GRU", 1.0), _MEM_GRU),
    ("lstm", (1, 100, 32, 64), "fwd+bwd"): (Floor("nn.LSTM", 2.0), _MEM_LSTM),
    ("lstm", (16, 100, 64, 128), "fwd+bwd"): (Floor("nn.LSTM", 1.2), _MEM_LSTM),
    ("lstm", (64, 100, 512, 1024), "fwd+bwd"): (Floor("nn.LSTM", 1.2), _MEM_LSTM),
    ("lstm", (1, 100, 32, 64), "fwd"): (Floor("nn.LSTM", 1.0), _MEM_LSTM),
    ("lstm", (16, 100, 64, 128), "fwd"): (Floor("nn.LSTM", 1.0), _MEM_LSTM),
    ("lstm", (64, 100, 512, 1024), "fwd"): (Floor("nn.LSTM", 1.0), _MEM_LSTM),
}


def _rnn(B, T, I, H, mode, layers=1, bidirectional=False, packed=False, cell="rnn") -> RNNCase:
    plain = layers == 1 and not bidirectional and not packed
    floors = _FLOOR_TABLE.get((cell, (B, T, I, H), mode), ()) if plain else ()
    return RNNCase(B, T, I, H, mode, layers, bidirectional, packed, floors, cell)


def _pool(B, T, D, mode) -> PoolCase:
    return PoolCase(B, T, D, mode, _FLOOR_TABLE.get(("pool", (B, T, D), mode), ()))


def _both(make, *args, **kw) -> List[object]:
    return [make(*args, mode, **kw) for mode in MODES]


# ---------------------------------------------------------------------------
# Grids


def quick() -> List[object]:
    """A few seconds: the two small floor shapes, a small packed stack, and
    the pooling floor shape."""
    cases: List[object] = []
    for B, T, I, H in [(1, 100, 32, 64), (16, 100, 64, 128)]:
        cases += _both(_rnn, B, T, I, H)
    cases += _both(_rnn, 8, 50, 32, 64, layers=2, bidirectional=True, packed=True)
    for cell in ("gru", "lstm"):
        cases += _both(_rnn, 16, 100, 64, 128, cell=cell)
    cases += _both(_pool, 64, 128, 256)
    return cases


def default() -> List[object]:
    """About 10 minutes on 2 cores (torch's GRU takes seconds a call at
    H = 1024): every floor case, a packed 2-layer bidirectional stack of
    each cell, and three pooling shapes (short/wide, the floor shape,
    long/narrow)."""
    cases: List[object] = []
    for cell in ("rnn", "gru", "lstm"):
        for B, T, I, H in [(1, 100, 32, 64), (16, 100, 64, 128), (64, 100, 512, 1024)]:
            cases += _both(_rnn, B, T, I, H, cell=cell)
        cases += _both(_rnn, 16, 100, 64, 128, layers=2, bidirectional=True, packed=True, cell=cell)
    for B, T, D in [(256, 32, 512), (64, 128, 256), (16, 512, 128)]:
        cases += _both(_pool, B, T, D)
    return cases


# DeepBench (baidu-research/DeepBench) vanilla-RNN training sizes:
# input size = hidden size, 50 time steps.
DEEPBENCH_H = (1760, 2048, 2560)
DEEPBENCH_B = (16, 32, 64, 128)


def full(device: str = "cpu") -> List[object]:
    """The large grid: the default grid, sweeps over batch, length and width,
    packed stacks at several sizes, more pooling shapes, and on CUDA the
    DeepBench RNN training sizes."""
    cases = default()
    seen = set(c.key for c in cases)

    def add(new: List[object]) -> None:
        for c in new:
            if c.key not in seen:
                seen.add(c.key)
                cases.append(c)

    for B in (1, 8, 32, 128):
        for I, H in [(32, 64), (128, 256), (256, 512)]:
            add(_both(_rnn, B, 100, I, H))
    for T in (10, 1000):
        add(_both(_rnn, 16, T, 64, 128))
    for B, T, I, H in [(4, 200, 64, 128), (32, 100, 256, 256), (64, 50, 512, 512)]:
        add(_both(_rnn, B, T, I, H, layers=2, bidirectional=True, packed=True))
    if device == "cuda":
        for H in DEEPBENCH_H:
            for B in DEEPBENCH_B:
                add(_both(_rnn, B, 50, H, H))
    for B in (8, 64, 256):
        for T in (32, 128, 512):
            for D in (64, 256):
                add(_both(_pool, B, T, D))
    # The shapes the attention-pooling issue quotes (wide and long).
    for B, T, D in [(32, 512, 1024), (256, 2048, 256)]:
        add(_both(_pool, B, T, D))
    return cases


GPU_RNN_B = (1, 16, 64)
GPU_RNN_H = (128, 512, 1024)


def gpu() -> List[object]:
    """The GPU grid (``make gpu-check`` runs it in float32 and bfloat16): one
    tanh layer against cuDNN at T = 100, I = H, B in {1, 16, 64}, H in {128,
    512, 1024} (on CUDA also each recurrence path forced), and the pooling at
    the floor shape and a wide, long one."""
    cases: List[object] = []
    for H in GPU_RNN_H:
        for B in GPU_RNN_B:
            cases += _both(_rnn, B, 100, H, H)
    for B, T, D in [(64, 128, 256), (32, 512, 1024)]:
        cases += _both(_pool, B, T, D)
    return cases


GRIDS = {"quick": quick, "default": default, "full": full, "gpu": gpu}


def grid(name: str, device: str = "cpu") -> List[object]:
    """The cases of grid ``name``; all but the GPU grid end with the latency
    section (rnnattn/bench/latency.py)."""
    if name == "gpu":
        return gpu()
    from . import latency

    return (full(device) if name == "full" else GRIDS[name]()) + latency.grid()


def required_floor_keys() -> List[str]:
    """Keys of every case that carries a floor (all are in the default grid)."""
    keys = []
    for (section, shape, mode), _ in _FLOOR_TABLE.items():
        c = _pool(*shape, mode) if section == "pool" else _rnn(*shape, mode, cell=section)
        keys.append(c.key)
    return keys


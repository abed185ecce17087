"""Runs a grid: for each case, build the contenders, check that they agree,
time them side by side, measure their peak memory, and collect the results."""
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch

from . import cases as cases_mod
from . import contenders as contenders_mod
from . import timing
from .cases import Floor, MemoryFloor


@dataclass
class ContenderResult:
    timing: timing.Timing
    peak_bytes: Optional[int]
    note: str = ""


@dataclass
class CaseResult:
    case: object
    results: Dict[str, ContenderResult] = field(default_factory=dict)
    skipped: Dict[str, str] = field(default_factory=dict)
    max_rel_diff: Dict[str, float] = field(default_factory=dict)  # vs rnnattn
    agree: bool = True

    def speedup(self, baseline: str) -> Optional[float]:
        """``baseline`` median time / ``rnnattn`` median time."""
        ours, theirs = self.results.get("rnnattn"), self.results.get(baseline)
        if ours is None or theirs is None:
            return None
        return theirs.timing.median / ours.timing.median

    def memory_ratio(self, baseline: str) -> Optional[float]:
        """``rnnattn`` peak bytes / ``baseline`` peak bytes."""
        ours, theirs = self.results.get("rnnattn"), self.results.get(baseline)
        if ours is None or theirs is None or ours.peak_bytes is None or not theirs.peak_bytes:
            return None
        return ours.peak_bytes / theirs.peak_bytes

    def floor_checks(self) -> List[dict]:
        """Each floor of the case, its measured value, and whether it is met
        (``None`` when it could not be measured)."""
        out = []
        for f in self.case.floors:
            if isinstance(f, Floor):
                value = self.speedup(f.baseline)
                met = None if value is None else value >= f.min_speedup
            elif isinstance(f, MemoryFloor):
                value = self.memory_ratio(f.baseline)
                ours = self.results.get("rnnattn")
                theirs = self.results.get(f.baseline)
                met = (
                    None
                    if ours is None or theirs is None or ours.peak_bytes is None or theirs.peak_bytes is None
                    else ours.peak_bytes <= theirs.peak_bytes
                )
            else:  # pragma: no cover
                raise TypeError(f"unknown floor {f!r}")
            out.append({"floor": f.describe(), "value": value, "met": met})
        return out


def tolerance(dtype: torch.dtype) -> float:
    """Largest accepted relative difference (see ``_rel_diff``) between contenders."""
    return {torch.float64: 1e-8, torch.float32: 1e-3}.get(dtype, 5e-2)


def _rel_diff(a: List[torch.Tensor], b: List[torch.Tensor]) -> float:
    """Largest ``max|x - y| / max(1, max|x|)`` over paired tensors (``a``:
    rnnattn's values; inf when the lists do not pair up)."""
    if len(a) != len(b):
        return float("inf")
    worst = 0.0
    for x, y in zip(a, b):
        if x is None or y is None:
            if x is not y:
                return float("inf")
            continue
        x, y = x.detach().reshape(-1).double(), y.detach().reshape(-1).double()
        if x.shape != y.shape:
            return float("inf")
        if x.numel() == 0:
            continue
        scale = max(1.0, float(x.abs().max()))
        worst = max(worst, float((x - y).abs().max()) / scale)
    return worst


def run_case(
    case,
    device: torch.device,
    dtype: torch.dtype,
    names: Sequence[str],
    budget_s: float,
    min_rounds: int,
    memory: bool = True,
    seed: int = 0,
) -> CaseResult:
    built = contenders_mod.build(case, device, dtype, names, seed)
    res = CaseResult(case, skipped=dict(built.skipped))
    sync = timing.synchronizer(device)
    # First call of each contender: checks agreement and pays one-off costs
    # (torch.compile's compilation, cuDNN plans, allocator growth), which are
    # reported but kept out of the timed samples.
    checks, first = {}, {}
    for name, c in list(built.contenders.items()):
        try:
            sync()
            t0 = time.perf_counter()
            checks[name] = c.check()
            sync()
            first[name] = time.perf_counter() - t0
        except Exception as err:  # e.g. torch.compile without a working C++ compiler
            res.skipped[name] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:200]
            del built.contenders[name]
    if "rnnattn" in checks:
        for name, vals in checks.items():
            if name != "rnnattn" and vals is not None:  # None: a yardstick, not the same values
                res.max_rel_diff[name] = _rel_diff(checks["rnnattn"], vals)
        res.agree = all(d <= tolerance(dtype) for d in res.max_rel_diff.values())
    del checks
    if not built.contenders:
        return res
    timings = timing.measure({n: c.step for n, c in built.contenders.items()}, sync, budget_s, min_rounds)
    for name, c in built.contenders.items():
        timings[name].first_call_s = first[name]
        peak = None
        if memory:
            c.reset()
            peak = timing.peak_memory(c.step, device)
        res.results[name] = ContenderResult(timings[name], peak, c.note)
    return res


def run(
    cases: Sequence[object],
    device: torch.device,
    dtype: torch.dtype,
    budget_s: float = 2.0,
    min_rounds: int = 5,
    memory: bool = True,
    exclude: Optional[Dict[str, str]] = None,
    progress: Optional[bool] = None,
    seed: int = 0,
) -> List[CaseResult]:
    """Runs every case. ``exclude`` maps contenders to leave out to the
    reason the report gives; ``progress``: tqdm bar on stderr (``None``: only
    when stderr is a terminal)."""
    exclude = exclude or {}
    results = []
    bar = _progress(cases, progress)
    for case in bar:
        bar.set_description(case.key)
        everyone = cases_mod.contenders_for(case, device.type)
        names = [n for n in everyone if n not in exclude]
        res = run_case(case, device, dtype, names, budget_s, min_rounds, memory, seed)
        for n in everyone:
            if n in exclude:
                res.skipped[n] = exclude[n]
        results.append(res)
    return results


class _NoBar(list):
    def set_description(self, _text: str) -> None:
        pass


def _progress(cases: Sequence[object], progress: Optional[bool]):
    """A tqdm bar over ``cases`` on stderr (``None``: only when stderr is a
    terminal); no bar where tqdm is not installed."""
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar(cases)
    return tqdm(cases, disable=None if progress is None else not progress, unit="case", leave=False)

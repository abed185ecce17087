"""How time and memory are measured.

Time: the contenders of one case are timed in interleaved rounds (each round
runs every contender once, in a rotating order), so a burst of load from
elsewhere on the machine hits all of them alike instead of whichever happened
to be running. One sample is the mean of ``n`` back-to-back calls, with ``n``
chosen per contender so that a sample lasts about ``target_s`` (the clock's
resolution and Python overhead stay negligible for tiny cases); rounds go on
until the case's time budget is spent, with at least ``min_rounds``. The
reported time is the median sample; the spread is the interquartile range.
On CUDA the device is synchronised before and after each sample. The garbage
collector is off while timing, as in ``timeit``.

Memory: the peak of live bytes allocated during one call, counted from the
allocations and frees the call itself makes (inputs and parameters already
allocated are not counted; outputs, saved activations, gradients and
workspaces are).

* CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``,
  minus what was allocated before the call.
* CPU: the PyTorch profiler with ``profile_memory=True`` records every
  allocation and free of PyTorch's CPU allocator (c10) in order; the peak is
  the maximum of their running sum. Memory taken outside that allocator (a
  BLAS library's internal workspace, a ``std::vector`` inside a kernel) is
  not seen, for any contender. RSS is not used: the C allocator keeps freed
  pages, so RSS deltas depend on what ran before.
"""
import contextlib
import gc
import math
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch


@dataclass
class Timing:
    """Per-call seconds of one contender in one case."""

    samples: List[float] = field(default_factory=list)
    calls_per_sample: int = 1
    first_call_s: float = float("nan")

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def q1(self) -> float:
        return _quantile(self.samples, 0.25)

    @property
    def q3(self) -> float:
        return _quantile(self.samples, 0.75)

    @property
    def iqr_rel(self) -> float:
        """Interquartile range relative to the median."""
        return (self.q3 - self.q1) / self.median if self.median > 0 else float("nan")


def _quantile(xs: List[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default), no numpy needed."""
    s = sorted(xs)
    if not s:
        return float("nan")
    pos = (len(s) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def synchronizer(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


@contextlib.contextmanager
def _gc_off():
    was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def measure(
    steps: Dict[str, Callable[[], object]],
    sync: Callable[[], None] = lambda: None,
    budget_s: float = 2.0,
    min_rounds: int = 5,
    max_rounds: int = 1000,
    warmup_calls: int = 2,
    clock: Callable[[], float] = time.perf_counter,
) -> Dict[str, Timing]:
    """Times every step of ``steps`` in interleaved rounds (see module doc).

    Each step should already have run once (first-call costs such as
    compilation are not warm-up noise to average away; callers record them
    separately).
    """
    names = list(steps)
    result = {n: Timing() for n in names}
    target_s = min(0.05, max(1e-3, budget_s / (len(names) * 10)))
    with _gc_off():
        # Warm up, and size each contender's samples from its fastest call.
        for n in names:
            best = float("inf")
            for _ in range(max(1, warmup_calls)):
                sync()
                t0 = clock()
                steps[n]()
                sync()
                best = min(best, clock() - t0)
            result[n].calls_per_sample = max(1, int(target_s / max(best, 1e-9)))
        start = clock()
        for r in range(max_rounds):
            # Rotate who goes first, so no contender always follows the same one.
            for n in names[r % len(names):] + names[: r % len(names)]:
                k = result[n].calls_per_sample
                step = steps[n]
                sync()
                t0 = clock()
                for _ in range(k):
                    step()
                sync()
                result[n].samples.append((clock() - t0) / k)
            if r + 1 >= min_rounds and clock() - start >= budget_s:
                break
    return result


# ---------------------------------------------------------------------------
# Memory


def peak_memory(step: Callable[[], object], device: torch.device) -> Optional[int]:
    """Peak bytes allocated during one call of ``step`` (see module doc), or
    ``None`` where it cannot be measured."""
    if device.type == "cuda":
        return _peak_cuda(step, device)
    if device.type == "cpu":
        return _peak_cpu(step)
    return None


def _peak_cuda(step, device) -> int:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    out = step()
    torch.cuda.synchronize(device)
    del out
    return torch.cuda.max_memory_allocated(device) - before


def _peak_cpu(step) -> Optional[int]:
    # torch.autograd.profiler.profile: the same Kineto recorder as
    # torch.profiler.profile, without the latter's import of torch._inductor
    # (seconds) on first use.
    prof = torch.autograd.profiler.profile(profile_memory=True, use_cpu=True)
    with _quiet_stderr():
        prof.__enter__()
    try:
        out = step()
        del out
    finally:
        with _quiet_stderr():
            prof.__exit__(None, None, None)
    return peak_of_events(_memory_events(prof))


def _memory_events(prof) -> Optional[List[tuple]]:
    """(time, signed bytes) of every CPU allocation/free the profiler saw."""
    try:
        return [
            (e.start_ns(), e.nbytes())
            for e in prof.kineto_results.events()
            if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
        ]
    except (AttributeError, RuntimeError):  # profiler internals moved: say "n/a", not a wrong number
        return None


def peak_of_events(events: Optional[List[tuple]]) -> Optional[int]:
    """Maximum running sum of signed allocation sizes, in time order
    (starting from zero: memory live before the call is not counted)."""
    if events is None:
        return None
    live = peak = 0
    for _, nbytes in sorted(events, key=lambda e: e[0]):
        live += nbytes
        peak = max(peak, live)
    return peak


@contextlib.contextmanager
def _quiet_stderr():
    """Kineto prints start/stop lines on the C-level stderr; hide them (only
    around profiler start and stop, never around the measured call)."""
    try:
        fd = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(fd, 2)
    finally:
        os.close(fd)

"""Peak memory of one call of rnnattn's GRU / LSTM / RNN and torch's module with
the same weights, measured as the benchmark measures it (rnnattn/bench/timing.py:
the running sum of the PyTorch CPU allocator's events during the call), in MiB:

    python benchmarks/peak_memory.py gru 16 100 64 128          # fwd (no_grad) and fwd+bwd
    python benchmarks/peak_memory.py lstm 64 100 512 1024 --trace   # + every allocation over 1% of N*H
    python benchmarks/peak_memory.py lstm 16 100 64 128 --dtype bfloat16   # modules and data in bf16

The numbers of benchmarks/OPTIMISATIONS.md's memory entries for the GRU/LSTM come from this.
"""
import argparse

import torch

import rnnattn
from rnnattn.bench import timing

MODULES = {"rnn": (rnnattn.RNN, torch.nn.RNN), "gru": (rnnattn.GRU, torch.nn.GRU), "lstm": (rnnattn.LSTM, torch.nn.LSTM)}


def events(step):
    prof = torch.autograd.profiler.profile(profile_memory=True, use_cpu=True)
    with timing._quiet_stderr():
        prof.__enter__()
    try:
        del_me = step()
        del del_me
    finally:
        with timing._quiet_stderr():
            prof.__exit__(None, None, None)
    return sorted(timing._memory_events(prof))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("cell", choices=sorted(MODULES))
    p.add_argument("B", type=int)
    p.add_argument("T", type=int)
    p.add_argument("I", type=int)
    p.add_argument("H", type=int)
    p.add_argument("--trace", action="store_true", help="print the large allocations and frees in order")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16", "float16"])
    a = p.parse_args()
    dtype = getattr(torch, a.dtype)
    torch.manual_seed(0)
    ours_cls, theirs_cls = MODULES[a.cell]
    ours = ours_cls(a.I, a.H)
    theirs = theirs_cls(a.I, a.H)
    ours.to(dtype)
    theirs.to(dtype)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(a.T, a.B, a.I, dtype=dtype)
    g = torch.randn(a.T, a.B, a.H, dtype=dtype)
    unit = a.T * a.B * a.H * dtype.itemsize / 2**20
    for mode in ("fwd", "fwd+bwd"):
        for name, m in (("rnnattn", ours), ("torch", theirs)):
            xin = x.clone().requires_grad_(mode == "fwd+bwd")

            def step(m=m, xin=xin, mode=mode):
                for q in [xin, *m.parameters()]:
                    q.grad = None
                if mode == "fwd":
                    with torch.no_grad():
                        return m(xin)
                out, _ = m(xin)
                out.backward(g)

            step()  # one-off allocations (thread pools, caches) before the measured call
            ev = events(step)
            print(f"{a.cell} {mode:8s} {name:8s} peak {timing.peak_of_events(ev) / 2**20:9.4f} MiB"
                  f"   (N*H values = {unit:.4f} MiB)")
            if a.trace:
                live = 0
                for _, n in ev:
                    live += n
                    if abs(n) / 2**20 > 0.01 * unit:
                        print(f"    {n / 2**20:+10.4f} -> {live / 2**20:10.4f}")


if __name__ == "__main__":
    main()

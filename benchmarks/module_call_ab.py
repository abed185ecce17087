"""The sequence modules' C++ eager call (csrc/module_call.cpp) against their
full Python path, in one build: two identical modules, one with the C++
call switched off, timed in interleaved blocks (so background load hits
both alike) at B=1, I=32, H=64, T=1 and T=100, no_grad and fwd+bwd.
Prints the median per-call time of each, in microseconds.

    python benchmarks/module_call_ab.py [--threads N]
"""
import argparse
import statistics
import time

import torch

import rnnattn


def interleaved(fs, block, rounds):
    for f in fs.values():
        for _ in range(block):
            f()
    times = {k: [] for k in fs}
    for _ in range(rounds):
        for k, f in fs.items():
            t0 = time.perf_counter()
            for _ in range(block):
                f()
            times[k].append((time.perf_counter() - t0) / block * 1e6)
    return {k: statistics.median(v) for k, v in times.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for grad in (False, True):
        for name in ("RNN", "GRU", "LSTM"):
            for T in (1, 100):
                torch.manual_seed(0)
                eager = getattr(rnnattn, name)(32, 64).train(grad)
                full = getattr(rnnattn, name)(32, 64).train(grad)
                full._eager_call = lambda *a: None  # forward then takes its full path
                x = torch.randn(T, 1, 32, requires_grad=grad)

                def call(m):
                    def f():
                        with torch.set_grad_enabled(grad):
                            out = m(x)[0]
                            if grad:
                                out.sum().backward()

                    return f

                r = interleaved({"full": call(full), "eager": call(eager)}, 50 if grad else 200, 30)
                mode = "fwd+bwd" if grad else "no_grad"
                print(f"{name:4s} T={T:<3d} {mode:7s} full path {r['full']:7.1f} us   eager call {r['eager']:7.1f} us")


if __name__ == "__main__":
    main()

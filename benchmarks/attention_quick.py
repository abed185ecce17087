"""Quick speed check of the fused attention-pooling op against the eager PyTorch
composition (matmul + masked softmax + weighted sum), forward and forward+backward.

    python benchmarks/attention_quick.py [--device cpu|cuda] [--threads N] [--repeats R]

Prints the median time of R runs per case (after warm-up) and the speed-up.
Every sequence is full length (lengths = T), so the fused op skips no work
the eager one does. The backward takes the grad of the context only (the
usual case: the weights are for inspection) and computes grads of H and w.
"""
import argparse
import statistics
import time

import torch

import rnnattn  # noqa: F401
from rnnattn import attention_ops

SHAPES = [(64, 128, 256), (32, 512, 1024), (256, 2048, 256)]


def eager(x, w, lengths):
    T = x.shape[1]
    valid = torch.arange(T, device=x.device) < lengths.to(x.device).unsqueeze(1)
    e = (x @ w.T).squeeze(-1)  # (B, T)
    e = e.masked_fill(~valid, float("-inf"))
    a = torch.softmax(e, dim=1)
    c = torch.bmm(a.unsqueeze(1), x).squeeze(1)  # (B, D)
    return c, a


def fused(x, w, lengths):
    c, a = attention_ops.attention_pool(x, w, None, lengths, None, 0)
    return c.squeeze(1).squeeze(1), a.squeeze(1)


def timeit(fn, repeats, sync):
    for _ in range(3):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    print(f"device={dev} dtype={dtype} threads={torch.get_num_threads()} torch={torch.__version__}")
    print(f"{'(B, T, D)':>18} {'pass':>8} {'eager ms':>10} {'fused ms':>10} {'speed-up':>9}")
    for B, T, D in SHAPES:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(B, T, D, generator=gen).to(dev, dtype).requires_grad_()
        w = (torch.randn(1, D, generator=gen) / D**0.5).to(dev, dtype).requires_grad_()
        lengths = torch.full((B,), T, dtype=torch.long)
        c1, a1 = eager(x, w, lengths)
        c2, a2 = fused(x, w, lengths)
        torch.testing.assert_close(c1, c2, rtol=1e-3, atol=1e-4)  # same thing is measured
        gc = torch.randn_like(c1)
        row = []
        for name, f in (("eager", eager), ("fused", fused)):
            with torch.no_grad():
                t_fwd = timeit(lambda: f(x, w, lengths), args.repeats, sync)

            def step():
                c, _ = f(x, w, lengths)
                torch.autograd.grad(c, (x, w), gc)

            row.append((t_fwd, timeit(step, args.repeats, sync)))
        (ef, eb), (ff, fb) = row
        shape = f"({B}, {T}, {D})"
        print(f"{shape:>18} {'fwd':>8} {ef * 1e3:10.3f} {ff * 1e3:10.3f} {ef / ff:8.2f}x")
        print(f"{'':>18} {'fwd+bwd':>8} {eb * 1e3:10.3f} {fb * 1e3:10.3f} {eb / fb:8.2f}x")


if __name__ == "__main__":
    main()

"""Runs every CUDA kernel of rnnattn once or twice on small shapes, forward and
backward, for compute-sanitizer (memcheck, racecheck, synccheck) to watch;
.ci/gpu_check.sh runs it under each tool. Checks values loosely against the
CPU (the CUDA tests check them properly); prints one line per case.

    python .ci/gpu_kernels_small.py

Exit status 1 if a case fails; a case the device cannot run (the persistent
kernel refused) is reported as skipped.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import rnnattn  # noqa: E402
from rnnattn import attention_ops as A  # noqa: E402
from rnnattn import ops  # noqa: E402

ENV = "RNNATTN_RNN_CUDA_PATH"


def close(a, b, tol):
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return (a - b).abs().max().item() <= tol * max(1.0, b.abs().max().item())


def attention(dtype, scores_op):
    """Linear or given-score pooling: lengths 0/1, a mask with holes, ragged chunks, 3 heads."""
    g = torch.Generator().manual_seed(0)
    B, T, D, k, chunk = 4, 37, 45, 3, 16
    x = torch.randn(B, T, D, generator=g, dtype=torch.float64)
    w = torch.randn(k, D, generator=g, dtype=torch.float64) / D**0.5
    s = torch.randn(B, T, k, generator=g, dtype=torch.float64)
    lengths = torch.tensor([37, 0, 1, 20])
    mask = torch.rand(B, T, generator=g) > 0.3
    outs = {}
    for dev in ("cpu", "cuda"):
        dt = dtype if dev == "cuda" else torch.float64
        xd = x.to(dev, dt).requires_grad_()
        second = (s if scores_op else w).to(dev, dt).requires_grad_()
        fn = A.attention_pool_scores if scores_op else (lambda x_, w_, *a: A.attention_pool(x_, w_, None, *a))
        ctx, wts = fn(xd, second, lengths, mask.to(dev), chunk)
        gc = torch.ones_like(ctx)
        gw = torch.linspace(-1, 1, wts.numel(), device=dev, dtype=dt).reshape(wts.shape)
        grads = torch.autograd.grad((ctx, wts), (xd, second), (gc, gw))
        outs[dev] = [ctx, wts, *grads]
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    return all(close(a, b, tol) for a, b in zip(outs["cuda"], outs["cpu"]))


def rnn(dtype, path, packed):
    """One RNN layer forward + backward with the recurrence path forced."""
    g = torch.Generator().manual_seed(1)
    T, B, I, H = 6, 5, 7, 36
    args = [torch.randn(H, I, generator=g, dtype=torch.float64) / I**0.5,
            torch.randn(H, H, generator=g, dtype=torch.float64) * 0.9 / H**0.5,
            torch.randn(H, generator=g, dtype=torch.float64) * 0.1,
            torch.randn(H, generator=g, dtype=torch.float64) * 0.1]
    hx = torch.randn(B, H, generator=g, dtype=torch.float64) * 0.5
    if packed:
        seqs = [torch.randn(n, I, generator=g, dtype=torch.float64) for n in (6, 6, 4, 2, 1)]
        p = torch.nn.utils.rnn.pack_sequence(seqs)
        x, bs = p.data, p.batch_sizes
    else:
        x, bs = torch.randn(T, B, I, generator=g, dtype=torch.float64), None
    outs = {}
    old = os.environ.get(ENV)
    try:
        for dev in ("cpu", "cuda"):
            dt = dtype if dev == "cuda" else torch.float64
            if dev == "cuda":
                os.environ[ENV] = path
            leaves = [t.to(dev, dt).requires_grad_() for t in [x, hx] + args]
            out, hn = ops.rnn_layer(leaves[0], bs, leaves[1], *leaves[2:], False, False)
            grads = torch.autograd.grad((out, hn), leaves, (torch.ones_like(out), torch.ones_like(hn)))
            outs[dev] = [out, hn, *grads]
    finally:
        if old is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = old
    tol = {torch.float64: 1e-10, torch.float32: 1e-4}.get(dtype, 5e-2)
    return all(close(a, b, tol) for a, b in zip(outs["cuda"], outs["cpu"]))


def main():
    if not torch.cuda.is_available():
        sys.exit("gpu_kernels_small.py: no CUDA device visible to torch")
    if not rnnattn._load.WITH_CUDA:
        sys.exit("gpu_kernels_small.py: rnnattn was built without its CUDA kernels (FORCE_CUDA=1)")
    cases = []
    for dtype in (torch.float32, torch.bfloat16):
        for scores_op in (False, True):
            name = f"attention_pool{'_scores' if scores_op else ''} fwd+bwd {str(dtype)[6:]}"
            cases.append((name, lambda d=dtype, s=scores_op: attention(d, s)))
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        for path in ("persistent", "fallback"):
            if dtype == torch.float64 and path == "persistent":
                continue
            for packed in (False, True):
                name = f"rnn {path} {'packed' if packed else 'padded'} fwd+bwd {str(dtype)[6:]}"
                cases.append((name, lambda d=dtype, p=path, k=packed: rnn(d, p, k)))
    failed = 0
    for name, fn in cases:
        try:
            ok = fn()
        except RuntimeError as err:
            if "RNNATTN_RNN_CUDA_PATH=persistent" in str(err):
                print(f"skipped {name}: {str(err).splitlines()[0]}", flush=True)
                continue
            raise
        torch.cuda.synchronize()
        print(f"{'ok  ' if ok else 'FAIL'} {name}", flush=True)
        failed += not ok
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

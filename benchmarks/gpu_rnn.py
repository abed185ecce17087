"""GPU timing of rnnattn.RNN against torch.nn.RNN (cuDNN).

Grid (defaults): batch B in {1, 16, 64}, hidden H in {128, 512, 1024},
T = 100 steps, input size I = H, one tanh layer; forward under no_grad
("fwd") and forward + backward to the input and all weights ("fwd+bwd");
float32 and bfloat16.

rnnattn is timed with its path rule ("auto") and, to calibrate that rule
(kPersistentMaxWork in csrc/cuda/rnn.cu), with each recurrence path forced
through RNNATTN_RNN_CUDA_PATH ("persistent" is n/a where the kernel cannot
run). Each number is the median over --repeats runs of the wall time between
two CUDA events around one call (after --warmup calls), with the queue
drained before each run, so launch overhead counts, as it does for a user.
TF32 settings are torch's defaults unless --no-tf32 (they are recorded).

    python benchmarks/gpu_rnn.py --out gpu_rnn.json

prints a markdown table and writes every number, plus the machine, to --out.
"""
import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time

import torch
from torch import nn

try:
    import rnnattn
except ImportError:  # run from a source checkout with the extension built in place
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import rnnattn

ENV = "RNNATTN_RNN_CUDA_PATH"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--hidden", type=int, nargs="+", default=[128, 512, 1024])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=sorted(DTYPES))
    p.add_argument("--modes", nargs="+", default=["fwd", "fwd+bwd"], choices=["fwd", "fwd+bwd"])
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--no-tf32", action="store_true", help="disable TF32 in cuBLAS and cuDNN")
    return p.parse_args(argv)


def median_ms(fn, warmup, repeats):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def make_step(model, x, h0, go, mode):
    params = list(model.parameters())
    if mode == "fwd":

        def step():
            with torch.no_grad():
                return model(x, h0)

    else:
        xg = x.detach().requires_grad_()

        def step():
            out, _ = model(xg, h0)
            return torch.autograd.grad(out, [xg, *params], go)

    return step


def with_path(path, fn):
    """Runs fn with RNNATTN_RNN_CUDA_PATH=path (None: unset)."""
    old = os.environ.get(ENV)
    if path is None:
        os.environ.pop(ENV, None)
    else:
        os.environ[ENV] = path
    try:
        return fn()
    finally:
        if old is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = old


def bench_config(dtype, B, H, T, modes, warmup, repeats):
    torch.manual_seed(0)
    ref = nn.RNN(H, H).cuda().to(dtype)
    ours = rnnattn.convert(copy.deepcopy(ref))
    x = torch.randn(T, B, H, device="cuda", dtype=dtype)
    h0 = torch.zeros(1, B, H, device="cuda", dtype=dtype)
    go = torch.randn(T, B, H, device="cuda", dtype=dtype)
    rows = []

    # Which path "auto" takes: both paths are deterministic, so auto's output
    # is bitwise the persistent kernel's exactly when the rule picked it.
    with torch.no_grad():
        auto_out = with_path("auto", lambda: ours(x, h0)[0])
        try:
            pers_out = with_path("persistent", lambda: ours(x, h0)[0])
            auto_path = "persistent" if torch.equal(auto_out, pers_out) else "fallback"
        except RuntimeError:
            auto_path = "fallback"
        try:
            ref_out = ref(x, h0)[0]
            max_diff = (auto_out.float() - ref_out.float()).abs().max().item()
        except RuntimeError:
            max_diff = None

    for mode in modes:
        row = dict(dtype=str(dtype).replace("torch.", ""), B=B, H=H, T=T, I=H, mode=mode, auto_path=auto_path,
                   max_abs_diff_vs_cudnn=max_diff)
        try:
            row["cudnn_ms"] = median_ms(make_step(ref, x, h0, go, mode), warmup, repeats)
        except RuntimeError as e:  # e.g. a dtype cuDNN's RNN does not take
            row["cudnn_ms"], row["cudnn_error"] = None, str(e).splitlines()[0]
        for key, path in [("rnnattn_ms", "auto"), ("persistent_ms", "persistent"), ("fallback_ms", "fallback")]:
            try:
                row[key] = with_path(path, lambda: median_ms(make_step(ours, x, h0, go, mode), warmup, repeats))
            except RuntimeError as e:
                row[key] = None
                row[key.replace("_ms", "_error")] = str(e).splitlines()[0]
        if row["cudnn_ms"] and row["rnnattn_ms"]:
            row["speedup_vs_cudnn"] = row["cudnn_ms"] / row["rnnattn_ms"]
        rows.append(row)
    return rows


def fmt(v, spec=".3f"):
    return "n/a" if v is None else format(v, spec)


def markdown(rows):
    lines = [
        "| dtype | B | H | mode | cuDNN ms | rnnattn ms (path) | persistent ms | fallback ms | speedup |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['dtype']} | {r['B']} | {r['H']} | {r['mode']} | {fmt(r['cudnn_ms'])} | "
            f"{fmt(r['rnnattn_ms'])} ({r['auto_path']}) | {fmt(r['persistent_ms'])} | {fmt(r['fallback_ms'])} | "
            f"{fmt(r.get('speedup_vs_cudnn'), '.2f')}x |"
        )
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("gpu_rnn.py: no CUDA device")
    if not rnnattn._load.WITH_CUDA:
        sys.exit("gpu_rnn.py: rnnattn was built without its CUDA kernels (build with FORCE_CUDA=1)")
    if args.no_tf32:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    prop = torch.cuda.get_device_properties(0)
    meta = dict(
        device=prop.name,
        sm_count=prop.multi_processor_count,
        torch=torch.__version__,
        cuda=torch.version.cuda,
        cudnn=torch.backends.cudnn.version(),
        python=platform.python_version(),
        tf32=dict(matmul=torch.backends.cuda.matmul.allow_tf32, cudnn=torch.backends.cudnn.allow_tf32),
        warmup=args.warmup,
        repeats=args.repeats,
        timing="median of CUDA-event wall time per call, queue drained before each call",
        date=time.strftime("%Y-%m-%d %H:%M:%S"),
    )
    rows = []
    for name in args.dtypes:
        for H in args.hidden:
            for B in args.batch:
                rows += bench_config(DTYPES[name], B, H, args.steps, args.modes, args.warmup, args.repeats)
                print(f"done {name} B={B} H={H}", file=sys.stderr, flush=True)
    print(f"rnnattn.RNN vs nn.RNN (cuDNN) on {meta['device']}, T={args.steps}, I=H, 1 layer, tanh; "
          f"torch {meta['torch']}, cuDNN {meta['cudnn']}, TF32 {meta['tf32']}\n")
    print(markdown(rows))
    with open(args.out, "w") as f:
        json.dump(dict(meta=meta, results=rows), f, indent=2)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()

"""Command line: ``python -m rnnattn.bench [--quick | --full | --gpu] [--device cuda] ...``."""
import argparse
import re
import sys
from typing import List, Optional

import torch

from . import cases, latency, machine, report, runner
from .contenders import has_attention_pooling

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m rnnattn.bench",
        description="Times rnnattn's fused RNN, GRU, LSTM and attention pooling against torch.nn.RNN/GRU/LSTM "
        "(cuDNN on GPU), "
        "the plain-PyTorch reference, the eager/compiled/SDPA attention pooling; prints a table of "
        "medians, speedups (baseline time / rnnattn time), peak memory and the README's speed floors.",
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", dest="grid", const="quick", help="a few seconds")
    size.add_argument("--full", action="store_const", dest="grid", const="full",
                      help="the large grid (with --device cuda: the DeepBench RNN training sizes too)")
    size.add_argument("--gpu", action="store_const", dest="grid", const="gpu",
                      help="the GPU grid: RNN vs cuDNN at T=100, I=H, B in {1,16,64}, H in {128,512,1024} "
                      "(on CUDA also each recurrence path forced), pooling at two shapes; make gpu-check runs it "
                      "with --device cuda in float32 and bfloat16")
    p.set_defaults(grid="default")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    p.add_argument("--dtype", default="float32", choices=sorted(_DTYPES))
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--only", choices=["rnn", "gru", "lstm", "pool", "latency"], help="run one section")
    p.add_argument("--match", default=None, metavar="REGEX",
                   help="run only cases whose key (see --list) matches this regular expression, "
                   "e.g. 'H(1760|2048|2560)' for the DeepBench sizes")
    p.add_argument("--exclude", action="append", default=[], metavar="CONTENDER",
                   help="leave a baseline out (repeatable): nn.RNN, nn.GRU, nn.LSTM, reference, eager, compile, "
                   "sdpa, torch (the latency section's torch modules)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="time torch.compile of the eager pooling (default: yes, but not with --quick: "
                   "compiling takes tens of seconds per shape)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds of timing per case (default: 0.3 with --quick, else 2)")
    p.add_argument("--min-rounds", type=int, default=5, help="interleaved rounds per case at least (default 5)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--no-tf32", action="store_true",
                   help="CUDA: no TF32 in cuBLAS and cuDNN (default: torch's settings; recorded either way)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--csv", metavar="FILE", help="also write one CSV row per case and contender")
    p.add_argument("--plot", metavar="FILE.png", help="also draw speedup bars (needs matplotlib)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="tqdm progress bar on stderr (default: when stderr is a terminal)")
    p.add_argument("--list", action="store_true", help="print the cases of the chosen grid and exit")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = parser().parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available() and not args.list:
        print("rnnattn.bench: --device cuda given but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    dtype = _DTYPES[args.dtype]
    if "rnnattn" in args.exclude:
        print("rnnattn.bench: rnnattn is what is being measured; it cannot be excluded", file=sys.stderr)
        return 2
    known = set(cases.RNN_CONTENDERS + cases.RNN_CUDA_PATHS + cases.GRU_CONTENDERS + cases.LSTM_CONTENDERS
                + cases.POOL_CONTENDERS + latency.CONTENDERS)
    unknown = [n for n in args.exclude if n not in known]
    if unknown:
        print(f"rnnattn.bench: --exclude {unknown[0]!r}: not a contender; choose from "
              f"{', '.join(sorted(known - {'rnnattn'}))}", file=sys.stderr)
        return 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.no_tf32:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    grid = cases.grid(args.grid, device.type)
    if args.only:
        grid = [c for c in grid if c.section == args.only]
    if args.match:
        try:
            pattern = re.compile(args.match)
        except re.error as err:
            print(f"rnnattn.bench: --match {args.match!r} is not a regular expression: {err}", file=sys.stderr)
            return 2
        grid = [c for c in grid if pattern.search(c.key)]
    if args.list:
        for c in grid:
            print(c.key + ("   floors: " + "; ".join(f.describe() for f in c.floors) if c.floors else ""))
        return 0
    if not grid:
        print("rnnattn.bench: no case left after --only/--match", file=sys.stderr)
        return 2
    if any(c.section == "pool" for c in grid) and not has_attention_pooling():
        print("rnnattn.bench: attention pooling skipped: this rnnattn has no AttentionPooling", file=sys.stderr)
    budget = args.budget if args.budget is not None else (0.3 if args.grid == "quick" else 2.0)

    meta = machine.describe(device, dtype)
    meta.update(grid=args.grid, budget_s=budget, min_rounds=args.min_rounds)
    print(f"rnnattn.bench: {len(grid)} cases on {device} (torch threads: {meta['torch_threads']})...", file=sys.stderr)
    exclude = {n: "left out on the command line (--exclude)" for n in args.exclude}
    if args.compile is False or (args.compile is None and args.grid == "quick"):
        why = "in --quick (compiling takes tens of seconds per shape)" if args.compile is None else "(--no-compile)"
        exclude["compile"] = f"not run {why}"
    results = runner.run(
        grid, device, dtype, budget, args.min_rounds, memory=not args.no_memory,
        exclude=exclude, progress=args.progress,
    )
    meta["load_avg_end"] = machine.load_average()
    meta["busy_note"] = machine.busy_note(meta)

    sys.stdout.write(report.table(results, meta))
    if args.json:
        report.write_json(args.json, results, meta)
    if args.csv:
        report.write_csv(args.csv, results)
    if args.plot:
        report.write_plot(args.plot, results, meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())

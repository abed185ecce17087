"""How far rnnattn's and torch's half-precision modules are from float32, output and every grad.

    python benchmarks/half_grads_check.py lstm 64 100 512 1024 [--dtype bfloat16]

Both modules get the same weights and input, converted to the dtype; the truth is torch's module in
float32 on the same (converted) values. Prints, for each output and grad, max |x - truth| / max(1,
max |truth|) for rnnattn and for torch. The benchmark's "(!) contenders disagree" note says only that
two contenders differ; this says which one is off. Seen with it on a 2-core Intel Xeon with AMX
(torch 2.13.0+cpu): nn.LSTM in bfloat16 at H = 1024 returns dx 0.8-0.9 away from float32 (its
weight grads 0.2), at H = 512 0.004, as rnnattn at both.
"""

import argparse
import copy

import torch

import rnnattn


def run(module, x, dtype, grad_out):
    module = copy.deepcopy(module).to(dtype)
    xx = x.to(dtype).detach().requires_grad_()
    out, state = module(xx)
    state = state if isinstance(state, tuple) else (state,)
    torch.autograd.backward([out], [grad_out.to(dtype)])
    values = {"output": out, "h_n": state[0]}
    if len(state) > 1:
        values["c_n"] = state[1]
    values["d input"] = xx.grad
    values.update({f"d {n}": p.grad for n, p in module.named_parameters()})
    return {k: v.detach().double() for k, v in values.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cell", choices=["rnn", "gru", "lstm"])
    ap.add_argument("B", type=int)
    ap.add_argument("T", type=int)
    ap.add_argument("I", type=int)
    ap.add_argument("H", type=int)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dtype = getattr(torch, a.dtype)
    name = {"rnn": "RNN", "gru": "GRU", "lstm": "LSTM"}[a.cell]
    theirs = getattr(torch.nn, name)(a.I, a.H).to(dtype).float()  # weights exact in the dtype
    ours = getattr(rnnattn, name)(a.I, a.H)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(a.T, a.B, a.I).to(dtype).float()
    grad_out = torch.randn(a.T, a.B, a.H).to(dtype).float()
    truth = run(theirs, x, torch.float32, grad_out)
    got = {"rnnattn": run(ours, x, dtype, grad_out), "torch": run(theirs, x, dtype, grad_out)}
    print(f"{name} (B, T, I, H) = ({a.B}, {a.T}, {a.I}, {a.H}), {a.dtype}, {a.threads} threads, "
          f"torch {torch.__version__}, rnnattn CPU path {rnnattn._C.cpu_isa()}")
    print(f"{'value':22s} {'rnnattn':>10s} {'torch':>10s}   (max |x - float32| / max(1, max |float32|))")
    for k, t in truth.items():
        scale = max(1.0, t.abs().max().item())
        errs = [(got[c][k] - t).abs().max().item() / scale for c in ("rnnattn", "torch")]
        print(f"{k:22s} {errs[0]:10.3g} {errs[1]:10.3g}")


if __name__ == "__main__":
    main()

"""Per-call cost of the streaming calls (issue 11 / 14's before-and-after
numbers): each module at T=1, B=1 (I=32, H=64) and each cell at B=1, under
no_grad and forward+backward, 1 thread; the minimum over 7 rounds of 2000
(500 with backward) calls, in microseconds, printed as JSON.

Compare two checkouts by alternating processes, e.g.
    for i in 1 2 3 4; do for t in old new; do PYTHONPATH=$t python benchmarks/per_call.py; done; done
(run from outside both trees so that PYTHONPATH decides which rnnattn loads).
"""
import json, sys, time, torch, rnnattn
torch.set_num_threads(1)
torch.manual_seed(0)
def t(f, n=2000, rounds=7):
    for _ in range(100): f()
    best = []
    for _ in range(rounds):
        s = time.perf_counter()
        for _ in range(n): f()
        best.append((time.perf_counter() - s) / n)
    best.sort()
    return best[0] * 1e6  # min over rounds: the call cost without interference
res = {}
for name in ["RNN", "GRU", "LSTM"]:
    m = getattr(rnnattn, name)(32, 64)
    x = torch.randn(1, 1, 32)
    with torch.no_grad():
        res[f"{name} T=1 no_grad"] = t(lambda: m(x))
    xg = x.clone().requires_grad_()
    def fb():
        out = m(xg)[0]
        out.sum().backward()
    res[f"{name} T=1 fwd+bwd"] = t(fb, n=500)
for name in ["RNNCell", "GRUCell", "LSTMCell"]:
    m = getattr(rnnattn, name)(32, 64)
    x = torch.randn(1, 32)
    with torch.no_grad():
        res[f"{name} no_grad"] = t(lambda: m(x))
    xg = x.clone().requires_grad_()
    def fb():
        out = m(xg)
        (out[0] if isinstance(out, tuple) else out).sum().backward()
    res[f"{name} fwd+bwd"] = t(fb, n=500)
print(json.dumps(res))

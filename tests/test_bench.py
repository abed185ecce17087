"""The benchmark tool: its measurements, its floor bookkeeping, and the CLI
end to end on a tiny budget. (No timing asserts: only structure and logic.)"""
import csv
import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from conftest import CPU_ISAS

import rnnattn
from rnnattn.bench import cases, contenders, latency, report, runner, timing
from rnnattn.bench.__main__ import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------------------
# timing


def test_measure_interleaves_and_reports_per_call_medians():
    now = [0.0]
    calls = []

    def step(name, cost):
        def f():
            calls.append(name)
            now[0] += cost

        return f

    steps = {"a": step("a", 1.0), "b": step("b", 3.0), "c": step("c", 0.5)}
    t = timing.measure(steps, budget_s=0.0, min_rounds=4, warmup_calls=1, clock=lambda: now[0])
    assert [len(t[n].samples) for n in "abc"] == [4, 4, 4]
    assert t["a"].median == 1.0 and t["b"].median == 3.0 and t["c"].median == 0.5
    assert t["a"].iqr_rel == 0.0
    timed = calls[3:]  # after one warm-up call each
    # Round r starts with contender r mod 3.
    assert timed[:3] == ["a", "b", "c"] and timed[3:6] == ["b", "c", "a"] and timed[6:9] == ["c", "a", "b"]


def test_measure_batches_fast_calls_to_the_target_sample_length():
    now = [0.0]

    def fast():
        now[0] += 1e-5

    t = timing.measure({"f": fast}, budget_s=1.0, min_rounds=2, warmup_calls=1, clock=lambda: now[0])
    # target = min(0.05, max(1e-3, 1.0 / 10)) = 0.05 s -> 5000 calls of 10 us per sample
    assert t["f"].calls_per_sample == pytest.approx(5000, rel=1e-3)
    assert t["f"].median == pytest.approx(1e-5)


def test_quantiles_match_numpy_linear():
    np = pytest.importorskip("numpy")
    xs = [5.0, 1.0, 4.0, 2.0, 10.0, 3.0]
    assert timing._quantile(xs, 0.25) == pytest.approx(np.quantile(xs, 0.25))
    assert timing._quantile(xs, 0.75) == pytest.approx(np.quantile(xs, 0.75))


def test_peak_of_events_is_the_max_running_sum_in_time_order():
    events = [(3, -100), (1, 100), (2, 50), (4, 30), (5, -80)]
    assert timing.peak_of_events(events) == 150
    assert timing.peak_of_events([]) == 0
    assert timing.peak_of_events(None) is None


def test_cpu_peak_memory_counts_exactly_the_calls_allocations():
    keep = torch.empty(1 << 20)  # allocated before the call: not counted

    def f():
        a = torch.empty(1 << 20)  # 4 MiB
        b = torch.empty(1 << 19)  # 2 MiB -> 6 MiB live
        del a
        c = torch.empty(1 << 18)  # 1 MiB, 3 MiB live
        return b, c

    assert timing.peak_memory(f, torch.device("cpu")) == 6 * 2**20
    del keep


def test_cpu_peak_memory_sees_the_backward_pass():
    x = torch.randn(256, 1024, requires_grad=True)  # 1 MiB

    def f():
        x.grad = None
        x.tanh().sum().backward()  # tanh output (saved) + its grad + x.grad

    assert timing.peak_memory(f, torch.device("cpu")) >= 2 * 2**20


# ---------------------------------------------------------------------------
# grids and floors


def test_default_grid_holds_every_floor_case_and_floors_are_as_promised():
    default = {c.key: c for c in cases.default()}
    for key in cases.required_floor_keys():
        assert key in default, key
    got = {k: [f.describe() for f in c.floors] for k, c in default.items() if c.floors}
    mem = "peak memory <= nn.RNN"
    want = {
        "rnn/L1/B1-T100-I32-H64/fwd+bwd": ["speedup vs nn.RNN >= 3x", mem],
        "rnn/L1/B16-T100-I64-H128/fwd+bwd": ["speedup vs nn.RNN >= 3x", mem],
        "rnn/L1/B64-T100-I512-H1024/fwd+bwd": ["speedup vs nn.RNN >= 1.2x", mem],
        "rnn/L1/B1-T100-I32-H64/fwd": ["speedup vs nn.RNN >= 2x", mem],
        "rnn/L1/B16-T100-I64-H128/fwd": ["speedup vs nn.RNN >= 2x", mem],
        "rnn/L1/B64-T100-I512-H1024/fwd": [mem],
        "pool/B64-T128-D256/fwd+bwd": ["speedup vs eager >= 2x"],
    }
    for cell, gemm, fwd_bwd in [("gru", "nn.GRU", (5, 2.5, 1.2)), ("lstm", "nn.LSTM", (2, 1.2, 1.2))]:
        mem_cell = f"peak memory <= {gemm}"
        for shape, floor in zip(["B1-T100-I32-H64", "B16-T100-I64-H128", "B64-T100-I512-H1024"], fwd_bwd):
            want[f"{cell}/L1/{shape}/fwd+bwd"] = [f"speedup vs {gemm} >= {floor:g}x", mem_cell]
            want[f"{cell}/L1/{shape}/fwd"] = [f"speedup vs {gemm} >= 1x", mem_cell]
    assert got == want
    assert len(set(default)) == len(default)


def test_full_grid_has_deepbench_sizes_on_cuda_only():
    deep = [f"rnn/L1/B{B}-T50-I{H}-H{H}/fwd+bwd" for H in cases.DEEPBENCH_H for B in cases.DEEPBENCH_B]
    cuda = {c.key for c in cases.full("cuda")}
    cpu = {c.key for c in cases.full("cpu")}
    assert all(k in cuda for k in deep)
    assert not any(k in cpu for k in deep)
    assert {c.key for c in cases.default()} <= cpu


def test_gpu_grid_is_rnn_vs_cudnn_on_the_b_h_grid_and_two_pooling_shapes():
    keys = [c.key for c in cases.gpu()]
    rnn = [f"rnn/L1/B{B}-T100-I{H}-H{H}/{m}" for H in (128, 512, 1024) for B in (1, 16, 64) for m in cases.MODES]
    pool = [f"pool/B{B}-T{T}-D{D}/{m}" for B, T, D in [(64, 128, 256), (32, 512, 1024)] for m in cases.MODES]
    assert keys == rnn + pool
    assert cases.grid("gpu", "cpu") == cases.gpu()


def test_forced_cuda_paths_are_contenders_on_cuda_only():
    rnn_case, pool_case = cases.RNNCase(2, 3, 4, 5, "fwd"), cases.PoolCase(2, 3, 4, "fwd")
    assert cases.contenders_for(rnn_case, "cuda") == cases.RNN_CONTENDERS + ("persistent", "fallback")
    assert cases.contenders_for(rnn_case, "cpu") == cases.RNN_CONTENDERS
    assert cases.contenders_for(pool_case, "cuda") == cases.POOL_CONTENDERS
    built = contenders.rnn_contenders(rnn_case, torch.device("cpu"), torch.float32, ["persistent", "fallback"])
    assert not built.contenders and built.skipped == {p: "needs rnnattn's CUDA kernels" for p in cases.RNN_CUDA_PATHS}


def test_with_path_sets_and_restores_the_variable(monkeypatch):
    monkeypatch.setenv(contenders.PATH_ENV, "auto")
    assert contenders.with_path("fallback", lambda: os.environ[contenders.PATH_ENV]) == "fallback"
    assert os.environ[contenders.PATH_ENV] == "auto"
    assert contenders.with_path(None, lambda: contenders.PATH_ENV in os.environ) is False
    monkeypatch.delenv(contenders.PATH_ENV)
    with pytest.raises(ZeroDivisionError):
        contenders.with_path("persistent", lambda: 1 / 0)
    assert contenders.PATH_ENV not in os.environ


def _timed(median):
    t = timing.Timing(samples=[median] * 3)
    return t


def _result(case, times, peaks):
    r = runner.CaseResult(case)
    for n, t in times.items():
        r.results[n] = runner.ContenderResult(_timed(t), peaks.get(n))
    return r


def test_floor_checks_mark_met_and_unmet():
    case = {c.key: c for c in cases.default()}["rnn/L1/B16-T100-I64-H128/fwd+bwd"]
    fast = _result(case, {"rnnattn": 1.0, "nn.RNN": 3.5, "reference": 9.0}, {"rnnattn": 100, "nn.RNN": 100})
    slow = _result(case, {"rnnattn": 1.0, "nn.RNN": 2.9, "reference": 9.0}, {"rnnattn": 101, "nn.RNN": 100})
    assert fast.speedup("nn.RNN") == 3.5 and fast.speedup("reference") == 9.0
    assert [f["met"] for f in fast.floor_checks()] == [True, True]
    assert [f["met"] for f in slow.floor_checks()] == [False, False]
    nomem = _result(case, {"rnnattn": 1.0, "nn.RNN": 3.5}, {})
    assert [f["met"] for f in nomem.floor_checks()] == [True, None]

    meta = {
        "grid": "default", "device": "cpu", "dtype": "float32", "cpu": "x", "cpus_usable": 2, "torch": "t",
        "torch_threads": 2, "rnnattn": "v", "python": "3", "date_utc": "now",
    }
    text = report.table([fast, slow], meta)
    assert "3.50x" in text and "2.90x" in text and "9.00x" in text
    assert "Floors: 2 of 4 met" in text and text.count("UNMET") >= 2
    summary = report.floor_summary([fast, slow])
    assert summary["met"] == 2 and len(summary["unmet"]) == 2


def test_table_shows_forced_paths_and_which_path_the_rule_chose():
    small, large = [c for c in cases.gpu() if c.key in ("rnn/L1/B1-T100-I128-H128/fwd", "rnn/L1/B64-T100-I1024-H1024/fwd")]
    times = {"rnnattn": 1.0, "nn.RNN": 2.0, "persistent": 1.0, "fallback": 3.0}
    a, b = _result(small, times, {}), _result(large, dict(times, persistent=4.0, fallback=1.0), {})
    a.results["rnnattn"].note = "path rule chose persistent"
    b.results["rnnattn"].note = "path rule chose fallback"
    meta = {
        "grid": "gpu", "device": "cuda", "dtype": "float32", "cpu": "x", "cpus_usable": 16, "torch": "t",
        "torch_threads": 16, "rnnattn": "v", "python": "3", "date_utc": "now", "gpu": "H100", "cuda": "13.0",
        "cudnn": 9, "tf32": {"matmul": False, "cudnn": True}, "rnnattn_rnn_cuda_path": "auto (unset)",
    }
    text = report.table([a, b], meta)
    assert "vs persistent" in text and "vs fallback" in text and "4.00x" in text
    assert f"rnnattn: path rule chose persistent ({small.key})" in text
    assert f"rnnattn: path rule chose fallback ({large.key})" in text


# ---------------------------------------------------------------------------
# contenders: every contender of a case computes the same thing


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("mode", cases.MODES)
@pytest.mark.parametrize(
    "case_args", [dict(B=3, T=5, I=4, H=6), dict(B=4, T=7, I=3, H=5, layers=2, bidirectional=True, packed=True)]
)
def test_rnn_contenders_agree(case_args, mode, cell):
    case = cases.RNNCase(mode=mode, cell=cell, **case_args)
    built = contenders.rnn_contenders(case, torch.device("cpu"), torch.float64, case.contenders)
    vals = {n: c.check() for n, c in built.contenders.items()}
    assert set(vals) == set(case.contenders)
    outputs = 3 if cell == "lstm" else 2
    n_expected = outputs if mode == "fwd" else outputs + 1 + 4 * case.layers * (2 if case.bidirectional else 1)
    assert vals.pop("GEMM floor") is None  # a yardstick: nothing to compare
    for n, v in vals.items():
        assert len(v) == n_expected, n
        assert runner._rel_diff(vals["rnnattn"], v) < 1e-10, n


@pytest.mark.parametrize("mode", cases.MODES)
def test_gemm_floor_runs_the_cases_multiply_adds(mode):
    case = cases.RNNCase(B=3, T=5, I=4, H=6, mode=mode, cell="lstm", layers=2, bidirectional=True)
    floor = contenders.gemm_floor(case, 15, torch.device("cpu"), torch.float64)
    outs = floor.step()
    per = 2 if mode == "fwd" else 6  # X W_ih^T, H W_hh^T (+ dX, dW_ih, dH, dW_hh)
    assert len(outs) == 2 * 2 * per  # layers x directions
    G = 4 * 6
    assert [tuple(o.shape) for o in outs[:2]] == [(15, G), (15, G)]
    if mode == "fwd+bwd":
        assert [tuple(o.shape) for o in outs[2:6]] == [(15, 4), (G, 4), (15, 6), (G, 6)]
        assert tuple(outs[per * 2 + 2].shape) == (15, 12)  # layer 2's dX: input 2H wide


@pytest.mark.parametrize("form", ["cell", "T=1"])
@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("mode", cases.MODES)
def test_latency_contenders_agree(mode, cell, form):
    case = latency.LatencyCase(cell, form, mode, B=2, I=5, H=7)
    built = latency.build(case, torch.device("cpu"), torch.float64, case.contenders)
    vals = {n: c.check() for n, c in built.contenders.items()}
    assert set(vals) == {"rnnattn", "torch"}
    states = 2 if cell == "lstm" else 1
    params = 4  # w_ih, w_hh, b_ih, b_hh
    for n, v in vals.items():
        assert len(v) == (states if mode == "fwd" else states + 1 + params), n
    assert runner._rel_diff(vals["rnnattn"], vals["torch"]) < 1e-10


def test_latency_grid_and_floors_are_issue_14s():
    got = {c.key: [f.describe() for f in c.floors] for c in latency.grid()}
    assert len(got) == 12
    for cell in ("rnn", "gru", "lstm"):
        assert got[f"latency/{cell}-cell/B1-I32-H64/fwd"] == ["speedup vs torch >= 1.25x"]
        assert got[f"latency/{cell}-cell/B1-I32-H64/fwd+bwd"] == ["speedup vs torch >= 1x"]
        assert got[f"latency/{cell}-T=1/B1-I32-H64/fwd"] == ["speedup vs torch >= 1.25x"]
        assert got[f"latency/{cell}-T=1/B1-I32-H64/fwd+bwd"] == []
    assert all(c.section == "latency" for c in cases.grid("default")[-12:])


class _PlainPooling(nn.Module):
    """The AttentionPooling contract in plain PyTorch (used until the real one lands)."""

    def __init__(self, input_size, heads=1, score="linear", attn_size=None, bias=False, chunk_size=None,
                 batch_first=True, device=None, dtype=None):
        super().__init__()
        self.query = nn.Parameter(torch.randn(input_size, device=device, dtype=dtype))

    def forward(self, input, lengths=None, mask=None):
        if mask is None:
            mask = torch.arange(input.shape[1], device=input.device) < lengths.unsqueeze(1)
        return contenders.eager_pool(input, self.query, mask)


@pytest.fixture
def pooling(monkeypatch):
    if not hasattr(rnnattn, "AttentionPooling"):
        monkeypatch.setattr(rnnattn, "AttentionPooling", _PlainPooling, raising=False)


@pytest.mark.parametrize("mode", cases.MODES)
def test_pool_contenders_agree(pooling, mode):
    case = cases.PoolCase(B=5, T=9, D=7, mode=mode)
    names = ("rnnattn", "eager", "sdpa")  # compile: too slow for a unit test
    built = contenders.pool_contenders(case, torch.device("cpu"), torch.float64, names)
    vals = {n: c.check() for n, c in built.contenders.items()}
    assert set(vals) == set(names)
    for n, v in vals.items():
        assert len(v) == (1 if mode == "fwd" else 3), n
        assert runner._rel_diff(vals["rnnattn"], v) < 1e-10, n


def test_pool_contenders_say_why_when_there_is_no_pooling(monkeypatch):
    monkeypatch.delattr(rnnattn, "AttentionPooling", raising=False)
    built = contenders.pool_contenders(cases.PoolCase(2, 3, 4, "fwd"), torch.device("cpu"), torch.float32, ["rnnattn"])
    assert not built.contenders and "AttentionPooling" in built.skipped["rnnattn"]


def test_disagreeing_contenders_are_flagged(monkeypatch):
    case = cases.RNNCase(B=2, T=3, I=2, H=3, mode="fwd")
    built = contenders.Built()
    one = torch.ones(3)
    built.contenders["rnnattn"] = contenders.Contender(step=lambda: None, check=lambda: [one])
    built.contenders["nn.RNN"] = contenders.Contender(step=lambda: None, check=lambda: [one * 1.1])
    monkeypatch.setattr(contenders, "build", lambda *a, **k: built)
    r = runner.run_case(case, torch.device("cpu"), torch.float32, ["rnnattn", "nn.RNN"], 0.0, 1, memory=False)
    assert not r.agree and r.max_rel_diff["nn.RNN"] == pytest.approx(0.1)


# ---------------------------------------------------------------------------
# CLI


def test_cli_rejects_bad_arguments(capsys):
    assert main(["--exclude", "rnnattn"]) == 2
    assert main(["--exclude", "cudnn"]) == 2
    assert main(["--match", "("]) == 2
    assert main(["--match", "no-such-case"]) == 2
    if not torch.cuda.is_available():
        assert main(["--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "cannot be excluded" in err and "not a contender" in err and "regular expression" in err


def test_cli_gpu_list_works_without_a_gpu(capsys):
    assert main(["--gpu", "--list"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == [c.key for c in cases.gpu()]
    assert main(["--gpu", "--list", "--exclude", "persistent", "--only", "rnn"]) == 0
    assert main(["--gpu", "--device", "cuda", "--list"]) == 0  # listing needs no GPU


def test_cli_list_shows_the_floors(capsys):
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    assert "rnn/L1/B64-T100-I512-H1024/fwd+bwd   floors: speedup vs nn.RNN >= 1.2x" in out


def test_cli_quick_end_to_end(tmp_path):
    """``python -m rnnattn.bench --quick`` on a tiny budget writes a table, JSON, CSV and plot."""
    js, cs, png = tmp_path / "r.json", tmp_path / "r.csv", tmp_path / "r.png"
    cmd = [sys.executable, "-m", "rnnattn.bench", "--quick", "--budget", "0", "--min-rounds", "2", "--threads", "1",
           "--json", str(js), "--csv", str(cs), "--plot", str(png), "--no-progress"]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "speedup of rnnattn" in p.stdout and "Floors:" in p.stdout

    data = json.loads(js.read_text())
    assert data["meta"]["grid"] == "quick" and data["meta"]["torch_threads"] == 1
    assert data["meta"]["torch"] == torch.__version__
    keys = [r["key"] for r in data["results"]]
    assert keys == [c.key for c in cases.grid("quick")]
    rnn = [r for r in data["results"] if r["section"] == "rnn"]
    for r in rnn:
        assert set(r["contenders"]) == {"rnnattn", "nn.RNN", "reference", "GEMM floor"}, r["key"]
        assert r["agree"], r
        for c in r["contenders"].values():
            assert c["median_s"] > 0 and c["rounds"] >= 2 and c["peak_bytes"] > 0
        ours, theirs = r["contenders"]["rnnattn"], r["contenders"]["nn.RNN"]
        assert r["speedup"]["nn.RNN"] == pytest.approx(theirs["median_s"] / ours["median_s"])
    pool = [r for r in data["results"] if r["section"] == "pool"]
    for r in pool:
        assert "compile" in r["skipped"]  # not in --quick
        if hasattr(rnnattn, "AttentionPooling"):
            assert set(r["contenders"]) == {"rnnattn", "eager", "sdpa"} and r["agree"]
        else:
            assert "AttentionPooling" in r["skipped"]["rnnattn"]
    floors = data["floors"]
    assert floors["total"] == sum(len(c.floors) for c in cases.grid("quick"))
    assert all(f["met"] in (True, False) for f in floors["checks"] if f["case"].startswith("rnn/"))

    rows = list(csv.DictReader(cs.open()))
    assert len(rows) == sum(len(r["contenders"]) for r in data["results"])
    assert rows[0].keys() >= {"key", "contender", "median_ms", "peak_mib", "speedup_of_rnnattn"}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_table_header_names_the_cpu_isa_path():
    from rnnattn.bench import machine

    meta = machine.describe(torch.device("cpu"), torch.float32)
    assert meta["cpu_isa_path"] == rnnattn._C.cpu_isa() in ("amx", "avx512", "avx2", "base")
    assert f"CPU kernels: {meta['cpu_isa_path']} path" in report.table([], meta)
    assert meta["cpu_gemm_library"] == rnnattn._C.cpu_gemm() in ("blas", "onednn")
    assert f"large float32 GEMMs: {meta['cpu_gemm_library']}" in report.table([], meta)
    assert meta["cpu_packed_weights"] == rnnattn._C.cpu_packed_weights()
    assert ("(steps on packed weights)" in report.table([], meta)) == meta["cpu_packed_weights"]
    meta16 = machine.describe(torch.device("cpu"), torch.bfloat16)
    assert meta16["cpu_bf16_steps"] == rnnattn._C.cpu_bf16_steps() in ("float32", "kernel", "kernel+library", "kernel+packed")
    assert f"bfloat16 steps: {meta16['cpu_bf16_steps']}" in report.table([], meta16)
    assert "bfloat16 steps" not in report.table([], meta)


def _cpu_isa_with(value):
    """(the build a new process runs, its stderr) with RNNATTN_CPU_ISA=value (None: unset)."""
    script = "import warnings; warnings.simplefilter('always'); import rnnattn; print(rnnattn._C.cpu_isa())"
    env = {k: v for k, v in os.environ.items() if k != "RNNATTN_CPU_ISA"}
    env["PYTHONPATH"] = ROOT
    if value is not None:
        env["RNNATTN_CPU_ISA"] = value
    r = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()[-1], r.stderr


def test_rnnattn_cpu_isa_lowers_the_build_and_unknown_values_warn():
    """RNNATTN_CPU_ISA picks a lower build (never one the CPU lacks); a value
    rnnattn does not know is ignored with a warning that names it."""
    levels = CPU_ISAS  # lowest first
    best, err = _cpu_isa_with(None)
    assert best in levels and "RNNATTN_CPU_ISA" not in err
    for isa in levels:
        got, err = _cpu_isa_with(isa)
        assert got == levels[min(levels.index(isa), levels.index(best))] and "RNNATTN_CPU_ISA" not in err
    got, err = _cpu_isa_with("avx3")
    assert got == best and "RNNATTN_CPU_ISA='avx3' is not one of base, avx2, avx512, amx" in err

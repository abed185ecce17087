"""Writes results: a readable table, JSON, CSV, and a speedup bar chart."""
import csv
import json
import math
from typing import Dict, List, Optional

from .cases import GRU_CONTENDERS, LSTM_CONTENDERS, POOL_CONTENDERS, RNN_CONTENDERS, RNN_CUDA_PATHS

METHOD = (
    "time: median per-call time over interleaved rounds (contenders of a case take turns, so "
    "background load hits all alike); [n%] = interquartile range / median. "
    "speedup = baseline time / rnnattn time (> 1: rnnattn is faster). "
    "GEMM floor: the case's multiply-adds run as large GEMMs on the same threads (the input and "
    "recurrent products of every layer and direction over all rows, and in fwd+bwd the four "
    "backward GEMMs too); rnnattn time / floor = how far from that physical yardstick. "
    "peak: most bytes live during one call, counted from the call's own allocations "
    "(outputs, saved activations, gradients, workspaces; not inputs or parameters): "
    "CUDA max_memory_allocated; CPU the running sum of PyTorch CPU-allocator events "
    "recorded by the PyTorch profiler (profile_memory=True) (allocations outside that allocator, "
    "e.g. BLAS-internal buffers, are not seen)."
)

# The contender that is a yardstick (contenders.gemm_floor): rnnattn's time
# is shown as a multiple of it.
FLOOR = "GEMM floor"

_SECTIONS = {
    "rnn": (
        "RNN (tanh, time-major (T, B, I) input; fwd: forward under no_grad; "
        "fwd+bwd: forward + backward to input and all weights)",
        RNN_CONTENDERS + RNN_CUDA_PATHS,
        ("B", "T", "I", "H"),
    ),
    "gru": (
        "GRU (time-major (T, B, I) input; fwd: forward under no_grad; "
        "fwd+bwd: forward + backward to input and all weights)",
        GRU_CONTENDERS,
        ("B", "T", "I", "H"),
    ),
    "lstm": (
        "LSTM (time-major (T, B, I) input; fwd: forward under no_grad; "
        "fwd+bwd: forward + backward to input and all weights)",
        LSTM_CONTENDERS,
        ("B", "T", "I", "H"),
    ),
    "latency": (
        "Streaming latency (100 calls in a loop carrying the state, batch 1; cell: h = cell(x, h); "
        "T=1: out, h = module(x, h) on one time step; fwd: no_grad; fwd+bwd: backward from the last "
        "state); times are per call, in microseconds",
        ("rnnattn", "torch"),
        ("B", "I", "H"),
    ),
    "pool": (
        "Attention pooling (one learned query, heads=1, variable lengths; fwd+bwd: "
        "backward from the context to H and the query)",
        POOL_CONTENDERS,
        ("B", "T", "D"),
    ),
}


# ---------------------------------------------------------------------------
# Numbers to text


def _sig(v: float) -> str:
    """Three significant digits, no exponent for ordinary magnitudes."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    a = abs(v)
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def _ms(r, calls: int = 1, scale: float = 1e3) -> str:
    """Median time of one of the ``calls`` calls a step makes, in ms (scale
    1e3) or us (1e6), with the interquartile range."""
    t = r.timing
    return f"{_sig(t.median * scale / calls)} [{t.iqr_rel * 100:.0f}%]"


def _mib(nbytes: Optional[int]) -> str:
    return "n/a" if nbytes is None else _sig(nbytes / 2**20)


def _speedup(x: Optional[float]) -> str:
    return "-" if x is None else f"{_sig(x)}x"


def _threads(n) -> str:
    return f"{n} thread" + ("" if n == 1 else "s")


def _met(met: Optional[bool]) -> str:
    return "n/a" if met is None else ("met" if met else "UNMET")


# ---------------------------------------------------------------------------
# Table


def _layout(groups: List[tuple], rows: List[List[str]]) -> List[str]:
    """Aligns ``rows`` under a two-line header. ``groups`` is a list of
    ``(group title, [(column title, align), ...])``; align is "<" or ">"."""
    cols = [c for _, cs in groups for c in cs]
    widths = [len(t) for t, _ in cols]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row)]
    # Widen each group's last column if its title is wider than its columns.
    i = 0
    for title, cs in groups:
        span = sum(widths[i : i + len(cs)]) + 2 * (len(cs) - 1)
        if len(title) > span:
            widths[i + len(cs) - 1] += len(title) - span
        i += len(cs)
    gap, sep = "  ", " | "
    top, head, i = [], [], 0
    for title, cs in groups:
        w = widths[i : i + len(cs)]
        span = sum(w) + len(gap) * (len(cs) - 1)
        top.append(title.center(span) if title else " " * span)
        head.append(gap.join(f"{t:{a}{wi}}" for (t, a), wi in zip(cs, w)))
        i += len(cs)
    lines = [sep.join(top).rstrip(), sep.join(head).rstrip(), "-" * len(sep.join(head))]
    for row in rows:
        parts, i = [], 0
        for _, cs in groups:
            w = widths[i : i + len(cs)]
            parts.append(gap.join(f"{cell:{a}{wi}}" for cell, (_, a), wi in zip(row[i : i + len(cs)], cs, w)))
            i += len(cs)
        lines.append(sep.join(parts).rstrip())
    return lines


def _section_table(section: str, results: list) -> List[str]:
    title, contenders, dims = _SECTIONS[section]
    present = [n for n in contenders if any(n in r.results for r in results)]
    if "rnnattn" not in present:
        reasons = sorted({r.skipped["rnnattn"] for r in results if "rnnattn" in r.skipped})
        return [title, f"  skipped: {'; '.join(reasons) or 'no results'}"]
    floor = FLOOR if FLOOR in present else None  # the GEMM yardstick: a multiple, not a speedup
    baselines = [n for n in present if n not in ("rnnattn", FLOOR)]
    groups = [
        ("", [("case", "<"), ("mode", "<")] + [(d, ">") for d in dims]),
        ("time per call, " + ("us" if section == "latency" else "ms") + " [IQR]", [(n, ">") for n in present]),
        ("speedup of rnnattn", [(f"vs {n}", ">") for n in baselines]),
    ]
    if floor:
        groups.append(("rnnattn time", [("/ floor", ">")]))
    groups += [
        ("peak MiB", [(n, ">") for n in present if n != FLOOR]),
        ("floors", [("", "<")]),
    ]
    rows, notes = [], []
    for r in results:
        c = r.case
        row = [c.kind + ("" if r.agree else " (!)"), c.mode] + [str(c.shape[d]) for d in dims]
        per_call = (getattr(c, "calls", 1), 1e6 if section == "latency" else 1e3)
        row += [_ms(r.results[n], *per_call) if n in r.results else "-" for n in present]
        row += [_speedup(r.speedup(n)) for n in baselines]
        if floor:
            x = r.speedup(floor)
            row.append("-" if not x else f"{_sig(1 / x)}x")
        row += [_mib(r.results[n].peak_bytes) if n in r.results else "-" for n in present if n != FLOOR]
        row += [", ".join(f"{_short(f['floor'])} {_met(f['met'])}" for f in r.floor_checks())]
        rows.append(row)
        if not r.agree:
            diffs = ", ".join(f"{n} {d:.2g}" for n, d in r.max_rel_diff.items())
            notes.append(f"(!) {c.key}: contenders disagree (max relative difference vs rnnattn: {diffs})")
    skipped: Dict[tuple, List[str]] = {}
    for r in results:
        for n, why in r.skipped.items():
            skipped.setdefault((n, why), []).append(r.case.key)
    for (n, why), keys in skipped.items():
        where = "" if len(keys) == len(results) else f" ({', '.join(keys)})"
        notes.append(f"{n}: {why}{where}")
    noted: Dict[tuple, List[str]] = {}
    for r in results:
        for n, cr in r.results.items():
            if cr.note:
                noted.setdefault((n, cr.note), []).append(r.case.key)
    for (n, note), keys in noted.items():
        where = "" if len(keys) == len(results) else f" ({', '.join(keys)})"
        notes.append(f"{n}: {note}{where}")
    firsts = [(r.results["compile"].timing.first_call_s, r.case.key) for r in results if "compile" in r.results]
    if firsts:
        worst = max(firsts)
        notes.append(
            f"compile: first call (compilation, not in the times) took up to {worst[0]:.1f} s ({worst[1]})"
        )
    return [title] + _layout(groups, rows) + [f"  {n}" for n in _dedupe(notes)]


def _short(floor_text: str) -> str:
    # "speedup vs nn.RNN >= 3x" -> ">=3x"; "peak memory <= nn.RNN" -> "mem"
    if floor_text.startswith("speedup"):
        return ">=" + floor_text.rsplit(">= ", 1)[1]
    return "mem"


def _dedupe(xs: List[str]) -> List[str]:
    out, seen = [], set()
    for x in xs:
        if x not in seen:
            seen.add(x)
            out.append(x)
    return out


def floor_summary(results: list) -> Dict[str, object]:
    checks = [dict(case=r.case.key, **f) for r in results for f in r.floor_checks()]
    return {
        "total": len(checks),
        "met": sum(1 for f in checks if f["met"]),
        "unmet": [f for f in checks if f["met"] is False],
        "not_measured": [f for f in checks if f["met"] is None],
        "checks": checks,
    }


def table(results: list, meta: Dict[str, object]) -> str:
    m = meta
    lines = [
        f"rnnattn benchmark: {m.get('grid', '?')} grid on {m['device']}, {m['dtype']}",
        f"  machine: {m['cpu']}, {m['cpus_usable']} usable CPUs"
        + (f", CPU kernels: {m['cpu_isa_path']} path" if m.get("cpu_isa_path") else "")
        + (f", large float32 GEMMs: {m['cpu_gemm_library']}" if m.get("cpu_gemm_library") else "")
        + (" (steps on packed weights)" if m.get("cpu_packed_weights") else "")
        + (f", bfloat16 steps: {m['cpu_bf16_steps']}" if m.get("cpu_bf16_steps") and m["dtype"] == "bfloat16"
           else "")
        + (f"; GPU {m['gpu']} (CUDA {m['cuda']}, cuDNN {m['cudnn']}, TF32 {m.get('tf32')}, "
           f"RNNATTN_RNN_CUDA_PATH {m.get('rnnattn_rnn_cuda_path')})" if "gpu" in m else ""),
        f"  torch {m['torch']}, {_threads(m['torch_threads'])}; rnnattn {m['rnnattn']}"
        + (f" (commit {m['rnnattn_commit']})" if m.get("rnnattn_commit") else "")
        + f"; python {m['python']}; {m['date_utc']} UTC",
        f"  load average: {m.get('load_avg_start')} at start, {m.get('load_avg_end')} at end",
    ]
    if m.get("busy_note"):
        lines.append(f"  NOTE: {m['busy_note']}")
    lines += _wrap(METHOD, "  ")
    for section in _SECTIONS:
        rs = [r for r in results if r.case.section == section]
        if rs:
            lines += [""] + _section_table(section, rs)
    fs = floor_summary(results)
    if fs["total"]:
        lines += ["", f"Floors: {fs['met']} of {fs['total']} met"]
        w = max(len(f["case"]) for f in fs["checks"])
        for f in fs["checks"]:
            v = f["value"]
            shown = "n/a" if v is None else (f"{_sig(v)}x" if f["floor"].startswith("speedup") else f"ratio {v:.2f}")
            lines.append(f"  {f['case']:<{w}}  {f['floor']:<28} {shown:>10}  {_met(f['met'])}")
    return "\n".join(lines) + "\n"


def _wrap(text: str, indent: str, width: int = 110) -> List[str]:
    out, line = [], indent
    for word in text.split():
        if len(line) + len(word) + 1 > width and line.strip():
            out.append(line.rstrip())
            line = indent + "  "
        line += word + " "
    out.append(line.rstrip())
    return out


# ---------------------------------------------------------------------------
# JSON and CSV


def to_dict(results: list, meta: Dict[str, object]) -> Dict[str, object]:
    out = []
    for r in results:
        c = r.case
        out.append(
            {
                "key": c.key,
                "section": c.section,
                "kind": c.kind,
                "mode": c.mode,
                "shape": c.shape,
                # Module calls in one timed step (the latency section loops
                # 100): the times below are per step.
                "calls_per_step": getattr(c, "calls", 1),
                "contenders": {
                    n: {
                        "median_s": cr.timing.median,
                        "min_s": min(cr.timing.samples),
                        "q1_s": cr.timing.q1,
                        "q3_s": cr.timing.q3,
                        "rounds": len(cr.timing.samples),
                        "calls_per_round": cr.timing.calls_per_sample,
                        "first_call_s": cr.timing.first_call_s,
                        "peak_bytes": cr.peak_bytes,
                        "note": cr.note,
                    }
                    for n, cr in r.results.items()
                },
                "skipped": r.skipped,
                "speedup": {n: r.speedup(n) for n in r.results if n != "rnnattn"},
                "memory_ratio": {n: r.memory_ratio(n) for n in r.results if n != "rnnattn"},
                "agree": r.agree,
                "max_rel_diff": r.max_rel_diff,
                "floors": r.floor_checks(),
            }
        )
    return {"meta": dict(meta, method=METHOD), "results": out, "floors": floor_summary(results)}


def write_json(path: str, results: list, meta: Dict[str, object]) -> None:
    with open(path, "w") as f:
        json.dump(to_dict(results, meta), f, indent=1, default=_json_default)
        f.write("\n")


def _json_default(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return str(x)


CSV_FIELDS = [
    "key", "section", "kind", "mode", "B", "T", "I", "H", "D", "contender", "median_ms", "q1_ms", "q3_ms", "min_ms",
    "rounds", "first_call_s", "peak_mib", "speedup_of_rnnattn", "agree", "note",
]


def write_csv(path: str, results: list) -> None:
    """One row per (case, contender); ``speedup_of_rnnattn`` is this
    contender's time / rnnattn's (empty on rnnattn's own row)."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        for r in results:
            c = r.case
            for n, cr in r.results.items():
                t = cr.timing
                sp = r.speedup(n) if n != "rnnattn" else None
                w.writerow(
                    dict(
                        key=c.key, section=c.section, kind=c.kind, mode=c.mode, **c.shape, contender=n,
                        median_ms=f"{t.median * 1e3:.6g}", q1_ms=f"{t.q1 * 1e3:.6g}", q3_ms=f"{t.q3 * 1e3:.6g}",
                        min_ms=f"{min(t.samples) * 1e3:.6g}",
                        rounds=len(t.samples), first_call_s=f"{t.first_call_s:.4g}",
                        peak_mib="" if cr.peak_bytes is None else f"{cr.peak_bytes / 2**20:.6g}",
                        speedup_of_rnnattn="" if sp is None else f"{sp:.4g}", agree=r.agree, note=cr.note,
                    )
                )


# ---------------------------------------------------------------------------
# Plot


def write_plot(path: str, results: list, meta: Dict[str, object]) -> None:
    """Horizontal bars: rnnattn's speedup over each baseline, per case (log
    scale; 1x line; black ticks at the floors)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sections = [s for s in _SECTIONS if any(r.case.section == s and "rnnattn" in r.results for r in results)]
    if not sections:
        raise ValueError("nothing to plot: no case has rnnattn results")
    heights = [sum(1 for r in results if r.case.section == s) for s in sections]
    fig, axes = plt.subplots(
        len(sections), 1, figsize=(10, 1.2 + 0.42 * sum(heights) + 0.8 * len(sections)),
        gridspec_kw={"height_ratios": heights}, squeeze=False,
    )
    for ax, section in zip(axes[:, 0], sections):
        _, contenders, dims = _SECTIONS[section]
        rs = [r for r in results if r.case.section == section]
        baselines = [n for n in contenders if n != "rnnattn" and any(n in r.results for r in rs)]
        bar_h = 0.8 / max(1, len(baselines))
        for j, base in enumerate(baselines):
            ys = [i + (j - (len(baselines) - 1) / 2) * bar_h for i in range(len(rs))]
            xs = [r.speedup(base) or float("nan") for r in rs]
            ax.barh(ys, xs, height=bar_h, label=f"vs {base}")
            for y, x in zip(ys, xs):
                if math.isfinite(x):
                    ax.text(x, y, f" {_sig(x)}x", va="center", fontsize=7)
        for i, r in enumerate(rs):
            for f in r.case.floors:
                if hasattr(f, "min_speedup") and f.baseline in baselines:
                    j = baselines.index(f.baseline)
                    y = i + (j - (len(baselines) - 1) / 2) * bar_h
                    ax.plot([f.min_speedup] * 2, [y - bar_h / 2, y + bar_h / 2], color="black", lw=2)
        ax.axvline(1.0, color="gray", lw=1, ls="--")
        ax.set_xscale("log")
        _speedup_axis(ax, [r.speedup(b) for r in rs for b in baselines] + [1.0])
        ax.set_yticks(range(len(rs)))
        ax.set_yticklabels(
            [f"{r.case.kind} {r.case.mode} " + " ".join(f"{d}={r.case.shape[d]}" for d in dims) for r in rs],
            fontsize=8,
        )
        ax.invert_yaxis()
        ax.set_title(_SECTIONS[section][0].split(" (")[0], fontsize=10)
        ax.set_xlabel("speedup of rnnattn (baseline time / rnnattn time; black ticks: floors)")
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(
        f"rnnattn {meta.get('grid', '')} grid: {meta['device']} {meta['dtype']}, torch {meta['torch']}, "
        f"{_threads(meta['torch_threads'])}" + (f", {meta['gpu']}" if "gpu" in meta else ""),
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _speedup_axis(ax, values) -> None:
    """Log x axis with ticks at powers of two labelled "2x", and room on the
    right for the bar labels."""
    from matplotlib.ticker import FixedLocator, NullLocator

    vals = [v for v in values if v is not None and math.isfinite(v) and v > 0]
    lo, hi = min(vals), max(vals)
    ax.set_xlim(lo / 1.25, hi * 1.8)
    ticks = [2.0**k for k in range(math.floor(math.log2(lo / 1.25)), math.ceil(math.log2(hi * 1.8)) + 1)]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([f"{t:g}x" for t in ticks])

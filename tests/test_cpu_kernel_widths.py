"""The CPU kernels' vector-width templates at both widths the extension builds
(32-byte vectors: baseline and AVX2; 64-byte: AVX-512), against plain loops,
by compiling and running tests/cpu_kernels/check_widths.cpp. The 64-byte code
runs here lowered to narrower registers, so the AVX-512 build's logic is
checked even on a CPU that cannot run AVX-512 instructions. The bfloat16
kernels' checks are compiled and run the same way."""
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
needs_gxx = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ (the compiler that builds the extension)")


def _build_and_run(name, tmp_path, extra_flags=()):
    """Compiles tests/cpu_kernels/<name>.cpp against csrc/cpu and runs it: its
    output (it prints "all passed", or "skipped ..." where the CPU cannot run it)."""
    exe = tmp_path / name
    cmd = ["g++", "-std=c++17", "-O2", "-Wall", "-Wno-psabi", *extra_flags, f"-I{ROOT / 'csrc' / 'cpu'}",
           str(ROOT / "tests" / "cpu_kernels" / f"{name}.cpp"), "-o", str(exe)]
    build = subprocess.run(cmd, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    if r.returncode == 0 and r.stdout.startswith("skipped"):
        pytest.skip(r.stdout.strip())
    assert r.returncode == 0 and "all passed" in r.stdout, r.stdout[-3000:]


@needs_gxx
def test_both_vector_widths_match_plain_loops(tmp_path):
    _build_and_run("check_widths", tmp_path, ["-Wno-unknown-pragmas"])


@needs_gxx
def test_bf16_small_gemm_matches_double(tmp_path):
    """The bfloat16 small-step GEMM (VDPBF16PS) against double arithmetic on
    the rounded operands, by compiling and running check_bf16_gemm.cpp; it
    needs a CPU with AVX512-BF16 and skips elsewhere."""
    _build_and_run("check_bf16_gemm", tmp_path)


@needs_gxx
def test_bf16_rounding_and_widening(tmp_path):
    """bf16_bits.h and bf16_lanes.h at 8 and 16 lanes (the library bfloat16
    steps' operand rounding and product widening, csrc/cpu/recurrence.h, and
    the LSTM's fused step) against round-to-nearest-even worked out on the
    values, at and around every tie, into infinity, and on NaNs, by
    compiling and running check_bf16_bits.cpp."""
    _build_and_run("check_bf16_bits", tmp_path, ["-Wno-unknown-pragmas"])


@needs_gxx
def test_fused_steps_fast_reciprocal_is_within_an_ulp_of_the_division(tmp_path):
    """The fused bfloat16 steps' sigmoid and tanh in the AVX-512 build take
    their reciprocal from VRCP14PS and a Newton step (activation_kernels.h
    Recip::kRcp14): against the division's build and double, over [-20, 20],
    tiny values, the tails and NaN, by compiling and running
    check_fast_recip.cpp; it needs a CPU with AVX-512 and skips elsewhere."""
    _build_and_run("check_fast_recip", tmp_path, ["-Wno-unknown-pragmas"])

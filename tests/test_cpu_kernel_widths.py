"""The CPU kernels' vector-width templates at both widths the extension builds
(32-byte vectors: baseline and AVX2; 64-byte: AVX-512), against plain loops,
by compiling and running tests/cpu_kernels/check_widths.cpp. The 64-byte code
runs here lowered to narrower registers, so the AVX-512 build's logic is
checked even on a CPU that cannot run AVX-512 instructions."""
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ (the compiler that builds the extension)")
def test_both_vector_widths_match_plain_loops(tmp_path):
    exe = tmp_path / "check_widths"
    cmd = ["g++", "-std=c++17", "-O2", "-Wall", "-Wno-unknown-pragmas", "-Wno-psabi",
           f"-I{ROOT / 'csrc' / 'cpu'}", str(ROOT / "tests" / "cpu_kernels" / "check_widths.cpp"), "-o", str(exe)]
    build = subprocess.run(cmd, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "all passed" in r.stdout, r.stdout[-3000:]


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ (the compiler that builds the extension)")
def test_bf16_small_gemm_matches_double(tmp_path):
    """The bfloat16 small-step GEMM (VDPBF16PS) against double arithmetic on
    the rounded operands, by compiling and running check_bf16_gemm.cpp; it
    needs a CPU with AVX512-BF16 and skips elsewhere."""
    exe = tmp_path / "check_bf16_gemm"
    cmd = ["g++", "-std=c++17", "-O2", "-Wall", "-Wno-psabi", f"-I{ROOT / 'csrc' / 'cpu'}",
           str(ROOT / "tests" / "cpu_kernels" / "check_bf16_gemm.cpp"), "-o", str(exe)]
    build = subprocess.run(cmd, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    if r.returncode == 0 and r.stdout.startswith("skipped"):
        pytest.skip(r.stdout.strip())
    assert r.returncode == 0 and "all passed" in r.stdout, r.stdout[-3000:]


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ (the compiler that builds the extension)")
def test_bf16_rounding_and_widening(tmp_path):
    """bf16_bits.h (the library bfloat16 steps' operand rounding and product
    widening, csrc/cpu/recurrence.h) against round-to-nearest-even worked out
    on the values, at and around every tie, into infinity, and on NaNs, by
    compiling and running check_bf16_bits.cpp."""
    exe = tmp_path / "check_bf16_bits"
    cmd = ["g++", "-std=c++17", "-O2", "-Wall", "-Wno-psabi", f"-I{ROOT / 'csrc' / 'cpu'}",
           str(ROOT / "tests" / "cpu_kernels" / "check_bf16_bits.cpp"), "-o", str(exe)]
    build = subprocess.run(cmd, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "all passed" in r.stdout, r.stdout[-3000:]

"""Where the numbers came from: machine, software versions, threads, load."""
import datetime
import os
import platform
import subprocess
from typing import Dict, Optional

import torch


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_isa_path() -> str:
    """The build of the CPU kernels that runs in this process: "amx" (the
    avx512 build with AMX tiles for the bfloat16 steps' products),
    "avx512", "avx2" or "base" (csrc/cpu/isa.h: the CPU's best, lowered by
    RNNATTN_CPU_ISA, which is read once, on the first call of a kernel)."""
    from rnnattn import _C

    return _C.cpu_isa()


def cpu_gemm_library() -> str:
    """The library of the CPU kernels' large float32 GEMMs in this process:
    "blas" (MKL) or "onednn" (csrc/cpu/blas.h: oneDNN on x86 CPUs not made
    by Intel, where MKL runs generic kernels; RNNATTN_CPU_GEMM forces one)."""
    from rnnattn import _C

    return _C.cpu_gemm()


def cpu_packed_weights() -> bool:
    """Whether the large float32 steps multiply by oneDNN's pre-reordered
    weights in this process (where oneDNN runs them; csrc/cpu/packed_weights.h,
    RNNATTN_CPU_PACKED_WEIGHTS=0 turns it off)."""
    from rnnattn import _C

    return bool(_C.cpu_packed_weights())


def cpu_bf16_steps() -> str:
    """How a bfloat16 call's recurrent steps multiply in this process:
    "float32", "kernel" (AVX512-BF16, small_gemm_bf16), "kernel+packed" (the
    large steps in oneDNN's bfloat16 GEMM on W_hh reordered once a call,
    wherever oneDNN's packed weights take bfloat16) or "kernel+library" (the
    same on W_hh as stored, on AMX CPUs without them; csrc/cpu/half.h,
    RNNATTN_CPU_BF16_STEPS forces the kernel or the library)."""
    from rnnattn import _C

    return _C.cpu_bf16_steps()


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def load_average() -> Optional[float]:
    """1-minute load average, or None where the OS does not report one."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _git_commit() -> Optional[str]:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(
            ["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0 or not out.stdout.strip():
        return None
    commit = out.stdout.strip()
    try:  # uncommitted changes to the package make the commit a lie: say so
        paths = ["..", "../../csrc", "../../setup.py"]
        cmd = ["git", "-C", here, "status", "--porcelain", "-uno", "--", *paths]
        dirty = subprocess.run(cmd, capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        dirty = ""
    return commit + ("+dirty" if dirty else "")


def describe(device: torch.device, dtype: torch.dtype) -> Dict[str, object]:
    import rnnattn

    info: Dict[str, object] = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
        "cpu": _cpu_model(),
        "cpu_isa_path": cpu_isa_path(),
        "cpu_gemm_library": cpu_gemm_library(),
        "cpu_packed_weights": cpu_packed_weights(),
        "cpu_bf16_steps": cpu_bf16_steps(),
        "cpus_usable": _usable_cpus(),
        "cpus_logical": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "mkl": torch.backends.mkl.is_available(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "rnnattn": getattr(rnnattn, "__version__", "?"),
        "rnnattn_commit": _git_commit(),
        "rnnattn_cuda_kernels": bool(getattr(rnnattn._load, "WITH_CUDA", False)),
        "load_avg_start": load_average(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            gpu=props.name,
            gpu_sm_count=props.multi_processor_count,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            tf32={"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32},
            rnnattn_rnn_cuda_path=os.environ.get("RNNATTN_RNN_CUDA_PATH", "auto (unset)"),
        )
    return info


def busy_note(info: Dict[str, object]) -> Optional[str]:
    """A warning when the machine was running other work during the benchmark
    (load average above what the benchmark itself explains)."""
    loads = [l for l in (info.get("load_avg_start"), info.get("load_avg_end")) if l is not None]
    if not loads:
        return None
    cpus = int(info.get("cpus_usable") or 1)
    threads = int(info.get("torch_threads") or 1)
    worst = max(loads)
    # The benchmark keeps about `threads` cores busy itself.
    if worst > threads + 0.5 or worst > cpus:
        return (
            f"machine busy: load average up to {worst:g} on {cpus} usable CPUs "
            f"({threads} used by the benchmark); other work was running, timings are noisy"
        )
    return None

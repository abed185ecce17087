"""Builds rnnattn._C, the compiled operators, with torch.utils.cpp_extension.

CPU kernels are always built. The CUDA kernels (csrc/cuda/*.cu) are added when
CUDA is usable here, or when FORCE_CUDA=1 (to compile them on a machine
without a GPU, as CI does); FORCE_CUDA=0 forces a CPU-only build.
TORCH_CUDA_ARCH_LIST picks the GPU architectures (default: 8.0;9.0+PTX).
"""
import glob
import os

from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

HERE = os.path.dirname(os.path.abspath(__file__))


def want_cuda():
    force = os.environ.get("FORCE_CUDA")
    if force is not None:
        return force == "1"
    import torch

    return torch.cuda.is_available() and CUDA_HOME is not None


def extension():
    cpp = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    cxx = ["-O3", "-fopenmp"]
    if not want_cuda():
        return CppExtension("rnnattn._C", cpp, extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"])
    if CUDA_HOME is None:
        raise RuntimeError(
            "rnnattn: FORCE_CUDA=1 but no CUDA toolkit was found; set CUDA_HOME to the directory "
            "holding bin/nvcc (or FORCE_CUDA=0 for a CPU-only build)"
        )
    # sm_80 SASS also runs on sm_86/89; PTX of sm_90 lets newer GPUs JIT the kernels.
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
    cu = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
    # No -std flag (here or in cxx): torch's BuildExtension adds the standard
    # its headers need (C++17 on older torch, C++20 from torch 2.14 on).
    # No --use_fast_math: it turns tanhf into tanh.approx.f32 (relative error
    # ~5e-4) and expf into __expf, too coarse for float32 results that must
    # match torch to ~1e-6; a kernel that wants an intrinsic calls it by name.
    nvcc = ["-O3", "-lineinfo"]
    return CUDAExtension(
        "rnnattn._C",
        cpp + cu,
        define_macros=[("RNNATTN_WITH_CUDA", None)],
        extra_compile_args={"cxx": cxx + ["-DRNNATTN_WITH_CUDA"], "nvcc": nvcc},
        extra_link_args=["-fopenmp"],
    )


setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)

"""Builds rnnattn._C, the compiled operators, with torch.utils.cpp_extension.

CPU kernels are always built. The CUDA kernels (csrc/cuda/*.cu) are added when
CUDA is usable here, or when FORCE_CUDA=1 (to compile them on a machine
without a GPU, as CI does); FORCE_CUDA=0 forces a CPU-only build.
TORCH_CUDA_ARCH_LIST picks the GPU architectures (default: 8.0 and 9.0).
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
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    cu = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
    nvcc = ["-O3", "--use_fast_math", "-std=c++17", "-lineinfo"]
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

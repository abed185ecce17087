"""Loads the compiled extension, which registers torch.ops.rnnattn.*."""
import os
import warnings

import torch  # noqa: F401  (the extension links against torch's libraries)

try:
    from . import _C  # noqa: F401
except ImportError as err:  # pragma: no cover - exercised by a subprocess test
    raise ImportError(
        "rnnattn: the compiled extension rnnattn._C could not be loaded "
        f"({err}). It is built when the package is installed: run "
        "`pip install --no-build-isolation .` in the source tree with the torch "
        "you will use already installed (a C++17 compiler is needed; see README). "
        "If you are running from the source tree, the package there has no "
        "built extension: build it in place with `python setup.py build_ext --inplace`."
    ) from err

WITH_CUDA = bool(_C.with_cuda)

# RNNATTN_CPU_ISA lowers the build of the CPU kernels that runs (csrc/cpu/isa.h;
# "amx" is the avx512 build with AMX tiles for the bfloat16 steps' products,
# csrc/cpu/small_gemm_bf16.h); a value it does not know is ignored there, so
# say so here.
_CPU_ISAS = ("base", "avx2", "avx512", "amx")
_isa = os.environ.get("RNNATTN_CPU_ISA")
if _isa is not None and _isa not in _CPU_ISAS:
    warnings.warn(
        f"rnnattn: RNNATTN_CPU_ISA={_isa!r} is not one of {', '.join(_CPU_ISAS)}; "
        f"ignored: the CPU kernels use their {_C.cpu_isa()} build",
        RuntimeWarning,
        stacklevel=2,
    )

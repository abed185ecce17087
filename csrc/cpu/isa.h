// Run-time choice between the baseline x86-64 build of a kernel and its
// AVX2+FMA build. The extension is compiled without -march flags (it must
// run on any x86-64), so hot loops are instantiated twice: once plain and
// once inside a __attribute__((target("avx2,fma"))) function, and callers
// branch on use_avx2().
//
// Why not GCC's target_clones("arch=haswell"): its resolver tests the CPU
// *model* (is this an Intel Haswell?), not its features, so AMD CPUs with
// AVX2 silently get the baseline clone (measured: 13x slower recurrent GEMM
// on the AMD EPYC dev VM).
#pragma once

#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) && defined(__GNUC__)
#define RNNATTN_X86_DISPATCH 1
#define RNNATTN_TARGET_AVX2 __attribute__((target("avx2,fma")))
#else
#define RNNATTN_X86_DISPATCH 0
#define RNNATTN_TARGET_AVX2
#endif

namespace rnnattn::cpu {

// True when the CPU has AVX2 and FMA, unless RNNATTN_CPU_ISA=base forces the
// baseline build (tests use it to cover the path older CPUs take).
inline bool use_avx2() {
#if RNNATTN_X86_DISPATCH
  static const bool ok = [] {
    const char* isa = std::getenv("RNNATTN_CPU_ISA");
    if (isa != nullptr && std::strcmp(isa, "base") == 0) return false;
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return ok;
#else
  return false;
#endif
}

}  // namespace rnnattn::cpu

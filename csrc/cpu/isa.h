// Run-time choice between the builds of each hot CPU loop: baseline x86-64,
// AVX2+FMA and AVX-512. The extension is compiled without -march flags (it
// must run on any x86-64), so hot loops are instantiated once per level:
// plain, inside __attribute__((target("avx2,fma"))) functions and inside
// target("avx512f,...") functions, and callers switch on cpu_isa(). The
// AVX-512 builds use 64-byte vectors where the code has an explicit vector
// width (small_gemm, the activations); the compiler widens the plain loops
// (attention) by itself. Above avx512, "amx" (small_gemm_bf16.h
// amx_bf16_available) adds AMX tiles to the avx512 build for one loop, the
// bfloat16 steps' products; RNNATTN_CPU_ISA=avx512 turns them off.
//
// Why not GCC's target_clones("arch=haswell"): its resolver tests the CPU
// *model* (is this an Intel Haswell?), not its features, so AMD CPUs with
// AVX2 silently get the baseline clone (measured: 13x slower recurrent GEMM
// on the AMD EPYC dev VM).
#pragma once

#include <cstdlib>
#include <cstring>
#include <optional>

#if defined(__x86_64__) && defined(__GNUC__)
#define RNNATTN_X86_DISPATCH 1
#define RNNATTN_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define RNNATTN_TARGET_AVX512 __attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")))
#else
#define RNNATTN_X86_DISPATCH 0
#define RNNATTN_TARGET_AVX2
#define RNNATTN_TARGET_AVX512
#endif

namespace rnnattn::cpu {

enum class Isa { kBase = 0, kAvx2 = 1, kAvx512 = 2 };

inline const char* isa_name(Isa isa) {
  return isa == Isa::kAvx512 ? "avx512" : isa == Isa::kAvx2 ? "avx2" : "base";
}

// The level RNNATTN_CPU_ISA names, where it names one of base, avx2 and
// avx512 (unset, "amx" or another value: none; rnnattn/_load.py warns about
// values it does not know). Read once. cpu_isa() lowers the CPU's level to
// it; any of the three also turns AMX off (small_gemm_bf16.cpp).
inline std::optional<Isa> requested_cpu_isa() {
  static const std::optional<Isa> want = []() -> std::optional<Isa> {
    const char* v = std::getenv("RNNATTN_CPU_ISA");
    if (v == nullptr) return std::nullopt;
    for (Isa isa : {Isa::kBase, Isa::kAvx2, Isa::kAvx512})
      if (std::strcmp(v, isa_name(isa)) == 0) return isa;
    return std::nullopt;
  }();
  return want;
}

// The highest level this CPU (and its OS: __builtin_cpu_supports checks that
// the OS saves the wider registers) runs, lowered to RNNATTN_CPU_ISA=base|avx2
// when that is set: tests use it to cover the paths other CPUs take. A level
// above the CPU's cannot be forced. Read once.
inline Isa cpu_isa() {
#if RNNATTN_X86_DISPATCH
  static const Isa isa = [] {
    Isa best = Isa::kBase;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
      best = Isa::kAvx2;
      if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
          __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw"))
        best = Isa::kAvx512;
    }
    const std::optional<Isa> want = requested_cpu_isa();
    return want && *want < best ? *want : best;
  }();
  return isa;
#else
  return Isa::kBase;
#endif
}

}  // namespace rnnattn::cpu

// bfloat16 and float16 on the CPU. The kernels compute in float32 (the state,
// the gates, the softmax, the recurrent and backward GEMMs: float32
// accumulation, as the CUDA kernels do) and return their results, including
// what the backward keeps (the output, the GRU/LSTM reserve), in the
// tensors' own dtype. The layer ops convert their tensors to float32 one
// chunk of steps at a time (half_layer.h), the pooling ops one slice of the
// batch at a time (attention.cpp).
//
// The forward's input GEMM A = X W_ih^T (the largest of the forward) runs
// in the half dtype through ATen (oneDNN) on CPUs with native arithmetic in
// it (AVX512-BF16 or AMX for bfloat16, AVX512-FP16 for float16), with float32
// accumulation; elsewhere in float32 on converted operands, because there a
// half-precision GEMM is several times slower than float32's (measured on
// the AVX2 dev VM: a bf16 (6400 x 512) @ (512 x 1024) product 7.9x the
// float32 one). RNNATTN_CPU_HALF_GEMM=library|float32 forces one (tests run
// both).
//
// bfloat16 where that GEMM runs in bfloat16 on a CPU with AVX512-BF16
// (bf16_steps below) goes further: every recurrent step multiplies in
// bfloat16 (small_gemm_bf16.h: h_{t-1} or dG_t rounded to bfloat16, float32
// sums), without a projection each step makes its own rows' A with the same
// kernel (x_t in bfloat16, A summed in float32: no library GEMM first), and
// the backward's GEMMs after each chunk's walk (dX, dW_ih, dW_hh) run in
// bfloat16 through ATen, or after the whole walk (half_layer.h). On an AMD
// EPYC (Zen 4), 2 threads, these made the float32 steps' 2x over torch's
// bfloat16 modules at H = 1024 a win (benchmarks/OPTIMISATIONS.md).
#pragma once

#include <ATen/ATen.h>

#include <cstdlib>
#include <cstring>
#include <tuple>
#include <utility>

#include "isa.h"
#include "packed_weights.h"
#include "small_gemm_bf16.h"

namespace rnnattn::cpu::half {

inline bool is_half(const at::Tensor& t) {
  return t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kHalf;
}

// float32 copy of a half-precision tensor, contiguous (the layer code reads
// a weight's or a state's copy as plain rows: to() alone keeps a transposed
// weight transposed); any other tensor (float, the int64 lengths, the bool
// mask, undefined) as it is.
inline at::Tensor up(const at::Tensor& t) {
  return t.defined() && is_half(t)
             ? t.to(at::kFloat, /*non_blocking=*/false, /*copy=*/false, at::MemoryFormat::Contiguous)
             : t;
}
inline c10::optional<at::Tensor> up(const c10::optional<at::Tensor>& t) {
  return t.has_value() ? c10::optional<at::Tensor>(up(*t)) : t;
}

// Whether a half-precision call of this dtype runs its input GEMM in that
// dtype (see above). Read once.
inline bool library_half_gemm(at::ScalarType dtype) {
  static const int forced = [] {
    const char* v = std::getenv("RNNATTN_CPU_HALF_GEMM");
    if (v != nullptr && std::strcmp(v, "library") == 0) return 1;
    if (v != nullptr && std::strcmp(v, "float32") == 0) return 0;
    return -1;
  }();
  if (forced >= 0) return forced == 1;
#if RNNATTN_X86_DISPATCH
  static const bool bf16 = __builtin_cpu_supports("avx512bf16") || __builtin_cpu_supports("amx-bf16");
#if defined(__clang__) || __GNUC__ >= 12
  static const bool fp16 = __builtin_cpu_supports("avx512fp16");
#else
  static const bool fp16 = false;  // GCC 11 cannot test for it
#endif
  return dtype == at::kBFloat16 ? bf16 : fp16;
#else
  return false;
#endif
}

// Whether a half-precision call's small steps multiply in its dtype: a
// bfloat16 call that runs its input GEMM in bfloat16, on a CPU with
// AVX512-BF16 (small_gemm_bf16.h; RNNATTN_CPU_ISA below avx512 turns it
// off). The recurrent product then rounds h_{t-1} to bfloat16 (float32
// accumulation), as torch's bfloat16 modules do.
inline bool bf16_steps(at::ScalarType dtype) {
  return dtype == at::kBFloat16 && library_half_gemm(dtype) && bf16_small_gemm_available();
}

// Whether, with bf16_steps, the large steps (beyond small_step's size,
// recurrence.h) go to oneDNN's bfloat16 GEMM instead: one call a step over
// all gates (LayerPtrs::w_hh16), as torch's own bfloat16 modules make
// theirs, with the product rounded to bfloat16 as theirs is; on W_hh
// reordered once a call into oneDNN's layout where its packed weights take
// bfloat16 (packed_weights.h, LayerPtrs::w_hh16_packed), else on W_hh as
// stored (which oneDNN then reorders inside every call). The default: on
// CPUs with AMX-BF16 (Intel Xeon from Sapphire Rapids on), where oneDNN
// runs it on the AMX tiles, many times VDPBF16PS's multiply-adds a cycle
// (the input GEMM and the backward's GEMMs already go there, at::mm), and
// wherever the packed weights take bfloat16. Measured on an AMD EPYC (Zen
// 4, AVX512-BF16, no AMX), 2 threads, (64,100,512,1024), alternating
// processes against small_gemm_bf16's steps: LSTM fwd 0.77x -> 0.88x
// torch's bfloat16 module, fwd+bwd 1.12x -> 1.21x; GRU 1.04x -> 1.11x,
// 1.02x -> 1.15x; on W_hh as stored it lost 5-10% of the forward there
// (benchmarks/OPTIMISATIONS.md). RNNATTN_CPU_BF16_STEPS=library|kernel
// forces one (tests run both). Read once.
inline bool bf16_library_steps() {
  static const bool lib = [] {
    const char* v = std::getenv("RNNATTN_CPU_BF16_STEPS");
    if (v != nullptr && std::strcmp(v, "library") == 0) return true;
    if (v != nullptr && std::strcmp(v, "kernel") == 0) return false;
    if (packed_weights_enabled() && packed_linear_bf16_works()) return true;
#if RNNATTN_X86_DISPATCH
    return __builtin_cpu_supports("amx-bf16") != 0;
#else
    return false;
#endif
  }();
  return lib;
}

// Whether the library steps multiply by packed weights in this call
// (packed_weights.h; torch.backends.mkldnn's switch is read each call).
inline bool bf16_packed_steps() {
  return packed_weights_enabled() && at::globalContext().userEnabledMkldnn() &&
         packed_linear_bf16_works();
}

// How a bfloat16 call's recurrent steps multiply (the benchmark's header):
// "float32", "kernel" (small_gemm_bf16), "kernel+library" (the large steps
// in oneDNN's bfloat16 GEMM) or "kernel+packed" (the same on packed
// weights).
inline const char* bf16_steps_name() {
  if (!bf16_steps(at::kBFloat16)) return "float32";
  if (!bf16_library_steps()) return "kernel";
  return bf16_packed_steps() ? "kernel+packed" : "kernel+library";
}

}  // namespace rnnattn::cpu::half

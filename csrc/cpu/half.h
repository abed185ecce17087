// bfloat16 and float16 on the CPU. The kernels compute in float32 (the state,
// the gates, the softmax, every GEMM: float32 accumulation, as the CUDA
// kernels do) and return their results, including what the backward keeps
// (the output, the GRU/LSTM reserve), in the tensors' own dtype. Each op's
// half-precision call converts its inputs to float32 for the call only, runs
// the float32 kernel and converts the results back.
//
// Why not the half-precision GEMM of oneDNN / MKL for the large GEMMs: on
// CPUs without native bfloat16 or float16 arithmetic it is several times
// slower than float32's (measured on the AVX2 dev VM: a bf16 (6400 x 512) @
// (512 x 1024) product 7.9x the float32 one), and the conversions cost a
// pass over data the GEMM reads anyway. On CPUs with AMX or AVX512-BF16 a
// half-precision GEMM would be faster than float32's: not done (no such CPU
// to measure it on).
#pragma once

#include <ATen/ATen.h>

#include <tuple>
#include <utility>

namespace rnnattn::cpu::half {

inline bool is_half(const at::Tensor& t) {
  return t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kHalf;
}

// float32 copy of a half-precision tensor; any other tensor (float, the
// int64 lengths, the bool mask, undefined) as it is.
inline at::Tensor up(const at::Tensor& t) {
  return t.defined() && is_half(t) ? t.to(at::kFloat) : t;
}
inline c10::optional<at::Tensor> up(const c10::optional<at::Tensor>& t) {
  return t.has_value() ? c10::optional<at::Tensor>(up(*t)) : t;
}

// The results of a float32 call in dtype.
template <typename... Ts>
std::tuple<Ts...> down(std::tuple<Ts...> results, at::ScalarType dtype) {
  std::apply([&](auto&... t) { ((t = t.defined() ? t.to(dtype) : t), ...); }, results);
  return results;
}

}  // namespace rnnattn::cpu::half

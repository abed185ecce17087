// Pointwise parts of the RNN step, one row of H values at a time.
//
// float tanh is the hot pointwise op of the forward (B*H per step): std::tanh
// costs ~10-20 ns a call and does not vectorize, so float rows use a
// branch-free vector formulation (activation_kernels.h; built for AVX-512,
// AVX2+FMA and baseline x86-64, picked at run time). double keeps std::tanh:
// it is the precision the tests check.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

namespace rnnattn::cpu {

// o = tanh(o + bias); state = o, for float rows. Max error a few ulp;
// NaN propagates. Defined in activation.cpp.
void tanh_row_f32(float* o, float* state, const float* bias, int64_t H);

// The gate activations of the GRU and LSTM cells.
enum class Act { kTanh, kSigmoid };

// x = act(x + bias) in place over n floats (bias may be null), vectorized
// like tanh_row_f32. Defined in activation.cpp.
void activate_f32(Act act, float* x, const float* bias, int64_t n);

// The same for any floating type: float takes the vectorized path, double
// std::tanh / std::exp (the precision the tests check).
template <typename T>
inline void activate(Act act, T* __restrict x, const T* __restrict bias, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    activate_f32(act, x, bias, n);
  } else {
    for (int64_t j = 0; j < n; ++j) {
      const T z = x[j] + (bias != nullptr ? bias[j] : T(0));
      x[j] = act == Act::kTanh ? std::tanh(z) : T(1) / (T(1) + std::exp(-z));
    }
  }
}

// o = act(o + bias); state = o. bias is never null (zeros when the layer
// has no bias), which keeps the loops branch-free.
template <typename T>
inline void activate_row(T* __restrict o, T* __restrict state, const T* __restrict bias,
                         int64_t H, bool relu) {
  if (relu) {
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      const T z = o[j] + bias[j];
      // relu(NaN) is NaN, as in torch; `z > 0 ? z : 0` alone would give 0.
      o[j] = state[j] = (z > T(0) || z != z) ? z : T(0);
    }
  } else if constexpr (std::is_same_v<T, float>) {
    tanh_row_f32(o, state, bias, H);
  } else {
    for (int64_t j = 0; j < H; ++j) o[j] = state[j] = std::tanh(o[j] + bias[j]);
  }
}

// dz = (gout + g) * act'(z), written in terms of h = act(z):
// tanh' = 1 - h^2, relu' = [h > 0].
template <typename T>
inline void activation_grad_row(const T* __restrict gout, const T* __restrict g,
                                const T* __restrict h, T* __restrict dz, int64_t H, bool relu) {
  if (relu) {
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) dz[j] = h[j] > T(0) ? gout[j] + g[j] : T(0);
  } else {
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) dz[j] = (gout[j] + g[j]) * (T(1) - h[j] * h[j]);
  }
}

}  // namespace rnnattn::cpu

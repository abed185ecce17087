// Pointwise parts of the RNN step, one row of H values at a time.
#pragma once

#include <cmath>
#include <cstdint>

namespace rnnattn::cpu {

// o = act(o + bias); state = o. bias may be null.
template <typename T>
inline void activate_row(T* o, T* state, const T* bias, int64_t H, bool relu) {
  if (relu) {
    for (int64_t j = 0; j < H; ++j) {
      const T z = o[j] + (bias ? bias[j] : T(0));
      o[j] = state[j] = z > T(0) ? z : T(0);
    }
  } else {
    for (int64_t j = 0; j < H; ++j) {
      o[j] = state[j] = std::tanh(o[j] + (bias ? bias[j] : T(0)));
    }
  }
}

// dz = (gout + g) * act'(z), written in terms of h = act(z):
// tanh' = 1 - h^2, relu' = [h > 0].
template <typename T>
inline void activation_grad_row(const T* gout, const T* g, const T* h, T* dz, int64_t H,
                                bool relu) {
  if (relu) {
    for (int64_t j = 0; j < H; ++j) dz[j] = h[j] > T(0) ? gout[j] + g[j] : T(0);
  } else {
    for (int64_t j = 0; j < H; ++j) dz[j] = (gout[j] + g[j]) * (T(1) - h[j] * h[j]);
  }
}

}  // namespace rnnattn::cpu

// Inner loops over the feature dimension D of attention pooling, written as
// plain loops the compiler vectorizes.
//
// Everything here is always_inline so that it is compiled with the ISA of the
// function it lands in: attention.cpp instantiates its kernels for the
// baseline ISA, under target("avx2,fma") and under the AVX-512 target, chosen
// at run time (isa.h; the extension is built without -march flags, so it
// runs on any x86-64).
#pragma once

#include <cstdint>
#include <type_traits>

#include "bf16_bits.h"

#if defined(__GNUC__)
#define RNNATTN_INLINE inline __attribute__((always_inline))
#define RNNATTN_RESTRICT __restrict__
#else
#define RNNATTN_INLINE inline
#define RNNATTN_RESTRICT
#endif

namespace rnnattn::cpu::vec {

// The rows of H (and of its grad) are stored as X: T itself, or bfloat16
// bits (uint16_t) with T = float. They are widened as they are read and
// rounded (to nearest even) as they are written; every sum stays in T.
template <typename T, typename X>
RNNATTN_INLINE T widen(X v) {
  if constexpr (std::is_same_v<X, uint16_t>) {
    return bf16_value(v);
  } else {
    return v;
  }
}
template <typename X, typename T>
RNNATTN_INLINE X narrow(T v) {
  if constexpr (std::is_same_v<X, uint16_t>) {
    return bf16_bits(v);
  } else {
    return v;
  }
}

// y = x, rounded to X.
template <typename X, typename T>
RNNATTN_INLINE void store_row(X* RNNATTN_RESTRICT y, const T* RNNATTN_RESTRICT x, int64_t n) {
  for (int64_t d = 0; d < n; ++d) y[d] = narrow<X>(x[d]);
}

// Independent partial sums: four 256-bit registers' worth. A single running
// sum would serialise on the FMA latency; separate named lanes let the
// compiler vectorize without reassociating (so no -ffast-math is needed).
template <typename T>
constexpr int kLanes = 4 * 32 / static_cast<int>(sizeof(T));

template <typename X, typename T>
RNNATTN_INLINE T dot(const X* RNNATTN_RESTRICT x, const T* RNNATTN_RESTRICT y, int64_t n) {
  constexpr int L = kLanes<T>;
  T acc[L] = {};
  int64_t d = 0;
  for (; d + L <= n; d += L) {
    for (int j = 0; j < L; ++j) acc[j] += widen<T>(x[d + j]) * y[d + j];
  }
  for (int j = 0; d < n; ++d, ++j) acc[j] += widen<T>(x[d]) * y[d];
  // Pairwise fold, so it vectorizes too.
  for (int w = L / 2; w >= 1; w /= 2) {
    for (int j = 0; j < w; ++j) acc[j] += acc[j + w];
  }
  return acc[0];
}

// y += a * x
template <typename T>
RNNATTN_INLINE void axpy(T* RNNATTN_RESTRICT y, T a, const T* RNNATTN_RESTRICT x, int64_t n) {
  for (int64_t d = 0; d < n; ++d) y[d] += a * x[d];
}

// y = r * y + x   (online-softmax rescale folded into the accumulation)
template <typename T>
RNNATTN_INLINE void scale_add(T* RNNATTN_RESTRICT y, T r, const T* RNNATTN_RESTRICT x,
                              int64_t n) {
  for (int64_t d = 0; d < n; ++d) y[d] = r * y[d] + x[d];
}

// y *= a
template <typename T>
RNNATTN_INLINE void scale(T* RNNATTN_RESTRICT y, T a, int64_t n) {
  for (int64_t d = 0; d < n; ++d) y[d] *= a;
}

// y = a * x + b * z
template <typename T>
RNNATTN_INLINE void axpby(T* RNNATTN_RESTRICT y, T a, const T* RNNATTN_RESTRICT x, T b,
                          const T* RNNATTN_RESTRICT z, int64_t n) {
  for (int64_t d = 0; d < n; ++d) y[d] = a * x[d] + b * z[d];
}

// y += a * x + b * z
template <typename T>
RNNATTN_INLINE void add_axpby(T* RNNATTN_RESTRICT y, T a, const T* RNNATTN_RESTRICT x, T b,
                              const T* RNNATTN_RESTRICT z, int64_t n) {
  for (int64_t d = 0; d < n; ++d) y[d] += a * x[d] + b * z[d];
}

// y = a * x
template <typename T>
RNNATTN_INLINE void scaled_copy(T* RNNATTN_RESTRICT y, T a, const T* RNNATTN_RESTRICT x,
                                int64_t n) {
  for (int64_t d = 0; d < n; ++d) y[d] = a * x[d];
}

template <typename T>
RNNATTN_INLINE void zero(T* y, int64_t n) {
  for (int64_t d = 0; d < n; ++d) y[d] = T(0);
}

}  // namespace rnnattn::cpu::vec

namespace rnnattn::cpu::vec {

// Rows handled together by the kernels: their contributions to an
// accumulator row are added in one pass over it. Partial groups pad with a
// row of zeros.
constexpr int kGroup = 4;

// out[i] = x[i] . y for the first n rows x[i] (each dot already keeps
// independent partial sums; interleaving the rows in one loop makes GCC's
// vectorizer shuffle instead).
template <typename T, typename X>
RNNATTN_INLINE void dot_group(const X* const* x, const T* y, int64_t d, int n, T* out) {
  for (int i = 0; i < n; ++i) out[i] = dot(x[i], y, d);
}

// y = s * y + sum_i q[i] * x[i]   over the kGroup rows x[i].
template <typename T, typename X>
RNNATTN_INLINE void combine_group(T* RNNATTN_RESTRICT y, T s, const T* q, const X* const* x,
                                  int64_t n) {
  const X* RNNATTN_RESTRICT x0 = x[0];
  const X* RNNATTN_RESTRICT x1 = x[1];
  const X* RNNATTN_RESTRICT x2 = x[2];
  const X* RNNATTN_RESTRICT x3 = x[3];
  const T q0 = q[0], q1 = q[1], q2 = q[2], q3 = q[3];
  for (int64_t d = 0; d < n; ++d) {
    y[d] = s * y[d] + q0 * widen<T>(x0[d]) + q1 * widen<T>(x1[d]) + q2 * widen<T>(x2[d]) +
           q3 * widen<T>(x3[d]);
  }
}

}  // namespace rnnattn::cpu::vec

// Inner loops over the feature dimension D of attention pooling, written as
// plain loops the compiler vectorizes.
//
// Everything here is always_inline so that it is compiled with the ISA of the
// function it lands in: attention.cpp instantiates its kernels once for the
// baseline ISA and once under target("avx2,fma"), chosen at run time (the
// extension is built without -march flags, so it runs on any x86-64).
#pragma once

#include <cstdint>

#if defined(__GNUC__)
#define RNNATTN_INLINE inline __attribute__((always_inline))
#define RNNATTN_RESTRICT __restrict__
#else
#define RNNATTN_INLINE inline
#define RNNATTN_RESTRICT
#endif

namespace rnnattn::cpu::vec {

// Independent partial sums: four 256-bit registers' worth. A single running
// sum would serialise on the FMA latency; separate named lanes let the
// compiler vectorize without reassociating (so no -ffast-math is needed).
template <typename T>
constexpr int kLanes = 4 * 32 / static_cast<int>(sizeof(T));

template <typename T>
RNNATTN_INLINE T dot(const T* RNNATTN_RESTRICT x, const T* RNNATTN_RESTRICT y, int64_t n) {
  constexpr int L = kLanes<T>;
  T acc[L] = {};
  int64_t d = 0;
  for (; d + L <= n; d += L) {
    for (int j = 0; j < L; ++j) acc[j] += x[d + j] * y[d + j];
  }
  for (int j = 0; d < n; ++d, ++j) acc[j] += x[d] * y[d];
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

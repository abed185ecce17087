// See small_gemm.h.
#include "small_gemm.h"

namespace rnnattn::cpu {
namespace {

// 32-byte vectors via GCC vector extensions: one source that the target
// clones below lower to AVX2/AVX-512 registers or pairs of SSE registers.
// The unaligned typedef lets us load from any float/double address.
template <typename T>
struct Vec {
  typedef T type __attribute__((vector_size(32)));
  typedef T unaligned __attribute__((vector_size(32), aligned(alignof(T))));
  static constexpr int kLanes = 32 / sizeof(T);
};

// One R-row x (4 vectors) block of Y: the accumulators stay in registers for
// the whole k loop, each vector of B loaded once for R rows.
template <typename T, int R>
__attribute__((always_inline)) inline void block(const T* __restrict X, const T* __restrict B,
                                                 T* __restrict Y, int64_t k, int64_t n,
                                                 bool accumulate) {
  using V = typename Vec<T>::type;
  using U = typename Vec<T>::unaligned;
  constexpr int L = Vec<T>::kLanes;
  V acc[R][4];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < 4; ++c)
      acc[r][c] = accumulate ? *reinterpret_cast<const U*>(Y + r * n + c * L) : V{};
  for (int64_t p = 0; p < k; ++p) {
    const T* b = B + p * n;
    const V b0 = *reinterpret_cast<const U*>(b), b1 = *reinterpret_cast<const U*>(b + L);
    const V b2 = *reinterpret_cast<const U*>(b + 2 * L), b3 = *reinterpret_cast<const U*>(b + 3 * L);
    for (int r = 0; r < R; ++r) {
      const T a = X[r * k + p];
      acc[r][0] += a * b0;
      acc[r][1] += a * b1;
      acc[r][2] += a * b2;
      acc[r][3] += a * b3;
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < 4; ++c) *reinterpret_cast<U*>(Y + r * n + c * L) = acc[r][c];
}

// Columns [j0, n) of rows [i0, i0 + R): the ragged right edge.
template <typename T>
__attribute__((always_inline)) inline void edge(const T* __restrict X, const T* __restrict B,
                                                T* __restrict Y, int64_t rows, int64_t k,
                                                int64_t n, int64_t j0, bool accumulate) {
  for (int64_t r = 0; r < rows; ++r) {
    T* __restrict y = Y + r * n;
    if (!accumulate)
      for (int64_t j = j0; j < n; ++j) y[j] = T(0);
    for (int64_t p = 0; p < k; ++p) {
      const T a = X[r * k + p];
      const T* __restrict b = B + p * n;
      for (int64_t j = j0; j < n; ++j) y[j] += a * b[j];
    }
  }
}

template <typename T>
__attribute__((always_inline)) inline void small_gemm_impl(const T* X, const T* B, T* Y, int64_t m,
                                                           int64_t k, int64_t n, bool accumulate) {
  constexpr int C = 4 * Vec<T>::kLanes;  // 32 floats / 16 doubles a block row
  const int64_t nc = n - n % C;
  int64_t i = 0;
  for (; i + 2 <= m; i += 2) {
    for (int64_t j = 0; j < nc; j += C)
      block<T, 2>(X + i * k, B + j, Y + i * n + j, k, n, accumulate);
    edge(X + i * k, B, Y + i * n, 2, k, n, nc, accumulate);
  }
  if (i < m) {
    for (int64_t j = 0; j < nc; j += C)
      block<T, 1>(X + i * k, B + j, Y + i * n + j, k, n, accumulate);
    edge(X + i * k, B, Y + i * n, 1, k, n, nc, accumulate);
  }
}

}  // namespace

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
// "arch=haswell" is AVX2 + FMA in one clone (a plain "avx2,fma" list makes
// two clones, neither with both).
#define RNNATTN_CLONES __attribute__((target_clones("avx512f", "arch=haswell", "default")))
#else
#define RNNATTN_CLONES
#endif

RNNATTN_CLONES void small_gemm(const float* X, const float* B, float* Y, int64_t m, int64_t k,
                               int64_t n, bool accumulate) {
  small_gemm_impl(X, B, Y, m, k, n, accumulate);
}

RNNATTN_CLONES void small_gemm(const double* X, const double* B, double* Y, int64_t m, int64_t k,
                               int64_t n, bool accumulate) {
  small_gemm_impl(X, B, Y, m, k, n, accumulate);
}

}  // namespace rnnattn::cpu

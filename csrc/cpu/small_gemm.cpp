// See small_gemm.h.
#include "small_gemm.h"

#include "isa.h"

namespace rnnattn::cpu {
namespace {

// 32-byte vectors via GCC vector extensions: one source that the
// AVX2 build below lowers to ymm registers, the baseline build to SSE pairs.
// The unaligned typedef lets us load from any float/double address.
template <typename T>
struct Vec {
  typedef T type __attribute__((vector_size(32)));
  typedef T unaligned __attribute__((vector_size(32), aligned(alignof(T))));
  static constexpr int kLanes = 32 / sizeof(T);
};

// One R-row x NV-vector block of Y: the accumulators stay in registers for
// the whole k loop, each vector of B loaded once for R rows.
template <typename T, int R, int NV>
__attribute__((always_inline)) inline void block(const T* __restrict X, const T* __restrict B,
                                                 T* __restrict Y, const Ld& ld, int64_t k,
                                                 bool accumulate) {
  using V = typename Vec<T>::type;
  using U = typename Vec<T>::unaligned;
  constexpr int L = Vec<T>::kLanes;
  V acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < NV; ++c)
      acc[r][c] = accumulate ? *reinterpret_cast<const U*>(Y + r * ld.y + c * L) : V{};
  int64_t p = 0;
  if constexpr (R == 1) {
    // One row has only NV accumulators: too few to cover the FMA latency,
    // so even and odd p go to two sets, summed at the end.
    V acc2[NV] = {};
    for (; p + 2 <= k; p += 2) {
      const T a0 = X[p], a1 = X[p + 1];
      for (int c = 0; c < NV; ++c) {
        acc[0][c] += a0 * *reinterpret_cast<const U*>(B + p * ld.b + c * L);
        acc2[c] += a1 * *reinterpret_cast<const U*>(B + (p + 1) * ld.b + c * L);
      }
    }
    for (int c = 0; c < NV; ++c) acc[0][c] += acc2[c];
  }
  for (; p < k; ++p) {
    const T* b = B + p * ld.b;
    V bv[NV];
    for (int c = 0; c < NV; ++c) bv[c] = *reinterpret_cast<const U*>(b + c * L);
    for (int r = 0; r < R; ++r) {
      const T a = X[r * ld.x + p];
      for (int c = 0; c < NV; ++c) acc[r][c] += a * bv[c];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < NV; ++c) *reinterpret_cast<U*>(Y + r * ld.y + c * L) = acc[r][c];
}

// Columns [j0, n) of R rows, fewer than one vector: each y[j] is a dot
// product down a column of B, kept in a register.
template <typename T, int R>
__attribute__((always_inline)) inline void tail(const T* __restrict X, const T* __restrict B,
                                                T* __restrict Y, const Ld& ld, int64_t k,
                                                int64_t n, int64_t j0, bool accumulate) {
  for (int64_t j = j0; j < n; ++j) {
    T acc[R];
    for (int r = 0; r < R; ++r) acc[r] = accumulate ? Y[r * ld.y + j] : T(0);
    for (int64_t p = 0; p < k; ++p) {
      const T b = B[p * ld.b + j];
      for (int r = 0; r < R; ++r) acc[r] += X[r * ld.x + p] * b;
    }
    for (int r = 0; r < R; ++r) Y[r * ld.y + j] = acc[r];
  }
}

// R rows of Y: blocks of 4 vectors, then one block of the remaining whole
// vectors (so H = 100 or 300 does not fall to scalar code), then the
// scalar tail.
template <typename T, int R>
__attribute__((always_inline)) inline void rows(const T* X, const T* B, T* Y, const Ld& ld,
                                                int64_t k, int64_t n, bool accumulate) {
  constexpr int L = Vec<T>::kLanes;
  int64_t j = 0;
  for (; j + 4 * L <= n; j += 4 * L) block<T, R, 4>(X, B + j, Y + j, ld, k, accumulate);
  const int64_t vectors = (n - j) / L;
  if (vectors == 3) block<T, R, 3>(X, B + j, Y + j, ld, k, accumulate);
  if (vectors == 2) block<T, R, 2>(X, B + j, Y + j, ld, k, accumulate);
  if (vectors == 1) block<T, R, 1>(X, B + j, Y + j, ld, k, accumulate);
  tail<T, R>(X, B, Y, ld, k, n, j + vectors * L, accumulate);
}

template <typename T>
__attribute__((always_inline)) inline void small_gemm_impl(const T* X, const T* B, T* Y,
                                                           const Ld& ld, int64_t m, int64_t k,
                                                           int64_t n, bool accumulate) {
  // 3 rows x 4 vectors: 12 accumulators + 4 vectors of B fill the 16 ymm
  // registers; each loaded vector of B feeds 3 FMAs.
  int64_t i = 0;
  for (; i + 3 <= m; i += 3) rows<T, 3>(X + i * ld.x, B, Y + i * ld.y, ld, k, n, accumulate);
  if (m - i == 2) rows<T, 2>(X + i * ld.x, B, Y + i * ld.y, ld, k, n, accumulate);
  if (m - i == 1) rows<T, 1>(X + i * ld.x, B, Y + i * ld.y, ld, k, n, accumulate);
}

// Y (m x n) [+]= X (m x k) @ W^T with W (n x k) row-major: each y[i][j] a
// dot product of two contiguous rows, four columns at a time so each loaded
// vector of X feeds four FMAs; the lanes are summed once at the end.
template <typename T>
__attribute__((always_inline)) inline void small_gemm_nt_impl(const T* X, const T* W, T* Y,
                                                              const Ld& ld, int64_t m, int64_t k,
                                                              int64_t n, bool accumulate) {
  using V = typename Vec<T>::type;
  using U = typename Vec<T>::unaligned;
  constexpr int L = Vec<T>::kLanes;
  constexpr int C = 4;
  auto hsum = [](const V& v) {
    T s = 0;
    for (int l = 0; l < L; ++l) s += v[l];
    return s;
  };
  for (int64_t i = 0; i < m; ++i) {
    const T* x = X + i * ld.x;
    T* y = Y + i * ld.y;
    int64_t j = 0;
    for (; j + C <= n; j += C) {
      V acc[C] = {};
      int64_t p = 0;
      for (; p + L <= k; p += L) {
        const V xv = *reinterpret_cast<const U*>(x + p);
        for (int c = 0; c < C; ++c) acc[c] += xv * *reinterpret_cast<const U*>(W + (j + c) * ld.b + p);
      }
      for (int c = 0; c < C; ++c) {
        T s = hsum(acc[c]);
        for (int64_t q = p; q < k; ++q) s += x[q] * W[(j + c) * ld.b + q];
        y[j + c] = accumulate ? y[j + c] + s : s;
      }
    }
    for (; j < n; ++j) {
      T s = 0;
      for (int64_t q = 0; q < k; ++q) s += x[q] * W[j * ld.b + q];
      y[j] = accumulate ? y[j] + s : s;
    }
  }
}

RNNATTN_TARGET_AVX2 void small_gemm_nt_avx2(const float* X, const float* W, float* Y, const Ld& ld,
                                            int64_t m, int64_t k, int64_t n, bool accumulate) {
  small_gemm_nt_impl(X, W, Y, ld, m, k, n, accumulate);
}
RNNATTN_TARGET_AVX2 void small_gemm_nt_avx2(const double* X, const double* W, double* Y,
                                            const Ld& ld, int64_t m, int64_t k, int64_t n,
                                            bool accumulate) {
  small_gemm_nt_impl(X, W, Y, ld, m, k, n, accumulate);
}

RNNATTN_TARGET_AVX2 void small_gemm_avx2(const float* X, const float* B, float* Y, const Ld& ld,
                                         int64_t m, int64_t k, int64_t n, bool accumulate) {
  small_gemm_impl(X, B, Y, ld, m, k, n, accumulate);
}
RNNATTN_TARGET_AVX2 void small_gemm_avx2(const double* X, const double* B, double* Y, const Ld& ld,
                                         int64_t m, int64_t k, int64_t n, bool accumulate) {
  small_gemm_impl(X, B, Y, ld, m, k, n, accumulate);
}

template <typename T>
void dispatch(const T* X, const T* B, T* Y, const Ld& ld, int64_t m, int64_t k, int64_t n,
              bool accumulate) {
  if (use_avx2())
    small_gemm_avx2(X, B, Y, ld, m, k, n, accumulate);
  else
    small_gemm_impl(X, B, Y, ld, m, k, n, accumulate);
}

template <typename T>
void dispatch_nt(const T* X, const T* W, T* Y, const Ld& ld, int64_t m, int64_t k, int64_t n,
                 bool accumulate) {
  if (use_avx2())
    small_gemm_nt_avx2(X, W, Y, ld, m, k, n, accumulate);
  else
    small_gemm_nt_impl(X, W, Y, ld, m, k, n, accumulate);
}

}  // namespace

void small_gemm_nt(const float* X, const float* W, float* Y, int64_t m, int64_t k, int64_t n,
                   bool accumulate, Ld ld) {
  dispatch_nt(X, W, Y, Ld{ld.x ? ld.x : k, ld.b ? ld.b : k, ld.y ? ld.y : n}, m, k, n, accumulate);
}

void small_gemm_nt(const double* X, const double* W, double* Y, int64_t m, int64_t k, int64_t n,
                   bool accumulate, Ld ld) {
  dispatch_nt(X, W, Y, Ld{ld.x ? ld.x : k, ld.b ? ld.b : k, ld.y ? ld.y : n}, m, k, n, accumulate);
}

void small_gemm(const float* X, const float* B, float* Y, int64_t m, int64_t k, int64_t n,
                bool accumulate, Ld ld) {
  dispatch(X, B, Y, ld.or_dense(k, n), m, k, n, accumulate);
}

void small_gemm(const double* X, const double* B, double* Y, int64_t m, int64_t k, int64_t n,
                bool accumulate, Ld ld) {
  dispatch(X, B, Y, ld.or_dense(k, n), m, k, n, accumulate);
}

}  // namespace rnnattn::cpu

// The loops of small_gemm and small_gemm_nt (small_gemm.h) as templates over
// the vector width, for small_gemm.cpp to instantiate once per ISA build
// (isa.h) and for tests/cpu_kernels to run the AVX-512 build's logic (64-byte
// vectors) on machines without AVX-512. Everything is always_inline, so it
// is compiled with the ISA of the function it lands in.
#pragma once

#include <cstdint>
#include <type_traits>
#include <utility>

#include "small_gemm.h"

// Vectors passed and returned by value between these always_inline functions
// never cross a call boundary, so GCC's note that their calling convention
// differs with and without AVX does not apply.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"

namespace rnnattn::cpu::kernels {

// Vectors of Bytes bytes via GCC vector extensions: one source that each
// build lowers to its registers (32 bytes: ymm for AVX2, SSE pairs for the
// baseline; 64 bytes: zmm for AVX-512, or ymm pairs where a test runs that
// build's logic on an AVX2 machine). The unaligned typedef lets us load
// from any float/double address.
template <typename T, int Bytes>
struct Vec {
  typedef T type __attribute__((vector_size(Bytes)));
  typedef T unaligned __attribute__((vector_size(Bytes), aligned(alignof(T))));
  static constexpr int kLanes = Bytes / sizeof(T);
};

// One R-row x NV-vector block of Y: the accumulators stay in registers for
// the whole k loop, each vector of B loaded once for R rows.
template <typename T, int Bytes, int R, int NV>
__attribute__((always_inline)) inline void block(const T* __restrict X, const T* __restrict B,
                                                 T* __restrict Y, const Ld& ld, int64_t k,
                                                 bool accumulate) {
  using V = typename Vec<T, Bytes>::type;
  using U = typename Vec<T, Bytes>::unaligned;
  constexpr int L = Vec<T, Bytes>::kLanes;
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
template <typename T, int Bytes, int R>
__attribute__((always_inline)) inline void rows(const T* X, const T* B, T* Y, const Ld& ld,
                                                int64_t k, int64_t n, bool accumulate) {
  constexpr int L = Vec<T, Bytes>::kLanes;
  int64_t j = 0;
  for (; j + 4 * L <= n; j += 4 * L) block<T, Bytes, R, 4>(X, B + j, Y + j, ld, k, accumulate);
  const int64_t vectors = (n - j) / L;
  if (vectors == 3) block<T, Bytes, R, 3>(X, B + j, Y + j, ld, k, accumulate);
  if (vectors == 2) block<T, Bytes, R, 2>(X, B + j, Y + j, ld, k, accumulate);
  if (vectors == 1) block<T, Bytes, R, 1>(X, B + j, Y + j, ld, k, accumulate);
  tail<T, R>(X, B, Y, ld, k, n, j + vectors * L, accumulate);
}

template <typename T, int Bytes>
__attribute__((always_inline)) inline void small_gemm_impl(const T* X, const T* B, T* Y,
                                                           const Ld& ld, int64_t m, int64_t k,
                                                           int64_t n, bool accumulate) {
  // 3 rows x 4 vectors: 12 accumulators + 4 vectors of B fill the 16 ymm
  // registers (half of AVX-512's 32); each loaded vector of B feeds 3 FMAs.
  int64_t i = 0;
  for (; i + 3 <= m; i += 3) rows<T, Bytes, 3>(X + i * ld.x, B, Y + i * ld.y, ld, k, n, accumulate);
  if (m - i == 2) rows<T, Bytes, 2>(X + i * ld.x, B, Y + i * ld.y, ld, k, n, accumulate);
  if (m - i == 1) rows<T, Bytes, 1>(X + i * ld.x, B, Y + i * ld.y, ld, k, n, accumulate);
}

// Horizontal sums of L vectors at once: lane c of the result is the sum of
// the lanes of acc[c]. Each level adds the two halves of every W-lane group
// of two vectors and interleaves the two results, halving the vector count
// (L, L/2, ..., 1) with two shuffles and one add per pair; the lanes end in
// bit-reversed order, which one last shuffle undoes.
template <int L, int W, bool Hi>
constexpr int fold_index(int i) {
  const int group = i / W, at = i % W;
  const int src = at < W / 2 ? group * W + at : L + group * W + at - W / 2;
  return src + (Hi ? W / 2 : 0);
}
template <int L>
constexpr int bit_reverse(int i) {
  int r = 0;
  for (int b = 1; b < L; b <<= 1, i >>= 1) r = (r << 1) | (i & 1);
  return r;
}
// The lanes Idx... of the concatenation of a and b (0..L-1: a, L..2L-1: b).
// GCC before 12 has only __builtin_shuffle (a mask vector), clang only
// __builtin_shufflevector (the indices as arguments).
template <int... Idx, typename V>
__attribute__((always_inline)) inline V shuffle(const V& a, const V& b) {
#if defined(__clang__) || __GNUC__ >= 12
  return __builtin_shufflevector(a, b, Idx...);
#else
  using Lane = std::decay_t<decltype(a[0])>;
  typedef std::conditional_t<sizeof(Lane) == 4, int32_t, int64_t> Int;
  typedef Int Mask __attribute__((vector_size(sizeof(V))));
  return __builtin_shuffle(a, b, Mask{Idx...});
#endif
}
template <int L, int W, typename V, int... I>
__attribute__((always_inline)) inline V fold(const V& a, const V& b,
                                             std::integer_sequence<int, I...>) {
  return shuffle<fold_index<L, W, false>(I)...>(a, b) + shuffle<fold_index<L, W, true>(I)...>(a, b);
}
template <int L, typename V, int... I>
__attribute__((always_inline)) inline V unreverse(const V& v, std::integer_sequence<int, I...>) {
  return shuffle<bit_reverse<L>(I)...>(v, v);
}
template <int L, typename V>
__attribute__((always_inline)) inline V column_sums(V* acc) {
  using Lanes = std::make_integer_sequence<int, L>;
  int count = L;
  auto level = [&](auto w) {
    for (int q = 0; q < count / 2; ++q)
      acc[q] = fold<L, decltype(w)::value>(acc[2 * q], acc[2 * q + 1], Lanes{});
    count /= 2;
  };
  if constexpr (L >= 16) level(std::integral_constant<int, 16>{});
  if constexpr (L >= 8) level(std::integral_constant<int, 8>{});
  if constexpr (L >= 4) level(std::integral_constant<int, 4>{});
  level(std::integral_constant<int, 2>{});
  return unreverse<L>(acc[0], Lanes{});
}

// Y (m x n) [+]= X (m x k) @ W^T with W (n x k) row-major: each y[i][j] a
// dot product of two contiguous rows. L columns at a time, so each loaded
// vector of X feeds L FMAs into L accumulators (enough to cover the FMA
// latency), whose lanes column_sums adds up into one vector of L outputs.
template <typename T, int Bytes>
__attribute__((always_inline)) inline void small_gemm_nt_impl(const T* X, const T* W, T* Y,
                                                              const Ld& ld, int64_t m, int64_t k,
                                                              int64_t n, bool accumulate) {
  using V = typename Vec<T, Bytes>::type;
  using U = typename Vec<T, Bytes>::unaligned;
  constexpr int L = Vec<T, Bytes>::kLanes;
  const int64_t kv = k / L * L;
  for (int64_t i = 0; i < m; ++i) {
    const T* x = X + i * ld.x;
    T* y = Y + i * ld.y;
    int64_t j = 0;
    for (; j + L <= n; j += L) {
      V acc[L] = {};
      for (int64_t p = 0; p < kv; p += L) {
        const V xv = *reinterpret_cast<const U*>(x + p);
        for (int c = 0; c < L; ++c)
          acc[c] += xv * *reinterpret_cast<const U*>(W + (j + c) * ld.b + p);
      }
      V sums = column_sums<L>(acc);
      for (int64_t q = kv; q < k; ++q)
        for (int c = 0; c < L; ++c) sums[c] += x[q] * W[(j + c) * ld.b + q];
      if (accumulate) sums += *reinterpret_cast<const U*>(y + j);
      *reinterpret_cast<U*>(y + j) = sums;
    }
    for (; j < n; ++j) {
      T s = 0;
      for (int64_t q = 0; q < k; ++q) s += x[q] * W[j * ld.b + q];
      y[j] = accumulate ? y[j] + s : s;
    }
  }
}

}  // namespace rnnattn::cpu::kernels

#pragma GCC diagnostic pop

// The loops of small_gemm and small_gemm_nt (small_gemm.h) as templates over
// the vector width, for small_gemm.cpp to instantiate once per ISA build
// (isa.h) and for tests/cpu_kernels to run the AVX-512 build's logic (64-byte
// vectors) on machines without AVX-512. Everything is always_inline, so it
// is compiled with the ISA of the function it lands in.
#pragma once

#include <algorithm>
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

// Rows [0, m) of one panel of NV vector columns over k: blocks of MR rows
// (their accumulators in registers), then blocks of the 1..MR-1 rows left
// (6 at a time, then 4, 3, 2 or 1; 5 as 3 + 2). Every block re-reads the
// panel of B (k x NV vectors) from L1.
template <typename T, int Bytes, int MR, int NV>
__attribute__((always_inline)) inline void panel(const T* X, const T* B, T* Y, const Ld& ld,
                                                 int64_t m, int64_t k, bool accumulate) {
  int64_t i = 0;
  for (; i + MR <= m; i += MR) block<T, Bytes, MR, NV>(X + i * ld.x, B, Y + i * ld.y, ld, k, accumulate);
  int64_t left = m - i;
  X += i * ld.x;
  Y += i * ld.y;
  if constexpr (MR > 6)
    for (; left >= 6; left -= 6, X += 6 * ld.x, Y += 6 * ld.y)
      block<T, Bytes, 6, NV>(X, B, Y, ld, k, accumulate);
  if (left == 5) {
    block<T, Bytes, 3, NV>(X, B, Y, ld, k, accumulate);
    X += 3 * ld.x;
    Y += 3 * ld.y;
    left = 2;
  }
  if (left == 4) block<T, Bytes, 4, NV>(X, B, Y, ld, k, accumulate);
  if (left == 3) block<T, Bytes, 3, NV>(X, B, Y, ld, k, accumulate);
  if (left == 2) block<T, Bytes, 2, NV>(X, B, Y, ld, k, accumulate);
  if (left == 1) block<T, Bytes, 1, NV>(X, B, Y, ld, k, accumulate);
}

// All m rows, panel by panel: panels of NV vectors, then one panel of the
// remaining whole vectors (so H = 100 or 300 does not fall to scalar code),
// then the scalar tail, three rows at a time.
template <typename T, int Bytes, int MR, int NV>
__attribute__((always_inline)) inline void panels(const T* X, const T* B, T* Y, const Ld& ld,
                                                  int64_t m, int64_t k, int64_t n,
                                                  bool accumulate) {
  constexpr int L = Vec<T, Bytes>::kLanes;
  int64_t j = 0;
  for (; j + NV * L <= n; j += NV * L) panel<T, Bytes, MR, NV>(X, B + j, Y + j, ld, m, k, accumulate);
  const int64_t vectors = (n - j) / L;
  if constexpr (NV > 3)
    if (vectors == 3) panel<T, Bytes, MR, 3>(X, B + j, Y + j, ld, m, k, accumulate);
  if (vectors == 2) panel<T, Bytes, MR, 2>(X, B + j, Y + j, ld, m, k, accumulate);
  if (vectors == 1) panel<T, Bytes, MR, 1>(X, B + j, Y + j, ld, m, k, accumulate);
  j += vectors * L;
  if (j == n) return;
  int64_t i = 0;
  for (; i + 3 <= m; i += 3) tail<T, 3>(X + i * ld.x, B, Y + i * ld.y, ld, k, n, j, accumulate);
  for (; i < m; ++i) tail<T, 1>(X + i * ld.x, B, Y + i * ld.y, ld, k, n, j, accumulate);
}

// k in slices whose panel of B (kc x NV vectors, KiB kibibytes) stays in L1
// for all the row blocks of a panel.
template <typename T, int Bytes, int MR, int NV, int KiB>
__attribute__((always_inline)) inline void sliced_panels(const T* X, const T* B, T* Y,
                                                         const Ld& ld, int64_t m, int64_t k,
                                                         int64_t n, bool accumulate) {
  constexpr int64_t kc_max = KiB * 1024 / (NV * Bytes);
  for (int64_t p = 0; p < k; p += kc_max) {
    const int64_t kc = std::min(kc_max, k - p);
    panels<T, Bytes, MR, NV>(X + p, B + p * ld.b, Y, ld, m, kc, n, accumulate || p > 0);
  }
}

template <typename T, int Bytes>
__attribute__((always_inline)) inline void small_gemm_impl(const T* X, const T* B, T* Y,
                                                           const Ld& ld, int64_t m, int64_t k,
                                                           int64_t n, bool accumulate) {
  // 4 rows: one block of 4 rows x 4 vectors (AVX-512's 32 registers) or x 3
  // (AVX2's 16); as 3 + 1 rows the single row ran at half the speed.
  // Measured standalone on an Intel Xeon (AVX-512), 1 thread, 4x128x512:
  // 49 -> 108 GFLOP/s (AVX-512), 56 -> 89 (AVX2).
  if (m == 4) return panels<T, Bytes, 4, Bytes == 64 ? 4 : 3>(X, B, Y, ld, m, k, n, accumulate);
  // Other rows under 6: blocks of 3 rows x 4 vectors (8-12 accumulators,
  // enough to cover the FMA latency), and at most two of them reuse a panel.
  if (m < 6) return panels<T, Bytes, 3, 4>(X, B, Y, ld, m, k, n, accumulate);
  // From 6 rows, columns outer, rows inner, and k in slices whose panel of
  // B stays in L1 for all the row blocks: walking every column for one row
  // block re-streamed all of B from L2 per row block once B outgrew L1, as
  // a cell's W_hh^T (rows 3H or 4H wide) does. The block fills the
  // registers: AVX2 (16 ymm) 6 rows x 2 vectors, the shape of BLIS's AVX2
  // kernels (12 accumulators + 2 vectors of B + the broadcast), a panel row
  // one 64-byte line, slices of 12 KiB; AVX-512 (32 zmm) 8 rows x 3 vectors
  // (24 + 3 + 1), a panel row three lines, slices of 24 KiB (L1 is 32-48
  // KiB on AVX-512 cores). Measured standalone, 1 thread, GFLOP/s
  // (benchmarks/OPTIMISATIONS.md): AMD EPYC (AVX2), 3x4 rows outer -> 6x2
  // panels: 16x256x384 (B rows 768 wide) 36 -> 53, 16x128x512 45 -> 58,
  // 16x512x64 55 -> 63; Intel Xeon (AVX-512), 6x2 -> 8x3: 16x128x512
  // 106 -> 144, 16x128x128 117 -> 145, 8x128x512 72 -> 150.
  if constexpr (Bytes == 64)
    sliced_panels<T, Bytes, 8, 3, 24>(X, B, Y, ld, m, k, n, accumulate);
  else
    sliced_panels<T, Bytes, 6, 2, 12>(X, B, Y, ld, m, k, n, accumulate);
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

// small_gemm_bf16's loops (small_gemm_bf16.h), AVX-512 + AVX512-BF16
// intrinsics, always_inline into functions built for that target: included
// by small_gemm_bf16.cpp and by tests/cpu_kernels/check_bf16_gemm.cpp.
//
// Like small_gemm's AVX-512 build: blocks of 8 rows x 3 vectors of 16
// columns (24 accumulators, 3 vectors of B, 1 broadcast of 32 registers),
// columns outer and rows inner so that a panel of B is re-read from L1 by
// every row block; the last vector of a row is masked (n need not be a
// multiple of 16, and nothing past n is read or written).
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "small_gemm.h"

#if defined(__x86_64__) && defined(__GNUC__)
#define RNNATTN_TARGET_AVX512BF16 \
  __attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx512bf16,avx2,fma")))
#define RNNATTN_BF16_GEMM_BUILT 1
#else
#define RNNATTN_BF16_GEMM_BUILT 0
#endif

#if RNNATTN_BF16_GEMM_BUILT
namespace rnnattn::cpu::bf16_kernels {

// Rows [0, m) of X (floats, row stride ldx) rounded to bfloat16 (nearest
// even, VCVTNEPS2BF16), kp pairs a row (the last one's high half 0 when k is
// odd), into xp (row stride kp).
RNNATTN_TARGET_AVX512BF16 __attribute__((always_inline)) inline void pack_rows(
    const float* X, int64_t ldx, int64_t m, int64_t k, uint32_t* xp) {
  const int64_t kp = (k + 1) / 2;
  for (int64_t r = 0; r < m; ++r) {
    const float* x = X + r * ldx;
    uint16_t* o = reinterpret_cast<uint16_t*>(xp + r * kp);
    for (int64_t p = 0; p < 2 * kp; p += 16) {
      const int64_t in = std::min<int64_t>(16, k - p);  // floats of X left (k - p <= 0: none)
      const int64_t out = std::min<int64_t>(16, 2 * kp - p);
      const __mmask16 lm = in <= 0 ? 0 : static_cast<__mmask16>((1u << in) - 1);
      const __mmask16 sm = static_cast<__mmask16>((1u << out) - 1);
      const __m256bh h = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(lm, x + p));
      _mm256_mask_storeu_epi16(o + p, sm, reinterpret_cast<const __m256i&>(h));
    }
  }
}

// One R-row x NV-vector block over kc pairs (xp's rows ldxp pairs apart);
// `last` masks the block's last vector.
template <int R, int NV>
RNNATTN_TARGET_AVX512BF16 __attribute__((always_inline)) inline void block(
    const uint32_t* xp, int64_t ldxp, int64_t kc, const uint32_t* B, int64_t ldb, float* Y,
    int64_t ldy, __mmask16 last, bool accumulate) {
  __m512 acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) {
      const __mmask16 mk = v == NV - 1 ? last : static_cast<__mmask16>(0xffff);
      acc[r][v] = accumulate ? _mm512_maskz_loadu_ps(mk, Y + r * ldy + 16 * v) : _mm512_setzero_ps();
    }
  for (int64_t q = 0; q < kc; ++q) {
    __m512i b[NV];
    for (int v = 0; v < NV; ++v)
      b[v] = v == NV - 1 ? _mm512_maskz_loadu_epi32(last, B + q * ldb + 16 * v)
                         : _mm512_loadu_si512(B + q * ldb + 16 * v);
    for (int r = 0; r < R; ++r) {
      const __m512i a = _mm512_set1_epi32(static_cast<int>(xp[r * ldxp + q]));
      for (int v = 0; v < NV; ++v)
        acc[r][v] = _mm512_dpbf16_ps(acc[r][v], (__m512bh)a, (__m512bh)b[v]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) {
      const __mmask16 mk = v == NV - 1 ? last : static_cast<__mmask16>(0xffff);
      _mm512_mask_storeu_ps(Y + r * ldy + 16 * v, mk, acc[r][v]);
    }
}

// All m rows of one panel of NV vectors: blocks of 8 rows, then one block
// of the rows left.
template <int NV>
RNNATTN_TARGET_AVX512BF16 __attribute__((always_inline)) inline void panel(
    const uint32_t* xp, int64_t kp, int64_t kc, const uint32_t* B, int64_t ldb, float* Y,
    int64_t ldy, int64_t m, __mmask16 last, bool accumulate) {
  int64_t i = 0;
  for (; i + 8 <= m; i += 8)
    block<8, NV>(xp + i * kp, kp, kc, B, ldb, Y + i * ldy, ldy, last, accumulate);
  xp += i * kp;
  Y += i * ldy;
  switch (m - i) {
    case 7: return block<7, NV>(xp, kp, kc, B, ldb, Y, ldy, last, accumulate);
    case 6: return block<6, NV>(xp, kp, kc, B, ldb, Y, ldy, last, accumulate);
    case 5: return block<5, NV>(xp, kp, kc, B, ldb, Y, ldy, last, accumulate);
    case 4: return block<4, NV>(xp, kp, kc, B, ldb, Y, ldy, last, accumulate);
    case 3: return block<3, NV>(xp, kp, kc, B, ldb, Y, ldy, last, accumulate);
    case 2: return block<2, NV>(xp, kp, kc, B, ldb, Y, ldy, last, accumulate);
    case 1: return block<1, NV>(xp, kp, kc, B, ldb, Y, ldy, last, accumulate);
    default: return;
  }
}

// Y [+]= (X's packed rows, pairs [q0, q1)) @ (B's pairs [q0, q1)): xp's
// rows kp pairs apart. The pairs in slices of kKc, so that a panel's slice
// of B (kKc x 3 vectors, 24 KiB) stays in L1 for all the row blocks (a step
// at H = 1024 has 512 pairs: 96 KiB a panel, re-read from L2 by every block
// without the slices). With no pairs, Y = 0 unless accumulate.
constexpr int64_t kKc = 128;
RNNATTN_TARGET_AVX512BF16 __attribute__((always_inline)) inline void gemm_packed(
    const uint32_t* xp, int64_t kp, int64_t q0, int64_t q1, const uint32_t* B, int64_t ldb,
    float* Y, int64_t ldy, int64_t m, int64_t n, bool accumulate) {
  for (int64_t j = 0; j < n; j += 48) {
    const int64_t cols = std::min<int64_t>(48, n - j);
    const int nv = static_cast<int>((cols + 15) / 16);
    const int tail = static_cast<int>(cols - 16 * (nv - 1));
    const __mmask16 last = static_cast<__mmask16>(tail == 16 ? 0xffff : (1u << tail) - 1);
    for (int64_t q = q0; q < q1 || q == q0; q += kKc) {  // once when q0 = q1
      const int64_t kc = std::min(kKc, q1 - q);
      const bool acc = accumulate || q > q0;
      const uint32_t* b = B + q * ldb + j;
      if (nv == 3) panel<3>(xp + q, kp, kc, b, ldb, Y + j, ldy, m, last, acc);
      if (nv == 2) panel<2>(xp + q, kp, kc, b, ldb, Y + j, ldy, m, last, acc);
      if (nv == 1) panel<1>(xp + q, kp, kc, b, ldb, Y + j, ldy, m, last, acc);
    }
  }
}

// Y [+]= bf16(X) @ B; xp: scratch of m * ((k + 1) / 2) uint32.
RNNATTN_TARGET_AVX512BF16 __attribute__((always_inline)) inline void gemm(
    const float* X, const uint32_t* B, float* Y, const Ld& ld, int64_t m, int64_t k, int64_t n,
    bool accumulate, uint32_t* xp) {
  const int64_t kp = (k + 1) / 2;
  pack_rows(X, ld.x, m, k, xp);
  gemm_packed(xp, kp, 0, kp, B, ld.b, Y, ld.y, m, n, accumulate);
}

}  // namespace rnnattn::cpu::bf16_kernels
#endif

// Rows of float32 rounded to bfloat16 into two layouts at once: as they are
// (rows x cols) and transposed (cols x rows), from one pass over the float32
// rows. bf16_convert.cpp builds it (round_to_bf16_with_transpose,
// bf16_bits.h).
//
// Why: a bfloat16 backward over the whole sequence (half_layer.h
// whole_weight_grads) makes dW_ih = dG^T X and dW_hh = dG^T H from the gate
// grads of every row. Handed dG as stored (rows x G), the library's GEMM
// reads its transpose, a view whose reduction runs down the columns, and
// re-lays it out inside the call. Measured with torch.mm in bfloat16 on a
// 2-core Xeon (AMX), 2 threads, 6400 rows, G = 4096: dG^T X (I = 512) 25.2
// ms on the view, 11.3 ms on dG^T made contiguous; dG^T H (H = 1024) 51.7
// against 23.1 ms. ATen's own transposing copy (dg.t().contiguous()) took 40
// ms, more than it saves; this pass writes dG^T beside the rows it already
// rounds.
//
// The AVX-512 build rounds 32 rows x 16 columns at a time: each two rows'
// bfloat16 values are paired into 32-bit lanes (row 2p in the low half,
// row 2p + 1 in the high half), and a 16 x 16 transpose of those lanes
// leaves every column's 32 values in row order, one 64-byte store each,
// streamed past the caches where aligned. Standalone, one thread, 25
// chunks of 256 x 4096 (rows 5120 floats apart) into 6400 x 4096: 8 ms
// for the rows alone (round_to_bf16), 25 ms with the transpose stored
// plainly (tiles down the columns; 39 ms along the rows), 16 ms streamed
// along the rows.
#pragma once

#include <cstdint>
#include <cstring>

#include "bf16_bits.h"
#include "bf16_lanes.h"
#include "isa.h"

#if RNNATTN_X86_DISPATCH
#include <immintrin.h>
#endif

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"

namespace rnnattn::cpu::kernels {

// Where the outputs go: dst (rows ld apart) and dst_t (rows ld_t apart);
// sums (null: none): src's column sums, in float32, added to what it holds
// (the bias grads).
struct RoundedPair {
  uint16_t* dst;
  int64_t ld;
  uint16_t* dst_t;
  int64_t ld_t;
  float* sums = nullptr;
};

// Rows [r0, r1) x columns [c0, c1) of src (rows ld_src apart), value by
// value: dst[r][j] = dst_t[j][r] = bf16(src[r][j]), sums[j] += src[r][j].
inline void round_with_transpose_plain(const float* src, int64_t ld_src, const RoundedPair& o,
                                       int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
  for (int64_t r = r0; r < r1; ++r)
    for (int64_t j = c0; j < c1; ++j) {
      const uint16_t b = bf16_bits(src[r * ld_src + j]);
      o.dst[r * o.ld + j] = b;
      o.dst_t[j * o.ld_t + r] = b;
      if (o.sums != nullptr) o.sums[j] += src[r * ld_src + j];
    }
}

// Rows [r0, r1) x columns [c0, c1) of bfloat16 src transposed:
// dst_t[j][r] = src[r][j].
inline void transpose_bf16_plain(const uint16_t* src, int64_t ld_src, uint16_t* dst_t,
                                 int64_t ld_t, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
  for (int64_t r = r0; r < r1; ++r)
    for (int64_t j = c0; j < c1; ++j) dst_t[j * ld_t + r] = src[r * ld_src + j];
}

#if RNNATTN_X86_DISPATCH
using Dwords16 = Bf16Lanes<16>::u;

// Lanes of a and b by index (0-15: a's, 16-31: b's): one VPERMT2D. (Not
// GCC's __builtin_shuffle, which clang lacks; the unpack intrinsics draw
// GCC 12's false -Wmaybe-uninitialized.)
RNNATTN_TARGET_AVX512 __attribute__((always_inline)) inline Dwords16 shuffle2(const Dwords16& a,
                                                                            const Dwords16& b,
                                                                            __m512i idx) {
  return (Dwords16)_mm512_permutex2var_epi32((__m512i)a, idx, (__m512i)b);
}

// p[k] (16 32-bit lanes each, a row) becomes column k. Four rounds of
// two-source shuffles: lanes of rows i and i + 1 interleaved in each
// 128-bit quarter, then 64-bit pairs, then quarters across pairs of rows
// four apart, then halves.
RNNATTN_TARGET_AVX512 __attribute__((always_inline)) inline void transpose_16x16(Dwords16 p[16]) {
  const __m512i lo32 = _mm512_setr_epi32(0, 16, 1, 17, 4, 20, 5, 21, 8, 24, 9, 25, 12, 28, 13, 29);
  const __m512i hi32 =
      _mm512_setr_epi32(2, 18, 3, 19, 6, 22, 7, 23, 10, 26, 11, 27, 14, 30, 15, 31);
  const __m512i lo64 = _mm512_setr_epi32(0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29);
  const __m512i hi64 =
      _mm512_setr_epi32(2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31);
  const __m512i even128 =
      _mm512_setr_epi32(0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27);
  const __m512i odd128 =
      _mm512_setr_epi32(4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
  Dwords16 t[16];
#pragma GCC unroll 16
  for (int i = 0; i < 16; i += 2) {
    t[i] = shuffle2(p[i], p[i + 1], lo32);
    t[i + 1] = shuffle2(p[i], p[i + 1], hi32);
  }
  // Now in each 128-bit quarter q: column 4q + k of rows 4i..4i+3 in p[4i + k].
#pragma GCC unroll 16
  for (int i = 0; i < 16; i += 4) {
    p[i] = shuffle2(t[i], t[i + 2], lo64);
    p[i + 1] = shuffle2(t[i], t[i + 2], hi64);
    p[i + 2] = shuffle2(t[i + 1], t[i + 3], lo64);
    p[i + 3] = shuffle2(t[i + 1], t[i + 3], hi64);
  }
#pragma GCC unroll 16
  for (int h = 0; h < 16; h += 8)
#pragma GCC unroll 16
    for (int k = 0; k < 4; ++k) {
      t[h + k] = shuffle2(p[h + k], p[h + k + 4], even128);
      t[h + k + 4] = shuffle2(p[h + k], p[h + k + 4], odd128);
    }
#pragma GCC unroll 16
  for (int k = 0; k < 8; ++k) {
    p[k] = shuffle2(t[k], t[k + 8], even128);
    p[k + 8] = shuffle2(t[k], t[k + 8], odd128);
  }
}

// 32 rows x 16 columns: from src (rows ld_src apart) into dst (rows ld
// apart) and dst_t (16 rows ld_t apart), their 16 column sums added to
// sums where not null. (Pointers by value: through the RoundedPair
// reference, GCC reloaded dst_t after every store.)
RNNATTN_TARGET_AVX512 __attribute__((always_inline)) inline void round_with_transpose_tile(
    const float* __restrict src, int64_t ld_src, uint16_t* __restrict dst, int64_t ld,
    uint16_t* __restrict dst_t, int64_t ld_t, float* __restrict sums) {
  using Half16 = Bf16Lanes<16>::h;
  const LaneIo<16> io{16};
  Dwords16 p[16];
  Lanes<16>::f total{};
#pragma GCC unroll 16
  for (int q = 0; q < 16; ++q) {
    const Lanes<16>::f a = io.load(src + 2 * q * ld_src), b = io.load(src + (2 * q + 1) * ld_src);
    total += a + b;
    const Dwords16 lo = round_bf16_lanes<16>(a);
    const Dwords16 hi = round_bf16_lanes<16>(b);
    const Half16 lo16 = __builtin_convertvector(lo, Half16);
    const Half16 hi16 = __builtin_convertvector(hi, Half16);
    std::memcpy(dst + 2 * q * ld, &lo16, sizeof lo16);
    std::memcpy(dst + (2 * q + 1) * ld, &hi16, sizeof hi16);
    p[q] = lo | hi << 16;
  }
  if (sums != nullptr) io.store(sums, io.load(sums) + total);
  transpose_16x16(p);
  // dst_t is read only after the walk, by the library's GEMM: stored past
  // the caches where each row's piece is a whole aligned line.
  if ((reinterpret_cast<uintptr_t>(dst_t) | ld_t * sizeof(uint16_t)) % 64 == 0) {
#pragma GCC unroll 16
    for (int k = 0; k < 16; ++k)
      _mm512_stream_si512(reinterpret_cast<__m512i*>(dst_t + k * ld_t), (__m512i)p[k]);
  } else {
#pragma GCC unroll 16
    for (int k = 0; k < 16; ++k) std::memcpy(dst_t + k * ld_t, &p[k], sizeof p[k]);
  }
}

// Columns [c0, c1) of every row: whole tiles, then the rows past the last
// multiple of 32 and the columns past the last multiple of 16 in plain
// loops. The tiles go along 32 rows at a time: src and dst are read and
// written in 32 streams of consecutive rows' pieces, and each tile writes
// whole 64-byte lines of dst_t.
RNNATTN_TARGET_AVX512 __attribute__((always_inline)) inline void round_with_transpose_avx512(
    const float* src, int64_t ld_src, int64_t rows, const RoundedPair& o, int64_t c0,
    int64_t c1) {
  const int64_t R = rows / 32 * 32, C = c0 + (c1 - c0) / 16 * 16;
  for (int64_t r = 0; r < R; r += 32)
    for (int64_t c = c0; c < C; c += 16)
      round_with_transpose_tile(src + r * ld_src + c, ld_src, o.dst + r * o.ld + c, o.ld,
                                o.dst_t + c * o.ld_t + r, o.ld_t,
                                o.sums != nullptr ? o.sums + c : nullptr);
  _mm_sfence();  // the streamed stores ordered before what follows
  round_with_transpose_plain(src, ld_src, o, 0, R, C, c1);
  round_with_transpose_plain(src, ld_src, o, R, rows, c0, c1);
}

// A bfloat16 matrix transposed the same way, 32 rows x 16 columns a tile
// (no rounding, no rows kept): W_hh^T for the backward's packed weight
// (half_layer.h), where ATen's transposing copy of a 4096 x 1024 bfloat16
// W_hh took 4.4 ms on 2 threads of the Xeon (AMX), 8.4 ms in the LSTM's
// backward.
RNNATTN_TARGET_AVX512 __attribute__((always_inline)) inline void transpose_bf16_tile(
    const uint16_t* __restrict src, int64_t ld_src, uint16_t* __restrict dst_t, int64_t ld_t) {
  using Half16 = Bf16Lanes<16>::h;
  Dwords16 p[16];
#pragma GCC unroll 16
  for (int q = 0; q < 16; ++q) {
    Half16 lo, hi;
    std::memcpy(&lo, src + 2 * q * ld_src, sizeof lo);
    std::memcpy(&hi, src + (2 * q + 1) * ld_src, sizeof hi);
    p[q] = __builtin_convertvector(lo, Dwords16) | __builtin_convertvector(hi, Dwords16) << 16;
  }
  transpose_16x16(p);
#pragma GCC unroll 16
  for (int k = 0; k < 16; ++k) std::memcpy(dst_t + k * ld_t, &p[k], sizeof p[k]);
}

RNNATTN_TARGET_AVX512 __attribute__((always_inline)) inline void transpose_bf16_avx512(
    const uint16_t* src, int64_t ld_src, int64_t rows, uint16_t* dst_t, int64_t ld_t, int64_t c0,
    int64_t c1) {
  const int64_t R = rows / 32 * 32, C = c0 + (c1 - c0) / 16 * 16;
  for (int64_t c = c0; c < C; c += 16)
    for (int64_t r = 0; r < R; r += 32)
      transpose_bf16_tile(src + r * ld_src + c, ld_src, dst_t + c * ld_t + r, ld_t);
  transpose_bf16_plain(src, ld_src, dst_t, ld_t, 0, R, C, c1);
  transpose_bf16_plain(src, ld_src, dst_t, ld_t, R, rows, c0, c1);
}
#endif

}  // namespace rnnattn::cpu::kernels

#pragma GCC diagnostic pop

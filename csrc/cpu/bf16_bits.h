// float32 <-> bfloat16 as raw 16-bit patterns (c10::BFloat16's conversion
// tests for NaN with a branch per value). The large bfloat16 steps that go
// to the library's bfloat16 GEMM (recurrence.h, LayerPtrs::w_hh16) round
// their left operand and widen its product with these, a few hundred
// thousand values a step.
#pragma once

#include <cstdint>
#include <cstring>

namespace rnnattn::cpu {

// Round to nearest even, as c10::BFloat16 does; NaN stays a (quiet) NaN
// (the carry of the rounding would turn a NaN with only low mantissa bits
// into infinity).
inline uint16_t bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  return static_cast<uint16_t>(f != f ? 0x7fc0u : rounded);
}

inline float bf16_value(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// dst[j] = bf16(src[j]) and dst[j] (+)= src[j] widened, j < n: these
// loops vectorized for the CPU's ISA level (bf16_convert.cpp, from
// bf16_lanes.h's lanes).
void round_to_bf16(const float* src, int64_t n, uint16_t* dst);
void widen_bf16(const uint16_t* src, int64_t n, float* dst, bool accumulate);

// src (rows x cols, rows ld_src apart) rounded to bfloat16 both into dst
// (rows ld apart) and transposed into dst_t (cols x rows, rows ld_t apart),
// in one pass over src on all threads (bf16_transpose.h); src's column
// sums added to col_sums (cols floats) where not null.
void round_to_bf16_with_transpose(const float* src, int64_t ld_src, int64_t rows, int64_t cols,
                                  uint16_t* dst, int64_t ld, uint16_t* dst_t, int64_t ld_t,
                                  float* col_sums = nullptr);
// dst_t (cols x rows, rows ld_t apart) = bfloat16 src (rows x cols, rows
// ld_src apart) transposed, on all threads.
void transpose_bf16(const uint16_t* src, int64_t ld_src, int64_t rows, int64_t cols,
                    uint16_t* dst_t, int64_t ld_t);

}  // namespace rnnattn::cpu

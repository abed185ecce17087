// The bfloat16 row conversions of bf16_bits.h (round_to_bf16, widen_bf16),
// the loops of bf16_lanes.h built for each ISA level: 8 lanes for the
// baseline and AVX2 builds, 16 for AVX-512.
//
// Why: as plain loops in a header they were compiled into the engine's
// translation units at the baseline build's SSE width. The large bfloat16
// steps (recurrence.h lib_step) widen a step's product and round its state
// with them, and the half-precision layers convert their chunks' rows: in
// `perf` of the LSTM (64,100,512,1024) bfloat16 forward on a 2-core Xeon
// (AMX), 8% of the samples (benchmarks/OPTIMISATIONS.md).
#include "bf16_bits.h"

#include <ATen/Parallel.h>

#include <algorithm>

#include "bf16_lanes.h"
#include "bf16_transpose.h"
#include "isa.h"

#pragma GCC diagnostic ignored "-Wpsabi"

namespace rnnattn::cpu {
namespace {

namespace k = kernels;

RNNATTN_TARGET_AVX512 void round_avx512(const float* src, int64_t n, uint16_t* dst) {
  k::round_row_lanes<16>(src, n, dst);
}
RNNATTN_TARGET_AVX2 void round_avx2(const float* src, int64_t n, uint16_t* dst) {
  k::round_row_lanes<8>(src, n, dst);
}
void round_base(const float* src, int64_t n, uint16_t* dst) { k::round_row_lanes<8>(src, n, dst); }

RNNATTN_TARGET_AVX512 void widen_avx512(const uint16_t* src, int64_t n, float* dst, bool acc) {
  k::widen_row_lanes<16>(src, n, dst, acc);
}
RNNATTN_TARGET_AVX2 void widen_avx2(const uint16_t* src, int64_t n, float* dst, bool acc) {
  k::widen_row_lanes<8>(src, n, dst, acc);
}
void widen_base(const uint16_t* src, int64_t n, float* dst, bool acc) {
  k::widen_row_lanes<8>(src, n, dst, acc);
}

#if RNNATTN_X86_DISPATCH
RNNATTN_TARGET_AVX512 void transpose_avx512(const uint16_t* src, int64_t ld_src, int64_t rows,
                                            uint16_t* dst_t, int64_t ld_t, int64_t c0,
                                            int64_t c1) {
  k::transpose_bf16_avx512(src, ld_src, rows, dst_t, ld_t, c0, c1);
}
RNNATTN_TARGET_AVX512 void round_transpose_avx512(const float* src, int64_t ld_src, int64_t rows,
                                                  const k::RoundedPair& o, int64_t c0,
                                                  int64_t c1) {
  k::round_with_transpose_avx512(src, ld_src, rows, o, c0, c1);
}
#endif

}  // namespace

void round_to_bf16(const float* src, int64_t n, uint16_t* dst) {
  switch (cpu_isa()) {
    case Isa::kAvx512: return round_avx512(src, n, dst);
    case Isa::kAvx2: return round_avx2(src, n, dst);
    default: return round_base(src, n, dst);
  }
}

void widen_bf16(const uint16_t* src, int64_t n, float* dst, bool accumulate) {
  switch (cpu_isa()) {
    case Isa::kAvx512: return widen_avx512(src, n, dst, accumulate);
    case Isa::kAvx2: return widen_avx2(src, n, dst, accumulate);
    default: return widen_base(src, n, dst, accumulate);
  }
}

namespace {

// f(c0, c1) over [0, cols) in blocks of 64 columns dealt to the threads:
// whole tiles of bf16_transpose.h, and whole 128-byte pieces of each row
// of bfloat16.
template <typename F>
void for_column_blocks(int64_t cols, const F& f) {
  constexpr int64_t kBlock = 64;
  at::parallel_for(0, (cols + kBlock - 1) / kBlock, 1, [&](int64_t b0, int64_t b1) {
    f(b0 * kBlock, std::min(cols, b1 * kBlock));
  });
}

}  // namespace

void round_to_bf16_with_transpose(const float* src, int64_t ld_src, int64_t rows, int64_t cols,
                                  uint16_t* dst, int64_t ld, uint16_t* dst_t, int64_t ld_t,
                                  float* col_sums) {
  const k::RoundedPair o{dst, ld, dst_t, ld_t, col_sums};
  for_column_blocks(cols, [&](int64_t c0, int64_t c1) {
#if RNNATTN_X86_DISPATCH
    if (cpu_isa() == Isa::kAvx512) return round_transpose_avx512(src, ld_src, rows, o, c0, c1);
#endif
    k::round_with_transpose_plain(src, ld_src, o, 0, rows, c0, c1);
  });
}

void transpose_bf16(const uint16_t* src, int64_t ld_src, int64_t rows, int64_t cols,
                    uint16_t* dst_t, int64_t ld_t) {
  for_column_blocks(cols, [&](int64_t c0, int64_t c1) {
#if RNNATTN_X86_DISPATCH
    if (cpu_isa() == Isa::kAvx512) return transpose_avx512(src, ld_src, rows, dst_t, ld_t, c0, c1);
#endif
    k::transpose_bf16_plain(src, ld_src, dst_t, ld_t, 0, rows, c0, c1);
  });
}

}  // namespace rnnattn::cpu

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

#include "bf16_lanes.h"
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

}  // namespace rnnattn::cpu

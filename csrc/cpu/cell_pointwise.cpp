// The cells' float pointwise steps (cell_pointwise.h), the loops of
// cell_kernels.h built for each ISA level: 8 lanes for the baseline and
// AVX2 builds, 16 for AVX-512.
#include "cell_pointwise.h"

#include "cell_kernels.h"
#include "isa.h"

// GCC reports the vectors passed by value inside the kernels (never across
// a call: they are always_inline) once more at the end of this file.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace rnnattn::cpu {
namespace {

namespace k = kernels;

RNNATTN_TARGET_AVX2 void lstm_forward_avx2(const CellRow<float>& r, const float* bias, int64_t H,
                                           int64_t c0, int64_t c1) {
  k::lstm_forward_lanes<8>(r, bias, H, c0, c1);
}
RNNATTN_TARGET_AVX512 void lstm_forward_avx512(const CellRow<float>& r, const float* bias,
                                               int64_t H, int64_t c0, int64_t c1) {
  k::lstm_forward_lanes<16>(r, bias, H, c0, c1);
}
RNNATTN_TARGET_AVX2 void lstm_backward_avx2(const CellRow<float>& r, int64_t H, int64_t c0,
                                            int64_t c1) {
  k::lstm_backward_lanes<8>(r, H, c0, c1);
}
RNNATTN_TARGET_AVX512 void lstm_backward_avx512(const CellRow<float>& r, int64_t H, int64_t c0,
                                                int64_t c1) {
  k::lstm_backward_lanes<16>(r, H, c0, c1);
}
RNNATTN_TARGET_AVX2 void gru_forward_avx2(const CellRow<float>& r, const float* bias, int64_t H,
                                          int64_t c0, int64_t c1) {
  k::gru_forward_lanes<8>(r, bias, H, c0, c1);
}
RNNATTN_TARGET_AVX512 void gru_forward_avx512(const CellRow<float>& r, const float* bias,
                                              int64_t H, int64_t c0, int64_t c1) {
  k::gru_forward_lanes<16>(r, bias, H, c0, c1);
}
RNNATTN_TARGET_AVX2 void gru_backward_avx2(const CellRow<float>& r, int64_t H, int64_t c0,
                                           int64_t c1) {
  k::gru_backward_lanes<8>(r, H, c0, c1);
}
RNNATTN_TARGET_AVX512 void gru_backward_avx512(const CellRow<float>& r, int64_t H, int64_t c0,
                                               int64_t c1) {
  k::gru_backward_lanes<16>(r, H, c0, c1);
}

}  // namespace

void lstm_forward_f32(const CellRow<float>& r, const float* bias, int64_t H, int64_t c0,
                      int64_t c1) {
  switch (cpu_isa()) {
    case Isa::kAvx512: return lstm_forward_avx512(r, bias, H, c0, c1);
    case Isa::kAvx2: return lstm_forward_avx2(r, bias, H, c0, c1);
    default: return k::lstm_forward_lanes<8>(r, bias, H, c0, c1);
  }
}

void lstm_backward_f32(const CellRow<float>& r, int64_t H, int64_t c0, int64_t c1) {
  switch (cpu_isa()) {
    case Isa::kAvx512: return lstm_backward_avx512(r, H, c0, c1);
    case Isa::kAvx2: return lstm_backward_avx2(r, H, c0, c1);
    default: return k::lstm_backward_lanes<8>(r, H, c0, c1);
  }
}

void gru_forward_f32(const CellRow<float>& r, const float* bias, int64_t H, int64_t c0,
                     int64_t c1) {
  switch (cpu_isa()) {
    case Isa::kAvx512: return gru_forward_avx512(r, bias, H, c0, c1);
    case Isa::kAvx2: return gru_forward_avx2(r, bias, H, c0, c1);
    default: return k::gru_forward_lanes<8>(r, bias, H, c0, c1);
  }
}

void gru_backward_f32(const CellRow<float>& r, int64_t H, int64_t c0, int64_t c1) {
  switch (cpu_isa()) {
    case Isa::kAvx512: return gru_backward_avx512(r, H, c0, c1);
    case Isa::kAvx2: return gru_backward_avx2(r, H, c0, c1);
    default: return k::gru_backward_lanes<8>(r, H, c0, c1);
  }
}

}  // namespace rnnattn::cpu

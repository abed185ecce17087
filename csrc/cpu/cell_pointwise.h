// The GRU and LSTM cells' pointwise steps for float rows (and the Elman
// RNN's fused bfloat16 step), vectorized (cell_kernels.h) and built once
// per ISA level (isa.h), picked at run time.
// cells.h calls them for float; double keeps the plain loops there (the
// precision the tests check). Defined in cell_pointwise.cpp.
#pragma once

#include <cstdint>

#include "cell_row.h"

namespace rnnattn::cpu {

void lstm_forward_f32(const CellRow<float>& r, const float* bias, int64_t H, int64_t c0,
                      int64_t c1);
void lstm_backward_f32(const CellRow<float>& r, int64_t H, int64_t c0, int64_t c1);
void gru_forward_f32(const CellRow<float>& r, const float* bias, int64_t H, int64_t c0,
                     int64_t c1);
void gru_backward_f32(const CellRow<float>& r, int64_t H, int64_t c0, int64_t c1);
// The Elman RNN's fused large bfloat16 step (CellRow::r16); its unfused
// float step is activation.h's activate_row.
void rnn_forward_fused_f32(const CellRow<float>& r, const float* bias, int64_t c0, int64_t c1,
                           bool relu);

}  // namespace rnnattn::cpu

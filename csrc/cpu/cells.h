// The three recurrent cells as policies of the one recurrence engine
// (recurrence.h): each says how many gate blocks its weights have, how its
// rows are laid out, and does the pointwise forward and backward of one
// batch row over a range [c0, c1) of hidden units (float rows in one
// vectorized pass, cell_kernels.h; double in the plain loops below, the
// precision the tests check). Everything sequential, every GEMM and every
// thread split is the engine's. The math and the gate order are torch's
// (../shared/DESIGN.md section 3).
//
// Row layouts, in blocks of H columns:
//   reserve ("ws", what the backward reads; the input projection A = x W_ih^T
//   is written there first and the step's recurrent GEMM R = h W_hh^T is
//   added to its first kSumGates blocks; in inference only the first kGates
//   blocks exist and the rest is step scratch):
//     RNN   [h]                    (the reserve is the output itself)
//     GRU   [r, z, n, R_n + b_hn]  (R_n is kept apart: n = tanh(A_n + r R_n))
//     LSTM  [i, f, g, o, c]
//   gate grads ("dg"; the first kGates blocks are dA = dL/dA, and dR = dL/dR
//   is the same for the first kSumGates blocks, the rest follow kGates):
//     RNN   [dz]   GRU [dA_r, dA_z, dA_n, dR_n]   LSTM [di, df, dg, do]
//
// Each cell's float forward also takes CellRow's r16 / h16 (the large
// bfloat16 steps' R and rounded h_t, recurrence.h lib_step) in its one
// pass: the fused bfloat16 step.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "activation.h"
#include "cell_pointwise.h"
#include "cell_row.h"

namespace rnnattn::cpu {

// Elman RNN: h = act(A + R + b_ih + b_hh).
struct RnnCell {
  static constexpr int kGates = 1;
  static constexpr int kSumGates = 1;
  static constexpr int kWsBlocks = 1;
  static constexpr int kGradBlocks = 1;
  static constexpr bool kHasCell = false;
  static constexpr bool kDirectGrad = false;  // dh_{t-1} = dR W_hh only
  bool relu = false;

  template <typename T>
  void forward(const CellRow<T>& r, const T* bias, int64_t, int64_t c0, int64_t c1) const {
    if constexpr (std::is_same_v<T, float>)
      if (r.r16 != nullptr) return rnn_forward_fused_f32(r, bias, c0, c1, relu);
    activate_row(r.ws + c0, r.h_next + c0, bias + c0, c1 - c0, relu);
  }

  template <typename T>
  void backward(const CellRow<T>& r, int64_t, int64_t c0, int64_t c1) const {
    activation_grad_row(r.gout + c0, r.dh + c0, r.ws + c0, r.dg + c0, c1 - c0, relu);
  }
};

// GRU (gates r, z, n): bias = [b_ir + b_hr, b_iz + b_hz, b_in, b_hn].
struct GruCell {
  static constexpr int kGates = 3;
  static constexpr int kSumGates = 2;
  static constexpr int kWsBlocks = 4;
  static constexpr int kGradBlocks = 4;
  static constexpr bool kHasCell = false;
  static constexpr bool kDirectGrad = true;  // dh_{t-1} = dh z + dR W_hh

  template <typename T>
  void forward(const CellRow<T>& r, const T* bias, int64_t H, int64_t c0, int64_t c1) const {
    if constexpr (std::is_same_v<T, float>) return gru_forward_f32(r, bias, H, c0, c1);
    T* rg = r.ws;
    T* zg = r.ws + H;
    T* ng = r.ws + 2 * H;
    T* rn = r.rest;
    const int64_t n = c1 - c0;
    activate(Act::kSigmoid, rg + c0, bias + c0, n);
    activate(Act::kSigmoid, zg + c0, bias + H + c0, n);
#pragma omp simd
    for (int64_t j = c0; j < c1; ++j) {
      rn[j] += bias[3 * H + j];
      ng[j] += bias[2 * H + j] + rg[j] * rn[j];
    }
    activate<T>(Act::kTanh, ng + c0, nullptr, n);
#pragma omp simd
    for (int64_t j = c0; j < c1; ++j) {
      // torch's form of (1 - z) n + z h.
      const T h = ng[j] + zg[j] * (r.h_prev[j] - ng[j]);
      r.h_out[j] = h;
      r.h_next[j] = h;
    }
  }

  template <typename T>
  void backward(const CellRow<T>& r, int64_t H, int64_t c0, int64_t c1) const {
    if constexpr (std::is_same_v<T, float>) return gru_backward_f32(r, H, c0, c1);
    const T* rg = r.ws;
    const T* zg = r.ws + H;
    const T* ng = r.ws + 2 * H;
    const T* rn = r.rest;
#pragma omp simd
    for (int64_t j = c0; j < c1; ++j) {
      const T dh = r.gout[j] + r.dh[j];
      const T rv = rg[j], zv = zg[j], nv = ng[j];
      const T da_n = dh * (T(1) - zv) * (T(1) - nv * nv);
      r.dg[j] = da_n * rn[j] * rv * (T(1) - rv);
      r.dg[H + j] = dh * (r.h_prev[j] - nv) * zv * (T(1) - zv);
      r.dg[2 * H + j] = da_n;
      r.dg[3 * H + j] = da_n * rv;
      r.dh[j] = dh * zv;
    }
  }
};

// LSTM (gates i, f, g, o): bias = b_ih + b_hh.
struct LstmCell {
  static constexpr int kGates = 4;
  static constexpr int kSumGates = 4;
  static constexpr int kWsBlocks = 5;
  static constexpr int kGradBlocks = 4;
  static constexpr bool kHasCell = true;
  static constexpr bool kDirectGrad = false;

  template <typename T>
  void forward(const CellRow<T>& r, const T* bias, int64_t H, int64_t c0, int64_t c1) const {
    if constexpr (std::is_same_v<T, float>) return lstm_forward_f32(r, bias, H, c0, c1);
    T* ig = r.ws;
    T* fg = r.ws + H;
    T* gg = r.ws + 2 * H;
    T* og = r.ws + 3 * H;
    const int64_t n = c1 - c0;
    activate(Act::kSigmoid, ig + c0, bias + c0, n);
    activate(Act::kSigmoid, fg + c0, bias + H + c0, n);
    activate(Act::kTanh, gg + c0, bias + 2 * H + c0, n);
    activate(Act::kSigmoid, og + c0, bias + 3 * H + c0, n);
#pragma omp simd
    for (int64_t j = c0; j < c1; ++j) {
      const T c = fg[j] * r.c[j] + ig[j] * gg[j];
      r.c[j] = c;
      r.h_out[j] = c;
    }
    if (r.c_keep != nullptr) std::copy(r.c + c0, r.c + c1, r.c_keep + c0);
    activate<T>(Act::kTanh, r.h_out + c0, nullptr, n);
    if (r.h_next != nullptr) {
#pragma omp simd
      for (int64_t j = c0; j < c1; ++j) r.h_next[j] = r.h_out[j] = og[j] * r.h_out[j];
    } else {
#pragma omp simd
      for (int64_t j = c0; j < c1; ++j) r.h_out[j] = og[j] * r.h_out[j];
    }
  }

  template <typename T>
  void backward(const CellRow<T>& r, int64_t H, int64_t c0, int64_t c1) const {
    if constexpr (std::is_same_v<T, float>) return lstm_backward_f32(r, H, c0, c1);
    const T* ig = r.ws;
    const T* fg = r.ws + H;
    const T* gg = r.ws + 2 * H;
    const T* og = r.ws + 3 * H;
    const T* cs = r.ws + 4 * H;
    T* tc = r.tmp;
    for (int64_t j = c0; j < c1; ++j) tc[j] = cs[j];
    activate<T>(Act::kTanh, tc + c0, nullptr, c1 - c0);
#pragma omp simd
    for (int64_t j = c0; j < c1; ++j) {
      const T dh = r.gout[j] + r.dh[j];
      const T iv = ig[j], fv = fg[j], gv = gg[j], ov = og[j], t = tc[j];
      const T dc = r.c[j] + dh * ov * (T(1) - t * t);
      r.dg[j] = dc * gv * iv * (T(1) - iv);
      r.dg[H + j] = dc * r.c_prev[j] * fv * (T(1) - fv);
      r.dg[2 * H + j] = dc * iv * (T(1) - gv * gv);
      r.dg[3 * H + j] = dh * t * ov * (T(1) - ov);
      r.c[j] = dc * fv;
    }
  }
};

}  // namespace rnnattn::cpu

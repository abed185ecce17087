// The GRU and LSTM cells' pointwise steps for float rows (cells.h) as
// templates over the lane count N, for cell_pointwise.cpp to instantiate
// once per ISA build (isa.h) and for tests/cpu_kernels to check at both
// widths. One pass over a row's units does a cell's whole step: every gate's
// activation (activation_kernels.h, whose for_lanes / LaneIo walk the row),
// the state update and the stores.
//
// Why: written as plain loops in cells.h, the step made one call per gate
// activation and ran its other loops at the baseline build's SSE width (the
// extension is compiled without -march), and went over the row once per
// gate and once more per loop. On a 2-core AMD EPYC (Zen 4, AVX-512), LSTM
// (16,100,64,128) forward, that pointwise part took about as long as the
// step's GEMM (benchmarks/OPTIMISATIONS.md).
//
// The math, the gate order and the order of operations are those of the
// plain loops (torch's: ../shared/DESIGN.md section 3), so results differ
// from the double path only by float rounding.
#pragma once

#include <cstdint>

#include "activation_kernels.h"
#include "bf16_lanes.h"
#include "cell_row.h"

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"

namespace rnnattn::cpu::kernels {

// LSTM forward over units [c0, c1) of one row (cells.h LstmCell::forward):
// gates i, f, g, o = sigmoid, sigmoid, tanh, sigmoid of (ws + bias),
// stored back into ws; c = f c + i g (and into c_keep unless null); h = o
// tanh(c) into h_out, and h_next unless null. kFused (a fused large
// bfloat16 step, CellRow::r16): the gates of ((A + r16) + bias), A from
// a16 unless null, and h into h16 too; a build of its own, so that the
// float32 steps' loop carries none of it. There, with a16, ws may be null:
// the gates are not kept (inference), or kept rounded in ws16 with c_t
// (training); and h goes into h16_out rounded instead of into h_out where
// h_out is null.
template <int N, bool kFused = false, Recip R = Recip::kDivide>
__attribute__((always_inline)) inline void lstm_forward_lanes(const CellRow<float>& r,
                                                              const float* bias, int64_t H,
                                                              int64_t c0, int64_t c1) {
  static_assert(kFused || R == Recip::kDivide, "the float32 steps divide");
  using V = typename Lanes<N>::f;
  const bool keep = !kFused || r.ws != nullptr;  // the gates into ws
  float* ws = keep ? r.ws + c0 : nullptr;
  const float* b = bias + c0;
  float* c = r.c + c0;
  float* c_keep = r.c_keep ? r.c_keep + c0 : nullptr;
  float* h_out = r.h_out ? r.h_out + c0 : nullptr;  // null: kFused's h16_out instead
  float* h_next = r.h_next ? r.h_next + c0 : nullptr;
  const uint16_t* r16 = r.r16;  // at unit c0 already
  const int64_t gr = r.r16_gate;
  const uint16_t* a16 = r.a16 ? r.a16 + c0 : nullptr;
  uint16_t* h16 = r.h16 ? r.h16 + c0 : nullptr;
  uint16_t* h16_out = r.h16_out ? r.h16_out + c0 : nullptr;
  uint16_t* ws16 = kFused && r.ws16 ? r.ws16 + c0 : nullptr;
  for_lanes<N>(c1 - c0, [&](int64_t j, int m) __attribute__((always_inline)) {
    const LaneIo<N> io{m};
    // (A + R) + bias, in the order of the unfused steps (R widened into ws first).
    auto pre = [&](int64_t g) __attribute__((always_inline)) {
      if constexpr (kFused) {
        const V a = a16 ? load_bf16_lanes<N>(a16 + g * H + j, m) : io.load(ws + g * H + j);
        return (a + load_bf16_lanes<N>(r16 + g * gr + j, m)) + io.load(b + g * H + j);
      } else {
        return io.load(ws + g * H + j) + io.load(b + g * H + j);
      }
    };
    const V i = sigmoid_lanes<N, R>(pre(0));
    const V f = sigmoid_lanes<N, R>(pre(1));
    const V g = tanh_lanes<N, R>(pre(2));
    const V o = sigmoid_lanes<N, R>(pre(3));
    if (keep) {
      io.store(ws + j, i);
      io.store(ws + H + j, f);
      io.store(ws + 2 * H + j, g);
      io.store(ws + 3 * H + j, o);
    }
    const V cn = f * io.load(c + j) + i * g;
    io.store(c + j, cn);
    if (c_keep) io.store(c_keep + j, cn);
    if constexpr (kFused) {
      if (ws16) {
        store_bf16_lanes<N>(ws16 + j, i, m);
        store_bf16_lanes<N>(ws16 + H + j, f, m);
        store_bf16_lanes<N>(ws16 + 2 * H + j, g, m);
        store_bf16_lanes<N>(ws16 + 3 * H + j, o, m);
        store_bf16_lanes<N>(ws16 + 4 * H + j, cn, m);
      }
    }
    const V h = o * tanh_lanes<N, R>(cn);
    if (!kFused || h_out) io.store(h_out + j, h);
    if (h_next) io.store(h_next + j, h);
    if constexpr (kFused) {
      store_bf16_lanes<N>(h16 + j, h, m);
      if (h16_out) store_bf16_lanes<N>(h16_out + j, h, m);
    }
  });
}

// LSTM backward over units [c0, c1) of one row (LstmCell::backward): from
// the kept gates and c_t (ws) and dh = gout + dh, the gate grads into dg and
// dc_{t-1} = dc f into c (which holds dc_t on entry).
template <int N>
__attribute__((always_inline)) inline void lstm_backward_lanes(const CellRow<float>& r, int64_t H,
                                                               int64_t c0, int64_t c1) {
  using V = typename Lanes<N>::f;
  const float* ws = r.ws + c0;
  const float* gout = r.gout + c0;
  const float* dhp = r.dh + c0;
  const float* c_prev = r.c_prev + c0;
  float* c = r.c + c0;
  float* dg = r.dg + c0;
  for_lanes<N>(c1 - c0, [&](int64_t j, int m) __attribute__((always_inline)) {
    const LaneIo<N> io{m};
    const V dh = io.load(gout + j) + io.load(dhp + j);
    const V iv = io.load(ws + j), fv = io.load(ws + H + j), gv = io.load(ws + 2 * H + j);
    const V ov = io.load(ws + 3 * H + j);
    const V t = tanh_lanes<N>(io.load(ws + 4 * H + j));
    const V dc = io.load(c + j) + dh * ov * (1.f - t * t);
    io.store(dg + j, dc * gv * iv * (1.f - iv));
    io.store(dg + H + j, dc * io.load(c_prev + j) * fv * (1.f - fv));
    io.store(dg + 2 * H + j, dc * iv * (1.f - gv * gv));
    io.store(dg + 3 * H + j, dh * t * ov * (1.f - ov));
    io.store(c + j, dc * fv);
  });
}

// GRU forward over units [c0, c1) of one row (GruCell::forward): r, z =
// sigmoid(ws + bias); R_n += b_hn (kept in rest); n = tanh(A_n + b_in +
// r R_n); h = n + z (h_prev - n) into h_out and h_next; r, z, n into ws.
// kFused (a fused large bfloat16 step, CellRow::r16, as the LSTM's): r, z
// of ((A + r16) + bias), R_n from r16, A from a16 unless null, and h into
// h16 too; with a16, ws and rest may be null (r, z, n and R_n not kept, or
// kept rounded in ws16), and h goes into h16_out instead of h_out where
// h_out is null.
template <int N, bool kFused = false, Recip R = Recip::kDivide>
__attribute__((always_inline)) inline void gru_forward_lanes(const CellRow<float>& r,
                                                             const float* bias, int64_t H,
                                                             int64_t c0, int64_t c1) {
  static_assert(kFused || R == Recip::kDivide, "the float32 steps divide");
  using V = typename Lanes<N>::f;
  const bool keep = !kFused || r.ws != nullptr;  // r, z, n into ws, R_n into rest
  float* ws = keep ? r.ws + c0 : nullptr;
  float* rn = keep ? r.rest + c0 : nullptr;
  const float* b = bias + c0;
  const float* h_prev = r.h_prev + c0;
  float* h_out = r.h_out ? r.h_out + c0 : nullptr;  // null: kFused's h16_out instead
  float* h_next = r.h_next + c0;
  const uint16_t* r16 = r.r16;  // at unit c0 already
  const int64_t gr = r.r16_gate;
  const uint16_t* a16 = r.a16 ? r.a16 + c0 : nullptr;
  uint16_t* h16 = r.h16 ? r.h16 + c0 : nullptr;
  uint16_t* h16_out = r.h16_out ? r.h16_out + c0 : nullptr;
  uint16_t* ws16 = kFused && r.ws16 ? r.ws16 + c0 : nullptr;
  for_lanes<N>(c1 - c0, [&](int64_t j, int m) __attribute__((always_inline)) {
    const LaneIo<N> io{m};
    auto a = [&](int64_t g) __attribute__((always_inline)) {
      if constexpr (kFused)
        if (a16) return load_bf16_lanes<N>(a16 + g * H + j, m);
      return io.load(ws + g * H + j);
    };
    // A + R of the summed gates, in the order of the unfused steps.
    auto sum = [&](int64_t g) __attribute__((always_inline)) {
      if constexpr (kFused) return a(g) + load_bf16_lanes<N>(r16 + g * gr + j, m);
      return a(g);
    };
    const V rv = sigmoid_lanes<N, R>(sum(0) + io.load(b + j));
    const V zv = sigmoid_lanes<N, R>(sum(1) + io.load(b + H + j));
    V rn_in;
    if constexpr (kFused) {
      rn_in = load_bf16_lanes<N>(r16 + 2 * gr + j, m);
    } else {
      rn_in = io.load(rn + j);
    }
    const V rnv = rn_in + io.load(b + 3 * H + j);
    const V nv = tanh_lanes<N, R>(a(2) + (io.load(b + 2 * H + j) + rv * rnv));
    if (keep) {
      io.store(ws + j, rv);
      io.store(ws + H + j, zv);
      io.store(ws + 2 * H + j, nv);
      io.store(rn + j, rnv);
    }
    if constexpr (kFused) {
      if (ws16) {  // R_n at 3H, as ws and rest are laid out in a reserve row
        store_bf16_lanes<N>(ws16 + j, rv, m);
        store_bf16_lanes<N>(ws16 + H + j, zv, m);
        store_bf16_lanes<N>(ws16 + 2 * H + j, nv, m);
        store_bf16_lanes<N>(ws16 + 3 * H + j, rnv, m);
      }
    }
    // torch's form of (1 - z) n + z h.
    const V h = nv + zv * (io.load(h_prev + j) - nv);
    if (!kFused || h_out) io.store(h_out + j, h);
    io.store(h_next + j, h);
    if constexpr (kFused) {
      store_bf16_lanes<N>(h16 + j, h, m);
      if (h16_out) store_bf16_lanes<N>(h16_out + j, h, m);
    }
  });
}

// The Elman RNN's fused large bfloat16 step over units [c0, c1) of one
// row (RnnCell, CellRow::r16): h = act((A + r16) + bias), act tanh or relu
// (relu(NaN) NaN, as activate_row), the order of operations of the unfused
// step (R widened and added into A's float32 row, then act(row + bias)).
// A from a16 unless null, else from ws (the Elman RNN's reserve is its
// output row, where A waits; ws is then h_out). h into h_out unless null
// (then into h16_out, rounded), h_next, and rounded into h16. One pass
// instead of the unfused step's three (widen R, activate, round h_t) and
// the chunk's two (A widened into the output, the output rounded).
template <int N, bool kRelu, Recip R = Recip::kDivide>
__attribute__((always_inline)) inline void rnn_forward_fused_lanes(const CellRow<float>& r,
                                                                   const float* bias, int64_t c0,
                                                                   int64_t c1) {
  using V = typename Lanes<N>::f;
  using VI = typename Lanes<N>::i;
  const float* ws = r.a16 ? nullptr : r.ws + c0;
  const float* b = bias + c0;
  float* h_out = r.h_out ? r.h_out + c0 : nullptr;
  float* h_next = r.h_next + c0;
  const uint16_t* r16 = r.r16;  // at unit c0 already
  const uint16_t* a16 = r.a16 ? r.a16 + c0 : nullptr;
  uint16_t* h16 = r.h16 + c0;
  uint16_t* h16_out = r.h16_out ? r.h16_out + c0 : nullptr;
  for_lanes<N>(c1 - c0, [&](int64_t j, int m) __attribute__((always_inline)) {
    const LaneIo<N> io{m};
    const V a = a16 ? load_bf16_lanes<N>(a16 + j, m) : io.load(ws + j);
    const V z = (a + load_bf16_lanes<N>(r16 + j, m)) + io.load(b + j);
    V h;
    if constexpr (kRelu) {
      h = (V)((VI)z & ((z > 0.f) | (z != z)));  // z where z > 0 or NaN, else +0
    } else {
      h = tanh_lanes<N, R>(z);
    }
    if (h_out) io.store(h_out + j, h);
    io.store(h_next + j, h);
    store_bf16_lanes<N>(h16 + j, h, m);
    if (h16_out) store_bf16_lanes<N>(h16_out + j, h, m);
  });
}

// GRU backward over units [c0, c1) of one row (GruCell::backward): the gate
// grads [dA_r, dA_z, dA_n, dR_n] into dg and the direct part of dh_{t-1},
// dh z, into dh.
template <int N>
__attribute__((always_inline)) inline void gru_backward_lanes(const CellRow<float>& r, int64_t H,
                                                              int64_t c0, int64_t c1) {
  using V = typename Lanes<N>::f;
  const float* ws = r.ws + c0;
  const float* rn = r.rest + c0;
  const float* gout = r.gout + c0;
  const float* h_prev = r.h_prev + c0;
  float* dhp = r.dh + c0;
  float* dg = r.dg + c0;
  for_lanes<N>(c1 - c0, [&](int64_t j, int m) __attribute__((always_inline)) {
    const LaneIo<N> io{m};
    const V dh = io.load(gout + j) + io.load(dhp + j);
    const V rv = io.load(ws + j), zv = io.load(ws + H + j), nv = io.load(ws + 2 * H + j);
    const V da_n = dh * (1.f - zv) * (1.f - nv * nv);
    io.store(dg + j, da_n * io.load(rn + j) * rv * (1.f - rv));
    io.store(dg + H + j, dh * (io.load(h_prev + j) - nv) * zv * (1.f - zv));
    io.store(dg + 2 * H + j, da_n);
    io.store(dg + 3 * H + j, da_n * rv);
    io.store(dhp + j, dh * zv);
  });
}

}  // namespace rnnattn::cpu::kernels

#pragma GCC diagnostic pop

// Tensor-level forward and backward of one layer and direction for any cell:
// allocation, the cell's combined bias and the layout of the reserve around
// the pointer-level engine (recurrence.h). The ops (rnn.cpp, gru_lstm.cpp)
// check their arguments and call these.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "../rnn_common.h"
#include "prefault.h"
#include "recurrence.h"

namespace rnnattn::cpu {

// A (..., W) tensor as rows of W values a fixed stride apart, with that
// stride. One direction's half of a bidirectional layer's output (and of its
// grad) is such a view: the backward reads it in place instead of copying
// it. Any other layout is made contiguous.
inline std::pair<at::Tensor, int64_t> as_rows(const at::Tensor& t) {
  const int64_t W = t.size(-1);
  if (t.stride(-1) == 1) {
    int64_t ld = -1, next = 0;  // next: the stride the next outer dim must have
    bool uniform = true;
    for (int64_t d = t.dim() - 2; d >= 0 && uniform; --d) {
      if (t.size(d) == 1) continue;
      if (ld < 0) {
        ld = t.stride(d);
      } else {
        uniform = t.stride(d) == next;
      }
      next = t.stride(d) * t.size(d);
    }
    if (ld < 0) ld = W;  // a single row
    if (uniform && ld >= W) return {t, ld};
  }
  return {t.contiguous(), W};
}

inline at::Tensor opt_contiguous(const c10::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? t->contiguous() : at::Tensor();
}

template <typename T>
T* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

// The cell's bias as its pointwise step reads it (cells.h): b_ih + b_hh for
// the gates whose A and R add, then b_ih of the others, then their b_hh;
// zeros without biases. Filled by plain loops: for a small layer each ATen
// op costs microseconds, as much as several steps.
template <typename Cell, typename T>
void fill_cell_bias(const at::Tensor& b_ih, const at::Tensor& b_hh, int64_t H, T* bias) {
  const CellLayout<Cell> L{H};
  const int64_t n = L.gates() + L.rest_cols();
  if (!b_ih.defined()) {
    std::fill(bias, bias + n, T(0));
    return;
  }
  const T* bi = b_ih.data_ptr<T>();
  const T* bh = b_hh.data_ptr<T>();
  for (int64_t j = 0; j < L.sum_cols(); ++j) bias[j] = bi[j] + bh[j];
  for (int64_t j = L.sum_cols(); j < L.gates(); ++j) bias[j] = bi[j];
  for (int64_t j = 0; j < L.rest_cols(); ++j) bias[L.gates() + j] = bh[L.sum_cols() + j];
}

// dst (cols x rows) = src (rows x cols)^T, in 16 x 16 tiles. Row by row, a
// power-of-two row length makes the writes' lines share a few L1 sets and
// evict each other: W_hh^T at H = 128 took ~36 us that way, 1/5 of a
// bfloat16 RNN forward at (16,100,64,128) that made it once per chunk of
// steps (perf; half_layer.h); tiled, half that.
template <typename T>
__attribute__((noinline)) void transpose(const T* __restrict src, int64_t rows, int64_t cols,
                                         T* __restrict dst) {
  constexpr int64_t kTile = 16;
  for (int64_t i0 = 0; i0 < rows; i0 += kTile)
    for (int64_t j0 = 0; j0 < cols; j0 += kTile) {
      const int64_t i1 = std::min(rows, i0 + kTile), j1 = std::min(cols, j0 + kTile);
      for (int64_t j = j0; j < j1; ++j)
        for (int64_t i = i0; i < i1; ++i) dst[j * rows + i] = src[i * cols + j];
    }
}

// The scratch of steps that multiply through the library's bfloat16 GEMM
// (LayerPtrs::w_hh16): n bfloat16 values, x16's then y16's; undefined
// without w_hh16. Only float32 calls without a projection take them.
inline at::Tensor bf16_step_scratch(const at::Tensor& w_hh16, const at::Tensor& h0,
                                    const at::Tensor& w_hr, int64_t n) {
  if (!w_hh16.defined()) return at::Tensor();
  TORCH_CHECK(w_hh16.scalar_type() == at::kBFloat16 && w_hh16.is_contiguous() &&
                  h0.scalar_type() == at::kFloat && !w_hr.defined(),
              "rnnattn: library bfloat16 steps need a contiguous bfloat16 W_hh and a float32 "
              "call without a projection");
  return at::empty({n}, h0.options().dtype(at::kBFloat16));
}

template <typename T>
void set_bf16_steps(LayerPtrs<T>& p, const at::Tensor& w_hh16, const at::Tensor& scratch,
                    int64_t x16_size, const at::Tensor& w_hh16_packed) {
  auto bits = [](const at::Tensor& t) {
    return reinterpret_cast<uint16_t*>(const_cast<at::BFloat16*>(t.data_ptr<at::BFloat16>()));
  };
  p.w_hh16 = bits(w_hh16);
  p.x16 = bits(scratch);
  p.y16 = p.x16 + x16_size;
  p.w_hh16_packed = w_hh16_packed.defined() ? &w_hh16_packed : nullptr;
}

struct LayerForward {
  at::Tensor output, h_n, c_n, reserve;  // c_n, reserve: undefined where the cell has none
};

template <typename Cell>
LayerForward forward_layer_op(const Cell& cell, const RnnShape& s, const StepSchedule& sched,
                              const at::Tensor& input, const at::Tensor& hx,
                              const c10::optional<at::Tensor>& cx, const at::Tensor& w_ih,
                              const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_ih,
                              const c10::optional<at::Tensor>& b_hh,
                              const c10::optional<at::Tensor>& w_hr, bool reverse,
                              bool train = true, const at::Tensor& a_given = at::Tensor(),
                              bool pack_w_hh = true, const at::Tensor& w_hh_t = at::Tensor(),
                              const at::Tensor& w_ih_t_pairs = at::Tensor(),
                              const at::Tensor& w_hh16 = at::Tensor(),
                              const std::vector<at::Tensor>& w_hh16_packed = {},
                              const at::Tensor& out16 = at::Tensor(),
                              bool state_in_place = false,
                              const at::Tensor& reserve16 = at::Tensor()) {
  // a_given: A = X W_ih^T, (rows, gates) in any floating dtype, computed by
  // the caller (half.h); input is then read for its shape only, and may be
  // of another dtype than the rest. pack_w_hh: LayerPtrs::pack. w_hh_t:
  // W_hh^T (Hs, gates) made by the caller, read by the small steps instead
  // of the call's own (a half-precision call's chunks share one); int32:
  // its bfloat16 pairs ((Hs + 1) / 2, gates), LayerPtrs::w_hh_t_bf16.
  // w_ih_t_pairs: with those, W_ih^T's bfloat16 pairs ((I + 1) / 2, gates):
  // the steps make A themselves (LayerPtrs::w_ih_t_bf16) from the float32
  // input. w_hh16: W_hh in bfloat16 (a float32 call without a projection):
  // the large steps multiply through the library's bfloat16 GEMM
  // (LayerPtrs::w_hh16), on w_hh16_packed where given: W_hh in oneDNN's
  // layout, one weight (LayerPtrs::w_hh16_packed) or one per unit part
  // (LayerPtrs::w_hh16_parts). out16: the output rows in bfloat16 (rows,
  // Hs), contiguous, where the caller rounds the output to bfloat16: where
  // A stays in bfloat16 (a16 below) the steps write h_t there
  // (LayerPtrs::out16) and the returned output is undefined. reserve16:
  // likewise the reserve rows in bfloat16 (rows, kWsBlocks * H) in
  // training, which the fused steps write (LayerPtrs::ws16) where A stays
  // in bfloat16; the returned reserve is then empty (else the float32 rows
  // as without it).
  // state_in_place: hx (and cx) are contiguous tensors of the call's dtype
  // that the caller owns and gives up: the steps update them in place and
  // they are returned as h_n (c_n), without a copy (a half-precision call's
  // chunks, whose state passes from one to the next). At (64,100,512,1024)
  // an LSTM chunk's set-up took ~95 us, most of it copying 768 KiB of
  // state; without the copies the bfloat16 forward measured 1.014x (GRU
  // 1.024x), alternating processes on a 2-core Xeon: within its noise.
  constexpr bool kOutputIsReserve = Cell::kWsBlocks == 1;  // the Elman RNN
  const CellLayout<Cell> L{s.hidden};
  const int64_t H = s.hidden, Hs = s.state, B = s.batch;
  auto x = a_given.defined() ? input : input.contiguous();
  auto wi = w_ih.contiguous();
  auto wh = w_hh.contiguous();
  auto h0 = hx.contiguous();
  auto bi = opt_contiguous(b_ih), bh = opt_contiguous(b_hh), wr = opt_contiguous(w_hr);
  auto c0 = opt_contiguous(cx);
  const auto opts = h0.options();
  std::vector<int64_t> out_shape(input.sizes().begin(), input.sizes().end());
  out_shape.back() = Hs;
  LayerForward r;
  // Inference keeps A and the activations only, for kInputChunkSteps steps
  // at a time (see LayerPtrs); the op then returns an empty reserve.
  const int64_t ws_cols = (train ? Cell::kWsBlocks : Cell::kGates) * H;
  // Where the steps make their own A (w_ih_t_pairs, no projection),
  // inference keeps one step's rows.
  // (recurrence.h step_input: with W_hh^T's pairs too, float32 only.)
  TORCH_CHECK(!w_ih_t_pairs.defined() || (w_hh_t.defined() && w_hh_t.scalar_type() == at::kInt &&
                                          x.scalar_type() == at::kFloat),
              "rnnattn: W_ih^T's bfloat16 pairs need W_hh^T's and a float32 call");
  // A given in bfloat16 stays so where every step is a fused large
  // bfloat16 step (LayerPtrs::a16): the steps' batch only shrinks, so
  // where the last is past small_step's size, so are the others.
  const bool a16 = a_given.defined() && a_given.scalar_type() == at::kBFloat16 &&
                   a_given.is_contiguous() && w_hh16.defined() &&
                   !wr.defined() && sched.steps() > 0 &&
                   !small_step<Cell>(sched.batch.back(), Hs, L.gates());
  const bool to_out16 = a16 && out16.defined();
  TORCH_INTERNAL_ASSERT(!to_out16 || (out16.scalar_type() == at::kBFloat16 &&
                                      out16.is_contiguous() && out16.numel() == s.rows * Hs));
  if (!to_out16) r.output = at::empty(out_shape, opts);
  const bool to_res16 = a16 && train && !kOutputIsReserve && reserve16.defined();
  TORCH_INTERNAL_ASSERT(!to_res16 || (reserve16.scalar_type() == at::kBFloat16 &&
                                      reserve16.is_contiguous() &&
                                      reserve16.numel() == s.rows * Cell::kWsBlocks * H));
  // The steps' float32 rows: one step's where nothing reads them after it
  // (inference, or a reserve the fused steps write in bfloat16).
  const bool ws_one_step = (!train || to_res16) && !kOutputIsReserve &&
                           (w_ih_t_pairs.defined() || a16) && !wr.defined();
  const int64_t ws_steps = !train && !kOutputIsReserve && !a_given.defined() && !ws_one_step &&
                                   sched.steps() > kInputChunkSteps
                               ? kInputChunkSteps
                               : 0;
  const int64_t ws_rows = ws_one_step ? std::min(s.rows, B)
                          : ws_steps > 0 ? std::min(s.rows, ws_steps * B)
                                         : s.rows;
  at::Tensor ws = kOutputIsReserve ? at::Tensor() : at::empty({ws_rows, ws_cols}, opts);
  if (train && ws.defined()) prefault_for_write(ws);
  at::Tensor rest = train || L.rest_cols() == 0 ? at::Tensor() : at::empty({B, L.rest_cols()}, opts);
  const bool in_place = state_in_place && h0.is_same(hx) && (!Cell::kHasCell || c0.is_same(*cx));
  r.h_n = in_place ? h0 : at::empty({B, Hs}, opts);
  if (Cell::kHasCell) r.c_n = in_place ? c0 : at::empty({B, H}, opts);
  // The small-step path multiplies by W_hh^T; some step takes it when the
  // last step (the fewest rows) does. Transposing W_hh costs about as much
  // as kTransposeMinRows rows of steps: calls with fewer rows in all (a
  // streaming step at batch 1) read W_hh as stored instead (small_gemm_nt).
  constexpr int64_t kTransposeMinRows = 4;
  const bool small = small_step<Cell>(sched.batch[sched.steps() - 1], Hs, L.gates()) &&
                     s.rows >= kTransposeMinRows;
  // The call's scratch in one allocation (at::empty made up ~20% of a
  // streaming step's op under perf, most of it these small buffers): the
  // second state buffer (B, Hs), the projection's input (B, H), the cell's
  // bias, and W_hh^T (Hs, gates).
  const int64_t n_spare = B * Hs, n_m = wr.defined() ? B * H : 0,
                n_bias = L.gates() + L.rest_cols(),
                n_wh_t = small && !w_hh_t.defined() ? Hs * L.gates() : 0;
  at::Tensor scratch = at::empty({n_spare + n_m + n_bias + n_wh_t}, opts);
  if (a_given.defined() && !a16)
    copy_to_float(a_given,
                  (kOutputIsReserve ? r.output.view({s.rows, Hs}) : ws).narrow(1, 0, L.gates()));
  const bool parts16 = w_hh16_packed.size() > 1;
  at::Tensor scratch16 =
      bf16_step_scratch(w_hh16, h0, wr, B * (Hs + L.gates() + (parts16 ? Hs : 0)));
  AT_DISPATCH_FLOATING_TYPES(h0.scalar_type(), "rnnattn::recurrent_forward", [&] {
    using T = scalar_t;
    T* spare = scratch.data_ptr<T>();
    T* m = n_m ? spare + n_spare : nullptr;
    T* bias = spare + n_spare + n_m;
    const bool pairs = w_hh_t.defined() && w_hh_t.scalar_type() == at::kInt;
    T* wt = !small || pairs ? nullptr : w_hh_t.defined() ? w_hh_t.data_ptr<T>() : bias + n_bias;
    const T* h0p = h0.data_ptr<T>();
    if (!in_place) std::copy(h0p, h0p + B * Hs, r.h_n.data_ptr<T>());
    // The second state buffer needs hx only in the rows of a step with
    // fewer rows than the batch (forward_layer).
    if (sched.steps() > 0 && (sched.full_steps() < sched.steps() || sched.batch[0] < B))
      std::copy(h0p, h0p + B * Hs, spare);
    if (Cell::kHasCell && !in_place)
      std::copy(c0.data_ptr<T>(), c0.data_ptr<T>() + B * H, r.c_n.data_ptr<T>());
    fill_cell_bias<Cell, T>(bi, bh, H, bias);
    if (small && !w_hh_t.defined()) transpose(wh.data_ptr<T>(), L.gates(), Hs, wt);
    LayerPtrs<T> p;
    p.x = a_given.defined() ? nullptr : x.data_ptr<T>();
    p.a_given = a_given.defined();
    if (a16) p.a16 = bf16_bits_of(a_given);
    p.w_ih = wi.data_ptr<T>();
    p.w_hh = wh.data_ptr<T>();
    p.w_hh_t = wt;
    if (pairs) {  // every step takes them (recurrence.h)
      constexpr bool is_float = std::is_same_v<T, float>;
      TORCH_CHECK(is_float, "rnnattn: bfloat16 pairs of W_hh^T with a ",
                  h0.scalar_type(), " call");
      p.w_hh_t_bf16 = reinterpret_cast<const uint32_t*>(w_hh_t.data_ptr<int32_t>());
      if (w_ih_t_pairs.defined())
        p.w_ih_t_bf16 = reinterpret_cast<const uint32_t*>(w_ih_t_pairs.data_ptr<int32_t>());
    }
    if (w_hh16.defined()) {
      set_bf16_steps(p, w_hh16, scratch16, B * Hs,
                     w_hh16_packed.size() == 1 ? w_hh16_packed[0] : at::Tensor());
      if (parts16) {
        p.w_hh16_parts = &w_hh16_packed;
        p.x16_next = p.y16 + B * L.gates();
      }
    }
    p.w_hr = ptr_or_null<T>(wr);
    p.bias = bias;
    p.out = ptr_or_null<T>(r.output);
    p.ld_out = Hs;
    if (to_out16) p.out16 = bf16_bits_of(out16);
    if (to_res16) p.ws16 = bf16_bits_of(reserve16);
    p.ws = kOutputIsReserve ? p.out : ws.data_ptr<T>();
    p.ld_ws = kOutputIsReserve ? Hs : ws_cols;
    p.train = train;
    p.rest = ptr_or_null<T>(rest);
    p.ws_steps = ws_steps;
    p.ws_one_step = ws_one_step;
    p.pack = pack_w_hh;
    const T* last = forward_layer<T>(cell, s, sched, p, r.h_n.data_ptr<T>(), spare,
                                     Cell::kHasCell ? r.c_n.data_ptr<T>() : nullptr, m, reverse);
    if (last == spare) std::copy(spare, spare + B * Hs, r.h_n.data_ptr<T>());
  });
  if (!kOutputIsReserve) r.reserve = train && !to_res16 ? ws : at::empty({0}, opts);
  return r;
}

struct LayerGrads {
  // Undefined where not asked for or not part of the cell; db_hh only where
  // it differs from db_ih (the GRU).
  at::Tensor dx, dhx, dcx, dw_ih, dw_hh, db_ih, db_hh, dw_hr;
};

// m = o tanh(c) of every row, from an LSTM reserve (the projection's input).
template <typename T>
void projection_inputs(const T* ws, int64_t rows, int64_t H, T* m) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* w = ws + r * 5 * H;
    T* mr = m + r * H;
    std::copy(w + 4 * H, w + 5 * H, mr);
    activate<T>(Act::kTanh, mr, nullptr, H);
    for (int64_t j = 0; j < H; ++j) mr[j] *= w[3 * H + j];
  }
}

template <typename Cell>
LayerGrads backward_layer_op(const Cell& cell, const RnnShape& s, const StepSchedule& sched,
                             const at::Tensor& grad_output, const at::Tensor& grad_hn,
                             const c10::optional<at::Tensor>& grad_cn, const at::Tensor& input,
                             const at::Tensor& hx, const c10::optional<at::Tensor>& cx,
                             const at::Tensor& w_ih, const at::Tensor& w_hh,
                             const c10::optional<at::Tensor>& w_hr, const at::Tensor& output,
                             const c10::optional<at::Tensor>& reserve, bool reverse,
                             bool need_input_grad, bool need_weight_grad, bool pack_w_hh = true,
                             const LayerGrads* sum = nullptr,
                             const at::Tensor& w_hh_pairs = at::Tensor(),
                             at::Tensor* dg_out = nullptr,
                             const at::Tensor& w_hh16 = at::Tensor(),
                             const at::Tensor& w_hh16_packed = at::Tensor()) {
  // sum: float32 weight and bias grads the call adds its own to (and
  // returns), instead of allocating them: a half-precision call's sum over
  // its chunks of steps (half_layer.h). pack_w_hh: LayerPtrs::pack.
  // w_hh_pairs: W_hh in bfloat16 pairs, LayerPtrs::w_hh_bf16 (float only).
  // dg_out: the walk only (with no grads asked for); its gate grads
  // (rows, kGradBlocks * H) go to *dg_out for the caller's own GEMMs. Where
  // *dg_out is defined on entry, the walk writes them there (rows x at least
  // kGradBlocks * H, unit column stride, rows any distance apart): it may be
  // the reserve's first columns, as the cells read a row's reserve before
  // they write that row's grads over it, unit by unit, and read it no more
  // (cells.h; the LSTM's c_t sits past them).
  // w_hh16: W_hh in bfloat16, LayerPtrs::w_hh16 (float only);
  // w_hh16_packed: W_hh^T in oneDNN's layout, LayerPtrs::w_hh16_packed.
  constexpr bool kOutputIsReserve = Cell::kWsBlocks == 1;
  const CellLayout<Cell> L{s.hidden};
  const int64_t H = s.hidden, Hs = s.state, B = s.batch, N = s.rows;
  const bool dg_given = dg_out != nullptr && dg_out->defined();
  TORCH_INTERNAL_ASSERT(!dg_given || (dg_out->dim() == 2 && dg_out->size(0) == N &&
                                      dg_out->size(1) >= Cell::kGradBlocks * H &&
                                      dg_out->stride(1) == 1 &&
                                      dg_out->stride(0) >= Cell::kGradBlocks * H &&
                                      dg_out->scalar_type() == input.scalar_type()));
  at::Tensor dg = dg_given ? *dg_out : at::empty({N, Cell::kGradBlocks * H}, input.options());
  if (!dg_given) prefault_for_write(dg);
  const int64_t ld_dg = dg.stride(0);
  auto x = input.contiguous();
  auto h0 = hx.contiguous();
  auto c0 = opt_contiguous(cx);
  auto wi = w_ih.contiguous();
  auto wh = w_hh.contiguous();
  auto wr = opt_contiguous(w_hr);
  auto ws = opt_contiguous(reserve);
  const bool proj = wr.defined();
  const auto opts = x.options();
  at::Tensor out;
  int64_t ld_out;
  std::tie(out, ld_out) = as_rows(output);
  LayerGrads r;
  r.dhx = grad_hn.contiguous().clone();  // g: grad_hn -> grad_hx
  if (Cell::kHasCell) r.dcx = grad_cn->contiguous().clone();
  // The LSTM's double backward keeps tanh(c_t) in tmp; float does it in
  // registers (cell_kernels.h).
  at::Tensor tmp =
      Cell::kHasCell && x.scalar_type() != at::kFloat ? at::empty({B, H}, opts) : at::Tensor();
  at::Tensor gh = proj ? at::empty({N, Hs}, opts) : at::Tensor();
  at::Tensor dm = proj ? at::empty({B, H}, opts) : at::Tensor();
  at::Tensor zeros = proj ? at::zeros({H}, opts) : at::Tensor();
  // Where the walk runs on one thread, dX and dW_ih of each chunk of steps
  // are made on a second one while the walk goes on (StepsDone), so they
  // are allocated first (no packed W_hh on that path to wait for).
  const int64_t overlap = need_input_grad || need_weight_grad
                              ? overlap_steps<Cell>(s, sched, L.gates(), proj, true)
                              : 0;
  auto none = [&] { return at::empty({0}, opts); };
  const bool acc = sum != nullptr;
  const LayerGrads given = acc ? *sum : LayerGrads{};
  auto weight_grad = [&](const at::Tensor& total, auto make) {
    return !need_weight_grad ? none() : acc ? total : make();
  };
  at::Tensor scratch16 = bf16_step_scratch(w_hh16, h0, wr, B * (L.gates() + Hs));
  if (overlap > 0) {
    r.dx = need_input_grad ? at::empty(input.sizes(), opts) : none();
    r.dw_ih = weight_grad(given.dw_ih, [&] { return at::empty_like(wi); });
  }
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rnnattn::recurrent_backward", [&] {
    using T = scalar_t;
    auto [gout, ld_gout] = as_rows(grad_output);
    LayerPtrs<T> p;
    p.hx = h0.data_ptr<T>();
    p.cx = ptr_or_null<T>(c0);
    p.w_hh = wh.data_ptr<T>();
    if (w_hh_pairs.defined()) {
      constexpr bool is_float = std::is_same_v<T, float>;
      TORCH_CHECK(is_float, "rnnattn: bfloat16 pairs of W_hh with a ", x.scalar_type(), " call");
      p.w_hh_bf16 = reinterpret_cast<const uint32_t*>(w_hh_pairs.data_ptr<int32_t>());
    }
    if (w_hh16.defined()) set_bf16_steps(p, w_hh16, scratch16, B * L.gates(), w_hh16_packed);
    p.w_hr = ptr_or_null<T>(wr);
    p.out = out.data_ptr<T>();
    p.ld_out = ld_out;
    p.ws = kOutputIsReserve ? p.out : ws.data_ptr<T>();
    p.ld_ws = kOutputIsReserve ? ld_out : Cell::kWsBlocks * H;
    p.pack = pack_w_hh;
    p.x = x.data_ptr<T>();
    p.w_ih = wi.data_ptr<T>();
    T* dx = need_input_grad && overlap > 0 ? r.dx.data_ptr<T>() : nullptr;
    T* dw_ih = need_weight_grad && overlap > 0 ? r.dw_ih.data_ptr<T>() : nullptr;
    const T* dgp = dg.data_ptr<T>();
    const int64_t T_ = sched.steps();
    bool first = true;  // dW_ih's first chunk overwrites it, unless summing (acc)
    StepsDone done;
    done.steps = overlap;
    done.run = [&](int64_t i0, int64_t i1) {  // walk steps: time runs backwards unless reverse
      const auto [row, rows] = reverse ? rows_of_steps(sched, i0, i1 - 1)
                                       : rows_of_steps(sched, T_ - i1, T_ - 1 - i0);
      input_grads<T, Cell>(s, p, dgp, ld_dg, dx, dw_ih, row, rows, acc || !first);
      first = false;
    };
    const int64_t handed =
        backward_recurrence<T>(cell, s, sched, p, gout.data_ptr<T>(), ld_gout,
                               r.dhx.data_ptr<T>(), ptr_or_null<T>(r.dcx), dg.data_ptr<T>(),
                               ld_dg, ptr_or_null<T>(tmp), ptr_or_null<T>(gh), ptr_or_null<T>(dm),
                               ptr_or_null<T>(zeros), reverse, overlap > 0 ? &done : nullptr);
    if (overlap > 0) done.run(handed, T_);  // the last chunk, on all threads
  });
  if (dg_out != nullptr) {
    *dg_out = dg;
    return r;
  }
  // The grads are allocated only now, after the recurrence has released its
  // packed W_hh (and grad_output, if it was copied): this keeps the peak
  // memory of the backward at the larger of its two phases, not their sum.
  // Grads not asked for are returned as distinct empty tensors (outputs of
  // an operator must not alias each other).
  tmp = dm = zeros = scratch16 = at::Tensor();
  if (overlap == 0) {
    r.dx = need_input_grad ? at::empty(input.sizes(), opts) : none();
    r.dw_ih = weight_grad(given.dw_ih, [&] { return at::empty_like(wi); });
  }
  r.dw_hh = weight_grad(given.dw_hh, [&] { return at::empty_like(wh); });
  r.db_ih = weight_grad(given.db_ih, [&] { return at::empty({L.gates()}, opts); });
  if (L.rest_cols() > 0)
    r.db_hh = weight_grad(given.db_hh, [&] { return at::empty({L.gates()}, opts); });
  if (proj) r.dw_hr = weight_grad(given.dw_hr, [&] { return at::empty_like(wr); });
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rnnattn::recurrent_backward", [&] {
    using T = scalar_t;
    LayerPtrs<T> p;
    p.x = x.data_ptr<T>();
    p.hx = h0.data_ptr<T>();
    p.w_ih = wi.data_ptr<T>();
    p.out = out.data_ptr<T>();
    p.ld_out = ld_out;
    backward_gemms<T, Cell>(s, sched, p, dg.data_ptr<T>(), ld_dg,
                            need_input_grad ? r.dx.data_ptr<T>() : nullptr,
                            need_weight_grad ? r.dw_ih.data_ptr<T>() : nullptr,
                            need_weight_grad ? r.dw_hh.data_ptr<T>() : nullptr,
                            need_weight_grad ? r.db_ih.data_ptr<T>() : nullptr,
                            need_weight_grad && L.rest_cols() > 0 ? r.db_hh.data_ptr<T>() : nullptr,
                            reverse, acc, /*input_done=*/overlap > 0);
    if (proj && need_weight_grad) {
      // dW_hr = sum_t gh_t^T m_t, with m recomputed from the reserve.
      dg = at::Tensor();
      at::Tensor m = at::empty({N, H}, opts);
      projection_inputs<T>(ws.data_ptr<T>(), N, H, m.data_ptr<T>());
      gemm<T>(true, false, Hs, H, N, T(1), gh.data_ptr<T>(), Hs, m.data_ptr<T>(), H,
              acc ? T(1) : T(0), r.dw_hr.data_ptr<T>(), H);
    }
  });
  return r;
}

}  // namespace rnnattn::cpu

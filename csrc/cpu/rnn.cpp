// CPU kernels of rnnattn::rnn_forward / rnn_backward (one layer, one direction).
//
// Forward: P = X W_ih^T is one GEMM over all rows, written straight into the
// output buffer; then, step by step, out_t += h_{t-1} W_hh^T and
// out_t = act(out_t + b). Small steps run both on one thread with a
// register-blocked GEMM (small_gemm.h); larger ones split the columns of
// W_hh across threads, each doing its slice's GEMM and pointwise pass
// (recurrent_gemm.h). The running state (B, H) is h_n at the end: rows whose
// sequence has ended simply stop being updated, so a PackedSequence is
// walked directly, in either direction.
//
// Backward: only dh is sequential: dz_t = (dout_t + g) * act'(h_t),
// g = dz_t W_hh, split the same way. dX, dW_ih, dW_hh and db are one GEMM /
// reduction each over all N rows. Nothing is allocated inside the time loop.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <tuple>
#include <utility>

#include "../rnn_common.h"
#include "activation.h"
#include "blas.h"
#include "recurrent_gemm.h"
#include "small_gemm.h"

namespace rnnattn::cpu {
namespace {

bool small_step(int64_t rows, int64_t H) { return rows * H * H <= kSmallGemmMaxWork; }

// w_hh_t: W_hh^T (row-major H x H), used by the small-step path. The
// running state is double-buffered (state, spare; both start as hx) so that
// one step's GEMM reads the previous state while the same step's pointwise
// pass writes the next one, column slice by column slice. Returns the buffer
// that holds h_n.
template <typename T>
T* forward_kernel(const RnnShape& s, const StepSchedule& sched, const T* x, const T* w_ih,
                  const T* w_hh, const T* w_hh_t, const T* bias, T* out, T* state, T* spare,
                  bool relu, bool reverse) {
  const int64_t H = s.hidden;
  gemm<T>(false, true, s.rows, H, s.input, T(1), x, s.input, w_ih, s.input, T(0), out, H);
  const int64_t T_ = sched.steps();
  // The full-batch steps (the largest) use W_hh^T packed once, by slices.
  const int64_t B0 = T_ ? sched.batch[0] : 0;
  const RecurrentGemm<T> rec(w_hh, /*trans=*/true, small_step(B0, H) ? 0 : B0, H, H,
                             recurrent_parts(B0, H));
  T* cur = state;
  T* nxt = spare;
  int64_t b_prev = s.batch;
  for (int64_t i = 0; i < T_; ++i) {
    const int64_t t = reverse ? T_ - 1 - i : i;
    const int64_t b = sched.batch[t];
    T* o = out + sched.offset[t] * H;
    // Rows whose sequence ended at the previous step hold their final state
    // in cur only; copy them so both buffers agree on every row not updated
    // from here on (rows not yet started hold hx in both).
    if (b < b_prev) std::copy(cur + b * H, cur + b_prev * H, nxt + b * H);
    b_prev = b;
    if (small_step(b, H)) {
      // Single-threaded, no BLAS call: the step's data is in L1/L2.
      small_gemm(cur, w_hh_t, o, b, H, H, /*accumulate=*/true);
      for (int64_t r = 0; r < b; ++r) activate_row(o + r * H, nxt + r * H, bias, H, relu);
    } else {
      rec.for_each_part(b, [&](int p) {
        const int64_t c0 = rec.begin(p), n = rec.end(p) - c0;
        rec.compute(p, cur, b, T(1), o);
        for (int64_t r = 0; r < b; ++r)
          activate_row(o + r * H + c0, nxt + r * H + c0, bias + c0, n, relu);
      });
    }
    std::swap(cur, nxt);
  }
  return cur;
}

// The sequential part of the backward: dz_t = (dout_t + g) * act'(h_t) for
// every step, walking time opposite to the forward; g (grad_hn on entry) ends
// as grad_hx.
// gout and out are rows ld_gout / ld_out elements apart (see as_rows).
template <typename T>
void backward_recurrence(const RnnShape& s, const StepSchedule& sched, const T* gout,
                         int64_t ld_gout, const T* w_hh, const T* out, int64_t ld_out, T* g,
                         T* dz_all, bool relu, bool reverse) {
  const int64_t H = s.hidden;
  const int64_t T_ = sched.steps();
  const int64_t B0 = T_ ? sched.batch[0] : 0;
  const RecurrentGemm<T> rec(w_hh, /*trans=*/false, small_step(B0, H) ? 0 : B0, H, H,
                             recurrent_parts(B0, H));
  auto step_at = [&](int64_t i) { return reverse ? i : T_ - 1 - i; };
  // dz_t[:, c0:c1] over the step's rows; g holds the grad of the state
  // leaving step t.
  auto step_grad = [&](int64_t t, int64_t c0, int64_t c1) {
    for (int64_t r = 0; r < sched.batch[t]; ++r) {
      const int64_t row = sched.offset[t] + r;
      activation_grad_row(gout + row * ld_gout + c0, g + r * H + c0, out + row * ld_out + c0,
                          dz_all + row * H + c0, c1 - c0, relu);
    }
  };
  if (T_ > 0) step_grad(step_at(0), 0, H);
  // Each iteration: g[:b] = dz_t @ W_hh (the grad of the state entering step
  // t), then the next step's dz, which needs only the same columns of g, so
  // each column slice does both while it is in cache.
  for (int64_t i = 0; i < T_; ++i) {
    const int64_t t = step_at(i);
    const int64_t b = sched.batch[t];
    const T* dz = dz_all + sched.offset[t] * H;
    const bool has_next = i + 1 < T_;
    const int64_t t_next = has_next ? step_at(i + 1) : 0;
    if (small_step(b, H)) {
      small_gemm(dz, w_hh, g, b, H, H, /*accumulate=*/false);
      if (has_next) step_grad(t_next, 0, H);
      continue;
    }
    rec.for_each_part(b, [&](int p) {
      rec.compute(p, dz, b, T(0), g);
      if (has_next) step_grad(t_next, rec.begin(p), rec.end(p));
    });
  }
}

// dW_hh = sum over steps of dz_t^T @ hprev_t. The state entering step t is,
// row for row, the output of the step before it in the walk (for the rows
// both steps hold) and hx (for rows whose sequence starts at t), so no copy
// of the states is made: consecutive steps whose dz rows and state rows both
// continue in memory are one GEMM. That is one GEMM over the output for
// padded input, one per run of equal batch sizes for packed input, plus the
// rows that start from hx.
template <typename T>
void recurrent_weight_grad(const RnnShape& s, const StepSchedule& sched, const T* hx,
                           const T* out, int64_t ld_out, const T* dz_all, T* dw_hh,
                           bool reverse) {
  const int64_t H = s.hidden, T_ = sched.steps();
  std::fill(dw_hh, dw_hh + H * H, T(0));
  auto accumulate = [&](const T* d, const T* h, int64_t ld_h, int64_t rows) {
    gemm<T>(true, false, H, H, rows, T(1), d, H, h, ld_h, T(1), dw_hh, H);
  };
  const T* run_dz = nullptr;
  const T* run_h = nullptr;
  int64_t run_rows = 0;
  for (int64_t t = 0; t < T_; ++t) {
    const int64_t b = sched.batch[t];
    const T* d = dz_all + sched.offset[t] * H;
    const int64_t prev = reverse ? t + 1 : t - 1;  // the step whose output enters t
    const bool has_prev = prev >= 0 && prev < T_;
    const int64_t m = has_prev ? std::min(b, sched.batch[prev]) : 0;
    if (m > 0) {
      const T* h = out + sched.offset[prev] * ld_out;
      if (run_rows > 0 && d == run_dz + run_rows * H && h == run_h + run_rows * ld_out) {
        run_rows += m;
      } else {
        if (run_rows > 0) accumulate(run_dz, run_h, ld_out, run_rows);
        run_dz = d, run_h = h, run_rows = m;
      }
    }
    if (b > m) accumulate(d + m * H, hx + m * H, H, b - m);
  }
  if (run_rows > 0) accumulate(run_dz, run_h, ld_out, run_rows);
}

// The parallel part of the backward, from every step's dz: one GEMM each for
// dX and dW_ih, recurrent_weight_grad, and a reduction for db. dx null: not
// asked for; dw_ih, dw_hh and db all null: weight grads not asked for.
template <typename T>
void backward_gemms(const RnnShape& s, const StepSchedule& sched, const T* x, const T* hx,
                    const T* w_ih, const T* out, int64_t ld_out, const T* dz_all, T* dx,
                    T* dw_ih, T* dw_hh, T* db, bool reverse) {
  const int64_t H = s.hidden, I = s.input, N = s.rows;
  if (dx != nullptr) gemm<T>(false, false, N, I, H, T(1), dz_all, H, w_ih, I, T(0), dx, I);
  if (dw_hh == nullptr) return;
  gemm<T>(true, false, H, I, N, T(1), dz_all, H, x, I, T(0), dw_ih, I);
  recurrent_weight_grad(s, sched, hx, out, ld_out, dz_all, dw_hh, reverse);
  std::fill(db, db + H, T(0));
  for (int64_t r = 0; r < N; ++r) {
    const T* d = dz_all + r * H;
    for (int64_t j = 0; j < H; ++j) db[j] += d[j];
  }
}

// A (..., H) tensor as rows of H values a fixed stride apart, with that
// stride. One direction's half of a bidirectional layer's output (and of its
// grad) is such a view: the backward reads it in place instead of copying
// it. Any other layout is made contiguous.
std::pair<at::Tensor, int64_t> as_rows(const at::Tensor& t) {
  const int64_t H = t.size(-1);
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
    if (ld < 0) ld = H;  // a single row
    if (uniform && ld >= H) return {t, ld};
  }
  return {t.contiguous(), H};
}

std::tuple<at::Tensor, at::Tensor> rnn_forward_cpu(
    const at::Tensor& input, const c10::optional<at::Tensor>& batch_sizes,
    const at::Tensor& hx, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const c10::optional<at::Tensor>& b_ih, const c10::optional<at::Tensor>& b_hh, bool relu,
    bool reverse) {
  const RnnShape s = check_rnn_args(input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh);
  const StepSchedule sched = make_schedule(input, batch_sizes, s.batch);
  auto x = input.contiguous();
  auto wi = w_ih.contiguous();
  auto wh = w_hh.contiguous();
  auto h0 = hx.contiguous();
  const int64_t H = s.hidden;
  // Some step takes the small-step path (the last step has the fewest rows).
  const bool small = small_step(sched.batch[sched.steps() - 1], H);
  std::vector<int64_t> out_shape(input.sizes().begin(), input.sizes().end());
  out_shape.back() = H;
  auto output = at::empty(out_shape, x.options());
  auto h_n = at::empty({s.batch, H}, x.options());
  auto spare = at::empty({s.batch, H}, x.options());  // the second state buffer
  // One bias vector (b_ih + b_hh, or zeros) keeps the pointwise loop
  // branch-free; the small-step path multiplies by W_hh^T. The buffers are
  // filled by plain loops: for a small RNN, each ATen op (clone, add,
  // transpose + contiguous) costs microseconds, as much as several steps.
  auto bias = at::empty({H}, x.options());
  auto wh_t = small ? at::empty({H, H}, x.options()) : wh;
  at::Tensor bi, bh;
  if (b_ih.has_value()) bi = b_ih->contiguous(), bh = b_hh->contiguous();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rnnattn::rnn_forward", [&] {
    using T = scalar_t;
    const T* h0p = h0.data_ptr<T>();
    std::copy(h0p, h0p + s.batch * H, h_n.data_ptr<T>());
    std::copy(h0p, h0p + s.batch * H, spare.data_ptr<T>());
    T* b = bias.data_ptr<T>();
    if (bi.defined()) {
      for (int64_t j = 0; j < H; ++j) b[j] = bi.data_ptr<T>()[j] + bh.data_ptr<T>()[j];
    } else {
      std::fill(b, b + H, T(0));
    }
    if (small) {
      const T* w = wh.data_ptr<T>();
      T* wt = wh_t.data_ptr<T>();
      for (int64_t i = 0; i < H; ++i)
        for (int64_t j = 0; j < H; ++j) wt[j * H + i] = w[i * H + j];
    }
    const T* last = forward_kernel<T>(s, sched, x.data_ptr<T>(), wi.data_ptr<T>(), wh.data_ptr<T>(),
                                      wh_t.data_ptr<T>(), b, output.data_ptr<T>(),
                                      h_n.data_ptr<T>(), spare.data_ptr<T>(), relu, reverse);
    if (last == spare.data_ptr<T>()) h_n = spare;
  });
  return {output, h_n};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> rnn_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& grad_hn, const at::Tensor& input,
    const c10::optional<at::Tensor>& batch_sizes, const at::Tensor& hx,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& output, bool relu,
    bool reverse, bool need_input_grad, bool need_weight_grad) {
  const RnnShape s = check_rnn_args(input, batch_sizes, hx, w_ih, w_hh, c10::nullopt,
                                    c10::nullopt);
  check_rnn_backward_args(s, input, grad_output, grad_hn, output);
  const StepSchedule sched = make_schedule(input, batch_sizes, s.batch);
  auto x = input.contiguous();
  auto h0 = hx.contiguous();
  auto wi = w_ih.contiguous();
  auto wh = w_hh.contiguous();
  at::Tensor out;
  int64_t ld_out;
  std::tie(out, ld_out) = as_rows(output);
  auto g = grad_hn.contiguous().clone();  // becomes grad_hx
  auto dz = at::empty({s.rows, s.hidden}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rnnattn::rnn_backward", [&] {
    at::Tensor gout;
    int64_t ld_gout;
    std::tie(gout, ld_gout) = as_rows(grad_output);
    backward_recurrence<scalar_t>(s, sched, gout.data_ptr<scalar_t>(), ld_gout,
                                  wh.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), ld_out,
                                  g.data_ptr<scalar_t>(), dz.data_ptr<scalar_t>(), relu, reverse);
  });
  // The grads are allocated only now, after the recurrence has released its
  // packed W_hh (and grad_output, if it was copied): this keeps the peak
  // memory of the backward at the larger of its two phases, not their sum.
  // Grads not asked for are returned as distinct empty tensors (outputs of
  // an operator must not alias each other).
  auto none = [&] { return at::empty({0}, x.options()); };
  auto dx = need_input_grad ? at::empty(input.sizes(), x.options()) : none();
  auto dwi = need_weight_grad ? at::empty_like(wi) : none();
  auto dwh = need_weight_grad ? at::empty_like(wh) : none();
  auto db = need_weight_grad ? at::empty({s.hidden}, x.options()) : none();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rnnattn::rnn_backward", [&] {
    backward_gemms<scalar_t>(s, sched, x.data_ptr<scalar_t>(), h0.data_ptr<scalar_t>(),
                             wi.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), ld_out,
                             dz.data_ptr<scalar_t>(),
                             need_input_grad ? dx.data_ptr<scalar_t>() : nullptr,
                             need_weight_grad ? dwi.data_ptr<scalar_t>() : nullptr,
                             need_weight_grad ? dwh.data_ptr<scalar_t>() : nullptr,
                             need_weight_grad ? db.data_ptr<scalar_t>() : nullptr, reverse);
  });
  return {dx, g, dwi, dwh, db};
}

}  // namespace

TORCH_LIBRARY_IMPL(rnnattn, CPU, m) {
  m.impl("rnn_forward", &rnn_forward_cpu);
  m.impl("rnn_backward", &rnn_backward_cpu);
}

}  // namespace rnnattn::cpu

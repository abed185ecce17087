// CPU kernels of rnnattn::rnn_forward / rnn_backward (one layer, one direction).
//
// Forward: P = X W_ih^T is one GEMM over all rows, written straight into the
// output buffer; then, step by step, out_t += h_{t-1} W_hh^T (one small GEMM
// into BLAS, no dispatcher) and out_t = act(out_t + b) in one pointwise pass
// that also refreshes the running state. The running state (B, H) is h_n at
// the end: rows whose sequence has ended simply stop being updated, so a
// PackedSequence is walked directly, in either direction.
//
// Backward: only dh is sequential: dz_t = (dout_t + g) * act'(h_t),
// g = dz_t W_hh. dX, dW_ih, dW_hh and db are one GEMM / reduction each over
// all N rows. Nothing is allocated inside the time loop.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../rnn_common.h"
#include "activation.h"
#include "blas.h"
#include "small_gemm.h"

namespace rnnattn::cpu {
namespace {

// Rows are split across threads only when a step has enough work to pay for
// waking them (~2^15 elements per task).
constexpr int64_t kPointwiseGrain = 1 << 15;

bool small_step(int64_t rows, int64_t H) { return rows * H * H <= kSmallGemmMaxWork; }

// w_hh_t: W_hh^T (row-major H x H), used by the small-step path.
template <typename T>
void forward_kernel(const RnnShape& s, const StepSchedule& sched, const T* x,
                    const T* w_ih, const T* w_hh, const T* w_hh_t, const T* bias, T* out,
                    T* state, bool relu, bool reverse) {
  const int64_t H = s.hidden;
  gemm<T>(false, true, s.rows, H, s.input, T(1), x, s.input, w_ih, s.input, T(0), out, H);
  const int64_t T_ = sched.steps();
  // W_hh^T packed once for the full-batch steps that go to BLAS.
  const int64_t B0 = T_ ? sched.batch[0] : 0;
  const PackedRightOperand<T> packed_w(w_hh, /*trans=*/true, small_step(B0, H) ? 0 : B0, H, H);
  for (int64_t i = 0; i < T_; ++i) {
    const int64_t t = reverse ? T_ - 1 - i : i;
    const int64_t b = sched.batch[t];
    T* o = out + sched.offset[t] * H;
    if (small_step(b, H)) {
      // Single-threaded, no BLAS call: the step's data is in L1/L2.
      small_gemm(state, w_hh_t, o, b, H, H, /*accumulate=*/true);
      for (int64_t r = 0; r < b; ++r) activate_row(o + r * H, state + r * H, bias, H, relu);
      continue;
    }
    if (packed_w.valid() && b == packed_w.rows())
      packed_w.compute(state, T(1), o);
    else
      gemm<T>(false, true, b, H, H, T(1), state, H, w_hh, H, T(1), o, H);
    at::parallel_for(0, b, std::max<int64_t>(1, kPointwiseGrain / H),
                     [&](int64_t r0, int64_t r1) {
                       for (int64_t r = r0; r < r1; ++r)
                         activate_row(o + r * H, state + r * H, bias, H, relu);
                     });
  }
}

template <typename T>
void backward_kernel(const RnnShape& s, const StepSchedule& sched, const T* gout,
                     const T* x, const T* hx, const T* w_ih, const T* w_hh, const T* out,
                     T* g, T* dz_all, T* hprev, T* dx, T* dw_ih, T* dw_hh, T* db,
                     bool padded, bool relu, bool reverse) {
  const int64_t H = s.hidden, I = s.input, N = s.rows;
  const int64_t T_ = sched.steps();
  const int64_t B0 = T_ ? sched.batch[0] : 0;
  const PackedRightOperand<T> packed_w(w_hh, /*trans=*/false, small_step(B0, H) ? 0 : B0, H, H);
  // Walk time opposite to the forward direction.
  for (int64_t i = 0; i < T_; ++i) {
    const int64_t t = reverse ? i : T_ - 1 - i;
    const int64_t b = sched.batch[t];
    const int64_t off = sched.offset[t] * H;
    T* dz = dz_all + off;
    if (small_step(b, H)) {
      for (int64_t r = 0; r < b; ++r)
        activation_grad_row(gout + off + r * H, g + r * H, out + off + r * H, dz + r * H, H, relu);
      small_gemm(dz, w_hh, g, b, H, H, /*accumulate=*/false);
      continue;
    }
    at::parallel_for(0, b, std::max<int64_t>(1, kPointwiseGrain / H),
                     [&](int64_t r0, int64_t r1) {
                       for (int64_t r = r0; r < r1; ++r)
                         activation_grad_row(gout + off + r * H, g + r * H, out + off + r * H,
                                             dz + r * H, H, relu);
                     });
    // g[:b] = dz_t @ W_hh: the grad of the state entering step t.
    if (packed_w.valid() && b == packed_w.rows())
      packed_w.compute(dz, T(0), g);
    else
      gemm<T>(false, false, b, H, H, T(1), dz, H, w_hh, H, T(0), g, H);
  }
  if (dx != nullptr) gemm<T>(false, false, N, I, H, T(1), dz_all, H, w_ih, I, T(0), dx, I);
  if (dw_ih == nullptr) return;
  gemm<T>(true, false, H, I, N, T(1), dz_all, H, x, I, T(0), dw_ih, I);
  if (padded) {
    // Every step holds all B rows, so the states entering the steps are the
    // output shifted by one step, plus hx: dW_hh is two GEMMs over views,
    // with no (N, H) copy (keeps backward's peak memory below nn.RNN's).
    const int64_t B = s.batch, NB = N - B;
    const T* dz_first = reverse ? dz_all + NB * H : dz_all;  // the step that saw hx
    const T* dz_rest = reverse ? dz_all : dz_all + B * H;
    const T* prev_rest = reverse ? out + B * H : out;
    gemm<T>(true, false, H, H, NB, T(1), dz_rest, H, prev_rest, H, T(0), dw_hh, H);
    gemm<T>(true, false, H, H, B, T(1), dz_first, H, hx, H, T(1), dw_hh, H);
  } else {
    // Packed: replay the state each row saw entering its step, in forward
    // order, so that dW_hh is one GEMM: dZ^T @ Hprev.
    std::vector<T> st(hx, hx + s.batch * H);
    for (int64_t i = 0; i < T_; ++i) {
      const int64_t t = reverse ? T_ - 1 - i : i;
      const int64_t n = sched.batch[t] * H;
      const int64_t off = sched.offset[t] * H;
      std::copy(st.begin(), st.begin() + n, hprev + off);
      std::copy(out + off, out + off + n, st.begin());
    }
    gemm<T>(true, false, H, H, N, T(1), dz_all, H, hprev, H, T(0), dw_hh, H);
  }
  std::fill(db, db + H, T(0));
  for (int64_t r = 0; r < N; ++r) {
    const T* d = dz_all + r * H;
    for (int64_t j = 0; j < H; ++j) db[j] += d[j];
  }
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
  // W_hh^T for the small-step path (only if some step can be small).
  auto wh_t = small_step(1, s.hidden) ? wh.t().contiguous() : wh;
  std::vector<int64_t> out_shape(input.sizes().begin(), input.sizes().end());
  out_shape.back() = s.hidden;
  auto output = at::empty(out_shape, x.options());
  auto h_n = hx.contiguous().clone();
  // One bias vector (b_ih + b_hh, or zeros) keeps the pointwise loop branch-free.
  at::Tensor bias = b_ih.has_value() ? (*b_ih + *b_hh).contiguous() : at::zeros({s.hidden}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rnnattn::rnn_forward", [&] {
    forward_kernel<scalar_t>(s, sched, x.data_ptr<scalar_t>(), wi.data_ptr<scalar_t>(),
                             wh.data_ptr<scalar_t>(), wh_t.data_ptr<scalar_t>(),
                             bias.data_ptr<scalar_t>(),
                             output.data_ptr<scalar_t>(), h_n.data_ptr<scalar_t>(), relu,
                             reverse);
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
  auto out = output.contiguous();
  auto gout = grad_output.contiguous();
  auto g = grad_hn.contiguous().clone();  // becomes grad_hx
  auto dz = at::empty({s.rows, s.hidden}, x.options());
  // Grads not asked for are returned as distinct empty tensors (outputs of
  // an operator must not alias each other).
  auto none = [&] { return at::empty({0}, x.options()); };
  auto dx = need_input_grad ? at::empty(input.sizes(), x.options()) : none();
  auto dwi = need_weight_grad ? at::empty_like(wi) : none();
  auto dwh = need_weight_grad ? at::empty_like(wh) : none();
  auto db = need_weight_grad ? at::empty({s.hidden}, x.options()) : none();
  const bool padded = !batch_sizes.has_value();
  auto hprev = need_weight_grad && !padded ? at::empty({s.rows, s.hidden}, x.options()) : none();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rnnattn::rnn_backward", [&] {
    backward_kernel<scalar_t>(
        s, sched, gout.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), h0.data_ptr<scalar_t>(),
        wi.data_ptr<scalar_t>(), wh.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
        g.data_ptr<scalar_t>(), dz.data_ptr<scalar_t>(),
        hprev.numel() ? hprev.data_ptr<scalar_t>() : nullptr,
        need_input_grad ? dx.data_ptr<scalar_t>() : nullptr,
        need_weight_grad ? dwi.data_ptr<scalar_t>() : nullptr,
        need_weight_grad ? dwh.data_ptr<scalar_t>() : nullptr,
        need_weight_grad ? db.data_ptr<scalar_t>() : nullptr, padded, relu, reverse);
  });
  return {dx, g, dwi, dwh, db};
}

}  // namespace

TORCH_LIBRARY_IMPL(rnnattn, CPU, m) {
  m.impl("rnn_forward", &rnn_forward_cpu);
  m.impl("rnn_backward", &rnn_backward_cpu);
}

}  // namespace rnnattn::cpu

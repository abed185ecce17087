// CPU kernels of rnnattn::gru_forward / gru_backward and lstm_forward /
// lstm_backward (one layer, one direction): the recurrence engine
// (recurrence.h) with the GruCell / LstmCell policies (cells.h). The reserve
// they return holds what the backward needs (gate activations, the GRU's
// R_n, the LSTM's c_t), like cuDNN's reserve space. bfloat16 / float16 run in
// float32 and keep their results, the reserve included, in their own dtype
// (half.h).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <tuple>

#include "../rnn_common.h"
#include "half.h"
#include "layer.h"

namespace rnnattn::cpu {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_forward_cpu(
    const at::Tensor& input, const c10::optional<at::Tensor>& batch_sizes,
    const at::Tensor& hx, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const c10::optional<at::Tensor>& b_ih, const c10::optional<at::Tensor>& b_hh, bool reverse,
    bool train) {
  const RnnShape s = check_recurrent_args(input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh,
                                          GruCell::kGates);
  using half::up;
  const bool half = half::is_half(input);  // float32 inside (half.h)
  const at::Tensor a = half ? half::input_projection(input, w_ih) : at::Tensor();
  if (half && !a.defined())
    return half::down(gru_forward_cpu(up(input), batch_sizes, up(hx), up(w_ih), up(w_hh), up(b_ih),
                                      up(b_hh), reverse, train),
                      input.scalar_type());
  const StepSchedule sched = make_schedule(input, batch_sizes, s.batch);
  auto r = forward_layer_op(GruCell{}, s, sched, input, up(hx), c10::nullopt, up(w_ih), up(w_hh),
                            up(b_ih), up(b_hh), c10::nullopt, reverse, train, a);
  if (half) return half::down(std::make_tuple(r.output, r.h_n, r.reserve), input.scalar_type());
  return {r.output, r.h_n, r.reserve};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
gru_backward_cpu(const at::Tensor& grad_output, const at::Tensor& grad_hn, const at::Tensor& input,
                 const c10::optional<at::Tensor>& batch_sizes, const at::Tensor& hx,
                 const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& output,
                 const at::Tensor& reserve, bool reverse, bool need_input_grad,
                 bool need_weight_grad) {
  const RnnShape s = check_recurrent_args(input, batch_sizes, hx, w_ih, w_hh, c10::nullopt,
                                          c10::nullopt, GruCell::kGates);
  check_rnn_backward_args(s, input, grad_output, grad_hn, output);
  check_reserve(s, input, reserve, GruCell::kWsBlocks);
  if (half::is_half(input)) {
    using half::up;
    return half::down(gru_backward_cpu(up(grad_output), up(grad_hn), up(input), batch_sizes, up(hx),
                                       up(w_ih), up(w_hh), up(output), up(reserve), reverse,
                                       need_input_grad, need_weight_grad),
                      input.scalar_type());
  }
  const StepSchedule sched = make_schedule(input, batch_sizes, s.batch);
  auto g = backward_layer_op(GruCell{}, s, sched, grad_output, grad_hn, c10::nullopt, input, hx,
                             c10::nullopt, w_ih, w_hh, c10::nullopt, output, reserve, reverse,
                             need_input_grad, need_weight_grad);
  return {g.dx, g.dhx, g.dw_ih, g.dw_hh, g.db_ih, g.db_hh};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_forward_cpu(
    const at::Tensor& input, const c10::optional<at::Tensor>& batch_sizes,
    const at::Tensor& hx, const at::Tensor& cx, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const c10::optional<at::Tensor>& b_ih, const c10::optional<at::Tensor>& b_hh,
    const c10::optional<at::Tensor>& w_hr, bool reverse, bool train) {
  const RnnShape s = check_recurrent_args(input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh,
                                          LstmCell::kGates, w_hr);
  check_cell_state(s, input, cx, "cx");
  using half::up;
  const bool half = half::is_half(input);  // float32 inside (half.h)
  const at::Tensor a = half ? half::input_projection(input, w_ih) : at::Tensor();
  if (half && !a.defined())
    return half::down(lstm_forward_cpu(up(input), batch_sizes, up(hx), up(cx), up(w_ih), up(w_hh),
                                       up(b_ih), up(b_hh), up(w_hr), reverse, train),
                      input.scalar_type());
  const StepSchedule sched = make_schedule(input, batch_sizes, s.batch);
  auto r = forward_layer_op(LstmCell{}, s, sched, input, up(hx), up(cx), up(w_ih), up(w_hh),
                            up(b_ih), up(b_hh), up(w_hr), reverse, train, a);
  if (half)
    return half::down(std::make_tuple(r.output, r.h_n, r.c_n, r.reserve), input.scalar_type());
  return {r.output, r.h_n, r.c_n, r.reserve};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
lstm_backward_cpu(const at::Tensor& grad_output, const at::Tensor& grad_hn,
                  const at::Tensor& grad_cn, const at::Tensor& input,
                  const c10::optional<at::Tensor>& batch_sizes, const at::Tensor& hx,
                  const at::Tensor& cx, const at::Tensor& w_ih, const at::Tensor& w_hh,
                  const c10::optional<at::Tensor>& w_hr, const at::Tensor& output,
                  const at::Tensor& reserve, bool reverse, bool need_input_grad,
                  bool need_weight_grad) {
  const RnnShape s = check_recurrent_args(input, batch_sizes, hx, w_ih, w_hh, c10::nullopt,
                                          c10::nullopt, LstmCell::kGates, w_hr);
  check_cell_state(s, input, cx, "cx");
  check_cell_state(s, input, grad_cn, "grad_cn");
  check_rnn_backward_args(s, input, grad_output, grad_hn, output);
  check_reserve(s, input, reserve, LstmCell::kWsBlocks);
  if (half::is_half(input)) {
    using half::up;
    return half::down(lstm_backward_cpu(up(grad_output), up(grad_hn), up(grad_cn), up(input),
                                        batch_sizes, up(hx), up(cx), up(w_ih), up(w_hh), up(w_hr),
                                        up(output), up(reserve), reverse, need_input_grad,
                                        need_weight_grad),
                      input.scalar_type());
  }
  const StepSchedule sched = make_schedule(input, batch_sizes, s.batch);
  auto g = backward_layer_op(LstmCell{}, s, sched, grad_output, grad_hn, grad_cn, input, hx, cx,
                             w_ih, w_hh, w_hr, output, reserve, reverse, need_input_grad,
                             need_weight_grad);
  if (!g.dw_hr.defined()) g.dw_hr = at::empty({0}, input.options());
  return {g.dx, g.dhx, g.dcx, g.dw_ih, g.dw_hh, g.db_ih, g.dw_hr};
}

}  // namespace

TORCH_LIBRARY_IMPL(rnnattn, CPU, m) {
  m.impl("gru_forward", &gru_forward_cpu);
  m.impl("gru_backward", &gru_backward_cpu);
  m.impl("lstm_forward", &lstm_forward_cpu);
  m.impl("lstm_backward", &lstm_backward_cpu);
}

}  // namespace rnnattn::cpu

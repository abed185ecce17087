// CPU kernels of rnnattn::gru_forward / gru_backward and lstm_forward /
// lstm_backward (one layer, one direction): the recurrence engine
// (recurrence.h) with the GruCell / LstmCell policies (cells.h). The reserve
// they return holds what the backward needs (gate activations, the GRU's
// R_n, the LSTM's c_t), like cuDNN's reserve space. bfloat16 / float16 run the
// float32 engine over chunks of steps and keep their results, the reserve
// included, in their own dtype (half_layer.h).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <tuple>

#include "../rnn_common.h"
#include "half_layer.h"

namespace rnnattn::cpu {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_forward_cpu(
    const at::Tensor& input, const c10::optional<at::Tensor>& batch_sizes,
    const at::Tensor& hx, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const c10::optional<at::Tensor>& b_ih, const c10::optional<at::Tensor>& b_hh, bool reverse,
    bool train) {
  const RnnShape s = check_recurrent_args(input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh,
                                          GruCell::kGates);
  const StepSchedule sched = make_schedule(input, batch_sizes, s.batch);
  auto r = forward_layer_any_dtype(GruCell{}, s, sched, input, hx, c10::nullopt, w_ih, w_hh,
                                   b_ih, b_hh, c10::nullopt, reverse, train);
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
  const StepSchedule sched = make_schedule(input, batch_sizes, s.batch);
  auto g = backward_layer_any_dtype(GruCell{}, s, sched, grad_output, grad_hn, c10::nullopt,
                                    input, hx, c10::nullopt, w_ih, w_hh, c10::nullopt, output,
                                    reserve, reverse, need_input_grad, need_weight_grad);
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
  const StepSchedule sched = make_schedule(input, batch_sizes, s.batch);
  auto r = forward_layer_any_dtype(LstmCell{}, s, sched, input, hx, cx, w_ih, w_hh, b_ih, b_hh,
                                   w_hr, reverse, train);
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
  const StepSchedule sched = make_schedule(input, batch_sizes, s.batch);
  auto g = backward_layer_any_dtype(LstmCell{}, s, sched, grad_output, grad_hn, grad_cn, input,
                                    hx, cx, w_ih, w_hh, w_hr, output, reserve, reverse,
                                    need_input_grad, need_weight_grad);
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

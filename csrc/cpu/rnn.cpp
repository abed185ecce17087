// CPU kernels of rnnattn::rnn_forward / rnn_backward (one layer, one
// direction of an Elman RNN): the recurrence engine (recurrence.h) with the
// RnnCell policy (cells.h). The output is the engine's reserve: the backward
// needs only the hidden states. bfloat16 / float16 run the float32
// engine over chunks of steps (half_layer.h).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <tuple>

#include "../rnn_common.h"
#include "half_layer.h"

namespace rnnattn::cpu {
namespace {

std::tuple<at::Tensor, at::Tensor> rnn_forward_cpu(
    const at::Tensor& input, const c10::optional<at::Tensor>& batch_sizes,
    const at::Tensor& hx, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const c10::optional<at::Tensor>& b_ih, const c10::optional<at::Tensor>& b_hh, bool relu,
    bool reverse) {
  const RnnShape s = check_rnn_args(input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh);
  const StepSchedule sched = make_schedule(input, batch_sizes, s.batch);
  auto r = forward_layer_any_dtype(RnnCell{relu}, s, sched, input, hx, c10::nullopt, w_ih,
                                   w_hh, b_ih, b_hh, c10::nullopt, reverse, true);
  return {r.output, r.h_n};
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
  auto g = backward_layer_any_dtype(RnnCell{relu}, s, sched, grad_output, grad_hn, c10::nullopt,
                                    input, hx, c10::nullopt, w_ih, w_hh, c10::nullopt, output,
                                    c10::nullopt, reverse, need_input_grad, need_weight_grad);
  return {g.dx, g.dhx, g.dw_ih, g.dw_hh, g.db_ih};
}

}  // namespace

TORCH_LIBRARY_IMPL(rnnattn, CPU, m) {
  m.impl("rnn_forward", &rnn_forward_cpu);
  m.impl("rnn_backward", &rnn_backward_cpu);
}

}  // namespace rnnattn::cpu

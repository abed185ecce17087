// Autograd of rnnattn::rnn_forward, registered at the Autograd dispatch key
// (all devices): the backward is the fused rnnattn::rnn_backward; a backward
// that must itself be differentiable (create_graph=True) is
// rnnattn::rnn_backward_differentiable (see backward_needs_graph in
// autograd_common.h).
//
// Why C++ rather than torch.library.register_autograd in Python: the Python
// wrapper costs ~15 us per call under no_grad and ~90 us with grad (it builds
// a Python autograd.Function on every call), more than the whole fused
// forward of a small RNN; this kernel costs about 1 us. It only calls
// operators through the dispatcher (no data pointers), so torch.compile's
// AOTAutograd traces it like a built-in op's autograd.
#include <torch/autograd.h>
#include <torch/library.h>

#include "autograd_common.h"

namespace rnnattn {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

std::tuple<at::Tensor, at::Tensor> call_forward(
    const at::Tensor& input, const c10::optional<at::Tensor>& batch_sizes,
    const at::Tensor& hx, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const c10::optional<at::Tensor>& b_ih, const c10::optional<at::Tensor>& b_hh, bool relu,
    bool reverse) {
  static const auto op =
      find_op<std::tuple<at::Tensor, at::Tensor>(
          const at::Tensor&, const c10::optional<at::Tensor>&, const at::Tensor&,
          const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&,
          const c10::optional<at::Tensor>&, bool, bool)>("rnnattn::rnn_forward");
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return op.call(input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, relu, reverse);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> call_backward(
    const at::Tensor& grad_output, const at::Tensor& grad_hn, const at::Tensor& input,
    const c10::optional<at::Tensor>& batch_sizes, const at::Tensor& hx, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const at::Tensor& output, bool relu, bool reverse,
    bool need_input_grad, bool need_weight_grad) {
  static const auto op =
      find_op<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
          const at::Tensor&, const at::Tensor&, const at::Tensor&,
          const c10::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&,
          const at::Tensor&, const at::Tensor&, bool, bool, bool, bool)>("rnnattn::rnn_backward");
  return op.call(grad_output, grad_hn, input, batch_sizes, hx, w_ih, w_hh, output, relu, reverse,
                 need_input_grad, need_weight_grad);
}

// Inputs, in forward's argument order: 0 input, 1 batch_sizes, 2 hx, 3 w_ih,
// 4 w_hh, 5 b_ih, 6 b_hh, 7 relu, 8 reverse.
class RnnFunction : public torch::autograd::Function<RnnFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input,
                               const c10::optional<at::Tensor>& batch_sizes, const at::Tensor& hx,
                               const at::Tensor& w_ih, const at::Tensor& w_hh,
                               const c10::optional<at::Tensor>& b_ih,
                               const c10::optional<at::Tensor>& b_hh, bool relu, bool reverse) {
    auto [output, h_n] = call_forward(input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, relu, reverse);
    // batch_sizes is an int64 CPU tensor that never needs a grad: kept as
    // data, not as a saved variable. The fused backward does not read the
    // biases; the differentiable one (double backward) recomputes the
    // forward and does (parameters: saving them costs no memory).
    ctx->save_for_backward({input, hx, w_ih, w_hh, output, b_ih.value_or(at::Tensor()),
                            b_hh.value_or(at::Tensor())});
    ctx->saved_data["batch_sizes"] = batch_sizes;
    ctx->saved_data["has_bias"] = b_ih.has_value() && b_ih->defined();
    ctx->saved_data["relu"] = relu;
    ctx->saved_data["reverse"] = reverse;
    return {output, h_n};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &input = saved[0], &hx = saved[1], &w_ih = saved[2], &w_hh = saved[3],
                     &output = saved[4], &b_ih = saved[5], &b_hh = saved[6];
    // grads are materialized: an output that got no grad arrives as zeros.
    const at::Tensor &grad_output = grads[0], &grad_hn = grads[1];
    auto batch_sizes = ctx->saved_data["batch_sizes"].toOptional<at::Tensor>();
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    // needs_input_grad counts only the tensor arguments that were given
    // (batch_sizes and the biases may be None): map argument -> edge.
    const int64_t packed = batch_sizes.has_value() && batch_sizes->defined() ? 1 : 0;
    auto needs = [&](int arg) {
      if (arg == 0) return ctx->needs_input_grad(0);
      if (arg == 1 || (arg >= 5 && !has_bias)) return false;
      return ctx->needs_input_grad(arg - 1 + packed);
    };
    if (backward_needs_graph({&grad_output, &grad_hn, &input, &hx, &w_ih, &w_hh, &b_ih, &b_hh})) {
      static const auto op =
          find_op<std::vector<at::Tensor>(
              const at::Tensor&, const at::Tensor&, const at::Tensor&,
              const c10::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&,
              const at::Tensor&, const c10::optional<at::Tensor>&,
              const c10::optional<at::Tensor>&, bool, bool, c10::ArrayRef<int64_t>)>(
              "rnnattn::rnn_backward_differentiable");
      const std::vector<int64_t> need = {needs(0), needs(2), needs(3), needs(4), needs(5), needs(6)};
      const auto g = op.call(grad_output, grad_hn, input, batch_sizes, hx, w_ih, w_hh,
                             opt(b_ih), opt(b_hh),
                             ctx->saved_data["relu"].toBool(), ctx->saved_data["reverse"].toBool(),
                             need);
      auto keep = [&](int arg, const at::Tensor& t) { return needs(arg) ? t : at::Tensor(); };
      return {keep(0, g[0]), at::Tensor(), keep(2, g[1]), keep(3, g[2]), keep(4, g[3]),
              keep(5, g[4]), keep(6, g[5]), at::Tensor(), at::Tensor()};
    }
    const bool need_input = needs(0);
    const bool need_weight = needs(3) || needs(4) || needs(5) || needs(6);
    auto [dx, dhx, dwi, dwh, db] = call_backward(
        grad_output, grad_hn, input, batch_sizes, hx, w_ih, w_hh, output,
        ctx->saved_data["relu"].toBool(), ctx->saved_data["reverse"].toBool(), need_input,
        need_weight);
    auto keep = [&](int arg, const at::Tensor& g) { return needs(arg) ? g : at::Tensor(); };
    // b_ih and b_hh enter as a sum, so they share one grad; each gets its own
    // tensor so that their .grad buffers never alias.
    const bool both_biases = needs(5) && needs(6);
    return {keep(0, dx),  at::Tensor(), keep(2, dhx),
            keep(3, dwi), keep(4, dwh), keep(5, db),
            keep(6, both_biases ? db.clone() : db), at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> rnn_forward_autograd(
    const at::Tensor& input, const c10::optional<at::Tensor>& batch_sizes,
    const at::Tensor& hx, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const c10::optional<at::Tensor>& b_ih, const c10::optional<at::Tensor>& b_hh, bool relu,
    bool reverse) {
  // Inference: no graph node to build.
  if (!at::GradMode::is_enabled() ||
      !(needs_grad(input) || needs_grad(hx) || needs_grad(w_ih) || needs_grad(w_hh) ||
        needs_grad(b_ih) || needs_grad(b_hh)))
    return call_forward(input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, relu, reverse);
  auto out = RnnFunction::apply(input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, relu, reverse);
  return {out[0], out[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(rnnattn, Autograd, m) {
  m.impl("rnn_forward", &rnn_forward_autograd);
}

}  // namespace rnnattn

// Autograd of rnnattn::gru_forward and rnnattn::lstm_forward at the Autograd
// dispatch key (all devices): the backwards are the fused gru_backward /
// lstm_backward, fed the reserve the forward returned; a backward that must
// itself be differentiable (create_graph=True) is gru_ / lstm_
// backward_differentiable (see backward_needs_graph in autograd_common.h).
// C++ for the reason given in rnn_autograd.cpp (per-call cost).
#include <torch/autograd.h>
#include <torch/library.h>

#include <initializer_list>
#include <vector>

#include "autograd_common.h"

namespace rnnattn {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptTensor = c10::optional<at::Tensor>;

bool given(const OptTensor& t) { return t.has_value() && t->defined(); }

// The forwards return the reserve as an output (the op's schema has it), so
// autograd would hand the backward a grad for it: with materialized grads, a
// zero tensor as large as the reserve (4H or 5H values a row, more than the
// output itself). The forwards turn materializing off and the backwards fill
// in zeros only for the outputs that need them: grad of the output or of a
// final state that was not used.
at::Tensor grad_or_zeros(const at::Tensor& grad, const at::Tensor& like) {
  return grad.defined() ? grad : at::zeros_like(like, at::MemoryFormat::Contiguous);
}

// needs_input_grad counts only the tensor arguments that were given
// (batch_sizes, the biases and w_hr may be None): edge[i] is argument i's
// edge, or -1. present: whether each argument is a given tensor.
std::vector<int> edges_of(std::initializer_list<bool> present) {
  std::vector<int> e;
  int next = 0;
  for (bool p : present) e.push_back(p ? next++ : -1);
  return e;
}

bool needs(AutogradContext* ctx, const std::vector<int>& edge, int arg) {
  return edge[arg] >= 0 && ctx->needs_input_grad(edge[arg]);
}

using GruOut = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

GruOut call_gru_forward(const at::Tensor& input, const OptTensor& batch_sizes,
                        const at::Tensor& hx, const at::Tensor& w_ih, const at::Tensor& w_hh,
                        const OptTensor& b_ih, const OptTensor& b_hh, bool reverse, bool train) {
  static const auto op =
      find_op<GruOut(const at::Tensor&, const OptTensor&, const at::Tensor&, const at::Tensor&,
                     const at::Tensor&, const OptTensor&, const OptTensor&, bool, bool)>(
          "rnnattn::gru_forward");
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return op.call(input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, reverse, train);
}

// Arguments: 0 input, 1 batch_sizes, 2 hx, 3 w_ih, 4 w_hh, 5 b_ih, 6 b_hh, 7 reverse.
class GruFunction : public torch::autograd::Function<GruFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input,
                               const OptTensor& batch_sizes, const at::Tensor& hx,
                               const at::Tensor& w_ih, const at::Tensor& w_hh,
                               const OptTensor& b_ih, const OptTensor& b_hh, bool reverse) {
    auto [output, h_n, reserve] =
        call_gru_forward(input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, reverse, /*train=*/true);
    // The biases only for the differentiable backward (as in rnn_autograd.cpp).
    ctx->save_for_backward({input, hx, w_ih, w_hh, output, reserve, b_ih.value_or(at::Tensor()),
                            b_hh.value_or(at::Tensor())});
    ctx->saved_data["batch_sizes"] = batch_sizes;
    ctx->saved_data["has_bias"] = given(b_ih);
    ctx->saved_data["reverse"] = reverse;
    ctx->mark_non_differentiable({reserve});
    ctx->set_materialize_grads(false);
    return {output, h_n, reserve};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op =
        find_op<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
            const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&,
            const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
            const at::Tensor&, bool, bool, bool)>("rnnattn::gru_backward");
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &input = saved[0], &hx = saved[1], &w_ih = saved[2], &w_hh = saved[3],
                     &output = saved[4], &reserve = saved[5], &b_ih = saved[6], &b_hh = saved[7];
    // h_n has hx's shape.
    const at::Tensor grad_output = grad_or_zeros(grads[0], output);
    const at::Tensor grad_hn = grad_or_zeros(grads[1], hx);
    auto batch_sizes = ctx->saved_data["batch_sizes"].toOptional<at::Tensor>();
    const bool bias = ctx->saved_data["has_bias"].toBool();
    const auto edge = edges_of({true, given(batch_sizes), true, true, true, bias, bias});
    if (backward_needs_graph({&grad_output, &grad_hn, &input, &hx, &w_ih, &w_hh, &b_ih, &b_hh})) {
      static const auto diff =
          find_op<std::vector<at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                          const OptTensor&, const at::Tensor&, const at::Tensor&,
                                          const at::Tensor&, const OptTensor&, const OptTensor&,
                                          bool, c10::ArrayRef<int64_t>)>(
              "rnnattn::gru_backward_differentiable");
      const std::vector<int64_t> need = {needs(ctx, edge, 0), needs(ctx, edge, 2),
                                         needs(ctx, edge, 3), needs(ctx, edge, 4),
                                         needs(ctx, edge, 5), needs(ctx, edge, 6)};
      const auto g = diff.call(grad_output, grad_hn, input, batch_sizes, hx, w_ih, w_hh, opt(b_ih),
                               opt(b_hh), ctx->saved_data["reverse"].toBool(), need);
      auto keep = [&](int arg, const at::Tensor& t) { return needs(ctx, edge, arg) ? t : at::Tensor(); };
      return {keep(0, g[0]), at::Tensor(), keep(2, g[1]), keep(3, g[2]),
              keep(4, g[3]), keep(5, g[4]), keep(6, g[5]), at::Tensor()};
    }
    const bool need_weight = needs(ctx, edge, 3) || needs(ctx, edge, 4) || needs(ctx, edge, 5) ||
                             needs(ctx, edge, 6);
    auto [dx, dhx, dwi, dwh, dbi, dbh] =
        op.call(grad_output, grad_hn, input, batch_sizes, hx, w_ih, w_hh, output, reserve,
                ctx->saved_data["reverse"].toBool(), needs(ctx, edge, 0), need_weight);
    auto keep = [&](int arg, const at::Tensor& g) { return needs(ctx, edge, arg) ? g : at::Tensor(); };
    return {keep(0, dx),  at::Tensor(), keep(2, dhx), keep(3, dwi),
            keep(4, dwh), keep(5, dbi),  keep(6, dbh), at::Tensor()};
  }
};

using LstmOut = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

LstmOut call_lstm_forward(const at::Tensor& input, const OptTensor& batch_sizes,
                          const at::Tensor& hx, const at::Tensor& cx, const at::Tensor& w_ih,
                          const at::Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
                          const OptTensor& w_hr, bool reverse, bool train) {
  static const auto op =
      find_op<LstmOut(const at::Tensor&, const OptTensor&, const at::Tensor&, const at::Tensor&,
                      const at::Tensor&, const at::Tensor&, const OptTensor&, const OptTensor&,
                      const OptTensor&, bool, bool)>("rnnattn::lstm_forward");
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return op.call(input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, train);
}

// Arguments: 0 input, 1 batch_sizes, 2 hx, 3 cx, 4 w_ih, 5 w_hh, 6 b_ih,
// 7 b_hh, 8 w_hr, 9 reverse.
class LstmFunction : public torch::autograd::Function<LstmFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input,
                               const OptTensor& batch_sizes, const at::Tensor& hx,
                               const at::Tensor& cx, const at::Tensor& w_ih,
                               const at::Tensor& w_hh, const OptTensor& b_ih,
                               const OptTensor& b_hh, const OptTensor& w_hr, bool reverse) {
    auto [output, h_n, c_n, reserve] =
        call_lstm_forward(input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, reverse,
                          /*train=*/true);
    // The biases only for the differentiable backward (as in rnn_autograd.cpp).
    ctx->save_for_backward({input, hx, cx, w_ih, w_hh, w_hr.value_or(at::Tensor()), output,
                            reserve, b_ih.value_or(at::Tensor()), b_hh.value_or(at::Tensor())});
    ctx->saved_data["batch_sizes"] = batch_sizes;
    ctx->saved_data["has_bias"] = given(b_ih);
    ctx->saved_data["reverse"] = reverse;
    ctx->mark_non_differentiable({reserve});
    ctx->set_materialize_grads(false);
    return {output, h_n, c_n, reserve};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op =
        find_op<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                           at::Tensor>(
            const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
            const OptTensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
            const at::Tensor&, const OptTensor&, const at::Tensor&, const at::Tensor&, bool, bool,
            bool)>("rnnattn::lstm_backward");
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &input = saved[0], &hx = saved[1], &cx = saved[2], &w_ih = saved[3],
                     &w_hh = saved[4], &output = saved[6], &reserve = saved[7],
                     &b_ih = saved[8], &b_hh = saved[9];
    const OptTensor w_hr = opt(saved[5]);
    // h_n and c_n have hx's and cx's shapes.
    const at::Tensor grad_output = grad_or_zeros(grads[0], output);
    const at::Tensor grad_hn = grad_or_zeros(grads[1], hx);
    const at::Tensor grad_cn = grad_or_zeros(grads[2], cx);
    auto batch_sizes = ctx->saved_data["batch_sizes"].toOptional<at::Tensor>();
    const bool bias = ctx->saved_data["has_bias"].toBool();
    const auto edge =
        edges_of({true, given(batch_sizes), true, true, true, true, bias, bias, given(w_hr)});
    if (backward_needs_graph({&grad_output, &grad_hn, &grad_cn, &input, &hx, &cx, &w_ih, &w_hh,
                              &saved[5], &b_ih, &b_hh})) {
      static const auto diff =
          find_op<std::vector<at::Tensor>(
              const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
              const OptTensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
              const at::Tensor&, const OptTensor&, const OptTensor&, const OptTensor&, bool,
              c10::ArrayRef<int64_t>)>("rnnattn::lstm_backward_differentiable");
      std::vector<int64_t> need;
      for (int arg : {0, 2, 3, 4, 5, 6, 7, 8}) need.push_back(needs(ctx, edge, arg));
      const auto g = diff.call(grad_output, grad_hn, grad_cn, input, batch_sizes, hx, cx, w_ih,
                               w_hh, opt(b_ih), opt(b_hh), w_hr,
                               ctx->saved_data["reverse"].toBool(), need);
      auto keep = [&](int arg, const at::Tensor& t) { return needs(ctx, edge, arg) ? t : at::Tensor(); };
      return {keep(0, g[0]), at::Tensor(), keep(2, g[1]), keep(3, g[2]), keep(4, g[3]),
              keep(5, g[4]), keep(6, g[5]),  keep(7, g[6]), keep(8, g[7]), at::Tensor()};
    }
    const bool need_weight = needs(ctx, edge, 4) || needs(ctx, edge, 5) || needs(ctx, edge, 6) ||
                             needs(ctx, edge, 7) || needs(ctx, edge, 8);
    auto [dx, dhx, dcx, dwi, dwh, db, dwr] =
        op.call(grad_output, grad_hn, grad_cn, input, batch_sizes, hx, cx, w_ih, w_hh, w_hr,
                output, reserve, ctx->saved_data["reverse"].toBool(), needs(ctx, edge, 0),
                need_weight);
    auto keep = [&](int arg, const at::Tensor& g) { return needs(ctx, edge, arg) ? g : at::Tensor(); };
    // b_ih and b_hh enter as a sum, so they share one grad; each gets its own
    // tensor so that their .grad buffers never alias.
    const bool both_biases = needs(ctx, edge, 6) && needs(ctx, edge, 7);
    return {keep(0, dx),  at::Tensor(), keep(2, dhx),
            keep(3, dcx), keep(4, dwi), keep(5, dwh),
            keep(6, db),  keep(7, both_biases ? db.clone() : db),
            keep(8, dwr), at::Tensor()};
  }
};

bool any_needs_grad(std::initializer_list<const OptTensor*> ts) {
  for (const OptTensor* t : ts)
    if (needs_grad(*t)) return true;
  return false;
}

// train=False lets a forward that records no graph drop the reserve; when a
// graph is recorded the reserve is always kept (a backward may run).
GruOut gru_forward_autograd(const at::Tensor& input, const OptTensor& batch_sizes,
                            const at::Tensor& hx, const at::Tensor& w_ih, const at::Tensor& w_hh,
                            const OptTensor& b_ih, const OptTensor& b_hh, bool reverse,
                            bool train) {
  if (!at::GradMode::is_enabled() ||
      !(needs_grad(input) || needs_grad(hx) || needs_grad(w_ih) || needs_grad(w_hh) ||
        any_needs_grad({&b_ih, &b_hh})))
    return call_gru_forward(input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, reverse, train);
  auto out = GruFunction::apply(input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, reverse);
  return {out[0], out[1], out[2]};
}

LstmOut lstm_forward_autograd(const at::Tensor& input, const OptTensor& batch_sizes,
                              const at::Tensor& hx, const at::Tensor& cx, const at::Tensor& w_ih,
                              const at::Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
                              const OptTensor& w_hr, bool reverse, bool train) {
  if (!at::GradMode::is_enabled() ||
      !(needs_grad(input) || needs_grad(hx) || needs_grad(cx) || needs_grad(w_ih) ||
        needs_grad(w_hh) || any_needs_grad({&b_ih, &b_hh, &w_hr})))
    return call_lstm_forward(input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, reverse,
                             train);
  auto out = LstmFunction::apply(input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, reverse);
  return {out[0], out[1], out[2], out[3]};
}

}  // namespace

TORCH_LIBRARY_IMPL(rnnattn, Autograd, m) {
  m.impl("gru_forward", &gru_forward_autograd);
  m.impl("lstm_forward", &lstm_forward_autograd);
}

}  // namespace rnnattn

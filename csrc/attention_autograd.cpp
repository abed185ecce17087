// Autograd of rnnattn::attention_pool_forward and
// rnnattn::attention_pool_scores_forward, registered at the Autograd
// dispatch key (all devices); the backwards are the fused *_backward ops, or
// where the backward must itself be differentiable (create_graph=True) the
// *_backward_differentiable ops (see backward_needs_graph in
// autograd_common.h).
// C++ for the reason given in rnn_autograd.cpp: a Python autograd wrapper
// costs ~80 us per call with grad, more than a small pooling call.
#include <torch/autograd.h>
#include <torch/library.h>

#include <vector>

#include "autograd_common.h"

namespace rnnattn {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptTensor = c10::optional<at::Tensor>;
using TensorPair = std::tuple<at::Tensor, at::Tensor>;

TensorPair call_linear_forward(const at::Tensor& input, const at::Tensor& weight,
                               const OptTensor& bias, const OptTensor& lengths,
                               const OptTensor& mask, int64_t chunk_size) {
  static const auto op =
      find_op<TensorPair(const at::Tensor&, const at::Tensor&, const OptTensor&,
                         const OptTensor&, const OptTensor&, int64_t)>(
          "rnnattn::attention_pool_forward");
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return op.call(input, weight, bias, lengths, mask, chunk_size);
}

TensorPair call_scores_forward(const at::Tensor& input, const at::Tensor& scores,
                               const OptTensor& lengths, const OptTensor& mask,
                               int64_t chunk_size) {
  static const auto op =
      find_op<TensorPair(const at::Tensor&, const at::Tensor&, const OptTensor&,
                         const OptTensor&, int64_t)>("rnnattn::attention_pool_scores_forward");
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return op.call(input, scores, lengths, mask, chunk_size);
}

// Both backward ops take (grad_context, grad_weights, input, second, lengths,
// mask, context, weights, chunk_size, need_input, need_second), where second
// is the weight (linear score) or the scores.
using BackwardSignature = TensorPair(const at::Tensor&, const OptTensor&, const at::Tensor&,
                                     const at::Tensor&, const OptTensor&, const OptTensor&,
                                     const at::Tensor&, const at::Tensor&, int64_t, bool, bool);
// Both differentiable backwards take (grad_context, grad_weights, input,
// second, lengths, mask, chunk_size, need).
using DifferentiableSignature = std::vector<at::Tensor>(
    const OptTensor&, const OptTensor&, const at::Tensor&, const at::Tensor&, const OptTensor&,
    const OptTensor&, int64_t, c10::ArrayRef<int64_t>);

// What both backwards need; the second saved tensor is the weight or the
// scores. lengths and mask never need grads: kept as data.
void save_for_pool_backward(AutogradContext* ctx, const at::Tensor& input,
                            const at::Tensor& second, const at::Tensor& context,
                            const at::Tensor& weights, const OptTensor& lengths,
                            const OptTensor& mask, int64_t chunk_size) {
  ctx->save_for_backward({input, second, context, weights});
  ctx->saved_data["lengths"] = lengths;
  ctx->saved_data["mask"] = mask;
  ctx->saved_data["chunk_size"] = chunk_size;
  // An output the caller did not use (often the weights) then arrives as an
  // undefined grad; the kernel skips its terms.
  ctx->set_materialize_grads(false);
}

// Grads of input (edge 0) and of the second argument (edge 1), undefined
// where not needed, from the fused backward op (or the differentiable one).
TensorPair pool_backward(const c10::TypedOperatorHandle<BackwardSignature>& op,
                         const c10::TypedOperatorHandle<DifferentiableSignature>& diff,
                         AutogradContext* ctx, const variable_list& grads) {
  const auto saved = ctx->get_saved_variables();
  const at::Tensor &input = saved[0], &second = saved[1], &context = saved[2],
                   &weights = saved[3];
  const bool need_input = ctx->needs_input_grad(0), need_second = ctx->needs_input_grad(1);
  if (!need_input && !need_second) return {};
  if (backward_needs_graph({&grads[0], &grads[1], &input, &second})) {
    const auto g = diff.call(opt(grads[0]), opt(grads[1]), input, second,
                             ctx->saved_data["lengths"].toOptional<at::Tensor>(),
                             ctx->saved_data["mask"].toOptional<at::Tensor>(),
                             ctx->saved_data["chunk_size"].toInt(),
                             std::vector<int64_t>{need_input, need_second});
    return {need_input ? g[0] : at::Tensor(), need_second ? g[1] : at::Tensor()};
  }
  const at::Tensor grad_context = grads[0].defined() ? grads[0] : at::zeros_like(context);
  const OptTensor grad_weights = grads[1].defined() ? OptTensor(grads[1]) : c10::nullopt;
  auto [dx, d2] = op.call(grad_context, grad_weights, input, second,
                          ctx->saved_data["lengths"].toOptional<at::Tensor>(),
                          ctx->saved_data["mask"].toOptional<at::Tensor>(), context, weights,
                          ctx->saved_data["chunk_size"].toInt(), need_input, need_second);
  return {need_input ? dx : at::Tensor(), need_second ? d2 : at::Tensor()};
}

// Arguments: 0 input, 1 weight, 2 bias, 3 lengths, 4 mask, 5 chunk_size.
class LinearPoolFunction : public torch::autograd::Function<LinearPoolFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input,
                               const at::Tensor& weight, const OptTensor& bias,
                               const OptTensor& lengths, const OptTensor& mask,
                               int64_t chunk_size) {
    auto [context, weights] = call_linear_forward(input, weight, bias, lengths, mask, chunk_size);
    save_for_pool_backward(ctx, input, weight, context, weights, lengths, mask, chunk_size);
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    return {context, weights};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = find_op<BackwardSignature>("rnnattn::attention_pool_backward");
    static const auto diff =
        find_op<DifferentiableSignature>("rnnattn::attention_pool_backward_differentiable");
    auto [dx, dw] = pool_backward(op, diff, ctx, grads);
    // d/d(bias) is exactly zero: the bias shifts every score of its head.
    // (Edges exist for the tensor arguments given: input 0, weight 1, bias 2.)
    at::Tensor db;
    if (ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(2)) {
      const at::Tensor weight = ctx->get_saved_variables()[1];
      db = at::zeros({weight.size(0)}, weight.options());
    }
    return {dx, dw, db, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// Arguments: 0 input, 1 scores, 2 lengths, 3 mask, 4 chunk_size.
class ScoresPoolFunction : public torch::autograd::Function<ScoresPoolFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input,
                               const at::Tensor& scores, const OptTensor& lengths,
                               const OptTensor& mask, int64_t chunk_size) {
    auto [context, weights] = call_scores_forward(input, scores, lengths, mask, chunk_size);
    save_for_pool_backward(ctx, input, scores, context, weights, lengths, mask, chunk_size);
    return {context, weights};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = find_op<BackwardSignature>("rnnattn::attention_pool_scores_backward");
    static const auto diff =
        find_op<DifferentiableSignature>("rnnattn::attention_pool_scores_backward_differentiable");
    auto [dx, dsc] = pool_backward(op, diff, ctx, grads);
    return {dx, dsc, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

TensorPair attention_pool_forward_autograd(const at::Tensor& input, const at::Tensor& weight,
                                           const OptTensor& bias, const OptTensor& lengths,
                                           const OptTensor& mask, int64_t chunk_size) {
  if (!at::GradMode::is_enabled() ||
      !(needs_grad(input) || needs_grad(weight) || needs_grad(bias)))
    return call_linear_forward(input, weight, bias, lengths, mask, chunk_size);
  auto out = LinearPoolFunction::apply(input, weight, bias, lengths, mask, chunk_size);
  return {out[0], out[1]};
}

TensorPair attention_pool_scores_forward_autograd(const at::Tensor& input,
                                                  const at::Tensor& scores,
                                                  const OptTensor& lengths, const OptTensor& mask,
                                                  int64_t chunk_size) {
  if (!at::GradMode::is_enabled() || !(needs_grad(input) || needs_grad(scores)))
    return call_scores_forward(input, scores, lengths, mask, chunk_size);
  auto out = ScoresPoolFunction::apply(input, scores, lengths, mask, chunk_size);
  return {out[0], out[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(rnnattn, Autograd, m) {
  m.impl("attention_pool_forward", &attention_pool_forward_autograd);
  m.impl("attention_pool_scores_forward", &attention_pool_scores_forward_autograd);
}

}  // namespace rnnattn

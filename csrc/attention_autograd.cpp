// Autograd of rnnattn::attention_pool_forward and
// rnnattn::attention_pool_scores_forward, registered at the Autograd
// dispatch key (all devices); the backwards are the fused *_backward ops.
// C++ for the reason given in rnn_autograd.cpp: a Python autograd wrapper
// costs ~80 us per call with grad, more than a small pooling call.
#include <torch/autograd.h>
#include <torch/library.h>

namespace rnnattn {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptTensor = c10::optional<at::Tensor>;
using TensorPair = std::tuple<at::Tensor, at::Tensor>;

template <typename Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

bool needs_grad(const at::Tensor& t) { return t.defined() && t.requires_grad(); }
bool needs_grad(const OptTensor& t) { return t.has_value() && needs_grad(*t); }

// The fused backwards have no backward of their own: under create_graph=True
// their results would silently cut the graph, so refuse instead.
void refuse_double_backward(std::initializer_list<const at::Tensor*> tensors) {
  if (!at::GradMode::is_enabled()) return;
  for (const at::Tensor* t : tensors)
    TORCH_CHECK(!needs_grad(*t),
                "rnnattn: attention pooling does not support double backward (create_graph=True "
                "through its gradients); use rnnattn.reference for higher-order gradients");
}

// An output the caller did not use (often the weights) arrives as an
// undefined grad (grads are not materialized); the kernel skips its terms.
OptTensor optional_grad(const at::Tensor& g) { return g.defined() ? OptTensor(g) : c10::nullopt; }

// Arguments: 0 input, 1 weight, 2 bias, 3 lengths, 4 mask, 5 chunk_size.
class LinearPoolFunction : public torch::autograd::Function<LinearPoolFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input,
                               const at::Tensor& weight, const OptTensor& bias,
                               const OptTensor& lengths, const OptTensor& mask,
                               int64_t chunk_size) {
    static const auto op =
        find_op<TensorPair(const at::Tensor&, const at::Tensor&, const OptTensor&,
                           const OptTensor&, const OptTensor&, int64_t)>(
            "rnnattn::attention_pool_forward");
    at::Tensor context, weights;
    {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      std::tie(context, weights) = op.call(input, weight, bias, lengths, mask, chunk_size);
    }
    ctx->save_for_backward({input, weight, context, weights});
    // lengths and mask never need grads: kept as data.
    ctx->saved_data["lengths"] = lengths;
    ctx->saved_data["mask"] = mask;
    ctx->saved_data["chunk_size"] = chunk_size;
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    ctx->set_materialize_grads(false);
    return {context, weights};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op =
        find_op<TensorPair(const at::Tensor&, const OptTensor&, const at::Tensor&,
                           const at::Tensor&, const OptTensor&, const OptTensor&,
                           const at::Tensor&, const at::Tensor&, int64_t, bool, bool)>(
            "rnnattn::attention_pool_backward");
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &input = saved[0], &weight = saved[1], &context = saved[2],
                     &weights = saved[3];
    refuse_double_backward({&grads[0], &grads[1], &input, &weight});
    // Edges exist for the tensor arguments given: input 0, weight 1, bias 2.
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    const bool need_input = ctx->needs_input_grad(0), need_weight = ctx->needs_input_grad(1);
    at::Tensor dx, dw, db;
    if (need_input || need_weight) {
      const at::Tensor grad_context = grads[0].defined() ? grads[0] : at::zeros_like(context);
      std::tie(dx, dw) = op.call(grad_context, optional_grad(grads[1]), input, weight,
                                 ctx->saved_data["lengths"].toOptional<at::Tensor>(),
                                 ctx->saved_data["mask"].toOptional<at::Tensor>(), context,
                                 weights, ctx->saved_data["chunk_size"].toInt(), need_input,
                                 need_weight);
    }
    // d/d(bias) is exactly zero: the bias shifts every score of its head.
    if (has_bias && ctx->needs_input_grad(2)) db = at::zeros({weight.size(0)}, weight.options());
    return {need_input ? dx : at::Tensor(), need_weight ? dw : at::Tensor(), db,
            at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// Arguments: 0 input, 1 scores, 2 lengths, 3 mask, 4 chunk_size.
class ScoresPoolFunction : public torch::autograd::Function<ScoresPoolFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input,
                               const at::Tensor& scores, const OptTensor& lengths,
                               const OptTensor& mask, int64_t chunk_size) {
    static const auto op =
        find_op<TensorPair(const at::Tensor&, const at::Tensor&, const OptTensor&,
                           const OptTensor&, int64_t)>("rnnattn::attention_pool_scores_forward");
    at::Tensor context, weights;
    {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      std::tie(context, weights) = op.call(input, scores, lengths, mask, chunk_size);
    }
    ctx->save_for_backward({input, scores, context, weights});
    ctx->saved_data["lengths"] = lengths;
    ctx->saved_data["mask"] = mask;
    ctx->saved_data["chunk_size"] = chunk_size;
    ctx->set_materialize_grads(false);
    return {context, weights};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op =
        find_op<TensorPair(const at::Tensor&, const OptTensor&, const at::Tensor&,
                           const at::Tensor&, const OptTensor&, const OptTensor&,
                           const at::Tensor&, const at::Tensor&, int64_t, bool, bool)>(
            "rnnattn::attention_pool_scores_backward");
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &input = saved[0], &scores = saved[1], &context = saved[2],
                     &weights = saved[3];
    refuse_double_backward({&grads[0], &grads[1], &input, &scores});
    const bool need_input = ctx->needs_input_grad(0), need_scores = ctx->needs_input_grad(1);
    at::Tensor dx, dsc;
    if (need_input || need_scores) {
      const at::Tensor grad_context = grads[0].defined() ? grads[0] : at::zeros_like(context);
      std::tie(dx, dsc) = op.call(grad_context, optional_grad(grads[1]), input, scores,
                                  ctx->saved_data["lengths"].toOptional<at::Tensor>(),
                                  ctx->saved_data["mask"].toOptional<at::Tensor>(), context,
                                  weights, ctx->saved_data["chunk_size"].toInt(), need_input,
                                  need_scores);
    }
    return {need_input ? dx : at::Tensor(), need_scores ? dsc : at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor()};
  }
};

TensorPair attention_pool_forward_autograd(const at::Tensor& input, const at::Tensor& weight,
                                           const OptTensor& bias, const OptTensor& lengths,
                                           const OptTensor& mask, int64_t chunk_size) {
  if (!at::GradMode::is_enabled() ||
      !(needs_grad(input) || needs_grad(weight) || needs_grad(bias))) {
    static const auto op =
        find_op<TensorPair(const at::Tensor&, const at::Tensor&, const OptTensor&,
                           const OptTensor&, const OptTensor&, int64_t)>(
            "rnnattn::attention_pool_forward");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return op.call(input, weight, bias, lengths, mask, chunk_size);
  }
  auto out = LinearPoolFunction::apply(input, weight, bias, lengths, mask, chunk_size);
  return {out[0], out[1]};
}

TensorPair attention_pool_scores_forward_autograd(const at::Tensor& input,
                                                  const at::Tensor& scores,
                                                  const OptTensor& lengths, const OptTensor& mask,
                                                  int64_t chunk_size) {
  if (!at::GradMode::is_enabled() || !(needs_grad(input) || needs_grad(scores))) {
    static const auto op =
        find_op<TensorPair(const at::Tensor&, const at::Tensor&, const OptTensor&,
                           const OptTensor&, int64_t)>("rnnattn::attention_pool_scores_forward");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return op.call(input, scores, lengths, mask, chunk_size);
  }
  auto out = ScoresPoolFunction::apply(input, scores, lengths, mask, chunk_size);
  return {out[0], out[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(rnnattn, Autograd, m) {
  m.impl("attention_pool_forward", &attention_pool_forward_autograd);
  m.impl("attention_pool_scores_forward", &attention_pool_scores_forward_autograd);
}

}  // namespace rnnattn

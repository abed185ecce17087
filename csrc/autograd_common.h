// Pieces shared by the C++ autograd kernels (rnn_autograd.cpp,
// attention_autograd.cpp): operator handles, grad checks, and the refusal of
// double backward.
#pragma once

#include <torch/autograd.h>

#include <initializer_list>
#include <string>

namespace rnnattn {

// The typed dispatcher handle of one of our operators (look it up once, in a
// function-local static, where it is used).
template <typename Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

inline bool needs_grad(const at::Tensor& t) { return t.defined() && t.requires_grad(); }
inline bool needs_grad(const c10::optional<at::Tensor>& t) {
  return t.has_value() && needs_grad(*t);
}

// The fused backward kernels have no backward of their own: under
// create_graph=True their results would silently cut the graph (grads of
// grads would come out as zeros), so refuse instead. `what` names the
// operation in the message ("the RNN", "attention pooling").
inline void refuse_double_backward(const char* what,
                                   std::initializer_list<const at::Tensor*> tensors) {
  if (!at::GradMode::is_enabled()) return;
  for (const at::Tensor* t : tensors)
    TORCH_CHECK(!needs_grad(*t), "rnnattn: ", what,
                " does not support double backward (create_graph=True through its gradients); "
                "use rnnattn.reference for higher-order gradients");
}

}  // namespace rnnattn

// Pieces shared by the C++ autograd kernels (rnn_autograd.cpp,
// gru_lstm_autograd.cpp, attention_autograd.cpp): operator handles, grad
// checks, and the test that picks the differentiable backward (double
// backward).
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

// A saved tensor that may be undefined (an absent bias) as an optional argument.
inline c10::optional<at::Tensor> opt(const at::Tensor& t) {
  return t.defined() ? c10::optional<at::Tensor>(t) : c10::nullopt;
}

// Whether a backward must record a graph of its own: it runs with grad mode
// on (create_graph=True) and one of the tensors its grads are a function of
// (the incoming grads, the saved inputs, weights and biases; undefined ones
// are skipped) requires grad. The fused backward kernels have no backward of
// their own, so then the autograd kernels call the op's
// *_backward_differentiable instead (rnnattn/_differentiable_backward.py:
// recompute with the plain-PyTorch reference, differentiate with
// create_graph=True); otherwise (every first-order backward) the fused one.
inline bool backward_needs_graph(std::initializer_list<const at::Tensor*> tensors) {
  if (!at::GradMode::is_enabled()) return false;
  for (const at::Tensor* t : tensors)
    if (needs_grad(*t)) return true;
  return false;
}

}  // namespace rnnattn

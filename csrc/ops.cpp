// Operator schemas of the rnnattn library, and the Python module stub that
// loads them. Kernels live in csrc/cpu (TORCH_LIBRARY_IMPL for CPU) and
// csrc/cuda (for CUDA); the Python layer (rnnattn/ops.py) adds autograd and
// fake (meta) kernels.
#include <torch/extension.h>

TORCH_LIBRARY(rnnattn, m) {
  // One layer, one direction of an Elman RNN.
  //   input: (T, B, I) padded time-major, or (N, I) packed rows when
  //          batch_sizes (int64, CPU, length T, non-increasing) is given.
  //   hx:    (B, H) initial state.  output: like input with I -> H.
  //   h_n:   (B, H), each row the state after its sequence's last step.
  //   reverse walks time backwards (the second direction of a BiRNN).
  m.def(
      "rnn_forward(Tensor input, Tensor? batch_sizes, Tensor hx, Tensor w_ih, "
      "Tensor w_hh, Tensor? b_ih, Tensor? b_hh, bool relu, bool reverse) "
      "-> (Tensor output, Tensor h_n)");
  // Backward through time. Only the dh recurrence is sequential; dx, dW_ih,
  // dW_hh and the bias grad are one GEMM / reduction each over all steps.
  // Grads that are not needed come back as empty tensors (numel 0).
  m.def(
      "rnn_backward(Tensor grad_output, Tensor grad_hn, Tensor input, "
      "Tensor? batch_sizes, Tensor hx, Tensor w_ih, Tensor w_hh, Tensor output, "
      "bool relu, bool reverse, bool need_input_grad, bool need_weight_grad) "
      "-> (Tensor grad_input, Tensor grad_hx, Tensor grad_w_ih, Tensor grad_w_hh, "
      "Tensor grad_bias)");
}

// Importing rnnattn._C loads this library and so registers the operators.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "rnnattn compiled operators (registered as torch.ops.rnnattn.*)";
#ifdef RNNATTN_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
}

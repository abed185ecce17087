// Operator schemas of the rnnattn library, and the Python module stub that
// loads them. Kernels live in csrc/cpu (TORCH_LIBRARY_IMPL for CPU) and
// csrc/cuda (for CUDA); the autograd of the forward ops in
// csrc/rnn_autograd.cpp and csrc/attention_autograd.cpp (Autograd key); the
// fake (meta) kernels in the Python layer (rnnattn/ops.py, attention_ops.py).
#include <torch/extension.h>

#include <string>

#include "cell_ops.h"
#include "module_call.h"
#include "cpu/blas.h"
#include "cpu/half.h"
#include "cpu/isa.h"
#include "cpu/packed_weights.h"
#include "cpu/small_gemm_bf16.h"
#include "stack.h"

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

  // One layer, one direction of a GRU (gates r, z, n; torch's math, gate
  // order and bias placement). Shapes as rnn_forward with w_ih (3H, I),
  // w_hh (3H, H), biases (3H). reserve (N, 4H): [r, z, n, W_hn h + b_hn] of
  // every row, what gru_backward needs beside the output. train=False (no
  // backward will run) returns an empty reserve and keeps only what a step
  // needs; the autograd kernel keeps the reserve whenever it records a graph.
  m.def(
      "gru_forward(Tensor input, Tensor? batch_sizes, Tensor hx, Tensor w_ih, Tensor w_hh, "
      "Tensor? b_ih, Tensor? b_hh, bool reverse, bool train=True) "
      "-> (Tensor output, Tensor h_n, Tensor reserve)");
  // b_ih and b_hh get separate grads (b_hn sits inside r * (W_hn h + b_hn)).
  m.def(
      "gru_backward(Tensor grad_output, Tensor grad_hn, Tensor input, Tensor? batch_sizes, "
      "Tensor hx, Tensor w_ih, Tensor w_hh, Tensor output, Tensor reserve, bool reverse, "
      "bool need_input_grad, bool need_weight_grad) -> (Tensor grad_input, Tensor grad_hx, "
      "Tensor grad_w_ih, Tensor grad_w_hh, Tensor grad_b_ih, Tensor grad_b_hh)");
  // One layer, one direction of an LSTM (gates i, f, g, o). w_ih (4H, I),
  // w_hh (4H, P), biases (4H), cx (B, H); w_hr (P, H) is the projection of
  // proj_size P (then h, hx, h_n and the output are P wide, else H).
  // reserve (N, 5H): [i, f, g, o, c] of every row (empty when not train, as
  // for the GRU).
  m.def(
      "lstm_forward(Tensor input, Tensor? batch_sizes, Tensor hx, Tensor cx, Tensor w_ih, "
      "Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? w_hr, bool reverse, bool train=True) "
      "-> (Tensor output, Tensor h_n, Tensor c_n, Tensor reserve)");
  // b_ih and b_hh enter as a sum: one grad_bias for both. grad_w_hr is empty
  // without a projection.
  m.def(
      "lstm_backward(Tensor grad_output, Tensor grad_hn, Tensor grad_cn, Tensor input, "
      "Tensor? batch_sizes, Tensor hx, Tensor cx, Tensor w_ih, Tensor w_hh, Tensor? w_hr, "
      "Tensor output, Tensor reserve, bool reverse, bool need_input_grad, bool need_weight_grad) "
      "-> (Tensor grad_input, Tensor grad_hx, Tensor grad_cx, Tensor grad_w_ih, Tensor grad_w_hh, "
      "Tensor grad_bias, Tensor grad_w_hr)");

  // ---- one-step cells (csrc/cell_ops.cpp) ----
  // torch's RNNCell / GRUCell / LSTMCell forward: input (B, I) or unbatched
  // (I); hx None (zeros) or (B, H) / (H); the same checks and messages. One
  // step of the layer op above (composite: its autograd is the layer's).
  m.def(
      "rnn_cell(Tensor input, Tensor? hx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
      "Tensor? b_hh, bool relu) -> Tensor");
  m.def(
      "gru_cell(Tensor input, Tensor? hx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
      "Tensor? b_hh) -> Tensor");
  // hx: None or [h_0, c_0]. Returns (h_1, c_1).
  m.def(
      "lstm_cell(Tensor input, Tensor[]? hx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
      "Tensor? b_hh) -> (Tensor, Tensor)");

  // ---- attention pooling (conventions in csrc/attention_common.h) ----
  // Linear score e_t = input_t . weight_h for each of the k heads, masked
  // softmax over the valid steps (of each chunk of chunk_size steps; 0 = the
  // whole sequence), context = sum_t a_t input_t. One pass over input.
  //   input (B, T, D) (any B/T strides); weight (k, D); bias (k,) or None:
  //   checked, not used (softmax is shift-invariant, so it cannot change the
  //   result; its grad is zero); lengths (B,) int, CPU or input's device;
  //   mask (B, T) bool.  -> context (B, C, k, D), weights (B, k, T).
  m.def(
      "attention_pool_forward(Tensor input, Tensor weight, Tensor? bias, Tensor? lengths, "
      "Tensor? mask, int chunk_size) -> (Tensor context, Tensor weights)");
  // Grads of input and weight from grads of both outputs (grad_weights may be
  // None). Grads not needed come back as empty tensors (numel 0).
  m.def(
      "attention_pool_backward(Tensor grad_context, Tensor? grad_weights, Tensor input, "
      "Tensor weight, Tensor? lengths, Tensor? mask, Tensor context, Tensor weights, "
      "int chunk_size, bool need_input_grad, bool need_weight_grad) "
      "-> (Tensor grad_input, Tensor grad_weight)");
  // The same pooling with the scores given, (B, T, k) (any strides): the
  // fused softmax + weighted sum for scores a GEMM computes (additive score).
  m.def(
      "attention_pool_scores_forward(Tensor input, Tensor scores, Tensor? lengths, "
      "Tensor? mask, int chunk_size) -> (Tensor context, Tensor weights)");
  m.def(
      "attention_pool_scores_backward(Tensor grad_context, Tensor? grad_weights, "
      "Tensor input, Tensor scores, Tensor? lengths, Tensor? mask, Tensor context, "
      "Tensor weights, int chunk_size, bool need_input_grad, bool need_scores_grad) "
      "-> (Tensor grad_input, Tensor grad_scores)");
}

// Importing rnnattn._C loads this library and so registers the operators.
// The cells and the modules' layer stack are also bound directly: eager calls
// skip torch.ops' argument parsing and the Python glue (rnnattn/rnn.py uses
// these outside torch.compile).
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "rnnattn compiled operators (registered as torch.ops.rnnattn.*)";
  m.def("rnn_cell", &rnnattn::rnn_cell, "torch.ops.rnnattn.rnn_cell, called directly");
  m.def("gru_cell", &rnnattn::gru_cell, "torch.ops.rnnattn.gru_cell, called directly");
  m.def("lstm_cell", &rnnattn::lstm_cell, "torch.ops.rnnattn.lstm_cell, called directly");
  m.def("stack_forward", &rnnattn::stack_forward,
        "the layers of rnnattn.RNN / GRU / LSTM (as rnnattn.functional.rnn / gru / lstm)");
  m.def("module_forward", &rnnattn::module_forward,
        "a padded eager call of rnnattn.RNN / GRU / LSTM; [] where the module's Python checks "
        "must run");
  m.def(
      "cpu_isa", [] { return std::string(rnnattn::cpu::cpu_isa_path_name()); },
      "the build of the CPU kernels that runs here: 'amx' (the avx512 build, with AMX tiles for "
      "the bfloat16 steps' products), 'avx512', 'avx2' or 'base' (csrc/cpu/isa.h, "
      "csrc/cpu/small_gemm_bf16.h)");
  m.def(
      "cpu_gemm",
      [] { return std::string(rnnattn::cpu::gemm_lib_name(rnnattn::cpu::float_gemm_lib())); },
      "the library of the CPU kernels' large float32 GEMMs: 'blas' (MKL) or 'onednn' "
      "(csrc/cpu/blas.h)");
  m.def(
      "cpu_packed_weights", [] { return rnnattn::cpu::steps_use_packed_weights(); },
      "whether the large float32 steps multiply by oneDNN's pre-reordered weights here (where "
      "oneDNN runs them; csrc/cpu/packed_weights.h)");
  m.def(
      "cpu_bf16_steps", [] { return std::string(rnnattn::cpu::half::bf16_steps_name()); },
      "how a bfloat16 call's recurrent steps multiply here: 'float32', 'kernel' (small_gemm_bf16), "
      "'kernel+library' (its large steps in oneDNN's bfloat16 GEMM) or 'kernel+packed' (the same "
      "on W_hh reordered once a call; csrc/cpu/half.h)");
#ifdef RNNATTN_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
}

// ---- differentiable backward (double backward) ----
// The grads of each forward op as a differentiable function of the incoming
// grads and the forward's inputs: what the autograd kernels call instead of
// the fused *_backward when the backward itself must record a graph
// (create_graph=True and one of its inputs requires grad). The only kernel
// of each is CompositeImplicitAutograd, in Python
// (rnnattn/_differentiable_backward.py): it recomputes the forward with
// rnnattn.reference and differentiates that with create_graph=True.
// need: one 0/1 per differentiable argument of the forward (its tensors in
// order, batch_sizes / lengths / mask excluded; attention_pool's bias too,
// whose grad is always zero); the result holds one grad per such argument,
// an empty tensor (numel 0) where not needed.
TORCH_LIBRARY_FRAGMENT(rnnattn, m) {
  // -> [input, hx, w_ih, w_hh, b_ih, b_hh]
  m.def(
      "rnn_backward_differentiable(Tensor grad_output, Tensor grad_hn, Tensor input, "
      "Tensor? batch_sizes, Tensor hx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, "
      "bool relu, bool reverse, int[] need) -> Tensor[]");
  // -> [input, hx, w_ih, w_hh, b_ih, b_hh]
  m.def(
      "gru_backward_differentiable(Tensor grad_output, Tensor grad_hn, Tensor input, "
      "Tensor? batch_sizes, Tensor hx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, "
      "bool reverse, int[] need) -> Tensor[]");
  // -> [input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr]
  m.def(
      "lstm_backward_differentiable(Tensor grad_output, Tensor grad_hn, Tensor grad_cn, "
      "Tensor input, Tensor? batch_sizes, Tensor hx, Tensor cx, Tensor w_ih, Tensor w_hh, "
      "Tensor? b_ih, Tensor? b_hh, Tensor? w_hr, bool reverse, int[] need) -> Tensor[]");
  // -> [input, weight]; a grad given as None: that output got none.
  m.def(
      "attention_pool_backward_differentiable(Tensor? grad_context, Tensor? grad_weights, "
      "Tensor input, Tensor weight, Tensor? lengths, Tensor? mask, int chunk_size, int[] need) "
      "-> Tensor[]");
  // -> [input, scores]
  m.def(
      "attention_pool_scores_backward_differentiable(Tensor? grad_context, "
      "Tensor? grad_weights, Tensor input, Tensor scores, Tensor? lengths, Tensor? mask, "
      "int chunk_size, int[] need) -> Tensor[]");
}

// The layers of rnnattn.RNN / GRU / LSTM in C++ (csrc/stack.cpp), bound in
// ops.cpp as rnnattn._C.stack_forward.
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace rnnattn {

// Which cell stack_forward runs (rnnattn/rnn.py passes these numbers).
enum StackCell : int64_t { kRnnTanh = 0, kRnnRelu = 1, kGru = 2, kLstm = 3 };

// input: (T, B, I) time-major, or packed rows with batch_sizes; hx (and for
// the LSTM cx): (num_layers * directions, B, ·); weights: torch's
// _flat_weights order (per layer and direction w_ih, w_hh[, b_ih, b_hh]
// [, w_hr]). Returns {output, h_n} (LSTM: {output, h_n, c_n}).
std::vector<at::Tensor> stack_forward(int64_t cell, const at::Tensor& input,
                                      const c10::optional<at::Tensor>& batch_sizes,
                                      const at::Tensor& hx, const c10::optional<at::Tensor>& cx,
                                      const std::vector<at::Tensor>& weights, int64_t num_layers,
                                      bool bidirectional, bool bias, bool proj, double dropout,
                                      bool train);

}  // namespace rnnattn

// The common eager call of rnnattn.RNN / GRU / LSTM in one C++ function,
// bound in ops.cpp as rnnattn._C.module_forward (csrc/module_call.cpp).
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace rnnattn {

// A padded (not packed) call: input (T, B, I), (B, T, I) with batch_first, or
// unbatched (T, I); hx (and cx for the LSTM) given or not. Does what the
// module's Python forward does around stack_forward (unbatched input, a zero
// state, batch_first, the shape/dtype/device agreement of input and state)
// and returns {output, h_n} (LSTM: {output, h_n, c_n}) shaped as torch's
// module returns them, or {} when any argument is not what a valid call
// has: the module then takes its Python path, whose checks are torch's own
// and raise torch's error. state_size: proj_size if the LSTM has one, else
// hidden_size.
std::vector<at::Tensor> module_forward(int64_t cell, const at::Tensor& input,
                                       const c10::optional<at::Tensor>& hx,
                                       const c10::optional<at::Tensor>& cx,
                                       const std::vector<at::Tensor>& weights, int64_t num_layers,
                                       bool bidirectional, bool bias, int64_t input_size,
                                       int64_t hidden_size, int64_t state_size, bool batch_first,
                                       double dropout, bool train);

}  // namespace rnnattn

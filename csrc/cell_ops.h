// One-step cell operators (csrc/cell_ops.cpp), declared for the pybind
// bindings in ops.cpp.
#pragma once

#include <ATen/ATen.h>

#include <tuple>
#include <vector>

namespace rnnattn {

at::Tensor rnn_cell(const at::Tensor& input, const c10::optional<at::Tensor>& hx,
                    const at::Tensor& w_ih, const at::Tensor& w_hh,
                    const c10::optional<at::Tensor>& b_ih, const c10::optional<at::Tensor>& b_hh,
                    bool relu);

at::Tensor gru_cell(const at::Tensor& input, const c10::optional<at::Tensor>& hx,
                    const at::Tensor& w_ih, const at::Tensor& w_hh,
                    const c10::optional<at::Tensor>& b_ih, const c10::optional<at::Tensor>& b_hh);

std::tuple<at::Tensor, at::Tensor> lstm_cell(const at::Tensor& input,
                                             const c10::optional<std::vector<at::Tensor>>& hx,
                                             const at::Tensor& w_ih, const at::Tensor& w_hh,
                                             const c10::optional<at::Tensor>& b_ih,
                                             const c10::optional<at::Tensor>& b_hh);

}  // namespace rnnattn

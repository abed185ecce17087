// One-step cell operators behind rnnattn.RNNCell, GRUCell and LSTMCell:
// rnnattn::rnn_cell, gru_cell, lstm_cell.
//
// A streaming decoder calls a cell once per token at batch 1, so the call's
// fixed cost is its whole cost. These do in C++ what torch's cell modules do
// in Python (unbatched input, a zero state when none is given, the checks
// and their messages) and then run one step of the fused layer operator
// (rnn_forward / gru_forward / lstm_forward with T = 1), whose autograd
// kernel gives the backward. Where no fused kernel covers the device and
// dtype, the step is ATen's own cell (at::rnn_tanh_cell, ...), as torch's
// modules compute it.
//
// They are CompositeImplicitAutograd: torch.compile and export see them
// decomposed into the layer operators. The Python module calls them through
// pybind (rnnattn._C.rnn_cell, ...) in eager mode, which skips the
// torch.ops argument parsing (several microseconds a call).
#include "cell_ops.h"

#include <torch/library.h>

#include "autograd_common.h"

namespace rnnattn {
namespace {

using OptTensor = c10::optional<at::Tensor>;

bool fused_kernel(const at::Tensor& input, const at::Tensor& w_ih, bool rnn) {
  if (w_ih.device() != input.device()) return false;  // ATen's cell reports it
  const auto dtype = input.scalar_type();
  const bool floating = dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf ||
                        dtype == at::kBFloat16;
  if (input.is_cpu()) return floating;
#ifdef RNNATTN_WITH_CUDA
  if (rnn && input.is_cuda()) return floating;
#else
  (void)rnn;
#endif
  return false;
}

// torch's Python-side checks of a cell's input and one state (RNNCell,
// GRUCell: "hidden"; LSTMCell: "hx[i]"), with its messages and types.
void check_dims(const char* cell, const char* what, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.dim() == 1 || t.dim() == 2, cell, ": Expected ", what,
                    " to be 1D or 2D, got ", t.dim(), "D instead");
}

// The weights' ranks, before their sizes are read (a module's are 2-D; the
// operator may be called with anything).
void check_weights(const char* cell, const at::Tensor& w_ih, const at::Tensor& w_hh) {
  TORCH_CHECK_VALUE(w_ih.dim() == 2 && w_hh.dim() == 2, cell,
                    ": weight_ih and weight_hh must be 2-D (gates * hidden_size, input_size / "
                    "hidden_size), got ", w_ih.dim(), "-D and ", w_hh.dim(), "-D");
}

// ATen's checks of a batched step (check_rnn_cell_forward_input/_hidden),
// with its messages, plus the dtype/device agreement the fused op needs.
void check_step(const char* cell, const at::Tensor& input, const at::Tensor& h,
                const at::Tensor& w_ih, int64_t hidden, const char* label, bool check_input) {
  if (check_input)
    TORCH_CHECK(input.size(1) == w_ih.size(1), "input has inconsistent input_size: got ",
                input.size(1), " expected ", w_ih.size(1));
  TORCH_CHECK(h.size(0) == input.size(0), "Input batch size ", input.size(0),
              " doesn't match hidden", label, " batch size ", h.size(0));
  TORCH_CHECK(h.size(1) == hidden, "hidden", label, " has inconsistent hidden_size: got ",
              h.size(1), ", expected ", hidden);
  TORCH_CHECK(input.scalar_type() == w_ih.scalar_type(), cell, " input dtype (",
              input.scalar_type(), ") does not match weight dtype (", w_ih.scalar_type(), ")");
  TORCH_CHECK(h.scalar_type() == input.scalar_type(), "hx dtype (", h.scalar_type(),
              ") does not match input dtype (", input.scalar_type(), ")");
  TORCH_CHECK(h.device() == input.device(),
              "Input and hidden tensors are not at the same device, found input tensor at ",
              input.device(), " and hidden tensor at ", h.device());
}

// The state to start from: hx as given (unsqueezed for unbatched input) or
// zeros of (B, hidden).
at::Tensor initial_state(const OptTensor& hx, const at::Tensor& input, int64_t hidden,
                         bool batched) {
  if (hx.has_value() && hx->defined()) return batched ? *hx : hx->unsqueeze(0);
  return at::zeros({input.size(0), hidden}, input.options());
}

// The one-state cells (RNN, GRU): torch's forward up to the step.
template <typename Step, typename AtenStep>
at::Tensor one_state_cell(const char* cell, const at::Tensor& input, const OptTensor& hx,
                          const at::Tensor& w_ih, const at::Tensor& w_hh, bool rnn, Step step,
                          AtenStep aten_step) {
  check_dims(cell, "input", input);
  check_weights(cell, w_ih, w_hh);
  const bool given = hx.has_value() && hx->defined();
  if (given) check_dims(cell, "hidden", *hx);
  const bool batched = input.dim() == 2;
  const at::Tensor x = batched ? input : input.unsqueeze(0);
  const int64_t hidden = w_hh.size(1);
  const at::Tensor h = initial_state(hx, x, hidden, batched);
  at::Tensor out;
  if (fused_kernel(x, w_ih, rnn)) {
    check_step(cell, x, h, w_ih, hidden, "0", true);
    out = step(x.unsqueeze(0), h);
  } else {
    out = aten_step(x, h);
  }
  return batched ? out : out.squeeze(0);
}

}  // namespace

at::Tensor rnn_cell(const at::Tensor& input, const OptTensor& hx, const at::Tensor& w_ih,
                    const at::Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
                    bool relu) {
  static const auto layer =
      find_op<std::tuple<at::Tensor, at::Tensor>(
          const at::Tensor&, const OptTensor&, const at::Tensor&, const at::Tensor&,
          const at::Tensor&, const OptTensor&, const OptTensor&, bool, bool)>(
          "rnnattn::rnn_forward");
  return one_state_cell(
      "RNNCell", input, hx, w_ih, w_hh, /*rnn=*/true,
      [&](const at::Tensor& x, const at::Tensor& h) {
        return std::get<1>(layer.call(x, c10::nullopt, h, w_ih, w_hh, b_ih, b_hh, relu, false));
      },
      [&](const at::Tensor& x, const at::Tensor& h) {
        return relu ? at::rnn_relu_cell(x, h, w_ih, w_hh, b_ih, b_hh)
                    : at::rnn_tanh_cell(x, h, w_ih, w_hh, b_ih, b_hh);
      });
}

at::Tensor gru_cell(const at::Tensor& input, const OptTensor& hx, const at::Tensor& w_ih,
                    const at::Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh) {
  static const auto layer =
      find_op<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
          const at::Tensor&, const OptTensor&, const at::Tensor&, const at::Tensor&,
          const at::Tensor&, const OptTensor&, const OptTensor&, bool, bool)>(
          "rnnattn::gru_forward");
  return one_state_cell(
      "GRUCell", input, hx, w_ih, w_hh, /*rnn=*/false,
      [&](const at::Tensor& x, const at::Tensor& h) {
        // No reserve when no backward can run (as ops.gru_layer).
        return std::get<1>(layer.call(x, c10::nullopt, h, w_ih, w_hh, b_ih, b_hh, false,
                                      at::GradMode::is_enabled()));
      },
      [&](const at::Tensor& x, const at::Tensor& h) {
        return at::gru_cell(x, h, w_ih, w_hh, b_ih, b_hh);
      });
}

std::tuple<at::Tensor, at::Tensor> lstm_cell(const at::Tensor& input,
                                             const c10::optional<std::vector<at::Tensor>>& hx,
                                             const at::Tensor& w_ih, const at::Tensor& w_hh,
                                             const OptTensor& b_ih, const OptTensor& b_hh) {
  static const auto layer =
      find_op<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
          const at::Tensor&, const OptTensor&, const at::Tensor&, const at::Tensor&,
          const at::Tensor&, const at::Tensor&, const OptTensor&, const OptTensor&,
          const OptTensor&, bool, bool)>("rnnattn::lstm_forward");
  check_dims("LSTMCell", "input", input);
  check_weights("LSTMCell", w_ih, w_hh);
  if (hx.has_value()) {
    for (size_t i = 0; i < hx->size(); ++i) {
      const std::string what = "hx[" + std::to_string(i) + "]";
      check_dims("LSTMCell", what.c_str(), (*hx)[i]);
    }
    TORCH_CHECK_VALUE(hx->size() == 2, "LSTMCell: Expected hx to be a pair (h_0, c_0), got ",
                      hx->size(), " tensors");
  }
  const bool batched = input.dim() == 2;
  const at::Tensor x = batched ? input : input.unsqueeze(0);
  const int64_t hidden = w_hh.size(1);
  const OptTensor h0 = hx.has_value() ? OptTensor((*hx)[0]) : c10::nullopt;
  const OptTensor c0 = hx.has_value() ? OptTensor((*hx)[1]) : c10::nullopt;
  const at::Tensor h = initial_state(h0, x, hidden, batched);
  const at::Tensor c = hx.has_value() ? initial_state(c0, x, hidden, batched) : h;
  at::Tensor h_n, c_n;
  if (fused_kernel(x, w_ih, /*rnn=*/false)) {
    check_step("LSTMCell", x, h, w_ih, hidden, "0", true);
    check_step("LSTMCell", x, c, w_ih, hidden, "1", false);
    auto out = layer.call(x.unsqueeze(0), c10::nullopt, h, c, w_ih, w_hh, b_ih, b_hh,
                          c10::nullopt, false, at::GradMode::is_enabled());
    h_n = std::get<1>(out);
    c_n = std::get<2>(out);
  } else {
    std::tie(h_n, c_n) = at::lstm_cell(x, {h, c}, w_ih, w_hh, b_ih, b_hh);
  }
  if (batched) return {h_n, c_n};
  return {h_n.squeeze(0), c_n.squeeze(0)};
}

TORCH_LIBRARY_IMPL(rnnattn, CompositeImplicitAutograd, m) {
  m.impl("rnn_cell", &rnn_cell);
  m.impl("gru_cell", &gru_cell);
  m.impl("lstm_cell", &lstm_cell);
}

}  // namespace rnnattn

// The layers of rnnattn.RNN / GRU / LSTM in C++: rnnattn._C.stack_forward.
//
// The same composition as rnnattn/functional.py (per layer and direction one
// call of the fused layer operator, the directions concatenated, dropout
// between layers from the same RNG stream as torch's modules), for eager
// calls: a short sequence at batch 1 (a streaming model) costs about as much
// in Python glue as in the kernels. Every step goes through the dispatcher,
// so autograd, the layer ops' C++ autograd and any dispatch mode see the
// same operators as from Python. torch.compile traces functional.py instead.
#include "stack.h"

#include <torch/library.h>

#include "autograd_common.h"

namespace rnnattn {
namespace {

using OptTensor = c10::optional<at::Tensor>;

const OptTensor& none() {
  static const OptTensor n = c10::nullopt;
  return n;
}

struct Layer {
  std::vector<at::Tensor> states;  // h (and c) after the last step
  at::Tensor output;
};

Layer run_rnn(const at::Tensor& x, const OptTensor& batch_sizes, const at::Tensor& h0,
              const at::Tensor* w, bool bias, bool relu, bool reverse) {
  static const auto op =
      find_op<std::tuple<at::Tensor, at::Tensor>(
          const at::Tensor&, const OptTensor&, const at::Tensor&, const at::Tensor&,
          const at::Tensor&, const OptTensor&, const OptTensor&, bool, bool)>(
          "rnnattn::rnn_forward");
  auto [out, h] = op.call(x, batch_sizes, h0, w[0], w[1], bias ? OptTensor(w[2]) : none(),
                          bias ? OptTensor(w[3]) : none(), relu, reverse);
  return {{h}, out};
}

Layer run_gru(const at::Tensor& x, const OptTensor& batch_sizes, const at::Tensor& h0,
              const at::Tensor* w, bool bias, bool reverse) {
  static const auto op =
      find_op<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
          const at::Tensor&, const OptTensor&, const at::Tensor&, const at::Tensor&,
          const at::Tensor&, const OptTensor&, const OptTensor&, bool, bool)>(
          "rnnattn::gru_forward");
  auto out = op.call(x, batch_sizes, h0, w[0], w[1], bias ? OptTensor(w[2]) : none(),
                     bias ? OptTensor(w[3]) : none(), reverse, at::GradMode::is_enabled());
  return {{std::get<1>(out)}, std::get<0>(out)};
}

Layer run_lstm(const at::Tensor& x, const OptTensor& batch_sizes, const at::Tensor& h0,
               const at::Tensor& c0, const at::Tensor* w, bool bias, bool proj, bool reverse) {
  static const auto op =
      find_op<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
          const at::Tensor&, const OptTensor&, const at::Tensor&, const at::Tensor&,
          const at::Tensor&, const at::Tensor&, const OptTensor&, const OptTensor&,
          const OptTensor&, bool, bool)>("rnnattn::lstm_forward");
  const int64_t n = 2 + 2 * bias;
  auto out = op.call(x, batch_sizes, h0, c0, w[0], w[1], bias ? OptTensor(w[2]) : none(),
                     bias ? OptTensor(w[3]) : none(), proj ? OptTensor(w[n]) : none(), reverse,
                     at::GradMode::is_enabled());
  return {{std::get<1>(out), std::get<2>(out)}, std::get<0>(out)};
}

}  // namespace

std::vector<at::Tensor> stack_forward(int64_t cell, const at::Tensor& input,
                                      const OptTensor& batch_sizes, const at::Tensor& hx,
                                      const OptTensor& cx, const std::vector<at::Tensor>& weights,
                                      int64_t num_layers, bool bidirectional, bool bias,
                                      bool proj, double dropout, bool train) {
  TORCH_CHECK(cell >= kRnnTanh && cell <= kLstm, "rnnattn: unknown cell ", cell);
  const bool lstm = cell == kLstm;
  const int64_t directions = bidirectional ? 2 : 1;
  const int64_t per = 2 + 2 * bias + (lstm && proj);  // weights of one layer-direction
  TORCH_CHECK(static_cast<int64_t>(weights.size()) == num_layers * directions * per,
              "rnnattn: expected ", num_layers * directions * per, " weights, got ",
              weights.size());
  TORCH_CHECK(!lstm || (cx.has_value() && cx->defined()), "rnnattn: the LSTM needs cx");
  std::vector<at::Tensor> h_n, c_n;
  at::Tensor x = input;
  for (int64_t l = 0; l < num_layers; ++l) {
    std::vector<at::Tensor> outs;
    for (int64_t d = 0; d < directions; ++d) {
      const int64_t k = l * directions + d;
      const at::Tensor* w = weights.data() + k * per;
      const bool reverse = d == 1;
      Layer r;
      if (cell == kGru)
        r = run_gru(x, batch_sizes, hx[k], w, bias, reverse);
      else if (lstm)
        r = run_lstm(x, batch_sizes, hx[k], (*cx)[k], w, bias, proj, reverse);
      else
        r = run_rnn(x, batch_sizes, hx[k], w, bias, cell == kRnnRelu, reverse);
      h_n.push_back(r.states[0]);
      if (lstm) c_n.push_back(r.states[1]);
      outs.push_back(r.output);
    }
    x = directions == 1 ? outs[0] : at::cat(outs, -1);
    if (dropout > 0 && train && l < num_layers - 1) x = at::dropout(x, dropout, true);
  }
  // stack, not views of the states: like torch's, h_n may be detach_()ed.
  std::vector<at::Tensor> result{x, at::stack(h_n, 0)};
  if (lstm) result.push_back(at::stack(c_n, 0));
  return result;
}

}  // namespace rnnattn

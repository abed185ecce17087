// rnnattn._C.module_forward: the common eager call of the sequence modules.
//
// At batch 1 and a short sequence (a streaming model, the benchmark's
// (1, 100, 32, 64) case) the module's Python forward cost about as much as
// the kernels: ~30 us of attribute reads, torch's check_forward_args, a
// zero h0 and the reshapes around the layer stack. This does that work in
// C++ for padded input. It validates without raising: any argument a valid
// call would not have makes it return {}, and the module then runs its
// Python path, whose checks are torch's own (check_forward_args and the
// messages of RNNBase.forward), so the errors stay torch's, type and
// message, in one place.
#include "module_call.h"

#include "stack.h"

namespace rnnattn {
namespace {

// The state a layer stack starts from, (layers * directions, B, size):
// `given` as passed (unsqueezed at dim 1 for unbatched input) if it has
// that shape and input's dtype and device; zeros if none was given;
// undefined (the call is not valid) otherwise.
at::Tensor initial_state(const c10::optional<at::Tensor>& given, const at::Tensor& x,
                         bool batched, int64_t states, int64_t batch, int64_t size) {
  if (!given.has_value() || !given->defined())
    return at::zeros({states, batch, size}, x.options());
  const at::Tensor& h = *given;
  if (h.dim() != (batched ? 3 : 2)) return {};
  at::Tensor h3 = batched ? h : h.unsqueeze(1);
  if (h3.size(0) != states || h3.size(1) != batch || h3.size(2) != size) return {};
  if (h3.scalar_type() != x.scalar_type() || h3.device() != x.device()) return {};
  return h3;
}

}  // namespace

std::vector<at::Tensor> module_forward(int64_t cell, const at::Tensor& input,
                                       const c10::optional<at::Tensor>& hx,
                                       const c10::optional<at::Tensor>& cx,
                                       const std::vector<at::Tensor>& weights, int64_t num_layers,
                                       bool bidirectional, bool bias, int64_t input_size,
                                       int64_t hidden_size, int64_t state_size, bool batch_first,
                                       double dropout, bool train) {
  const bool lstm = cell == kLstm;
  if (input.dim() != 2 && input.dim() != 3) return {};
  if (weights.empty() || input.scalar_type() != weights[0].scalar_type()) return {};
  const bool batched = input.dim() == 3;
  const int64_t batch_dim = batch_first ? 0 : 1;
  const at::Tensor x = batched ? input : input.unsqueeze(batch_dim);
  if (x.size(2) != input_size) return {};
  // The layers run time-major.
  const at::Tensor xt = batch_first ? x.transpose(0, 1) : x;
  const int64_t steps = xt.size(0), batch = xt.size(1);
  if (steps == 0 || batch == 0) return {};
  const int64_t states = num_layers * (bidirectional ? 2 : 1);
  const at::Tensor h0 = initial_state(hx, xt, batched, states, batch, state_size);
  if (!h0.defined()) return {};
  at::Tensor c0;
  if (lstm) {
    // torch's LSTM takes both states or neither.
    if (hx.has_value() != cx.has_value()) return {};
    c0 = initial_state(cx, xt, batched, states, batch, hidden_size);
    if (!c0.defined()) return {};
  }
  std::vector<at::Tensor> out =
      stack_forward(cell, xt, c10::nullopt, h0, lstm ? c10::optional<at::Tensor>(c0) : c10::nullopt,
                    weights, num_layers, bidirectional, bias, lstm && state_size != hidden_size,
                    dropout, train);
  if (batch_first) out[0] = out[0].transpose(0, 1);
  if (!batched) {
    out[0] = out[0].squeeze(batch_dim);
    for (size_t i = 1; i < out.size(); ++i) out[i] = out[i].squeeze(1);
  }
  return out;
}

}  // namespace rnnattn

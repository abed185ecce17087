// Argument checks and the time-step schedule of rnnattn::rnn_forward /
// rnn_backward, shared by the CPU and CUDA kernels so both reject the same
// inputs with the same messages.
#pragma once

#include <ATen/ATen.h>
#include <vector>

namespace rnnattn {

// Which rows of the (N, ·) time-major input belong to step t: rows
// [offset[t], offset[t] + batch[t]). Padded input has batch[t] == B for all t.
struct StepSchedule {
  std::vector<int64_t> batch;
  std::vector<int64_t> offset;
  int64_t steps() const { return static_cast<int64_t>(batch.size()); }
};

// Sizes of one RNN layer/direction call, after validation.
struct RnnShape {
  int64_t rows;    // N: T*B padded, sum(batch_sizes) packed
  int64_t batch;   // B
  int64_t input;   // I
  int64_t hidden;  // H
};

inline StepSchedule make_schedule(const at::Tensor& input,
                                  const c10::optional<at::Tensor>& batch_sizes,
                                  int64_t batch) {
  StepSchedule s;
  if (!batch_sizes.has_value()) {
    const int64_t T = input.size(0);
    s.batch.assign(T, batch);
    s.offset.resize(T);
    for (int64_t t = 0; t < T; ++t) s.offset[t] = t * batch;
    return s;
  }
  const at::Tensor bs = batch_sizes->contiguous();
  const int64_t T = bs.numel();
  const int64_t* p = bs.data_ptr<int64_t>();
  s.batch.assign(p, p + T);
  s.offset.resize(T);
  int64_t off = 0;
  for (int64_t t = 0; t < T; ++t) {
    TORCH_CHECK(s.batch[t] >= 1 && s.batch[t] <= batch,
                "rnnattn: batch_sizes[", t, "] = ", s.batch[t],
                " must be in [1, ", batch, "] (batch size of hx)");
    TORCH_CHECK(t == 0 || s.batch[t] <= s.batch[t - 1],
                "rnnattn: batch_sizes must be non-increasing (sequences sorted "
                "longest first), got ", s.batch[t - 1 >= 0 ? t - 1 : 0], " then ",
                s.batch[t], " at step ", t);
    s.offset[t] = off;
    off += s.batch[t];
  }
  TORCH_CHECK(T == 0 || s.batch[0] == batch, "rnnattn: batch_sizes[0] = ",
              T ? s.batch[0] : 0, " must equal the batch size of hx (", batch, ")");
  TORCH_CHECK(off == input.size(0), "rnnattn: sum(batch_sizes) = ", off,
              " must equal the number of packed input rows (", input.size(0), ")");
  return s;
}

// Validates every argument of rnn_forward (and the shared ones of
// rnn_backward); returns the sizes.
inline RnnShape check_rnn_args(const at::Tensor& input,
                               const c10::optional<at::Tensor>& batch_sizes,
                               const at::Tensor& hx, const at::Tensor& w_ih,
                               const at::Tensor& w_hh,
                               const c10::optional<at::Tensor>& b_ih,
                               const c10::optional<at::Tensor>& b_hh) {
  const bool packed = batch_sizes.has_value();
  TORCH_CHECK(input.dim() == (packed ? 2 : 3), "rnnattn: input must be ",
              packed ? "(N, input_size) packed rows" : "(T, B, input_size)",
              ", got a ", input.dim(), "-D tensor of shape ", input.sizes());
  TORCH_CHECK(w_ih.dim() == 2, "rnnattn: w_ih must be (hidden_size, input_size), got shape ",
              w_ih.sizes());
  const int64_t H = w_ih.size(0), I = w_ih.size(1);
  // As nn.RNN: a layer without hidden units is an error, not an empty result.
  TORCH_CHECK(H > 0, "rnnattn: hidden_size (w_ih.size(0)) must be greater than zero, got ", H);
  TORCH_CHECK(input.size(-1) == I, "rnnattn: input.size(-1) = ", input.size(-1),
              " must equal input_size = ", I, " (w_ih.size(1))");
  TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) == H && w_hh.size(1) == H,
              "rnnattn: w_hh must be (", H, ", ", H, "), got shape ", w_hh.sizes());
  TORCH_CHECK(hx.dim() == 2 && hx.size(1) == H,
              "rnnattn: hx must be (batch, ", H, "), got shape ", hx.sizes());
  const int64_t B = hx.size(0);
  TORCH_CHECK(packed ? batch_sizes->numel() > 0 : input.size(0) > 0,
              "rnnattn: input must have at least one time step");
  if (!packed) {
    TORCH_CHECK(input.size(1) == B, "rnnattn: hx batch size ", B,
                " does not match input batch size ", input.size(1));
  } else {
    TORCH_CHECK(batch_sizes->dim() == 1 && batch_sizes->scalar_type() == at::kLong &&
                    batch_sizes->device().is_cpu(),
                "rnnattn: batch_sizes must be a 1-D int64 CPU tensor, got ",
                batch_sizes->scalar_type(), " of shape ", batch_sizes->sizes(), " on ",
                batch_sizes->device());
  }
  const auto dtype = input.scalar_type();
  const auto device = input.device();
  auto same = [&](const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.scalar_type() == dtype, "rnnattn: ", name, " has dtype ", t.scalar_type(),
                " but input has dtype ", dtype);
    TORCH_CHECK(t.device() == device, "rnnattn: ", name, " is on ", t.device(),
                " but input is on ", device);
  };
  same(hx, "hx");
  same(w_ih, "w_ih");
  same(w_hh, "w_hh");
  TORCH_CHECK(b_ih.has_value() == b_hh.has_value(),
              "rnnattn: b_ih and b_hh must both be given or both be None");
  if (b_ih.has_value()) {
    same(*b_ih, "b_ih");
    same(*b_hh, "b_hh");
    TORCH_CHECK(b_ih->dim() == 1 && b_ih->size(0) == H, "rnnattn: b_ih must be (", H,
                "), got shape ", b_ih->sizes());
    TORCH_CHECK(b_hh->dim() == 1 && b_hh->size(0) == H, "rnnattn: b_hh must be (", H,
                "), got shape ", b_hh->sizes());
  }
  const int64_t N = packed ? input.size(0) : input.size(0) * input.size(1);
  return RnnShape{N, B, I, H};
}

// Shapes of the tensors rnn_backward receives beside the forward arguments.
inline void check_rnn_backward_args(const RnnShape& s, const at::Tensor& input,
                                    const at::Tensor& grad_output,
                                    const at::Tensor& grad_hn,
                                    const at::Tensor& output) {
  std::vector<int64_t> out_shape(input.sizes().begin(), input.sizes().end());
  out_shape.back() = s.hidden;
  TORCH_CHECK(output.sizes() == at::IntArrayRef(out_shape),
              "rnnattn: output must have shape ", at::IntArrayRef(out_shape), ", got ",
              output.sizes());
  TORCH_CHECK(grad_output.sizes() == output.sizes(), "rnnattn: grad_output must have shape ",
              output.sizes(), ", got ", grad_output.sizes());
  TORCH_CHECK(grad_hn.dim() == 2 && grad_hn.size(0) == s.batch && grad_hn.size(1) == s.hidden,
              "rnnattn: grad_hn must be (", s.batch, ", ", s.hidden, "), got shape ",
              grad_hn.sizes());
  for (const auto* t : {&grad_output, &grad_hn, &output}) {
    TORCH_CHECK(t->scalar_type() == input.scalar_type() && t->device() == input.device(),
                "rnnattn: rnn_backward tensors must all be ", input.scalar_type(), " on ",
                input.device());
  }
}

}  // namespace rnnattn

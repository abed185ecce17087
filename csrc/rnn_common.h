// Argument checks and the time-step schedule of rnnattn::rnn_forward /
// rnn_backward, shared by the CPU and CUDA kernels so both reject the same
// inputs with the same messages.
#pragma once

#include <ATen/ATen.h>
#include <string>
#include <vector>

namespace rnnattn {

// Which rows of the (N, ·) time-major input belong to step t: rows
// [offset[t], offset[t] + batch[t]). Padded input has batch[t] == B for all t.
struct StepSchedule {
  std::vector<int64_t> batch;
  std::vector<int64_t> offset;
  int64_t steps() const { return static_cast<int64_t>(batch.size()); }
  // How many steps hold the first step's rows (all of them unless packed).
  int64_t full_steps() const {
    int64_t n = 0;
    for (int64_t b : batch) n += b == batch[0];
    return n;
  }
};

// Sizes of one RNN layer/direction call, after validation.
struct RnnShape {
  int64_t rows;       // N: T*B padded, sum(batch_sizes) packed
  int64_t batch;      // B
  int64_t input;      // I
  int64_t hidden;     // H (the cell's units)
  int64_t state = 0;  // width of h: the LSTM's proj_size when it has one, else H
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

// Validates every argument of a recurrent op (rnn_forward, gru_forward,
// lstm_forward, and the shared ones of their backward ops); returns the sizes.
// gates: blocks of H rows in w_ih / w_hh (1 RNN, 3 GRU, 4 LSTM). w_hr: the
// LSTM projection (proj_size, H), which makes h (and w_hh's columns)
// proj_size wide.
inline RnnShape check_recurrent_args(const at::Tensor& input,
                                     const c10::optional<at::Tensor>& batch_sizes,
                                     const at::Tensor& hx, const at::Tensor& w_ih,
                                     const at::Tensor& w_hh,
                                     const c10::optional<at::Tensor>& b_ih,
                                     const c10::optional<at::Tensor>& b_hh, int64_t gates,
                                     const c10::optional<at::Tensor>& w_hr = c10::nullopt) {
  const bool packed = batch_sizes.has_value();
  // "(hidden_size" for one gate, "(4*hidden_size" for the LSTM's four.
  const std::string rows = gates == 1 ? "hidden_size" : std::to_string(gates) + "*hidden_size";
  TORCH_CHECK(input.dim() == (packed ? 2 : 3), "rnnattn: input must be ",
              packed ? "(N, input_size) packed rows" : "(T, B, input_size)",
              ", got a ", input.dim(), "-D tensor of shape ", input.sizes());
  TORCH_CHECK(w_ih.dim() == 2 && w_ih.size(0) % gates == 0, "rnnattn: w_ih must be (", rows,
              ", input_size), got shape ", w_ih.sizes());
  const int64_t H = w_ih.size(0) / gates, I = w_ih.size(1);
  // As nn.RNN: a layer without hidden units is an error, not an empty result.
  TORCH_CHECK(H > 0, "rnnattn: hidden_size (w_ih.size(0)", gates == 1 ? "" : " / " + std::to_string(gates),
              ") must be greater than zero, got ", H);
  TORCH_CHECK(input.size(-1) == I, "rnnattn: input.size(-1) = ", input.size(-1),
              " must equal input_size = ", I, " (w_ih.size(1))");
  int64_t Hs = H;
  if (w_hr.has_value()) {
    TORCH_CHECK(w_hr->dim() == 2 && w_hr->size(1) == H && w_hr->size(0) > 0 && w_hr->size(0) < H,
                "rnnattn: w_hr must be (proj_size, ", H, ") with 0 < proj_size < ", H,
                ", got shape ", w_hr->sizes());
    Hs = w_hr->size(0);
  }
  TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) == gates * H && w_hh.size(1) == Hs,
              "rnnattn: w_hh must be (", gates * H, ", ", Hs, "), got shape ", w_hh.sizes());
  TORCH_CHECK(hx.dim() == 2 && hx.size(1) == Hs,
              "rnnattn: hx must be (batch, ", Hs, "), got shape ", hx.sizes());
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
  TORCH_CHECK(at::isFloatingType(dtype),
              "rnnattn: input must be floating point (float32, float64, bfloat16 or float16), got ",
              dtype);
  auto same = [&](const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.scalar_type() == dtype, "rnnattn: ", name, " has dtype ", t.scalar_type(),
                " but input has dtype ", dtype);
    TORCH_CHECK(t.device() == device, "rnnattn: ", name, " is on ", t.device(),
                " but input is on ", device);
  };
  same(hx, "hx");
  same(w_ih, "w_ih");
  same(w_hh, "w_hh");
  if (w_hr.has_value()) same(*w_hr, "w_hr");
  TORCH_CHECK(b_ih.has_value() == b_hh.has_value(),
              "rnnattn: b_ih and b_hh must both be given or both be None");
  if (b_ih.has_value()) {
    same(*b_ih, "b_ih");
    same(*b_hh, "b_hh");
    TORCH_CHECK(b_ih->dim() == 1 && b_ih->size(0) == gates * H, "rnnattn: b_ih must be (",
                gates * H, "), got shape ", b_ih->sizes());
    TORCH_CHECK(b_hh->dim() == 1 && b_hh->size(0) == gates * H, "rnnattn: b_hh must be (",
                gates * H, "), got shape ", b_hh->sizes());
  }
  const int64_t N = packed ? input.size(0) : input.size(0) * input.size(1);
  return RnnShape{N, B, I, H, Hs};
}

// The Elman RNN's checks (one gate block), shared with the CUDA kernels.
inline RnnShape check_rnn_args(const at::Tensor& input,
                               const c10::optional<at::Tensor>& batch_sizes,
                               const at::Tensor& hx, const at::Tensor& w_ih,
                               const at::Tensor& w_hh,
                               const c10::optional<at::Tensor>& b_ih,
                               const c10::optional<at::Tensor>& b_hh) {
  return check_recurrent_args(input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, 1);
}

// The LSTM's cell state cx: (B, H), like hx.
inline void check_cell_state(const RnnShape& s, const at::Tensor& input, const at::Tensor& cx,
                             const char* name) {
  TORCH_CHECK(cx.dim() == 2 && cx.size(0) == s.batch && cx.size(1) == s.hidden, "rnnattn: ",
              name, " must be (", s.batch, ", ", s.hidden, "), got shape ", cx.sizes());
  TORCH_CHECK(cx.scalar_type() == input.scalar_type() && cx.device() == input.device(),
              "rnnattn: ", name, " must be ", input.scalar_type(), " on ", input.device(),
              ", got ", cx.scalar_type(), " on ", cx.device());
}

// Shapes of the tensors a backward op receives beside the forward arguments.
inline void check_rnn_backward_args(const RnnShape& s, const at::Tensor& input,
                                    const at::Tensor& grad_output,
                                    const at::Tensor& grad_hn,
                                    const at::Tensor& output) {
  std::vector<int64_t> out_shape(input.sizes().begin(), input.sizes().end());
  out_shape.back() = s.state;
  TORCH_CHECK(output.sizes() == at::IntArrayRef(out_shape),
              "rnnattn: output must have shape ", at::IntArrayRef(out_shape), ", got ",
              output.sizes());
  TORCH_CHECK(grad_output.sizes() == output.sizes(), "rnnattn: grad_output must have shape ",
              output.sizes(), ", got ", grad_output.sizes());
  TORCH_CHECK(grad_hn.dim() == 2 && grad_hn.size(0) == s.batch && grad_hn.size(1) == s.state,
              "rnnattn: grad_hn must be (", s.batch, ", ", s.state, "), got shape ",
              grad_hn.sizes());
  for (const auto* t : {&grad_output, &grad_hn, &output}) {
    TORCH_CHECK(t->scalar_type() == input.scalar_type() && t->device() == input.device(),
                "rnnattn: backward tensors must all be ", input.scalar_type(), " on ",
                input.device());
  }
}

// The reserve a GRU / LSTM forward returned: (N, blocks * H).
inline void check_reserve(const RnnShape& s, const at::Tensor& input, const at::Tensor& reserve,
                          int64_t blocks) {
  TORCH_CHECK(reserve.dim() == 2 && reserve.size(0) == s.rows &&
                  reserve.size(1) == blocks * s.hidden && reserve.is_contiguous() &&
                  reserve.scalar_type() == input.scalar_type() &&
                  reserve.device() == input.device(),
              "rnnattn: reserve must be the contiguous (", s.rows, ", ", blocks * s.hidden,
              ") ", input.scalar_type(), " tensor the forward returned, got ", reserve.scalar_type(),
              " of shape ", reserve.sizes());
}

}  // namespace rnnattn

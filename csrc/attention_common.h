// Argument checks and sizes of the attention-pooling operators
// (rnnattn::attention_pool_* ), shared by the CPU and CUDA kernels so both
// reject the same inputs with the same messages.
//
// Conventions (both devices):
//   input    (B, T, D), any strides on B and T; D must be contiguous (the
//            kernels copy otherwise). Time-major (T, B, D) data is passed as
//            its transposed view, so it is never copied.
//   weight   (k, D) score vectors (linear op), or scores (B, T, k) (scores op).
//   lengths  (B,) integer, optional: step t of row b is valid iff t < lengths[b].
//   mask     (B, T) bool, optional: step t of row b is valid iff mask[b, t].
//            Any pattern is allowed (not only a prefix). With both given, a
//            step must be valid under both.
//   chunk_size  0: one softmax over the whole sequence (C = 1);
//               K > 0: a softmax inside each run of K steps, C = ceil(T / K),
//               the last chunk ragged.
//   context  (B, C, k, D), weights (B, k, T); invalid steps get weight 0, a
//            chunk with no valid step gets context 0.
#pragma once

#include <ATen/ATen.h>

namespace rnnattn {

struct AttnShape {
  int64_t batch;   // B
  int64_t steps;   // T
  int64_t dim;     // D
  int64_t heads;   // k: score vectors (linear) or score columns (scores op)
  int64_t chunk;   // K: steps per chunk (>= 1; covers all of T when chunk_size == 0)
  int64_t chunks;  // C: context rows per sequence
};

inline int64_t attn_num_chunks(int64_t steps, int64_t chunk_size) {
  // (steps + chunk_size - 1) / chunk_size without its overflow near INT64_MAX.
  return chunk_size == 0 ? 1 : steps / chunk_size + (steps % chunk_size != 0);
}

namespace detail {

inline void check_same(const at::Tensor& t, const at::Tensor& input, const char* op,
                       const char* name) {
  TORCH_CHECK(t.scalar_type() == input.scalar_type(), "rnnattn.", op, ": ", name,
              " has dtype ", t.scalar_type(), " but input has dtype ", input.scalar_type());
  TORCH_CHECK(t.device() == input.device(), "rnnattn.", op, ": ", name, " is on ",
              t.device(), " but input is on ", input.device());
}

// input, lengths, mask and chunk_size: what both ops take.
inline AttnShape check_common(const at::Tensor& input, int64_t heads,
                              const c10::optional<at::Tensor>& lengths,
                              const c10::optional<at::Tensor>& mask, int64_t chunk_size,
                              const char* op) {
  TORCH_CHECK(input.dim() == 3, "rnnattn.", op, ": input must be (B, T, D), got a ",
              input.dim(), "-D tensor of shape ", input.sizes());
  TORCH_CHECK(at::isFloatingType(input.scalar_type()), "rnnattn.", op,
              ": input must be a floating-point tensor, got ", input.scalar_type());
  const int64_t B = input.size(0), T = input.size(1), D = input.size(2);
  TORCH_CHECK(chunk_size >= 0, "rnnattn.", op, ": chunk_size must be >= 0 (0 = no chunks), got ",
              chunk_size);
  if (lengths.has_value()) {
    const auto& l = *lengths;
    TORCH_CHECK(l.dim() == 1 && l.size(0) == B, "rnnattn.", op, ": lengths must be (B,) = (",
                B, "), got shape ", l.sizes());
    TORCH_CHECK(at::isIntegralType(l.scalar_type(), /*includeBool=*/false), "rnnattn.", op,
                ": lengths must be an integer tensor, got ", l.scalar_type());
    TORCH_CHECK(l.device().is_cpu() || l.device() == input.device(), "rnnattn.", op,
                ": lengths must be on the CPU or on the input's device (", input.device(),
                "), got ", l.device());
  }
  if (mask.has_value()) {
    const auto& m = *mask;
    TORCH_CHECK(m.dim() == 2 && m.size(0) == B && m.size(1) == T, "rnnattn.", op,
                ": mask must be (B, T) = (", B, ", ", T, "), got shape ", m.sizes());
    TORCH_CHECK(m.scalar_type() == at::kBool, "rnnattn.", op,
                ": mask must be a bool tensor (True = valid step), got ", m.scalar_type());
    TORCH_CHECK(m.device() == input.device(), "rnnattn.", op, ": mask is on ", m.device(),
                " but input is on ", input.device());
  }
  // A chunk longer than the sequence is the whole sequence: K <= max(T, 1),
  // so that K * D * heads and the GPU's per-chunk plans stay in range.
  const int64_t K = chunk_size == 0 ? std::max<int64_t>(T, 1)
                                    : std::min(chunk_size, std::max<int64_t>(T, 1));
  return AttnShape{B, T, D, heads, K, attn_num_chunks(T, chunk_size)};
}

}  // namespace detail

// attention_pool_forward: input (B,T,D), weight (k,D), bias (k,) or none.
inline AttnShape check_attn_linear_args(const at::Tensor& input, const at::Tensor& weight,
                                        const c10::optional<at::Tensor>& bias,
                                        const c10::optional<at::Tensor>& lengths,
                                        const c10::optional<at::Tensor>& mask,
                                        int64_t chunk_size) {
  constexpr const char* op = "attention_pool";
  TORCH_CHECK(input.dim() == 3, "rnnattn.", op, ": input must be (B, T, D), got a ",
              input.dim(), "-D tensor of shape ", input.sizes());
  TORCH_CHECK(weight.dim() == 2 && weight.size(1) == input.size(2) && weight.size(0) >= 1,
              "rnnattn.", op, ": weight must be (heads, D) = (heads, ", input.size(2),
              ") with heads >= 1, got shape ", weight.sizes());
  const AttnShape s = detail::check_common(input, weight.size(0), lengths, mask, chunk_size, op);
  detail::check_same(weight, input, op, "weight");
  if (bias.has_value()) {
    detail::check_same(*bias, input, op, "bias");
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == s.heads, "rnnattn.", op,
                ": bias must be (heads,) = (", s.heads, "), got shape ", bias->sizes());
  }
  return s;
}

// attention_pool_scores_forward: input (B,T,D), scores (B,T,k).
inline AttnShape check_attn_scores_args(const at::Tensor& input, const at::Tensor& scores,
                                        const c10::optional<at::Tensor>& lengths,
                                        const c10::optional<at::Tensor>& mask,
                                        int64_t chunk_size) {
  constexpr const char* op = "attention_pool_scores";
  TORCH_CHECK(input.dim() == 3, "rnnattn.", op, ": input must be (B, T, D), got a ",
              input.dim(), "-D tensor of shape ", input.sizes());
  TORCH_CHECK(scores.dim() == 3 && scores.size(0) == input.size(0) &&
                  scores.size(1) == input.size(1) && scores.size(2) >= 1,
              "rnnattn.", op, ": scores must be (B, T, heads) = (", input.size(0), ", ",
              input.size(1), ", heads) with heads >= 1, got shape ", scores.sizes());
  const AttnShape s = detail::check_common(input, scores.size(2), lengths, mask, chunk_size, op);
  detail::check_same(scores, input, op, "scores");
  return s;
}

// The tensors a backward receives beside the forward's arguments.
inline void check_attn_backward_args(const AttnShape& s, const at::Tensor& input,
                                     const at::Tensor& grad_context,
                                     const c10::optional<at::Tensor>& grad_weights,
                                     const at::Tensor& context, const at::Tensor& weights,
                                     const char* op) {
  const std::vector<int64_t> ctx_shape{s.batch, s.chunks, s.heads, s.dim};
  const std::vector<int64_t> wts_shape{s.batch, s.heads, s.steps};
  TORCH_CHECK(context.sizes() == at::IntArrayRef(ctx_shape), "rnnattn.", op,
              ": context must have shape ", at::IntArrayRef(ctx_shape), ", got ",
              context.sizes());
  TORCH_CHECK(grad_context.sizes() == at::IntArrayRef(ctx_shape), "rnnattn.", op,
              ": grad_context must have shape ", at::IntArrayRef(ctx_shape), ", got ",
              grad_context.sizes());
  TORCH_CHECK(weights.sizes() == at::IntArrayRef(wts_shape), "rnnattn.", op,
              ": weights must have shape ", at::IntArrayRef(wts_shape), ", got ",
              weights.sizes());
  detail::check_same(context, input, op, "context");
  detail::check_same(grad_context, input, op, "grad_context");
  detail::check_same(weights, input, op, "weights");
  if (grad_weights.has_value()) {
    TORCH_CHECK(grad_weights->sizes() == at::IntArrayRef(wts_shape), "rnnattn.", op,
                ": grad_weights must have shape ", at::IntArrayRef(wts_shape), ", got ",
                grad_weights->sizes());
    detail::check_same(*grad_weights, input, op, "grad_weights");
  }
}

// Lengths as int64 on the CPU, every value checked to lie in [0, T].
// (Both kernels read lengths on the host: CPU kernels directly, the CUDA
// path to validate before launching; see csrc/cuda/attention.cu.)
inline at::Tensor checked_lengths_cpu(const at::Tensor& lengths, int64_t steps,
                                      const char* op) {
  at::Tensor l = lengths.to(at::kCPU, at::kLong).contiguous();
  const int64_t* p = l.data_ptr<int64_t>();
  for (int64_t b = 0; b < l.numel(); ++b) {
    TORCH_CHECK(p[b] >= 0 && p[b] <= steps, "rnnattn.", op, ": lengths[", b, "] = ", p[b],
                " is out of range; lengths must lie in [0, T] = [0, ", steps, "]");
  }
  return l;
}

}  // namespace rnnattn

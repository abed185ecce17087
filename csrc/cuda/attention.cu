// Host side of the CUDA attention-pooling operators: argument checks (same
// messages as the CPU kernels, csrc/attention_common.h), allocation and
// launch. The kernels and the launch plan are in attention_kernels.cuh.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "../attention_common.h"
#include "attention_kernels.cuh"

namespace rnnattn::cuda {
namespace {

using namespace pool;

void check_cuda_dtype(const at::Tensor& input, const char* op) {
  const auto dt = input.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble || dt == at::kHalf || dt == at::kBFloat16,
              "rnnattn.", op,
              ": the CUDA kernel supports float32, float64, float16 and bfloat16 input, got ", dt);
}

int64_t sm_count() { return at::cuda::getCurrentDeviceProperties()->multiProcessorCount; }

// The most dynamic shared memory a block of this device can have.
size_t smem_limit() {
  const size_t optin = at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin;
  return std::max(kDefaultSmem, optin);
}

// Opts `kernel` in to `bytes` of dynamic shared memory when that is past
// the default (the plan checked that the device allows it).
template <typename Kernel>
void allow_smem(Kernel kernel, size_t bytes) {
  if (bytes <= kDefaultSmem) return;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(bytes)));
}

struct Prepared {
  at::Tensor x, len, mask;
};

Prepared prepare(const AttnShape& s, const at::Tensor& input,
                 const c10::optional<at::Tensor>& lengths,
                 const c10::optional<at::Tensor>& mask, const char* op) {
  Prepared r;
  r.x = input.stride(2) == 1 ? input : input.contiguous();
  if (lengths.has_value()) {
    // Checked on the host: free for CPU lengths (the usual case, e.g. from a
    // PackedSequence); lengths already on the GPU cost one device sync here.
    const at::Tensor l = checked_lengths_cpu(*lengths, s.steps, op);
    r.len = lengths->is_cuda() ? lengths->to(at::kLong).contiguous() : l.to(input.device());
  }
  if (mask.has_value()) r.mask = *mask;
  return r;
}

template <typename T>
PoolArgs<T> make_args(const AttnShape& s, const Prepared& r) {
  PoolArgs<T> p{};
  p.batch = s.batch;
  p.steps = s.steps;
  p.dim = s.dim;
  p.heads = s.heads;
  p.chunk = s.chunk;
  p.chunks = s.chunks;
  p.units = s.batch * s.chunks;
  p.x = r.x.data_ptr<T>();
  p.x_sb = r.x.stride(0);
  p.x_st = r.x.stride(1);
  p.len = r.len.defined() ? r.len.data_ptr<int64_t>() : nullptr;
  if (r.mask.defined()) {
    p.mask = r.mask.data_ptr<bool>();
    p.m_sb = r.mask.stride(0);
    p.m_st = r.mask.stride(1);
  }
  return p;
}

template <typename T>
void set_scores(PoolArgs<T>& p, const at::Tensor& scores) {
  p.sc = scores.data_ptr<T>();
  p.sc_sb = scores.stride(0);
  p.sc_st = scores.stride(1);
  p.sc_sh = scores.stride(2);
}

template <typename T, bool kLinear>
void launch_forward(const AttnShape& s, const PoolArgs<T>& p, const at::Tensor& context,
                    const at::Tensor& weights) {
  using A = at::opmath_type<T>;
  if (p.units == 0) return;
  const auto opts = context.options().dtype(c10::CppTypeToScalarType<A>::value);
  auto kernel = attn_pool_fwd_kernel<T, A, kLinear>;
  const PoolLaunch L = plan_forward<A>(p.units, s.chunk, s.heads, s.dim, sm_count(), smem_limit());
  TORCH_CHECK(L.fits, "rnnattn.attention_pool: heads = ", s.heads,
              " needs more shared memory than this device has");
  allow_smem(kernel, L.smem);
  FwdOut<T, A> out{};
  out.ctx = context.data_ptr<T>();
  out.wts = weights.data_ptr<T>();
  at::Tensor ebuf;
  if constexpr (std::is_same_v<T, A>) {
    out.ebuf = out.wts;
  } else {
    ebuf = at::empty({s.batch, s.heads, s.steps}, opts);
    out.ebuf = ebuf.data_ptr<A>();
  }
  at::Tensor ws;
  if (!L.acc_in_smem) {
    ws = at::empty({L.grid, L.warps, s.heads, s.dim}, opts);
    out.ws = ws.data_ptr<A>();
  }
  kernel<<<static_cast<unsigned>(L.grid), L.warps * 32, L.smem,
           at::cuda::getCurrentCUDAStream()>>>(p, out);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// dw: (k, D) output of the linear op, or undefined.
template <typename T, bool kLinear>
void launch_backward(const AttnShape& s, const PoolArgs<T>& p, BwdArgs<T, at::opmath_type<T>> g,
                     const at::Tensor& dw, const at::Tensor& like) {
  using A = at::opmath_type<T>;
  const auto opts = like.options().dtype(c10::CppTypeToScalarType<A>::value);
  if (p.units == 0) {
    if (dw.defined()) dw.zero_();
    return;
  }
  auto kernel = attn_pool_bwd_kernel<T, A, kLinear>;
  const PoolLaunch L = plan_backward<A>(p.units, s.chunk, s.heads, s.dim, sm_count(), smem_limit(),
                                        dw.defined());
  TORCH_CHECK(L.fits, "rnnattn.attention_pool_backward: heads = ", s.heads,
              " needs more shared memory than this device has");
  allow_smem(kernel, L.smem);
  at::Tensor part, ws;
  if (dw.defined()) {
    part = at::empty({L.grid, s.heads, s.dim}, opts);
    g.dw_part = part.data_ptr<A>();
    if (!L.acc_in_smem) {
      ws = at::empty({L.grid, L.warps, s.heads, s.dim}, opts);
      g.ws = ws.data_ptr<A>();
    }
  }
  kernel<<<static_cast<unsigned>(L.grid), L.warps * 32, L.smem,
           at::cuda::getCurrentCUDAStream()>>>(p, g);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (dw.defined()) dw.copy_(part.sum(0));
}

template <typename T>
BwdArgs<T, at::opmath_type<T>> make_bwd(const at::Tensor& ctx, const at::Tensor& dc,
                                        const at::Tensor& wts, const at::Tensor& da,
                                        const at::Tensor& dx) {
  BwdArgs<T, at::opmath_type<T>> g{};
  g.ctx = ctx.data_ptr<T>();
  g.dc = dc.data_ptr<T>();
  g.wts = wts.data_ptr<T>();
  g.da = da.defined() ? da.data_ptr<T>() : nullptr;
  if (dx.defined()) {
    g.dx = dx.data_ptr<T>();
    g.dx_sb = dx.stride(0);
    g.dx_st = dx.stride(1);
  }
  return g;
}

#define RNNATTN_DISPATCH(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

std::tuple<at::Tensor, at::Tensor> attention_pool_forward_cuda(
    const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
    const c10::optional<at::Tensor>& lengths, const c10::optional<at::Tensor>& mask,
    int64_t chunk_size) {
  constexpr const char* op = "attention_pool";
  // bias: checked, unused (softmax is shift-invariant; see the CPU kernel).
  const AttnShape s = check_attn_linear_args(input, weight, bias, lengths, mask, chunk_size);
  check_cuda_dtype(input, op);
  const c10::cuda::CUDAGuard guard(input.device());
  const Prepared r = prepare(s, input, lengths, mask, op);
  const at::Tensor w = weight.contiguous();
  auto context = at::empty({s.batch, s.chunks, s.heads, s.dim}, input.options());
  auto weights = at::empty({s.batch, s.heads, s.steps}, input.options());
  RNNATTN_DISPATCH(input.scalar_type(), "rnnattn::attention_pool_forward", [&] {
    PoolArgs<scalar_t> p = make_args<scalar_t>(s, r);
    p.w = w.data_ptr<scalar_t>();
    launch_forward<scalar_t, true>(s, p, context, weights);
  });
  return {context, weights};
}

std::tuple<at::Tensor, at::Tensor> attention_pool_backward_cuda(
    const at::Tensor& grad_context, const c10::optional<at::Tensor>& grad_weights,
    const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& lengths,
    const c10::optional<at::Tensor>& mask, const at::Tensor& context, const at::Tensor& weights,
    int64_t chunk_size, bool need_input_grad, bool need_weight_grad) {
  constexpr const char* op = "attention_pool_backward";
  const AttnShape s =
      check_attn_linear_args(input, weight, c10::nullopt, lengths, mask, chunk_size);
  check_attn_backward_args(s, input, grad_context, grad_weights, context, weights, op);
  check_cuda_dtype(input, op);
  const c10::cuda::CUDAGuard guard(input.device());
  const Prepared r = prepare(s, input, lengths, mask, op);
  const at::Tensor w = weight.contiguous();
  const at::Tensor ctx = context.contiguous(), dc = grad_context.contiguous();
  const at::Tensor wts = weights.contiguous();
  const at::Tensor da = grad_weights.has_value() ? grad_weights->contiguous() : at::Tensor();
  const auto none = at::empty({0}, input.options());
  at::Tensor dx = need_input_grad ? at::empty_like(r.x) : at::Tensor();
  at::Tensor dw = need_weight_grad ? at::empty({s.heads, s.dim}, input.options()) : at::Tensor();
  if (need_input_grad || need_weight_grad) {
    RNNATTN_DISPATCH(input.scalar_type(), "rnnattn::attention_pool_backward", [&] {
      PoolArgs<scalar_t> p = make_args<scalar_t>(s, r);
      p.w = w.data_ptr<scalar_t>();
      launch_backward<scalar_t, true>(s, p, make_bwd<scalar_t>(ctx, dc, wts, da, dx), dw, input);
    });
  }
  return {dx.defined() ? dx : none, dw.defined() ? dw : none};
}

std::tuple<at::Tensor, at::Tensor> attention_pool_scores_forward_cuda(
    const at::Tensor& input, const at::Tensor& scores, const c10::optional<at::Tensor>& lengths,
    const c10::optional<at::Tensor>& mask, int64_t chunk_size) {
  constexpr const char* op = "attention_pool_scores";
  const AttnShape s = check_attn_scores_args(input, scores, lengths, mask, chunk_size);
  check_cuda_dtype(input, op);
  const c10::cuda::CUDAGuard guard(input.device());
  const Prepared r = prepare(s, input, lengths, mask, op);
  auto context = at::empty({s.batch, s.chunks, s.heads, s.dim}, input.options());
  auto weights = at::empty({s.batch, s.heads, s.steps}, input.options());
  RNNATTN_DISPATCH(input.scalar_type(), "rnnattn::attention_pool_scores_forward", [&] {
    PoolArgs<scalar_t> p = make_args<scalar_t>(s, r);
    set_scores(p, scores);
    launch_forward<scalar_t, false>(s, p, context, weights);
  });
  return {context, weights};
}

std::tuple<at::Tensor, at::Tensor> attention_pool_scores_backward_cuda(
    const at::Tensor& grad_context, const c10::optional<at::Tensor>& grad_weights,
    const at::Tensor& input, const at::Tensor& scores, const c10::optional<at::Tensor>& lengths,
    const c10::optional<at::Tensor>& mask, const at::Tensor& context, const at::Tensor& weights,
    int64_t chunk_size, bool need_input_grad, bool need_scores_grad) {
  constexpr const char* op = "attention_pool_scores_backward";
  const AttnShape s = check_attn_scores_args(input, scores, lengths, mask, chunk_size);
  check_attn_backward_args(s, input, grad_context, grad_weights, context, weights, op);
  check_cuda_dtype(input, op);
  const c10::cuda::CUDAGuard guard(input.device());
  const Prepared r = prepare(s, input, lengths, mask, op);
  const at::Tensor ctx = context.contiguous(), dc = grad_context.contiguous();
  const at::Tensor wts = weights.contiguous();
  const at::Tensor da = grad_weights.has_value() ? grad_weights->contiguous() : at::Tensor();
  const auto none = at::empty({0}, input.options());
  at::Tensor dx = need_input_grad ? at::empty_like(r.x) : at::Tensor();
  at::Tensor dsc = need_scores_grad ? at::empty_like(scores) : at::Tensor();
  if (need_input_grad || need_scores_grad) {
    RNNATTN_DISPATCH(input.scalar_type(), "rnnattn::attention_pool_scores_backward", [&] {
      PoolArgs<scalar_t> p = make_args<scalar_t>(s, r);
      set_scores(p, scores);
      auto g = make_bwd<scalar_t>(ctx, dc, wts, da, dx);
      if (dsc.defined()) {
        g.dsc = dsc.data_ptr<scalar_t>();
        g.dsc_sb = dsc.stride(0);
        g.dsc_st = dsc.stride(1);
        g.dsc_sh = dsc.stride(2);
      }
      launch_backward<scalar_t, false>(s, p, g, at::Tensor(), input);
    });
  }
  return {dx.defined() ? dx : none, dsc.defined() ? dsc : none};
}

}  // namespace

TORCH_LIBRARY_IMPL(rnnattn, CUDA, m) {
  m.impl("attention_pool_forward", &attention_pool_forward_cuda);
  m.impl("attention_pool_backward", &attention_pool_backward_cuda);
  m.impl("attention_pool_scores_forward", &attention_pool_scores_forward_cuda);
  m.impl("attention_pool_scores_backward", &attention_pool_scores_backward_cuda);
}

}  // namespace rnnattn::cuda

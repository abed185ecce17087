// CPU kernels of the attention-pooling operators (conventions in
// ../attention_common.h):
//
//   attention_pool_forward / _backward           score e_t = H_t . w_h, computed here
//   attention_pool_scores_forward / _backward    scores (B, T, k) given by the caller
//
// The second covers scores that are not a dot product with H (the additive
// score v . tanh(W H_t + b), whose W H_t is a GEMM the caller runs): the
// fused part is the same masked softmax + weighted sum + their backward.
//
// Forward, one (sequence, chunk) at a time, all heads together, in ONE pass
// over H (online softmax): each valid step's score is computed, and the
// running context is rescaled only when the running max rises,
//     e > m:  acc = exp(m - e) acc + H_t,  l = exp(m - e) l + 1,  m = e
//     else:   acc += exp(e - m) H_t,       l += exp(e - m)
// so no exp ever overflows, whatever the size of the scores. Raw scores park
// in the weights output and are normalised at the end of the chunk; nothing
// of size (B, T, D) is allocated.
//
// Backward, also one pass over H: with g_t = dc . H_t + da_t, the softmax
// backward needs s = sum_t a_t g_t, and that is dc . c + sum_t a_t da_t,
// known from the saved context before touching H. Then per valid step
//     de_t = a_t (g_t - s),  dH_t = sum_h a_t dc_h + de_t w_h,  dw_h += de_t H_t.
//
// Invalid steps (beyond lengths, or masked) are never read: NaN/inf stored
// there cannot reach any output or gradient; their grad rows are written as
// zeros.
//
// Work is split over (sequence, chunk) units with at::parallel_for; the
// weight grad is summed per task, then over tasks in a fixed order.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../attention_common.h"
#include "attention_vec.h"

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define RNNATTN_X86_DISPATCH 1
#else
#define RNNATTN_X86_DISPATCH 0
#endif

namespace rnnattn::cpu {
namespace {

// About this many multiply-adds per parallel task before it pays to wake a
// thread.
constexpr int64_t kGrainFlops = 1 << 15;

// The read-only side of one call: H, the score source, the valid steps.
template <typename T>
struct PoolInput {
  AttnShape s;
  const T* x;  // H: row (b, t) at x + b * x_sb + t * x_st, D contiguous
  int64_t x_sb, x_st;
  const T* w;  // linear: (k, D) contiguous
  const T* sc;  // scores op: (b, t, h) at sc + b * sc_sb + t * sc_st + h * sc_sh
  int64_t sc_sb, sc_st, sc_sh;
  const int64_t* len;  // (B,) or null
  const bool* mask;    // (b, t) at mask + b * m_sb + t * m_st, or null
  int64_t m_sb, m_st;

  RNNATTN_INLINE int64_t length(int64_t b) const { return len ? len[b] : s.steps; }
  RNNATTN_INLINE bool kept(int64_t b, int64_t t) const {
    return mask == nullptr || mask[b * m_sb + t * m_st];
  }
  RNNATTN_INLINE const T* row(int64_t b, int64_t t) const { return x + b * x_sb + t * x_st; }
};

// Steps [t0, t1) of a unit (sequence b, chunk c); steps >= tv are padding.
struct Unit {
  int64_t b, t0, t1, tv;
};

template <typename T>
RNNATTN_INLINE Unit unit_of(const PoolInput<T>& p, int64_t i) {
  const int64_t b = i / p.s.chunks, c = i % p.s.chunks;
  const int64_t t0 = c * p.s.chunk;
  const int64_t t1 = std::min(t0 + p.s.chunk, p.s.steps);
  return Unit{b, t0, t1, std::min(t1, p.length(b))};
}

template <typename T, bool kLinear>
RNNATTN_INLINE T score_of(const PoolInput<T>& p, int64_t b, int64_t t, int64_t h,
                          const T* xt) {
  if constexpr (kLinear) {
    return vec::dot(xt, p.w + h * p.s.dim, p.s.dim);
  } else {
    return p.sc[b * p.sc_sb + t * p.sc_st + h * p.sc_sh];
  }
}

// Units [i0, i1). ctx_all (B, C, k, D), wts_all (B, k, T); m, l: k scratch.
template <typename T, bool kLinear>
RNNATTN_INLINE void forward_units(const PoolInput<T>& p, T* ctx_all, T* wts_all, int64_t i0,
                                  int64_t i1, T* m, T* l) {
  const int64_t D = p.s.dim, k = p.s.heads, T_ = p.s.steps;
  constexpr T kNegInf = -std::numeric_limits<T>::infinity();
  for (int64_t i = i0; i < i1; ++i) {
    const Unit u = unit_of(p, i);
    T* ctx = ctx_all + i * k * D;
    T* wts = wts_all + u.b * k * T_;
    vec::zero(ctx, k * D);
    for (int64_t h = 0; h < k; ++h) {
      m[h] = kNegInf;
      l[h] = T(0);
    }
    for (int64_t t = u.t0; t < u.tv; ++t) {
      if (!p.kept(u.b, t)) continue;
      const T* xt = p.row(u.b, t);
      for (int64_t h = 0; h < k; ++h) {
        const T e = score_of<T, kLinear>(p, u.b, t, h, xt);
        wts[h * T_ + t] = e;
        T* acc = ctx + h * D;
        if (e > m[h]) {
          // New running max: rescale what was summed so far (r = 0 on the
          // first step, when acc is still zero).
          const T r = std::exp(m[h] - e);
          vec::scale_add(acc, r, xt, D);
          l[h] = r * l[h] + T(1);
          m[h] = e;
        } else if (e != kNegInf) {  // a -inf score weighs 0; NaN propagates
          const T q = std::exp(e - m[h]);
          vec::axpy(acc, q, xt, D);
          l[h] += q;
        }
      }
    }
    for (int64_t h = 0; h < k; ++h) {
      T* wh = wts + h * T_;
      if (l[h] == T(0)) {
        // No valid step (or only -inf scores): context stays 0, weights 0.
        std::fill(wh + u.t0, wh + u.t1, T(0));
        continue;
      }
      const T inv = T(1) / l[h];
      vec::scale(ctx + h * D, inv, D);
      for (int64_t t = u.t0; t < u.t1; ++t) {
        wh[t] = (t < u.tv && p.kept(u.b, t)) ? std::exp(wh[t] - m[h]) * inv : T(0);
      }
    }
  }
}

// What the backward reads beside PoolInput, and writes.
template <typename T>
struct PoolGrads {
  const T* ctx;  // (B, C, k, D) contiguous
  const T* dc;   // (B, C, k, D) contiguous
  const T* wts;  // (B, k, T) contiguous
  const T* da;   // (B, k, T) contiguous, or null (weights not used downstream)
  T* dx;         // grad of H, or null; row (b, t) at dx + b * dx_sb + t * dx_st
  int64_t dx_sb, dx_st;
  T* dsc;  // scores op: grad of scores, or null
  int64_t dsc_sb, dsc_st, dsc_sh;
};

// Units [i0, i1). dw: (k, D) accumulator of this task (linear op), or null;
// sh: k scratch.
template <typename T, bool kLinear>
RNNATTN_INLINE void backward_units(const PoolInput<T>& p, const PoolGrads<T>& g, int64_t i0,
                                   int64_t i1, T* dw, T* sh) {
  const int64_t D = p.s.dim, k = p.s.heads, T_ = p.s.steps;
  // The scores op needs g_t (hence a pass with dots) only for grad_scores;
  // dH alone is sum_h a_t dc_h.
  const bool need_de = kLinear || g.dsc != nullptr;
  for (int64_t i = i0; i < i1; ++i) {
    const Unit u = unit_of(p, i);
    const T* ctx = g.ctx + i * k * D;
    const T* dc = g.dc + i * k * D;
    const T* wts = g.wts + u.b * k * T_;
    const T* da = g.da ? g.da + u.b * k * T_ : nullptr;
    if (need_de) {
      for (int64_t h = 0; h < k; ++h) {
        T s = vec::dot(dc + h * D, ctx + h * D, D);
        if (da) {
          for (int64_t t = u.t0; t < u.tv; ++t) {
            if (p.kept(u.b, t)) s += wts[h * T_ + t] * da[h * T_ + t];
          }
        }
        sh[h] = s;
      }
    }
    for (int64_t t = u.t0; t < u.t1; ++t) {
      T* dxt = g.dx ? g.dx + u.b * g.dx_sb + t * g.dx_st : nullptr;
      if (t >= u.tv || !p.kept(u.b, t)) {
        if (dxt) vec::zero(dxt, D);
        if (!kLinear && g.dsc) {
          for (int64_t h = 0; h < k; ++h) g.dsc[u.b * g.dsc_sb + t * g.dsc_st + h * g.dsc_sh] = T(0);
        }
        continue;
      }
      const T* xt = p.row(u.b, t);
      for (int64_t h = 0; h < k; ++h) {
        const T a = wts[h * T_ + t];
        const T* dch = dc + h * D;
        T de = T(0);
        if (need_de) {
          const T gt = vec::dot(dch, xt, D) + (da ? da[h * T_ + t] : T(0));
          de = a * (gt - sh[h]);
        }
        if constexpr (kLinear) {
          const T* wh = p.w + h * D;
          if (dxt) {
            if (h == 0) {
              vec::axpby(dxt, a, dch, de, wh, D);
            } else {
              vec::add_axpby(dxt, a, dch, de, wh, D);
            }
          }
          if (dw) vec::axpy(dw + h * D, de, xt, D);
        } else {
          if (g.dsc) g.dsc[u.b * g.dsc_sb + t * g.dsc_st + h * g.dsc_sh] = de;
          if (dxt) {
            if (h == 0) {
              vec::scaled_copy(dxt, a, dch, D);
            } else {
              vec::axpy(dxt, a, dch, D);
            }
          }
        }
      }
    }
  }
}

// Two builds of each kernel: baseline x86-64 and AVX2+FMA (chosen at run
// time, so the extension needs no -march flag and still runs anywhere).
template <typename T, bool kLinear>
void forward_base(const PoolInput<T>& p, T* ctx, T* wts, int64_t i0, int64_t i1, T* m, T* l) {
  forward_units<T, kLinear>(p, ctx, wts, i0, i1, m, l);
}
template <typename T, bool kLinear>
void backward_base(const PoolInput<T>& p, const PoolGrads<T>& g, int64_t i0, int64_t i1, T* dw,
                   T* sh) {
  backward_units<T, kLinear>(p, g, i0, i1, dw, sh);
}
#if RNNATTN_X86_DISPATCH
template <typename T, bool kLinear>
__attribute__((target("avx2,fma"))) void forward_avx2(const PoolInput<T>& p, T* ctx, T* wts,
                                                      int64_t i0, int64_t i1, T* m, T* l) {
  forward_units<T, kLinear>(p, ctx, wts, i0, i1, m, l);
}
template <typename T, bool kLinear>
__attribute__((target("avx2,fma"))) void backward_avx2(const PoolInput<T>& p,
                                                       const PoolGrads<T>& g, int64_t i0,
                                                       int64_t i1, T* dw, T* sh) {
  backward_units<T, kLinear>(p, g, i0, i1, dw, sh);
}
bool use_avx2() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
}
#endif

template <typename T, bool kLinear>
void run_forward(const PoolInput<T>& p, T* ctx, T* wts) {
  const int64_t units = p.s.batch * p.s.chunks;
  const int64_t per_unit = std::max<int64_t>(1, p.s.chunk * p.s.dim * p.s.heads);
  at::parallel_for(0, units, std::max<int64_t>(1, kGrainFlops / per_unit),
                   [&](int64_t i0, int64_t i1) {
                     std::vector<T> scratch(2 * p.s.heads);
                     T* m = scratch.data();
                     T* l = m + p.s.heads;
#if RNNATTN_X86_DISPATCH
                     if (use_avx2()) return forward_avx2<T, kLinear>(p, ctx, wts, i0, i1, m, l);
#endif
                     forward_base<T, kLinear>(p, ctx, wts, i0, i1, m, l);
                   });
}

// dw_out: (k, D) or null. Tasks are a fixed split of the units, so the sum of
// their partial weight grads has a fixed order.
template <typename T, bool kLinear>
void run_backward(const PoolInput<T>& p, const PoolGrads<T>& g, T* dw_out) {
  const int64_t units = p.s.batch * p.s.chunks;
  const int64_t kd = p.s.heads * p.s.dim;
  const int64_t per_unit = std::max<int64_t>(1, p.s.chunk * kd);
  const int64_t grain = std::max<int64_t>(1, kGrainFlops / per_unit);
  const int64_t tasks = std::max<int64_t>(
      1, std::min<int64_t>(at::get_num_threads(), (units + grain - 1) / grain));
  std::vector<T> partial(dw_out ? tasks * kd : 0, T(0));
  at::parallel_for(0, tasks, 1, [&](int64_t j0, int64_t j1) {
    std::vector<T> sh(p.s.heads);
    for (int64_t j = j0; j < j1; ++j) {
      const int64_t i0 = units * j / tasks, i1 = units * (j + 1) / tasks;
      T* dw = dw_out ? partial.data() + j * kd : nullptr;
#if RNNATTN_X86_DISPATCH
      if (use_avx2()) {
        backward_avx2<T, kLinear>(p, g, i0, i1, dw, sh.data());
        continue;
      }
#endif
      backward_base<T, kLinear>(p, g, i0, i1, dw, sh.data());
    }
  });
  if (dw_out) {
    std::fill(dw_out, dw_out + kd, T(0));
    for (int64_t j = 0; j < tasks; ++j) {
      const T* src = partial.data() + j * kd;
      for (int64_t e = 0; e < kd; ++e) dw_out[e] += src[e];
    }
  }
}

// ---- host side -----------------------------------------------------------

void check_cpu_dtype(const at::Tensor& input, const char* op) {
  const auto dt = input.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble, "rnnattn.", op,
              ": the CPU kernel supports float32 and float64 input, got ", dt);
}

// H with a contiguous feature dim (any B/T strides are kept), the checked
// lengths and the mask, ready to wrap in a PoolInput.
struct Prepared {
  at::Tensor x, len, mask;
};

Prepared prepare(const AttnShape& s, const at::Tensor& input,
                 const c10::optional<at::Tensor>& lengths,
                 const c10::optional<at::Tensor>& mask, const char* op) {
  Prepared r;
  r.x = input.stride(2) == 1 ? input : input.contiguous();
  if (lengths.has_value()) r.len = checked_lengths_cpu(*lengths, s.steps, op);
  if (mask.has_value()) r.mask = *mask;
  return r;
}

template <typename T>
PoolInput<T> make_input(const AttnShape& s, const Prepared& r) {
  PoolInput<T> p{};
  p.s = s;
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
PoolGrads<T> make_grads(const at::Tensor& context, const at::Tensor& grad_context,
                        const at::Tensor& weights, const at::Tensor& grad_weights,
                        const at::Tensor& dx) {
  PoolGrads<T> g{};
  g.ctx = context.data_ptr<T>();
  g.dc = grad_context.data_ptr<T>();
  g.wts = weights.data_ptr<T>();
  g.da = grad_weights.defined() ? grad_weights.data_ptr<T>() : nullptr;
  if (dx.defined()) {
    g.dx = dx.data_ptr<T>();
    g.dx_sb = dx.stride(0);
    g.dx_st = dx.stride(1);
  }
  return g;
}

std::tuple<at::Tensor, at::Tensor> attention_pool_forward_cpu(
    const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
    const c10::optional<at::Tensor>& lengths, const c10::optional<at::Tensor>& mask,
    int64_t chunk_size) {
  constexpr const char* op = "attention_pool";
  // bias is checked, then unused: it adds the same number to every score of
  // a head, and softmax is shift-invariant, so it changes neither output.
  const AttnShape s = check_attn_linear_args(input, weight, bias, lengths, mask, chunk_size);
  check_cpu_dtype(input, op);
  const Prepared r = prepare(s, input, lengths, mask, op);
  const at::Tensor w = weight.contiguous();
  auto context = at::empty({s.batch, s.chunks, s.heads, s.dim}, input.options());
  auto weights = at::empty({s.batch, s.heads, s.steps}, input.options());
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "rnnattn::attention_pool_forward", [&] {
    PoolInput<scalar_t> p = make_input<scalar_t>(s, r);
    p.w = w.data_ptr<scalar_t>();
    run_forward<scalar_t, true>(p, context.data_ptr<scalar_t>(), weights.data_ptr<scalar_t>());
  });
  return {context, weights};
}

std::tuple<at::Tensor, at::Tensor> attention_pool_backward_cpu(
    const at::Tensor& grad_context, const c10::optional<at::Tensor>& grad_weights,
    const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& lengths,
    const c10::optional<at::Tensor>& mask, const at::Tensor& context, const at::Tensor& weights,
    int64_t chunk_size, bool need_input_grad, bool need_weight_grad) {
  constexpr const char* op = "attention_pool_backward";
  const AttnShape s =
      check_attn_linear_args(input, weight, c10::nullopt, lengths, mask, chunk_size);
  check_attn_backward_args(s, input, grad_context, grad_weights, context, weights, op);
  check_cpu_dtype(input, op);
  const Prepared r = prepare(s, input, lengths, mask, op);
  const at::Tensor w = weight.contiguous();
  const at::Tensor ctx = context.contiguous(), dc = grad_context.contiguous();
  const at::Tensor wts = weights.contiguous();
  const at::Tensor da = grad_weights.has_value() ? grad_weights->contiguous() : at::Tensor();
  const auto none = at::empty({0}, input.options());
  // grad_input takes the layout of input (a time-major view stays time-major).
  at::Tensor dx = need_input_grad ? at::empty_like(r.x) : at::Tensor();
  at::Tensor dw = need_weight_grad ? at::empty({s.heads, s.dim}, input.options()) : at::Tensor();
  if (need_input_grad || need_weight_grad) {
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "rnnattn::attention_pool_backward", [&] {
      PoolInput<scalar_t> p = make_input<scalar_t>(s, r);
      p.w = w.data_ptr<scalar_t>();
      const PoolGrads<scalar_t> g = make_grads<scalar_t>(ctx, dc, wts, da, dx);
      run_backward<scalar_t, true>(p, g, dw.defined() ? dw.data_ptr<scalar_t>() : nullptr);
    });
  }
  return {dx.defined() ? dx : none, dw.defined() ? dw : none};
}

std::tuple<at::Tensor, at::Tensor> attention_pool_scores_forward_cpu(
    const at::Tensor& input, const at::Tensor& scores, const c10::optional<at::Tensor>& lengths,
    const c10::optional<at::Tensor>& mask, int64_t chunk_size) {
  constexpr const char* op = "attention_pool_scores";
  const AttnShape s = check_attn_scores_args(input, scores, lengths, mask, chunk_size);
  check_cpu_dtype(input, op);
  const Prepared r = prepare(s, input, lengths, mask, op);
  auto context = at::empty({s.batch, s.chunks, s.heads, s.dim}, input.options());
  auto weights = at::empty({s.batch, s.heads, s.steps}, input.options());
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "rnnattn::attention_pool_scores_forward", [&] {
    PoolInput<scalar_t> p = make_input<scalar_t>(s, r);
    p.sc = scores.data_ptr<scalar_t>();
    p.sc_sb = scores.stride(0);
    p.sc_st = scores.stride(1);
    p.sc_sh = scores.stride(2);
    run_forward<scalar_t, false>(p, context.data_ptr<scalar_t>(), weights.data_ptr<scalar_t>());
  });
  return {context, weights};
}

std::tuple<at::Tensor, at::Tensor> attention_pool_scores_backward_cpu(
    const at::Tensor& grad_context, const c10::optional<at::Tensor>& grad_weights,
    const at::Tensor& input, const at::Tensor& scores, const c10::optional<at::Tensor>& lengths,
    const c10::optional<at::Tensor>& mask, const at::Tensor& context, const at::Tensor& weights,
    int64_t chunk_size, bool need_input_grad, bool need_scores_grad) {
  constexpr const char* op = "attention_pool_scores_backward";
  const AttnShape s = check_attn_scores_args(input, scores, lengths, mask, chunk_size);
  check_attn_backward_args(s, input, grad_context, grad_weights, context, weights, op);
  check_cpu_dtype(input, op);
  const Prepared r = prepare(s, input, lengths, mask, op);
  const at::Tensor ctx = context.contiguous(), dc = grad_context.contiguous();
  const at::Tensor wts = weights.contiguous();
  const at::Tensor da = grad_weights.has_value() ? grad_weights->contiguous() : at::Tensor();
  const auto none = at::empty({0}, input.options());
  at::Tensor dx = need_input_grad ? at::empty_like(r.x) : at::Tensor();
  at::Tensor dsc = need_scores_grad ? at::empty_like(scores) : at::Tensor();
  if (need_input_grad || need_scores_grad) {
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "rnnattn::attention_pool_scores_backward", [&] {
      PoolInput<scalar_t> p = make_input<scalar_t>(s, r);
      p.sc = scores.data_ptr<scalar_t>();
      p.sc_sb = scores.stride(0);
      p.sc_st = scores.stride(1);
      p.sc_sh = scores.stride(2);
      PoolGrads<scalar_t> g = make_grads<scalar_t>(ctx, dc, wts, da, dx);
      if (dsc.defined()) {
        g.dsc = dsc.data_ptr<scalar_t>();
        g.dsc_sb = dsc.stride(0);
        g.dsc_st = dsc.stride(1);
        g.dsc_sh = dsc.stride(2);
      }
      run_backward<scalar_t, false>(p, g, nullptr);
    });
  }
  return {dx.defined() ? dx : none, dsc.defined() ? dsc : none};
}

}  // namespace

TORCH_LIBRARY_IMPL(rnnattn, CPU, m) {
  m.impl("attention_pool_forward", &attention_pool_forward_cpu);
  m.impl("attention_pool_backward", &attention_pool_backward_cpu);
  m.impl("attention_pool_scores_forward", &attention_pool_scores_forward_cpu);
  m.impl("attention_pool_scores_backward", &attention_pool_scores_backward_cpu);
}

}  // namespace rnnattn::cpu

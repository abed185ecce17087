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
// over H (online softmax). Valid steps are taken four at a time, so the
// context accumulator is read and written once per four rows; with mx the
// max of the running max m and the group's scores,
//     acc = exp(m - mx) acc + sum_j exp(e_j - mx) H_j,   l likewise,   m = mx,
// so no exp ever overflows, whatever the size of the scores. Raw scores park
// in the weights output and are normalised at the end of the chunk; nothing
// of size (B, T, D) is allocated.
//
// Backward, also one pass over H: with g_t = dc . H_t + da_t, the softmax
// backward needs s = sum_t a_t g_t, and that is dc . c + sum_t a_t da_t,
// known from the saved context before touching H. Then per valid step
//     de_t = a_t (g_t - s),  dH_t = sum_h a_t dc_h + de_t w_h,  dw_h += de_t H_t.
//
// bfloat16 H is read as it is stored, each value widened to float32 as it is
// loaded (attention_vec.h widen), and its grad rounded as it is written; the
// sums, the context and the weights are float32 until the outputs are
// rounded. (float16 still converts slices of the batch to float32 first:
// for_half_slices.)
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
#include <cstdlib>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "../attention_common.h"
#include "attention_vec.h"
#include "half.h"
#include "isa.h"

namespace rnnattn::cpu {
namespace {

// About this many multiply-adds per parallel task before it pays to wake a
// thread.
constexpr int64_t kGrainFlops = 1 << 15;

// The read-only side of one call: H, the score source, the valid steps.
// H's rows are X (attention_vec.h: T, or bfloat16 bits with T = float).
template <typename T, typename X = T>
struct PoolInput {
  AttnShape s;
  const X* x;  // H: row (b, t) at x + b * x_sb + t * x_st, D contiguous
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
  RNNATTN_INLINE const X* row(int64_t b, int64_t t) const { return x + b * x_sb + t * x_st; }
};

// Steps [t0, t1) of a unit (sequence b, chunk c); steps >= tv are padding.
struct Unit {
  int64_t b, t0, t1, tv;
};

template <typename T, typename X>
RNNATTN_INLINE Unit unit_of(const PoolInput<T, X>& p, int64_t i) {
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

// The next (up to) kGroup valid steps of unit u from step t on (t advances
// past them): their steps and rows; unused slots get the zero row.
template <typename T, typename X>
RNNATTN_INLINE int next_group(const PoolInput<T, X>& p, const Unit& u, int64_t& t, int64_t* ts,
                              const X** xr, const X* zero) {
  int n = 0;
  for (; t < u.tv && n < vec::kGroup; ++t) {
    if (!p.kept(u.b, t)) continue;
    ts[n] = t;
    xr[n] = p.row(u.b, t);
    ++n;
  }
  for (int j = n; j < vec::kGroup; ++j) xr[j] = zero;
  return n;
}

// Units [i0, i1). ctx_all (B, C, k, D), wts_all (B, k, T); m, l: k scratch;
// zero: a row of D zeros.
template <typename T, typename X, bool kLinear>
RNNATTN_INLINE void forward_units(const PoolInput<T, X>& p, T* ctx_all, T* wts_all, int64_t i0,
                                  int64_t i1, T* m, T* l, const X* zero) {
  constexpr int G = vec::kGroup;
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
    int64_t t = u.t0;
    int64_t ts[G];
    const X* xr[G];
    for (int n; (n = next_group(p, u, t, ts, xr, zero)) > 0;) {
      for (int64_t h = 0; h < k; ++h) {
        T e[G];
        if constexpr (kLinear) {
          vec::dot_group(xr, p.w + h * D, D, n, e);
        } else {
          for (int j = 0; j < n; ++j) e[j] = p.sc[u.b * p.sc_sb + ts[j] * p.sc_st + h * p.sc_sh];
        }
        // Online softmax over the group: with mx the max of the running max
        // and the new scores (a NaN score is skipped here, and reaches the
        // result through its q below),
        //   acc = exp(m - mx) acc + sum_j exp(e_j - mx) H_j,  l likewise, m = mx.
        T mx = m[h];
        bool any = false;
        for (int j = 0; j < n; ++j) {
          wts[h * T_ + ts[j]] = e[j];  // raw score, normalised below
          if (e[j] > mx) mx = e[j];
          any = any || e[j] != kNegInf;
        }
        if (!any) continue;  // no step, or only -inf scores (weight 0)
        const T scale = std::exp(m[h] - mx);  // 0 the first time (m = -inf)
        T q[G];
        const X* xa[G];
        T lsum = scale * l[h];
        for (int j = 0; j < G; ++j) {
          const bool add = j < n && e[j] != kNegInf;
          q[j] = add ? std::exp(e[j] - mx) : T(0);
          xa[j] = add ? xr[j] : zero;  // a -inf step is not read at all
          lsum += q[j];
        }
        vec::combine_group(ctx + h * D, scale, q, xa, D);
        m[h] = mx;
        l[h] = lsum;
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
      for (int64_t s = u.t0; s < u.t1; ++s) {
        wh[s] = (s < u.tv && p.kept(u.b, s)) ? std::exp(wh[s] - m[h]) * inv : T(0);
      }
    }
  }
}

// What the backward reads beside PoolInput, and writes (dx's rows are X,
// as H's).
template <typename T, typename X = T>
struct PoolGrads {
  const T* ctx;  // (B, C, k, D) contiguous
  const T* dc;   // (B, C, k, D) contiguous
  const T* wts;  // (B, k, T) contiguous
  const T* da;   // (B, k, T) contiguous, or null (weights not used downstream)
  X* dx;         // grad of H, or null; row (b, t) at dx + b * dx_sb + t * dx_st
  int64_t dx_sb, dx_st;
  T* dsc;  // scores op: grad of scores, or null
  int64_t dsc_sb, dsc_st, dsc_sh;
};

// Units [i0, i1). dw: (k, D) accumulator of this task (linear op), or null;
// sh: k scratch, ad: 2 * k * kGroup scratch; zero: a row of D zeros; dxf: a
// row of D, where a step's dH is summed over the heads before it is rounded
// into dx's row (X other than T).
template <typename T, typename X, bool kLinear>
RNNATTN_INLINE void backward_units(const PoolInput<T, X>& p, const PoolGrads<T, X>& g,
                                   int64_t i0, int64_t i1, T* dw, T* sh, T* ad, const X* zero,
                                   T* dxf) {
  constexpr int G = vec::kGroup;
  const int64_t D = p.s.dim, k = p.s.heads, T_ = p.s.steps;
  // The scores op needs g_t (hence a pass with dots) only for grad_scores;
  // dH alone is sum_h a_t dc_h.
  const bool need_de = kLinear || g.dsc != nullptr;
  T* av = ad;          // [k][G] weights of the group's steps
  T* dev = ad + k * G;  // [k][G] their score grads
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
    // Invalid steps get zero grads; valid ones are taken kGroup at a time.
    for (int64_t t = u.t0; t < u.t1; ++t) {
      if (t < u.tv && p.kept(u.b, t)) continue;
      if (g.dx) vec::zero(g.dx + u.b * g.dx_sb + t * g.dx_st, D);
      if (!kLinear && g.dsc) {
        for (int64_t h = 0; h < k; ++h) g.dsc[u.b * g.dsc_sb + t * g.dsc_st + h * g.dsc_sh] = T(0);
      }
    }
    int64_t t = u.t0;
    int64_t ts[G];
    const X* xr[G];
    for (int n; (n = next_group(p, u, t, ts, xr, zero)) > 0;) {
      for (int64_t h = 0; h < k; ++h) {
        T gd[G] = {};
        if (need_de) vec::dot_group(xr, dc + h * D, D, n, gd);
        for (int j = 0; j < G; ++j) {
          const T a = j < n ? wts[h * T_ + ts[j]] : T(0);
          T de = T(0);
          if (need_de && j < n) de = a * (gd[j] + (da ? da[h * T_ + ts[j]] : T(0)) - sh[h]);
          av[h * G + j] = a;
          dev[h * G + j] = de;
          if (!kLinear && g.dsc && j < n) {
            g.dsc[u.b * g.dsc_sb + ts[j] * g.dsc_st + h * g.dsc_sh] = de;
          }
        }
        if constexpr (kLinear) {
          if (dw) vec::combine_group(dw + h * D, T(1), dev + h * G, xr, D);  // dw_h += de_j H_j
        }
      }
      if (!g.dx) continue;
      for (int j = 0; j < n; ++j) {
        X* dxr = g.dx + u.b * g.dx_sb + ts[j] * g.dx_st;
        T* dxt;
        if constexpr (std::is_same_v<X, T>) {
          dxt = dxr;
        } else {
          dxt = dxf;
        }
        for (int64_t h = 0; h < k; ++h) {
          const T a = av[h * G + j], de = dev[h * G + j];
          const T* dch = dc + h * D;
          if constexpr (kLinear) {  // dH_t = sum_h a_t dc_h + de_t w_h
            if (h == 0) {
              vec::axpby(dxt, a, dch, de, p.w + h * D, D);
            } else {
              vec::add_axpby(dxt, a, dch, de, p.w + h * D, D);
            }
          } else {  // dH_t = sum_h a_t dc_h
            if (h == 0) {
              vec::scaled_copy(dxt, a, dch, D);
            } else {
              vec::axpy(dxt, a, dch, D);
            }
          }
        }
        if constexpr (!std::is_same_v<X, T>) vec::store_row(dxr, dxt, D);
      }
    }
  }
}

// Three builds of each kernel: baseline x86-64, AVX2+FMA and AVX-512 (chosen
// at run time, so the extension needs no -march flag and still runs
// anywhere); the compiler vectorizes the loops of attention_vec.h for each.
template <typename T, typename X, bool kLinear>
RNNATTN_TARGET_AVX2 void forward_avx2(const PoolInput<T, X>& p, T* ctx, T* wts, int64_t i0,
                                      int64_t i1, T* m, T* l, const X* zero) {
  forward_units<T, X, kLinear>(p, ctx, wts, i0, i1, m, l, zero);
}
template <typename T, typename X, bool kLinear>
RNNATTN_TARGET_AVX512 void forward_avx512(const PoolInput<T, X>& p, T* ctx, T* wts, int64_t i0,
                                          int64_t i1, T* m, T* l, const X* zero) {
  forward_units<T, X, kLinear>(p, ctx, wts, i0, i1, m, l, zero);
}
template <typename T, typename X, bool kLinear>
void forward_any(const PoolInput<T, X>& p, T* ctx, T* wts, int64_t i0, int64_t i1, T* m, T* l,
                 const X* zero) {
  switch (cpu_isa()) {
    case Isa::kAvx512: return forward_avx512<T, X, kLinear>(p, ctx, wts, i0, i1, m, l, zero);
    case Isa::kAvx2: return forward_avx2<T, X, kLinear>(p, ctx, wts, i0, i1, m, l, zero);
    default: return forward_units<T, X, kLinear>(p, ctx, wts, i0, i1, m, l, zero);
  }
}

template <typename T, typename X, bool kLinear>
RNNATTN_TARGET_AVX2 void backward_avx2(const PoolInput<T, X>& p, const PoolGrads<T, X>& g,
                                       int64_t i0, int64_t i1, T* dw, T* sh, T* ad,
                                       const X* zero, T* dxf) {
  backward_units<T, X, kLinear>(p, g, i0, i1, dw, sh, ad, zero, dxf);
}
template <typename T, typename X, bool kLinear>
RNNATTN_TARGET_AVX512 void backward_avx512(const PoolInput<T, X>& p, const PoolGrads<T, X>& g,
                                           int64_t i0, int64_t i1, T* dw, T* sh, T* ad,
                                           const X* zero, T* dxf) {
  backward_units<T, X, kLinear>(p, g, i0, i1, dw, sh, ad, zero, dxf);
}
template <typename T, typename X, bool kLinear>
void backward_any(const PoolInput<T, X>& p, const PoolGrads<T, X>& g, int64_t i0, int64_t i1,
                  T* dw, T* sh, T* ad, const X* zero, T* dxf) {
  switch (cpu_isa()) {
    case Isa::kAvx512: return backward_avx512<T, X, kLinear>(p, g, i0, i1, dw, sh, ad, zero, dxf);
    case Isa::kAvx2: return backward_avx2<T, X, kLinear>(p, g, i0, i1, dw, sh, ad, zero, dxf);
    default: return backward_units<T, X, kLinear>(p, g, i0, i1, dw, sh, ad, zero, dxf);
  }
}

template <typename T, typename X, bool kLinear>
void run_forward(const PoolInput<T, X>& p, T* ctx, T* wts) {
  const int64_t units = p.s.batch * p.s.chunks;
  const int64_t per_unit = std::max<int64_t>(1, p.s.chunk * p.s.dim * p.s.heads);
  at::parallel_for(0, units, std::max<int64_t>(1, kGrainFlops / per_unit),
                   [&](int64_t i0, int64_t i1) {
                     // m, l: k each; a row of D zeros.
                     std::vector<T> scratch(2 * p.s.heads, T(0));
                     std::vector<X> zero(p.s.dim, X(0));
                     T* m = scratch.data();
                     T* l = m + p.s.heads;
                     forward_any<T, X, kLinear>(p, ctx, wts, i0, i1, m, l, zero.data());
                   });
}

// dw_out: (k, D) or null. Tasks are a fixed split of the units, so the sum of
// their partial weight grads has a fixed order.
template <typename T, typename X, bool kLinear>
void run_backward(const PoolInput<T, X>& p, const PoolGrads<T, X>& g, T* dw_out) {
  const int64_t units = p.s.batch * p.s.chunks;
  const int64_t kd = p.s.heads * p.s.dim;
  const int64_t per_unit = std::max<int64_t>(1, p.s.chunk * kd);
  const int64_t grain = std::max<int64_t>(1, kGrainFlops / per_unit);
  const int64_t tasks = std::max<int64_t>(
      1, std::min<int64_t>(at::get_num_threads(), (units + grain - 1) / grain));
  std::vector<T> partial(dw_out ? tasks * kd : 0, T(0));
  at::parallel_for(0, tasks, 1, [&](int64_t j0, int64_t j1) {
    // sh: k; ad: 2 * k * kGroup; dxf: D (X other than T); a row of D zeros.
    const int64_t k = p.s.heads;
    const int64_t n_dxf = std::is_same_v<X, T> ? 0 : p.s.dim;
    std::vector<T> scratch(k + 2 * k * vec::kGroup + n_dxf, T(0));
    std::vector<X> zero(p.s.dim, X(0));
    T* sh = scratch.data();
    T* ad = sh + k;
    T* dxf = n_dxf ? ad + 2 * k * vec::kGroup : nullptr;
    for (int64_t j = j0; j < j1; ++j) {
      const int64_t i0 = units * j / tasks, i1 = units * (j + 1) / tasks;
      T* dw = dw_out ? partial.data() + j * kd : nullptr;
      backward_any<T, X, kLinear>(p, g, i0, i1, dw, sh, ad, zero.data(), dxf);
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
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble || half::is_half(input), "rnnattn.", op,
              ": the CPU kernel supports float32, float64, bfloat16 and float16 input, got ", dt);
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

// X = uint16_t: H is bfloat16, read as its bits.
template <typename T, typename X = T>
PoolInput<T, X> make_input(const AttnShape& s, const Prepared& r) {
  PoolInput<T, X> p{};
  p.s = s;
  if constexpr (std::is_same_v<X, T>) {
    p.x = r.x.data_ptr<T>();
  } else {
    p.x = reinterpret_cast<const X*>(r.x.data_ptr<at::BFloat16>());
  }
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

template <typename T, typename X = T>
PoolGrads<T, X> make_grads(const at::Tensor& context, const at::Tensor& grad_context,
                           const at::Tensor& weights, const at::Tensor& grad_weights,
                           const at::Tensor& dx) {
  PoolGrads<T, X> g{};
  g.ctx = context.data_ptr<T>();
  g.dc = grad_context.data_ptr<T>();
  g.wts = weights.data_ptr<T>();
  g.da = grad_weights.defined() ? grad_weights.data_ptr<T>() : nullptr;
  if (dx.defined()) {
    if constexpr (std::is_same_v<X, T>) {
      g.dx = dx.data_ptr<T>();
    } else {
      g.dx = reinterpret_cast<X*>(dx.data_ptr<at::BFloat16>());
    }
    g.dx_sb = dx.stride(0);
    g.dx_st = dx.stride(1);
  }
  return g;
}

// Runs f(X{}) with X the type H's rows are read as under sums of type T:
// bfloat16's bits under float32 sums where H is bfloat16, else T itself.
template <typename T, typename F>
void with_row_type(const at::Tensor& input, const F& f) {
  if constexpr (std::is_same_v<T, float>) {
    if (input.scalar_type() == at::kBFloat16) return f(uint16_t{});
  }
  f(T{});
}

// The dtype of a call's sums: float32 for bfloat16 H (read as stored),
// else H's own.
at::ScalarType sum_dtype(const at::Tensor& input) {
  return input.scalar_type() == at::kBFloat16 ? at::kFloat : input.scalar_type();
}

// float16: the float32 kernel over slices of the batch, each
// slice's tensors converted to float32 when its turn comes. The call then
// holds one slice's float32 copy of H, not the whole input's (which made its
// peak ~60x the eager composition's in bfloat16), and reads that copy back
// while it is in cache: ~256 KiB of it per thread, at least a sequence each.
template <typename F>
void for_half_slices(const AttnShape& s, const F& f) {
  const int64_t threads = at::get_num_threads();
  const int64_t row_bytes = std::max<int64_t>(1, s.steps * s.dim * int64_t(sizeof(float)));
  const int64_t rows = std::max<int64_t>(threads, threads * (int64_t(256) << 10) / row_bytes);
  for (int64_t b0 = 0; b0 < s.batch; b0 += rows) f(b0, std::min(rows, s.batch - b0));
}

// Sequences [b0, b0 + n) of a batch-leading tensor, in float32 where it is
// half precision (half::up); nullopt stays nullopt.
at::Tensor rows_up(const at::Tensor& t, int64_t b0, int64_t n) {
  return half::up(t.narrow(0, b0, n));
}
c10::optional<at::Tensor> rows_up(const c10::optional<at::Tensor>& t, int64_t b0, int64_t n) {
  if (!t.has_value() || !t->defined()) return c10::nullopt;
  return rows_up(*t, b0, n);
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
  if (input.scalar_type() == at::kHalf) {  // float32 inside, over slices of the batch
    auto context = at::empty({s.batch, s.chunks, s.heads, s.dim}, input.options());
    auto weights = at::empty({s.batch, s.heads, s.steps}, input.options());
    const at::Tensor w = weight.to(at::kFloat);
    for_half_slices(s, [&](int64_t b0, int64_t n) {
      auto [c, a] = attention_pool_forward_cpu(rows_up(input, b0, n), w, c10::nullopt,
                                               rows_up(lengths, b0, n), rows_up(mask, b0, n),
                                               chunk_size);
      context.narrow(0, b0, n).copy_(c);
      weights.narrow(0, b0, n).copy_(a);
    });
    return {context, weights};
  }
  // bfloat16 H is read as stored, under float32 sums (sum_dtype); the
  // outputs are rounded at the end (.to() of the same dtype is a no-op).
  const Prepared r = prepare(s, input, lengths, mask, op);
  const auto acc = input.options().dtype(sum_dtype(input));
  const at::Tensor w = weight.to(acc.dtype()).contiguous();
  auto context = at::empty({s.batch, s.chunks, s.heads, s.dim}, acc);
  auto weights = at::empty({s.batch, s.heads, s.steps}, acc);
  AT_DISPATCH_FLOATING_TYPES(acc.dtype().toScalarType(), "rnnattn::attention_pool_forward", [&] {
    with_row_type<scalar_t>(input, [&](auto row) {
      using X = decltype(row);
      PoolInput<scalar_t, X> p = make_input<scalar_t, X>(s, r);
      p.w = w.data_ptr<scalar_t>();
      run_forward<scalar_t, X, true>(p, context.data_ptr<scalar_t>(), weights.data_ptr<scalar_t>());
    });
  });
  return {context.to(input.scalar_type()), weights.to(input.scalar_type())};
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
  if (input.scalar_type() == at::kHalf) {  // float32 inside, over slices of the batch
    const auto none = at::empty({0}, input.options());
    at::Tensor dx = need_input_grad ? at::empty_like(input) : none;
    at::Tensor dw = need_weight_grad ? at::zeros(weight.sizes(), weight.options().dtype(at::kFloat))
                                     : at::Tensor();
    const at::Tensor w = weight.to(at::kFloat);
    for_half_slices(s, [&](int64_t b0, int64_t n) {
      auto [dxs, dws] = attention_pool_backward_cpu(
          rows_up(grad_context, b0, n), rows_up(grad_weights, b0, n), rows_up(input, b0, n), w,
          rows_up(lengths, b0, n), rows_up(mask, b0, n), rows_up(context, b0, n),
          rows_up(weights, b0, n), chunk_size, need_input_grad, need_weight_grad);
      if (need_input_grad) dx.narrow(0, b0, n).copy_(dxs);
      if (need_weight_grad) dw.add_(dws);  // summed in float32
    });
    return {dx, need_weight_grad ? dw.to(input.scalar_type()) : none};
  }
  // bfloat16 H and dH as stored, under float32 sums (as the forward).
  const Prepared r = prepare(s, input, lengths, mask, op);
  const at::ScalarType acc = sum_dtype(input);
  auto sums = [&](const at::Tensor& t) { return t.to(acc).contiguous(); };
  const at::Tensor w = sums(weight);
  const at::Tensor ctx = sums(context), dc = sums(grad_context), wts = sums(weights);
  const at::Tensor da = grad_weights.has_value() ? sums(*grad_weights) : at::Tensor();
  const auto none = at::empty({0}, input.options());
  // grad_input takes the layout of input (a time-major view stays time-major).
  at::Tensor dx = need_input_grad ? at::empty_like(r.x) : at::Tensor();
  at::Tensor dw = need_weight_grad ? at::empty({s.heads, s.dim}, w.options()) : at::Tensor();
  if (need_input_grad || need_weight_grad) {
    AT_DISPATCH_FLOATING_TYPES(acc, "rnnattn::attention_pool_backward", [&] {
      with_row_type<scalar_t>(input, [&](auto row) {
        using X = decltype(row);
        PoolInput<scalar_t, X> p = make_input<scalar_t, X>(s, r);
        p.w = w.data_ptr<scalar_t>();
        const PoolGrads<scalar_t, X> g = make_grads<scalar_t, X>(ctx, dc, wts, da, dx);
        run_backward<scalar_t, X, true>(p, g, dw.defined() ? dw.data_ptr<scalar_t>() : nullptr);
      });
    });
  }
  return {dx.defined() ? dx : none, dw.defined() ? dw.to(input.scalar_type()) : none};
}

std::tuple<at::Tensor, at::Tensor> attention_pool_scores_forward_cpu(
    const at::Tensor& input, const at::Tensor& scores, const c10::optional<at::Tensor>& lengths,
    const c10::optional<at::Tensor>& mask, int64_t chunk_size) {
  constexpr const char* op = "attention_pool_scores";
  const AttnShape s = check_attn_scores_args(input, scores, lengths, mask, chunk_size);
  check_cpu_dtype(input, op);
  if (half::is_half(input)) {  // float32 inside, over slices of the batch
    auto context = at::empty({s.batch, s.chunks, s.heads, s.dim}, input.options());
    auto weights = at::empty({s.batch, s.heads, s.steps}, input.options());
    for_half_slices(s, [&](int64_t b0, int64_t n) {
      auto [c, a] = attention_pool_scores_forward_cpu(rows_up(input, b0, n), rows_up(scores, b0, n),
                                                      rows_up(lengths, b0, n), rows_up(mask, b0, n),
                                                      chunk_size);
      context.narrow(0, b0, n).copy_(c);
      weights.narrow(0, b0, n).copy_(a);
    });
    return {context, weights};
  }
  const Prepared r = prepare(s, input, lengths, mask, op);
  auto context = at::empty({s.batch, s.chunks, s.heads, s.dim}, input.options());
  auto weights = at::empty({s.batch, s.heads, s.steps}, input.options());
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "rnnattn::attention_pool_scores_forward", [&] {
    PoolInput<scalar_t> p = make_input<scalar_t>(s, r);
    p.sc = scores.data_ptr<scalar_t>();
    p.sc_sb = scores.stride(0);
    p.sc_st = scores.stride(1);
    p.sc_sh = scores.stride(2);
    run_forward<scalar_t, scalar_t, false>(p, context.data_ptr<scalar_t>(), weights.data_ptr<scalar_t>());
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
  if (half::is_half(input)) {  // float32 inside, over slices of the batch
    const auto none = at::empty({0}, input.options());
    at::Tensor dx = need_input_grad ? at::empty_like(input) : none;
    at::Tensor dsc = need_scores_grad ? at::empty_like(scores) : none;
    for_half_slices(s, [&](int64_t b0, int64_t n) {
      auto [dxs, dscs] = attention_pool_scores_backward_cpu(
          rows_up(grad_context, b0, n), rows_up(grad_weights, b0, n), rows_up(input, b0, n),
          rows_up(scores, b0, n), rows_up(lengths, b0, n), rows_up(mask, b0, n),
          rows_up(context, b0, n), rows_up(weights, b0, n), chunk_size, need_input_grad,
          need_scores_grad);
      if (need_input_grad) dx.narrow(0, b0, n).copy_(dxs);
      if (need_scores_grad) dsc.narrow(0, b0, n).copy_(dscs);
    });
    return {dx, dsc};
  }
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
      run_backward<scalar_t, scalar_t, false>(p, g, nullptr);
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

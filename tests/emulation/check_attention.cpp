// The attention-pooling kernels of csrc/cuda/attention_kernels.cuh (forward
// and backward, linear score and given scores), launched as attention.cu
// launches them (same plan functions) and compared with a float64 reference
// written from the math in DESIGN.md, not from the kernels.
//
// Every input the kernels must not read (padding past a length, masked
// steps, the gap between strided rows, scores and grad_weights at invalid
// steps) is NaN, every output starts as NaN, inputs are read-only; so a
// read of padding, a missing write and a write to an input all fail.
#include "cuda_emu.h"  // first: the device-code definitions the kernels need

#include <ATen/OpMathType.h>

#include "../../csrc/cuda/attention_kernels.cuh"
#include "checks.h"

namespace emu_check {
namespace {

using namespace rnnattn::cuda::pool;

// One pooling problem and how to launch it.
struct AttnSpec {
  std::string label;
  int64_t B, T, D, k, chunk_size;
  std::vector<int64_t> lengths;  // empty: no lengths
  int mask = 0;                  // 0: none; 1: random holes; 2: holes, and sequence 0 all masked
  int layout = 0;                // 0: (B,T,D) contiguous; 1: time-major (T,B,D) seen as (B,T,D); 2: rows padded
  int64_t sms = 2;               // SM count the plan assumes
  size_t smem_limit = 232448;    // opt-in shared memory per block (H100/H200)
  bool with_da = false;          // a grad for the weights output
  bool want_dx = true;
  bool want_dw = true;           // linear: dw; scores op: grad of the scores
  double scale = 1;              // score magnitude
  bool neg_inf = false;          // scores op: some valid scores are -inf (one row all)
  std::vector<emu::Schedule> schedules;
};

template <typename T>
double d(T v) {
  return static_cast<double>(static_cast<float>(v));
}
template <>
double d<double>(double v) {
  return v;
}

template <typename T>
T cast(double v) {
  if constexpr (std::is_same_v<T, double>) {
    return v;
  } else {
    return T(static_cast<float>(v));
  }
}

// Inputs (in the storage type; the reference reads the same rounded values)
// and the layouts the kernels see.
template <typename T>
struct Inputs {
  int64_t C, K;
  int64_t x_sb, x_st, m_sb, m_st, sc_sb, sc_st, sc_sh, dx_sb, dx_st;
  Buf<T> x, w, sc, dc, da;
  Buf<int64_t> len;
  Buf<bool> mask;
  std::vector<char> valid;  // (B, T)
  bool ok_valid(int64_t b, int64_t t, int64_t T_) const { return valid[b * T_ + t]; }
};

template <typename T>
Inputs<T> make_inputs(const AttnSpec& s, bool scores_op) {
  const int64_t B = s.B, T_ = s.T, D = s.D, k = s.k;
  Inputs<T> in;
  in.K = s.chunk_size == 0 ? std::max<int64_t>(T_, 1) : s.chunk_size;
  in.C = s.chunk_size == 0 ? 1 : (T_ + s.chunk_size - 1) / s.chunk_size;
  // Layouts.
  int64_t x_elems;
  if (s.layout == 1) {  // (T, B, D) memory
    in.x_sb = D;
    in.x_st = B * D;
    x_elems = T_ * B * D;
    in.m_sb = 1;
    in.m_st = B;
    in.sc_sb = k;
    in.sc_st = B * k;
    in.sc_sh = 1;
    in.dx_sb = D;  // empty_like keeps a dense layout
    in.dx_st = B * D;
  } else if (s.layout == 2) {  // rows D + 3 apart, sequences 5 more apart; scores (B, k, T) transposed
    in.x_st = D + 3;
    in.x_sb = T_ * in.x_st + 5;
    x_elems = B * in.x_sb;
    in.m_sb = T_;
    in.m_st = 1;
    in.sc_sb = k * T_;
    in.sc_st = 1;
    in.sc_sh = T_;
    in.dx_sb = T_ * D;  // empty_like of a non-dense tensor is contiguous
    in.dx_st = D;
  } else {
    in.x_sb = T_ * D;
    in.x_st = D;
    x_elems = B * T_ * D;
    in.m_sb = T_;
    in.m_st = 1;
    in.sc_sb = T_ * k;
    in.sc_st = k;
    in.sc_sh = 1;
    in.dx_sb = T_ * D;
    in.dx_st = D;
  }
  // Valid steps.
  in.valid.assign(B * T_, 1);
  if (!s.lengths.empty()) {
    in.len = Buf<int64_t>(B, "lengths");
    for (int64_t b = 0; b < B; ++b) {
      in.len[b] = s.lengths[b];
      for (int64_t t = s.lengths[b]; t < T_; ++t) in.valid[b * T_ + t] = 0;
    }
  }
  if (s.mask) {
    in.mask = Buf<bool>(std::max<int64_t>(B * T_, 1), "mask");
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < T_; ++t) {
        bool keep = uni(0, 1) > 0.3;
        if (s.mask == 2 && b == 0) keep = false;
        // With chunks: the second chunk of sequence 1 is masked whole.
        if (s.chunk_size > 0 && b == 1 && t / s.chunk_size == 1) keep = false;
        in.mask[b * in.m_sb + t * in.m_st] = keep;
        if (!keep) in.valid[b * T_ + t] = 0;
      }
  }
  // H: NaN everywhere the kernels must not read.
  in.x = Buf<T>(std::max<int64_t>(x_elems, 1), "input");
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T_; ++t)
      if (in.ok_valid(b, t, T_))
        for (int64_t j = 0; j < D; ++j) in.x[b * in.x_sb + t * in.x_st + j] = cast<T>(uni());
  if (!scores_op) {
    in.w = Buf<T>(k * D, "weight");
    for (int64_t i = 0; i < k * D; ++i) in.w[i] = cast<T>(uni() * s.scale * std::sqrt(3.0 / D));
  } else {
    in.sc = Buf<T>(std::max<int64_t>(B * T_ * k, 1), "scores");
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < T_; ++t)
        if (in.ok_valid(b, t, T_))
          for (int64_t h = 0; h < k; ++h) {
            double e = uni() * s.scale;
            // -inf scores: every 5th valid step, and all of sequence B-1's head 0.
            if (s.neg_inf && ((b * T_ + t) % 5 == 2 || (b == B - 1 && h == 0))) e = -INFINITY;
            in.sc[b * in.sc_sb + t * in.sc_st + h * in.sc_sh] = cast<T>(e);
          }
  }
  in.dc = Buf<T>(std::max<int64_t>(B * in.C * k * D, 1), "grad_context");
  for (int64_t i = 0; i < B * in.C * k * D; ++i) in.dc[i] = cast<T>(uni());
  if (s.with_da) {
    in.da = Buf<T>(std::max<int64_t>(B * k * T_, 1), "grad_weights");
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < k; ++h)
        for (int64_t t = 0; t < T_; ++t)
          if (in.ok_valid(b, t, T_)) in.da[(b * k + h) * T_ + t] = cast<T>(uni());
  }
  return in;
}

// The float64 reference: context (B,C,k,D), weights (B,k,T), and the grads
// of H (B,T,D) and of w (k,D) or the scores (B,T,k).
struct Ref {
  std::vector<double> ctx, wts, dx, dw, dsc;
};

template <typename T>
Ref reference(const AttnSpec& s, const Inputs<T>& in, bool scores_op) {
  const int64_t B = s.B, T_ = s.T, D = s.D, k = s.k, K = in.K, C = in.C;
  Ref r;
  r.ctx.assign(B * C * k * D, 0);
  r.wts.assign(B * k * T_, 0);
  r.dx.assign(B * T_ * D, 0);
  r.dw.assign(k * D, 0);
  r.dsc.assign(B * T_ * k, 0);
  auto X = [&](int64_t b, int64_t t, int64_t j) { return d(in.x[b * in.x_sb + t * in.x_st + j]); };
  for (int64_t b = 0; b < B; ++b)
    for (int64_t c = 0; c < C; ++c) {
      const int64_t t0 = c * K, t1 = std::min(t0 + K, T_);
      for (int64_t h = 0; h < k; ++h) {
        std::vector<double> e(t1 - t0, -INFINITY), a(t1 - t0, 0);
        double M = -INFINITY;
        for (int64_t t = t0; t < t1; ++t) {
          if (!in.ok_valid(b, t, T_)) continue;
          double v = 0;
          if (scores_op) {
            v = d(in.sc[b * in.sc_sb + t * in.sc_st + h * in.sc_sh]);
          } else {
            for (int64_t j = 0; j < D; ++j) v += X(b, t, j) * d(in.w[h * D + j]);
          }
          e[t - t0] = v;
          M = std::max(M, v);
        }
        if (M == -INFINITY) continue;  // no valid step, or only -inf scores: all zero
        double L = 0;
        for (int64_t t = t0; t < t1; ++t) {
          if (in.ok_valid(b, t, T_)) L += a[t - t0] = std::exp(e[t - t0] - M);
        }
        double* ctx = &r.ctx[((b * C + c) * k + h) * D];
        for (int64_t t = t0; t < t1; ++t) {
          if (!in.ok_valid(b, t, T_)) continue;
          a[t - t0] /= L;
          r.wts[(b * k + h) * T_ + t] = a[t - t0];
          for (int64_t j = 0; j < D; ++j) ctx[j] += a[t - t0] * X(b, t, j);
        }
        // Backward: g_t = dc . H_t + da_t, de_t = a_t (g_t - sum_s a_s g_s).
        const T* dc = &in.dc[((b * C + c) * k + h) * D];
        std::vector<double> g(t1 - t0, 0);
        double sg = 0;
        for (int64_t t = t0; t < t1; ++t) {
          if (!in.ok_valid(b, t, T_)) continue;
          double v = s.with_da ? d(in.da[(b * k + h) * T_ + t]) : 0;
          for (int64_t j = 0; j < D; ++j) v += d(dc[j]) * X(b, t, j);
          g[t - t0] = v;
          sg += a[t - t0] * v;
        }
        for (int64_t t = t0; t < t1; ++t) {
          if (!in.ok_valid(b, t, T_)) continue;
          const double at = a[t - t0], de = at * (g[t - t0] - sg);
          r.dsc[(b * T_ + t) * k + h] = de;
          for (int64_t j = 0; j < D; ++j) {
            double v = at * d(dc[j]);
            if (!scores_op) {
              v += de * d(in.w[h * D + j]);
              r.dw[h * D + j] += de * X(b, t, j);
            }
            r.dx[(b * T_ + t) * D + j] += v;
          }
        }
      }
    }
  return r;
}

// What one emulated forward + backward produced.
template <typename T>
struct Outputs {
  Buf<T> ctx, wts, dx, dw, dsc;
  PoolLaunch fwd, bwd;
};

template <typename T, bool kLinear>
std::string run_kernels(const AttnSpec& s, Inputs<T>& in, Outputs<T>& o) {
  using A = at::opmath_type<T>;
  const int64_t B = s.B, T_ = s.T, D = s.D, k = s.k;
  PoolArgs<T> p{};
  p.batch = B;
  p.steps = T_;
  p.dim = D;
  p.heads = k;
  p.chunk = in.K;
  p.chunks = in.C;
  p.units = B * in.C;
  p.x = in.x.p;
  p.x_sb = in.x_sb;
  p.x_st = in.x_st;
  if (kLinear) p.w = in.w.p;
  if (!kLinear) {
    p.sc = in.sc.p;
    p.sc_sb = in.sc_sb;
    p.sc_st = in.sc_st;
    p.sc_sh = in.sc_sh;
  }
  p.len = in.len.n ? in.len.p : nullptr;
  if (in.mask.n) {
    p.mask = in.mask.p;
    p.m_sb = in.m_sb;
    p.m_st = in.m_st;
  }
  for (auto* b : {&in.x, &in.w, &in.sc, &in.dc, &in.da}) b->readonly();
  in.len.readonly();
  in.mask.readonly();

  // Forward, as launch_forward in attention.cu.
  o.fwd = plan_forward<A>(p.units, p.chunk, k, D, s.sms, s.smem_limit);
  if (!o.fwd.fits) return "forward plan does not fit the shared memory limit";
  o.ctx = Buf<T>(std::max<int64_t>(B * in.C * k * D, 1), "context");
  o.wts = Buf<T>(std::max<int64_t>(B * k * T_, 1), "weights");
  Buf<A> ebuf, ws;
  FwdOut<T, A> out{};
  out.ctx = o.ctx.p;
  out.wts = o.wts.p;
  if constexpr (std::is_same_v<T, A>) {
    out.ebuf = out.wts;
  } else {
    ebuf = Buf<A>(std::max<int64_t>(B * k * T_, 1), "raw scores");
    out.ebuf = ebuf.p;
  }
  if (!o.fwd.acc_in_smem) {
    ws = Buf<A>(o.fwd.grid * o.fwd.warps * k * D, "forward workspace");
    out.ws = ws.p;
  }
  emu::Launch lf{dim3(static_cast<unsigned>(o.fwd.grid)), dim3(o.fwd.warps * 32), o.fwd.smem, false};
  std::string err = emu::launch(attn_pool_fwd_kernel<T, A, kLinear>, lf, p, out);
  if (!err.empty()) return "forward kernel: " + err;

  // Backward, as launch_backward, from the forward's (rounded) outputs.
  if (!s.want_dx && !s.want_dw) return "";
  const bool dw_wanted = kLinear && s.want_dw;
  o.bwd = plan_backward<A>(p.units, p.chunk, k, D, s.sms, s.smem_limit, dw_wanted);
  if (!o.bwd.fits) return "backward plan does not fit the shared memory limit";
  o.ctx.readonly();
  o.wts.readonly();
  BwdArgs<T, A> g{};
  g.ctx = o.ctx.p;
  g.dc = in.dc.p;
  g.wts = o.wts.p;
  g.da = in.da.n ? in.da.p : nullptr;
  if (s.want_dx) {
    o.dx = Buf<T>(std::max<int64_t>(B * T_ * D, 1), "grad_input");
    g.dx = o.dx.p;
    g.dx_sb = in.dx_sb;
    g.dx_st = in.dx_st;
  }
  if (!kLinear && s.want_dw) {
    o.dsc = Buf<T>(std::max<int64_t>(B * T_ * k, 1), "grad_scores");
    g.dsc = o.dsc.p;
    g.dsc_sb = in.sc_sb;
    g.dsc_st = in.sc_st;
    g.dsc_sh = in.sc_sh;
  }
  Buf<A> part, bws;
  if (dw_wanted) {
    part = Buf<A>(o.bwd.grid * k * D, "dw partials");
    g.dw_part = part.p;
    if (!o.bwd.acc_in_smem) {
      bws = Buf<A>(o.bwd.grid * o.bwd.warps * k * D, "backward workspace");
      g.ws = bws.p;
    }
  }
  emu::Launch lb{dim3(static_cast<unsigned>(o.bwd.grid)), dim3(o.bwd.warps * 32), o.bwd.smem, false};
  err = emu::launch(attn_pool_bwd_kernel<T, A, kLinear>, lb, p, g);
  if (!err.empty()) return "backward kernel: " + err;
  if (dw_wanted) {  // dw.copy_(part.sum(0))
    o.dw = Buf<T>(k * D, "grad_weight");
    for (int64_t j = 0; j < k * D; ++j) {
      A v = 0;
      for (int64_t blk = 0; blk < o.bwd.grid; ++blk) v += part[blk * k * D + j];
      o.dw[j] = static_cast<T>(v);
    }
  }
  return "";
}

template <typename T>
double tolerance() {
  if constexpr (std::is_same_v<T, double>) return 1e-12;
  if constexpr (std::is_same_v<T, float>) return 2e-5;
  if constexpr (std::is_same_v<T, c10::Half>) return 4e-3;
  return 3e-2;  // bfloat16
}

std::string describe(const AttnSpec& s) {
  static const char* layouts[] = {"BTD", "TBD", "padded-rows"};
  static const char* masks[] = {"-", "holes", "holes+empty-row"};
  std::string t = "B=" + std::to_string(s.B) + " T=" + std::to_string(s.T) + " D=" + std::to_string(s.D) +
                  " k=" + std::to_string(s.k) + " chunk=" + std::to_string(s.chunk_size) +
                  " len=" + (s.lengths.empty() ? std::string("-") : list(s.lengths)) + " mask=" + masks[s.mask] +
                  " layout=" + layouts[s.layout];
  if (s.scale != 1) t += " scale=" + fmt("%g", s.scale);
  if (s.neg_inf) t += " -inf-scores";
  return t;
}

std::string plan_text(const PoolLaunch& L) {
  return "grid=" + std::to_string(L.grid) + " warps=" + std::to_string(L.warps) + " smem=" + std::to_string(L.smem) +
         " acc=" + (L.acc_in_smem ? "smem" : "global");
}

template <typename T, bool kLinear>
Lines run_attention(const AttnSpec& s, uint64_t seed) {
  const std::string fwd_name = kLinear ? "attention_pool_forward" : "attention_pool_scores_forward";
  const std::string bwd_name = kLinear ? "attention_pool_backward" : "attention_pool_scores_backward";
  reseed(seed);
  Inputs<T> in = make_inputs<T>(s, !kLinear);
  const Ref ref = reference(s, in, !kLinear);
  const bool backward = s.want_dx || s.want_dw;
  const std::string head = std::string(dtype_name<T>()) + " " + s.label + ": " + describe(s);
  std::vector<Outputs<T>> runs(s.schedules.size());
  for (size_t i = 0; i < s.schedules.size(); ++i) {
    emu::set_schedule(s.schedules[i], seed + i);
    const std::string err = run_kernels<T, kLinear>(s, in, runs[i]);
    if (!err.empty()) {
      const std::string name = err.rfind("backward", 0) == 0 ? bwd_name : fwd_name;
      return {{false, name + " " + head + " | sched=" + emu::schedule_name(s.schedules[i]) + " | " + err}};
    }
  }
  const Outputs<T>& o = runs[0];
  const double tol = tolerance<T>();
  const std::string sched = " | sched=" + schedules_text(s.schedules);
  Lines lines;
  // Forward.
  {
    ErrAcc ec, ew;
    for (size_t i = 0; i < ref.ctx.size(); ++i) ec.add(d(o.ctx[i]), ref.ctx[i]);
    for (size_t i = 0; i < ref.wts.size(); ++i) ew.add(d(o.wts[i]), ref.wts[i]);
    bool same = true;
    for (size_t i = 1; i < runs.size(); ++i) same = same && runs[i].ctx.same_bits(o.ctx) && runs[i].wts.same_bits(o.wts);
    const bool ok = ec.value() <= tol && ew.value() <= tol && same;
    lines.push_back({ok, fwd_name + " " + head + " | " + plan_text(o.fwd) + sched + " | err context " +
                             fmt("%.1e", ec.value()) + " weights " + fmt("%.1e", ew.value()) +
                             (same ? "" : " | results differ between schedules")});
  }
  if (!backward) return lines;
  {
    ErrAcc ex, ew;
    std::string what;
    if (s.want_dx) {
      for (int64_t b = 0; b < s.B; ++b)
        for (int64_t t = 0; t < s.T; ++t)
          for (int64_t j = 0; j < s.D; ++j) ex.add(d(o.dx[b * in.dx_sb + t * in.dx_st + j]), ref.dx[(b * s.T + t) * s.D + j]);
      what += " input " + fmt("%.1e", ex.value());
    }
    if (s.want_dw && kLinear) {
      for (size_t i = 0; i < ref.dw.size(); ++i) ew.add(d(o.dw[i]), ref.dw[i]);
      what += " weight " + fmt("%.1e", ew.value());
    }
    if (s.want_dw && !kLinear) {
      for (int64_t b = 0; b < s.B; ++b)
        for (int64_t t = 0; t < s.T; ++t)
          for (int64_t h = 0; h < s.k; ++h)
            ew.add(d(o.dsc[b * in.sc_sb + t * in.sc_st + h * in.sc_sh]), ref.dsc[(b * s.T + t) * s.k + h]);
      what += " scores " + fmt("%.1e", ew.value());
    }
    bool same = true;
    for (size_t i = 1; i < runs.size(); ++i) {
      same = same && runs[i].dx.same_bits(o.dx) && runs[i].dw.same_bits(o.dw) && runs[i].dsc.same_bits(o.dsc);
    }
    // The grads scale with the inputs' size: hold them to a few times the
    // forward's bound.
    const double btol = 4 * tol;
    const bool ok = ex.value() <= btol && ew.value() <= btol && same;
    lines.push_back({ok, bwd_name + " " + head + " | " + plan_text(o.bwd) + sched + " | err grad" + what +
                             (same ? "" : " | results differ between schedules")});
  }
  return lines;
}

// The shapes, each run for both score kinds and every dtype.
std::vector<AttnSpec> scenarios() {
  std::vector<AttnSpec> v;
  {
    AttnSpec s;  // lengths 0 and 1; T, D not multiples of 32 or 4
    s.label = "lengths-0-1";
    s.B = 4, s.T = 37, s.D = 45, s.k = 1, s.chunk_size = 0;
    s.lengths = {37, 0, 1, 20};
    s.with_da = true;
    v.push_back(s);
  }
  {
    AttnSpec s;  // chunks with a ragged end, mask holes, a chunk masked whole, 3 heads, time-major
    s.label = "chunks-mask-heads";
    s.B = 3, s.T = 70, s.D = 33, s.k = 3, s.chunk_size = 16;
    s.lengths = {70, 52, 9};
    s.mask = 1;
    s.layout = 1;
    v.push_back(s);
  }
  {
    AttnSpec s;  // workspace accumulators (shared memory too small for them)
    s.label = "global-workspace";
    s.B = 3, s.T = 64, s.D = 100, s.k = 2, s.chunk_size = 0;
    s.lengths = {64, 63, 31};
    s.smem_limit = 4096;
    s.with_da = true;
    v.push_back(s);
  }
  {
    AttnSpec s;  // grid-stride over units (1 SM: 8 blocks for 20 units), 8 warps, padded rows, dx only
    s.label = "grid-stride";
    s.B = 5, s.T = 150, s.D = 70, s.k = 2, s.chunk_size = 40;
    s.lengths = {150, 149, 81, 40, 1};
    s.mask = 2;
    s.layout = 2;
    s.sms = 1;
    s.with_da = true;
    s.want_dw = false;
    v.push_back(s);
  }
  {
    AttnSpec s;  // D = 1, T = 5, 4 heads, chunks of 2; weight/scores grad only
    s.label = "tiny";
    s.B = 2, s.T = 5, s.D = 1, s.k = 4, s.chunk_size = 2;
    s.lengths = {5, 3};
    s.want_dx = false;
    v.push_back(s);
  }
  {
    AttnSpec s;  // 40 heads on one warp (chunk <= kRows): the per-head loops stride over the 32 threads
    s.label = "many-heads";
    s.B = 2, s.T = 3, s.D = 5, s.k = 40, s.chunk_size = 0;
    s.lengths = {3, 2};
    s.with_da = true;
    v.push_back(s);
  }
  {
    AttnSpec s;  // T = 1
    s.label = "T1";
    s.B = 3, s.T = 1, s.D = 32, s.k = 1, s.chunk_size = 0;
    s.lengths = {1, 0, 1};
    s.with_da = true;
    v.push_back(s);
  }
  {
    AttnSpec s;  // large scores (the online softmax's rescaling), -inf scores (scores op)
    s.label = "large-scores";
    s.B = 2, s.T = 90, s.D = 40, s.k = 2, s.chunk_size = 0;
    s.mask = 1;
    s.scale = 40;
    s.neg_inf = true;
    s.with_da = true;
    v.push_back(s);
  }
  {
    AttnSpec s;  // T = 0: empty contexts, zero dw
    s.label = "T0";
    s.B = 2, s.T = 0, s.D = 8, s.k = 1, s.chunk_size = 0;
    v.push_back(s);
  }
  {
    AttnSpec s;  // a longer chunked problem with every option
    s.label = "chunked-long";
    s.B = 3, s.T = 200, s.D = 96, s.k = 2, s.chunk_size = 64;
    s.lengths = {200, 130, 65};
    s.mask = 1;
    s.layout = 1;
    s.with_da = true;
    v.push_back(s);
  }
  return v;
}

template <typename T>
void add_for_dtype(std::vector<Case>& cases, int& seed) {
  for (const AttnSpec& base : scenarios()) {
    for (int linear = 1; linear >= 0; --linear) {
      const std::string name =
          std::string("attention/") + (linear ? "linear/" : "scores/") + dtype_name<T>() + "/" + base.label;
      const uint64_t sd = 1000 + seed++;
      cases.push_back({name, /*quick=*/true, [base, linear, sd] {
                         AttnSpec s = base;
                         s.schedules = all_schedules();
                         return linear ? run_attention<T, true>(s, sd) : run_attention<T, false>(s, sd);
                       }});
    }
  }
}

}  // namespace

// Every shape, for both score kinds and every dtype (each a separate kernel
// instantiation), forward and backward, under every schedule; all in --quick.
void add_attention_cases(std::vector<Case>& cases) {
  int seed = 0;
  add_for_dtype<float>(cases, seed);
  add_for_dtype<double>(cases, seed);
  add_for_dtype<c10::Half>(cases, seed);
  add_for_dtype<c10::BFloat16>(cases, seed);
}

}  // namespace emu_check

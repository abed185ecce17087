// The CUDA RNN kernels of csrc/cuda: the persistent forward/backward kernels
// (rnn_persistent.cuh, a cooperative launch with grid.sync per step), the
// fallback path's per-step pointwise kernels and the Hprev gather
// (rnn_pointwise.cuh), launched as rnn.cu launches them (same plan and launch
// shape) and compared with a plain float64 recurrence.
#include "cuda_emu.h"  // first: the device-code definitions the kernels need

#include "../../csrc/cuda/rnn_persistent.cuh"
#include "checks.h"

namespace emu_check {
namespace {

namespace rc = rnnattn::cuda;
namespace rp = rnnattn::cuda::persistent;

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

// One RNN layer problem: step t has batch[t] rows (all B: padded input).
struct RnnSpec {
  std::string label;
  int64_t H, B;
  std::vector<int64_t> batch;
  bool relu = false, reverse = false;
  bool packed = true;             // the kernels get the schedule (else null: padded input)
  int64_t sms = 132;              // SM count the launch plan assumes
  int64_t smem_max = 232448;      // opt-in shared memory per block (H100/H200)
  std::vector<emu::Schedule> schedules;
};

template <typename T>
struct RnnInputs {
  int64_t steps = 0, N = 0;
  std::vector<int64_t> offset;
  Buf<T> W, P, hx, gout, ghn;
  Buf<int64_t> sched;  // [batch | offset], as device_schedule in rnn.cu
  std::vector<double> out_ref, hn_ref;  // forward reference
};

template <typename T>
RnnInputs<T> make_rnn_inputs(const RnnSpec& s) {
  RnnInputs<T> in;
  const int64_t H = s.H, B = s.B;
  in.steps = s.batch.size();
  in.offset.resize(in.steps);
  for (int64_t t = 0; t < in.steps; ++t) {
    in.offset[t] = in.N;
    in.N += s.batch[t];
  }
  auto rnd = [&](int64_t n, double scale, const char* name) {
    Buf<T> b(std::max<int64_t>(n, 1), name);
    for (int64_t i = 0; i < n; ++i) b[i] = cast<T>(uni() * scale);
    return b;
  };
  in.W = rnd(H * H, 1.5 / std::sqrt(double(H)), "w_hh");
  in.P = rnd(in.N * H, 1.0, "P");
  in.hx = rnd(B * H, 1.0, "hx");
  in.gout = rnd(in.N * H, 1.0, "grad_output");
  in.ghn = rnd(B * H, 1.0, "grad_hn");
  in.sched = Buf<int64_t>(2 * in.steps, "schedule");
  for (int64_t t = 0; t < in.steps; ++t) {
    in.sched[t] = s.batch[t];
    in.sched[in.steps + t] = in.offset[t];
  }
  // Reference forward.
  auto act = [&](double z) { return s.relu ? (z > 0 ? z : 0) : std::tanh(z); };
  std::vector<double> st(B * H);
  in.out_ref.assign(in.N * H, 0);
  for (int64_t i = 0; i < B * H; ++i) st[i] = d(in.hx[i]);
  for (int64_t i = 0; i < in.steps; ++i) {
    const int64_t t = s.reverse ? in.steps - 1 - i : i;
    std::vector<double> nh(s.batch[t] * H);
    for (int64_t b = 0; b < s.batch[t]; ++b)
      for (int64_t j = 0; j < H; ++j) {
        double z = d(in.P[(in.offset[t] + b) * H + j]);
        for (int64_t k = 0; k < H; ++k) z += d(in.W[j * H + k]) * st[b * H + k];
        nh[b * H + j] = act(z);
      }
    for (int64_t e = 0; e < s.batch[t] * H; ++e) {
      st[e] = nh[e];
      in.out_ref[in.offset[t] * H + e] = nh[e];
    }
  }
  in.hn_ref = st;
  return in;
}

// Reference backward (dz and grad_hx) from the kernel's rounded output.
template <typename T>
void backward_ref(const RnnSpec& s, const RnnInputs<T>& in, const Buf<T>& out, std::vector<double>& dz_ref,
                  std::vector<double>& g) {
  const int64_t H = s.H, B = s.B;
  g.assign(B * H, 0);
  dz_ref.assign(in.N * H, 0);
  for (int64_t i = 0; i < B * H; ++i) g[i] = d(in.ghn[i]);
  for (int64_t i = 0; i < in.steps; ++i) {
    const int64_t t = s.reverse ? i : in.steps - 1 - i;
    for (int64_t b = 0; b < s.batch[t]; ++b)
      for (int64_t j = 0; j < H; ++j) {
        const int64_t e = (in.offset[t] + b) * H + j;
        const double h = d(out[e]), dh = d(in.gout[e]) + g[b * H + j];
        dz_ref[e] = s.relu ? (h > 0 ? dh : 0) : dh * (1 - h * h);
      }
    for (int64_t b = 0; b < s.batch[t]; ++b)
      for (int64_t j = 0; j < H; ++j) {
        double v = 0;
        for (int64_t k = 0; k < H; ++k) v += dz_ref[(in.offset[t] + b) * H + k] * d(in.W[k * H + j]);
        g[b * H + j] = v;
      }
  }
}

template <typename T>
double rnn_tolerance(const RnnSpec& s) {
  if constexpr (std::is_same_v<T, double>) return 1e-12;
  if constexpr (std::is_same_v<T, float>) return s.H == 1 ? 1e-5 : 1e-4;
  if constexpr (std::is_same_v<T, c10::Half>) return 5e-3;
  return 3e-2;
}

std::string describe(const RnnSpec& s, int64_t N) {
  return s.label + ": H=" + std::to_string(s.H) + " B=" + std::to_string(s.B) + " T=" +
         std::to_string(s.batch.size()) + " N=" + std::to_string(N) + " batch=" + list(s.batch) +
         (s.packed ? " packed" : " padded(null schedule)") + (s.relu ? " relu" : " tanh") +
         (s.reverse ? " reverse" : "");
}

void set_readonly(std::initializer_list<emu::Memory*> ms, bool ro) {
  for (emu::Memory* m : ms) m->set_readonly(ro);
}

// ---- persistent kernels ------------------------------------------------------------------

template <typename T>
struct PersistentOut {
  Buf<T> out, hn, dz, ghx;
};

// forward_persistent + backward_persistent of rnn.cu, with the plan made for
// the spec's device.
template <typename T>
std::string run_persistent(const RnnSpec& s, RnnInputs<T>& in, const rp::Plan& plan, PersistentOut<T>& o) {
  const int64_t H = s.H, B = s.B;
  rp::Params<T> p{};
  p.steps = in.steps;
  p.batch = B;
  p.hidden = H;
  p.units = plan.units;
  p.chunk = plan.chunk;
  p.padded = plan.padded;
  p.relu = s.relu;
  p.sched_batch = s.packed ? in.sched.p : nullptr;
  p.sched_offset = s.packed ? in.sched.p + in.steps : nullptr;
  p.w_hh = in.W.p;
  const emu::Launch l{dim3(plan.blocks), dim3(rp::kThreads), plan.smem, true};
  set_readonly({&in.W.mem, &in.P.mem, &in.hx.mem, &in.gout.mem, &in.ghn.mem, &in.sched.mem}, true);
  // Forward: out holds P on entry.
  {
    o.out = Buf<T>(std::max<int64_t>(in.N * H, 1), "output");
    std::memcpy(static_cast<void*>(o.out.p), in.P.p, in.N * H * sizeof(T));
    o.hn = Buf<T>(B * H, "h_n");
    Buf<float> exchange(2 * B * H, "exchange"), state(B * H, "state");
    p.walk_back = s.reverse;
    p.exchange = exchange.p;
    p.state = state.p;
    p.out = o.out.p;
    p.h0 = in.hx.p;
    p.h_last = o.hn.p;
    const std::string err = emu::launch(rp::forward_kernel<T>, l, p);
    if (!err.empty()) return "forward: " + err;
  }
  // Backward.
  {
    o.out.readonly();
    o.dz = Buf<T>(std::max<int64_t>(in.N * H, 1), "dz");
    o.ghx = Buf<T>(B * H, "grad_hx");
    Buf<float> exchange(2 * B * H, "exchange"), state(B * H, "state");
    p.walk_back = !s.reverse;
    p.exchange = exchange.p;
    p.state = state.p;
    p.out = o.out.p;
    p.h0 = nullptr;
    p.grad_out = in.gout.p;
    p.grad_last = in.ghn.p;
    p.dz = o.dz.p;
    p.h_last = o.ghx.p;
    const std::string err = emu::launch(rp::backward_kernel<T>, l, p);
    if (!err.empty()) return "backward: " + err;
  }
  return "";
}

template <typename T>
Lines check_persistent(const RnnSpec& s, uint64_t seed) {
  reseed(seed);
  RnnInputs<T> in = make_rnn_inputs<T>(s);
  const rp::Plan plan = rp::plan(s.B, s.H, s.sms, s.smem_max);
  const std::string head = std::string(dtype_name<T>()) + " " + describe(s, in.N);
  if (!plan.ok) return {{false, "persistent::forward_kernel " + head + " | no plan: " + plan.why}};
  const std::string launch = " | grid=" + std::to_string(plan.blocks) + "x" + std::to_string(rp::kThreads) +
                             " R=" + std::to_string(plan.units) + " chunk=" + std::to_string(plan.chunk) +
                             " smem=" + std::to_string(plan.smem) + " (" + std::to_string(s.sms) + " SMs, " +
                             std::to_string(s.smem_max) + " B)";
  std::vector<PersistentOut<T>> runs(s.schedules.size());
  for (size_t i = 0; i < s.schedules.size(); ++i) {
    emu::set_schedule(s.schedules[i], seed + i);
    const std::string err = run_persistent(s, in, plan, runs[i]);
    if (!err.empty()) {
      const char* k = err.rfind("backward", 0) == 0 ? "persistent::backward_kernel " : "persistent::forward_kernel ";
      return {{false, k + head + launch + " | sched=" + emu::schedule_name(s.schedules[i]) + " | " + err}};
    }
  }
  const PersistentOut<T>& o = runs[0];
  const double tol = rnn_tolerance<T>(s);
  const std::string sched = " | sched=" + schedules_text(s.schedules);
  Lines lines;
  ErrAcc ef;
  for (int64_t i = 0; i < in.N * s.H; ++i) ef.add(d(o.out[i]), in.out_ref[i]);
  for (int64_t i = 0; i < s.B * s.H; ++i) ef.add(d(o.hn[i]), in.hn_ref[i]);
  bool same_f = true, same_b = true;
  for (size_t i = 1; i < runs.size(); ++i) {
    same_f = same_f && runs[i].out.same_bits(o.out) && runs[i].hn.same_bits(o.hn);
    same_b = same_b && runs[i].dz.same_bits(o.dz) && runs[i].ghx.same_bits(o.ghx);
  }
  lines.push_back({ef.value() <= tol && same_f, "persistent::forward_kernel " + head + launch + sched + " | err " +
                                                    fmt("%.1e", ef.value()) +
                                                    (same_f ? "" : " | results differ between schedules")});
  std::vector<double> dz_ref, g;
  backward_ref(s, in, o.out, dz_ref, g);
  ErrAcc eb;
  for (int64_t i = 0; i < in.N * s.H; ++i) eb.add(d(o.dz[i]), dz_ref[i]);
  for (int64_t i = 0; i < s.B * s.H; ++i) eb.add(d(o.ghx[i]), g[i]);
  lines.push_back({eb.value() <= tol && same_b, "persistent::backward_kernel " + head + launch + sched + " | err " +
                                                    fmt("%.1e", eb.value()) +
                                                    (same_b ? "" : " | results differ between schedules")});
  return lines;
}

// ---- fallback path: per-step pointwise kernels ------------------------------------------

// a[:rows] = round(b[:rows] @ M^T) (transpose) or round(b[:rows] @ M): what
// the fallback's cuBLAS GEMM gives (float64 accumulation here).
template <typename T>
void host_gemm(T* a, const T* b, const T* M, int64_t rows, int64_t H, bool transpose) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < H; ++j) {
      double v = 0;
      for (int64_t k = 0; k < H; ++k) v += d(b[r * H + k]) * d(transpose ? M[j * H + k] : M[k * H + j]);
      a[r * H + j] = cast<T>(v);
    }
}

emu::Launch pointwise_launch(int64_t n, int64_t sms) {
  return emu::Launch{dim3(static_cast<unsigned>(rc::pointwise_blocks(n, sms))), dim3(rc::kPointwiseThreads), 0,
                     false};
}

template <typename T>
struct FallbackOut {
  Buf<T> out, state, dz, g;
};

// forward_fallback + backward_fallback of rnn.cu.
template <typename T>
std::string run_fallback(const RnnSpec& s, RnnInputs<T>& in, FallbackOut<T>& o) {
  const int64_t H = s.H, B = s.B, T_ = in.steps;
  set_readonly({&in.W.mem, &in.P.mem, &in.hx.mem, &in.gout.mem, &in.ghn.mem}, true);
  o.out = Buf<T>(std::max<int64_t>(in.N * H, 1), "output");
  std::memcpy(static_cast<void*>(o.out.p), in.P.p, in.N * H * sizeof(T));
  o.state = Buf<T>(B * H, "state");  // hx on entry, h_n on exit
  std::memcpy(static_cast<void*>(o.state.p), in.hx.p, B * H * sizeof(T));
  Buf<T> hh(B * H, "hh");
  for (int64_t i = 0; i < T_; ++i) {
    const int64_t t = s.reverse ? T_ - 1 - i : i;
    const int64_t bt = s.batch[t];
    hh.readonly(false);
    host_gemm(hh.p, o.state.p, in.W.p, bt, H, /*transpose=*/true);
    hh.readonly();
    const std::string err = emu::launch(rc::forward_step_pointwise<T>, pointwise_launch(bt * H, s.sms),
                                        o.out.p + in.offset[t] * H, hh.p, o.state.p, bt * H, s.relu);
    if (!err.empty()) return "forward step " + std::to_string(t) + ": " + err;
  }
  o.out.readonly();
  o.dz = Buf<T>(std::max<int64_t>(in.N * H, 1), "dz");
  o.g = Buf<T>(B * H, "g");  // grad_hn on entry, grad_hx on exit
  std::memcpy(static_cast<void*>(o.g.p), in.ghn.p, B * H * sizeof(T));
  for (int64_t i = 0; i < T_; ++i) {
    const int64_t t = s.reverse ? i : T_ - 1 - i;
    const int64_t bt = s.batch[t], off = in.offset[t] * H;
    o.g.readonly();
    const std::string err = emu::launch(rc::backward_step_pointwise<T>, pointwise_launch(bt * H, s.sms),
                                        in.gout.p + off, o.g.p, o.out.p + off, o.dz.p + off, bt * H, s.relu);
    o.g.readonly(false);
    if (!err.empty()) return "backward step " + std::to_string(t) + ": " + err;
    host_gemm(o.g.p, o.dz.p + off, in.W.p, bt, H, /*transpose=*/false);
  }
  return "";
}

template <typename T>
Lines check_fallback(const RnnSpec& s, uint64_t seed) {
  reseed(seed);
  RnnInputs<T> in = make_rnn_inputs<T>(s);
  const std::string head = std::string(dtype_name<T>()) + " " + describe(s, in.N) + " | 256-thread blocks, " +
                           std::to_string(s.sms) + " SMs: " +
                           std::to_string(rc::pointwise_blocks(s.B * s.H, s.sms)) + " blocks for a full step";
  std::vector<FallbackOut<T>> runs(s.schedules.size());
  for (size_t i = 0; i < s.schedules.size(); ++i) {
    emu::set_schedule(s.schedules[i], seed + i);
    const std::string err = run_fallback(s, in, runs[i]);
    if (!err.empty()) {
      const char* k = err.rfind("backward", 0) == 0 ? "backward_step_pointwise " : "forward_step_pointwise ";
      return {{false, k + head + " | sched=" + emu::schedule_name(s.schedules[i]) + " | " + err}};
    }
  }
  const FallbackOut<T>& o = runs[0];
  // The fallback rounds the state to T every step (the reference does not):
  // a 16-bit state drifts a few ulps more than the persistent path's float32 one.
  const double tol = 2 * rnn_tolerance<T>(s);
  const std::string sched = " | sched=" + schedules_text(s.schedules);
  bool same_f = true, same_b = true;
  for (size_t i = 1; i < runs.size(); ++i) {
    same_f = same_f && runs[i].out.same_bits(o.out) && runs[i].state.same_bits(o.state);
    same_b = same_b && runs[i].dz.same_bits(o.dz) && runs[i].g.same_bits(o.g);
  }
  Lines lines;
  ErrAcc ef;
  for (int64_t i = 0; i < in.N * s.H; ++i) ef.add(d(o.out[i]), in.out_ref[i]);
  for (int64_t i = 0; i < s.B * s.H; ++i) ef.add(d(o.state[i]), in.hn_ref[i]);
  lines.push_back({ef.value() <= tol && same_f, "forward_step_pointwise " + head + sched + " | err " +
                                                    fmt("%.1e", ef.value()) +
                                                    (same_f ? "" : " | results differ between schedules")});
  std::vector<double> dz_ref, g;
  backward_ref(s, in, o.out, dz_ref, g);
  ErrAcc eb;
  for (int64_t i = 0; i < in.N * s.H; ++i) eb.add(d(o.dz[i]), dz_ref[i]);
  for (int64_t i = 0; i < s.B * s.H; ++i) eb.add(d(o.g[i]), g[i]);
  lines.push_back({eb.value() <= tol && same_b, "backward_step_pointwise " + head + sched + " | err " +
                                                    fmt("%.1e", eb.value()) +
                                                    (same_b ? "" : " | results differ between schedules")});
  return lines;
}

// ---- gather_prev_state -------------------------------------------------------------------

template <typename T>
Lines check_gather(const std::vector<int64_t>& batch, int64_t H, bool reverse, int64_t sms,
                   const std::vector<emu::Schedule>& schedules) {
  const int64_t T_ = batch.size(), B = batch[0];
  std::vector<int64_t> off(T_);
  int64_t N = 0;
  for (int64_t t = 0; t < T_; ++t) {
    off[t] = N;
    N += batch[t];
  }
  Buf<T> out(N * H, "output"), hx(B * H, "hx");
  Buf<int64_t> sched(2 * T_, "schedule");
  for (int64_t t = 0; t < T_; ++t) {
    sched[t] = batch[t];
    sched[T_ + t] = off[t];
  }
  for (int64_t i = 0; i < N * H; ++i) out[i] = cast<T>(double(i % 200) + 0.5);
  for (int64_t i = 0; i < B * H; ++i) hx[i] = cast<T>(-1.0 - double(i % 100));
  // CPU replay (csrc/cpu/rnn.cpp): the state each row saw entering its step.
  std::vector<T> st(hx.p, hx.p + B * H), ref(N * H);
  for (int64_t i = 0; i < T_; ++i) {
    const int64_t t = reverse ? T_ - 1 - i : i, n = batch[t] * H;
    std::copy(st.begin(), st.begin() + n, ref.begin() + off[t] * H);
    std::copy(out.p + off[t] * H, out.p + off[t] * H + n, st.begin());
  }
  out.readonly();
  hx.readonly();
  sched.readonly();
  const bool padded = std::all_of(batch.begin(), batch.end(), [&](int64_t b) { return b == B; });
  const emu::Launch l = pointwise_launch(N * H, sms);
  std::string err;
  bool ok = true;
  for (int mode = 0; mode < (padded ? 2 : 1) && err.empty(); ++mode) {  // mode 1: null schedule
    for (emu::Schedule sc : schedules) {
      emu::set_schedule(sc, 7);
      Buf<T> hp(N * H, "hprev");
      err = emu::launch(rc::gather_prev_state<T>, l, out.p, hx.p, mode ? nullptr : sched.p,
                        mode ? nullptr : sched.p + T_, T_, B, H, reverse, hp.p, N * H);
      if (!err.empty()) break;
      ok = ok && std::memcmp(hp.p, ref.data(), N * H * sizeof(T)) == 0;
    }
  }
  const std::string text = "gather_prev_state " + std::string(dtype_name<T>()) + " batch=" + list(batch) +
                           " H=" + std::to_string(H) + (reverse ? " reverse" : "") +
                           (padded ? " (packed and null-schedule modes)" : " (packed)") + " | grid=" +
                           std::to_string(l.grid.x) + "x" + std::to_string(l.block.x) + " for " +
                           std::to_string(N * H) + " elements | sched=" + schedules_text(schedules) +
                           (err.empty() ? (ok ? " | exact" : " | WRONG values") : " | " + err);
  return {{err.empty() && ok, text}};
}

// ---- the cases -----------------------------------------------------------------------------

RnnSpec spec(std::string label, int64_t H, int64_t B, std::vector<int64_t> batch, bool packed, int64_t sms,
             int64_t smem_max = 232448) {
  RnnSpec s;
  s.label = std::move(label);
  s.H = H;
  s.B = B;
  s.batch = std::move(batch);
  s.packed = packed;
  s.sms = sms;
  s.smem_max = smem_max;
  return s;
}

std::string flags(const RnnSpec& s) {
  return std::string(s.relu ? "relu" : "tanh") + (s.reverse ? "-rev" : "");
}

template <typename T>
void add_persistent(std::vector<Case>& cases, RnnSpec s, bool quick, int& seed) {
  const uint64_t sd = 5000 + seed++;
  cases.push_back({"rnn/persistent/" + std::string(dtype_name<T>()) + "/" + s.label + "/" + flags(s), quick,
                   [s, sd] {
                     RnnSpec c = s;
                     c.schedules = all_schedules();
                     return check_persistent<T>(c, sd);
                   }});
}

template <typename T>
void add_fallback(std::vector<Case>& cases, RnnSpec s, bool quick, int& seed) {
  const uint64_t sd = 7000 + seed++;
  cases.push_back({"rnn/fallback/" + std::string(dtype_name<T>()) + "/" + s.label + "/" + flags(s), quick,
                   [s, sd] {
                     RnnSpec c = s;
                     c.schedules = all_schedules();
                     return check_fallback<T>(c, sd);
                   }});
}

template <typename T>
void add_gather(std::vector<Case>& cases, std::vector<int64_t> batch, int64_t H, bool reverse, int64_t sms,
                bool quick) {
  std::string name = "rnn/gather/" + std::string(dtype_name<T>()) + "/" + list(batch) + "-H" + std::to_string(H) +
                     (reverse ? "-rev" : "");
  cases.push_back({name, quick, [batch, H, reverse, sms] {
                     return check_gather<T>(batch, H, reverse, sms, all_schedules());
                   }});
}

}  // namespace

void add_rnn_cases(std::vector<Case>& cases) {
  int seed = 0;
  // Everything is in --quick but for the H100-sized grid (19200 threads).
  // Persistent kernels. The SM count and shared memory size are those of a
  // device the plan is made for: small ones make several blocks and several
  // staged batch chunks per step out of small problems.
  for (int relu = 0; relu < 2; ++relu)
    for (int rev = 0; rev < 2; ++rev) {
      auto with = [&](RnnSpec s) {
        s.relu = relu;
        s.reverse = rev;
        return s;
      };
      // H % 4 != 0 (scalar staging), 2 blocks, batch in 2 chunks of 4 + 1.
      add_persistent<float>(cases, with(spec("H10-2chunks", 10, 5, {5, 5, 5, 5}, false, 2, 6144)), true, seed);
      // Hp = 256, 3 blocks of 68 units, ragged packed batches, chunks of 8.
      add_persistent<float>(cases, with(spec("H200-3blocks", 200, 9, {9, 9, 7, 4, 4, 1}, true, 3, 77824)), true, seed);
      add_persistent<c10::BFloat16>(cases, with(spec("H36-3blocks", 36, 7, {7, 6, 6, 2, 1}, true, 4, 8192)), true,
                                    seed);
      // An H100-sized grid: 75 blocks of 4 units (full run only: 19200 threads).
      add_persistent<float>(cases, with(spec("H300-75blocks", 300, 16, {16, 16, 12, 5}, true, 132)), false, seed);
    }
  {
    RnnSpec s = spec("H132-5blocks", 132, 6, {6, 6, 6}, false, 5, 32768);
    s.reverse = true;
    add_persistent<float>(cases, s, true, seed);
    s = spec("H64-1block", 64, 3, {3, 3, 3}, false, 1);
    s.relu = true;
    add_persistent<c10::Half>(cases, s, true, seed);
    add_persistent<float>(cases, spec("H1-B1-T1", 1, 1, {1}, false, 132), true, seed);
    s = spec("H5-tiny", 5, 2, {2, 1}, true, 132);
    s.relu = s.reverse = true;
    add_persistent<float>(cases, s, true, seed);
    // B = 70 > kMaxChunk: each step in two passes (64 + 6 rows).
    add_persistent<float>(cases, spec("B70-2passes", 8, 70, {70, 70, 70}, false, 132), true, seed);
    // Chunks of 36 rows = 9 tiles: warp 0 takes tiles 0 and 8, warps 1-7 one
    // each, and the next chunk's rows are staged by all 256 threads; a warp
    // done early must not restage Xs before warp 0 has read its tile 8 (the
    // first __syncthreads of step_loop).
    add_persistent<float>(cases, spec("H64-uneven-tiles", 64, 72, {72, 72, 40}, true, 132, 20480), true, seed);
    // Rows longer than the block (stage_rows: 257 float4 / 1027 floats per
    // row for 256 threads), on a 2-SM device with room for the slices.
    add_persistent<float>(cases, spec("H1028-long-rows", 1028, 3, {3, 2, 2}, true, 2, 4 << 20), true, seed);
    s = spec("H1027-long-rows-scalar", 1027, 2, {2, 2}, false, 2, 4 << 20);
    s.relu = s.reverse = true;
    add_persistent<c10::BFloat16>(cases, s, true, seed);
    s = spec("H40-packed", 40, 5, {5, 3, 3, 1}, true, 8);
    s.reverse = true;
    add_persistent<c10::Half>(cases, s, true, seed);
    add_persistent<c10::BFloat16>(cases, spec("B70-2passes", 8, 70, {70, 69, 3}, true, 132), true, seed);
  }
  // Fallback path: every dtype (float64 runs only here); 1 SM, so the
  // pointwise grid (8 blocks) strides over steps of more than 2048 elements.
  for (int relu = 0; relu < 2; ++relu)
    for (int rev = 0; rev < 2; ++rev) {
      auto with = [&](RnnSpec s) {
        s.relu = relu;
        s.reverse = rev;
        return s;
      };
      add_fallback<float>(cases, with(spec("H300-grid-stride", 300, 9, {9, 9, 7, 4, 1}, true, 1)), true, seed);
      add_fallback<double>(cases, with(spec("H37-padded", 37, 5, {5, 5, 5}, false, 1)), true, seed);
      add_fallback<c10::Half>(cases, with(spec("H64-packed", 64, 6, {6, 4, 4, 2}, true, 2)), true, seed);
      add_fallback<c10::BFloat16>(cases, with(spec("H50-packed", 50, 4, {4, 3, 1}, true, 132)), true, seed);
    }
  add_fallback<float>(cases, spec("H1-B1-T1", 1, 1, {1}, false, 132), true, seed);
  // The Hprev gather: 1 SM (8 blocks) over up to 3400 elements.
  const std::vector<std::vector<int64_t>> batches = {{3, 3, 3}, {4, 4, 2, 1, 1}, {1}, {5, 2}, {2, 2, 2, 2, 2, 2, 1},
                                                     {9, 9, 7, 4, 4, 1}};
  for (const auto& b : batches)
    for (int rev = 0; rev < 2; ++rev) {
      const int64_t H = b.size() == 6 ? 100 : 3;
      add_gather<float>(cases, b, H, rev, 1, true);
      add_gather<double>(cases, b, H, rev, 1, true);
      add_gather<c10::Half>(cases, b, H, rev, 1, true);
      add_gather<c10::BFloat16>(cases, b, H, rev, 1, true);
    }
}

}  // namespace emu_check

// Runs the CUDA RNN kernels of csrc/cuda (the persistent forward/backward
// kernels, and the Hprev gather) on the CPU, every CUDA thread a std::thread
// (see cuda_shim.h), and compares them with a plain double-precision
// recurrence. For checking the kernels' indexing, schedule walking and
// barrier placement where no GPU is at hand; run.sh builds and runs it.
// What it cannot check: the GPU memory model, timing, real shared memory.
#include "rnn_persistent.cuh"
#include <algorithm>
#include <c10/util/Half.h>
#include <c10/util/BFloat16.h>
#include <cstdio>
#include <random>
#include <string>

using rnnattn::cuda::gather_prev_state;

using namespace rnnattn::cuda::persistent;
static std::mt19937 rng(1234);
static double uni() { return std::uniform_real_distribution<double>(-1, 1)(rng); }

template <typename T, typename K>
void launch(K kernel, const Params<T>& p, int G, size_t smem) {
  emu_blocks.clear();
  for (int g = 0; g < G; ++g) emu_blocks.emplace_back(new EmuBlock(kThreads, smem));
  emu_grid_bar.reset(new std::barrier<>(G * kThreads));
  gridDim.x = G; blockDim.x = kThreads;
  std::vector<std::thread> th;
  for (int g = 0; g < G; ++g)
    for (int t = 0; t < kThreads; ++t)
      th.emplace_back([=] { blockIdx.x = g; threadIdx.x = t; kernel(p); });
  for (auto& t : th) t.join();
}

template <typename T>
int run_case(int64_t H, int64_t B, std::vector<int64_t> batch, bool relu, bool reverse, int sms,
             int chunk_cap, double tol, const char* name, bool null_schedule = false) {
  const int64_t steps = batch.size();
  std::vector<int64_t> offset(steps);
  int64_t N = 0;
  for (int64_t t = 0; t < steps; ++t) { offset[t] = N; N += batch[t]; }
  auto rnd = [&](int64_t n, double scale) { std::vector<T> v(n); for (auto& e : v) e = T(float(uni() * scale)); return v; };
  auto W = rnd(H * H, 1.5 / std::sqrt(double(H)));
  auto P = rnd(N * H, 1.0), hx = rnd(B * H, 1.0), gout = rnd(N * H, 1.0), ghn = rnd(B * H, 1.0);
  auto act = [&](double z) { return relu ? (z > 0 ? z : 0) : std::tanh(z); };
  // Reference forward.
  std::vector<double> st(B * H), out_ref(N * H);
  for (int64_t i = 0; i < B * H; ++i) st[i] = double(hx[i]);
  for (int64_t i = 0; i < steps; ++i) {
    const int64_t t = reverse ? steps - 1 - i : i;
    std::vector<double> nh(batch[t] * H);
    for (int64_t b = 0; b < batch[t]; ++b)
      for (int64_t j = 0; j < H; ++j) {
        double z = double(P[(offset[t] + b) * H + j]);
        for (int64_t k = 0; k < H; ++k) z += double(W[j * H + k]) * st[b * H + k];
        nh[b * H + j] = act(z);
      }
    for (int64_t e = 0; e < batch[t] * H; ++e) { st[e] = nh[e]; out_ref[offset[t] * H + e] = nh[e]; }
  }
  // Plan (as plan_persistent, with a fake SM count and chunk cap).
  const int64_t Hp = (H + kRowAlign - 1) / kRowAlign * kRowAlign;
  const int64_t R = ((H + sms - 1) / sms + kTileUnits - 1) / kTileUnits * kTileUnits;
  const int G = int((H + R - 1) / R);
  const int chunk = int(std::min<int64_t>((B + 3) / 4 * 4, chunk_cap));
  const size_t smem = (R + chunk) * Hp * 4;
  std::vector<int64_t> sched(batch); sched.insert(sched.end(), offset.begin(), offset.end());
  std::vector<float> exch(2 * B * H, NAN), state(B * H, NAN);
  std::vector<T> out(P), hn(B * H, T(NAN)), dz(N * H, T(NAN)), ghx(B * H, T(NAN));
  Params<T> p{};
  p.steps = steps; p.batch = B; p.hidden = H; p.units = int(R); p.chunk = chunk; p.padded = int(Hp);
  p.relu = relu; p.walk_back = reverse; p.sched_batch = null_schedule ? nullptr : sched.data(); p.sched_offset = null_schedule ? nullptr : sched.data() + steps;
  p.w_hh = W.data(); p.exchange = exch.data(); p.state = state.data();
  p.out = out.data(); p.h0 = hx.data(); p.h_last = hn.data();
  launch(forward_kernel<T>, p, G, smem);
  double err = 0;
  for (int64_t i = 0; i < N * H; ++i) err = std::max(err, std::fabs(double(out[i]) - out_ref[i]));
  for (int64_t i = 0; i < B * H; ++i) err = std::max(err, std::fabs(double(hn[i]) - st[i]));
  // Reference backward, on the kernel's (rounded) outputs.
  std::vector<double> g(B * H), dz_ref(N * H);
  for (int64_t i = 0; i < B * H; ++i) g[i] = double(ghn[i]);
  for (int64_t i = 0; i < steps; ++i) {
    const int64_t t = reverse ? i : steps - 1 - i;
    for (int64_t b = 0; b < batch[t]; ++b)
      for (int64_t j = 0; j < H; ++j) {
        const int64_t e = (offset[t] + b) * H + j;
        const double h = double(out[e]), dh = double(gout[e]) + g[b * H + j];
        dz_ref[e] = relu ? (h > 0 ? dh : 0) : dh * (1 - h * h);
      }
    for (int64_t b = 0; b < batch[t]; ++b)
      for (int64_t j = 0; j < H; ++j) {
        double s = 0;
        for (int64_t k = 0; k < H; ++k) s += dz_ref[(offset[t] + b) * H + k] * double(W[k * H + j]);
        g[b * H + j] = s;
      }
  }
  std::fill(exch.begin(), exch.end(), NAN); std::fill(state.begin(), state.end(), NAN);
  p.walk_back = !reverse; p.out = out.data(); p.grad_out = gout.data(); p.grad_last = ghn.data();
  p.dz = dz.data(); p.h_last = ghx.data(); p.h0 = nullptr;
  launch(backward_kernel<T>, p, G, smem);
  double errb = 0;
  for (int64_t i = 0; i < N * H; ++i) errb = std::max(errb, std::fabs(double(dz[i]) - dz_ref[i]) / (1 + std::fabs(dz_ref[i])));
  for (int64_t i = 0; i < B * H; ++i) errb = std::max(errb, std::fabs(double(ghx[i]) - g[i]) / (1 + std::fabs(g[i])));
  const bool ok = err <= tol && errb <= tol && std::isfinite(err) && std::isfinite(errb);
  std::printf("%-4s %-28s H=%-4ld B=%-3ld T=%-3ld G=%d R=%ld chunk=%d relu=%d rev=%d  fwd err %.2e  bwd err %.2e\n",
              ok ? "ok" : "FAIL", name, (long)H, (long)B, (long)steps, G, (long)R, chunk, relu, reverse, err, errb);
  return ok ? 0 : 1;
}

int check_gather() {
  int fails = 0;
  std::vector<std::vector<int64_t>> cases = {{3, 3, 3}, {4, 4, 2, 1, 1}, {1}, {5, 2}, {2, 2, 2, 2, 2, 2, 1}};
  for (auto& batch : cases)
    for (int rev = 0; rev < 2; ++rev) {
      const int64_t T = batch.size(), B = batch[0], H = 3;
      std::vector<int64_t> off(T); int64_t N = 0;
      for (int64_t t = 0; t < T; ++t) { off[t] = N; N += batch[t]; }
      std::vector<float> out(N * H), hx(B * H), hp(N * H, NAN), ref(N * H);
      for (int64_t i = 0; i < N * H; ++i) out[i] = 100 + i;
      for (int64_t i = 0; i < B * H; ++i) hx[i] = -1 - i;
      // CPU replay (csrc/cpu/rnn.cpp).
      std::vector<float> st(hx);
      for (int64_t i = 0; i < T; ++i) {
        const int64_t t = rev ? T - 1 - i : i, n = batch[t] * H;
        std::copy(st.begin(), st.begin() + n, ref.begin() + off[t] * H);
        std::copy(out.begin() + off[t] * H, out.begin() + off[t] * H + n, st.begin());
      }
      gridDim.x = 1; blockDim.x = 1; blockIdx.x = 0; threadIdx.x = 0;
      gather_prev_state<float>(out.data(), hx.data(), batch.data(), off.data(), T, B, H, rev, hp.data(), N * H);
      bool ok = hp == ref;
      if (std::all_of(batch.begin(), batch.end(), [&](int64_t b) { return b == B; })) {
        std::fill(hp.begin(), hp.end(), NAN);
        gather_prev_state<float>(out.data(), hx.data(), nullptr, nullptr, T, B, H, rev, hp.data(), N * H);
        ok = ok && hp == ref;
        std::printf("  (padded mode checked) ");
      }
      fails += !ok;
      std::printf("%s T=%ld rev=%d\n", ok ? "ok" : "FAIL", (long)T, rev);
    }
  return fails;
}

int main() {
  int fails = check_gather();
  for (int relu = 0; relu < 2; ++relu)
    for (int rev = 0; rev < 2; ++rev) {
      fails += run_case<float>(10, 5, {5, 5, 5, 5}, relu, rev, 2, 4, 1e-4, "f32 padded H%4!=0 null sched", true);
      fails += run_case<float>(200, 9, {9, 9, 7, 4, 4, 1}, relu, rev, 3, 8, 1e-4, "f32 packed Hp=256");
      fails += run_case<c10::BFloat16>(36, 7, {7, 6, 6, 2, 1}, relu, rev, 4, 4, 3e-2, "bf16 packed");
    }
  fails += run_case<float>(132, 6, {6, 6, 6}, false, true, 5, 4, 1e-4, "f32 padded H%4==0 null sched", true);
  fails += run_case<c10::Half>(64, 3, {3, 3, 3}, true, false, 1, 64, 5e-3, "f16 padded one block", true);
  fails += run_case<float>(1, 1, {1}, false, false, 132, 64, 1e-5, "f32 H=1 B=1 T=1", true);
  fails += run_case<float>(5, 2, {2, 1}, true, true, 132, 64, 1e-5, "f32 tiny packed");
  std::printf(fails ? "%d FAILED\n" : "all passed\n", fails);
  return fails != 0;
}

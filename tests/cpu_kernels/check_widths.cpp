// Runs the vector-width templates of the CPU kernels at both widths the
// extension builds: 32-byte vectors (the baseline and AVX2 builds) and 64-byte
// vectors (the AVX-512 build), against plain loops in double. Compiled
// without -march flags, so the 64-byte code runs here lowered to narrower
// registers: the logic of the AVX-512 build (16 float lanes, its tails, the
// lane folds of small_gemm_nt) is checked on any x86-64 machine, even one
// that cannot run AVX-512 instructions. tests/test_cpu_kernel_widths.py
// compiles and runs this; it prints "all passed" or the first failures.
// (The three cells' fused bfloat16 steps too, against their float32
// builds.)
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <vector>

#include "activation_kernels.h"
#include "bf16_bits.h"
#include "cell_kernels.h"
#include "small_gemm_kernels.h"

using rnnattn::cpu::Act;
using rnnattn::cpu::CellRow;
using rnnattn::cpu::Ld;
namespace k = rnnattn::cpu::kernels;

static int failures = 0;

static void fail(const char* what, int a, int b, int c, int d, double got, double want) {
  if (failures++ < 20)
    std::printf("FAIL %s (%d, %d, %d, %d): got %.9g want %.9g\n", what, a, b, c, d, got, want);
}

// Y (m x n) [+]= X (m x k) @ B (k x n) [or W^T, W (n x k)] with row strides
// wider than dense, at every ragged size around the vector widths.
template <typename T, int Bytes>
void check_gemm(bool nt) {
  std::mt19937 gen(7);
  std::uniform_real_distribution<double> u(-1, 1);
  const double tol = sizeof(T) == 4 ? 2e-5 : 1e-12;
  for (int m : {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16})
    for (int kk : {1, 3, 8, 17, 64, 100, 193, 260})
      for (int n : {1, 5, 8, 15, 16, 17, 31, 33, 48, 64, 80, 100, 130})
        for (int acc = 0; acc < 2; ++acc) {
          const Ld ld{kk + 3, nt ? kk + 5 : n + 5, n + 2};
          std::vector<T> X(m * ld.x), B(nt ? n * ld.b : kk * ld.b), Y(m * ld.y);
          for (auto& v : X) v = T(u(gen));
          for (auto& v : B) v = T(u(gen));
          for (auto& v : Y) v = T(u(gen));
          std::vector<double> want(m * n);
          for (int i = 0; i < m; ++i)
            for (int j = 0; j < n; ++j) {
              double s = acc ? double(Y[i * ld.y + j]) : 0.0;
              for (int p = 0; p < kk; ++p)
                s += double(X[i * ld.x + p]) * double(nt ? B[j * ld.b + p] : B[p * ld.b + j]);
              want[i * n + j] = s;
            }
          const std::vector<T> before = Y;
          if (nt)
            k::small_gemm_nt_impl<T, Bytes>(X.data(), B.data(), Y.data(), ld, m, kk, n, acc);
          else
            k::small_gemm_impl<T, Bytes>(X.data(), B.data(), Y.data(), ld, m, kk, n, acc);
          for (int i = 0; i < m; ++i)
            for (int j = 0; j < ld.y; ++j) {
              const double got = Y[i * ld.y + j];
              if (j >= n) {  // the padding between rows stays untouched
                if (Y[i * ld.y + j] != before[i * ld.y + j])
                  fail("pad", m, kk, n, Bytes, got, before[i * ld.y + j]);
                continue;
              }
              const double w = want[i * n + j];
              if (!(std::fabs(got - w) <= tol * (1 + std::fabs(w))))
                fail(nt ? "small_gemm_nt" : "small_gemm", m, kk, n, Bytes, got, w);
            }
        }
}

// tanh and sigmoid rows at N lanes against std::tanh in double, over
// [-20, 20], the special values and every ragged length; the N-lane result
// must also equal the 8-lane one bit for bit (the math is lane-wise).
template <int N>
void check_activations() {
  std::vector<float> xs;
  for (int i = -4000; i <= 4000; ++i) xs.push_back(float(i) * 0.005f);
  for (float v : {0.f, -0.f, 1e-30f, -1e-30f, 0.2499f, 0.25f, 9.f, 44.f, 100.f, -100.f})
    xs.push_back(v);
  xs.push_back(std::numeric_limits<float>::infinity());
  xs.push_back(-std::numeric_limits<float>::infinity());
  xs.push_back(std::numeric_limits<float>::quiet_NaN());
  const int n = static_cast<int>(xs.size());
  for (int len : {1, 7, 8, 9, 15, 16, 17, 33, n}) {
    for (int a = 0; a < 2; ++a) {
      const Act act = a ? Act::kSigmoid : Act::kTanh;
      std::vector<float> x(xs.begin(), xs.begin() + len), y8 = x, bias(len, 0.f);
      if (a) {
        k::act_impl<Act::kSigmoid, N>(x.data(), bias.data(), len);
        k::act_impl<Act::kSigmoid, 8>(y8.data(), nullptr, len);
      } else {
        k::act_impl<Act::kTanh, N>(x.data(), nullptr, len);
        k::act_impl<Act::kTanh, 8>(y8.data(), bias.data(), len);
      }
      for (int j = 0; j < len; ++j) {
        const double z = xs[j];
        const double want = act == Act::kTanh ? std::tanh(z) : 1 / (1 + std::exp(-z));
        const bool both_nan = std::isnan(x[j]) && std::isnan(want);
        if (!both_nan && !(std::fabs(x[j] - want) <= 2e-6 * (1 + std::fabs(want))))
          fail(a ? "sigmoid" : "tanh", len, j, N, 0, x[j], want);
        if (!both_nan && x[j] != y8[j]) fail("lanes differ from 8", len, j, N, 0, x[j], y8[j]);
      }
    }
    // The Elman row: o = tanh(o + bias), state = o.
    std::vector<float> o(xs.begin(), xs.begin() + len), state(len), bias(len, 0.5f);
    k::tanh_row_impl<N>(o.data(), state.data(), bias.data(), len);
    for (int j = 0; j < len; ++j) {
      const double want = std::tanh(double(xs[j]) + 0.5);
      if (!(std::isnan(want) && std::isnan(o[j])) &&
          (!(std::fabs(o[j] - want) <= 2e-6 * (1 + std::fabs(want))) || !(o[j] == state[j])))
        fail("tanh_row", len, j, N, 0, o[j], want);
    }
  }
}

// The GRU and LSTM pointwise steps (cell_kernels.h) at N lanes on units
// [c0, c1) of rows of H units, against the same math in double from the
// same float inputs; every value outside [c0, c1) of every block stays as
// it was (no access past the range, ragged tails included).
static double sig(double z) { return 1 / (1 + std::exp(-z)); }

template <int N>
void check_cells() {
  std::mt19937 gen(11);
  std::uniform_real_distribution<float> u(-3, 3);
  const double tol = 4e-6;
  auto close = [&](const char* what, int H, int c0, int j, float got, double want) {
    if (!(std::fabs(got - want) <= tol * (1 + std::fabs(want)))) fail(what, H, c0, j, N, got, want);
  };
  for (int H : {1, 7, 8, 9, 16, 17, 33, 100})
    for (int c0 : {0, 3})
      for (int c1 : {H - 5, H})
        for (int keep = 0; keep < 2; ++keep) {
          if (c0 >= c1 || c1 <= 0) continue;
          auto fill = [&](int n) {
            std::vector<float> v(n);
            for (auto& x : v) x = u(gen);
            return v;
          };
          // LSTM forward: ws [i f g o c], bias 4H, c, c_keep, h_out, h_next.
          std::vector<float> ws = fill(5 * H), bias = fill(4 * H), c = fill(H), ck = fill(H),
                             ho = fill(H), hn = fill(H);
          const auto ws0 = ws, c_in = c, ck0 = ck, ho0 = ho, hn0 = hn;
          CellRow<float> r;
          r.ws = ws.data(), r.c = c.data(), r.c_keep = keep ? ck.data() : nullptr;
          r.h_out = ho.data(), r.h_next = keep ? hn.data() : nullptr;
          k::lstm_forward_lanes<N>(r, bias.data(), H, c0, c1);
          for (int j = 0; j < H; ++j) {
            const bool in = j >= c0 && j < c1;
            double gate[4];
            for (int g = 0; g < 4; ++g) {
              const double z = double(ws0[g * H + j]) + double(bias[g * H + j]);
              gate[g] = g == 2 ? std::tanh(z) : sig(z);
              if (in) close("lstm fwd gate", H, c0, j, ws[g * H + j], gate[g]);
              else if (ws[g * H + j] != ws0[g * H + j]) fail("lstm fwd ws outside", H, c0, j, N, ws[g * H + j], ws0[g * H + j]);
            }
            const double cn = gate[1] * c_in[j] + gate[0] * gate[2], h = gate[3] * std::tanh(cn);
            if (in) {
              close("lstm fwd c", H, c0, j, c[j], cn);
              close("lstm fwd h_out", H, c0, j, ho[j], h);
              if (keep) close("lstm fwd c_keep", H, c0, j, ck[j], cn), close("lstm fwd h_next", H, c0, j, hn[j], h);
            }
            if ((!in && (c[j] != c_in[j] || ho[j] != ho0[j])) || ((!in || !keep) && (ck[j] != ck0[j] || hn[j] != hn0[j])))
              fail("lstm fwd outside", H, c0, j, N, 0, 0);
          }
          // LSTM backward from the gates just computed (c_t kept in block 4).
          for (int j = 0; j < H; ++j) ws[4 * H + j] = u(gen);
          std::vector<float> gout = fill(H), dh = fill(H), dc = fill(H), cp = fill(H), dg = fill(4 * H);
          const auto dc0 = dc, dg0 = dg;
          CellRow<float> b;
          b.ws = ws.data(), b.gout = gout.data(), b.dh = dh.data(), b.c = dc.data(), b.c_prev = cp.data(), b.dg = dg.data();
          k::lstm_backward_lanes<N>(b, H, c0, c1);
          for (int j = 0; j < H; ++j) {
            const bool in = j >= c0 && j < c1;
            const double d = double(gout[j]) + dh[j], iv = ws[j], fv = ws[H + j], gv = ws[2 * H + j],
                         ov = ws[3 * H + j], t = std::tanh(double(ws[4 * H + j]));
            const double dcv = dc0[j] + d * ov * (1 - t * t);
            const double want[4] = {dcv * gv * iv * (1 - iv), dcv * cp[j] * fv * (1 - fv), dcv * iv * (1 - gv * gv),
                                    d * t * ov * (1 - ov)};
            for (int g = 0; g < 4; ++g) {
              if (in) close("lstm bwd dg", H, c0, j, dg[g * H + j], want[g]);
              else if (dg[g * H + j] != dg0[g * H + j]) fail("lstm bwd dg outside", H, c0, j, N, dg[g * H + j], dg0[g * H + j]);
            }
            if (in) close("lstm bwd dc", H, c0, j, dc[j], dcv * fv);
            else if (dc[j] != dc0[j]) fail("lstm bwd dc outside", H, c0, j, N, dc[j], dc0[j]);
          }
          // GRU forward: ws [r z n], rest R_n, bias [r z n hn].
          std::vector<float> gw = fill(3 * H), rn = fill(H), gb = fill(4 * H), hp = fill(H), go = fill(H), gn = fill(H);
          const auto gw0 = gw, rn0 = rn, go0 = go, gn0 = gn;
          CellRow<float> f;
          f.ws = gw.data(), f.rest = rn.data(), f.h_prev = hp.data(), f.h_out = go.data(), f.h_next = gn.data();
          k::gru_forward_lanes<N>(f, gb.data(), H, c0, c1);
          for (int j = 0; j < H; ++j) {
            const bool in = j >= c0 && j < c1;
            const double rv = sig(double(gw0[j]) + gb[j]), zv = sig(double(gw0[H + j]) + gb[H + j]);
            const double rnv = double(rn0[j]) + gb[3 * H + j];
            const double nv = std::tanh(double(gw0[2 * H + j]) + gb[2 * H + j] + rv * rnv);
            const double h = nv + zv * (hp[j] - nv);
            if (in) {
              close("gru fwd r", H, c0, j, gw[j], rv), close("gru fwd z", H, c0, j, gw[H + j], zv);
              close("gru fwd n", H, c0, j, gw[2 * H + j], nv), close("gru fwd rn", H, c0, j, rn[j], rnv);
              close("gru fwd h_out", H, c0, j, go[j], h), close("gru fwd h_next", H, c0, j, gn[j], h);
            } else if (gw[j] != gw0[j] || gw[H + j] != gw0[H + j] || gw[2 * H + j] != gw0[2 * H + j] ||
                       rn[j] != rn0[j] || go[j] != go0[j] || gn[j] != gn0[j]) {
              fail("gru fwd outside", H, c0, j, N, 0, 0);
            }
          }
          // GRU backward from the gates just computed.
          std::vector<float> ggout = fill(H), gdh = fill(H), gdg = fill(4 * H);
          const auto gdh0 = gdh, gdg0 = gdg;
          CellRow<float> gbk;
          gbk.ws = gw.data(), gbk.rest = rn.data(), gbk.gout = ggout.data(), gbk.h_prev = hp.data();
          gbk.dh = gdh.data(), gbk.dg = gdg.data();
          k::gru_backward_lanes<N>(gbk, H, c0, c1);
          for (int j = 0; j < H; ++j) {
            const bool in = j >= c0 && j < c1;
            const double d = double(ggout[j]) + gdh0[j], rv = gw[j], zv = gw[H + j], nv = gw[2 * H + j];
            const double da_n = d * (1 - zv) * (1 - nv * nv);
            const double want[4] = {da_n * rn[j] * rv * (1 - rv), d * (hp[j] - nv) * zv * (1 - zv), da_n, da_n * rv};
            for (int g = 0; g < 4; ++g) {
              if (in) close("gru bwd dg", H, c0, j, gdg[g * H + j], want[g]);
              else if (gdg[g * H + j] != gdg0[g * H + j]) fail("gru bwd dg outside", H, c0, j, N, 0, 0);
            }
            if (in) close("gru bwd dh", H, c0, j, gdh[j], d * zv);
            else if (gdh[j] != gdh0[j]) fail("gru bwd dh outside", H, c0, j, N, gdh[j], gdh0[j]);
          }
        }
}

// The cases of the fused bfloat16 steps' checks: f(H, c0, c1, with_a16,
// keep, to16) over rows of odd widths, unit ranges that start and end
// inside them, A from ws or in bfloat16, and with A in bfloat16 the gates
// kept in ws and h_t in h_out or not (ws and h_out null, h_t into h16_out),
// and without them the kept values rounded into a bfloat16 reserve row
// (ws16: to16; a training call's lean chunks).
template <typename F>
void for_fused_cases(const F& f) {
  for (int H : {1, 7, 16, 17, 33, 100})
    for (int c0 : {0, 3})
      for (int c1 : {H - 5, H})
        for (int mode = 0; mode < 4; ++mode)
          if (c0 < c1 && c1 > 0) f(H, c0, c1, mode > 0, mode < 2, mode == 3);
}

// k bfloat16 patterns of values drawn from u.
template <typename G, typename U>
std::vector<uint16_t> bf16_patterns(G& gen, U& u, int k) {
  std::vector<uint16_t> v(k);
  for (auto& x : v) x = rnnattn::cpu::bf16_bits(u(gen));
  return v;
}

// The LSTM's fused large bfloat16 step (lstm_forward_lanes<N, true>)
// against its float32 build on the gates the unfused step makes (A + R
// widened, then bias): the same values bit for bit, h_t rounded into h16
// as bf16_bits rounds it; R in a row of its own (gate blocks gs apart,
// from unit c0), A from ws or in bfloat16 (a16); nothing written outside
// [c0, c1); without ws and h_out (keep false), the same c and h16, and h
// rounded into h16_out; with ws16, the gates and c_t rounded into it.
template <int N>
void check_fused_lstm() {
  std::mt19937 gen(13);
  std::uniform_real_distribution<float> u(-3, 3);
  using rnnattn::cpu::bf16_bits;
  using rnnattn::cpu::bf16_value;
  for_fused_cases([&](int H, int c0, int c1, bool with_a16, bool keep, bool to16) {
    const int gs = c1 - c0 + 2;
    const std::vector<uint16_t> a16 = bf16_patterns(gen, u, 4 * H),
                                r16 = bf16_patterns(gen, u, 4 * gs);
    std::vector<float> bias(4 * H), c(H), a(5 * H), want_ws(5 * H);
    for (auto& x : bias) x = u(gen);
    for (auto& x : c) x = u(gen);
    for (int i = 0; i < 4 * H; ++i) a[i] = bf16_value(a16[i]);
    want_ws = a;
    for (int g = 0; g < 4; ++g)
      for (int j = c0; j < c1; ++j) want_ws[g * H + j] += bf16_value(r16[g * gs + j - c0]);
    std::vector<float> want_c = c, want_h(H, 9.f), got_c = c, got_h(H, 9.f);
    std::vector<float> got_ws = with_a16 ? std::vector<float>(5 * H, 7.f) : a;
    const std::vector<float> got_ws0 = got_ws;
    std::vector<uint16_t> h16(H, 0x1234);
    CellRow<float> w;
    w.ws = want_ws.data(), w.c = want_c.data(), w.h_out = want_h.data();
    k::lstm_forward_lanes<N>(w, bias.data(), H, c0, c1);
    std::vector<uint16_t> h16_out(H, 0x4321);
    CellRow<float> f;
    f.ws = keep ? got_ws.data() : nullptr, f.c = got_c.data();
    f.h_out = keep ? got_h.data() : nullptr, f.h16_out = keep ? nullptr : h16_out.data();
    f.r16 = r16.data(), f.r16_gate = gs, f.h16 = h16.data();
    f.a16 = with_a16 ? a16.data() : nullptr;
    std::vector<uint16_t> ws16(5 * H, 0x5555);
    f.ws16 = to16 ? ws16.data() : nullptr;
    k::lstm_forward_lanes<N, true>(f, bias.data(), H, c0, c1);
    for (int j = 0; j < H; ++j) {
      const bool in = j >= c0 && j < c1;
      for (int g = 0; g < 4; ++g) {
        const float want = in && keep ? want_ws[g * H + j] : got_ws0[g * H + j];
        if (got_ws[g * H + j] != want) fail("fused lstm ws", H, c0, j, N, got_ws[g * H + j], want);
      }
      for (int g = 0; g < 5; ++g) {  // the gates, then c_t
        const uint16_t want = !(in && to16) ? 0x5555
                              : g < 4       ? bf16_bits(want_ws[g * H + j])
                                            : bf16_bits(want_c[j]);
        if (ws16[g * H + j] != want) fail("fused lstm ws16", H, c0, j, N, ws16[g * H + j], want);
      }
      if (got_c[j] != want_c[j]) fail("fused lstm c", H, c0, j, N, got_c[j], want_c[j]);
      const float want_hj = keep ? want_h[j] : 9.f;
      if (got_h[j] != want_hj) fail("fused lstm h_out", H, c0, j, N, got_h[j], want_hj);
      const uint16_t want16 = in ? bf16_bits(want_h[j]) : 0x1234;
      if (h16[j] != want16) fail("fused lstm h16", H, c0, j, N, h16[j], want16);
      const uint16_t want16_out = in && !keep ? bf16_bits(want_h[j]) : 0x4321;
      if (h16_out[j] != want16_out) fail("fused lstm h16_out", H, c0, j, N, h16_out[j], want16_out);
    }
  });
}

// The GRU's likewise (gru_forward_lanes<N, true>): r, z of A + R widened,
// R_n from r16 (plus b_hn) into rest; without ws, rest and h_out (keep
// false), the same h_next and h16, and h rounded into h16_out; with ws16,
// r, z, n and R_n rounded into it.
template <int N>
void check_fused_gru() {
  std::mt19937 gen(17);
  std::uniform_real_distribution<float> u(-3, 3);
  using rnnattn::cpu::bf16_bits;
  using rnnattn::cpu::bf16_value;
  for_fused_cases([&](int H, int c0, int c1, bool with_a16, bool keep, bool to16) {
    const int gs = c1 - c0 + 2;
    auto fill = [&](int k) {
      std::vector<float> v(k);
      for (auto& x : v) x = u(gen);
      return v;
    };
    const std::vector<uint16_t> a16 = bf16_patterns(gen, u, 3 * H),
                                r16 = bf16_patterns(gen, u, 3 * gs);
    const std::vector<float> bias = fill(4 * H), h_prev = fill(H), rest0 = fill(H);
    std::vector<float> a(3 * H);
    for (int i = 0; i < 3 * H; ++i) a[i] = bf16_value(a16[i]);
    std::vector<float> want_ws = a, want_rest = rest0;
    for (int j = c0; j < c1; ++j) {
      for (int g = 0; g < 2; ++g) want_ws[g * H + j] += bf16_value(r16[g * gs + j - c0]);
      want_rest[j] = bf16_value(r16[2 * gs + j - c0]);
    }
    std::vector<float> want_h(H, 9.f), want_hn(H, 8.f), got_h(H, 9.f), got_hn(H, 8.f);
    std::vector<float> got_ws = with_a16 ? std::vector<float>(3 * H, 7.f) : a, got_rest = rest0;
    const std::vector<float> got_ws0 = got_ws;
    std::vector<uint16_t> h16(H, 0x1234);
    CellRow<float> w;
    w.ws = want_ws.data(), w.rest = want_rest.data(), w.h_prev = h_prev.data();
    w.h_out = want_h.data(), w.h_next = want_hn.data();
    k::gru_forward_lanes<N>(w, bias.data(), H, c0, c1);
    std::vector<uint16_t> h16_out(H, 0x4321);
    CellRow<float> f;
    f.ws = keep ? got_ws.data() : nullptr, f.rest = keep ? got_rest.data() : nullptr;
    f.h_prev = h_prev.data();
    f.h_out = keep ? got_h.data() : nullptr, f.h16_out = keep ? nullptr : h16_out.data();
    f.h_next = got_hn.data();
    f.r16 = r16.data(), f.r16_gate = gs, f.h16 = h16.data();
    f.a16 = with_a16 ? a16.data() : nullptr;
    std::vector<uint16_t> ws16(4 * H, 0x5555);
    f.ws16 = to16 ? ws16.data() : nullptr;
    k::gru_forward_lanes<N, true>(f, bias.data(), H, c0, c1);
    for (int j = 0; j < H; ++j) {
      const bool in = j >= c0 && j < c1;
      for (int g = 0; g < 3; ++g) {
        const float want = in && keep ? want_ws[g * H + j] : got_ws0[g * H + j];
        if (got_ws[g * H + j] != want) fail("fused gru ws", H, c0, j, N, got_ws[g * H + j], want);
      }
      for (int g = 0; g < 4; ++g) {  // r, z, n, then R_n
        const uint16_t want = !(in && to16) ? 0x5555
                              : g < 3       ? bf16_bits(want_ws[g * H + j])
                                            : bf16_bits(want_rest[j]);
        if (ws16[g * H + j] != want) fail("fused gru ws16", H, c0, j, N, ws16[g * H + j], want);
      }
      const float want_r = in && keep ? want_rest[j] : rest0[j];
      if (got_rest[j] != want_r) fail("fused gru rest", H, c0, j, N, got_rest[j], want_r);
      if (got_h[j] != (keep ? want_h[j] : 9.f) || got_hn[j] != want_hn[j])
        fail("fused gru h", H, c0, j, N, got_hn[j], want_hn[j]);
      const uint16_t want16 = in ? bf16_bits(want_h[j]) : 0x1234;
      if (h16[j] != want16) fail("fused gru h16", H, c0, j, N, h16[j], want16);
      const uint16_t want16_out = in && !keep ? bf16_bits(want_h[j]) : 0x4321;
      if (h16_out[j] != want16_out) fail("fused gru h16_out", H, c0, j, N, h16_out[j], want16_out);
    }
  });
}

// The Elman RNN's likewise (rnn_forward_fused_lanes<N, kRelu>) against its
// unfused float32 step: R widened and added into A's row, then
// tanh_row_impl or activate_row's relu loop (relu(NaN) NaN), h_t rounded
// into h16 by bf16_bits; A from ws (which is h_out, as the engine's reserve
// is the output) or in bfloat16; without h_out (keep false), the same
// h_next and h16, and h rounded into h16_out. Some A are NaN and some
// sums exactly 0, for relu's edge cases.
template <int N, bool kRelu>
void check_fused_rnn() {
  std::mt19937 gen(19);
  std::uniform_real_distribution<float> u(-3, 3);
  using rnnattn::cpu::bf16_bits;
  using rnnattn::cpu::bf16_value;
  for_fused_cases([&](int H, int c0, int c1, bool with_a16, bool keep, bool to16) {
    if (to16) return;  // the Elman RNN's reserve is its output
    std::vector<uint16_t> a16 = bf16_patterns(gen, u, H), r16 = bf16_patterns(gen, u, c1 - c0);
    std::vector<float> bias(H);
    for (auto& x : bias) x = u(gen);
    a16[H / 2] = 0x7fc0;  // NaN
    if (c1 - c0 > 2) {  // (A + R) + b = 0 exactly: relu's +0
      r16[1] = 0, bias[c0 + 1] = 0;
      a16[c0 + 1] = 0x8000;  // -0: -0 + 0 + 0 is +0
    }
    std::vector<float> want(H), want_next(H, 8.f), got(H, 9.f), got_next(H, 8.f);
    for (int j = 0; j < H; ++j) want[j] = bf16_value(a16[j]);
    if (!with_a16) got = want;  // A in ws, which is h_out
    const std::vector<float> got0 = got;
    for (int j = c0; j < c1; ++j) want[j] += bf16_value(r16[j - c0]);
    if constexpr (kRelu) {
      for (int j = c0; j < c1; ++j) {
        const float z = want[j] + bias[j];
        want[j] = want_next[j] = (z > 0.f || z != z) ? z : 0.f;
      }
    } else {
      k::tanh_row_impl<N>(want.data() + c0, want_next.data() + c0, bias.data() + c0, c1 - c0);
    }
    std::vector<uint16_t> h16(H, 0x1234), h16_out(H, 0x4321);
    CellRow<float> f;
    f.ws = with_a16 ? nullptr : got.data();
    f.h_out = keep ? got.data() : nullptr, f.h16_out = keep ? nullptr : h16_out.data();
    f.h_next = got_next.data();
    f.r16 = r16.data(), f.h16 = h16.data();
    f.a16 = with_a16 ? a16.data() : nullptr;
    k::rnn_forward_fused_lanes<N, kRelu>(f, bias.data(), c0, c1);
    auto differ = [](float a, float b) {  // bit for bit, NaN equal to NaN
      return !(a == b && std::signbit(a) == std::signbit(b)) && !(a != a && b != b);
    };
    const char* name = kRelu ? "fused rnn relu" : "fused rnn tanh";
    for (int j = 0; j < H; ++j) {
      const bool in = j >= c0 && j < c1;
      const float want_h = in && keep ? want[j] : got0[j];
      if (differ(got[j], want_h)) fail(name, H, c0, j, N, got[j], want_h);
      const float want_n = in ? want_next[j] : 8.f;
      if (differ(got_next[j], want_n)) fail(name, H, c0, j, N, got_next[j], want_n);
      const uint16_t want16 = in ? bf16_bits(want[j]) : 0x1234;
      if (h16[j] != want16) fail(name, H, c0, j, N, h16[j], want16);
      const uint16_t want16_out = in && !keep ? bf16_bits(want[j]) : 0x4321;
      if (h16_out[j] != want16_out) fail(name, H, c0, j, N, h16_out[j], want16_out);
    }
  });
}

int main() {
  for (bool nt : {false, true}) {
    check_gemm<float, 32>(nt);
    check_gemm<float, 64>(nt);
    check_gemm<double, 32>(nt);
    check_gemm<double, 64>(nt);
  }
  check_activations<8>();
  check_activations<16>();
  check_cells<8>();
  check_cells<16>();
  check_fused_lstm<8>();
  check_fused_lstm<16>();
  check_fused_gru<8>();
  check_fused_gru<16>();
  check_fused_rnn<8, false>();
  check_fused_rnn<16, false>();
  check_fused_rnn<8, true>();
  check_fused_rnn<16, true>();
  if (failures == 0) std::printf("all passed\n");
  return failures == 0 ? 0 : 1;
}

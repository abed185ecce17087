// Runs the vector-width templates of the CPU kernels at both widths the
// extension builds: 32-byte vectors (the baseline and AVX2 builds) and 64-byte
// vectors (the AVX-512 build), against plain loops in double. Compiled
// without -march flags, so the 64-byte code runs here lowered to narrower
// registers: the logic of the AVX-512 build (16 float lanes, its tails, the
// lane folds of small_gemm_nt) is checked on any x86-64 machine, even one
// that cannot run AVX-512 instructions. tests/test_cpu_kernel_widths.py
// compiles and runs this; it prints "all passed" or the first failures.
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <vector>

#include "activation_kernels.h"
#include "small_gemm_kernels.h"

using rnnattn::cpu::Act;
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

int main() {
  for (bool nt : {false, true}) {
    check_gemm<float, 32>(nt);
    check_gemm<float, 64>(nt);
    check_gemm<double, 32>(nt);
    check_gemm<double, 64>(nt);
  }
  check_activations<8>();
  check_activations<16>();
  if (failures == 0) std::printf("all passed\n");
  return failures == 0 ? 0 : 1;
}

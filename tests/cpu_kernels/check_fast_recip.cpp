// The fused bfloat16 steps' activations (activation_kernels.h sigmoid_lanes
// and tanh_lanes with Recip::kRcp14: VRCP14PS and one Newton step for their
// reciprocal, in the AVX-512 build) against the same with a division
// (Recip::kDivide, every float32 path) and against double: over [-20, 20]
// in steps of 2^-14, at tiny values, in the clamped tails and on the
// special values. kRcp14 must be within 1.5 ulp of the division (which
// rounds once where it multiplies by the reciprocal: 1 measured) and 3.5 of
// the true value (the division's build: 2.5, test_float32_tanh_is_accurate_
// everywhere; measured on a Xeon with AMX: tanh 2.97 against 2.49, sigmoid
// 2.45 for both), NaN must stay NaN, the sign of -0 be kept, and the tails
// give exactly the division's values (sigmoid 6e-39 or 1, tanh +-1). Run by
// tests/test_cpu_kernel_widths.py; prints "skipped" on a CPU without
// AVX-512 (the only build that takes kRcp14).
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <vector>

#include "activation_kernels.h"
#include "isa.h"

namespace k = rnnattn::cpu::kernels;
using k::Recip;
using V = k::Lanes<16>::f;

#if RNNATTN_X86_DISPATCH
// y[i] = act(x[i]), 16 at a time (n a multiple of 16).
template <bool kSigmoid, Recip R>
RNNATTN_TARGET_AVX512 void run(const float* x, float* y, size_t n) {
  for (size_t i = 0; i < n; i += 16) {
    V v;
    std::memcpy(&v, x + i, sizeof v);
    const V r = kSigmoid ? k::sigmoid_lanes<16, R>(v) : k::tanh_lanes<16, R>(v);
    std::memcpy(y + i, &r, sizeof r);
  }
}
#endif

// Distance in float ulps (at b's exponent; denormals at the least normal's).
static double ulps(float a, double b) {
  const double ulp = std::ldexp(1.0, std::max(std::ilogb(std::fabs(b) > 0 ? b : 1e-38), -126) - 23);
  return std::fabs(a - b) / ulp;
}

int main() {
#if !RNNATTN_X86_DISPATCH
  std::printf("skipped: not an x86-64 GCC/Clang build\n");
  return 0;
#else
  if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512vl") ||
      !__builtin_cpu_supports("avx512dq") || !__builtin_cpu_supports("avx512bw")) {
    std::printf("skipped: this CPU has no AVX-512\n");
    return 0;
  }
  std::vector<float> xs;
  for (int i = -20 * 16384; i <= 20 * 16384; ++i) xs.push_back(float(i) / 16384.f);
  for (float v = 1e-30f; v < 1e-3f; v *= 1.37f) {
    xs.push_back(v);
    xs.push_back(-v);
  }
  const float inf = std::numeric_limits<float>::infinity();
  for (float v : {0.f, -0.f, 9.f, -9.f, 44.f, -44.f, 87.f, -87.f, 88.f, -88.f, 89.f, -89.f, 100.f,
                  -100.f, 1e30f, -1e30f, inf, -inf})
    xs.push_back(v);
  const size_t n_checked = xs.size();
  xs.push_back(std::numeric_limits<float>::quiet_NaN());
  while (xs.size() % 16) xs.push_back(0.f);
  const size_t n = xs.size();
  int failures = 0;
  for (int a = 0; a < 2; ++a) {
    const bool sig = a == 1;
    const char* name = sig ? "sigmoid" : "tanh";
    std::vector<float> fast(n), div(n);
    if (sig) {
      run<true, Recip::kRcp14>(xs.data(), fast.data(), n);
      run<true, Recip::kDivide>(xs.data(), div.data(), n);
    } else {
      run<false, Recip::kRcp14>(xs.data(), fast.data(), n);
      run<false, Recip::kDivide>(xs.data(), div.data(), n);
    }
    double worst_fast = 0, worst_div = 0, worst_div_true = 0;
    for (size_t i = 0; i < n_checked; ++i) {
      const double z = xs[i];
      const double want = sig ? 1 / (1 + std::exp(-z)) : std::tanh(z);
      // Past the clamps (sigmoid: 6e-39 for a true 0; activation_kernels.h)
      // only the division's value counts.
      const bool tail = sig ? (z <= -87 || z >= 88) : std::fabs(z) >= 9;
      const double e_fast = tail ? 0 : ulps(fast[i], want), e_div = ulps(fast[i], div[i]);
      worst_fast = std::max(worst_fast, e_fast);
      worst_div = std::max(worst_div, e_div);
      if (!tail) worst_div_true = std::max(worst_div_true, ulps(div[i], want));
      if (e_fast > 3.5 || e_div > 1.5 || (tail && fast[i] != div[i]) ||
          std::signbit(fast[i]) != std::signbit(div[i])) {
        if (++failures <= 10)
          std::printf("FAIL %s(%.9g): rcp14 %.9g, division %.9g, true %.9g\n", name, z, fast[i],
                      div[i], want);
      }
    }
    if (!std::isnan(fast[n_checked])) {
      ++failures;
      std::printf("FAIL %s(NaN) = %g\n", name, fast[n_checked]);
    }
    std::printf("%s: rcp14 within %.2f ulp of the true value (the division %.2f), %.2f of the division\n",
                name, worst_fast, worst_div_true, worst_div);
  }
  if (failures) {
    std::printf("%d failures\n", failures);
    return 1;
  }
  std::printf("all passed\n");
  return 0;
#endif
}

// The vectorized float activations of activation.cpp as templates over the
// lane count N, for activation.cpp to instantiate once per ISA build (isa.h)
// and for tests/cpu_kernels to run the AVX-512 build's 16-lane logic on
// machines without AVX-512. Both rest on one e^y (pow2_reduce, exp_lanes):
// y = n ln2 + r with n rounded to nearest by adding 1.5 * 2^23 (whose low
// mantissa bits then hold n), |r| <= ln2/2, a degree-7 Taylor polynomial in
// r, and 2^n built in the exponent bits. Then
//
//   sigmoid(z) = 1 / (1 + e^-z), -z clamped to [-87, 88] (sigmoid is 1 or
//                6e-39 beyond, where the true value is 0 to float
//                precision): accurate in relative terms at both tails, no
//                cancellation, one division;
//   tanh(x)    = sign(x) * -m / (2 + m), m = e^(-2|x|) - 1 (|x| clamped to
//                9, where tanh is 1 to float precision). m is computed as
//                2^n (e^r - 1) + (2^n - 1) with e^r - 1 = r p(r), so for
//                |x| < ln2/4 (n = 0) it is r p(r) itself and small |x| keeps
//                its relative accuracy without a separate Taylor branch.
//
// Within 2.5 ulp of the true values over [-20, 20] and at tiny |x| (tests:
// test_float32_tanh_is_accurate_everywhere, tests/cpu_kernels). NaN passes
// through (the clamps are written so that a NaN compares false and is
// kept). Written with GCC vector extensions rather than left to the
// auto-vectorizer, which will not if-convert the clamps and the bit
// operations under the default -ftrapping-math.
//
// Why this form: the one before built tanh from 1 - 2 / (e^2|x| + 1) for
// |x| >= 1/4 and a Taylor series below, both computed and blended, and
// sigmoid from e^|z| with a blend on the sign of z; about 32 and 24 vector
// operations. These take about 20 and 18: on one Zen 4 core (AVX-512, 16
// lanes), 0.49 -> 0.34 ns a tanh and 0.37 -> 0.31 a sigmoid
// (benchmarks/OPTIMISATIONS.md). The cells' pointwise steps gain less: their
// chains (gates -> c -> tanh c -> h) bound them as much as the operations.
#pragma once

#include <cstdint>
#include <cstring>

#include "activation.h"

// Vectors passed and returned by value between these always_inline functions
// never cross a call boundary, so GCC's note that their calling convention
// differs with and without AVX does not apply.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"

namespace rnnattn::cpu::kernels {

// N float lanes and N int32 lanes: 8 (one ymm register; SSE pairs in the
// baseline build) or 16 (one zmm register in the AVX-512 build).
template <int N>
struct Lanes {
  typedef float f __attribute__((vector_size(4 * N)));
  typedef int32_t i __attribute__((vector_size(4 * N)));
};

// 2^n for n = round(y / ln2), and r = y - n ln2 (ln2 split in a part exact
// in float and a remainder), for -87 <= y <= 88 (so that n + 127 is a
// normal exponent). Adding 1.5 * 2^23 (+ 127, the exponent bias) rounds
// y / ln2 to the nearest integer and leaves n + 127 in the low mantissa
// bits, which the shift moves into the exponent field.
template <int N, typename V = typename Lanes<N>::f, typename VI = typename Lanes<N>::i>
__attribute__((always_inline)) inline V pow2_reduce(const V& y, V& r) {
  const V t = y * 1.44269504088896341f + 12583039.f;  // 1.5 * 2^23 + 127
  const V n = t - 12583039.f;
  r = (y - n * 0.693359375f) + n * 2.12194440e-4f;
  return (V)((VI)t << 23);
}

// 1 + r/2 + r^2/6 + ... + r^6/5040: e^r = 1 + r p(r), e^r - 1 = r p(r).
template <int N, typename V = typename Lanes<N>::f>
__attribute__((always_inline)) inline V exp_series(const V& r) {
  V p = V{} + 1.f / 5040.f;
  p = p * r + 1.f / 720.f;
  p = p * r + 1.f / 120.f;
  p = p * r + 1.f / 24.f;
  p = p * r + 1.f / 6.f;
  p = p * r + 0.5f;
  return p * r + 1.f;
}

// e^y for -87 <= y <= 88 (NaN gives NaN).
template <int N, typename V = typename Lanes<N>::f>
__attribute__((always_inline)) inline V exp_lanes(const V& y) {
  V r;
  const V s = pow2_reduce<N>(y, r);
  return (exp_series<N>(r) * r + 1.f) * s;
}

// How sigmoid and tanh take their one reciprocal. kDivide: a division,
// correctly rounded (every float32 path). kRcp14: VRCP14PS (relative error
// under 2^-14 on every AVX-512 CPU) and one Newton step, r + r (1 - d r),
// which squares that error to under 2^-28: within an ulp of the division
// (tests/cpu_kernels/check_fast_recip.cpp), at 16 lanes in the AVX-512
// build only (recip_lanes). The fused bfloat16 steps take it
// (cell_kernels.h), whose gates, c and h carry their bfloat16 operands'
// rounding (2^-9) beside which an ulp of float32 is nothing. A division
// keeps the divider busy for several cycles a vector, and the LSTM's step
// makes five a unit: its (64,100,512,1024) bfloat16 forward measured 1.04x
// with kRcp14 on a 2-core Xeon (AMX), alternating processes; the GRU's
// (three a unit) and the Elman RNN's (one) 0.99-1.00x.
enum class Recip { kDivide, kRcp14 };

// 1 / d. kRcp14 is inline assembly, not the _mm512_rcp14_ps intrinsic:
// GCC refuses to inline an intrinsic into a function without its target
// (these templates are inlined into the AVX-512 build's functions, which
// have it: isa.h RNNATTN_TARGET_AVX512), and the assembly, 64 bytes in one
// zmm register, is only ever compiled inside those.
template <int N, Recip R, typename V = typename Lanes<N>::f>
__attribute__((always_inline)) inline V recip_lanes(const V& d) {
  if constexpr (R == Recip::kRcp14) {
    static_assert(N == 16, "VRCP14PS on 16 lanes (one zmm register) only");
    V r;
    asm("vrcp14ps %1, %0" : "=v"(r) : "v"(d));
    return r + r * (1.f - d * r);
  } else {
    return 1.f / d;
  }
}

template <int N, Recip R = Recip::kDivide, typename V = typename Lanes<N>::f,
          typename VI = typename Lanes<N>::i>
__attribute__((always_inline)) inline V tanh_lanes(const V& z) {
  const VI sign_bit = (VI)z & 0x80000000;
  V a = (V)((VI)z & 0x7fffffff);
  a = (a > 9.f) ? V{} + 9.f : a;  // NaN compares false and stays
  V r;
  const V s = pow2_reduce<N>(a * -2.f, r);
  const V m = s * (exp_series<N>(r) * r) + (s - 1.f);  // e^(-2|x|) - 1, in (-1, 0]
  V t;                                                 // -tanh|x|
  if constexpr (R == Recip::kDivide) {
    t = m / (2.f + m);
  } else {
    t = m * recip_lanes<N, R>(2.f + m);
  }
  return (V)(((VI)t & 0x7fffffff) | sign_bit);
}

template <int N, Recip R = Recip::kDivide, typename V = typename Lanes<N>::f>
__attribute__((always_inline)) inline V sigmoid_lanes(const V& z) {
  V y = -z;
  y = (y < -87.f) ? V{} - 87.f : y;  // NaN compares false and stays
  y = (y > 88.f) ? V{} + 88.f : y;
  return recip_lanes<N, R>(1.f + exp_lanes<N>(y));
}

// Runs body(j, m) over [0, n) in vectors of N lanes (m = N), then once on
// the ragged tail (m = n - j < N), whose loads zero-pad the missing lanes
// (LaneIo) and whose stores write only m values: nothing outside the row is
// read or written. body must be an always_inline lambda: an out-of-line
// lambda would be compiled without the caller's ISA target, its vectors
// lowered to baseline SSE and its loads to memcpy calls.
template <int N, typename F>
__attribute__((always_inline)) inline void for_lanes(int64_t n, const F& body) {
  int64_t j = 0;
  for (; j + N <= n; j += N) body(j, N);
  if (j < n) body(j, static_cast<int>(n - j));
}

// Loads and stores of m <= N floats (m == N compiles to a plain vector move
// in the main loop, where m is the constant N).
template <int N>
struct LaneIo {
  using V = typename Lanes<N>::f;
  int m;
  __attribute__((always_inline)) V load(const float* p) const {
    V v{};
    std::memcpy(&v, p, m * sizeof(float));
    return v;
  }
  __attribute__((always_inline)) void store(float* p, const V& v) const {
    std::memcpy(p, &v, m * sizeof(float));
  }
};

template <int N>
__attribute__((always_inline)) inline void tanh_row_impl(float* __restrict o, float* __restrict state,
                                                         const float* __restrict bias, int64_t H) {
  for_lanes<N>(H, [&](int64_t j, int m) __attribute__((always_inline)) {
    const LaneIo<N> io{m};
    const auto t = tanh_lanes<N>(io.load(o + j) + io.load(bias + j));
    io.store(o + j, t);
    io.store(state + j, t);
  });
}

// x = act(x + bias) in place (bias may be null).
template <Act A, int N, typename V = typename Lanes<N>::f>
__attribute__((always_inline)) inline V act_lanes(const V& z) {
  if constexpr (A == Act::kTanh) {
    return tanh_lanes<N>(z);
  } else {
    return sigmoid_lanes<N>(z);
  }
}

template <Act A, int N>
__attribute__((always_inline)) inline void act_impl(float* __restrict x, const float* __restrict bias,
                                                    int64_t n) {
  using V = typename Lanes<N>::f;
  for_lanes<N>(n, [&](int64_t j, int m) __attribute__((always_inline)) {
    const LaneIo<N> io{m};
    const V b = bias != nullptr ? io.load(bias + j) : V{};
    io.store(x + j, act_lanes<A, N>(io.load(x + j) + b));
  });
}

}  // namespace rnnattn::cpu::kernels

#pragma GCC diagnostic pop

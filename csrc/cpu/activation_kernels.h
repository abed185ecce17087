// The vectorized float activations of activation.cpp as templates over the
// lane count N, for activation.cpp to instantiate once per ISA build (isa.h)
// and for tests/cpu_kernels to run the AVX-512 build's 16-lane logic on
// machines without AVX-512. The method:
//
//   |x| <  1/4: odd Taylor series x (1 - x^2/3 + 2x^4/15 - 17x^6/315 + 62x^8/2835),
//               truncation error < 1e-8 relative;
//   |x| >= 1/4: 1 - 2 / (exp(2|x|) + 1), with exp from Cody-Waite range
//               reduction (2|x| = n ln2 + r, |r| <= ln2/2), a degree-7 Taylor
//               polynomial for e^r and 2^n built in the exponent bits;
//   sigmoid:    e^|z| / (1 + e^|z|) (z >= 0) or 1 / (1 + e^|z|), the same exp.
// Both branches are computed for N lanes and blended, the sign is copied back
// from x, and NaN passes through. Written with GCC vector extensions rather
// than left to the auto-vectorizer, which will not if-convert the clamp and
// the float->int conversion under the default -ftrapping-math.
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

// e^y for 0 <= y <= 88 (or NaN, which gives garbage the callers replace):
// y = n ln2 + r, |r| <= ln2/2 (n rounded to nearest: y >= 0), a degree-7
// Taylor polynomial for e^r and 2^n built in the exponent bits.
template <int N, typename V = typename Lanes<N>::f, typename VI = typename Lanes<N>::i>
__attribute__((always_inline)) inline V exp_lanes(const V& y) {
  const VI ni = __builtin_convertvector(y * 1.44269504088896341f + 0.5f, VI);  // round(y/ln2)
  const V n = __builtin_convertvector(ni, V);
  // ln2 split in a part exact in float and a remainder.
  const V r = (y - n * 0.693359375f) + n * 2.12194440e-4f;
  V p = V{} + 1.f / 5040.f;
  p = p * r + 1.f / 720.f;
  p = p * r + 1.f / 120.f;
  p = p * r + 1.f / 24.f;
  p = p * r + 1.f / 6.f;
  p = p * r + 0.5f;
  p = p * r + 1.f;
  p = p * r + 1.f;
  return p * (V)((ni + 127) << 23);
}

template <int N, typename V = typename Lanes<N>::f, typename VI = typename Lanes<N>::i>
__attribute__((always_inline)) inline V tanh_lanes(const V& z) {
  const VI sign_bit = (VI)z & 0x80000000;
  const V a = (V)((VI)z & 0x7fffffff);
  const V s = z * z;
  const V small =
      a * (1.f + s * (-1.f / 3.f + s * (2.f / 15.f + s * (-17.f / 315.f + s * (62.f / 2835.f)))));
  // Clamp 2|x| to 88 (tanh = 1 to float precision from |x| = 9); NaN fails
  // the comparison and is clamped too, then restored at the end.
  const V y = (a < 44.f) ? a + a : V{} + 88.f;
  const V e = exp_lanes<N>(y);
  const V large = 1.f - 2.f / (e + 1.f);
  const V t = (V)((VI)((a < 0.25f) ? small : large) | sign_bit);
  return (z == z) ? t : z;
}

// sigmoid(z) from e = e^|z| (|z| clamped to 88, where sigmoid is 0 or 1 to
// float precision): e / (1 + e) for z >= 0, 1 / (1 + e) below. Neither
// cancels, so unlike tanh it needs no separate small-|z| branch (and no
// detour through tanh(z/2), which cost about 40% more operations a vector).
template <int N, typename V = typename Lanes<N>::f, typename VI = typename Lanes<N>::i>
__attribute__((always_inline)) inline V sigmoid_lanes(const V& z) {
  const V a = (V)((VI)z & 0x7fffffff);
  const V e = exp_lanes<N>((a < 88.f) ? a : V{} + 88.f);
  const V q = 1.f / (e + 1.f);
  const V sg = (z >= 0.f) ? e * q : q;
  return (z == z) ? sg : z;
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

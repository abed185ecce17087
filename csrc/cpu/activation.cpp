// Vectorized float tanh for the RNN forward (see activation.h).
//
//   |x| <  1/4: odd Taylor series x (1 - x^2/3 + 2x^4/15 - 17x^6/315 + 62x^8/2835),
//               truncation error < 1e-8 relative;
//   |x| >= 1/4: 1 - 2 / (exp(2|x|) + 1), with exp from Cody-Waite range
//               reduction (2|x| = n ln2 + r, |r| <= ln2/2), a degree-7 Taylor
//               polynomial for e^r and 2^n built in the exponent bits.
// Both branches are computed for 8 lanes and blended, the sign is copied back
// from x, and NaN passes through. Written with GCC vector extensions rather
// than left to the auto-vectorizer, which will not if-convert the clamp and
// the float->int conversion under the default -ftrapping-math; the AVX2
// build lowers the 8-lane type to ymm registers, the baseline build to SSE pairs. Accuracy is
// checked against torch.tanh over [-20, 20] in tests/test_rnn_op.py.
#include <cstdint>
#include <cstring>

#include "activation.h"
#include "isa.h"

namespace rnnattn::cpu {
namespace {

typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

__attribute__((always_inline)) inline v8f tanh8(v8f z) {
  const v8i sign_bit = (v8i)z & 0x80000000;
  const v8f a = (v8f)((v8i)z & 0x7fffffff);
  const v8f s = z * z;
  const v8f small =
      a * (1.f + s * (-1.f / 3.f + s * (2.f / 15.f + s * (-17.f / 315.f + s * (62.f / 2835.f)))));
  // Clamp 2|x| to 88 (tanh = 1 to float precision from |x| = 9); NaN fails
  // the comparison and is clamped too, then restored at the end.
  const v8f y = (a < 44.f) ? a + a : v8f{} + 88.f;
  const v8i ni = __builtin_convertvector(y * 1.44269504088896341f + 0.5f, v8i);  // round(y/ln2)
  const v8f n = __builtin_convertvector(ni, v8f);
  // ln2 split in a part exact in float and a remainder.
  const v8f r = (y - n * 0.693359375f) + n * 2.12194440e-4f;
  v8f p = v8f{} + 1.f / 5040.f;
  p = p * r + 1.f / 720.f;
  p = p * r + 1.f / 120.f;
  p = p * r + 1.f / 24.f;
  p = p * r + 1.f / 6.f;
  p = p * r + 0.5f;
  p = p * r + 1.f;
  p = p * r + 1.f;
  const v8f e = p * (v8f)((ni + 127) << 23);
  const v8f large = 1.f - 2.f / (e + 1.f);
  const v8f t = (v8f)((v8i)((a < 0.25f) ? small : large) | sign_bit);
  return (z == z) ? t : z;
}

__attribute__((always_inline)) inline void tanh_row_impl(float* __restrict o, float* __restrict state,
                                                         const float* __restrict bias, int64_t H) {
  int64_t j = 0;
  for (; j + 8 <= H; j += 8) {
    v8f z, b;
    std::memcpy(&z, o + j, sizeof z);
    std::memcpy(&b, bias + j, sizeof b);
    const v8f t = tanh8(z + b);
    std::memcpy(o + j, &t, sizeof t);
    std::memcpy(state + j, &t, sizeof t);
  }
  if (j < H) {  // ragged tail through a zero-padded vector
    const int64_t m = H - j;
    v8f z{}, b{};
    std::memcpy(&z, o + j, m * sizeof(float));
    std::memcpy(&b, bias + j, m * sizeof(float));
    const v8f t = tanh8(z + b);
    std::memcpy(o + j, &t, m * sizeof(float));
    std::memcpy(state + j, &t, m * sizeof(float));
  }
}

RNNATTN_TARGET_AVX2 void tanh_row_avx2(float* o, float* state, const float* bias, int64_t H) {
  tanh_row_impl(o, state, bias, H);
}

// x = act(x + bias) in place (bias may be null); sigmoid(z) = (1 + tanh(z/2)) / 2,
// so both gates' activations share tanh8. Near sigmoid's lower tail this
// has an absolute (not relative) error of a few float ulp of 0.5.
template <Act A>
__attribute__((always_inline)) inline v8f act8(v8f z) {
  if constexpr (A == Act::kTanh) {
    return tanh8(z);
  } else {
    return 0.5f + 0.5f * tanh8(0.5f * z);
  }
}

template <Act A>
__attribute__((always_inline)) inline void act_impl(float* __restrict x, const float* __restrict bias,
                                                    int64_t n) {
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    v8f z, b{};
    std::memcpy(&z, x + j, sizeof z);
    if (bias != nullptr) std::memcpy(&b, bias + j, sizeof b);
    const v8f t = act8<A>(z + b);
    std::memcpy(x + j, &t, sizeof t);
  }
  if (j < n) {  // ragged tail through a zero-padded vector
    const int64_t m = n - j;
    v8f z{}, b{};
    std::memcpy(&z, x + j, m * sizeof(float));
    if (bias != nullptr) std::memcpy(&b, bias + j, m * sizeof(float));
    const v8f t = act8<A>(z + b);
    std::memcpy(x + j, &t, m * sizeof(float));
  }
}

template <Act A>
RNNATTN_TARGET_AVX2 void act_avx2(float* x, const float* bias, int64_t n) {
  act_impl<A>(x, bias, n);
}

}  // namespace

void activate_f32(Act act, float* x, const float* bias, int64_t n) {
  const bool avx2 = use_avx2();
  if (act == Act::kTanh) {
    avx2 ? act_avx2<Act::kTanh>(x, bias, n) : act_impl<Act::kTanh>(x, bias, n);
  } else {
    avx2 ? act_avx2<Act::kSigmoid>(x, bias, n) : act_impl<Act::kSigmoid>(x, bias, n);
  }
}

void tanh_row_f32(float* o, float* state, const float* bias, int64_t H) {
  if (use_avx2())
    tanh_row_avx2(o, state, bias, H);
  else
    tanh_row_impl(o, state, bias, H);
}

}  // namespace rnnattn::cpu

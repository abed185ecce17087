// Vectorizable float tanh for the RNN forward (see activation.h).
//
//   |x| <  1/4: odd Taylor series x (1 - x^2/3 + 2x^4/15 - 17x^6/315 + 62x^8/2835),
//               truncation error < 1e-8 relative;
//   |x| >= 1/4: 1 - 2 / (exp(2|x|) + 1), with exp from Cody-Waite range
//               reduction (2|x| = n ln2 + r, |r| <= ln2/2), a degree-7 Taylor
//               polynomial for e^r and 2^n built in the exponent bits.
// Both branches are computed and one is selected, so the loop has no
// branches and vectorizes; the sign is copied back from x. Measured against
// torch.tanh over [-20, 20] in tests/test_rnn_op.py (max error a few ulp).
#include <cmath>
#include <cstdint>
#include <cstring>

#include "activation.h"

namespace rnnattn::cpu {

namespace {

__attribute__((always_inline)) inline float exp_nonneg(float y) {  // y in [0, 88]
  const float n = std::floor(y * 1.44269504088896341f + 0.5f);
  // ln2 split in a part exact in float and a remainder.
  const float r = (y - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.f / 5040.f;
  p = p * r + 1.f / 720.f;
  p = p * r + 1.f / 120.f;
  p = p * r + 1.f / 24.f;
  p = p * r + 1.f / 6.f;
  p = p * r + 0.5f;
  p = p * r + 1.f;
  p = p * r + 1.f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

}  // namespace

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx512f", "arch=haswell", "default")))
#endif
void tanh_row_f32(float* __restrict o, float* __restrict state, const float* __restrict bias,
                  int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const float z = o[j] + bias[j];
    const float a = std::fabs(z);
    const float s = z * z;
    const float small =
        a * (1.f + s * (-1.f / 3.f + s * (2.f / 15.f + s * (-17.f / 315.f + s * (62.f / 2835.f)))));
    // NaN and huge |z| map to y = 44 (tanh = 1 to float precision); NaN is
    // restored below.
    const float y = (a < 44.f) ? 2.f * a : 88.f;
    const float large = 1.f - 2.f / (exp_nonneg(y) + 1.f);
    float t = a < 0.25f ? small : large;
    t = std::copysign(t, z);
    o[j] = state[j] = (z == z) ? t : z;
  }
}

}  // namespace rnnattn::cpu

// Vectorized float tanh and sigmoid for the recurrent cells (see
// activation.h); the loops are in activation_kernels.h, built here once per
// ISA level (isa.h): 8 lanes for the baseline and AVX2 builds, 16 for
// AVX-512. Accuracy is checked against torch.tanh over [-20, 20] in
// tests/test_rnn_op.py.
#include "activation.h"

#include "activation_kernels.h"
#include "isa.h"

// GCC reports the vectors passed by value inside the kernels (never across
// a call: they are always_inline) once more at the end of this file.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace rnnattn::cpu {
namespace {

using kernels::act_impl;
using kernels::tanh_row_impl;

RNNATTN_TARGET_AVX2 void tanh_row_avx2(float* o, float* state, const float* bias, int64_t H) {
  tanh_row_impl<8>(o, state, bias, H);
}
RNNATTN_TARGET_AVX512 void tanh_row_avx512(float* o, float* state, const float* bias, int64_t H) {
  tanh_row_impl<16>(o, state, bias, H);
}

template <Act A>
RNNATTN_TARGET_AVX2 void act_avx2(float* x, const float* bias, int64_t n) {
  act_impl<A, 8>(x, bias, n);
}
template <Act A>
RNNATTN_TARGET_AVX512 void act_avx512(float* x, const float* bias, int64_t n) {
  act_impl<A, 16>(x, bias, n);
}

template <Act A>
void act(float* x, const float* bias, int64_t n) {
  switch (cpu_isa()) {
    case Isa::kAvx512: return act_avx512<A>(x, bias, n);
    case Isa::kAvx2: return act_avx2<A>(x, bias, n);
    default: return act_impl<A, 8>(x, bias, n);
  }
}

}  // namespace

void activate_f32(Act a, float* x, const float* bias, int64_t n) {
  a == Act::kTanh ? act<Act::kTanh>(x, bias, n) : act<Act::kSigmoid>(x, bias, n);
}

void tanh_row_f32(float* o, float* state, const float* bias, int64_t H) {
  switch (cpu_isa()) {
    case Isa::kAvx512: return tanh_row_avx512(o, state, bias, H);
    case Isa::kAvx2: return tanh_row_avx2(o, state, bias, H);
    default: return tanh_row_impl<8>(o, state, bias, H);
  }
}

}  // namespace rnnattn::cpu

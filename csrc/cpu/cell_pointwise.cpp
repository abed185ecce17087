// The cells' float pointwise steps (cell_pointwise.h), the loops of
// cell_kernels.h built for each ISA level: 8 lanes for the baseline and
// AVX2 builds, 16 for AVX-512.
#include "cell_pointwise.h"

#include "cell_kernels.h"
#include "isa.h"

// GCC reports the vectors passed by value inside the kernels (never across
// a call: they are always_inline) once more at the end of this file.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace rnnattn::cpu {
namespace {

namespace k = kernels;

// Each kernel as a type whose run<N, R> the builds below instantiate: R,
// how the fused bfloat16 steps' activations take their reciprocal
// (activation_kernels.h Recip: VRCP14PS in the AVX-512 build); the float32
// steps always divide.
struct LstmForward {
  template <int N, k::Recip, typename... A>
  __attribute__((always_inline)) static void run(const A&... a) { k::lstm_forward_lanes<N>(a...); }
};
struct LstmForwardFused {
  template <int N, k::Recip R, typename... A>
  __attribute__((always_inline)) static void run(const A&... a) {
    k::lstm_forward_lanes<N, true, R>(a...);
  }
};
struct LstmBackward {
  template <int N, k::Recip, typename... A>
  __attribute__((always_inline)) static void run(const A&... a) { k::lstm_backward_lanes<N>(a...); }
};
struct GruForward {
  template <int N, k::Recip, typename... A>
  __attribute__((always_inline)) static void run(const A&... a) { k::gru_forward_lanes<N>(a...); }
};
struct GruForwardFused {
  template <int N, k::Recip R, typename... A>
  __attribute__((always_inline)) static void run(const A&... a) {
    k::gru_forward_lanes<N, true, R>(a...);
  }
};
template <bool kRelu>
struct RnnForwardFused {
  template <int N, k::Recip R, typename... A>
  __attribute__((always_inline)) static void run(const A&... a) {
    k::rnn_forward_fused_lanes<N, kRelu, R>(a...);
  }
};
struct GruBackward {
  template <int N, k::Recip, typename... A>
  __attribute__((always_inline)) static void run(const A&... a) { k::gru_backward_lanes<N>(a...); }
};

// One function per ISA level and kernel, compiled with that level's target
// (the kernel is inlined into it), and the run-time choice between them.
// (Off x86-64, where cpu_isa() never picks AVX-512, its build still
// compiles: without the x86 instruction.)
constexpr k::Recip kAvx512Recip = RNNATTN_X86_DISPATCH ? k::Recip::kRcp14 : k::Recip::kDivide;
template <typename K, typename... A>
RNNATTN_TARGET_AVX512 void run_avx512(const A&... a) {
  K::template run<16, kAvx512Recip>(a...);
}
template <typename K, typename... A>
RNNATTN_TARGET_AVX2 void run_avx2(const A&... a) {
  K::template run<8, k::Recip::kDivide>(a...);
}
template <typename K, typename... A>
void run_base(const A&... a) {
  K::template run<8, k::Recip::kDivide>(a...);
}
template <typename K, typename... A>
void dispatch(const A&... a) {
  switch (cpu_isa()) {
    case Isa::kAvx512: return run_avx512<K>(a...);
    case Isa::kAvx2: return run_avx2<K>(a...);
    default: return run_base<K>(a...);
  }
}

}  // namespace

void lstm_forward_f32(const CellRow<float>& r, const float* bias, int64_t H, int64_t c0,
                      int64_t c1) {
  if (r.r16 != nullptr) return dispatch<LstmForwardFused>(r, bias, H, c0, c1);
  dispatch<LstmForward>(r, bias, H, c0, c1);
}

void lstm_backward_f32(const CellRow<float>& r, int64_t H, int64_t c0, int64_t c1) {
  dispatch<LstmBackward>(r, H, c0, c1);
}

void gru_forward_f32(const CellRow<float>& r, const float* bias, int64_t H, int64_t c0,
                     int64_t c1) {
  if (r.r16 != nullptr) return dispatch<GruForwardFused>(r, bias, H, c0, c1);
  dispatch<GruForward>(r, bias, H, c0, c1);
}

void rnn_forward_fused_f32(const CellRow<float>& r, const float* bias, int64_t c0, int64_t c1,
                           bool relu) {
  if (relu) return dispatch<RnnForwardFused<true>>(r, bias, c0, c1);
  dispatch<RnnForwardFused<false>>(r, bias, c0, c1);
}

void gru_backward_f32(const CellRow<float>& r, int64_t H, int64_t c0, int64_t c1) {
  dispatch<GruBackward>(r, H, c0, c1);
}

}  // namespace rnnattn::cpu

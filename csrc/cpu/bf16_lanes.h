// bfloat16 (raw 16-bit patterns, as bf16_bits.h) to and from float lanes,
// for the vectorized kernels built once per ISA level (isa.h): the row
// conversions of bf16_convert.cpp and the cells' fused steps
// (cell_kernels.h). The rounding is bf16_bits' (to nearest even, a NaN
// stays a quiet NaN), not VCVTNEPS2BF16's, which flushes denormal inputs
// to zero and exists on few CPUs.
#pragma once

#include <cstdint>
#include <cstring>

#include "activation_kernels.h"

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"

namespace rnnattn::cpu::kernels {

template <int N>
struct Bf16Lanes {
  typedef uint16_t h __attribute__((vector_size(2 * N)));
  typedef uint32_t u __attribute__((vector_size(4 * N)));
};

// m <= N values at p widened to float lanes (the missing lanes 0).
template <int N, typename V = typename Lanes<N>::f>
__attribute__((always_inline)) inline V load_bf16_lanes(const uint16_t* p, int m) {
  typename Bf16Lanes<N>::h b{};
  std::memcpy(&b, p, m * sizeof(uint16_t));
  return (V)(__builtin_convertvector(b, typename Bf16Lanes<N>::u) << 16);
}

// v's lanes rounded to bfloat16, each pattern in the low half of a 32-bit
// lane.
template <int N, typename V = typename Lanes<N>::f>
__attribute__((always_inline)) inline typename Bf16Lanes<N>::u round_bf16_lanes(const V& v) {
  using U = typename Bf16Lanes<N>::u;
  using I = typename Lanes<N>::i;
  const U u = (U)v;
  const U rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const I nan = v != v;  // all ones where v is a NaN
  return ((U)nan & 0x7fc0u) | (~(U)nan & rounded);
}

// The first m <= N lanes of v rounded to bfloat16 into p.
template <int N, typename V = typename Lanes<N>::f>
__attribute__((always_inline)) inline void store_bf16_lanes(uint16_t* p, const V& v, int m) {
  const typename Bf16Lanes<N>::h b =
      __builtin_convertvector(round_bf16_lanes<N>(v), typename Bf16Lanes<N>::h);
  std::memcpy(p, &b, m * sizeof(uint16_t));
}

// dst[j] = bf16(src[j]), j < n.
template <int N>
__attribute__((always_inline)) inline void round_row_lanes(const float* __restrict src, int64_t n,
                                                           uint16_t* __restrict dst) {
  for_lanes<N>(n, [&](int64_t j, int m) __attribute__((always_inline)) {
    store_bf16_lanes<N>(dst + j, LaneIo<N>{m}.load(src + j), m);
  });
}

// dst[j] (+)= src[j] widened, j < n.
template <int N>
__attribute__((always_inline)) inline void widen_row_lanes(const uint16_t* __restrict src,
                                                           int64_t n, float* __restrict dst,
                                                           bool accumulate) {
  for_lanes<N>(n, [&](int64_t j, int m) __attribute__((always_inline)) {
    const LaneIo<N> io{m};
    const auto w = load_bf16_lanes<N>(src + j, m);
    io.store(dst + j, accumulate ? io.load(dst + j) + w : w);
  });
}

}  // namespace rnnattn::cpu::kernels

#pragma GCC diagnostic pop

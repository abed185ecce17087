// bf16_bits.h's float32 -> bfloat16 rounding and bf16_lanes.h's row loops
// (bf16_convert.cpp builds them at 8 and 16 lanes) against
// round-to-nearest-even worked out on the values (in double), and the
// widening against the bit pattern: every bfloat16 pattern as the high
// half, with low halves at and around the tie (0x8000) and at the ends, both
// signs; values that round up into infinity, and NaNs whose payload would
// carry into the exponent; rows of every length up to 40 and offsets for
// the ragged tails. And bf16_transpose.h's rounding into rows and their
// transpose at once, plain and (where this CPU runs it) AVX-512, on every
// pattern above laid out in matrices of ragged sizes, and its transpose of
// bfloat16 matrices. Run by
// tests/test_cpu_kernel_widths.py.
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <utility>
#include <cstring>
#include <vector>

#include "bf16_bits.h"
#include "bf16_lanes.h"
#include "bf16_transpose.h"

using rnnattn::cpu::bf16_bits;
using rnnattn::cpu::bf16_value;

static float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// The nearest bfloat16 (ties to even) by comparing distances in double; the
// pattern one above the largest finite one stands for 2^128 (infinity).
static uint16_t reference(uint32_t u) {
  const uint32_t hi = u >> 16, sign = u & 0x80000000u;
  const double f = std::fabs(static_cast<double>(from_bits(u)));
  const double lo = std::fabs(static_cast<double>(from_bits(hi << 16)));
  const uint32_t up_bits = ((hi + 1) << 16) & 0x7fffffffu;
  const double up = up_bits == 0x7f800000u ? std::ldexp(1.0, 128)
                                           : std::fabs(static_cast<double>(from_bits(up_bits | sign)));
  const double dl = f - lo, du = up - f;
  if (dl < du) return static_cast<uint16_t>(hi);
  if (du < dl) return static_cast<uint16_t>(hi + 1);
  return static_cast<uint16_t>(hi % 2 == 0 ? hi : hi + 1);
}

// The rows at N lanes: src rounded in runs of every length up to 40 (the
// ragged tails) and then whole, compared with bf16_bits value by value;
// the widening against the pattern, and adding.
template <int N>
long check_lanes(const std::vector<float>& src, long& checked) {
  long failures = 0;
  std::vector<uint16_t> got(src.size(), 0xdead);
  int64_t at = 0;
  for (int64_t len = 1; len <= 40; ++len, at += len - 1)
    rnnattn::cpu::kernels::round_row_lanes<N>(src.data() + at, len, got.data() + at);
  rnnattn::cpu::kernels::round_row_lanes<N>(src.data() + at, static_cast<int64_t>(src.size()) - at,
                                            got.data() + at);
  for (size_t i = 0; i < src.size(); ++i) {
    ++checked;
    if (got[i] != bf16_bits(src[i]) && failures++ < 10) {
      uint32_t u;
      std::memcpy(&u, &src[i], 4);
      std::printf("FAIL round lanes %d: %08x -> %04x\n", N, u, got[i]);
    }
  }
  std::vector<uint16_t> pattern(0x10000);
  for (uint32_t h = 0; h < 0x10000; ++h) pattern[h] = static_cast<uint16_t>(h);
  std::vector<float> wide(0x10000 + 1, 7.0f), acc(0x10000 + 1, 1.0f);
  rnnattn::cpu::kernels::widen_row_lanes<N>(pattern.data(), 37, wide.data(), false);
  rnnattn::cpu::kernels::widen_row_lanes<N>(pattern.data() + 37, 0x10000 - 37, wide.data() + 37, false);
  rnnattn::cpu::kernels::widen_row_lanes<N>(pattern.data(), 0x10000 - 3, acc.data(), true);
  rnnattn::cpu::kernels::widen_row_lanes<N>(pattern.data() + 0x10000 - 3, 3, acc.data() + 0x10000 - 3, true);
  for (uint32_t h = 0; h < 0x10000; ++h) {
    uint32_t u;
    std::memcpy(&u, &wide[h], 4);
    const float sum = 1.0f + from_bits(h << 16);
    ++checked;
    const bool ok = u == h << 16 && (std::isnan(sum) ? std::isnan(acc[h]) : acc[h] == sum);
    if (!ok && failures++ < 10) std::printf("FAIL widen lanes %d: %04x\n", N, h);
  }
  ++checked;
  if ((wide[0x10000] != 7.0f || acc[0x10000] != 1.0f) && failures++ < 10)
    std::printf("FAIL lanes %d: wrote past the row\n", N);
  return failures;
}

#if RNNATTN_X86_DISPATCH
RNNATTN_TARGET_AVX512 void transpose_avx512(const float* src, int64_t ld_src, int64_t rows,
                                            const rnnattn::cpu::kernels::RoundedPair& o,
                                            int64_t c0, int64_t c1) {
  rnnattn::cpu::kernels::round_with_transpose_avx512(src, ld_src, rows, o, c0, c1);
}
#endif

// The matrix sizes (rows, cols) both transposes are checked on, the guard
// their outputs are filled with, and the two column ranges each is run over
// (16 columns, then the rest, as the parallel caller deals them; one range
// where there are no more than 16).
const int64_t kTransposeSizes[][2] = {{1, 1},   {1, 17},   {31, 16}, {32, 16},
                                      {33, 15}, {64, 48},  {65, 67}, {96, 100},
                                      {7, 250}, {250, 7}, {128, 512}};
constexpr uint16_t kGuard = 0xdead;
std::array<std::pair<int64_t, int64_t>, 2> column_split(int64_t cols) {
  const int64_t split = cols > 16 ? 16 : 0;
  return {{{0, split}, {split, cols}}};
}

// got's first `outer` rows (ld apart) against want(o, i) for i < inner and
// the guard from there to ld: "FAIL <what> <path> <rows>x<cols> at (o, i)".
template <typename Want>
void expect_rows(const uint16_t* got, int64_t outer, int64_t inner, int64_t ld, const Want& want,
                 const char* what, bool avx512, int64_t rows, int64_t cols, long& failures,
                 long& checked) {
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t i = 0; i < ld; ++i) {
      const uint16_t w = i < inner ? want(o, i) : kGuard;
      ++checked;
      if (got[o * ld + i] != w && failures++ < 10)
        std::printf("FAIL %s %s %ldx%ld at (%ld, %ld)\n", what, avx512 ? "avx512" : "plain",
                    long(rows), long(cols), long(o), long(i));
    }
}

// Matrices of rows x cols taken from src (rows ld_src = cols + 3 apart), then
// of values in [-1, 1), rounded into dst (rows cols + 5 apart) and dst_t
// (64-byte aligned, rows rows + 7 apart, or, for the second, a multiple of
// 32 past rows: the streamed stores), their column sums into sums,
// columns [c0, c1) where c0 = 16 (the column split of the parallel
// caller) when cols > 16: every value against bf16_bits, and the padding
// between rows and past the ends untouched.
long check_transpose(const std::vector<float>& src, bool avx512, long& checked) {
  long failures = 0;
  size_t at = 0;
  for (bool line_rows : {false, true})
  for (const auto& sz : kTransposeSizes) {
    const int64_t rows = sz[0], cols = sz[1];
    const int64_t ld_src = cols + 3, ld = cols + 5;
    const int64_t ld_t = line_rows ? (rows + 32) / 32 * 32 : rows + 7;
    // The patterns above; in the second pass values in [-1, 1), whose sums
    // are finite and close to exact.
    std::vector<float> m(rows * ld_src);
    uint32_t next = 7;
    for (float& v : m) {
      next = next * 1103515245u + 12345u;
      v = line_rows ? static_cast<float>(next >> 8) / 8388608.f - 1.f : src[at++ % src.size()];
    }
    std::vector<uint16_t> dst(rows * ld + 1, kGuard), dst_t_store(cols * ld_t + 1 + 32, kGuard);
    uint16_t* dst_t = dst_t_store.data();
    while (reinterpret_cast<uintptr_t>(dst_t) % 64 != 0) ++dst_t;
    // The column sums: added to 0.5 each, against sums in double, within
    // 1e-5 of the largest magnitude summed a row (not compared where not
    // finite: the patterns hold infinities and NaNs).
    std::vector<float> sums(cols + 1, 0.5f);
    const rnnattn::cpu::kernels::RoundedPair o{dst.data(), ld, dst_t, ld_t, sums.data()};
    for (auto [c0, c1] : column_split(cols)) {
#if RNNATTN_X86_DISPATCH
      if (avx512) {
        transpose_avx512(m.data(), ld_src, rows, o, c0, c1);
        continue;
      }
#endif
      rnnattn::cpu::kernels::round_with_transpose_plain(m.data(), ld_src, o, 0, rows, c0, c1);
    }
    auto rounded = [&](int64_t r, int64_t j) { return bf16_bits(m[r * ld_src + j]); };
    expect_rows(dst.data(), rows, cols, ld, rounded, "rows", avx512, rows, cols, failures, checked);
    expect_rows(
        dst_t, cols, rows, ld_t, [&](int64_t j, int64_t r) { return rounded(r, j); }, "transposed",
        avx512, rows, cols, failures, checked);
    for (int64_t j = 0; j < cols; ++j) {
      double want = 0.5, mag = 0.5;
      for (int64_t r = 0; r < rows; ++r) {
        want += m[r * ld_src + j];
        mag = std::fmax(mag, std::fabs(static_cast<double>(m[r * ld_src + j])));
      }
      ++checked;
      if (std::isfinite(want) && std::isfinite(mag) &&
          !(std::fabs(sums[j] - want) <= 1e-5 * mag * rows) && failures++ < 10)
        std::printf("FAIL sums %s %ldx%ld column %ld: %g, want %g\n", avx512 ? "avx512" : "plain",
                    long(rows), long(cols), long(j), double(sums[j]), want);
    }
    ++checked;
    if ((dst.back() != kGuard || dst_t[cols * ld_t] != kGuard || sums[cols] != 0.5f) &&
        failures++ < 10)
      std::printf("FAIL transpose %ldx%ld: wrote past the end\n", long(rows), long(cols));
  }
  return failures;
}

#if RNNATTN_X86_DISPATCH
RNNATTN_TARGET_AVX512 void transpose_bf16_avx512(const uint16_t* src, int64_t ld_src,
                                                 int64_t rows, uint16_t* dst_t, int64_t ld_t,
                                                 int64_t c0, int64_t c1) {
  rnnattn::cpu::kernels::transpose_bf16_avx512(src, ld_src, rows, dst_t, ld_t, c0, c1);
}
#endif

// bf16_transpose.h's transpose of bfloat16 matrices (no rounding), plain and
// AVX-512, on the same sizes and paddings as check_transpose: every
// pattern moved to its place, nothing written in the padding.
long check_bf16_transpose(bool avx512, long& checked) {
  long failures = 0;
  uint32_t next = 1;
  for (const auto& sz : kTransposeSizes) {
    const int64_t rows = sz[0], cols = sz[1];
    const int64_t ld_src = cols + 3, ld_t = rows + 7;
    std::vector<uint16_t> m(rows * ld_src);
    for (uint16_t& v : m) {
      next = next * 1103515245u + 12345u;
      v = static_cast<uint16_t>(next >> 7);
    }
    std::vector<uint16_t> dst_t(cols * ld_t + 1, kGuard);
    for (auto [c0, c1] : column_split(cols)) {
#if RNNATTN_X86_DISPATCH
      if (avx512) {
        transpose_bf16_avx512(m.data(), ld_src, rows, dst_t.data(), ld_t, c0, c1);
        continue;
      }
#endif
      rnnattn::cpu::kernels::transpose_bf16_plain(m.data(), ld_src, dst_t.data(), ld_t, 0, rows,
                                                  c0, c1);
    }
    expect_rows(
        dst_t.data(), cols, rows, ld_t, [&](int64_t j, int64_t r) { return m[r * ld_src + j]; },
        "bf16 transpose", avx512, rows, cols, failures, checked);
    ++checked;
    if (dst_t.back() != kGuard && failures++ < 10)
      std::printf("FAIL bf16 transpose %ldx%ld: wrote past the end\n", long(rows), long(cols));
  }
  return failures;
}

int main() {
  const uint32_t lows[] = {0x0000, 0x0001, 0x4000, 0x7ffe, 0x7fff, 0x8000, 0x8001, 0xc000, 0xfffe, 0xffff};
  long failures = 0, checked = 0;
  std::vector<float> src;
  for (uint32_t hi = 0; hi < 0x10000; ++hi)
    for (uint32_t lo : lows) src.push_back(from_bits(hi << 16 | lo));
  for (size_t i = 0; i < src.size(); ++i) {
    uint32_t u;
    std::memcpy(&u, &src[i], 4);
    const uint16_t got = bf16_bits(src[i]);
    const bool nan = std::isnan(src[i]);
    const bool ok = nan ? (got & 0x7f80) == 0x7f80 && (got & 0x7f) != 0 : got == reference(u);
    ++checked;
    if (!ok && failures++ < 10) std::printf("FAIL round %08x -> %04x\n", u, got);
  }
  // Widening: exact.
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float one = bf16_value(static_cast<uint16_t>(h));
    uint32_t v;
    std::memcpy(&v, &one, 4);
    ++checked;
    if (v != h << 16 && failures++ < 10) std::printf("FAIL widen %04x\n", h);
  }
  failures += check_lanes<8>(src, checked);
  failures += check_lanes<16>(src, checked);
  failures += check_transpose(src, false, checked);
  failures += check_bf16_transpose(false, checked);
#if RNNATTN_X86_DISPATCH
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
    failures += check_transpose(src, true, checked);
    failures += check_bf16_transpose(true, checked);
  } else {
    std::printf("(AVX-512 transpose not run: this CPU lacks AVX-512)\n");
  }
#endif
  if (failures) {
    std::printf("%ld of %ld failed\n", failures, checked);
    return 1;
  }
  std::printf("all passed (%ld values)\n", checked);
  return 0;
}

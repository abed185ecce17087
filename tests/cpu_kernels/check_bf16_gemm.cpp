// small_gemm_bf16's kernel (csrc/cpu/small_gemm_bf16_kernels.h) against the
// same product in double on the bfloat16-rounded operands, over shapes
// that hit every block, mask and slice: m 1..19 (8-row blocks and every
// leftover block), k odd and even (the last pair's zero half; past 256,
// several slices of pairs), n not a multiple of 16 (the masked last
// vector) and past 48 (several panels), dense and strided rows, with and
// without accumulation; every value of Y outside the m x n block must be
// untouched. Where the CPU has AMX-BF16 (and Linux grants the tiles), the
// same cases run again on the AMX kernel (small_gemm_amx_kernels.h), with
// more rows: 16-row tiles, and the rows, pairs and columns past the whole
// tiles on the AVX-512 loops. Run by tests/test_cpu_kernel_widths.py;
// prints "skipped" on a CPU without AVX512-BF16.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "small_gemm_amx_kernels.h"
#include "small_gemm_bf16_kernels.h"

using rnnattn::cpu::Ld;

static uint16_t to_bf16(float f) {  // round to nearest even (no NaNs here)
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
static double from_bf16(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

#if RNNATTN_BF16_GEMM_BUILT
RNNATTN_TARGET_AVX512BF16 static void run(const float* X, const uint32_t* B, float* Y,
                                          const Ld& ld, int64_t m, int64_t k, int64_t n,
                                          bool acc, uint32_t* xp) {
  rnnattn::cpu::bf16_kernels::gemm(X, B, Y, ld, m, k, n, acc, xp);
}
#endif
#if RNNATTN_AMX_GEMM_BUILT
RNNATTN_TARGET_AMX static void run_amx(const float* X, const uint32_t* B, float* Y, const Ld& ld,
                                       int64_t m, int64_t k, int64_t n, bool acc, uint32_t* xp) {
  rnnattn::cpu::amx_kernels::gemm(X, B, Y, ld, m, k, n, acc, xp);
}
#endif

int main() {
#if !RNNATTN_BF16_GEMM_BUILT
  std::printf("skipped: not an x86-64 GCC/Clang build\n");
  return 0;
#else
  if (!__builtin_cpu_supports("avx512bf16") || !__builtin_cpu_supports("avx512bw") ||
      !__builtin_cpu_supports("avx512vl") || !__builtin_cpu_supports("avx512dq")) {
    std::printf("skipped: this CPU has no AVX512-BF16\n");
    return 0;
  }
  std::mt19937 gen(7);
  std::normal_distribution<float> nd(0.f, 1.f);
  int cases = 0, failures = 0;
  bool amx = false;
#if RNNATTN_AMX_GEMM_BUILT
  amx = rnnattn::cpu::amx_kernels::tiles_granted();
#endif
  std::printf("AMX kernel: %s\n", amx ? "checked" : "not run (no AMX-BF16 here)");
  const int64_t ms[] = {1, 2, 3, 5, 7, 8, 9, 15, 16, 19, 32, 37};
  const int64_t ks[] = {1, 2, 7, 16, 33, 64, 129, 300, 517};  // 300, 517: slices of pairs
  const int64_t ns[] = {1, 5, 16, 17, 33, 48, 49, 100, 150};
  for (int64_t m : ms)
    for (int64_t k : ks)
      for (int64_t n : ns)
        for (int strided = 0; strided < 2; ++strided)
          for (int acc = 0; acc < 2; ++acc)
            for (int tiles = 0; tiles < 1 + amx; ++tiles) {
            const Ld ld{k + 3 * strided, n + 5 * strided, n + 7 * strided};
            const int64_t kp = (k + 1) / 2;
            std::vector<float> X(m * ld.x), Y(m * ld.y + 16);
            for (auto& v : X) v = nd(gen);
            for (auto& v : Y) v = nd(gen);
            std::vector<uint16_t> W(n * k);  // B^T, as W_hh is stored
            for (auto& v : W) v = to_bf16(nd(gen));
            std::vector<uint32_t> Bp(kp * ld.b + 16, 0xdeadbeef);
            for (int64_t q = 0; q < kp; ++q)
              for (int64_t j = 0; j < n; ++j)
                Bp[q * ld.b + j] = W[j * k + 2 * q] |
                                   (2 * q + 1 < k ? static_cast<uint32_t>(W[j * k + 2 * q + 1]) << 16 : 0u);
            const std::vector<float> Y0 = Y;
            std::vector<uint32_t> xp(m * kp);
#if RNNATTN_AMX_GEMM_BUILT
            if (tiles) run_amx(X.data(), Bp.data(), Y.data(), ld, m, k, n, acc, xp.data());
            else
#endif
              run(X.data(), Bp.data(), Y.data(), ld, m, k, n, acc, xp.data());
            ++cases;
            bool ok = true;
            for (int64_t i = 0; i < m && ok; ++i)
              for (int64_t j = 0; j < ld.y && ok; ++j) {
                const float got = Y[i * ld.y + j];
                if (j >= n) {
                  ok = std::memcmp(&got, &Y0[i * ld.y + j], 4) == 0;
                  continue;
                }
                double want = acc ? Y0[i * ld.y + j] : 0.0, mag = std::fabs(want);
                for (int64_t p = 0; p < k; ++p) {
                  const double t = from_bf16(to_bf16(X[i * ld.x + p])) * from_bf16(W[j * k + p]);
                  want += t;
                  mag += std::fabs(t);
                }
                ok = std::fabs(got - want) <= 4e-7 * (k + 1) * mag + 1e-30;
              }
            for (size_t j = m * ld.y; j < Y.size() && ok; ++j) ok = Y[j] == Y0[j];
            if (!ok) {
              ++failures;
              std::printf("FAIL %s m=%ld k=%ld n=%ld strided=%d acc=%d\n", tiles ? "amx" : "avx512",
                          (long)m, (long)k, (long)n, strided, acc);
            }
          }
  std::printf("%d cases, %d failed\n", cases, failures);
  if (failures == 0) std::printf("all passed\n");
  return failures ? 1 : 0;
#endif
}

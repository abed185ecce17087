#include "small_gemm_bf16.h"

#include <vector>

#include <c10/util/Exception.h>

#include "isa.h"
#include "small_gemm_amx_kernels.h"
#include "small_gemm_bf16_kernels.h"

namespace rnnattn::cpu {

bool bf16_small_gemm_available() {
#if RNNATTN_BF16_GEMM_BUILT && RNNATTN_X86_DISPATCH
  static const bool ok = cpu_isa() == Isa::kAvx512 && __builtin_cpu_supports("avx512bf16");
  return ok;
#else
  return false;
#endif
}

bool amx_bf16_available() {
#if RNNATTN_AMX_GEMM_BUILT && RNNATTN_X86_DISPATCH
  // RNNATTN_CPU_ISA naming any level below "amx" turns the tiles off.
  static const bool ok = !requested_cpu_isa().has_value() && bf16_small_gemm_available() &&
                         amx_kernels::tiles_granted();
  return ok;
#else
  return false;
#endif
}

const char* cpu_isa_path_name() { return amx_bf16_available() ? "amx" : isa_name(cpu_isa()); }

void pack_bf16_pairs(const uint16_t* src, int64_t k, int64_t n, int64_t sk, int64_t sn,
                     uint32_t* out) {
  const int64_t kp = (k + 1) / 2;
  for (int64_t q = 0; q < kp; ++q)
    for (int64_t j = 0; j < n; ++j) {
      const uint32_t lo = src[2 * q * sk + j * sn];
      const uint32_t hi = 2 * q + 1 < k ? src[(2 * q + 1) * sk + j * sn] : 0;
      out[q * n + j] = lo | hi << 16;
    }
}

#if RNNATTN_BF16_GEMM_BUILT
namespace {
RNNATTN_TARGET_AVX512BF16 void gemm_bf16_avx512(const float* X, const uint32_t* B, float* Y,
                                                const Ld& ld, int64_t m, int64_t k, int64_t n,
                                                bool accumulate, uint32_t* xp) {
  bf16_kernels::gemm(X, B, Y, ld, m, k, n, accumulate, xp);
}
#if RNNATTN_AMX_GEMM_BUILT
RNNATTN_TARGET_AMX void gemm_bf16_amx(const float* X, const uint32_t* B, float* Y, const Ld& ld,
                                      int64_t m, int64_t k, int64_t n, bool accumulate,
                                      uint32_t* xp) {
  amx_kernels::gemm(X, B, Y, ld, m, k, n, accumulate, xp);
}
#endif
}  // namespace
#endif

void small_gemm_bf16(const float* X, const uint32_t* B, float* Y, int64_t m, int64_t k,
                     int64_t n, bool accumulate, Ld ld) {
  TORCH_CHECK(bf16_small_gemm_available(), "rnnattn: small_gemm_bf16 needs AVX512-BF16");
  if (m <= 0 || n <= 0) return;
  ld = ld.or_dense(k, n);
  // X's rows in bfloat16, per thread: grown once, not per step.
  thread_local std::vector<uint32_t> xp;
  const size_t need = static_cast<size_t>(m * ((k + 1) / 2));
  if (xp.size() < need) xp.resize(need);
#if RNNATTN_AMX_GEMM_BUILT
  if (m >= kAmxMinRows && amx_bf16_available())
    return gemm_bf16_amx(X, B, Y, ld, m, k, n, accumulate, xp.data());
#endif
#if RNNATTN_BF16_GEMM_BUILT
  gemm_bf16_avx512(X, B, Y, ld, m, k, n, accumulate, xp.data());
#endif
}

}  // namespace rnnattn::cpu

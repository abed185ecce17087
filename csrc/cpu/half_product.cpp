#include "half_product.h"

#include <ATen/Parallel.h>

#include <algorithm>

#include "bf16_bits.h"
#include "isa.h"

namespace rnnattn::cpu {
namespace {

// Columns [q0, q0 + W) of rows [i, i + R) of C: the sums over the terms'
// rows j of S(i', j) B_j, in R x W floats the compiler keeps in registers
// (a row of sums in memory made every multiply-add wait on the store
// before; R rows share each load of B's), rounded into C. Inlined into each
// ISA's build below, whose compiler widens the loops over the block. No
// loop bound but R and W, so that the block stays in registers.
template <int R, int W>
__attribute__((always_inline)) inline void product_block(uint16_t* c, int64_t ldc, int64_t i,
                                                         int64_t q0, const Bf16Term* terms,
                                                         int64_t nterms) {
  float acc[R][W] = {};
  for (int64_t t = 0; t < nterms; ++t) {
    const Bf16Term& tm = terms[t];
    for (int64_t j = 0; j < tm.k; ++j) {
      const uint16_t* b = tm.b + j * tm.ldb + q0;
      float bv[W];
      for (int q = 0; q < W; ++q) bv[q] = bf16_value(b[q]);
      for (int r = 0; r < R; ++r) {
        const float a = bf16_value(tm.s[(i + r) * tm.si + j * tm.sj]);
        for (int q = 0; q < W; ++q) acc[r][q] += a * bv[q];
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int q = 0; q < W; ++q) c[(i + r) * ldc + q0 + q] = bf16_bits(acc[r][q]);
}

// Columns [q0, q0 + w), w < 8, of row i.
__attribute__((always_inline)) inline void product_tail(uint16_t* c, int64_t ldc, int64_t i,
                                                        int64_t q0, int64_t w,
                                                        const Bf16Term* terms, int64_t nterms) {
  float acc[8] = {};
  for (int64_t t = 0; t < nterms; ++t) {
    const Bf16Term& tm = terms[t];
    for (int64_t j = 0; j < tm.k; ++j) {
      const float a = bf16_value(tm.s[i * tm.si + j * tm.sj]);
      const uint16_t* b = tm.b + j * tm.ldb + q0;
      for (int64_t q = 0; q < w; ++q) acc[q] += a * bf16_value(b[q]);
    }
  }
  for (int64_t q = 0; q < w; ++q) c[i * ldc + q0 + q] = bf16_bits(acc[q]);
}

// Rows [i, i + R) of C, all columns: blocks of 64, 32, 16 and 8, then the tail.
template <int R>
__attribute__((always_inline)) inline void product_row_block(uint16_t* c, int64_t ldc, int64_t i,
                                                             int64_t n, const Bf16Term* t,
                                                             int64_t nt) {
  int64_t q0 = 0;
  for (; q0 + 64 <= n; q0 += 64) product_block<R, 64>(c, ldc, i, q0, t, nt);
  if (q0 + 32 <= n) product_block<R, 32>(c, ldc, i, q0, t, nt), q0 += 32;
  if (q0 + 16 <= n) product_block<R, 16>(c, ldc, i, q0, t, nt), q0 += 16;
  if (q0 + 8 <= n) product_block<R, 8>(c, ldc, i, q0, t, nt), q0 += 8;
  if (q0 < n)
    for (int r = 0; r < R; ++r) product_tail(c, ldc, i + r, q0, n - q0, t, nt);
}

__attribute__((always_inline)) inline void product_rows(uint16_t* c, int64_t ldc, int64_t i0,
                                                        int64_t i1, int64_t n,
                                                        const Bf16Term* t, int64_t nt) {
  int64_t i = i0;
  for (; i + 4 <= i1; i += 4) product_row_block<4>(c, ldc, i, n, t, nt);
  for (; i < i1; ++i) product_row_block<1>(c, ldc, i, n, t, nt);
}

void rows_base(uint16_t* c, int64_t ldc, int64_t i0, int64_t i1, int64_t n, const Bf16Term* t,
               int64_t nt) {
  product_rows(c, ldc, i0, i1, n, t, nt);
}
#if RNNATTN_X86_DISPATCH
// Only the AVX-512 build beside the baseline: its callers run only where
// the bfloat16 steps do, which need AVX-512 (half.h bf16_steps).
RNNATTN_TARGET_AVX512 void rows_avx512(uint16_t* c, int64_t ldc, int64_t i0, int64_t i1,
                                       int64_t n, const Bf16Term* t, int64_t nt) {
  product_rows(c, ldc, i0, i1, n, t, nt);
}
#endif

}  // namespace

void bf16_product(uint16_t* c, int64_t ldc, int64_t m, int64_t n,
                  std::initializer_list<Bf16Term> terms) {
  const Bf16Term* t = terms.begin();
  const int64_t nt = static_cast<int64_t>(terms.size());
  int64_t work = 0;
  for (const Bf16Term& x : terms) work += x.k * n;
  // 256K multiply-adds or more a task: a product of few rows runs on one thread
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 18) / std::max<int64_t>(work, 1));
  at::parallel_for(0, m, grain, [&](int64_t i0, int64_t i1) {
#if RNNATTN_X86_DISPATCH
    if (cpu_isa() == Isa::kAvx512) return rows_avx512(c, ldc, i0, i1, n, t, nt);
#endif
    rows_base(c, ldc, i0, i1, n, t, nt);
  });
}

}  // namespace rnnattn::cpu

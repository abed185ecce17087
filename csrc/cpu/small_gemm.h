// Y (m x n) = [Y +] X (m x k) @ B (k x n), all row-major: the
// recurrent GEMM of one time step, for steps too small to pay for a BLAS call.
//
// At rows*H*H below ~2^19 multiply-adds a step, the fixed cost of a BLAS call
// (argument checks, threading decision, packing) is larger than the
// arithmetic, and nn.RNN pays the dispatcher on top of it. This kernel keeps
// a block of Y in registers (6 rows x 2 vectors; under 6 rows, 3 x 4) while
// it streams the rows of B, so each loaded vector of B feeds several FMAs and
// Y is touched once per block; it walks B in panels of 2 vectors x an
// L1-sized slice of k, each re-read from L1 by every row block; ragged widths
// use narrower vector blocks, then a scalar tail.
// Built for AVX-512, AVX2+FMA and baseline x86-64, chosen at run time (isa.h).
#pragma once

#include <cstdint>

namespace rnnattn::cpu {

// Steps with at most this many multiply-adds (rows * H * H) use small_gemm.
constexpr int64_t kSmallGemmMaxWork = int64_t(1) << 19;

// Leading dimensions (row strides) of X, B and Y; 0 means dense (k, n, n).
// A cell's gates are column blocks of wider rows (csrc/cpu/recurrence.h).
struct Ld {
  int64_t x = 0, b = 0, y = 0;
  Ld or_dense(int64_t k, int64_t n) const { return {x ? x : k, b ? b : n, y ? y : n}; }
  // The same for small_gemm_nt, whose W has rows of k values.
  Ld or_dense_nt(int64_t k, int64_t n) const { return {x ? x : k, b ? b : k, y ? y : n}; }
};

void small_gemm(const float* X, const float* B, float* Y, int64_t m, int64_t k, int64_t n,
                bool accumulate, Ld ld = {});
void small_gemm(const double* X, const double* B, double* Y, int64_t m, int64_t k, int64_t n,
                bool accumulate, Ld ld = {});

// Y (m x n) = [Y +] X (m x k) @ W^T with W (n x k) row-major (ld.b: W's row
// stride, dense k): the same product read from W_hh as stored. For calls of
// a row or two in all (a streaming step), where transposing W_hh into
// small_gemm's layout would cost more than the products themselves.
void small_gemm_nt(const float* X, const float* W, float* Y, int64_t m, int64_t k, int64_t n,
                   bool accumulate, Ld ld = {});
void small_gemm_nt(const double* X, const double* W, double* Y, int64_t m, int64_t k, int64_t n,
                   bool accumulate, Ld ld = {});

}  // namespace rnnattn::cpu

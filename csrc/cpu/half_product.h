// Products of few rows in bfloat16 in plain loops, without a library GEMM:
// the whole-sequence GEMMs of a bfloat16 backward below oneDNN's size
// (half_layer.h whole_sequence_gemms).
//
// Why: there ATen's bfloat16 GEMM (and mkldnn_matmul) first copy their
// operands, to float32 or to a compact layout (at (100 x 192)^T (100 x 32):
// 59-106 KiB of tensors), and those copies, not the call's own tensors, set
// the peak of a backward of few rows: GRU (1,100,32,64) bfloat16 fwd+bwd
// 0.251 MiB through them, torch's module 0.213. These loops allocate
// nothing, keep their sums in registers, and run at AVX-512's width where
// the CPU has it (isa.h; the bfloat16 steps that lead here need it).
#pragma once

#include <cstdint>
#include <initializer_list>

namespace rnnattn::cpu {

// k rows of a product's sum: S (m x k), S(i, j) at s[i * si + j * sj], times
// B (k x n), rows ldb apart; bfloat16 bits.
struct Bf16Term {
  const uint16_t* s;
  int64_t si, sj;
  const uint16_t* b;
  int64_t ldb;
  int64_t k;
};

// C (m x n, bfloat16 bits, rows ldc apart) = the sum of the terms' S B, in
// float32, rounded once (to nearest even). Each row of C is a float32 row
// of sums over the terms' rows of B, scaled: the inner loop runs along B's
// contiguous row. Rows of C are split across threads.
void bf16_product(uint16_t* c, int64_t ldc, int64_t m, int64_t n,
                  std::initializer_list<Bf16Term> terms);

}  // namespace rnnattn::cpu

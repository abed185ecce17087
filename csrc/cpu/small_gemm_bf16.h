// The small steps' recurrent GEMM of a bfloat16 call in bfloat16 arithmetic:
// Y (m x n, float) = [Y +] bf16(X) (m x k) @ B, with B = W_hh^T held as
// bfloat16 pairs, on CPUs with AVX512-BF16 (VDPBF16PS: 32 multiply-adds an
// instruction, twice float32's FMA). The products of bfloat16 values are
// exact in float32 and are summed in float32: the only rounding beyond the
// float32 kernel's is X's (the state h_{t-1}, which the call's output
// stores in bfloat16 anyway, as torch's own bfloat16 modules use it).
//
// On CPUs with AMX-BF16 the same product runs on the AMX tiles from
// kAmxMinRows rows (small_gemm_amx_kernels.h: the packed X rows and B's
// pairs are the tiles' layouts as they are).
//
// B's layout, "pairs": element (q, j) of a ((k + 1) / 2) x n array of
// uint32 holds B[2q][j] in its low half and B[2q + 1][j] (0 past k) in its
// high half, the operand order VDPBF16PS reads.
#pragma once

#include <cstdint>

#include "small_gemm.h"

namespace rnnattn::cpu {

// Whether this CPU (and RNNATTN_CPU_ISA, which must allow AVX-512) runs
// small_gemm_bf16.
bool bf16_small_gemm_available();

// Whether small_gemm_bf16 multiplies on AMX tiles (small_gemm_amx_kernels.h)
// from kAmxMinRows rows: a CPU with AMX-BF16 whose OS grants the process
// the tile state, unless RNNATTN_CPU_ISA names a level below "amx" (its
// "avx512" keeps VDPBF16PS; tests run both). Read once.
bool amx_bf16_available();
constexpr int64_t kAmxMinRows = 2;

// The CPU kernels' path for the benchmark's header and rnnattn._C.cpu_isa():
// "amx" where amx_bf16_available(), else isa.h's level.
const char* cpu_isa_path_name();

// The pairs of a k x n matrix B of bfloat16 bits whose element (p, j) is
// at src[p * sk + j * sn]: out is ((k + 1) / 2) x n. W_hh^T from W_hh as
// stored (the forward): sk = 1, sn = Hs; W_hh itself (the backward):
// sk = Hs, sn = 1.
void pack_bf16_pairs(const uint16_t* src, int64_t k, int64_t n, int64_t sk, int64_t sn,
                     uint32_t* out);

// ld.x, ld.y: row strides of X and Y in floats; ld.b: of B's pairs in
// uint32 (0: dense). Only where bf16_small_gemm_available().
void small_gemm_bf16(const float* X, const uint32_t* B, float* Y, int64_t m, int64_t k,
                     int64_t n, bool accumulate, Ld ld = {});

}  // namespace rnnattn::cpu

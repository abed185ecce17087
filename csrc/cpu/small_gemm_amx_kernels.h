// small_gemm_bf16's product on AMX tiles (Intel Xeon from Sapphire Rapids
// on): the same Y [+]= bf16(X) @ B on the same operands, where the CPU has
// AMX-BF16. Included by small_gemm_bf16.cpp and by
// tests/cpu_kernels/check_bf16_gemm.cpp; its functions are always_inline
// into functions built for the AMX target.
//
// One TDPBF16PS multiplies a tile of R rows x 16 pairs of X (R x 32
// bfloat16) by a tile of 16 pairs x 16 columns of B, 512 multiply-adds a
// row, into a tile of R x 16 float32 sums: at 16 rows, 8 times VDPBF16PS's
// multiply-adds a cycle. X's rows packed by pack_rows are an A tile's
// layout as they are, and B's pairs (small_gemm_bf16.h) a B tile's.
//
// Tiles: 0-3 hold the sums of 4 column blocks (64 columns) of R rows, 4
// the block of X, 5-7 the blocks of B (three, so that loading one does not
// wait on the product still reading another). The tiles cover whole tiles
// only: rows [0, mA) (mA a multiple of R = min(m, 16)), columns [0, n16)
// (n16 a multiple of 16) and pairs [0, kq) (kq a multiple of 16); the rest
// (the last pairs, columns and rows) goes to the AVX-512 loops on the same
// packed rows, so no tile reads or writes past the operands.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "small_gemm_bf16_kernels.h"

#if RNNATTN_BF16_GEMM_BUILT && (defined(__clang__) || __GNUC__ >= 11)
#define RNNATTN_TARGET_AMX                                                                  \
  __attribute__((target("amx-tile,amx-bf16,avx512f,avx512vl,avx512dq,avx512bw,avx512bf16," \
                        "avx2,fma")))
#define RNNATTN_AMX_GEMM_BUILT 1
#else
#define RNNATTN_AMX_GEMM_BUILT 0
#endif

#if RNNATTN_AMX_GEMM_BUILT
namespace rnnattn::cpu::amx_kernels {

// Linux hands a process the AMX tile state (8 KiB more to save on each
// switch) only when it asks (arch_prctl ARCH_REQ_XCOMP_PERM for
// XTILEDATA); a tile instruction before that is killed with SIGILL. The
// grant is for the whole process, and asking again is harmless (oneDNN
// asks too before its own AMX kernels). Whether this CPU has the tiles and
// the process may use them.
inline bool tiles_granted() {
#if defined(__linux__) && defined(SYS_arch_prctl)
  constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return __builtin_cpu_supports("amx-tile") && __builtin_cpu_supports("amx-bf16") &&
         syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;
#endif
}

// LDTILECFG's operand: palette 1, each tile's rows and bytes a row.
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// GCC's tile intrinsics are asm statements that tell the compiler of no
// memory they read (LDTILECFG names 8 of its 64 bytes, TILELOADD none):
// this makes every store before it (the config, X's packed rows) land
// first.
__attribute__((always_inline)) inline void memory_barrier() {
  __asm__ __volatile__("" ::: "memory");
}

// The tiles for blocks of R rows: 4 sums (R x 16 floats), X's block (R x 16
// pairs), 3 of B (16 pairs x 16 columns).
RNNATTN_TARGET_AMX __attribute__((always_inline)) inline void configure(int R) {
  TileConfig c;
  for (int t = 0; t < 5; ++t) {
    c.rows[t] = static_cast<uint8_t>(R);
    c.colsb[t] = 64;
  }
  for (int t = 5; t < 8; ++t) {
    c.rows[t] = 16;
    c.colsb[t] = 64;
  }
  memory_barrier();
  _tile_loadconfig(&c);
}

// The sums of NT column blocks of R rows over pairs [0, kq): xp's rows kp
// pairs apart; B's rows ldb uint32 apart; Y's rows ldy floats apart.
template <int NT>
RNNATTN_TARGET_AMX __attribute__((always_inline)) inline void block(
    const uint32_t* xp, int64_t kp, int64_t kq, const uint32_t* B, int64_t ldb, float* Y,
    int64_t ldy, bool accumulate) {
  const int64_t sy = ldy * 4, sx = kp * 4, sb = ldb * 4;  // strides in bytes
  if (accumulate) {
    _tile_loadd(0, Y, sy);
    if constexpr (NT > 1) _tile_loadd(1, Y + 16, sy);
    if constexpr (NT > 2) _tile_loadd(2, Y + 32, sy);
    if constexpr (NT > 3) _tile_loadd(3, Y + 48, sy);
  } else {
    _tile_zero(0);
    if constexpr (NT > 1) _tile_zero(1);
    if constexpr (NT > 2) _tile_zero(2);
    if constexpr (NT > 3) _tile_zero(3);
  }
  for (int64_t q = 0; q < kq; q += 16) {
    const uint32_t* b = B + q * ldb;
    _tile_loadd(4, xp + q, sx);
    _tile_loadd(5, b, sb);
    _tile_dpbf16ps(0, 4, 5);
    if constexpr (NT > 1) {
      _tile_loadd(6, b + 16, sb);
      _tile_dpbf16ps(1, 4, 6);
    }
    if constexpr (NT > 2) {
      _tile_loadd(7, b + 32, sb);
      _tile_dpbf16ps(2, 4, 7);
    }
    if constexpr (NT > 3) {
      _tile_loadd(5, b + 48, sb);
      _tile_dpbf16ps(3, 4, 5);
    }
  }
  _tile_stored(0, Y, sy);
  if constexpr (NT > 1) _tile_stored(1, Y + 16, sy);
  if constexpr (NT > 2) _tile_stored(2, Y + 32, sy);
  if constexpr (NT > 3) _tile_stored(3, Y + 48, sy);
}

// Y [+]= bf16(X) @ B, as bf16_kernels::gemm; xp: scratch of m * ((k + 1) /
// 2) uint32. The tiles' state is released before returning, so a thread
// keeps none between calls (oneDNN's AMX kernels configure their own).
RNNATTN_TARGET_AMX __attribute__((always_inline)) inline void gemm(
    const float* X, const uint32_t* B, float* Y, const Ld& ld, int64_t m, int64_t k, int64_t n,
    bool accumulate, uint32_t* xp) {
  const int64_t kp = (k + 1) / 2;
  bf16_kernels::pack_rows(X, ld.x, m, k, xp);
  const int64_t R = std::min<int64_t>(m, 16);
  const int64_t mA = m / R * R, n16 = n / 16 * 16, kq = kp / 16 * 16;
  if (kq == 0 || n16 == 0)
    return bf16_kernels::gemm_packed(xp, kp, 0, kp, B, ld.b, Y, ld.y, m, n, accumulate);
  configure(static_cast<int>(R));
  memory_barrier();
  // Columns outer: a group's B (64 columns x kq pairs, 256 bytes a pair)
  // is re-read from L2 by each row block, not from memory.
  for (int64_t j = 0; j < n16; j += 64)
    for (int64_t i = 0; i < mA; i += R) {
      const uint32_t* x = xp + i * kp;
      float* y = Y + i * ld.y + j;
      switch (std::min<int64_t>(4, (n16 - j) / 16)) {
        case 4: block<4>(x, kp, kq, B + j, ld.b, y, ld.y, accumulate); break;
        case 3: block<3>(x, kp, kq, B + j, ld.b, y, ld.y, accumulate); break;
        case 2: block<2>(x, kp, kq, B + j, ld.b, y, ld.y, accumulate); break;
        default: block<1>(x, kp, kq, B + j, ld.b, y, ld.y, accumulate); break;
      }
    }
  _tile_release();
  memory_barrier();
  // The pairs past kq on the tiles' rows and columns (added), then the
  // columns past n16 and the rows past mA whole.
  if (kq < kp) bf16_kernels::gemm_packed(xp, kp, kq, kp, B, ld.b, Y, ld.y, mA, n16, true);
  if (n16 < n)
    bf16_kernels::gemm_packed(xp, kp, 0, kp, B + n16, ld.b, Y + n16, ld.y, mA, n - n16, accumulate);
  if (mA < m)
    bf16_kernels::gemm_packed(xp + mA * kp, kp, 0, kp, B, ld.b, Y + mA * ld.y, ld.y, m - mA, n, accumulate);
}

}  // namespace rnnattn::cpu::amx_kernels
#endif

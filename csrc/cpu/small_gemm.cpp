// See small_gemm.h; the loops are in small_gemm_kernels.h. One build per ISA
// level (isa.h): 32-byte vectors for the baseline and AVX2 builds, 64-byte
// vectors for AVX-512.
#include "small_gemm.h"

#include "isa.h"
#include "small_gemm_kernels.h"

// GCC reports the vectors passed by value inside the kernels (never across
// a call: they are always_inline) once more at the end of this file.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace rnnattn::cpu {
namespace {

using kernels::small_gemm_impl;
using kernels::small_gemm_nt_impl;

template <typename T>
RNNATTN_TARGET_AVX2 void gemm_avx2(const T* X, const T* B, T* Y, const Ld& ld, int64_t m,
                                   int64_t k, int64_t n, bool accumulate) {
  small_gemm_impl<T, 32>(X, B, Y, ld, m, k, n, accumulate);
}
template <typename T>
RNNATTN_TARGET_AVX512 void gemm_avx512(const T* X, const T* B, T* Y, const Ld& ld, int64_t m,
                                       int64_t k, int64_t n, bool accumulate) {
  small_gemm_impl<T, 64>(X, B, Y, ld, m, k, n, accumulate);
}
template <typename T>
RNNATTN_TARGET_AVX2 void gemm_nt_avx2(const T* X, const T* W, T* Y, const Ld& ld, int64_t m,
                                      int64_t k, int64_t n, bool accumulate) {
  small_gemm_nt_impl<T, 32>(X, W, Y, ld, m, k, n, accumulate);
}
template <typename T>
RNNATTN_TARGET_AVX512 void gemm_nt_avx512(const T* X, const T* W, T* Y, const Ld& ld, int64_t m,
                                          int64_t k, int64_t n, bool accumulate) {
  small_gemm_nt_impl<T, 64>(X, W, Y, ld, m, k, n, accumulate);
}

template <typename T>
void dispatch(const T* X, const T* B, T* Y, const Ld& ld, int64_t m, int64_t k, int64_t n,
              bool accumulate) {
  switch (cpu_isa()) {
    case Isa::kAvx512: return gemm_avx512(X, B, Y, ld, m, k, n, accumulate);
    case Isa::kAvx2: return gemm_avx2(X, B, Y, ld, m, k, n, accumulate);
    default: return small_gemm_impl<T, 32>(X, B, Y, ld, m, k, n, accumulate);
  }
}

template <typename T>
void dispatch_nt(const T* X, const T* W, T* Y, const Ld& ld, int64_t m, int64_t k, int64_t n,
                 bool accumulate) {
  switch (cpu_isa()) {
    case Isa::kAvx512: return gemm_nt_avx512(X, W, Y, ld, m, k, n, accumulate);
    case Isa::kAvx2: return gemm_nt_avx2(X, W, Y, ld, m, k, n, accumulate);
    default: return small_gemm_nt_impl<T, 32>(X, W, Y, ld, m, k, n, accumulate);
  }
}

}  // namespace

void small_gemm_nt(const float* X, const float* W, float* Y, int64_t m, int64_t k, int64_t n,
                   bool accumulate, Ld ld) {
  dispatch_nt(X, W, Y, ld.or_dense_nt(k, n), m, k, n, accumulate);
}

void small_gemm_nt(const double* X, const double* W, double* Y, int64_t m, int64_t k, int64_t n,
                   bool accumulate, Ld ld) {
  dispatch_nt(X, W, Y, ld.or_dense_nt(k, n), m, k, n, accumulate);
}

void small_gemm(const float* X, const float* B, float* Y, int64_t m, int64_t k, int64_t n,
                bool accumulate, Ld ld) {
  dispatch(X, B, Y, ld.or_dense(k, n), m, k, n, accumulate);
}

void small_gemm(const double* X, const double* B, double* Y, int64_t m, int64_t k, int64_t n,
                bool accumulate, Ld ld) {
  dispatch(X, B, Y, ld.or_dense(k, n), m, k, n, accumulate);
}

}  // namespace rnnattn::cpu

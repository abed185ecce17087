// Row-major GEMM on raw pointers, straight into the BLAS that torch ships,
// or, for large float32 products on CPUs that MKL does not serve well, into
// oneDNN (float_gemm_lib below).
//
// Why not at::mm: the recurrence issues one small GEMM per time step, and the
// dispatcher costs several microseconds per call, more than the GEMM itself
// at small sizes (this is exactly what makes nn.RNN slow on CPU). torch's x86
// wheels link MKL statically and export its Fortran sgemm_/dgemm_; we bind to
// them weakly and fall back to at::mm_out on a build that lacks them.
#pragma once

#include <ATen/ATen.h>
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "isa.h"

extern "C" {
void sgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b,
            const int* ldb, const float* beta, float* c, const int* ldc)
    __attribute__((weak));
void dgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b,
            const int* ldb, const double* beta, double* c, const int* ldc)
    __attribute__((weak));
// MKL's per-thread override of its thread count (0 restores the global one).
// (The lowercase name is the Fortran entry point, which takes a pointer.)
int MKL_Set_Num_Threads_Local(int nt) __attribute__((weak));
}

// ATen's oneDNN GEMM (C = beta C + alpha A B on strided 2-D tensors; its
// header is not installed). Weakly bound: a torch without it falls back to
// the BLAS.
namespace at::native {
TORCH_API void mkldnn_matmul(const Tensor& mat1, const Tensor& mat2, const Tensor& result,
                             float beta, float alpha) __attribute__((weak));
}

namespace rnnattn::cpu {

inline bool fortran_blas_available() { return sgemm_ != nullptr && dgemm_ != nullptr; }

// GEMMs below this many multiply-adds (~50 us on one core) run on one
// thread: forking the OpenMP team costs more than it saves there, and on a
// busy machine a team waits a whole scheduler slice for a descheduled
// member.
constexpr int64_t kSerialGemmMaxWork = int64_t(1) << 21;

// Pins MKL to one thread for the lifetime of the guard, if asked to.
class SerialBlasGuard {
 public:
  explicit SerialBlasGuard(bool serial)
      : active_(serial && MKL_Set_Num_Threads_Local != nullptr),
        prev_(active_ ? MKL_Set_Num_Threads_Local(1) : 0) {}
  ~SerialBlasGuard() {
    if (active_) MKL_Set_Num_Threads_Local(prev_);
  }
  SerialBlasGuard(const SerialBlasGuard&) = delete;
  SerialBlasGuard& operator=(const SerialBlasGuard&) = delete;

 private:
  bool active_;
  int prev_;
};

// Which library runs the large float32 GEMMs (float64 always runs in the
// BLAS). MKL, which torch's x86 wheels ship as their BLAS, runs its generic
// kernels on CPUs other than Intel's: on a 2-core AMD EPYC (Zen 4, AVX-512)
// perf shows mkl_blas_def_sgemm_kernel_0_zen, and float32 products ran at
// 88-136 GFLOP/s on 2 threads where oneDNN (which picks its kernels by the
// CPU's features, not its vendor: AVX-512 there) ran 154-195 (64 x 1024 x
// 4096: 6.1 -> 3.5 ms; 6400 x 512 x 4096: 232 -> 148 ms). So on x86 CPUs
// not made by Intel the products of at least kOnednnMinWork multiply-adds go
// to oneDNN (through ATen, which shares torch's threads and primitive
// cache); below that its per-call cost (~15 us) outweighs it.
// RNNATTN_CPU_GEMM=blas|onednn forces one (tests run both); oneDNN is taken
// only where this torch's oneDNN GEMM accepts float32 (a probe call), and
// not while the user has turned it off (torch.backends.mkldnn.flags). Like
// torch's own oneDNN matmuls, it follows torch.backends.mkldnn's float32
// precision setting (strict IEEE float32 unless the user allows bf16/tf32).
enum class GemmLib { kBlas, kOnednn };
constexpr int64_t kOnednnMinWork = int64_t(1) << 23;

// Whether ATen's oneDNN float32 GEMM keeps float32 precision at a size the
// large GEMMs use (64 x 256 x 512, 2^23 multiply-adds). torch 2.4.1's
// oneDNN did not on a 2-core Intel Xeon with AMX: relative errors of a
// bfloat16 product (up to 0.0045 on values near 1), where torch 2.13's
// did; the float32 GEMMs then stay in the BLAS. The operands' values
// need all of float32's mantissa; the reference is the same product in
// float64.
inline bool onednn_float_gemm_is_float32() {
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  const at::Tensor a = 1 + at::arange(64 * 256, f64).remainder(97).reshape({64, 256}) / 4099;
  const at::Tensor b = 1 - at::arange(256 * 512, f64).remainder(89).reshape({256, 512}) / 4111;
  const at::Tensor a32 = a.to(at::kFloat), b32 = b.to(at::kFloat);
  at::Tensor c = at::zeros({64, 512}, a32.options());
  at::native::mkldnn_matmul(a32, b32, c, 0.f, 1.f);
  const at::Tensor want = at::mm(a32.to(at::kDouble), b32.to(at::kDouble));
  const double err = (c.to(at::kDouble) - want).abs().max().item<double>();
  return err <= 1e-5 * want.abs().max().item<double>();  // float32 sums: ~1e-6; bfloat16: ~1e-3
}

// Whether ATen's oneDNN GEMM takes operands and result of `dtype` here: a
// probe call (it refuses where the CPU lacks the AVX-512 or, for bfloat16,
// AVX-NE-CONVERT it needs).
inline bool onednn_gemm_works(at::ScalarType dtype) {
  if (at::native::mkldnn_matmul == nullptr) return false;
  try {
    auto o = at::TensorOptions().dtype(dtype);
    at::Tensor c = at::zeros({1, 1}, o);
    at::native::mkldnn_matmul(at::full({1, 1}, 3.f, o), at::full({1, 1}, 2.f, o), c, 0.f, 1.f);
    if (c.item<float>() != 6.f) return false;
    return dtype != at::kFloat || onednn_float_gemm_is_float32();
  } catch (const std::exception&) {
    return false;
  }
}

inline GemmLib float_gemm_lib() {
  static const GemmLib lib = [] {
    const char* v = std::getenv("RNNATTN_CPU_GEMM");
    bool onednn = false;
    if (v != nullptr && std::strcmp(v, "onednn") == 0) {
      onednn = true;
    } else if (v == nullptr || std::strcmp(v, "blas") != 0) {
#if RNNATTN_X86_DISPATCH
      onednn = !__builtin_cpu_is("intel");
#endif
    }
    return onednn && onednn_gemm_works(at::kFloat) ? GemmLib::kOnednn : GemmLib::kBlas;
  }();
  return lib;
}

// Whether a float32 product of `work` multiply-adds goes to oneDNN
// (mkldnn_matmul reads beta only as "add C or not").
inline bool use_onednn(int64_t work, float beta) {
  return work >= kOnednnMinWork && (beta == 0.f || beta == 1.f) &&
         float_gemm_lib() == GemmLib::kOnednn && at::globalContext().userEnabledMkldnn();
}

inline const char* gemm_lib_name(GemmLib lib) { return lib == GemmLib::kOnednn ? "onednn" : "blas"; }

// Fallback through ATen: wraps the pointers without copying.
template <typename T>
void gemm_aten(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha,
               const T* a, int64_t lda, const T* b, int64_t ldb, T beta, T* c,
               int64_t ldc) {
  auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  auto A = ta ? at::from_blob(const_cast<T*>(a), {k, m}, {lda, 1}, opts).t()
              : at::from_blob(const_cast<T*>(a), {m, k}, {lda, 1}, opts);
  auto B = tb ? at::from_blob(const_cast<T*>(b), {n, k}, {ldb, 1}, opts).t()
              : at::from_blob(const_cast<T*>(b), {k, n}, {ldb, 1}, opts);
  auto C = at::from_blob(c, {m, n}, {ldc, 1}, opts);
  if (beta == T(0)) {
    C.copy_(at::mm(A, B).mul_(alpha));
  } else {
    C.mul_(beta).add_(at::mm(A, B), alpha);
  }
}

// The same product through oneDNN, on views of the pointers. mkldnn_matmul
// writes a strided C in place, but copies an operand whose rows are further
// apart than their width (lda > k) at every call.
inline void gemm_onednn(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha,
                        const float* a, int64_t lda, const float* b, int64_t ldb, float beta,
                        float* c, int64_t ldc) {
  auto f32 = at::TensorOptions().dtype(at::kFloat);
  auto A = ta ? at::from_blob(const_cast<float*>(a), {k, m}, {lda, 1}, f32).t()
              : at::from_blob(const_cast<float*>(a), {m, k}, {lda, 1}, f32);
  auto B = tb ? at::from_blob(const_cast<float*>(b), {n, k}, {ldb, 1}, f32).t()
              : at::from_blob(const_cast<float*>(b), {k, n}, {ldb, 1}, f32);
  at::native::mkldnn_matmul(A, B, at::from_blob(c, {m, n}, {ldc, 1}, f32), beta, alpha);
}

inline bool onednn_bf16_gemm_works() {
  static const bool ok = onednn_gemm_works(at::kBFloat16);
  return ok;
}

// C (m x n) = A (m x k) @ op(B), op(B) = B (k x n) or, with tb, B^T where B
// is n x k; bfloat16 operands and result (raw bits), float32 sums inside,
// rows ld* apart. Through oneDNN (AMX tiles where the CPU has them), else
// at::mm_out; the result rounds to bfloat16 as at::mm's does (neither takes
// a float32 result for bfloat16 operands on the CPU).
inline void gemm_bf16_library(bool tb, int64_t m, int64_t n, int64_t k, const uint16_t* a,
                              int64_t lda, const uint16_t* b, int64_t ldb, uint16_t* c,
                              int64_t ldc) {
  auto bf16 = at::TensorOptions().dtype(at::kBFloat16);
  auto A = at::from_blob(const_cast<uint16_t*>(a), {m, k}, {lda, 1}, bf16);
  auto B = tb ? at::from_blob(const_cast<uint16_t*>(b), {n, k}, {ldb, 1}, bf16).t()
              : at::from_blob(const_cast<uint16_t*>(b), {k, n}, {ldb, 1}, bf16);
  auto C = at::from_blob(c, {m, n}, {ldc, 1}, bf16);
  if (onednn_bf16_gemm_works() && at::globalContext().userEnabledMkldnn()) {
    at::native::mkldnn_matmul(A, B, C, 0.f, 1.f);
  } else {
    at::mm_out(C, A, B);
  }
}

// C[m,n] = alpha * op(A)[m,k] @ op(B)[k,n] + beta * C, all row-major.
// op(A) = A (m x k, leading dim lda) or, with ta, A^T where A is k x m.
// beta == 0 overwrites C (NaN in C does not leak, as in BLAS).
template <typename T>
void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
          int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0) {
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j)
        c[i * ldc + j] = beta == T(0) ? T(0) : beta * c[i * ldc + j];
    return;
  }
  if constexpr (std::is_same_v<T, float>) {
    // Only with both operands compact: mkldnn_matmul would copy a strided
    // one, and the whole-sequence operands here (the backward's dG blocks)
    // are megabytes beyond the call's peak (the GRU's at (16,100,64,128):
    // +0.8 MiB, over nn.GRU's). The recurrent steps allow their small
    // copies themselves (RecurrentGemm::compute).
    auto compact = [](bool t, int64_t rows, int64_t cols, int64_t ld) {
      return ld == (t ? rows : cols);
    };
    if (use_onednn(m * n * k, beta) && compact(ta, m, k, lda) && compact(tb, k, n, ldb)) {
      gemm_onednn(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
      return;
    }
  }
  TORCH_CHECK(m <= INT32_MAX && n <= INT32_MAX && k <= INT32_MAX,
              "rnnattn: GEMM dimension exceeds the BLAS 32-bit index range");
  if (!fortran_blas_available()) {
    gemm_aten<T>(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    return;
  }
  // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T, so the
  // operands swap places and keep their transpose flags.
  const char tra = tb ? 'T' : 'N';
  const char trb = ta ? 'T' : 'N';
  const int M = static_cast<int>(n), N = static_cast<int>(m), K = static_cast<int>(k);
  const int LDA = static_cast<int>(ldb), LDB = static_cast<int>(lda), LDC = static_cast<int>(ldc);
  SerialBlasGuard serial(m * n * k <= kSerialGemmMaxWork);
  if constexpr (std::is_same_v<T, float>) {
    sgemm_(&tra, &trb, &M, &N, &K, &alpha, b, &LDA, a, &LDB, &beta, c, &LDC);
  } else {
    dgemm_(&tra, &trb, &M, &N, &K, &alpha, b, &LDA, a, &LDB, &beta, c, &LDC);
  }
}

}  // namespace rnnattn::cpu

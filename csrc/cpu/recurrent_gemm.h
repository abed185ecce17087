// The recurrent GEMM of one time step, C[:rows] (+)= A[:rows] @ op(W_hh),
// split by columns of C into one part per thread.
//
// Why split by columns: at (B, H) = (64, 1024) a step is 64 M multiply-adds,
// about 1 ms. Handing it to a multi-threaded BLAS call costs a fork/join and
// a re-pack of W_hh each step, and MKL splits it along B, so each core
// streams all of W_hh (4 MiB, larger than its L2) every step. With one part
// per thread, each thread owns a fixed column slice of W_hh, packed once per
// call into MKL's layout (float) and re-read from its own cache each step;
// the step's pointwise work on those columns runs in the same task, while the
// slice is hot, with one fork/join per step in all. Measured on the 2-core
// dev VM: 1.18 ms (MKL, 2 threads, packed) -> 0.87 ms per step. Where
// oneDNN runs the large float32 GEMMs instead (blas.h), nothing is packed;
// where neither packs, a column slice of an untransposed W is kept compact
// per part (make_compact).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "blas.h"

// MKL's packed-operand GEMM (CBLAS, 32-bit ints, float only), weakly bound
// like sgemm_.
extern "C" {
size_t cblas_sgemm_pack_get_size(int identifier, int m, int n, int k) __attribute__((weak));
void cblas_sgemm_pack(int layout, int identifier, int trans, int m, int n, int k, float alpha,
                      const float* src, int ld, float* dest) __attribute__((weak));
void cblas_sgemm_compute(int layout, int transa, int transb, int m, int n, int k, const float* a,
                         int lda, const float* b, int ldb, float beta, float* c, int ldc)
    __attribute__((weak));
}

namespace rnnattn::cpu {

template <typename T>
class RecurrentGemm {
 public:
  // op(W) is k x n: W is (n x k) row-major when trans (op(W) = W^T), else
  // (k x n). full_rows is the row count of the steps that may use the packed
  // operand (0: never pack). parts: how many column slices (>= 1). max_rows:
  // the most rows a step has (0: not known), which says whether any step's
  // product is large enough for oneDNN (blas.h) and so needs compact_.
  RecurrentGemm(const T* w, bool trans, int64_t full_rows, int64_t n, int64_t k, int parts,
                int64_t max_rows = 0)
      : w_(w), trans_(trans), full_rows_(full_rows), n_(n), k_(k), max_rows_(max_rows) {
    TORCH_CHECK(n > 0 && k > 0 && n <= INT32_MAX && k <= INT32_MAX && full_rows <= INT32_MAX,
                "rnnattn: recurrent GEMM size out of the BLAS 32-bit index range");
    // Slice boundaries are multiples of a 64-byte line of columns, so slices
    // start on line boundaries whenever rows do (H a multiple of 16 floats);
    // otherwise neighbouring slices share a line at row ends (false sharing,
    // a speed cost only: their elements are distinct).
    constexpr int64_t kLine = 64 / sizeof(T);
    const int64_t chunk = (n + parts - 1) / parts;
    const int64_t step = std::max<int64_t>(kLine, (chunk + kLine - 1) / kLine * kLine);
    for (int64_t c = 0; c < n; c += step) bounds_.push_back(c);
    bounds_.push_back(n);
    pack();
  }

  int parts() const { return static_cast<int>(bounds_.size()) - 1; }

  // Runs f(p) for every part: one task per thread, or all on the calling
  // thread when a step of this many rows is too little work for a fork/join
  // (the late, small steps of a packed batch). gemms: how many GEMMs of
  // this shape a part does per step (a cell's gates, csrc/cpu/recurrence.h).
  template <typename F>
  void for_each_part(int64_t rows, const F& f, int gemms = 1) const {
    if (parts() == 1 || gemms * rows * n_ * k_ <= kSerialGemmMaxWork) {
      for (int p = 0; p < parts(); ++p) f(p);
      return;
    }
    at::parallel_for(0, parts(), 1, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) f(static_cast<int>(p));
    });
  }

  int64_t begin(int p) const { return bounds_[p]; }
  int64_t end(int p) const { return bounds_[p + 1]; }

  // C[:rows, begin(p):end(p)] = A[:rows] @ op(W)[:, begin(p):end(p)] + beta * C,
  // on the calling thread only. A is rows x k with leading dim lda (0: k),
  // C has leading dim ldc (0: n).
  void compute(int p, const T* a, int64_t rows, T beta, T* c, int64_t lda = 0,
               int64_t ldc = 0) const {
    if (lda == 0) lda = k_;
    if (ldc == 0) ldc = n_;
    if (rows == 0) return;
    const int64_t c0 = begin(p), cols = end(p) - c0;
    SerialBlasGuard serial(true);
    if constexpr (std::is_same_v<T, float>) {
      if (!packed_.empty() && rows == full_rows_) {
        constexpr int kRowMajor = 101, kNoTrans = 111, kPacked = 151;
        cblas_sgemm_compute(kRowMajor, kNoTrans, kPacked, int(rows), int(cols), int(k_), a,
                            int(lda), packed_[p].data_ptr<float>(), int(cols), beta, c + c0,
                            int(ldc));
        return;
      }
    }
    // W's slice: compact_ (several parts of an untransposed W), else as
    // stored.
    const T* w = compact_.empty() ? slice(p) : compact_[p].data_ptr<T>();
    const int64_t ldw = !compact_.empty() ? cols : trans_ ? k_ : n_;
    if constexpr (std::is_same_v<T, float>) {
      // The slice is compact for oneDNN (rows of a transposed W, all of an
      // untransposed one, or compact_). A step's rows of A may be strided
      // (the GRU's backward reads blocks of dG): oneDNN copies them, one
      // step's rows x k, which gemm() would not allow.
      if (use_onednn(rows * cols * k_, beta)) {
        gemm_onednn(false, trans_, rows, cols, k_, 1.f, a, lda, w, ldw, beta, c + c0, ldc);
        return;
      }
    }
    gemm<T>(false, trans_, rows, cols, k_, T(1), a, lda, w, ldw, beta, c + c0, ldc);
  }

 private:
  // First element of op(W)[:, begin(p):] in W's storage.
  const T* slice(int p) const { return trans_ ? w_ + begin(p) * k_ : w_ + begin(p); }

  void pack() {
    if constexpr (std::is_same_v<T, float>) {
      if (float_gemm_lib() == GemmLib::kOnednn) {
        // oneDNN would copy a column slice of an untransposed W (its rows
        // are n apart, not cols) at every call: each part keeps its slice
        // compact instead, W's size in all, copied once per call. Not where
        // no step reaches oneDNN's size (the BLAS reads the slice in place);
        // part 0 is the widest (only the last is cut short).
        if (max_rows_ > 0 && !use_onednn(max_rows_ * (end(0) - begin(0)) * k_, 1.f)) return;
        make_compact();
        return;
      }
      if (full_rows_ > 0 && cblas_sgemm_pack_get_size != nullptr && cblas_sgemm_pack != nullptr &&
          cblas_sgemm_compute != nullptr) {
        constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112, kBMatrix = 162;
        packed_.resize(parts());
        for (int p = 0; p < parts(); ++p) {
          const size_t bytes = cblas_sgemm_pack_get_size(kBMatrix, int(full_rows_),
                                                         int(end(p) - begin(p)), int(k_));
          packed_[p] = at::empty(
              {static_cast<int64_t>((bytes + sizeof(float) - 1) / sizeof(float))}, at::kFloat);
        }
        // Each thread packs the slice it will multiply by (first touch).
        at::parallel_for(0, parts(), 1, [&](int64_t p0, int64_t p1) {
          SerialBlasGuard serial(true);
          for (int64_t p = p0; p < p1; ++p)
            cblas_sgemm_pack(kRowMajor, kBMatrix, trans_ ? kTrans : kNoTrans, int(full_rows_),
                             int(end(p) - begin(p)), int(k_), 1.f, slice(p),
                             trans_ ? int(k_) : int(n_), packed_[p].data_ptr<float>());
        });
        return;
      }
    }
    // Unpacked, the BLAS reads the slice in place, and a column slice of an
    // untransposed W (the backward's) has its rows n apart: at H = 1024 in
    // float, 4 KiB, so a slice's rows fall in the same few cache sets. MKL's
    // sgemm on an Intel Xeon (AVX-512), one thread, 64 rows of A: 64 x 2048
    // x 512 at 122 GFLOP/s on the slice, 186 on it compact (its packed
    // operand: 195); 64 x 1024 x 512 at 134 against 186. Where a cell's
    // backward does not pack (the GRU's two blocks of gate grads at
    // H = 1024 would pack 53 MiB, past its budget: packed_rows), each part
    // keeps its slice compact, W's size in all.
    make_compact();
  }

  // compact_: each part's columns of an untransposed W, contiguous, each
  // copied by the thread that will multiply by it. Nothing to do for a
  // transposed W (its slices are rows) or a single part (all of W).
  void make_compact() {
    if (trans_ || parts() == 1) return;
    compact_.resize(parts());
    for (int p = 0; p < parts(); ++p)
      compact_[p] = at::empty({k_, end(p) - begin(p)}, c10::CppTypeToScalarType<T>::value);
    at::parallel_for(0, parts(), 1, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t cols = end(p) - begin(p);
        T* dst = compact_[p].template data_ptr<T>();
        for (int64_t i = 0; i < k_; ++i)
          std::copy(w_ + i * n_ + begin(p), w_ + i * n_ + end(p), dst + i * cols);
      }
    });
  }

  const T* w_;
  bool trans_;
  int64_t full_rows_, n_, k_, max_rows_;
  std::vector<int64_t> bounds_;
  std::vector<at::Tensor> packed_;
  std::vector<at::Tensor> compact_;  // each part's slice of an untransposed W (make_compact)
};

// How many column parts a step of `work` multiply-adds over H hidden units
// is split into: one per thread, unless the step is small enough that a
// fork/join costs more than it saves, or we already run inside a parallel
// region.
inline int recurrent_parts(int64_t work, int64_t H) {
  if (at::in_parallel_region() || work <= kSerialGemmMaxWork) return 1;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), H / 64)));
}

}  // namespace rnnattn::cpu

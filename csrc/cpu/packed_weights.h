// oneDNN's pre-reordered ("packed") weights for the large float32 steps.
//
// Why: where oneDNN runs the large float32 GEMMs (blas.h float_gemm_lib:
// x86 CPUs not made by Intel), a large step's recurrent product handed
// oneDNN's GEMM (mkldnn_matmul) W_hh's slices in their plain layout, which it
// re-packs into its blocked layout inside every call, every step. torch's
// operators for inductor's frozen linear layers reach oneDNN's
// inner-product primitive on a weight reordered once into that layout:
// mkldnn::_reorder_linear_weight makes it (an opaque mkldnn tensor),
// mkldnn::_linear_pointwise computes X W^T on it. So each unit part of a
// walk's steps keeps one such weight per call: the rows of W_hh its units
// need, every gate's, in one product a step. Measured on a 2-core AMD EPYC
// (Zen 4), one thread, one part of an LSTM step at (B, H) = (64, 1024)
// (64 x 2048 x 1024): 3.45 ms as four mkldnn_matmul calls (one a gate) ->
// 2.96 ms packed, its result added into the gates included.
//
// The cost: the operator has no out= form, so each product is a new tensor
// from torch's allocator (rows x the part's columns, 512 KiB in that
// example), one a part a step. Only where those steps take milliseconds.
//
// The operators are reached through the dispatcher, not their C++ symbols
// (whose signatures changed between torch versions): a torch without them,
// or whose schemas differ, or whose probe call (below) fails, keeps the
// plain path. RNNATTN_CPU_PACKED_WEIGHTS=0|1 turns them off or on (default
// on), read once per process; tests run both.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <vector>

#include "blas.h"

namespace rnnattn::cpu {

using PackedLinearFn = at::Tensor(const at::Tensor&, const at::Tensor&,
                                  const std::optional<at::Tensor>&, c10::string_view,
                                  c10::List<std::optional<at::Scalar>>,
                                  std::optional<c10::string_view>);
using ReorderWeightFn = at::Tensor(const at::Tensor&, std::optional<int64_t>);

struct PackedLinearOps {
  c10::TypedOperatorHandle<ReorderWeightFn> reorder;
  c10::TypedOperatorHandle<PackedLinearFn> linear;
};

// Y = X W^T (rows x n, a new tensor) on a packed weight; X rows x k, rows ldx
// apart (the operator copies X where ldx != k), in w's dtype (float32, or
// bfloat16 as raw bits; Y too). The autograd keys are skipped: nothing here
// records a graph, and the worker threads that call it would otherwise pass
// through them.
inline at::Tensor packed_linear(const PackedLinearOps& ops, const at::Tensor& w, const void* x,
                                int64_t rows, int64_t k, int64_t ldx) {
  c10::impl::ExcludeDispatchKeyGuard no_autograd(c10::autograd_dispatch_keyset);
  auto X = at::from_blob(const_cast<void*>(x), {rows, k}, {ldx, 1},
                         at::TensorOptions().dtype(w.scalar_type()));
  return ops.linear.call(X, w, std::nullopt, "none",
                         c10::List<std::optional<at::Scalar>>({std::optional<at::Scalar>()}),
                         std::nullopt);
}

// w (n x k, float32 or bfloat16, contiguous) in oneDNN's layout for
// products of `batch` rows.
inline at::Tensor pack_weight(const PackedLinearOps& ops, const at::Tensor& w, int64_t batch) {
  c10::impl::ExcludeDispatchKeyGuard no_autograd(c10::autograd_dispatch_keyset);
  return ops.reorder.call(w, batch);
}

// Whether the operators' product in `dtype` is right: W (3 x 5) and X (2 x 5)
// of small integers, whose every sum is exact in float32 and bfloat16.
// (They refuse bfloat16 where the CPU lacks AVX512-BF16 / AMX.)
inline bool packed_linear_probe(const PackedLinearOps& o, at::ScalarType dtype) {
  try {
    const int64_t n = 3, k = 5, m = 2;
    auto f32 = at::TensorOptions().dtype(at::kFloat);
    const at::Tensor w = at::arange(n * k, f32).remainder(7).sub(3).reshape({n, k});
    const at::Tensor x = at::arange(m * k, f32).remainder(5).sub(2).reshape({m, k});
    const at::Tensor xd = x.to(dtype);
    const at::Tensor y = packed_linear(o, pack_weight(o, w.to(dtype), m), xd.data_ptr(), m, k, k);
    return y.scalar_type() == dtype && y.sizes().equals({m, n}) &&
           at::equal(y.contiguous().to(at::kFloat), at::mm(x, w.t()));
  } catch (const std::exception&) {
    return false;
  }
}

// The operators, where this torch has them with the schemas above and a
// float32 probe product is right; else null.
inline const PackedLinearOps* packed_linear_ops() {
  static const std::optional<PackedLinearOps> ops = []() -> std::optional<PackedLinearOps> {
    try {
      auto& d = c10::Dispatcher::singleton();
      auto r = d.findSchema({"mkldnn::_reorder_linear_weight", ""});
      auto l = d.findSchema({"mkldnn::_linear_pointwise", ""});
      if (!r || !l) return std::nullopt;
      PackedLinearOps o{r->typed<ReorderWeightFn>(), l->typed<PackedLinearFn>()};
      if (!packed_linear_probe(o, at::kFloat)) return std::nullopt;
      return o;
    } catch (const std::exception&) {
      return std::nullopt;
    }
  }();
  return ops ? &*ops : nullptr;
}

// Whether they also take bfloat16 here.
inline bool packed_linear_bf16_works() {
  static const bool ok =
      packed_linear_ops() != nullptr && packed_linear_probe(*packed_linear_ops(), at::kBFloat16);
  return ok;
}

inline bool packed_weights_enabled() {
  static const bool on = [] {
    const char* v = std::getenv("RNNATTN_CPU_PACKED_WEIGHTS");
    return v == nullptr || std::strcmp(v, "0") != 0;
  }();
  return on;
}

// Whether a large float32 step would multiply by packed weights in this
// process (rnnattn._C.cpu_packed_weights(), the benchmark's table header).
inline bool steps_use_packed_weights() {
  return float_gemm_lib() == GemmLib::kOnednn && at::globalContext().userEnabledMkldnn() &&
         packed_weights_enabled() && packed_linear_ops() != nullptr;
}

// Whether the large float32 steps of a walk (`full_steps` of them with the
// first step's rows) multiply by packed weights: they would here, a part's
// product (`part_work` multiply-adds) is oneDNN's size, and enough steps
// share a packing (min_steps: recurrence.h kPackMinSteps, a pack costs
// about a step).
inline bool use_packed_weights(int64_t full_steps, int64_t part_work, int64_t min_steps) {
  return full_steps >= min_steps && use_onednn(part_work, 0.f) && steps_use_packed_weights();
}

// One packed weight per unit part of a walk's steps.
class PackedParts {
 public:
  bool empty() const { return w_.empty(); }
  // Appends the next part's weight: w (n_p x k, float, contiguous) packed
  // for products of `batch` rows.
  void add(const at::Tensor& w, int64_t batch) {
    w_.push_back(pack_weight(*packed_linear_ops(), w, batch));
  }
  // X W_p^T: a new (rows x n_p) tensor, X rows x k, rows ldx apart.
  at::Tensor product(int p, const float* x, int64_t rows, int64_t k, int64_t ldx) const {
    return packed_linear(*packed_linear_ops(), w_[p], x, rows, k, ldx);
  }

 private:
  std::vector<at::Tensor> w_;
};

}  // namespace rnnattn::cpu

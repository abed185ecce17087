// CUDA kernels of rnnattn::rnn_forward / rnn_backward (one layer, one
// direction). Same semantics, argument checks and step schedule as the CPU
// kernel (csrc/cpu/rnn.cpp, csrc/rnn_common.h).
//
// Forward: P = X W_ih^T + b is one cuBLAS GEMM over all N rows, written into
// the output buffer; then the recurrence out_t = act(out_t + h_{t-1} W_hh^T).
// Backward: the dh recurrence dz_t = (dout_t + g) act'(h_t), g = dz_t W_hh,
// then dX, dW_ih, dW_hh one GEMM each over all N rows and db one reduction.
//
// The recurrence runs on one of two paths:
//   * persistent (rnn_persistent.cuh): one cooperative kernel for all steps,
//     W_hh held in shared memory across the SMs, a grid barrier per step.
//   * fallback: per step one cuBLAS GEMM (at::mm_out) and one fused pointwise
//     kernel (rnn_pointwise.cuh). Plain and general: every size and dtype.
//
// Path rule (select_persistent below). The persistent path runs when ALL of:
//   1. dtype is float32, float16 or bfloat16 (float64 always falls back);
//   2. the device supports cooperative launch;
//   3. the block's W_hh slice fits in shared memory: with S = #SMs,
//      R = roundup4(ceil(H / S)) units per block and Hp = roundup128(H),
//      (R + 4) * Hp * 4 bytes <= the opt-in shared memory per block
//      (H100/H200 SXM, 132 SMs x 227 KB: H <= 2304; A100, 108 SMs x 163 KB: H <= 1728);
//   4. ceil(H / R) blocks can be co-resident (occupancy >= 1 block per SM);
//   5. B * R * H <= kPersistentMaxWork: the per-block work of one step is
//      small enough that a step is latency-bound, where the persistent kernel
//      wins; past it (large batch x large H) the per-step tensor-core GEMM of
//      the fallback is the better machine.
// The environment variable RNNATTN_RNN_CUDA_PATH overrides the rule:
// "fallback" always takes the fallback path; "persistent" drops condition 5
// and raises an error (naming the failed condition) instead of falling back;
// "auto" (or unset) applies the rule. Tests use it to run both paths.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>

#include "../rnn_common.h"
#include "rnn_persistent.cuh"
#include "rnn_pointwise.cuh"

namespace rnnattn::cuda {
namespace {

// Condition 5 of the path rule: FMAs per block per step. At 1<<20 a step
// is ~8k cycles of shared-memory-bound FMA work per SM, about the cost of a
// small cuBLAS GEMM launch plus its pointwise kernel. Calibrate with
// `python -m rnnattn.bench --gpu --device cuda` (make gpu-check): its
// persistent / fallback columns time each path forced.
constexpr int64_t kPersistentMaxWork = int64_t(1) << 20;

enum class PathChoice { kAuto, kPersistent, kFallback };

PathChoice requested_path() {
  const char* v = std::getenv("RNNATTN_RNN_CUDA_PATH");
  if (v == nullptr || *v == '\0' || std::strcmp(v, "auto") == 0) return PathChoice::kAuto;
  if (std::strcmp(v, "persistent") == 0) return PathChoice::kPersistent;
  if (std::strcmp(v, "fallback") == 0) return PathChoice::kFallback;
  TORCH_CHECK(false, "rnnattn: RNNATTN_RNN_CUDA_PATH must be 'auto', 'persistent' or 'fallback', got '",
              v, "'");
  return PathChoice::kAuto;
}

// How the persistent kernel would be launched for this call, or why it can't.
using PersistentPlan = persistent::Plan;

// Conditions 2-4 of the path rule for `kernel` (a persistent kernel).
PersistentPlan plan_persistent(const void* kernel, int64_t B, int64_t H) {
  int device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  int coop = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, device));
  if (!coop) {
    PersistentPlan plan;
    plan.why = "the device does not support cooperative launch";
    return plan;
  }
  const cudaDeviceProp* prop = at::cuda::getCurrentDeviceProperties();
  const int64_t sms = prop->multiProcessorCount;
  const int64_t smem_max = static_cast<int64_t>(prop->sharedMemPerBlockOptin);
  PersistentPlan plan = persistent::plan(B, H, sms, smem_max);  // condition 3
  if (!plan.ok) return plan;
  // The device maximum rather than this call's size: the same value for every
  // caller, so concurrent calls with different sizes cannot undo each other.
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(smem_max)));
  int per_sm = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel,
                                                               persistent::kThreads, plan.smem));
  if (per_sm * sms < plan.blocks) {
    plan.ok = false;
    plan.why = "its " + std::to_string(plan.blocks) + " blocks cannot all be resident (" +
               std::to_string(per_sm) + " per SM x " + std::to_string(sms) + " SMs)";
    return plan;
  }
  return plan;
}

// The path rule (see the top of this file). Returns a plan with ok == true
// when the persistent kernel is to run.
PersistentPlan select_persistent(const void* kernel, at::ScalarType dtype, int64_t steps,
                                 int64_t B, int64_t H) {
  const PathChoice want = requested_path();
  PersistentPlan none;
  // Nothing recurrent to do: the fallback's loop handles it without launches.
  if (want == PathChoice::kFallback || steps == 0 || B == 0 || H == 0) return none;
  if (dtype != at::kFloat && dtype != at::kHalf && dtype != at::kBFloat16) {
    TORCH_CHECK(want != PathChoice::kPersistent,
                "rnnattn: RNNATTN_RNN_CUDA_PATH=persistent, but the persistent RNN kernel supports "
                "float32, float16 and bfloat16 only, got ", dtype);
    return none;
  }
  PersistentPlan plan = plan_persistent(kernel, B, H);
  TORCH_CHECK(plan.ok || want != PathChoice::kPersistent,
              "rnnattn: RNNATTN_RNN_CUDA_PATH=persistent, but the persistent RNN kernel cannot run: ",
              plan.why);
  if (plan.ok && want == PathChoice::kAuto && B * plan.units * H > kPersistentMaxWork) {
    plan.ok = false;
    plan.why = "batch x hidden too large for the persistent kernel to pay off";
  }
  return plan;
}

// Launches a persistent kernel. Returns false (and leaves the outputs
// untouched) if the driver refuses the cooperative grid as too large, which
// can happen under MPS or when another context holds SMs; any other error raises.
template <typename T>
bool launch_persistent(const void* kernel, const PersistentPlan& plan,
                       persistent::Params<T> params, cudaStream_t stream) {
  void* args[] = {&params};
  const cudaError_t err = cudaLaunchCooperativeKernel(kernel, dim3(plan.blocks),
                                                      dim3(persistent::kThreads), args,
                                                      plan.smem, stream);
  if (err == cudaErrorCooperativeLaunchTooLarge) {
    (void)cudaGetLastError();  // clear the (non-sticky) launch error
    TORCH_CHECK(requested_path() != PathChoice::kPersistent,
                "rnnattn: RNNATTN_RNN_CUDA_PATH=persistent, but the driver refused the "
                "cooperative launch of ", plan.blocks, " blocks");
    return false;
  }
  C10_CUDA_CHECK(err);
  return true;
}

// A grid-stride elementwise launch of n elements (no launch when n == 0).
template <typename... KArgs, typename... Args>
void launch_1d(void (*kernel)(KArgs...), int64_t n, cudaStream_t stream, Args&&... args) {
  if (n == 0) return;
  const int64_t blocks =
      pointwise_blocks(n, at::cuda::getCurrentDeviceProperties()->multiProcessorCount);
  kernel<<<static_cast<unsigned>(blocks), kPointwiseThreads, 0, stream>>>(
      std::forward<Args>(args)...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The step schedule where kernels read it. Padded input needs none (step t:
// B rows from row t * B; the pointers stay null); packed input gets
// [batch(T) | offset(T)] copied once per call from pinned memory,
// asynchronously on the current stream.
struct DeviceSchedule {
  at::Tensor storage;
  const int64_t* batch = nullptr;
  const int64_t* offset = nullptr;
};

DeviceSchedule device_schedule(const StepSchedule& sched, bool packed, const at::Device& device) {
  DeviceSchedule d;
  const int64_t T = sched.steps();
  if (!packed || T == 0) return d;
  auto host = at::empty({2 * T}, at::TensorOptions().dtype(at::kLong).pinned_memory(true));
  int64_t* p = host.data_ptr<int64_t>();
  std::copy(sched.batch.begin(), sched.batch.end(), p);
  std::copy(sched.offset.begin(), sched.offset.end(), p + T);
  d.storage = host.to(at::TensorOptions().device(device), /*non_blocking=*/true);
  d.batch = d.storage.data_ptr<int64_t>();
  d.offset = d.batch + T;
  return d;
}

// Fallback forward recurrence. out2d holds P on entry; state holds hx on
// entry and h_n on exit (storage type T, so cuBLAS can read it).
template <typename T>
void forward_fallback(const StepSchedule& sched, at::Tensor& out2d, at::Tensor& state,
                      const at::Tensor& w_hh, bool relu, bool reverse, cudaStream_t stream) {
  const int64_t H = w_hh.size(0), T_ = sched.steps();
  auto hh = at::empty_like(state);  // h_{t-1} W_hh^T, reused by every step
  const auto w_hh_t = w_hh.t();
  for (int64_t i = 0; i < T_; ++i) {
    const int64_t t = reverse ? T_ - 1 - i : i;
    const int64_t bt = sched.batch[t];
    auto hh_t = hh.narrow(0, 0, bt);
    at::mm_out(hh_t, state.narrow(0, 0, bt), w_hh_t);
    launch_1d(forward_step_pointwise<T>, bt * H, stream,
              out2d.data_ptr<T>() + sched.offset[t] * H, hh.data_ptr<T>(), state.data_ptr<T>(),
              bt * H, relu);
  }
}

// Fallback backward recurrence: fills dz (N, H); g holds grad_hn on entry and
// grad_hx on exit.
template <typename T>
void backward_fallback(const StepSchedule& sched, const at::Tensor& grad_out,
                       const at::Tensor& out, const at::Tensor& w_hh, at::Tensor& dz,
                       at::Tensor& g, bool relu, bool reverse, cudaStream_t stream) {
  const int64_t H = w_hh.size(0), T_ = sched.steps();
  for (int64_t i = 0; i < T_; ++i) {
    const int64_t t = reverse ? i : T_ - 1 - i;  // opposite to the forward walk
    const int64_t bt = sched.batch[t], off = sched.offset[t] * H;
    launch_1d(backward_step_pointwise<T>, bt * H, stream, grad_out.data_ptr<T>() + off,
              g.data_ptr<T>(), out.data_ptr<T>() + off, dz.data_ptr<T>() + off, bt * H, relu);
    auto g_t = g.narrow(0, 0, bt);
    at::mm_out(g_t, dz.narrow(0, sched.offset[t], bt), w_hh);
  }
}

template <typename T>
persistent::Params<T> persistent_params(const PersistentPlan& plan, const RnnShape& s,
                                        const StepSchedule& sched, const DeviceSchedule& dev_sched,
                                        const at::Tensor& w_hh, const at::Tensor& exchange,
                                        const at::Tensor& state, bool relu, bool walk_back) {
  persistent::Params<T> p{};
  p.steps = sched.steps();
  p.batch = s.batch;
  p.hidden = s.hidden;
  p.units = plan.units;
  p.chunk = plan.chunk;
  p.padded = plan.padded;
  p.relu = relu;
  p.walk_back = walk_back;
  p.sched_batch = dev_sched.batch;
  p.sched_offset = dev_sched.offset;
  p.w_hh = w_hh.data_ptr<T>();
  p.exchange = exchange.data_ptr<float>();
  p.state = state.data_ptr<float>();
  return p;
}

// The forward recurrence on the persistent path, if the path rule picks it:
// out2d holds P on entry, h on exit; h_n is allocated and filled. Returns
// false (nothing done) when the fallback is to run.
template <typename T>
bool forward_persistent(const RnnShape& s, const StepSchedule& sched, bool packed,
                        at::Tensor& out2d, const at::Tensor& h0, const at::Tensor& w_hh,
                        at::Tensor& h_n, bool relu, bool reverse, cudaStream_t stream) {
  if constexpr (std::is_same_v<T, double>) {
    select_persistent(nullptr, at::kDouble, sched.steps(), s.batch, s.hidden);  // raises if forced
    return false;
  } else {
    const void* kernel = reinterpret_cast<const void*>(&persistent::forward_kernel<T>);
    const PersistentPlan plan =
        select_persistent(kernel, out2d.scalar_type(), sched.steps(), s.batch, s.hidden);
    if (!plan.ok) return false;
    const auto fopts = out2d.options().dtype(at::kFloat);
    auto exchange = at::empty({2, s.batch, s.hidden}, fopts);
    auto state = at::empty({s.batch, s.hidden}, fopts);
    const DeviceSchedule dev_sched = device_schedule(sched, packed, out2d.device());
    auto result = at::empty_like(h0);
    auto p = persistent_params<T>(plan, s, sched, dev_sched, w_hh, exchange, state, relu,
                                  /*walk_back=*/reverse);
    p.out = out2d.data_ptr<T>();
    p.h0 = h0.data_ptr<T>();
    p.h_last = result.data_ptr<T>();
    if (!launch_persistent(kernel, plan, p, stream)) return false;
    h_n = result;
    return true;
  }
}

// The backward (dh) recurrence on the persistent path, if the path rule
// picks it: fills dz and allocates + fills grad_hx. Returns false (nothing
// done) when the fallback is to run.
template <typename T>
bool backward_persistent(const RnnShape& s, const StepSchedule& sched,
                         const DeviceSchedule& dev_sched, const at::Tensor& grad_out,
                         const at::Tensor& grad_hn, const at::Tensor& out, const at::Tensor& w_hh,
                         at::Tensor& dz, at::Tensor& grad_hx, bool relu, bool reverse,
                         cudaStream_t stream) {
  if constexpr (std::is_same_v<T, double>) {
    select_persistent(nullptr, at::kDouble, sched.steps(), s.batch, s.hidden);  // raises if forced
    return false;
  } else {
    const void* kernel = reinterpret_cast<const void*>(&persistent::backward_kernel<T>);
    const PersistentPlan plan =
        select_persistent(kernel, dz.scalar_type(), sched.steps(), s.batch, s.hidden);
    if (!plan.ok) return false;
    const auto fopts = dz.options().dtype(at::kFloat);
    auto exchange = at::empty({2, s.batch, s.hidden}, fopts);
    auto state = at::empty({s.batch, s.hidden}, fopts);
    auto result = at::empty_like(grad_hn);
    auto p = persistent_params<T>(plan, s, sched, dev_sched, w_hh, exchange, state, relu,
                                  /*walk_back=*/!reverse);
    p.out = out.data_ptr<T>();
    p.grad_out = grad_out.data_ptr<T>();
    p.grad_last = grad_hn.data_ptr<T>();
    p.dz = dz.data_ptr<T>();
    p.h_last = result.data_ptr<T>();
    if (!launch_persistent(kernel, plan, p, stream)) return false;
    grad_hx = result;
    return true;
  }
}

std::tuple<at::Tensor, at::Tensor> rnn_forward_cuda(
    const at::Tensor& input, const c10::optional<at::Tensor>& batch_sizes,
    const at::Tensor& hx, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const c10::optional<at::Tensor>& b_ih, const c10::optional<at::Tensor>& b_hh, bool relu,
    bool reverse) {
  const RnnShape s = check_rnn_args(input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh);
  const c10::cuda::CUDAGuard guard(input.device());
  const StepSchedule sched = make_schedule(input, batch_sizes, s.batch);
  const int64_t H = s.hidden;
  auto x = input.contiguous().view({s.rows, s.input});
  auto wi = w_ih.contiguous();
  auto wh = w_hh.contiguous();
  std::vector<int64_t> out_shape(input.sizes().begin(), input.sizes().end());
  out_shape.back() = H;
  auto output = at::empty(out_shape, x.options());
  auto out2d = output.view({s.rows, H});
  // P = X W_ih^T + (b_ih + b_hh), all steps at once.
  if (b_ih.has_value()) {
    at::addmm_out(out2d, *b_ih + *b_hh, x, wi.t());
  } else {
    at::mm_out(out2d, x, wi.t());
  }
  auto h0 = hx.contiguous();
  at::Tensor h_n;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "rnnattn::rnn_forward_cuda", [&] {
    if (!forward_persistent<scalar_t>(s, sched, batch_sizes.has_value(), out2d, h0, wh, h_n, relu,
                                      reverse, stream)) {
      h_n = h0.clone();
      forward_fallback<scalar_t>(sched, out2d, h_n, wh, relu, reverse, stream);
    }
  });
  return {output, h_n};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> rnn_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& grad_hn, const at::Tensor& input,
    const c10::optional<at::Tensor>& batch_sizes, const at::Tensor& hx,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& output, bool relu,
    bool reverse, bool need_input_grad, bool need_weight_grad) {
  const RnnShape s = check_rnn_args(input, batch_sizes, hx, w_ih, w_hh, c10::nullopt,
                                    c10::nullopt);
  check_rnn_backward_args(s, input, grad_output, grad_hn, output);
  const c10::cuda::CUDAGuard guard(input.device());
  const StepSchedule sched = make_schedule(input, batch_sizes, s.batch);
  const int64_t H = s.hidden, N = s.rows;
  auto x = input.contiguous().view({N, s.input});
  auto h0 = hx.contiguous();
  auto wi = w_ih.contiguous();
  auto wh = w_hh.contiguous();
  auto out = output.contiguous().view({N, H});
  auto gout = grad_output.contiguous().view({N, H});
  auto ghn = grad_hn.contiguous();
  auto dz = at::empty({N, H}, x.options());
  at::Tensor grad_hx;
  // Made once, read by the persistent kernel and by the Hprev gather.
  const DeviceSchedule dev_sched = device_schedule(sched, batch_sizes.has_value(), x.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "rnnattn::rnn_backward_cuda", [&] {
    if (!backward_persistent<scalar_t>(s, sched, dev_sched, gout, ghn, out, wh, dz, grad_hx,
                                       relu, reverse, stream)) {
      grad_hx = ghn.clone();
      backward_fallback<scalar_t>(sched, gout, out, wh, dz, grad_hx, relu, reverse, stream);
    }
  });

  // Grads not asked for come back as distinct empty tensors (outputs of an
  // op must not alias each other).
  auto none = [&] { return at::empty({0}, x.options()); };
  at::Tensor dx = none(), dwi = none(), dwh = none(), db = none();
  if (need_input_grad) {
    dx = at::empty(input.sizes(), x.options());
    auto dx2d = dx.view({N, s.input});
    at::mm_out(dx2d, dz, wi);
  }
  if (need_weight_grad) {
    dwi = at::empty_like(wi);
    at::mm_out(dwi, dz.t(), x);
    // dW_hh = dZ^T @ Hprev, Hprev[r] = the state row r saw entering its step.
    auto hprev = at::empty({N, H}, x.options());
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "rnnattn::gather_prev_state", [&] {
      launch_1d(gather_prev_state<scalar_t>, N * H, stream, out.data_ptr<scalar_t>(),
                h0.data_ptr<scalar_t>(), dev_sched.batch, dev_sched.offset, sched.steps(), s.batch,
                H, reverse, hprev.data_ptr<scalar_t>(), N * H);
    });
    dwh = at::empty_like(wh);
    at::mm_out(dwh, dz.t(), hprev);
    db = at::empty({H}, x.options());
    at::sum_out(db, dz, at::IntArrayRef{0});
  }
  return {dx, grad_hx, dwi, dwh, db};
}

}  // namespace

TORCH_LIBRARY_IMPL(rnnattn, CUDA, m) {
  m.impl("rnn_forward", &rnn_forward_cuda);
  m.impl("rnn_backward", &rnn_backward_cuda);
}

}  // namespace rnnattn::cuda

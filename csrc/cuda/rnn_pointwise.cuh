// Elementwise CUDA kernels of the RNN operator: the per-step pointwise halves
// of the fallback path (the GEMM halves are cuBLAS calls made in rnn.cu), and
// the gather that rebuilds the state each row saw entering its step (for the
// single dW_hh GEMM of the backward).
//
// Values are loaded in the storage type T and computed in acc_t
// (at::opmath_type<T>: float for float/half/bfloat16, double for double).
#pragma once

#include <ATen/OpMathType.h>
#include <c10/macros/Macros.h>

#include <algorithm>
#include <cstdint>

namespace rnnattn::cuda {

// h = act(z).
template <typename A>
__device__ __forceinline__ A rnn_activate(A z, bool relu) {
  return relu ? (z > A(0) ? z : A(0)) : tanh(z);
}

// dz = dh * act'(z), written in terms of h = act(z): tanh' = 1 - h^2, relu' = [h > 0].
template <typename A>
__device__ __forceinline__ A rnn_activation_grad(A dh, A h, bool relu) {
  return relu ? (h > A(0) ? dh : A(0)) : dh * (A(1) - h * h);
}

// Grid-stride loops: the grid is capped (pointwise_blocks below), the index
// is 64-bit so no tensor size can overflow it.
#define RNNATTN_GRID_STRIDE(i, n)                                                      \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)

// Launch shape of the kernels below (launch_1d in rnn.cu): kPointwiseThreads
// threads per block, enough blocks to cover n elements but at most 8 per SM.
constexpr int kPointwiseThreads = 256;
inline int64_t pointwise_blocks(int64_t n, int64_t sms) {
  return std::min<int64_t>((n + kPointwiseThreads - 1) / kPointwiseThreads, sms * 8);
}

// Forward step, after hh = h_{t-1}[:b] @ W_hh^T (cuBLAS):
//   out_t = act(out_t + hh), state[:b] = out_t.
// out_t holds P_t = x_t W_ih^T + b on entry. n = b * H elements.
template <typename T>
__global__ void forward_step_pointwise(T* __restrict__ out_t, const T* __restrict__ hh,
                                       T* __restrict__ state, int64_t n, bool relu) {
  using acc_t = at::opmath_type<T>;
  RNNATTN_GRID_STRIDE(i, n) {
    const acc_t z = static_cast<acc_t>(out_t[i]) + static_cast<acc_t>(hh[i]);
    const T h = static_cast<T>(rnn_activate(z, relu));
    out_t[i] = h;
    state[i] = h;
  }
}

// Backward step, before g[:b] = dz_t @ W_hh (cuBLAS):
//   dz_t = (grad_out_t + g[:b]) * act'(h_t). n = b * H elements.
template <typename T>
__global__ void backward_step_pointwise(const T* __restrict__ grad_out_t,
                                        const T* __restrict__ g, const T* __restrict__ h_t,
                                        T* __restrict__ dz_t, int64_t n, bool relu) {
  using acc_t = at::opmath_type<T>;
  RNNATTN_GRID_STRIDE(i, n) {
    const acc_t dh = static_cast<acc_t>(grad_out_t[i]) + static_cast<acc_t>(g[i]);
    dz_t[i] = static_cast<T>(rnn_activation_grad(dh, static_cast<acc_t>(h_t[i]), relu));
  }
}

// hprev[r] = the state row r saw entering its step, for all N rows:
// hx[b] at the sequence's first step, else the output of the step before
// (in the direction the forward walked). batch/offset: the step schedule of
// packed input, or both null for padded input (B rows per step).
template <typename T>
__global__ void gather_prev_state(const T* __restrict__ out, const T* __restrict__ hx,
                                  const int64_t* __restrict__ batch,
                                  const int64_t* __restrict__ offset, int64_t steps, int64_t B,
                                  int64_t H, bool reverse, T* __restrict__ hprev, int64_t n) {
  RNNATTN_GRID_STRIDE(i, n) {
    const int64_t row = i / H, j = i - row * H;
    int64_t t;
    if (offset == nullptr) {
      t = row / B;
    } else {
      // The step of `row`: the last t with offset[t] <= row (offsets increase).
      int64_t lo = 0, hi = steps - 1;
      while (lo < hi) {
        const int64_t mid = (lo + hi + 1) / 2;
        if (offset[mid] <= row) lo = mid; else hi = mid - 1;
      }
      t = lo;
    }
    const int64_t b = row - (offset == nullptr ? t * B : offset[t]);
    // The previous step in walk order, and whether this row was active in it.
    const int64_t tp = reverse ? t + 1 : t - 1;
    const bool from_hx = tp < 0 || tp >= steps || (batch != nullptr && b >= batch[tp]);
    hprev[i] = from_hx ? hx[b * H + j]
                       : out[((offset == nullptr ? tp * B : offset[tp]) + b) * H + j];
  }
}

}  // namespace rnnattn::cuda

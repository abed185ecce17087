// CUDA kernels of the attention-pooling operators. Same semantics, argument
// checks and messages as the CPU kernels (csrc/cpu/attention.cpp; conventions
// in csrc/attention_common.h). float32, float64, float16 and bfloat16; all
// arithmetic in acc_t = at::opmath_type<T> (float for the 16-bit types).
//
// Work unit: one (sequence b, chunk c), handled by one block (grid-stride
// over units, the grid capped at a few blocks per SM). Within a block, warp
// w takes steps t0 + w, t0 + w + nw, ...; the lanes of a warp split the
// feature dim D, so every row load H_t is coalesced. Scores are warp
// reductions (__shfl_xor_sync).
//
// Forward: each warp keeps its own online softmax (running max m, sum l and
// context accumulator acc, in shared memory), so H is read once; at the end
// of the unit the warps' partial results are merged,
//     M = max_w m_w,  L = sum_w exp(m_w - M) l_w,  c = sum_w exp(m_w - M) acc_w / L,
// and the raw scores (parked in an acc_t buffer: a 16-bit weights output
// could not hold them) are turned into weights exp(e_t - M) / L.
//
// Backward: s_h = dc_h . c_h + sum_t a_t da_t (a block reduction, no pass
// over H), then, per valid step, one warp computes g_t = dc_h . H_t + da_t,
// de_t = a_t (g_t - s_h), writes dH_t = sum_h a_t dc_h + de_t w_h and adds
// de_t H_t to its own dw accumulator. The block's warps are summed into one
// partial per block, and the partials summed (in a fixed order) on the host
// side with at::sum: no atomics, so dw is deterministic.
//
// Accumulators that do not fit in shared memory (large heads * D) live in a
// global workspace instead (same code: the kernels take a generic pointer).
// Invalid steps are never read; their grad rows are written as zeros.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "../attention_common.h"

namespace rnnattn::cuda {
namespace {

constexpr int kMaxWarps = 8;
// Shared memory a block may use without opting in.
constexpr size_t kDefaultSmem = 48 * 1024;

// Everything both kernels read. Strides are in elements.
template <typename T>
struct PoolArgs {
  int64_t batch, steps, dim, heads, chunk, chunks, units;
  const T* x;  // row (b, t) at x + b * x_sb + t * x_st, D contiguous
  int64_t x_sb, x_st;
  const T* w;  // linear: (k, D)
  const T* sc;  // scores op: (b, t, h) at sc + b * sc_sb + t * sc_st + h * sc_sh
  int64_t sc_sb, sc_st, sc_sh;
  const int64_t* len;  // (B,) or null
  const bool* mask;    // (b, t) at mask + b * m_sb + t * m_st, or null
  int64_t m_sb, m_st;
};

template <typename T>
__device__ __forceinline__ bool kept(const PoolArgs<T>& p, int64_t b, int64_t t) {
  return p.mask == nullptr || p.mask[b * p.m_sb + t * p.m_st];
}

// Steps [t0, t1) of unit i; steps >= tv are padding. Lengths were checked
// on the host; the clamp only keeps every index in bounds regardless.
struct Unit {
  int64_t b, t0, t1, tv;
};

template <typename T>
__device__ __forceinline__ Unit unit_of(const PoolArgs<T>& p, int64_t i) {
  const int64_t b = i / p.chunks, c = i % p.chunks;
  const int64_t t0 = c * p.chunk;
  const int64_t t1 = min(t0 + p.chunk, p.steps);
  int64_t len = p.len ? p.len[b] : p.steps;
  len = max(int64_t(0), min(len, p.steps));
  return Unit{b, t0, t1, min(t1, len)};
}

template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum over the block; every thread gets the result. red: one slot per warp.
template <typename A>
__device__ A block_sum(A v, A* red) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nw = blockDim.x / 32;
  v = warp_sum(v);
  if (lane == 0) red[warp] = v;
  __syncthreads();
  A s = 0;
  for (int i = 0; i < nw; ++i) s += red[i];
  __syncthreads();  // red is reused by the next call
  return s;
}

// Steps a warp takes at once: their row loads are in flight together, and
// their online-softmax updates fold into one pass over the accumulator.
constexpr int kRows = 4;

// The scores of rows xr[0..kRows) for head h (warp-uniform results); rows
// with use[i] == false are not read and score -inf.
template <typename T, typename A, bool kLinear>
__device__ __forceinline__ void scores_of(const PoolArgs<T>& p, int64_t b, int64_t t,
                                          int64_t h, const T* const (&xr)[kRows],
                                          const bool (&use)[kRows], int lane, A (&e)[kRows]) {
  if constexpr (kLinear) {
    const T* wh = p.w + h * p.dim;
    A part[kRows] = {};
    for (int64_t d = lane; d < p.dim; d += 32) {
      const A wv = static_cast<A>(wh[d]);
#pragma unroll
      for (int i = 0; i < kRows; ++i) {
        if (use[i]) part[i] += static_cast<A>(xr[i][d]) * wv;
      }
    }
#pragma unroll
    for (int i = 0; i < kRows; ++i) e[i] = use[i] ? warp_sum(part[i]) : A(-INFINITY);
  } else {
#pragma unroll
    for (int i = 0; i < kRows; ++i) {
      e[i] = use[i] ? static_cast<A>(p.sc[b * p.sc_sb + (t + i) * p.sc_st + h * p.sc_sh])
                    : A(-INFINITY);
    }
  }
}

// ---- forward -------------------------------------------------------------------

template <typename T, typename A>
struct FwdOut {
  T* ctx;   // (B, C, k, D)
  T* wts;   // (B, k, T)
  A* ebuf;  // (B, k, T) raw scores (may alias wts when T == A)
  A* ws;    // global accumulators (grid, nw, k, D), or null: shared memory
};

// Shared memory: m, l, f: [nw][k]; M, L: [k]; then acc [nw][k][D] unless ws.
template <typename A>
size_t fwd_smem_small(int nw, int64_t k) {
  return sizeof(A) * (3 * nw * k + 2 * k);
}

template <typename T, typename A, bool kLinear>
__global__ void __launch_bounds__(kMaxWarps * 32)
    attn_pool_fwd_kernel(const PoolArgs<T> p, const FwdOut<T, A> out) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int nw = blockDim.x / 32, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t k = p.heads, D = p.dim, T_ = p.steps;
  constexpr A kNegInf = -INFINITY;
  A* sm_m = reinterpret_cast<A*>(smem_raw);
  A* sm_l = sm_m + nw * k;
  A* sm_f = sm_l + nw * k;
  A* sm_M = sm_f + nw * k;
  A* sm_L = sm_M + k;
  A* acc_all = out.ws ? out.ws + static_cast<int64_t>(blockIdx.x) * nw * k * D : sm_L + k;
  A* acc = acc_all + warp * k * D;
  A* m = sm_m + warp * k;
  A* l = sm_l + warp * k;

  for (int64_t i = blockIdx.x; i < p.units; i += gridDim.x) {
    const Unit u = unit_of(p, i);
    for (int64_t j = lane; j < k * D; j += 32) acc[j] = A(0);
    for (int64_t h = lane; h < k; h += 32) {
      m[h] = kNegInf;
      l[h] = A(0);
    }
    __syncwarp();
    // This warp's steps, kRows at a time, online softmax: with M' the max of
    // the running max m and the new scores,
    //   acc = exp(m - M') acc + sum_i exp(e_i - M') H_i,  l likewise,  m = M'.
    for (int64_t tb = u.t0 + int64_t(warp) * kRows; tb < u.tv; tb += int64_t(nw) * kRows) {
      const T* xr[kRows];
      bool use[kRows];
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const int64_t t = tb + r;
        use[r] = t < u.tv && kept(p, u.b, t);  // warp-uniform
        xr[r] = p.x + u.b * p.x_sb + (use[r] ? t : 0) * p.x_st;
      }
      for (int64_t h = 0; h < k; ++h) {
        A e[kRows];
        scores_of<T, A, kLinear>(p, u.b, tb, h, xr, use, lane, e);
        if (lane == 0) {
#pragma unroll
          for (int r = 0; r < kRows; ++r) {
            if (use[r]) out.ebuf[(u.b * k + h) * T_ + tb + r] = e[r];
          }
        }
        const A mh = m[h];
        A mx = mh;
        bool add[kRows], any = false;
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
          mx = fmax(mx, e[r]);  // skips NaN; NaN then propagates through q below
          add[r] = use[r] && e[r] != kNegInf;  // a -inf score weighs 0
          any = any || add[r];
        }
        if (!any) continue;  // warp-uniform
        // 0 the first time (mh = -inf); NaN if the only scores so far are NaN.
        const A scale = exp(mh - mx);
        A q[kRows];
        A lsum = scale * l[h];
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
          q[r] = add[r] ? exp(e[r] - mx) : A(0);
          lsum += q[r];
        }
        A* ah = acc + h * D;
        for (int64_t d = lane; d < D; d += 32) {
          A v = scale * ah[d];
#pragma unroll
          for (int r = 0; r < kRows; ++r) {
            if (add[r]) v += q[r] * static_cast<A>(xr[r][d]);
          }
          ah[d] = v;
        }
        __syncwarp();  // every lane has read m[h], l[h]
        if (lane == 0) {
          m[h] = mx;
          l[h] = lsum;
        }
        __syncwarp();
      }
    }
    __syncthreads();
    // Merge the warps. A warp with l == 0 saw nothing (a NaN l is kept, so
    // NaN scores reach the result as they do on the CPU).
    for (int64_t h = threadIdx.x; h < k; h += blockDim.x) {
      A M = kNegInf;
      for (int w = 0; w < nw; ++w) M = fmax(M, sm_m[w * k + h]);
      A L = 0;
      for (int w = 0; w < nw; ++w) {
        const A lw = sm_l[w * k + h];
        const A f = lw == A(0) ? A(0) : exp(sm_m[w * k + h] - M);
        sm_f[w * k + h] = f;
        L += f * lw;
      }
      sm_M[h] = M;
      sm_L[h] = L;
    }
    __syncthreads();
    T* ctx = out.ctx + i * k * D;
    for (int64_t j = threadIdx.x; j < k * D; j += blockDim.x) {
      const int64_t h = j / D;
      A v = 0;
      for (int w = 0; w < nw; ++w) v += sm_f[w * k + h] * acc_all[w * k * D + j];
      const A L = sm_L[h];
      ctx[j] = static_cast<T>(L == A(0) ? A(0) : v / L);
    }
    for (int64_t t = u.t0 + threadIdx.x; t < u.t1; t += blockDim.x) {
      const bool valid = t < u.tv && kept(p, u.b, t);
      for (int64_t h = 0; h < k; ++h) {
        const int64_t o = (u.b * k + h) * T_ + t;
        const A L = sm_L[h];
        // ebuf may alias wts: this thread reads o, then writes it.
        out.wts[o] = static_cast<T>(valid && L != A(0) ? exp(out.ebuf[o] - sm_M[h]) / L : A(0));
      }
    }
    __syncthreads();  // shared state is reset by the next unit
  }
}

// ---- backward ------------------------------------------------------------------

template <typename T, typename A>
struct BwdArgs {
  const T* ctx;  // (B, C, k, D) contiguous
  const T* dc;   // (B, C, k, D) contiguous
  const T* wts;  // (B, k, T) contiguous
  const T* da;   // (B, k, T) contiguous, or null
  T* dx;         // grad of H, or null; row (b, t) at dx + b * dx_sb + t * dx_st
  int64_t dx_sb, dx_st;
  T* dsc;  // scores op: grad of scores, or null
  int64_t dsc_sb, dsc_st, dsc_sh;
  A* dw_part;  // linear: (grid, k, D) per-block partial grads of w, or null
  A* ws;       // global dw accumulators (grid, nw, k, D), or null: shared memory
};

// Shared memory: s [k], red [nw], a and de [nw][k][kRows]; then dw
// [nw][k][D] if dw_part and not ws.
template <typename A>
size_t bwd_smem_small(int nw, int64_t k) {
  return sizeof(A) * (k + nw + 2 * nw * k * kRows);
}

template <typename T, typename A, bool kLinear>
__global__ void __launch_bounds__(kMaxWarps * 32)
    attn_pool_bwd_kernel(const PoolArgs<T> p, const BwdArgs<T, A> g) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int nw = blockDim.x / 32, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t k = p.heads, D = p.dim, T_ = p.steps;
  A* sm_s = reinterpret_cast<A*>(smem_raw);
  A* sm_red = sm_s + k;
  A* sm_a = sm_red + nw;
  A* sm_de = sm_a + nw * k * kRows;
  A* dw_all = nullptr;
  if (kLinear && g.dw_part) {
    dw_all = g.ws ? g.ws + static_cast<int64_t>(blockIdx.x) * nw * k * D : sm_de + nw * k * kRows;
    for (int64_t j = threadIdx.x; j < nw * k * D; j += blockDim.x) dw_all[j] = A(0);
  }
  A* dw = dw_all ? dw_all + warp * k * D : nullptr;
  A* a_w = sm_a + warp * k * kRows;  // [k][kRows]
  A* de_w = sm_de + warp * k * kRows;
  // The scores op needs g_t (dots with H) only for grad_scores.
  const bool need_de = kLinear || g.dsc != nullptr;
  __syncthreads();

  for (int64_t i = blockIdx.x; i < p.units; i += gridDim.x) {
    const Unit u = unit_of(p, i);
    const T* dc = g.dc + i * k * D;
    const T* ctx = g.ctx + i * k * D;
    const T* wts = g.wts + u.b * k * T_;
    const T* da = g.da ? g.da + u.b * k * T_ : nullptr;
    if (need_de) {
      for (int64_t h = 0; h < k; ++h) {
        A part = 0;
        for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
          part += static_cast<A>(dc[h * D + d]) * static_cast<A>(ctx[h * D + d]);
        }
        if (da) {
          for (int64_t t = u.t0 + threadIdx.x; t < u.tv; t += blockDim.x) {
            if (kept(p, u.b, t)) part += static_cast<A>(wts[h * T_ + t]) * static_cast<A>(da[h * T_ + t]);
          }
        }
        const A s = block_sum(part, sm_red);
        if (threadIdx.x == 0) sm_s[h] = s;
      }
      __syncthreads();
    }
    // kRows steps per warp at a time, over ALL steps of the chunk: invalid
    // ones (a = de = 0) get their zero grad rows in the same pass.
    for (int64_t tb = u.t0 + int64_t(warp) * kRows; tb < u.t1; tb += int64_t(nw) * kRows) {
      const T* xr[kRows];
      T* dxr[kRows];
      bool in[kRows], use[kRows];
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const int64_t t = tb + r;
        in[r] = t < u.t1;
        use[r] = t < u.tv && kept(p, u.b, t);  // warp-uniform
        xr[r] = p.x + u.b * p.x_sb + (use[r] ? t : 0) * p.x_st;
        dxr[r] = g.dx && in[r] ? g.dx + u.b * g.dx_sb + t * g.dx_st : nullptr;
      }
      for (int64_t h = 0; h < k; ++h) {
        A a[kRows], de[kRows] = {};
#pragma unroll
        for (int r = 0; r < kRows; ++r) a[r] = use[r] ? static_cast<A>(wts[h * T_ + tb + r]) : A(0);
        if (need_de) {
          const T* dch = dc + h * D;
          A part[kRows] = {};
          for (int64_t d = lane; d < D; d += 32) {
            const A dcv = static_cast<A>(dch[d]);
#pragma unroll
            for (int r = 0; r < kRows; ++r) {
              if (use[r]) part[r] += dcv * static_cast<A>(xr[r][d]);
            }
          }
#pragma unroll
          for (int r = 0; r < kRows; ++r) {
            if (use[r]) {
              const A gt = warp_sum(part[r]) + (da ? static_cast<A>(da[h * T_ + tb + r]) : A(0));
              de[r] = a[r] * (gt - sm_s[h]);
            }
          }
        }
        if (lane == 0) {
#pragma unroll
          for (int r = 0; r < kRows; ++r) {
            a_w[h * kRows + r] = a[r];
            de_w[h * kRows + r] = de[r];
            if (!kLinear && g.dsc && in[r]) {
              g.dsc[u.b * g.dsc_sb + (tb + r) * g.dsc_st + h * g.dsc_sh] = static_cast<T>(de[r]);
            }
          }
        }
      }
      __syncwarp();
      if (g.dx || dw) {
        for (int64_t d = lane; d < D; d += 32) {
          A o[kRows] = {}, xv[kRows] = {};
          if (dw) {
#pragma unroll
            for (int r = 0; r < kRows; ++r) {
              if (use[r]) xv[r] = static_cast<A>(xr[r][d]);
            }
          }
          for (int64_t h = 0; h < k; ++h) {
            const A dcv = static_cast<A>(dc[h * D + d]);
            const A* ah = a_w + h * kRows;
            const A* deh = de_w + h * kRows;
            A wv = 0, dws = 0;
            if constexpr (kLinear) wv = static_cast<A>(p.w[h * D + d]);
#pragma unroll
            for (int r = 0; r < kRows; ++r) {
              o[r] += ah[r] * dcv;
              if constexpr (kLinear) {
                o[r] += deh[r] * wv;
                dws += deh[r] * xv[r];
              }
            }
            if (dw) dw[h * D + d] += dws;
          }
#pragma unroll
          for (int r = 0; r < kRows; ++r) {
            if (dxr[r]) dxr[r][d] = static_cast<T>(o[r]);
          }
        }
      }
      __syncwarp();  // a_w / de_w are rewritten by the next rows
    }
    __syncthreads();  // sm_s is rewritten by the next unit
  }
  if (dw_all) {
    A* part = g.dw_part + static_cast<int64_t>(blockIdx.x) * k * D;
    for (int64_t j = threadIdx.x; j < k * D; j += blockDim.x) {
      A v = 0;
      for (int w = 0; w < nw; ++w) v += dw_all[w * k * D + j];
      part[j] = v;
    }
  }
}

// ---- host side -----------------------------------------------------------------

void check_cuda_dtype(const at::Tensor& input, const char* op) {
  const auto dt = input.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble || dt == at::kHalf || dt == at::kBFloat16,
              "rnnattn.", op,
              ": the CUDA kernel supports float32, float64, float16 and bfloat16 input, got ", dt);
}

// Warps per block: up to kMaxWarps, but no more than a chunk has groups of
// kRows steps.
int warps_for(const AttnShape& s) {
  int nw = 1;
  while (nw < kMaxWarps && int64_t(nw) * kRows < s.chunk) nw *= 2;
  return nw;
}

// Blocks: one per unit, capped at 8 per SM (grid-stride beyond), and so
// that the per-block global scratch (bytes_per_block: dw partials, spilled
// accumulators) stays under kScratchBudget.
constexpr int64_t kScratchBudget = int64_t(64) << 20;

int64_t grid_for(const AttnShape& s, int64_t bytes_per_block) {
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  int64_t grid = std::min<int64_t>(s.batch * s.chunks, int64_t(sms) * 8);
  if (bytes_per_block > 0) grid = std::min(grid, kScratchBudget / bytes_per_block);
  return std::max<int64_t>(1, grid);
}

// Whether `bytes` of dynamic shared memory can be had (opting the kernel in
// past 48 KiB when needed).
template <typename Kernel>
bool fit_smem(Kernel kernel, size_t bytes) {
  if (bytes <= kDefaultSmem) return true;
  const size_t optin = at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin;
  if (bytes > optin) return false;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(bytes)));
  return true;
}

struct Prepared {
  at::Tensor x, len, mask;
};

Prepared prepare(const AttnShape& s, const at::Tensor& input,
                 const c10::optional<at::Tensor>& lengths,
                 const c10::optional<at::Tensor>& mask, const char* op) {
  Prepared r;
  r.x = input.stride(2) == 1 ? input : input.contiguous();
  if (lengths.has_value()) {
    // Checked on the host: free for CPU lengths (the usual case, e.g. from a
    // PackedSequence); lengths already on the GPU cost one device sync here.
    const at::Tensor l = checked_lengths_cpu(*lengths, s.steps, op);
    r.len = lengths->is_cuda() ? lengths->to(at::kLong).contiguous() : l.to(input.device());
  }
  if (mask.has_value()) r.mask = *mask;
  return r;
}

template <typename T>
PoolArgs<T> make_args(const AttnShape& s, const Prepared& r) {
  PoolArgs<T> p{};
  p.batch = s.batch;
  p.steps = s.steps;
  p.dim = s.dim;
  p.heads = s.heads;
  p.chunk = s.chunk;
  p.chunks = s.chunks;
  p.units = s.batch * s.chunks;
  p.x = r.x.data_ptr<T>();
  p.x_sb = r.x.stride(0);
  p.x_st = r.x.stride(1);
  p.len = r.len.defined() ? r.len.data_ptr<int64_t>() : nullptr;
  if (r.mask.defined()) {
    p.mask = r.mask.data_ptr<bool>();
    p.m_sb = r.mask.stride(0);
    p.m_st = r.mask.stride(1);
  }
  return p;
}

template <typename T>
void set_scores(PoolArgs<T>& p, const at::Tensor& scores) {
  p.sc = scores.data_ptr<T>();
  p.sc_sb = scores.stride(0);
  p.sc_st = scores.stride(1);
  p.sc_sh = scores.stride(2);
}

template <typename T, bool kLinear>
void launch_forward(const AttnShape& s, const PoolArgs<T>& p, const at::Tensor& context,
                    const at::Tensor& weights) {
  using A = at::opmath_type<T>;
  if (p.units == 0) return;
  const auto opts = context.options().dtype(c10::CppTypeToScalarType<A>::value);
  const int nw = warps_for(s);
  auto kernel = attn_pool_fwd_kernel<T, A, kLinear>;
  size_t smem = fwd_smem_small<A>(nw, s.heads);
  const size_t acc_bytes = sizeof(A) * nw * s.heads * s.dim;
  const bool acc_in_smem = fit_smem(kernel, smem + acc_bytes);
  const int64_t grid = grid_for(s, acc_in_smem ? 0 : acc_bytes);
  FwdOut<T, A> out{};
  out.ctx = context.data_ptr<T>();
  out.wts = weights.data_ptr<T>();
  at::Tensor ebuf;
  if constexpr (std::is_same_v<T, A>) {
    out.ebuf = out.wts;
  } else {
    ebuf = at::empty({s.batch, s.heads, s.steps}, opts);
    out.ebuf = ebuf.data_ptr<A>();
  }
  at::Tensor ws;
  if (acc_in_smem) {
    smem += acc_bytes;
  } else {
    ws = at::empty({grid, nw, s.heads, s.dim}, opts);
    out.ws = ws.data_ptr<A>();
    TORCH_CHECK(fit_smem(kernel, smem), "rnnattn.attention_pool: heads = ", s.heads,
                " needs more shared memory than this device has");
  }
  kernel<<<static_cast<unsigned>(grid), nw * 32, smem, at::cuda::getCurrentCUDAStream()>>>(p, out);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// dw: (k, D) output of the linear op, or undefined.
template <typename T, bool kLinear>
void launch_backward(const AttnShape& s, const PoolArgs<T>& p, BwdArgs<T, at::opmath_type<T>> g,
                     const at::Tensor& dw, const at::Tensor& like) {
  using A = at::opmath_type<T>;
  const auto opts = like.options().dtype(c10::CppTypeToScalarType<A>::value);
  if (p.units == 0) {
    if (dw.defined()) dw.zero_();
    return;
  }
  const int nw = warps_for(s);
  auto kernel = attn_pool_bwd_kernel<T, A, kLinear>;
  size_t smem = bwd_smem_small<A>(nw, s.heads);
  const size_t acc_bytes = sizeof(A) * nw * s.heads * s.dim;
  const size_t part_bytes = sizeof(A) * s.heads * s.dim;
  const bool acc_in_smem = dw.defined() && fit_smem(kernel, smem + acc_bytes);
  const int64_t grid =
      grid_for(s, dw.defined() ? part_bytes + (acc_in_smem ? 0 : acc_bytes) : 0);
  at::Tensor part, ws;
  if (dw.defined()) {
    part = at::empty({grid, s.heads, s.dim}, opts);
    g.dw_part = part.data_ptr<A>();
    if (acc_in_smem) {
      smem += acc_bytes;
    } else {
      ws = at::empty({grid, nw, s.heads, s.dim}, opts);
      g.ws = ws.data_ptr<A>();
    }
  }
  TORCH_CHECK(fit_smem(kernel, smem), "rnnattn.attention_pool_backward: heads = ", s.heads,
              " needs more shared memory than this device has");
  kernel<<<static_cast<unsigned>(grid), nw * 32, smem, at::cuda::getCurrentCUDAStream()>>>(p, g);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (dw.defined()) dw.copy_(part.sum(0));
}

template <typename T>
BwdArgs<T, at::opmath_type<T>> make_bwd(const at::Tensor& ctx, const at::Tensor& dc,
                                        const at::Tensor& wts, const at::Tensor& da,
                                        const at::Tensor& dx) {
  BwdArgs<T, at::opmath_type<T>> g{};
  g.ctx = ctx.data_ptr<T>();
  g.dc = dc.data_ptr<T>();
  g.wts = wts.data_ptr<T>();
  g.da = da.defined() ? da.data_ptr<T>() : nullptr;
  if (dx.defined()) {
    g.dx = dx.data_ptr<T>();
    g.dx_sb = dx.stride(0);
    g.dx_st = dx.stride(1);
  }
  return g;
}

#define RNNATTN_DISPATCH(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

std::tuple<at::Tensor, at::Tensor> attention_pool_forward_cuda(
    const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
    const c10::optional<at::Tensor>& lengths, const c10::optional<at::Tensor>& mask,
    int64_t chunk_size) {
  constexpr const char* op = "attention_pool";
  // bias: checked, unused (softmax is shift-invariant; see the CPU kernel).
  const AttnShape s = check_attn_linear_args(input, weight, bias, lengths, mask, chunk_size);
  check_cuda_dtype(input, op);
  const c10::cuda::CUDAGuard guard(input.device());
  const Prepared r = prepare(s, input, lengths, mask, op);
  const at::Tensor w = weight.contiguous();
  auto context = at::empty({s.batch, s.chunks, s.heads, s.dim}, input.options());
  auto weights = at::empty({s.batch, s.heads, s.steps}, input.options());
  RNNATTN_DISPATCH(input.scalar_type(), "rnnattn::attention_pool_forward", [&] {
    PoolArgs<scalar_t> p = make_args<scalar_t>(s, r);
    p.w = w.data_ptr<scalar_t>();
    launch_forward<scalar_t, true>(s, p, context, weights);
  });
  return {context, weights};
}

std::tuple<at::Tensor, at::Tensor> attention_pool_backward_cuda(
    const at::Tensor& grad_context, const c10::optional<at::Tensor>& grad_weights,
    const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& lengths,
    const c10::optional<at::Tensor>& mask, const at::Tensor& context, const at::Tensor& weights,
    int64_t chunk_size, bool need_input_grad, bool need_weight_grad) {
  constexpr const char* op = "attention_pool_backward";
  const AttnShape s =
      check_attn_linear_args(input, weight, c10::nullopt, lengths, mask, chunk_size);
  check_attn_backward_args(s, input, grad_context, grad_weights, context, weights, op);
  check_cuda_dtype(input, op);
  const c10::cuda::CUDAGuard guard(input.device());
  const Prepared r = prepare(s, input, lengths, mask, op);
  const at::Tensor w = weight.contiguous();
  const at::Tensor ctx = context.contiguous(), dc = grad_context.contiguous();
  const at::Tensor wts = weights.contiguous();
  const at::Tensor da = grad_weights.has_value() ? grad_weights->contiguous() : at::Tensor();
  const auto none = at::empty({0}, input.options());
  at::Tensor dx = need_input_grad ? at::empty_like(r.x) : at::Tensor();
  at::Tensor dw = need_weight_grad ? at::empty({s.heads, s.dim}, input.options()) : at::Tensor();
  if (need_input_grad || need_weight_grad) {
    RNNATTN_DISPATCH(input.scalar_type(), "rnnattn::attention_pool_backward", [&] {
      PoolArgs<scalar_t> p = make_args<scalar_t>(s, r);
      p.w = w.data_ptr<scalar_t>();
      launch_backward<scalar_t, true>(s, p, make_bwd<scalar_t>(ctx, dc, wts, da, dx), dw, input);
    });
  }
  return {dx.defined() ? dx : none, dw.defined() ? dw : none};
}

std::tuple<at::Tensor, at::Tensor> attention_pool_scores_forward_cuda(
    const at::Tensor& input, const at::Tensor& scores, const c10::optional<at::Tensor>& lengths,
    const c10::optional<at::Tensor>& mask, int64_t chunk_size) {
  constexpr const char* op = "attention_pool_scores";
  const AttnShape s = check_attn_scores_args(input, scores, lengths, mask, chunk_size);
  check_cuda_dtype(input, op);
  const c10::cuda::CUDAGuard guard(input.device());
  const Prepared r = prepare(s, input, lengths, mask, op);
  auto context = at::empty({s.batch, s.chunks, s.heads, s.dim}, input.options());
  auto weights = at::empty({s.batch, s.heads, s.steps}, input.options());
  RNNATTN_DISPATCH(input.scalar_type(), "rnnattn::attention_pool_scores_forward", [&] {
    PoolArgs<scalar_t> p = make_args<scalar_t>(s, r);
    set_scores(p, scores);
    launch_forward<scalar_t, false>(s, p, context, weights);
  });
  return {context, weights};
}

std::tuple<at::Tensor, at::Tensor> attention_pool_scores_backward_cuda(
    const at::Tensor& grad_context, const c10::optional<at::Tensor>& grad_weights,
    const at::Tensor& input, const at::Tensor& scores, const c10::optional<at::Tensor>& lengths,
    const c10::optional<at::Tensor>& mask, const at::Tensor& context, const at::Tensor& weights,
    int64_t chunk_size, bool need_input_grad, bool need_scores_grad) {
  constexpr const char* op = "attention_pool_scores_backward";
  const AttnShape s = check_attn_scores_args(input, scores, lengths, mask, chunk_size);
  check_attn_backward_args(s, input, grad_context, grad_weights, context, weights, op);
  check_cuda_dtype(input, op);
  const c10::cuda::CUDAGuard guard(input.device());
  const Prepared r = prepare(s, input, lengths, mask, op);
  const at::Tensor ctx = context.contiguous(), dc = grad_context.contiguous();
  const at::Tensor wts = weights.contiguous();
  const at::Tensor da = grad_weights.has_value() ? grad_weights->contiguous() : at::Tensor();
  const auto none = at::empty({0}, input.options());
  at::Tensor dx = need_input_grad ? at::empty_like(r.x) : at::Tensor();
  at::Tensor dsc = need_scores_grad ? at::empty_like(scores) : at::Tensor();
  if (need_input_grad || need_scores_grad) {
    RNNATTN_DISPATCH(input.scalar_type(), "rnnattn::attention_pool_scores_backward", [&] {
      PoolArgs<scalar_t> p = make_args<scalar_t>(s, r);
      set_scores(p, scores);
      auto g = make_bwd<scalar_t>(ctx, dc, wts, da, dx);
      if (dsc.defined()) {
        g.dsc = dsc.data_ptr<scalar_t>();
        g.dsc_sb = dsc.stride(0);
        g.dsc_st = dsc.stride(1);
        g.dsc_sh = dsc.stride(2);
      }
      launch_backward<scalar_t, false>(s, p, g, at::Tensor(), input);
    });
  }
  return {dx.defined() ? dx : none, dsc.defined() ? dsc : none};
}

}  // namespace

TORCH_LIBRARY_IMPL(rnnattn, CUDA, m) {
  m.impl("attention_pool_forward", &attention_pool_forward_cuda);
  m.impl("attention_pool_backward", &attention_pool_backward_cuda);
  m.impl("attention_pool_scores_forward", &attention_pool_scores_forward_cuda);
  m.impl("attention_pool_scores_backward", &attention_pool_scores_backward_cuda);
}

}  // namespace rnnattn::cuda

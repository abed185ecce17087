// CUDA kernels of the attention-pooling operators, and how they are launched
// (the host code that allocates and launches is in attention.cu; the kernels
// live in this header so that tests/emulation runs these very kernels on the
// CPU). Same semantics as the CPU kernels (csrc/cpu/attention.cpp;
// conventions in csrc/attention_common.h). float32, float64, float16 and
// bfloat16; all arithmetic in acc_t = at::opmath_type<T> (float for the
// 16-bit types), the template parameter A below.
//
// Work unit: one (sequence b, chunk c), handled by one block (grid-stride
// over units, the grid capped at a few blocks per SM). Within a block, warp
// w takes the groups of kRows steps that start at t0 + w * kRows,
// t0 + (w + nw) * kRows, ...; the lanes of a warp split the feature dim D,
// so every row load H_t is coalesced. Scores are warp reductions
// (__shfl_xor_sync).
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
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "dynamic_smem.cuh"

namespace rnnattn::cuda::pool {

constexpr int kMaxWarps = 8;

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
  RNNATTN_DYNAMIC_SMEM(unsigned char, smem_raw);
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
  RNNATTN_DYNAMIC_SMEM(unsigned char, smem_raw);
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

// ---- launch plan ---------------------------------------------------------------
// Host code: how attention.cu launches the kernels above for a given shape
// and device (the emulation launches them by the same plan).

// Shared memory a block may use without opting in.
constexpr size_t kDefaultSmem = 48 * 1024;

// Warps per block: up to kMaxWarps, but no more than a chunk of `chunk`
// steps has groups of kRows steps.
inline int warps_for(int64_t chunk) {
  int nw = 1;
  while (nw < kMaxWarps && int64_t(nw) * kRows < chunk) nw *= 2;
  return nw;
}

// Blocks: one per unit, capped at 8 per SM (grid-stride beyond), and so
// that the per-block global scratch (bytes_per_block: dw partials, spilled
// accumulators) stays under kScratchBudget.
constexpr int64_t kScratchBudget = int64_t(64) << 20;

inline int64_t grid_for(int64_t units, int64_t sms, int64_t bytes_per_block) {
  int64_t grid = std::min<int64_t>(units, sms * 8);
  if (bytes_per_block > 0) grid = std::min(grid, kScratchBudget / bytes_per_block);
  return std::max<int64_t>(1, grid);
}

// One launch of a pooling kernel.
struct PoolLaunch {
  int warps = 1;            // nw: the block has nw * 32 threads
  int64_t grid = 1;         // blocks
  size_t smem = 0;          // dynamic shared memory per block, bytes
  bool acc_in_smem = false; // the per-warp (k, D) accumulators (forward: context; backward:
                            // dw) in shared memory; else in a global workspace (grid, nw, k, D)
  bool fits = false;        // smem <= the limit the plan was made for
};

// Forward over `units` (sequence, chunk) units of `chunk` steps, k heads, D
// features, on a device with `sms` SMs whose blocks can have up to
// `smem_limit` bytes of dynamic shared memory (opting in past kDefaultSmem).
template <typename A>
PoolLaunch plan_forward(int64_t units, int64_t chunk, int64_t heads, int64_t dim, int64_t sms,
                        size_t smem_limit) {
  PoolLaunch L;
  L.warps = warps_for(chunk);
  const size_t small = fwd_smem_small<A>(L.warps, heads);
  const size_t acc_bytes = sizeof(A) * L.warps * heads * dim;
  L.acc_in_smem = small + acc_bytes <= smem_limit;
  L.grid = grid_for(units, sms, L.acc_in_smem ? 0 : acc_bytes);
  L.smem = small + (L.acc_in_smem ? acc_bytes : 0);
  L.fits = L.smem <= smem_limit;
  return L;
}

// Backward; weight_grad: the linear op's dw is wanted (per-block partials of
// (k, D) in global memory, summed on the host, and per-warp accumulators).
template <typename A>
PoolLaunch plan_backward(int64_t units, int64_t chunk, int64_t heads, int64_t dim, int64_t sms,
                         size_t smem_limit, bool weight_grad) {
  PoolLaunch L;
  L.warps = warps_for(chunk);
  const size_t small = bwd_smem_small<A>(L.warps, heads);
  const size_t acc_bytes = sizeof(A) * L.warps * heads * dim;
  const size_t part_bytes = sizeof(A) * heads * dim;
  L.acc_in_smem = weight_grad && small + acc_bytes <= smem_limit;
  L.grid = grid_for(units, sms, weight_grad ? part_bytes + (L.acc_in_smem ? 0 : acc_bytes) : 0);
  L.smem = small + (L.acc_in_smem ? acc_bytes : 0);
  L.fits = L.smem <= smem_limit;
  return L;
}

}  // namespace rnnattn::cuda::pool

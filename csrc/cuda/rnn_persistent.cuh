// Persistent kernels of the RNN recurrence (the fast path for small and
// medium batches; see rnn.cu for when it is chosen).
//
// Why: a per-step loop issues T tiny GEMMs, each one launch- and
// latency-bound at small batch, and each re-reads W_hh from L2/HBM. Here one
// cooperative launch runs every step (Diamos et al. 2016, "Persistent RNNs";
// cuDNN's CUDNN_RNN_ALGO_PERSIST_STATIC): W_hh is read once, stays in shared
// memory for the whole sequence, and the steps are separated by a grid-wide
// barrier instead of kernel boundaries.
//
// Work split. The grid has G <= #SMs blocks (one per SM). Block g owns the
// output units U_g = [g*R, (g+1)*R) and keeps, in shared memory as float32,
// the R rows of the matrix that produce them:
//   forward:  W_hh[j, :]   (h_t[b, j]  = act(P_t[b, j] + sum_k W_hh[j, k] h_{t-1}[b, k]))
//   backward: W_hh[:, j]   (g[b, j]   = sum_k dz_t[b, k] W_hh[k, j])
// Each step every block needs the whole vector exchanged in the previous step
// (h_{t-1}, or dz_t), so that vector is published to a float32 global buffer
// X (double-buffered: the step reads X[i&1] while writing X[(i+1)&1], so one
// grid.sync() per step suffices) and each block stages it into shared memory
// (BB batch rows at a time) with L1-bypassing loads (other SMs wrote it;
// L1 is not coherent across SMs). The running state (forward h, backward g)
// of a block's own units lives in a float32 global buffer S that only that
// block touches, so rows whose sequence is not active this step (packed
// input) simply keep their value, and h_n / grad_hx are S at the end.
//
// Inside a block, a warp computes a 4 (units) x 4 (batch rows) tile of dot
// products of length H: each lane takes every 32nd float4 of k, does 64 FMAs
// per 8 shared-memory loads, and the 16 partial sums are reduced across the
// warp with shuffles. Rows of Ws and Xs are padded to a multiple of 128
// floats (zero-filled) so every lane runs the same float4 loop.
//
// Arithmetic is float32 for float/half/bfloat16 storage; the exchanged
// vector and the running state stay float32 across steps (only the outputs
// are rounded to the storage type). float64 does not use this path.
#pragma once

#include <cooperative_groups.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>

#include "dynamic_smem.cuh"
#include "rnn_pointwise.cuh"

namespace rnnattn::cuda {

namespace persistent {

constexpr int kThreads = 256;       // 8 warps per block
constexpr int kWarps = kThreads / 32;
constexpr int kTileUnits = 4;       // units per warp tile (R is a multiple of this)
constexpr int kTileBatch = 4;       // batch rows per warp tile (BB is a multiple of this)
constexpr int kRowAlign = 128;      // 32 lanes x float4: padding of Ws / Xs rows
constexpr int64_t kMaxChunk = 64;   // batch rows of the exchanged vector staged per pass (at most)

// Everything a persistent launch needs; one struct so the cooperative launch
// passes a single argument.
template <typename T>
struct Params {
  // Sizes and the launch plan (see plan() below).
  int64_t steps;    // T
  int64_t batch;    // B (rows of hx)
  int64_t hidden;   // H
  int units;        // R: output units per block
  int chunk;        // BB: batch rows staged per pass
  int padded;       // Hp: padded row length of Ws and Xs
  bool relu;
  bool walk_back;   // walk t = T-1 .. 0 (else 0 .. T-1)
  // Step schedule on the device: step t covers rows [offset[t], offset[t] + sched_batch[t]).
  // Both null for padded input (every step: B rows at offset t * B).
  const int64_t* sched_batch;
  const int64_t* sched_offset;
  const T* w_hh;    // (H, H)
  float* exchange;  // (2, B, H): the published vector, double-buffered
  float* state;     // (B, H): each block's own columns only
  // Forward: out holds P on entry, h on exit; h0 = hx, h_last = h_n.
  // Backward: out is the forward output (read), grad_out / grad_last =
  // grad_output / grad_hn, dz = dZ (N, H), h_last = grad_hx.
  T* out;
  const T* h0;
  T* h_last;
  const T* grad_out;
  const T* grad_last;
  T* dz;
};

// The sizes of a persistent launch for batch B and hidden size H on a device
// with `sms` SMs and `smem_max` bytes of (opt-in) shared memory per block:
// condition 3 of the path rule in rnn.cu (cooperative launch and occupancy,
// conditions 2 and 4, are checked there). With R = roundup4(ceil(H / sms))
// units per block and Hp = roundup128(H): G = ceil(H / R) blocks, each with
// R rows of W_hh and BB staged batch rows, (R + BB) * Hp floats of shared
// memory, BB = min(roundup4(B), kMaxChunk, what fits), at least 4.
struct Plan {
  bool ok = false;
  std::string why;  // set when !ok
  int blocks = 0;   // G
  int units = 0;    // R
  int chunk = 0;    // BB
  int padded = 0;   // Hp
  size_t smem = 0;  // dynamic shared memory bytes per block
};

inline Plan plan(int64_t B, int64_t H, int64_t sms, int64_t smem_max) {
  auto round_up = [](int64_t x, int64_t m) { return (x + m - 1) / m * m; };
  Plan p;
  const int64_t Hp = round_up(H, kRowAlign);
  const int64_t R = round_up((H + sms - 1) / sms, kTileUnits);
  const int64_t row_bytes = Hp * static_cast<int64_t>(sizeof(float));
  const int64_t w_bytes = R * row_bytes;
  if (w_bytes + kTileBatch * row_bytes > smem_max) {
    p.why = "hidden_size " + std::to_string(H) + " is too large: a block's W_hh slice (" +
            std::to_string(R) + " x " + std::to_string(Hp) + " floats) plus " +
            std::to_string(kTileBatch) + " staged rows needs " +
            std::to_string(w_bytes + kTileBatch * row_bytes) + " bytes of shared memory, the " +
            "device allows " + std::to_string(smem_max);
    return p;
  }
  const int64_t fit = (smem_max - w_bytes) / row_bytes / kTileBatch * kTileBatch;
  const int64_t chunk = std::min({round_up(B, kTileBatch), round_up(kMaxChunk, kTileBatch), fit});
  p.units = static_cast<int>(R);
  p.blocks = static_cast<int>((H + R - 1) / R);
  p.chunk = static_cast<int>(chunk);
  p.padded = static_cast<int>(Hp);
  p.smem = static_cast<size_t>(w_bytes + chunk * row_bytes);
  p.ok = true;
  return p;
}

__device__ __forceinline__ int64_t step_at(int64_t i, int64_t steps, bool walk_back) {
  return walk_back ? steps - 1 - i : i;
}

// Active rows of step t, and the first of them.
template <typename T>
__device__ __forceinline__ int64_t rows_at(const Params<T>& p, int64_t t) {
  return p.sched_batch != nullptr ? p.sched_batch[t] : p.batch;
}
template <typename T>
__device__ __forceinline__ int64_t offset_at(const Params<T>& p, int64_t t) {
  return p.sched_offset != nullptr ? p.sched_offset[t] : t * p.batch;
}

// Xs[c, k] = X[row0 + c, k] for c < rows, k < H (float32 global -> shared).
// Padding columns of Xs are never written (they were zeroed once). Threads
// walk the (c, k) grid in row-major order, kThreads apart, with incremental
// indices (no division per element: this runs every step).
template <int V, typename Vec>
__device__ __forceinline__ void stage_rows_vec(float* __restrict__ Xs, const float* __restrict__ X,
                                               int64_t row0, int rows, int H, int Hp) {
  const int n = H / V;  // vectors per row
  const Vec* src = reinterpret_cast<const Vec*>(X + row0 * H);
  int c = threadIdx.x / n, k = threadIdx.x % n;
  const int dc = kThreads / n, dk = kThreads % n;
  while (c < rows) {
    *reinterpret_cast<Vec*>(Xs + c * Hp + k * V) = __ldcg(src + c * n + k);
    c += dc;
    k += dk;
    if (k >= n) {
      k -= n;
      ++c;
    }
  }
}

__device__ __forceinline__ void stage_rows(float* __restrict__ Xs, const float* __restrict__ X,
                                           int64_t row0, int rows, int H, int Hp) {
  if (H % 4 == 0) {
    stage_rows_vec<4, float4>(Xs, X, row0, rows, H, Hp);
  } else {
    stage_rows_vec<1, float>(Xs, X, row0, rows, H, Hp);
  }
}

__device__ __forceinline__ float dot4(float4 a, float4 b, float acc) {
  acc = fmaf(a.x, b.x, acc);
  acc = fmaf(a.y, b.y, acc);
  acc = fmaf(a.z, b.z, acc);
  return fmaf(a.w, b.w, acc);
}

// For every unit r < R and staged batch row c < rows:
//   emit(r, c, sum_k Ws[r, k] * Xs[c, k]),
// called exactly once per (r, c), by one lane of the warp that owns the tile.
template <typename Emit>
__device__ __forceinline__ void block_matvec(const float* __restrict__ Ws,
                                             const float* __restrict__ Xs, int R, int rows,
                                             int Hp, Emit emit) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int unit_tiles = R / kTileUnits;
  const int batch_tiles = (rows + kTileBatch - 1) / kTileBatch;
  const int K4 = Hp / 4;  // a multiple of 32: every lane runs the same trip count
  for (int tile = warp; tile < unit_tiles * batch_tiles; tile += kWarps) {
    const int r0 = (tile % unit_tiles) * kTileUnits;
    const int c0 = (tile / unit_tiles) * kTileBatch;
    // Rows c0+c >= rows of Xs hold stale (finite or not) values; their sums
    // are never emitted and never mix with the others.
    const float4* w4 = reinterpret_cast<const float4*>(Ws + r0 * Hp);
    const float4* x4 = reinterpret_cast<const float4*>(Xs + c0 * Hp);
    float acc[kTileUnits][kTileBatch];
#pragma unroll
    for (int r = 0; r < kTileUnits; ++r)
#pragma unroll
      for (int c = 0; c < kTileBatch; ++c) acc[r][c] = 0.f;
    for (int k = lane; k < K4; k += 32) {
      float4 w[kTileUnits], x[kTileBatch];
#pragma unroll
      for (int r = 0; r < kTileUnits; ++r) w[r] = w4[r * K4 + k];
#pragma unroll
      for (int c = 0; c < kTileBatch; ++c) x[c] = x4[c * K4 + k];
#pragma unroll
      for (int r = 0; r < kTileUnits; ++r)
#pragma unroll
        for (int c = 0; c < kTileBatch; ++c) acc[r][c] = dot4(w[r], x[c], acc[r][c]);
    }
#pragma unroll
    for (int r = 0; r < kTileUnits; ++r)
#pragma unroll
      for (int c = 0; c < kTileBatch; ++c)
#pragma unroll
        for (int s = 16; s > 0; s /= 2) acc[r][c] += __shfl_xor_sync(0xffffffffu, acc[r][c], s);
    // Every lane now holds all 16 sums; lane r*4 + c emits (r, c).
#pragma unroll
    for (int r = 0; r < kTileUnits; ++r)
#pragma unroll
      for (int c = 0; c < kTileBatch; ++c)
        if (lane == r * kTileBatch + c && c0 + c < rows) emit(r0 + r, c0 + c, acc[r][c]);
  }
}

// Loads the block's R matrix rows into Ws (float32, zero padded) and zeroes
// Xs (so its padding columns are zero for good). transpose: Ws[r, k] =
// W[k, j0 + r] (backward) instead of W[j0 + r, k] (forward).
template <typename T>
__device__ void load_weights(float* __restrict__ Ws, float* __restrict__ Xs, const T* __restrict__ W,
                             int64_t H, int64_t j0, int R, int Hp, int chunk, bool transpose) {
  if (!transpose) {
    for (int i = threadIdx.x; i < R * Hp; i += kThreads) {
      const int r = i / Hp, k = i - r * Hp;
      const int64_t j = j0 + r;
      Ws[i] = (j < H && k < H) ? static_cast<float>(W[j * H + k]) : 0.f;
    }
  } else {
    // Unit index fastest, so neighbouring threads read neighbouring W[k, j].
    for (int i = threadIdx.x; i < R * Hp; i += kThreads) {
      const int k = i / R, r = i - k * R;
      const int64_t j = j0 + r;
      Ws[r * Hp + k] = (j < H && k < H) ? static_cast<float>(W[k * H + j]) : 0.f;
    }
  }
  for (int i = threadIdx.x; i < chunk * Hp; i += kThreads) Xs[i] = 0.f;
}

// Runs the step loop shared by both kernels:
//   for each step i (t = step_at(i)): for the bt active rows, in chunks of BB,
//   stage X[i&1] and emit(b, j, acc) for every own unit j; then, if a step
//   follows, publish(i + 1, X[(i+1)&1]) and grid.sync().
template <typename T, typename Emit, typename Publish>
__device__ __forceinline__ void step_loop(const Params<T>& p, float* Ws, float* Xs, int64_t j0,
                                          Emit emit, Publish publish) {
  namespace cg = cooperative_groups;
  cg::grid_group grid = cg::this_grid();
  const int64_t BH = p.batch * p.hidden;
  for (int64_t i = 0; i < p.steps; ++i) {
    const int64_t t = step_at(i, p.steps, p.walk_back);
    const int64_t bt = rows_at(p, t);
    const float* X = p.exchange + (i & 1) * BH;
    for (int64_t cb = 0; cb < bt; cb += p.chunk) {
      const int rows = static_cast<int>(bt - cb < p.chunk ? bt - cb : p.chunk);
      __syncthreads();  // the previous chunk's reads of Xs are done
      stage_rows(Xs, X, cb, rows, static_cast<int>(p.hidden), p.padded);
      __syncthreads();
      block_matvec(Ws, Xs, p.units, rows, p.padded, [&](int r, int c, float acc) {
        const int64_t j = j0 + r;
        if (j < p.hidden) emit(t, cb + c, j, acc);
      });
    }
    if (i + 1 < p.steps) {
      __syncthreads();  // emit's writes to S are visible block-wide
      publish(i + 1, p.exchange + ((i + 1) & 1) * BH);
      grid.sync();      // X[(i+1)&1] is complete everywhere
    }
  }
  __syncthreads();
}

// Loops over (b, j) for b < rows and the block's own units j < H, unit fastest.
template <typename F>
__device__ __forceinline__ void for_own_units(int64_t rows, int R, int64_t j0, int64_t H, F f) {
  for (int64_t i = threadIdx.x; i < rows * R; i += kThreads) {
    const int64_t b = i / R, j = j0 + (i - b * R);
    if (j < H) f(b, j);
  }
}

// Forward recurrence: out[rows of t] = act(P_t + h_{t-1} W_hh^T) for every
// step; h_last = the final state (h_n).
template <typename T>
__global__ void __launch_bounds__(kThreads, 1) forward_kernel(const Params<T> p) {
  RNNATTN_DYNAMIC_SMEM(float4, smem_f4);
  float* Ws = reinterpret_cast<float*>(smem_f4);
  float* Xs = Ws + static_cast<int64_t>(p.units) * p.padded;
  const int64_t H = p.hidden, j0 = static_cast<int64_t>(blockIdx.x) * p.units;
  load_weights(Ws, Xs, p.w_hh, H, j0, p.units, p.padded, p.chunk, /*transpose=*/false);

  // S = hx; publish the first step's input rows.
  const int64_t b_first = rows_at(p, step_at(0, p.steps, p.walk_back));
  for_own_units(p.batch, p.units, j0, H, [&](int64_t b, int64_t j) {
    const float v = static_cast<float>(p.h0[b * H + j]);
    p.state[b * H + j] = v;
    if (b < b_first) p.exchange[b * H + j] = v;
  });
  cooperative_groups::this_grid().sync();

  step_loop(
      p, Ws, Xs, j0,
      [&](int64_t t, int64_t b, int64_t j, float acc) {
        T* o = p.out + (offset_at(p, t) + b) * H + j;
        const float h = rnn_activate(acc + static_cast<float>(*o), p.relu);
        *o = static_cast<T>(h);
        __stcg(p.state + b * H + j, h);
      },
      [&](int64_t i, float* Xn) {
        const int64_t bn = rows_at(p, step_at(i, p.steps, p.walk_back));
        for_own_units(bn, p.units, j0, H,
                      [&](int64_t b, int64_t j) { Xn[b * H + j] = __ldcg(p.state + b * H + j); });
      });

  for_own_units(p.batch, p.units, j0, H, [&](int64_t b, int64_t j) {
    p.h_last[b * H + j] = static_cast<T>(__ldcg(p.state + b * H + j));
  });
}

// Backward recurrence (dh only): for t in the reverse of the forward walk,
//   dz_t = (grad_out_t + g[:bt]) * act'(h_t),  g[:bt] = dz_t W_hh,
// with g = grad_hn at the start; writes dz (all N rows) and h_last = g
// (grad_hx) at the end. Block g owns units j of g and of dz.
template <typename T>
__global__ void __launch_bounds__(kThreads, 1) backward_kernel(const Params<T> p) {
  RNNATTN_DYNAMIC_SMEM(float4, smem_f4);
  float* Ws = reinterpret_cast<float*>(smem_f4);
  float* Xs = Ws + static_cast<int64_t>(p.units) * p.padded;
  const int64_t H = p.hidden, j0 = static_cast<int64_t>(blockIdx.x) * p.units;
  load_weights(Ws, Xs, p.w_hh, H, j0, p.units, p.padded, p.chunk, /*transpose=*/true);

  // dz of step i from the current g: written to dZ (storage type, for the
  // weight GEMMs) and to the exchange buffer (float32, for the recurrence).
  auto publish = [&](int64_t i, float* Xn) {
    const int64_t t = step_at(i, p.steps, p.walk_back);
    const int64_t bn = rows_at(p, t), off = offset_at(p, t);
    for_own_units(bn, p.units, j0, H, [&](int64_t b, int64_t j) {
      const int64_t e = (off + b) * H + j;
      const float dh = static_cast<float>(p.grad_out[e]) + __ldcg(p.state + b * H + j);
      const float dz = rnn_activation_grad(dh, static_cast<float>(p.out[e]), p.relu);
      p.dz[e] = static_cast<T>(dz);
      Xn[b * H + j] = dz;
    });
  };

  for_own_units(p.batch, p.units, j0, H, [&](int64_t b, int64_t j) {
    __stcg(p.state + b * H + j, static_cast<float>(p.grad_last[b * H + j]));
  });
  __syncthreads();
  publish(0, p.exchange);
  cooperative_groups::this_grid().sync();

  step_loop(
      p, Ws, Xs, j0,
      [&](int64_t, int64_t b, int64_t j, float acc) { __stcg(p.state + b * H + j, acc); },
      publish);

  for_own_units(p.batch, p.units, j0, H, [&](int64_t b, int64_t j) {
    p.h_last[b * H + j] = static_cast<T>(__ldcg(p.state + b * H + j));
  });
}

}  // namespace persistent
}  // namespace rnnattn::cuda

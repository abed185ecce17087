// Host emulation of the CUDA features csrc/cuda/rnn_persistent.cuh uses, for
// tests/emulation/check_kernels.cpp: every CUDA thread is a std::thread,
// __syncthreads() and grid.sync() are std::barriers, warp shuffles go through
// per-warp slots. (run.sh also rewrites the kernels' `extern __shared__`
// declaration into a call of emu_block_smem().)
#pragma once
#include <barrier>
#include <cmath>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>
#define __device__
#define __global__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__
struct float4 { float x, y, z, w; };
struct dim3 { unsigned x = 0, y = 0, z = 0; };
inline thread_local dim3 threadIdx, blockIdx;
inline dim3 gridDim, blockDim;
struct EmuBlock {
  std::barrier<> bar;
  std::vector<std::unique_ptr<std::barrier<>>> warp_bar;
  std::vector<float> shfl;
  std::vector<float4> smem;
  EmuBlock(int threads, size_t smem_bytes) : bar(threads), shfl(threads), smem(smem_bytes / 16 + 1) {
    for (int w = 0; w < threads / 32; ++w) warp_bar.emplace_back(new std::barrier<>(32));
  }
};
inline std::vector<std::unique_ptr<EmuBlock>> emu_blocks;
inline std::unique_ptr<std::barrier<>> emu_grid_bar;
inline void __syncthreads() { emu_blocks[blockIdx.x]->bar.arrive_and_wait(); }
inline float __shfl_xor_sync(unsigned, float v, int s) {
  auto& b = *emu_blocks[blockIdx.x];
  const int t = threadIdx.x, lane = t % 32, w = t / 32;
  b.shfl[t] = v;
  b.warp_bar[w]->arrive_and_wait();
  const float r = b.shfl[w * 32 + (lane ^ s)];
  b.warp_bar[w]->arrive_and_wait();
  return r;
}
inline float4* emu_block_smem() { return emu_blocks[blockIdx.x]->smem.data(); }
inline float __ldcg(const float* p) { return *p; }
inline float4 __ldcg(const float4* p) { return *p; }
inline void __stcg(float* p, float v) { *p = v; }
namespace cooperative_groups {
struct grid_group { void sync() { emu_grid_bar->arrive_and_wait(); } };
inline grid_group this_grid() { return {}; }
}

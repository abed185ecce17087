// Mapping a large fresh buffer's pages in before the threads write it.
//
// Why: a buffer of tens of MiB (a bfloat16 training call's reserve, the
// backward's transposed gate grads) comes from the allocator as pages the
// kernel has not mapped yet (glibc mmaps any block over 32 MiB), and each
// first write of a 4 KiB page traps into the kernel, which zeroes and maps
// it. Inside the walk both threads write every page of a reserve row (each
// its own units of every gate), so they trap on the same pages and wait on
// the same page-table lock. madvise(MADV_POPULATE_WRITE) (Linux 5.14) maps
// a range in one call; split across the threads, each maps its own half.
// Measured on a 2-core Xeon VM (AMX), 64 MiB: 30 ms of faults written
// page by page, 23 ms populated by one thread. bfloat16 LSTM training
// forward at (64,100,512,1024), 2 threads, one process each: 123-134 ms ->
// 113-114 (benchmarks/OPTIMISATIONS.md).
//
// Pages already mapped (a block the allocator reused) cost a walk of their
// page tables. Elsewhere (another OS, an older kernel: EINVAL) nothing is
// done, and the writes fault as before.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <atomic>
#include <cstdint>

#ifdef __linux__
#include <sys/mman.h>
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23  // linux/mman.h, from 5.14; older glibc headers lack it
#endif
#endif

namespace rnnattn::cpu {

// Only buffers of at least this many bytes: glibc mmaps every block past
// its dynamic threshold's ceiling (32 MiB on 64-bit), so these are fresh
// pages every call; smaller ones come from its free blocks or fresh pages by
// the heap's state, and populating the Elman RNN's 13 MiB of gate grads at
// (64,100,512,1024) measured nothing but noise (0.98-1.08x).
constexpr int64_t kPrefaultMinBytes = int64_t(32) << 20;

// Maps the whole pages of [p, p + bytes) for writing, split across the
// threads; a no-op below kPrefaultMinBytes and where the kernel cannot.
inline void prefault_for_write(void* p, int64_t bytes) {
#ifdef __linux__
  static std::atomic<bool> works{true};
  if (bytes < kPrefaultMinBytes || !works.load(std::memory_order_relaxed)) return;
  constexpr uintptr_t kPage = 4096;
  const uintptr_t b0 = (reinterpret_cast<uintptr_t>(p) + kPage - 1) & ~(kPage - 1);
  const uintptr_t b1 = (reinterpret_cast<uintptr_t>(p) + bytes) & ~(kPage - 1);
  if (b1 <= b0) return;
  const int64_t pages = static_cast<int64_t>((b1 - b0) / kPage);
  at::parallel_for(0, pages, 512, [&](int64_t q0, int64_t q1) {
    if (madvise(reinterpret_cast<void*>(b0 + q0 * kPage), (q1 - q0) * kPage,
                MADV_POPULATE_WRITE) != 0)
      works.store(false, std::memory_order_relaxed);
  });
#else
  (void)p;
  (void)bytes;
#endif
}

// The same for a tensor's storage from its data pointer on (a fresh
// contiguous tensor: the whole of it).
inline void prefault_for_write(const at::Tensor& t) { prefault_for_write(t.data_ptr(), t.nbytes()); }

}  // namespace rnnattn::cpu

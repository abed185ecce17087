// Splitting a run of steps' hidden units across threads (recurrence.h): one
// parallel region for the run, with a barrier between steps
// (walk_unit_parts).
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <thread>

namespace rnnattn::cpu {

// Slices of H units for `parts` parts: edges on multiples of 16 units (a
// 64-byte line of floats). Slice q is [q * width, min(H, (q + 1) * width)).
inline int64_t unit_slice_width(int parts, int64_t H) {
  return ((H + parts - 1) / parts + 15) / 16 * 16;
}

// f(c0, c1) for slices [q0, q1) of H units, `width` wide.
template <typename F>
void unit_slices(int64_t width, int64_t H, int64_t q0, int64_t q1, const F& f) {
  for (int64_t q = q0; q < q1; ++q) {
    const int64_t c0 = q * width, c1 = std::min(H, c0 + width);
    if (c0 < c1) f(c0, c1);
  }
}

// Runs f(c0, c1) for each of the `parts` unit slices of H, one task a
// slice, in one parallel region (a single step; walk_unit_parts below runs
// a run of steps).
template <typename F>
void for_unit_slices(int parts, int64_t H, const F& f) {
  const int64_t width = unit_slice_width(parts, H);
  at::parallel_for(0, parts, 1,
                   [&](int64_t q0, int64_t q1) { unit_slices(width, H, q0, q1, f); });
}

// A barrier for the threads of one at::parallel_for over `total` tasks:
// each thread arrives with the number of tasks it ran, and all leave once
// every task has arrived. Spins (the steps it separates take microseconds,
// a futex wake-up about as long), then yields the core after 1000 pauses
// (about 5-50 us: a pause is 10-140 cycles by CPU) so that a thread waiting
// on a descheduled one does not hold the core it needs.
class StepBarrier {
 public:
  explicit StepBarrier(int64_t total) : total_(total) {}
  void arrive_and_wait(int64_t tasks) {
    const int64_t generation = generation_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(tasks, std::memory_order_acq_rel) + tasks == total_) {
      arrived_.store(0, std::memory_order_relaxed);
      generation_.fetch_add(1, std::memory_order_release);
      return;
    }
    for (int spins = 0; generation_.load(std::memory_order_acquire) == generation; ++spins) {
      if (spins < 1000) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
      } else {
        std::this_thread::yield();
      }
    }
  }

 private:
  const int64_t total_;
  std::atomic<int64_t> arrived_{0};
  std::atomic<int64_t> generation_{0};
};

// Runs f(i, c0, c1) for the steps i of [i0, i1) in order, each on the
// `parts` unit slices (unit_slice_width), with one parallel region for all
// the steps instead of one a step: each task walks every step on its slice
// and waits at a barrier before the next (which reads what every slice of
// this one wrote). Measured on a 2-core Intel Xeon, LSTM (16,100,64,128),
// see benchmarks/OPTIMISATIONS.md. The barrier needs every thread of the
// region running at once, which OpenMP's teams guarantee; other parallel
// backends take a fork/join a step. f must not throw: a task that left
// would leave the others waiting. parts >= 2 (callers run a single part
// themselves).
template <typename F>
void walk_unit_parts(int parts, int64_t H, int64_t i0, int64_t i1, const F& f) {
#if AT_PARALLEL_OPENMP
  const int64_t width = unit_slice_width(parts, H);
  StepBarrier barrier(parts);
  at::parallel_for(0, parts, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t i = i0; i < i1; ++i) {
      unit_slices(width, H, p0, p1, [&](int64_t c0, int64_t c1) { f(i, c0, c1); });
      if (i + 1 < i1) barrier.arrive_and_wait(p1 - p0);
    }
  });
#else
  for (int64_t i = i0; i < i1; ++i)
    for_unit_slices(parts, H, [&](int64_t c0, int64_t c1) { f(i, c0, c1); });
#endif
}

}  // namespace rnnattn::cpu

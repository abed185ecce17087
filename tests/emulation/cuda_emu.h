// The CUDA device features the kernels of csrc/cuda use, emulated on the CPU,
// so that the kernels themselves (the .cuh files, included unchanged) run on
// a machine without a GPU. tests/emulation/README.md says what is checked.
//
// Every CUDA thread is a fiber (its own stack; switched cooperatively on one
// OS thread, see cuda_emu.cpp). A fiber runs until it reaches a barrier or a
// warp collective, then the scheduler runs another one, in an order chosen
// per launch (Schedule): the emulation takes no step in lockstep, as Volta's
// independent thread scheduling does not, so a missing __syncwarp or
// __syncthreads lets a thread read what another has not written yet (or has
// already overwritten), and the result changes with the schedule.
//
// Collectives are checked, not just performed: __shfl_*_sync and __syncwarp
// complete when every lane named in the mask has arrived at the same kind of
// collective with the same mask (and, for shuffles, at the same source line);
// a calling lane outside its mask, a mask naming a lane that does not exist,
// exited, or waits at another collective, and a shuffle reading a lane
// outside the mask are errors, as are __syncthreads reached by part of a
// block (or at two different source lines) and grid.sync() outside a
// cooperative launch. Errors end the launch with a message naming the
// threads and source lines; so do deadlocks.
#pragma once

#include <math.h>  // float overloads of exp, tanh, fmax, ... in the global namespace, as in device code

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <source_location>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#define __device__
#define __global__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(16) float4 {
  float x, y, z, w;
};

// The built-in variables of the running fiber (set by the scheduler before it
// resumes a fiber; one set per OS thread, so several launches can run at once
// on different OS threads).
inline thread_local uint3 threadIdx{};
inline thread_local uint3 blockIdx{};
inline thread_local dim3 blockDim{};
inline thread_local dim3 gridDim{};

namespace emu {

enum class Shfl : uint8_t { kIdx, kUp, kDown, kXor };

// Implemented in cuda_emu.cpp; each returns once the collective completed.
void sync_threads(const std::source_location& where);
void sync_warp(unsigned mask, const std::source_location& where);
uint64_t shuffle(unsigned mask, uint64_t bits, int bytes, Shfl kind, int arg, int width,
                 const std::source_location& where);
void grid_sync(const std::source_location& where);
// The running block's dynamic shared memory (exactly the launch's size, then
// an inaccessible page; filled with 0xff bytes, NaN as float, at block start).
void* dynamic_smem();
// Ends the launch with an error naming the calling thread (as __trap() would).
[[noreturn]] void trap(const std::string& what);

template <typename T>
inline void check_aligned(const T* p, const char* op) {
  if (reinterpret_cast<uintptr_t>(p) % alignof(T) != 0) {
    trap(std::string(op) + " of a " + std::to_string(sizeof(T)) + "-byte value at a misaligned address");
  }
}

template <typename T>
T shuffle_as(unsigned mask, T var, Shfl kind, int arg, int width,
             const std::source_location& where) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "shuffle of a type CUDA cannot shuffle");
  uint64_t bits = 0;
  std::memcpy(&bits, &var, sizeof(T));
  bits = shuffle(mask, bits, sizeof(T), kind, arg, width, where);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

}  // namespace emu

inline void __syncthreads(std::source_location where = std::source_location::current()) {
  emu::sync_threads(where);
}
inline void __syncwarp(unsigned mask = 0xffffffffu,
                       std::source_location where = std::source_location::current()) {
  emu::sync_warp(mask, where);
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32,
                  std::source_location where = std::source_location::current()) {
  return emu::shuffle_as(mask, var, emu::Shfl::kXor, lane_mask, width, where);
}
template <typename T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32,
                   std::source_location where = std::source_location::current()) {
  return emu::shuffle_as(mask, var, emu::Shfl::kDown, static_cast<int>(delta), width, where);
}
template <typename T>
T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32,
                 std::source_location where = std::source_location::current()) {
  return emu::shuffle_as(mask, var, emu::Shfl::kUp, static_cast<int>(delta), width, where);
}
template <typename T>
T __shfl_sync(unsigned mask, T var, int src_lane, int width = 32,
              std::source_location where = std::source_location::current()) {
  return emu::shuffle_as(mask, var, emu::Shfl::kIdx, src_lane, width, where);
}

// Cache-hinted loads and stores: plain accesses here (one address space, no
// L1), but misaligned ones (a float4 off a 16-byte boundary) fail as on a GPU.
template <typename T>
inline T __ldcg(const T* p) {
  emu::check_aligned(p, "__ldcg");
  return *p;
}
template <typename T>
inline void __stcg(T* p, T v) {
  emu::check_aligned(p, "__stcg");
  *p = v;
}

// The integer min/max overloads of CUDA's device math (std::min is a
// template and does not mix int64_t with int either).
inline int min(int a, int b) { return a < b ? a : b; }
inline long min(long a, long b) { return a < b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline long max(long a, long b) { return a > b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }

// The kernels' dynamic shared memory (csrc/cuda/dynamic_smem.cuh leaves this
// definition alone when it is already made).
#define RNNATTN_DYNAMIC_SMEM(type, name) type* name = static_cast<type*>(emu::dynamic_smem())

namespace emu {

// How the scheduler picks the next fiber to run (a fiber runs until it
// reaches a collective or exits). For a non-cooperative launch the blocks,
// which run one at a time, are taken in the same order.
//   kForward: greedy, lowest thread first: the lowest runnable thread always
//     runs next, so warp 0 runs ahead of warp 1 as far as the barriers let it
//     (and lane 0 ahead of lane 1 up to each warp collective);
//   kReverse: the same, highest thread first;
//   kSweep: round robin, lowest first: every runnable thread advances to its
//     next collective in turn (warps stay close to each other);
//   kRandom: round robin in a fresh random order every round.
enum class Schedule { kForward, kReverse, kSweep, kRandom };
const char* schedule_name(Schedule s);

struct Launch {
  dim3 grid;
  dim3 block;
  size_t smem = 0;           // dynamic shared memory bytes per block
  bool cooperative = false;  // all blocks at once, grid.sync() allowed
};

// The schedule (and random seed) of the launches this OS thread makes next.
void set_schedule(Schedule s, uint64_t seed);

// Runs body() once on every thread of the grid. Returns "" on success, else
// the first error (collective misuse, deadlock, an access to a guard page).
std::string run_grid(const Launch& launch, const std::function<void()>& body);

// kernel<<<grid, block, smem>>>(args...): every thread gets its own copy of
// the arguments, converted to the kernel's parameter types.
template <typename... KArgs, typename... Args>
std::string launch(void (*kernel)(KArgs...), const Launch& l, Args&&... args) {
  static_assert(sizeof...(KArgs) == sizeof...(Args), "wrong number of kernel arguments");
  const std::tuple<std::decay_t<KArgs>...> params(std::forward<Args>(args)...);
  return run_grid(l, [&] { std::apply(kernel, params); });
}

// ---- memory -----------------------------------------------------------------------
// Memory for kernels to touch: `bytes` at an address aligned to `align`,
// ending at most align-1 bytes (filled with a canary) before an inaccessible
// page; another such page sits below the first page, whose bytes before the
// data are canary too. Overruns past the end fault at once (reported with the
// buffer's name, the thread and the address); writes into the canary bytes
// are reported by check_canaries(). A read-only buffer faults on any write.
class Memory {
 public:
  Memory() = default;
  Memory(size_t bytes, size_t align, std::string name);
  Memory(Memory&& o) noexcept { *this = std::move(o); }
  Memory& operator=(Memory&& o) noexcept;
  Memory(const Memory&) = delete;
  Memory& operator=(const Memory&) = delete;
  ~Memory();

  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  const std::string& name() const { return name_; }
  // The whole mapping: guard page, data pages, guard page.
  uintptr_t map_begin() const { return reinterpret_cast<uintptr_t>(map_); }
  uintptr_t map_end() const { return map_begin() + map_bytes_; }
  void set_readonly(bool ro);
  // "" or what was written outside the buffer.
  std::string check_canaries() const;

 private:
  void unmap();
  void* map_ = nullptr;
  size_t map_bytes_ = 0;
  void* data_ = nullptr;
  size_t bytes_ = 0;
  std::string name_;
};

// Errors a launch found in the canaries of every live Memory of this OS thread.
std::string check_all_canaries();

}  // namespace emu

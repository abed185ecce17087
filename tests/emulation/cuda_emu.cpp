// The scheduler behind cuda_emu.h: CUDA threads as fibers on one OS thread,
// collectives checked as they complete, guarded memory.
//
// A fiber runs until it calls a collective (or returns); the scheduler then
// records the arrival, completes the collective if it was the last one
// missing, and resumes the next runnable fiber in the launch's order. All of
// it happens on the OS thread that called run_grid(), so the scheduler sees
// the whole block at every step: a collective that can never complete is
// reported (who waits where, who exited) instead of hanging.
#include "cuda_emu.h"

#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <random>
#include <vector>

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace emu {
namespace {

size_t page_size() {
  static const size_t p = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return p;
}

size_t round_up(size_t x, size_t m) { return (x + m - 1) / m * m; }

// ---- memory registry (for naming the buffer a fault hit) ---------------------------

thread_local std::vector<const Memory*> t_memories;

constexpr unsigned char kCanary = 0xa5;

// ---- fibers ------------------------------------------------------------------------

enum class Op : uint8_t { kNone, kSyncThreads, kSyncWarp, kShfl, kGridSync };

const char* op_name(Op op, Shfl kind) {
  switch (op) {
    case Op::kSyncThreads: return "__syncthreads";
    case Op::kSyncWarp: return "__syncwarp";
    case Op::kGridSync: return "grid.sync";
    case Op::kShfl:
      switch (kind) {
        case Shfl::kIdx: return "__shfl_sync";
        case Shfl::kUp: return "__shfl_up_sync";
        case Shfl::kDown: return "__shfl_down_sync";
        case Shfl::kXor: return "__shfl_xor_sync";
      }
      break;
    case Op::kNone: return "(running)";
  }
  return "?";
}

// Fiber stacks: kStackBytes each, carved out of slabs of kSlabStacks (one
// mapping per slab: a guard page per stack would exhaust the kernel's limit
// on mappings for a grid of tens of thousands of threads). The lowest
// kStackCanary bytes of each stack hold a canary, checked after every
// block: a kernel that overflows its stack is reported, not silently wrong.
constexpr size_t kStackBytes = 64 * 1024;
constexpr size_t kStackCanary = 1024;
constexpr size_t kSlabStacks = 256;

struct Stack {
  char* base = nullptr;  // lowest address
  char* top() const { return base + kStackBytes; }
  bool intact() const {
    for (size_t i = 0; i < kStackCanary; ++i) {
      if (static_cast<unsigned char>(base[i]) != kCanary) return false;
    }
    return true;
  }
};

struct Slab {
  char* map = nullptr;
  Slab() {
    void* p = mmap(nullptr, kSlabStacks * kStackBytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
      std::perror("emu: mmap of fiber stacks");
      std::abort();
    }
    map = static_cast<char*>(p);
    for (size_t i = 0; i < kSlabStacks; ++i) std::memset(map + i * kStackBytes, kCanary, kStackCanary);
  }
  ~Slab() { munmap(map, kSlabStacks * kStackBytes); }
};

struct Fiber {
  void* sp = nullptr;  // saved stack pointer while switched out (x86-64)
#if !defined(__x86_64__)
  ucontext_t uc;
#endif
  Stack stack;
  int block = 0;  // index into Run::blocks
  int tid = 0;    // linear thread index in the block
  uint3 t3{};
  bool done = false;
  bool waiting = false;  // at a collective
  Op op = Op::kNone;
  Shfl kind = Shfl::kXor;
  unsigned mask = 0;
  int arg = 0, width = 32, bytes = 0;
  uint64_t value = 0, result = 0;
  std::source_location where;
};

struct BlockRun {
  uint3 b3{};
  int first = 0;  // its first fiber in Run::fibers
  int count = 0;  // threads
  int exited = 0;
  int at_barrier = 0;
  std::source_location barrier_site;
  Memory smem;
  // Per warp, the lanes that wait at a warp collective, wait at
  // __syncthreads / grid.sync, and have exited.
  std::vector<unsigned> at_warp_op, at_block_op, gone;
};

struct Run {
  Launch cfg;
  const std::function<void()>* body = nullptr;
  std::vector<Fiber> fibers;
  std::vector<BlockRun> blocks;
  int live = 0;
  int grid_waiting = 0;
  std::source_location grid_site;
  std::string error;
  Fiber* current = nullptr;
  void* sched_sp = nullptr;
#if !defined(__x86_64__)
  ucontext_t sched_uc;
#endif
  sigjmp_buf fault_jmp;
  volatile sig_atomic_t fault_armed = 0;
  char fault_msg[768] = {};
  std::mt19937_64 rng;
  Schedule schedule = Schedule::kForward;
  std::vector<int> pos;    // position of each fiber in the scheduling order
  int restart = 0;         // earliest position released since the last resume
};

thread_local Run* t_run = nullptr;
thread_local Schedule t_schedule = Schedule::kForward;
thread_local uint64_t t_seed = 0;
thread_local uint64_t t_launches = 0;
thread_local std::vector<std::unique_ptr<Slab>> t_slabs;
thread_local std::vector<Stack> t_stacks;

// ---- context switch ------------------------------------------------------------------

void fiber_main();

#if defined(__x86_64__)
extern "C" void emu_switch_context(void** save_sp, void* load_sp);
// Saves the callee-saved registers on the current stack, stores its pointer
// in *save_sp, loads load_sp and pops the registers saved there (System V
// AMD64: everything else is caller-saved, so a call is a complete switch).
asm(R"(
  .text
  .p2align 4
  .globl emu_switch_context
  .type emu_switch_context, @function
emu_switch_context:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size emu_switch_context, .-emu_switch_context
)");

void init_context(Fiber& f) {
  auto* sp = reinterpret_cast<uint64_t*>(reinterpret_cast<uintptr_t>(f.stack.top()) & ~uintptr_t(15));
  *--sp = 0;  // fiber_main's return address: it never returns
  *--sp = reinterpret_cast<uint64_t>(&fiber_main);  // where the first switch "returns" to
  for (int i = 0; i < 6; ++i) *--sp = 0;            // rbp rbx r12-r15
  f.sp = sp;
}
void switch_in(Run& r, Fiber& f) { emu_switch_context(&r.sched_sp, f.sp); }
void switch_out(Run& r, Fiber& f) { emu_switch_context(&f.sp, r.sched_sp); }
#else
// Portable but slower (a signal-mask system call per switch).
void init_context(Fiber& f) {
  getcontext(&f.uc);
  f.uc.uc_stack.ss_sp = f.stack.base;
  f.uc.uc_stack.ss_size = kStackBytes;
  f.uc.uc_link = nullptr;
  makecontext(&f.uc, fiber_main, 0);
}
void switch_in(Run& r, Fiber& f) { swapcontext(&r.sched_uc, &f.uc); }
void switch_out(Run& r, Fiber& f) { swapcontext(&f.uc, &r.sched_uc); }
#endif

void fiber_main() {
  Run& r = *t_run;
  Fiber& f = *r.current;
  (*r.body)();
  f.done = true;
  switch_out(r, f);
  std::abort();  // a finished fiber is never resumed
}

// ---- describing threads and places ----------------------------------------------

std::string site(const std::source_location& w) {
  std::string file = w.file_name();
  const size_t slash = file.find_last_of('/');
  if (slash != std::string::npos) file = file.substr(slash + 1);
  return file + ":" + std::to_string(w.line());
}

std::string who(const Run& r, const Fiber& f) {
  const BlockRun& b = r.blocks[f.block];
  std::string s = "block ";
  if (r.cfg.grid.y == 1 && r.cfg.grid.z == 1) {
    s += std::to_string(b.b3.x);
  } else {
    s += "(" + std::to_string(b.b3.x) + "," + std::to_string(b.b3.y) + "," + std::to_string(b.b3.z) + ")";
  }
  s += " thread " + std::to_string(f.tid) + " (warp " + std::to_string(f.tid / 32) + " lane " +
       std::to_string(f.tid % 32) + ")";
  return s;
}

bool same_site(const std::source_location& a, const std::source_location& b) {
  return a.line() == b.line() && (a.file_name() == b.file_name() || std::strcmp(a.file_name(), b.file_name()) == 0);
}

std::string at(const Fiber& f) { return std::string(op_name(f.op, f.kind)) + " at " + site(f.where); }

std::string hex(unsigned m) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", m);
  return buf;
}

void fail(Run& r, const std::string& msg) {
  if (r.error.empty()) r.error = msg;
}

// ---- collectives ----------------------------------------------------------------------

Fiber& fiber_at(Run& r, const BlockRun& b, int tid) { return r.fibers[b.first + tid]; }

// Lanes that exist in warp w of block b.
unsigned existing_lanes(const BlockRun& b, int w) {
  const int n = std::min(32, b.count - 32 * w);
  return n >= 32 ? 0xffffffffu : (1u << n) - 1;
}

void release(Run& r, Fiber& f) {
  BlockRun& b = r.blocks[f.block];
  const unsigned bit = 1u << (f.tid % 32);
  b.at_warp_op[f.tid / 32] &= ~bit;
  b.at_block_op[f.tid / 32] &= ~bit;
  f.waiting = false;
  f.op = Op::kNone;
  r.restart = std::min(r.restart, r.pos[&f - r.fibers.data()]);
}

// A warp collective of f arrived: check it, and complete it if every lane
// of its mask is there.
void arrive_warp(Run& r, Fiber& f) {
  BlockRun& b = r.blocks[f.block];
  const int w = f.tid / 32, lane = f.tid % 32;
  const unsigned exist = existing_lanes(b, w);
  if (!((f.mask >> lane) & 1u)) {
    return fail(r, who(r, f) + " calls " + at(f) + " with mask " + hex(f.mask) +
                       ", which does not include its own lane");
  }
  if (f.mask & ~exist) {
    return fail(r, who(r, f) + " calls " + at(f) + " with mask " + hex(f.mask) +
                       " naming lanes that do not exist (this warp has lanes " + hex(exist) + ")");
  }
  if (f.op == Op::kShfl && (f.width <= 0 || f.width > 32 || (f.width & (f.width - 1)) != 0)) {
    return fail(r, who(r, f) + " calls " + at(f) + " with width " + std::to_string(f.width) +
                       " (must be a power of 2 up to 32)");
  }
  if (b.gone[w] & f.mask) {
    const int l = __builtin_ctz(b.gone[w] & f.mask);
    return fail(r, who(r, f) + " waits at " + at(f) + " (mask " + hex(f.mask) + ") for lane " +
                       std::to_string(l) + ", which has exited");
  }
  if (b.at_block_op[w] & f.mask) {
    const int l = __builtin_ctz(b.at_block_op[w] & f.mask);
    return fail(r, "deadlock: " + who(r, f) + " waits at " + at(f) + " (mask " + hex(f.mask) + ") for lane " +
                       std::to_string(l) + ", which waits at " + at(fiber_at(r, b, 32 * w + l)));
  }
  b.at_warp_op[w] |= 1u << lane;
  if ((b.at_warp_op[w] & f.mask) != f.mask) return;  // not all there yet
  // Every lane of the mask waits at a warp collective: the same one?
  for (int l = 0; l < 32; ++l) {
    if (!((f.mask >> l) & 1u) || l == lane) continue;
    Fiber& g = fiber_at(r, b, 32 * w + l);
    if (g.op != f.op || g.mask != f.mask || (f.op == Op::kShfl && (g.kind != f.kind || g.bytes != f.bytes ||
                                                                      !same_site(g.where, f.where)))) {
      return fail(r, "warp collectives do not match: " + who(r, f) + " is at " + at(f) + " with mask " +
                         hex(f.mask) + ", lane " + std::to_string(l) + " is at " + at(g) + " with mask " +
                         hex(g.mask));
    }
  }
  // Every lane of the mask is here.
  if (f.op == Op::kShfl) {
    for (int l = 0; l < 32; ++l) {
      if (!((f.mask >> l) & 1u)) continue;
      Fiber& g = fiber_at(r, b, 32 * w + l);
      const int seg = l & ~(g.width - 1);
      int src = l;
      switch (g.kind) {
        case Shfl::kIdx: src = seg + (g.arg & (g.width - 1)); break;
        case Shfl::kXor: src = l ^ g.arg; if ((src & ~(g.width - 1)) != seg || src > 31 || src < 0) src = l; break;
        case Shfl::kDown: src = l + g.arg; if (src >= seg + g.width) src = l; break;
        case Shfl::kUp: src = l - g.arg; if (src < seg) src = l; break;
      }
      if (!((f.mask >> src) & 1u)) {
        return fail(r, who(r, g) + " at " + at(g) + " (mask " + hex(f.mask) + ") reads lane " +
                           std::to_string(src) + ", which is not in the mask: its value is undefined");
      }
      g.result = fiber_at(r, b, 32 * w + src).value;
    }
  }
  for (int l = 0; l < 32; ++l) {
    if ((f.mask >> l) & 1u) release(r, fiber_at(r, b, 32 * w + l));
  }
}

// f arrives at a block or grid barrier: a lane of its warp that waits at a
// warp collective whose mask includes f can then never complete (an error,
// returns true); else f is marked as waiting at a barrier.
bool blocks_warp(Run& r, Fiber& f) {
  BlockRun& b = r.blocks[f.block];
  const int w = f.tid / 32, lane = f.tid % 32;
  for (unsigned m = b.at_warp_op[w]; m; m &= m - 1) {
    Fiber& g = fiber_at(r, b, 32 * w + __builtin_ctz(m));
    if ((g.mask >> lane) & 1u) {
      fail(r, "deadlock: " + who(r, g) + " waits at " + at(g) + " (mask " + hex(g.mask) + ") for lane " +
                  std::to_string(lane) + ", which waits at " + at(f));
      return true;
    }
  }
  b.at_block_op[w] |= 1u << lane;
  return false;
}

void arrive_block(Run& r, Fiber& f) {
  BlockRun& b = r.blocks[f.block];
  if (b.exited > 0) {
    return fail(r, who(r, f) + " waits at " + at(f) + ", but " + std::to_string(b.exited) +
                       " thread(s) of its block have exited: the barrier is not reached by the whole block");
  }
  if (blocks_warp(r, f)) return;
  if (b.at_barrier == 0) {
    b.barrier_site = f.where;
  } else if (!same_site(b.barrier_site, f.where)) {
    return fail(r, "divergent __syncthreads: " + who(r, f) + " is at " + site(f.where) +
                       " while other threads of its block wait at " + site(b.barrier_site));
  }
  if (++b.at_barrier == b.count) {
    b.at_barrier = 0;
    for (int t = 0; t < b.count; ++t) release(r, fiber_at(r, b, t));
  }
}

void arrive_grid(Run& r, Fiber& f) {
  if (!r.cfg.cooperative) {
    return fail(r, who(r, f) + " calls grid.sync() at " + site(f.where) + " in a launch that is not cooperative");
  }
  for (const BlockRun& b : r.blocks) {
    if (b.exited > 0) {
      return fail(r, who(r, f) + " waits at " + at(f) + ", but threads of block " + std::to_string(b.b3.x) +
                         " have exited");
    }
  }
  if (blocks_warp(r, f)) return;
  if (r.grid_waiting == 0) {
    r.grid_site = f.where;
  } else if (!same_site(r.grid_site, f.where)) {
    return fail(r, "divergent grid.sync: " + who(r, f) + " is at " + site(f.where) + " while other threads wait at " +
                       site(r.grid_site));
  }
  if (++r.grid_waiting == static_cast<int>(r.fibers.size())) {
    r.grid_waiting = 0;
    for (Fiber& g : r.fibers) release(r, g);
  }
}

void exited(Run& r, Fiber& f) {
  BlockRun& b = r.blocks[f.block];
  ++b.exited;
  --r.live;
  if (b.at_barrier > 0) {
    return fail(r, who(r, f) + " exited while " + std::to_string(b.at_barrier) + " thread(s) of its block wait at " +
                       "__syncthreads at " + site(b.barrier_site));
  }
  if (r.grid_waiting > 0) {
    return fail(r, who(r, f) + " exited while " + std::to_string(r.grid_waiting) + " thread(s) wait at grid.sync at " +
                       site(r.grid_site));
  }
  const int w = f.tid / 32, lane = f.tid % 32;
  b.gone[w] |= 1u << lane;
  for (unsigned m = b.at_warp_op[w]; m; m &= m - 1) {
    Fiber& g = fiber_at(r, b, 32 * w + __builtin_ctz(m));
    if ((g.mask >> lane) & 1u) {
      return fail(r, who(r, f) + " exited while " + who(r, g) + " waits for it at " + at(g) + " (mask " +
                         hex(g.mask) + ")");
    }
  }
}

// Called on a fiber: record the collective and give control to the scheduler.
Fiber& arrive(Op op, const std::source_location& where) {
  Run* r = t_run;
  if (r == nullptr || r->current == nullptr) {
    std::fprintf(stderr, "emu: %s called outside a kernel launch\n", op_name(op, Shfl::kXor));
    std::abort();
  }
  Fiber& f = *r->current;
  f.op = op;
  f.where = where;
  f.waiting = true;
  return f;
}

// ---- the scheduler -------------------------------------------------------------------

std::string deadlock_report(Run& r) {
  std::map<std::string, int> waits;
  int exited = 0;
  for (Fiber& f : r.fibers) {
    if (f.done) {
      ++exited;
    } else if (f.waiting) {
      ++waits[at(f) + (f.op == Op::kShfl || f.op == Op::kSyncWarp ? " (mask " + hex(f.mask) + ")" : "")];
    }
  }
  std::string s = "deadlock: no thread can go on;";
  for (auto& [what, n] : waits) s += " " + std::to_string(n) + " wait at " + what + ";";
  s += " " + std::to_string(exited) + " exited";
  return s;
}

void resume(Run& r, Fiber& f) {
  r.current = &f;
  threadIdx = f.t3;
  blockIdx = r.blocks[f.block].b3;
  switch_in(r, f);
  r.current = nullptr;
  if (f.done) {
    exited(r, f);
    return;
  }
  switch (f.op) {
    case Op::kSyncThreads: arrive_block(r, f); break;
    case Op::kSyncWarp:
    case Op::kShfl: arrive_warp(r, f); break;
    case Op::kGridSync: arrive_grid(r, f); break;
    case Op::kNone: break;
  }
}

// Runs the fibers of r until all exit or an error.
void schedule(Run& r) {
  const int n = static_cast<int>(r.fibers.size());
  std::vector<int> order(n);
  for (int i = 0; i < n; ++i) order[i] = i;
  if (r.schedule == Schedule::kReverse) std::reverse(order.begin(), order.end());
  const bool greedy = r.schedule == Schedule::kForward || r.schedule == Schedule::kReverse;
  r.pos.assign(n, 0);
  for (int k = 0; k < n; ++k) r.pos[order[k]] = k;
  while (r.live > 0 && r.error.empty()) {
    if (r.schedule == Schedule::kRandom) {
      std::shuffle(order.begin(), order.end(), r.rng);
      for (int k = 0; k < n; ++k) r.pos[order[k]] = k;
    }
    bool ran = false;
    for (int k = 0; k < n; ++k) {
      Fiber& f = r.fibers[order[k]];
      if (f.done || f.waiting) continue;
      r.restart = n;
      resume(r, f);
      ran = true;
      if (!r.error.empty()) return;
      // Greedy: back to the first fiber in order that can run again.
      if (greedy && r.restart <= k) k = r.restart - 1;
    }
    if (!ran) return fail(r, deadlock_report(r));
  }
}

Stack stack_for(size_t i) {
  while (t_stacks.size() <= i) {
    t_slabs.emplace_back(new Slab());
    for (size_t j = 0; j < kSlabStacks; ++j) t_stacks.push_back(Stack{t_slabs.back()->map + j * kStackBytes});
  }
  return t_stacks[i];
}

void on_fault(int sig, siginfo_t* info, void*) {
  Run* r = t_run;
  if (r == nullptr || !r->fault_armed) {
    signal(sig, SIG_DFL);  // not ours: the default action once the handler returns
    return;
  }
  const uintptr_t a = reinterpret_cast<uintptr_t>(info->si_addr);
  char what[512];
  std::snprintf(what, sizeof what, "an address no buffer owns");
  for (const Memory* m : t_memories) {
    if (m->map_begin() == 0) continue;
    const uintptr_t lo = reinterpret_cast<uintptr_t>(m->data());
    const uintptr_t hi = lo + m->bytes();
    if (a >= m->map_begin() && a < lo) {
      std::snprintf(what, sizeof what, "%zu bytes before the start of '%s' (%zu bytes)",
                    static_cast<size_t>(lo - a), m->name().c_str(), m->bytes());
      break;
    }
    if (a >= hi && a < m->map_end()) {
      std::snprintf(what, sizeof what, "byte %zu of '%s', which has %zu bytes", static_cast<size_t>(a - lo),
                    m->name().c_str(), m->bytes());
      break;
    }
    if (a >= lo && a < hi) {
      std::snprintf(what, sizeof what, "byte %zu of '%s' (read-only: a write)", static_cast<size_t>(a - lo),
                    m->name().c_str());
      break;
    }
  }
  const Fiber* f = r->current;
  std::snprintf(r->fault_msg, sizeof r->fault_msg, "%s at %p: %s; by block %u thread %d",
                sig == SIGSEGV ? "invalid memory access (SIGSEGV)" : "bus error (SIGBUS)", info->si_addr, what,
                f ? r->blocks[f->block].b3.x : 0u, f ? f->tid : -1);
  siglongjmp(r->fault_jmp, 1);
}

void install_fault_handler() {
  static const bool once = [] {
    struct sigaction sa {};
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, nullptr);
    sigaction(SIGBUS, &sa, nullptr);
    return true;
  }();
  (void)once;
  thread_local bool alt = [] {
    stack_t ss{};
    ss.ss_size = 256 * 1024;
    ss.ss_sp = std::malloc(ss.ss_size);
    sigaltstack(&ss, nullptr);
    return true;
  }();
  (void)alt;
}

// Runs one batch of blocks (all of a cooperative grid, or one block).
void run_blocks(Run& r, const std::vector<uint3>& ids, int threads) {
  r.blocks.clear();
  r.fibers.clear();
  r.blocks.resize(ids.size());
  r.fibers.resize(ids.size() * threads);
  for (size_t bi = 0; bi < ids.size(); ++bi) {
    BlockRun& b = r.blocks[bi];
    b.b3 = ids[bi];
    b.first = static_cast<int>(bi * threads);
    b.count = threads;
    const size_t warps = (threads + 31) / 32;
    b.at_warp_op.assign(warps, 0);
    b.at_block_op.assign(warps, 0);
    b.gone.assign(warps, 0);
    b.smem = Memory(r.cfg.smem, 16, "dynamic shared memory of block " + std::to_string(ids[bi].x));
    if (r.cfg.smem) std::memset(b.smem.data(), 0xff, r.cfg.smem);
    for (int t = 0; t < threads; ++t) {
      Fiber& f = r.fibers[b.first + t];
      f.block = static_cast<int>(bi);
      f.tid = t;
      f.t3 = uint3{t % r.cfg.block.x, t / r.cfg.block.x % r.cfg.block.y, t / (r.cfg.block.x * r.cfg.block.y)};
      f.stack = stack_for(b.first + t);
      init_context(f);
    }
  }
  r.live = static_cast<int>(r.fibers.size());
  r.grid_waiting = 0;
  schedule(r);
  for (BlockRun& b : r.blocks) {
    const std::string c = b.smem.check_canaries();
    if (!c.empty()) fail(r, c);
  }
  for (Fiber& f : r.fibers) {
    if (!f.stack.intact()) {
      fail(r, who(r, f) + " overflowed its " + std::to_string(kStackBytes / 1024) + " KiB fiber stack");
      break;
    }
  }
}

}  // namespace

const char* schedule_name(Schedule s) {
  switch (s) {
    case Schedule::kForward: return "fwd";
    case Schedule::kReverse: return "rev";
    case Schedule::kSweep: return "sweep";
    case Schedule::kRandom: return "rand";
  }
  return "?";
}

void set_schedule(Schedule s, uint64_t seed) {
  t_schedule = s;
  t_seed = seed;
  t_launches = 0;
}

std::string run_grid(const Launch& l, const std::function<void()>& body) {
  const long threads = long(l.block.x) * l.block.y * l.block.z;
  const long blocks = long(l.grid.x) * l.grid.y * l.grid.z;
  if (threads <= 0 || threads > 1024 || blocks <= 0) {
    return "invalid launch configuration: " + std::to_string(blocks) + " blocks of " + std::to_string(threads) +
           " threads";
  }
  install_fault_handler();
  auto run = std::make_unique<Run>();
  Run& r = *run;
  r.cfg = l;
  r.body = &body;
  r.schedule = t_schedule;
  r.rng.seed(t_seed * 0x9e3779b97f4a7c15ull + ++t_launches);
  Run* outer = t_run;
  t_run = &r;
  const dim3 saved_grid = gridDim, saved_block = blockDim;
  gridDim = l.grid;
  blockDim = l.block;

  std::vector<uint3> ids;
  for (unsigned z = 0; z < l.grid.z; ++z)
    for (unsigned y = 0; y < l.grid.y; ++y)
      for (unsigned x = 0; x < l.grid.x; ++x) ids.push_back(uint3{x, y, z});
  if (r.schedule == Schedule::kReverse) std::reverse(ids.begin(), ids.end());
  if (r.schedule == Schedule::kRandom) std::shuffle(ids.begin(), ids.end(), r.rng);

  if (sigsetjmp(r.fault_jmp, 1) == 0) {
    r.fault_armed = 1;
    if (l.cooperative) {
      run_blocks(r, ids, static_cast<int>(threads));
    } else {
      // Blocks of an ordinary launch may run in any order, one after another
      // here: a block never waits for another.
      for (const uint3& id : ids) {
        run_blocks(r, {id}, static_cast<int>(threads));
        if (!r.error.empty()) break;
      }
    }
    r.fault_armed = 0;
  } else {
    r.fault_armed = 0;
    fail(r, r.fault_msg);
  }
  if (r.error.empty()) r.error = check_all_canaries();
  std::string err = r.error;
  r.blocks.clear();  // frees shared memory while t_run still names this run
  t_run = outer;
  gridDim = saved_grid;
  blockDim = saved_block;
  threadIdx = uint3{};
  blockIdx = uint3{};
  return err;
}

void sync_threads(const std::source_location& where) {
  Fiber& f = arrive(Op::kSyncThreads, where);
  switch_out(*t_run, f);
}

void sync_warp(unsigned mask, const std::source_location& where) {
  Fiber& f = arrive(Op::kSyncWarp, where);
  f.mask = mask;
  switch_out(*t_run, f);
}

uint64_t shuffle(unsigned mask, uint64_t bits, int bytes, Shfl kind, int arg, int width,
                 const std::source_location& where) {
  Fiber& f = arrive(Op::kShfl, where);
  f.mask = mask;
  f.value = bits;
  f.bytes = bytes;
  f.kind = kind;
  f.arg = arg;
  f.width = width;
  switch_out(*t_run, f);
  return f.result;
}

void grid_sync(const std::source_location& where) {
  Fiber& f = arrive(Op::kGridSync, where);
  switch_out(*t_run, f);
}

void trap(const std::string& what) {
  Run* r = t_run;
  if (r == nullptr || r->current == nullptr) {
    std::fprintf(stderr, "emu: %s (outside a kernel launch)\n", what.c_str());
    std::abort();
  }
  Fiber& f = *r->current;
  fail(*r, who(*r, f) + ": " + what);
  f.waiting = true;  // never resumed: the scheduler stops at the error
  f.op = Op::kNone;
  switch_out(*r, f);
  std::abort();
}

void* dynamic_smem() {
  Run* r = t_run;
  if (r == nullptr || r->current == nullptr) {
    std::fprintf(stderr, "emu: dynamic shared memory used outside a kernel launch\n");
    std::abort();
  }
  return r->blocks[r->current->block].smem.data();
}

// ---- Memory -----------------------------------------------------------------------------

Memory::Memory(size_t bytes, size_t align, std::string name) : bytes_(bytes), name_(std::move(name)) {
  const size_t page = page_size();
  if (align == 0 || (align & (align - 1)) != 0 || align > page) align = 16;
  const size_t data_pages = round_up(bytes + align, page);
  map_bytes_ = data_pages + 2 * page;
  void* p = mmap(nullptr, map_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    std::perror("emu: mmap");
    std::abort();
  }
  map_ = p;
  char* lo = static_cast<char*>(p) + page;
  char* hi = lo + data_pages;
  mprotect(p, page, PROT_NONE);
  mprotect(hi, page, PROT_NONE);
  const uintptr_t d = (reinterpret_cast<uintptr_t>(hi) - bytes) & ~uintptr_t(align - 1);
  data_ = reinterpret_cast<void*>(d);
  std::memset(lo, kCanary, data_pages);
  t_memories.push_back(this);
}

Memory& Memory::operator=(Memory&& o) noexcept {
  if (this != &o) {
    unmap();
    map_ = o.map_;
    map_bytes_ = o.map_bytes_;
    data_ = o.data_;
    bytes_ = o.bytes_;
    name_ = std::move(o.name_);
    o.map_ = nullptr;
    o.data_ = nullptr;
    o.bytes_ = 0;
    auto it = std::find(t_memories.begin(), t_memories.end(), &o);
    if (it != t_memories.end()) *it = this;
  }
  return *this;
}

void Memory::unmap() {
  if (map_ != nullptr) {
    munmap(map_, map_bytes_);
    auto it = std::find(t_memories.begin(), t_memories.end(), this);
    if (it != t_memories.end()) t_memories.erase(it);
  }
  map_ = nullptr;
  data_ = nullptr;
  bytes_ = 0;
}

Memory::~Memory() { unmap(); }

void Memory::set_readonly(bool ro) {
  if (map_ == nullptr) return;
  const size_t page = page_size();
  mprotect(static_cast<char*>(map_) + page, map_bytes_ - 2 * page, ro ? PROT_READ : PROT_READ | PROT_WRITE);
}

std::string Memory::check_canaries() const {
  if (map_ == nullptr) return "";
  const size_t page = page_size();
  const auto* lo = static_cast<const unsigned char*>(map_) + page;
  const auto* hi = static_cast<const unsigned char*>(map_) + map_bytes_ - page;
  const auto* d = static_cast<const unsigned char*>(data_);
  for (const unsigned char* p = lo; p < d; ++p) {
    if (*p != kCanary) {
      return "write " + std::to_string(d - p) + " bytes before the start of '" + name_ + "'";
    }
  }
  for (const unsigned char* p = d + bytes_; p < hi; ++p) {
    if (*p != kCanary) {
      return "write at byte " + std::to_string(p - d) + " of '" + name_ + "', which has " +
             std::to_string(bytes_) + " bytes";
    }
  }
  return "";
}

std::string check_all_canaries() {
  for (const Memory* m : t_memories) {
    std::string e = m->check_canaries();
    if (!e.empty()) return e;
  }
  return "";
}

}  // namespace emu

// The recurrence engine: one layer, one direction of any cell (cells.h),
// forward and backward, on raw pointers. layer.h allocates around it; the
// ops (rnn.cpp, gru_lstm.cpp) only check arguments and call layer.h.
//
// Forward: A = X W_ih^T is one GEMM over all rows, into the reserve (the
// output itself for the Elman RNN; a GRU/LSTM in inference runs it in chunks
// of kInputChunkSteps steps into a chunk-sized buffer; a bfloat16 call with
// bfloat16 steps makes each step's A in the step, LayerPtrs::w_ih_t_bf16);
// then, step by step,
// the recurrent GEMM h_{t-1} W_hh^T over all gates and the cell's pointwise
// step. Small steps run with a register-blocked GEMM (small_gemm.h): from
// 16 rows with the batch rows split into one contiguous block per thread,
// each walking every step on its own rows (row_parts, row_blocks); else on
// one thread (a cell's larger small steps split by units on AVX2,
// small_parts). Larger steps
// split the hidden units across threads, each part doing the GEMM of its
// units' columns in every gate and then their pointwise step while they are
// in cache (recurrent_gemm.h), one fork/join per step (a bfloat16 call's
// large steps on an AMX CPU: one library bfloat16 GEMM over all gates, then
// the parts' pointwise step; LayerPtrs::w_hh16). The running state is
// double-buffered, so one step's GEMM reads h_{t-1} while its pointwise pass
// writes h_t. Rows whose sequence has ended stop being updated, so a
// PackedSequence is walked directly, in either direction.
//
// Backward: only dh (and the LSTM's dc) are sequential: the cell turns dh
// into the step's gate grads dG, and dh_{t-1} = [dh z +] dR W_hh, split by
// batch rows or hidden units like the forward. dX, dW_ih, dW_hh and the bias grads are one
// GEMM / reduction each over all N rows afterwards (small ones on two
// threads side by side, side_by_side). Nothing is allocated inside the time
// loop.
//
// With an LSTM projection (proj_size P > 0) the state is h = m W_hr^T
// (P wide) and each step has a second, serial GEMM; those steps run the
// pointwise part on all units at once.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <type_traits>
#include <utility>
#include <vector>

#include "../rnn_common.h"
#include "bf16_bits.h"
#include "blas.h"
#include "cells.h"
#include "isa.h"
#include "packed_weights.h"
#include "recurrent_gemm.h"
#include "small_gemm.h"
#include "small_gemm_bf16.h"
#include "unit_parts.h"

namespace rnnattn::cpu {

// Where the blocks of a cell's rows are, given H (see cells.h).
template <typename Cell>
struct CellLayout {
  int64_t H;
  static constexpr int G = Cell::kGates, S = Cell::kSumGates;
  int64_t gates() const { return G * H; }        // rows of W_ih / W_hh
  int64_t sum_cols() const { return S * H; }     // gates whose A and R add
  int64_t rest_cols() const { return (G - S) * H; }
  int64_t rest_at() const { return G * H; }      // where R (or dR) of the other gates is
};

// Raw pointers and sizes of one layer call. ws/ld_ws: the reserve rows (for
// the Elman RNN the output rows). out/ld_out: the output (the state h_t,
// Hs = P or H wide); rows of the output may be further apart than Hs (one
// direction's half of a bidirectional output, read in place).
template <typename T>
struct LayerPtrs {
  const T* x = nullptr;
  const T* hx = nullptr;
  const T* cx = nullptr;  // LSTM
  const T* w_ih = nullptr;
  const T* w_hh = nullptr;
  const T* w_hh_t = nullptr;  // W_hh^T (Hs x G*H) for the small-step path, or null
                              // (then it reads w_hh: small_gemm_nt)
  // Instead of w_hh_t, in a bfloat16 call on a CPU with AVX512-BF16: W_hh^T
  // as bfloat16 pairs ((Hs + 1) / 2 x G*H), multiplied in bfloat16
  // arithmetic (small_gemm_bf16.h). Float calls only.
  const uint32_t* w_hh_t_bf16 = nullptr;
  // The backward's counterpart: W_hh itself as bfloat16 pairs
  // ((G*H + 1) / 2 x Hs), for dh_{t-1} = dG_t W_hh with dG_t rounded to
  // bfloat16.
  const uint32_t* w_hh_bf16 = nullptr;
  // With w_hh_t_bf16 (no projection): W_ih^T as bfloat16 pairs ((I + 1) / 2
  // x G*H). Each step then makes its own rows' A = X W_ih^T (into ws, where
  // the step's recurrent product adds to it) on the thread that walks them,
  // instead of one GEMM over all rows first: no float32 A from a library
  // call to copy, no fork/join for it, and A summed in float32 (a library
  // bfloat16 GEMM rounds it to bfloat16).
  const uint32_t* w_ih_t_bf16 = nullptr;
  // In a bfloat16 call whose large steps go to the library's bfloat16 GEMM
  // (half.h bf16_library_steps; float calls only, no projection): W_hh as
  // stored, in bfloat16 bits (G*H x Hs), and the steps' operands: x16, the
  // left one rounded to bfloat16 (B rows of Hs forward, of G*H backward), and
  // y16, the product (B rows of G*H forward, of Hs backward). Steps within
  // small_step's size still take small_gemm_bf16 (w_hh_t_bf16, w_hh_bf16).
  const uint16_t* w_hh16 = nullptr;
  uint16_t* x16 = nullptr;
  uint16_t* y16 = nullptr;
  // With w_hh16, where oneDNN's packed weights take bfloat16
  // (packed_weights.h): W_hh (forward) or W_hh^T (backward) in oneDNN's
  // layout, made once a call; the product is then oneDNN's own result
  // tensor instead of y16. Else null.
  const at::Tensor* w_hh16_packed = nullptr;
  // Or, in the forward, one such weight per unit part of the steps
  // (half_layer.h packed_step_parts): part q's W_hh rows of slice q's units
  // (unit_parts.h, parts = its size) in every gate, gate-major (undefined
  // for an empty slice); each part then multiplies on its own thread, its
  // product (rows x kGates * its units) read there by its units' pointwise
  // step, with no wait between; h_t goes to x16_next (B rows of Hs) while
  // the other parts' products still read x16, and the two swap each step.
  const std::vector<at::Tensor>* w_hh16_parts = nullptr;
  uint16_t* x16_next = nullptr;
  const T* w_hr = nullptr;    // LSTM projection (P x H), or null
  const T* bias = nullptr;    // the cell's combined bias (cells.h)
  T* out = nullptr;
  int64_t ld_out = 0;
  T* ws = nullptr;
  int64_t ld_ws = 0;
  // Training keeps the whole reserve. Inference keeps only A and the gate
  // activations (kGates blocks a row), with R of the gates kept apart in
  // rest, a (B, rest_cols) step scratch, and no c_t.
  bool train = true;
  T* rest = nullptr;
  // > 0 (inference of a long sequence): ws holds A for this many steps at a
  // time, each chunk's input GEMM run when the walk reaches it, so the
  // activations kept are bounded by the chunk, not the sequence.
  int64_t ws_steps = 0;
  // Inference where each step makes its own A (w_ih_t_bf16): ws holds one
  // step's rows, which every step reuses.
  bool ws_one_step = false;
  // A is already in ws (computed by the caller: a half-precision call's
  // input GEMM in its own dtype, half.h); x is then not read.
  bool a_given = false;
  // Or A given in bfloat16 bits (rows x G, contiguous) and left there:
  // where every step is a fused large bfloat16 step (lib_step), which
  // reads it as it reads R; ws then only
  // receives the activations (in inference one step's rows: ws_one_step).
  const uint16_t* a16 = nullptr;
  // With a16: the output in bfloat16 (rows Hs apart), which the fused
  // steps round h_t into instead of writing out's float32 rows
  // (CellRow::h16_out); else null.
  uint16_t* out16 = nullptr;
  // With a16, in training: the reserve in bfloat16 (rows kWsBlocks * H
  // apart), which the fused steps round what they keep into
  // (CellRow::ws16); ws then holds one step's rows, as in inference.
  uint16_t* ws16 = nullptr;
  // Whether the recurrent GEMMs may pack W_hh (packed_rows): a half-precision
  // call, which runs the engine once per chunk of steps and is there to save
  // memory, does not (half_layer.h).
  bool pack = true;
};

// Inference computes A in chunks of this many steps (LayerPtrs::ws_steps):
// the A kept for a long sequence (3H or 4H values a row, 3-4x the output
// itself) shrinks T / 32 times, for one more input GEMM call per 32 steps
// (forward time unchanged within the dev VM's noise at B = 1, 16 and 64:
// benchmarks/OPTIMISATIONS.md).
constexpr int64_t kInputChunkSteps = 32;

// Whether a step of rows x k x (G * H) multiply-adds takes the small path:
// one small_gemm call over all gate blocks. The BLAS path makes one call per
// gate block, each paying the call's fixed cost, so the threshold is per
// gate block: kSmallGemmMaxWork (tuned for the Elman RNN) per block.
template <typename Cell>
bool small_step(int64_t rows, int64_t k, int64_t n) {
  return rows * k * n <= kSmallGemmMaxWork * Cell::kGates;
}

// Small steps of a cell with several gates (the LSTM's 4, the GRU's 3) carry
// several times an Elman step's work at the same (B, H): from this many
// multiply-adds a step they split their hidden units across the threads
// like the large steps (each part: its units' columns of every gate, then
// their pointwise step), a run of such steps in one parallel region with a
// barrier between steps (walk_unit_parts). The Elman RNN keeps its
// single-threaded small steps (measured).
//
// Not with the AVX-512 build: at twice the multiply-adds a cycle, a small
// step takes half the time there, and splitting it no longer repays its
// fixed costs (the barrier, each core reading the half of the state the
// other wrote). Measured on a 2-core Intel Xeon (AVX-512), 2 threads,
// before the row split (row_parts, which now takes batches of 16 rows and
// more), single-threaded steps (with the input GEMMs on the other core,
// overlap_steps) against split ones: LSTM (16,100,64,128) fwd 2.78 -> 2.54
// ms, fwd+bwd 7.37 -> 6.19; LSTM (32,100,64,128) (2^21 multiply-adds a
// step, the most a small step has) fwd 5.0 ms both, fwd+bwd 13.6 -> 12.2;
// GRU (16,100,64,128) fwd+bwd 6.85 -> 5.75.
constexpr int64_t kSmallParallelWork = int64_t(1) << 19;

// How many unit parts a small step of `work` multiply-adds over H units
// takes (1: the single small_gemm call).
template <typename Cell>
int small_parts(int64_t work, int64_t H) {
  if (Cell::kGates == 1 || work < kSmallParallelWork || cpu_isa() == Isa::kAvx512 ||
      at::in_parallel_region())
    return 1;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), H / 32)));
}

// How many threads walk a layer's small steps with the batch rows dealt
// round-robin among them (1: none). The rows of a batch are independent
// through time, so each thread walks every step on its own rows, one
// parallel region a call and nothing shared between threads during the walk
// (W_hh^T is only read). Splitting the units of a step instead makes every
// thread read the state the others wrote, each step, and wait for them: on
// a 2-core Intel Xeon that cost as much as it saved (LSTM (16,100,64,128),
// 16 x 128 x 512 a step: 20.6 us a step on one thread, 22.5 on two by
// units, 11.1 on two by rows; benchmarks/OPTIMISATIONS.md). From
// kRowBlockMin rows a thread (a full register block of small_gemm on
// AVX-512), where the step is a small step (any_size: every step takes the
// small path, as in a bfloat16 call with bfloat16 steps), without a
// projection (whose serial GEMM would need all rows).
constexpr int64_t kRowBlockMin = 8;
// Each thread's rows are one contiguous block of the first step's rows,
// the same through the walk (no thread reads a row another wrote). Rows
// dealt round robin instead (rows q, q + P, ... to thread q) put each
// core's rows between the other's, every row's neighbours written by the
// other core: LSTM (16,100,64,128) bfloat16 fwd ran 1.04x torch's bfloat16
// module that way and 1.25x with contiguous halves (AMD EPYC Zen 4, 2
// threads, alternating in one process; 1.13x against 0.93x in chunks of 8
// steps). The blocks are cut so that each holds the same number of
// row-steps (a packed batch's rows end at different steps; rows are in
// decreasing length): bounds[q], bounds[q + 1] are thread q's.
inline std::vector<int64_t> row_blocks(const StepSchedule& sched, int P) {
  const int64_t T = sched.steps(), B0 = T ? sched.batch[0] : 0;
  // len[r]: how many steps hold row r (a step of b rows holds rows < b).
  std::vector<int64_t> len(B0 + 1, 0);
  int64_t total = 0;
  for (int64_t t = 0; t < T; ++t) {
    len[std::min(sched.batch[t], B0)] += 1;
    total += sched.batch[t];
  }
  for (int64_t r = B0 - 1; r >= 0; --r) len[r] += len[r + 1];  // suffix sums: steps with b > r
  std::vector<int64_t> bounds(P + 1, B0);
  bounds[0] = 0;
  int64_t q = 1, done = 0;
  for (int64_t r = 0; r < B0 && q < P; ++r) {
    done += len[r + 1];
    while (q < P && done * P >= q * total) bounds[q++] = r + 1;
  }
  return bounds;
}
template <typename Cell>
int row_parts(int64_t B0, int64_t Hs, int64_t G, bool proj, bool any_size = false) {
  if (proj || B0 < 2 * kRowBlockMin || !(any_size || small_step<Cell>(B0, Hs, G)) ||
      at::in_parallel_region())
    return 1;
  return static_cast<int>(std::min<int64_t>(at::get_num_threads(), B0 / kRowBlockMin));
}

// The row count for which the large steps' recurrent GEMMs pack W_hh once
// per call into MKL's packed operand (0: never; each sgemm call then
// re-packs its slice of W_hh; and never where oneDNN runs the large float32
// GEMMs, blas.h). The Elman RNN always packs (measured: 1.18 -> 0.87 ms a
// step at (B, H) = (64, 1024), 2 threads). But MKL's operand costs
// 9-27 MiB whatever the slice's size (a 2 MiB slice: 11 MiB), and a cell
// packs one per gate block (or block of gate grads) and thread: 88 MiB for
// an LSTM at H = 1024 on 2 threads. So a cell packs only within a budget of
// bytes: in the forward, the reserve a training call keeps (s.rows rows of
// kWsBlocks * H), training or not; in the backward, half of the gate grads
// it holds, since its peak is the call's. And only from kPackMinSteps steps,
// where a pack (about a step's time) is repaid. Measured on an Intel Xeon
// (AVX-512), 2 threads, (64,100,512,1024), against the forward's earlier
// budget (half the activations the call holds, which inference's chunked
// reserve never met): LSTM fwd 353-362 -> 302 ms in alternating processes;
// in the benchmark LSTM fwd 334 -> 290 ms (nn.LSTM 288), peak 58 -> 147 MiB
// (nn.LSTM 153), GRU fwd 248 -> 223 ms, fwd+bwd 749 -> 740.
constexpr int64_t kPackMinSteps = 4;
template <typename T, typename Cell>
int64_t packed_rows(int64_t steps, int64_t full_rows, int64_t n, int64_t k, int blocks,
                    int parts, int64_t budget) {
  if constexpr (std::is_same_v<T, float>) {
    if (float_gemm_lib() == GemmLib::kOnednn) return 0;  // MKL's packs only (blas.h)
    if (Cell::kGates == 1) return full_rows;
    if (steps < kPackMinSteps || cblas_sgemm_pack_get_size == nullptr || full_rows > INT32_MAX)
      return 0;
    const int64_t slice = (n + parts - 1) / parts;
    const int64_t bytes = static_cast<int64_t>(
        cblas_sgemm_pack_get_size(162 /* B matrix */, int(full_rows), int(slice), int(k)));
    return int64_t(blocks) * parts * bytes <= budget ? full_rows : 0;
  }
  return 0;  // only float has a packed GEMM
}

// How many steps a chunk of a walk has when a second thread runs GEMMs that
// do not wait for the walk meanwhile (the forward: the next chunk's input
// GEMM; the backward: the input grads of the chunk before); 0: no overlap.
// Only where the steps are single-threaded small steps (the other threads
// idle otherwise): the Elman RNN's small steps, a cell's below
// kSmallParallelWork. Those GEMMs are I/(I+H) of the multiply-adds (a third
// at I = H/2), run on the idle core. Chunks of at least 64 rows (an
// efficient GEMM), at most 16 of them (one chunk's GEMMs are not overlapped;
// each other costs one fork/join); none below kOverlapMinWork multiply-adds
// of input GEMM in all, where a fork/join costs about what it hides. The
// second thread must not become the critical path: run on one thread, its
// GEMMs (one per chunk forward, I G a row; two backward) take longer than
// on all threads after the walk, so overlapping pays only while they take
// less than twice the walk (H G a row, plus the pointwise): I <= 2H forward,
// I <= H backward. Measured, LSTM (8,100,128,64) fwd+bwd: 3.24 ms with the
// forward's overlap, 3.62 ms with the backward's too (I = 2H).
constexpr int64_t kOverlapMinWork = int64_t(1) << 21;
template <typename Cell>
int64_t overlap_steps(const RnnShape& s, const StepSchedule& sched, int64_t G, bool proj,
                      bool backward) {
  const int64_t T_ = sched.steps();
  if (T_ < 2 || proj || at::get_num_threads() < 2 || at::in_parallel_region()) return 0;
  if (s.rows * G * s.input < kOverlapMinWork) return 0;
  if (s.input > (backward ? 1 : 2) * s.state) return 0;
  const int64_t B0 = sched.batch[0], H = s.hidden, Hs = s.state;
  if (!small_step<Cell>(B0, Hs, G) || small_parts<Cell>(B0 * Hs * G, H) > 1) return 0;
  if (row_parts<Cell>(B0, Hs, G, proj) > 1) return 0;
  const int64_t steps = std::max<int64_t>((T_ + 15) / 16, (64 + B0 - 1) / B0);
  return steps < T_ ? steps : 0;
}

// The rows of time steps [t0, t1]: one contiguous run.
inline std::pair<int64_t, int64_t> rows_of_steps(const StepSchedule& sched, int64_t t0,
                                                 int64_t t1) {
  return {sched.offset[t0], sched.offset[t1] + sched.batch[t1] - sched.offset[t0]};
}

// Runs walk() on this (the master) thread and other() on a second one at
// the same time (overlap_steps), other's BLAS calls kept to its own thread.
// The master keeps the walk's W_hh^T in its cache from one chunk to the
// next. With one thread in the team they run one after the other.
template <typename W, typename O>
void beside(const W& walk, const O& other) {
  at::parallel_for(0, 2, 1, [&](int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1; ++q) {
      if (q == 0) {
        walk();
      } else {
        SerialBlasGuard serial(true);
        other();
      }
    }
  });
}

// A library step's product x16 (rows x k) times op(W_hh) (k x n) in
// bfloat16 (forward_layer's lib_step, backward_recurrence's
// lib_iteration): on the packed weight where the call made one (then
// oneDNN's result is returned), else into p.y16 (an undefined tensor is
// returned).
template <typename T>
at::Tensor lib_product(const LayerPtrs<T>& p, const uint16_t* x16, int64_t rows, int64_t k,
                       int64_t n, bool forward) {
  if (p.w_hh16_packed != nullptr)
    return packed_linear(*packed_linear_ops(), *p.w_hh16_packed, x16, rows, k, k);
  gemm_bf16_library(/*tb=*/forward, rows, n, k, x16, k, p.w_hh16, forward ? k : n, p.y16, n);
  return at::Tensor();
}

// A bfloat16 tensor's data as its bits (data_ptr checks the dtype).
inline uint16_t* bf16_bits_of(const at::Tensor& t) {
  return reinterpret_cast<uint16_t*>(t.data_ptr<at::BFloat16>());
}

// dst (float32, unit column stride) = src (2-D, same shape); bfloat16 rows
// widened on all threads by bf16_bits.h's loops for the CPU's ISA level,
// not by ATen's conversion, which ran at AVX2 width on an AVX-512 Xeon
// (torch 2.13): a large bfloat16 chunk's A (layer.h) and its output rows
// (half_layer.h) took 4.8% of the LSTM (64,100,512,1024) bfloat16 forward
// there.
inline void copy_to_float(const at::Tensor& src, const at::Tensor& dst) {
  if (src.scalar_type() != at::kBFloat16 || dst.scalar_type() != at::kFloat ||
      src.stride(1) != 1 || dst.stride(1) != 1)
    return void(dst.copy_(src));
  const uint16_t* q = bf16_bits_of(src);
  float* d = dst.data_ptr<float>();
  const int64_t w = src.size(1), lq = src.stride(0), ld = dst.stride(0);
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 15) / std::max<int64_t>(w, 1));
  at::parallel_for(0, src.size(0), grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) widen_bf16(q + r * lq, w, d + r * ld, false);
  });
}

// dst (bfloat16 or another dtype, 2-D) = src (float32, same shape), as
// copy_to_float.
inline void copy_from_float(const at::Tensor& src, const at::Tensor& dst) {
  if (dst.scalar_type() != at::kBFloat16 || src.scalar_type() != at::kFloat ||
      src.stride(1) != 1 || dst.stride(1) != 1)
    return void(dst.copy_(src));
  const float* q = src.data_ptr<float>();
  uint16_t* d = bf16_bits_of(dst);
  const int64_t w = src.size(1), lq = src.stride(0), ld = dst.stride(0);
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 15) / std::max<int64_t>(w, 1));
  at::parallel_for(0, src.size(0), grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) round_to_bf16(q + r * lq, w, d + r * ld);
  });
}

// w (2-D) transposed into a new contiguous tensor: bfloat16 by
// bf16_transpose.h's tiles on all threads (ATen's transposing copy of a
// bfloat16 W_hh took 8.4 ms of an LSTM (64,100,512,1024) backward on a
// 2-core Xeon), other dtypes by ATen.
inline at::Tensor transposed_copy(const at::Tensor& w) {
  if (w.scalar_type() != at::kBFloat16 || w.dim() != 2 || w.stride(1) != 1)
    return w.t().contiguous();
  at::Tensor t = at::empty({w.size(1), w.size(0)}, w.options());
  transpose_bf16(bf16_bits_of(w), w.stride(0), w.size(0), w.size(1), bf16_bits_of(t),
                 t.stride(0));
  return t;
}

// Forward of one layer and direction. state/spare: the (B, Hs) state
// buffers, state holding hx on entry, and spare too where some step has
// fewer than B rows (the rows that do not step keep it in both; every
// other row of spare is written before it is read); c: (B, H) holding cx
// (LSTM). m: (B, H) scratch for the projection's input (proj only).
// Returns the buffer that holds h_n; c holds c_n.
template <typename T, typename Cell>
T* forward_layer(const Cell& cell, const RnnShape& s, const StepSchedule& sched,
                 const LayerPtrs<T>& p, T* state, T* spare, T* c, T* m, bool reverse) {
  const CellLayout<Cell> L{s.hidden};
  const int64_t H = s.hidden, Hs = s.state, G = L.gates();
  const bool proj = p.w_hr != nullptr;
  // A = X W_ih^T of rows [row_begin, row_begin + rows) into ws, from its
  // row ws_row (0: ws holds a chunk of steps; row_begin: it holds them all).
  auto input_gemm = [&](int64_t row_begin, int64_t rows, int64_t ws_row) {
    gemm<T>(false, true, rows, G, s.input, T(1), p.x + row_begin * s.input, s.input, p.w_ih,
            s.input, T(0), p.ws + ws_row * p.ld_ws, p.ld_ws);
  };
  const int64_t T_ = sched.steps();
  const int64_t B0 = T_ ? sched.batch[0] : 0;
  // The rows of walk steps [i0, i1): one contiguous run in either walk.
  auto step_rows = [&](int64_t i0, int64_t i1) {
    return reverse ? rows_of_steps(sched, T_ - i1, T_ - 1 - i0) : rows_of_steps(sched, i0, i1 - 1);
  };
  // The small steps' product h (rows of Hs) @ W_hh^T's columns [col, col +
  // n): in bfloat16 arithmetic where the layer op made W_hh^T's bfloat16
  // pairs, else from the float W_hh^T.
  const bool has_wt = p.w_hh_t || p.w_hh_t_bf16;
  // Whether a step of b rows takes the small path (small_gemm, or
  // small_gemm_bf16): with W_hh^T in bfloat16 pairs every step without a
  // projection does, since no library GEMM here multiplies bfloat16 into
  // float32 sums; its large steps split their rows across the threads
  // (row_parts) from 16 rows, else their units (recurrent_parts, as the
  // library's calls would; step_parts). Measured on the AMD EPYC (Zen 4), 2
  // threads, LSTM (64,100,512,1024) bfloat16 fwd, alternating: rows
  // 283-306 ms, units 293-358.
  const bool bf16_steps = p.w_hh_t_bf16 != nullptr && !proj;
  const bool step_input = bf16_steps && p.w_ih_t_bf16 != nullptr;  // LayerPtrs::w_ih_t_bf16
  // The large steps through the library's bfloat16 GEMM instead
  // (LayerPtrs::w_hh16, lib_step below).
  const bool lib16 = p.w_hh16 != nullptr && !proj;
  auto small = [&](int64_t b) { return (bf16_steps && !lib16) || small_step<Cell>(b, Hs, G); };
  auto wt_gemm = [&](const T* X, int64_t col, T* Y, int64_t rows, int64_t n, bool accumulate,
                     int64_t ldx, int64_t ldy) {
    if constexpr (std::is_same_v<T, float>)
      if (p.w_hh_t_bf16)
        return small_gemm_bf16(X, p.w_hh_t_bf16 + col, Y, rows, Hs, n, accumulate, Ld{ldx, G, ldy});
    small_gemm(X, p.w_hh_t + col, Y, rows, Hs, n, accumulate, Ld{ldx, G, ldy});
  };
  // A of rows [r0, r1) of step a (those below a.b), gate columns [c0, c0 +
  // n) of each gate (n = H: all of them, one call), into ws (step_input).
  auto input_rows = [&](const auto& a, int64_t r0, int64_t r1, int64_t c0, int64_t n) {
    if constexpr (std::is_same_v<T, float>) {
      const int64_t rows = std::min(r1, a.b) - r0;
      if (!step_input || rows <= 0) return;
      const float* x = p.x + (a.row0 + r0) * s.input;
      float* y = a.ws + r0 * p.ld_ws;
      const Ld ld{s.input, G, p.ld_ws};
      if (c0 == 0 && n == H)
        return small_gemm_bf16(x, p.w_ih_t_bf16, y, rows, s.input, G, false, ld);
      for (int g = 0; g < Cell::kGates; ++g)
        small_gemm_bf16(x, p.w_ih_t_bf16 + g * H + c0, y + g * H + c0, rows, s.input, n, false,
                        ld);
    }
  };
  const int64_t overlap = p.a_given || step_input || p.ws_steps > 0 || !has_wt
                              ? 0
                              : overlap_steps<Cell>(s, sched, G, proj, false);
  if (p.ws_steps == 0 && !p.a_given && !step_input && overlap == 0) input_gemm(0, s.rows, 0);
  int64_t ws_row0 = 0;  // the input row whose A is ws's first row
  const bool train = p.train;
  // Steps too large for small_gemm split the hidden units across threads.
  std::vector<RecurrentGemm<T>> rec;
  if (!proj && !small(B0) && !lib16) {
    const int parts = recurrent_parts(B0 * Hs * G, H);
    rec.reserve(Cell::kGates);
    const int64_t reserve_bytes = s.rows * Cell::kWsBlocks * H * int64_t(sizeof(T));
    const int64_t pack =
        p.pack ? packed_rows<T, Cell>(T_, B0, H, Hs, Cell::kGates, parts, reserve_bytes) : 0;
    for (int g = 0; g < Cell::kGates; ++g)
      rec.emplace_back(p.w_hh + g * H * Hs, /*trans=*/true, pack, H, Hs, parts);
  }
  // Where oneDNN runs them, the steps of B0 rows multiply by packed weights
  // instead (packed_weights.h): part q's weight is W_hh's rows of its units
  // in every gate, (G * its units) x Hs, one product a step over all gates.
  PackedParts packed;
  if constexpr (std::is_same_v<T, float>) {
    const int64_t part_cols = rec.empty() ? 0 : rec[0].end(0) - rec[0].begin(0);  // the widest
    if (!rec.empty() && p.pack &&
        use_packed_weights(sched.full_steps(), B0 * Cell::kGates * part_cols * Hs, kPackMinSteps)) {
      auto W = at::from_blob(const_cast<float*>(p.w_hh), {Cell::kGates, H, Hs},
                             at::TensorOptions().dtype(at::kFloat));
      for (int q = 0; q < rec[0].parts(); ++q) {
        const int64_t c0 = rec[0].begin(q), cols = rec[0].end(q) - c0;
        packed.add(W.narrow(1, c0, cols).reshape({Cell::kGates * cols, Hs}), B0);
      }
    }
  }
  T* cur = state;
  T* nxt = spare;
  // Where step i's rows are.
  struct At {
    int64_t t, b, row0;
    T* ws;
    T* rest;  // R of the gates kept apart
    int64_t ld_rest;
  };
  auto at = [&](int64_t i) {
    At a;
    a.t = reverse ? T_ - 1 - i : i;
    a.b = sched.batch[a.t];
    a.row0 = sched.offset[a.t];
    // (p.ws is null where the fused steps write the output in bfloat16 only:
    // LayerPtrs::out16 for the Elman RNN, whose reserve is its output.)
    a.ws = p.ws == nullptr ? nullptr
           : p.ws_one_step ? p.ws
                           : p.ws + (a.row0 - ws_row0) * p.ld_ws;
    a.rest = train && a.ws != nullptr ? a.ws + L.rest_at() : p.rest;
    a.ld_rest = train ? p.ld_ws : L.rest_cols();
    return a;
  };
  // Where the recurrent GEMM of gate g lands, and its leading dimension.
  auto gate_out = [&](const At& a, int g) {
    return g < Cell::kSumGates ? a.ws + g * H : a.rest + (g - Cell::kSumGates) * H;
  };
  auto gate_ld = [&](const At& a, int g) { return g < Cell::kSumGates ? p.ld_ws : a.ld_rest; };
  // At a chunk's first step (inference of a long sequence), its A into ws.
  auto load_chunk = [&](int64_t i) {
    if (p.ws_steps > 0 && i % p.ws_steps == 0) {
      const auto [row, rows] = step_rows(i, std::min(T_, i + p.ws_steps));
      ws_row0 = row;
      if (!step_input) input_gemm(row, rows, 0);
    }
  };
  // Rows whose sequence ended at the step before i hold their final state
  // in cur only; copy their units [c0, c1) so both buffers agree on every
  // row not updated from here on (rows not yet started hold hx in both).
  // (Rows [r0, r1) only: the row split, row_blocks.)
  auto carry_ended = [&](const At& a, int64_t i, const T* cur, T* nxt, int64_t c0, int64_t c1,
                         int64_t r0 = 0, int64_t r1 = INT64_MAX) {
    const int64_t b_prev = i == 0 ? s.batch : sched.batch[reverse ? a.t + 1 : a.t - 1];
    for (int64_t r = std::max(a.b, r0); r < std::min(b_prev, r1); ++r)
      std::copy(cur + r * Hs + c0, cur + r * Hs + c1, nxt + r * Hs + c0);
  };
  // Units [c0, c1) of rows [r0, r1) below a.b. r16 / h16: a fused large
  // bfloat16 step's R (its rows ld_r16 apart, gate blocks g_r16 apart,
  // starting at unit c0: CellRow) and h_t (its rows Hs apart).
  auto pointwise = [&](const At& a, const T* cur, T* nxt, int64_t c0, int64_t c1,
                       int64_t r0 = 0, int64_t r1 = INT64_MAX, const uint16_t* r16 = nullptr,
                       int64_t ld_r16 = 0, int64_t g_r16 = 0, uint16_t* h16 = nullptr) {
    for (int64_t r = r0; r < std::min(r1, a.b); ++r) {
      CellRow<T> row;
      row.r16 = r16 ? r16 + r * ld_r16 : nullptr;
      row.r16_gate = g_r16;
      row.h16 = h16 ? h16 + r * Hs : nullptr;
      row.a16 = r16 && p.a16 ? p.a16 + (a.row0 + r) * G : nullptr;
      // A fused step in inference with A in bfloat16 keeps no gates
      // (CellRow::ws): no one reads them. Their 4H floats a row were 1 MiB
      // of stores a step at (64,100,512,1024), written back while the
      // step's product streams W_hh in: on a 2-core Xeon (AMX), bfloat16
      // fwd, alternating processes, LSTM 1.035x, GRU 1.08x there, 1.03x /
      // 1.05x at (32,100,256,512).
      // (The Elman RNN's reserve is its output, h_out or h16_out: no ws.)
      // In training they go, rounded, into the bfloat16 reserve instead
      // where the call gives it (LayerPtrs::ws16).
      const bool fused16 = r16 && p.a16;
      const bool keep = !(fused16 && (!train || Cell::kWsBlocks == 1 || p.ws16));
      row.ws = keep ? a.ws + r * p.ld_ws : nullptr;
      row.rest = keep ? a.rest + r * a.ld_rest : nullptr;
      row.ws16 = fused16 && p.ws16 ? p.ws16 + (a.row0 + r) * Cell::kWsBlocks * H : nullptr;
      row.h_prev = cur + r * Hs;
      row.h16_out = row.a16 && p.out16 ? p.out16 + (a.row0 + r) * Hs : nullptr;
      row.h_out = proj             ? m + r * H
                  : row.h16_out    ? nullptr
                                   : p.out + (a.row0 + r) * p.ld_out;
      row.h_next = proj ? nullptr : nxt + r * Hs;
      row.c = Cell::kHasCell ? c + r * H : nullptr;
      row.c_keep = Cell::kHasCell && train && keep ? row.ws + L.gates() : nullptr;
      cell.forward(row, p.bias, H, c0, c1);
    }
  };
  // How many unit parts step i's small step splits into across threads
  // (small_parts; 1: the step runs on this thread, or is not small).
  auto step_parts = [&](int64_t i) {
    const int64_t b = sched.batch[reverse ? T_ - 1 - i : i];
    if (proj || !has_wt || !small(b)) return 1;
    if (!small_step<Cell>(b, Hs, G)) return recurrent_parts(b * Hs * G, H);  // bf16_steps
    return small_parts<Cell>(b * Hs * G, H);
  };
  // Units [c0, c1) of a small step split across threads: their columns of
  // every gate's GEMM, then their pointwise step while they are in cache.
  auto part_step = [&](int64_t i, const T* cur, T* nxt, int64_t c0, int64_t c1) {
    const At a = at(i);
    carry_ended(a, i, cur, nxt, c0, c1);
    input_rows(a, 0, a.b, c0, c1 - c0);
    for (int gi = 0; gi < Cell::kGates; ++gi)
      wt_gemm(cur, gi * H + c0, gate_out(a, gi) + c0, a.b, c1 - c0, gi < Cell::kSumGates, Hs,
              gate_ld(a, gi));
    pointwise(a, cur, nxt, c0, c1);
  };
  // A large step through the library's bfloat16 GEMM (lib16): h_{t-1} of
  // its rows in bfloat16 (x16; the step before wrote it where it was such a
  // step too), R = x16 W_hh^T over all gates in one call (y16), then on each
  // unit part: the ended rows carried, its A (step_input), then R added to
  // A (or kept apart), the pointwise step and h_t's units rounded into x16
  // in the cell's one pass (CellRow::r16; A too, read in bfloat16, where the
  // call gives it so: LayerPtrs::a16). Measured on a 2-core Xeon (AMX),
  // bfloat16 forward, alternating processes, median of 4-6 rounds, against
  // separate passes that widened R, ran the cell and rounded h_t: LSTM
  // (64,100,512,1024) 1.06x faster (93.6-99.6 -> 87.3-92.8 ms), with A in
  // bfloat16 too 1.16x (94.4-108.5 -> 82.7-90.4 ms); the GRU 1.07x at H =
  // 1024, 1.15x at (32,100,256,512); the Elman RNN (with h_t rounded into
  // the output too, LayerPtrs::out16) 1.27x at H = 1024 (31.4 -> 25.1 ms),
  // fwd+bwd 1.10x.
  // The large steps' left operand: x16 holds the state entering step
  // x16_step for its first x16_rows rows; with unit parts, x16_next
  // receives h_t (LayerPtrs::w_hh16_parts).
  uint16_t* x16 = p.x16;
  uint16_t* x16_next = p.x16_next;
  int64_t x16_step = -1, x16_rows = 0;
  // Units [c0, c1) of large step i from their product y (at unit c0 of its
  // first gate; rows ldy apart, gate blocks gs apart), h_t's units into h16.
  auto lib_units = [&](const At& a, int64_t i, const uint16_t* y, int64_t ldy, int64_t gs,
                       int64_t c0, int64_t c1, uint16_t* h16) {
    if constexpr (std::is_same_v<T, float>) {
      const int64_t b = a.b;
      carry_ended(a, i, cur, nxt, c0, c1);
      input_rows(a, 0, b, c0, c1 - c0);
      pointwise(a, cur, nxt, c0, c1, 0, b, y, ldy, gs, h16);
    }
  };
  auto lib_step = [&](const At& a, int64_t i) {
    if constexpr (std::is_same_v<T, float>) {
      const int64_t b = a.b;
      const int64_t fresh = x16_step == i ? std::min(x16_rows, b) : 0;
      if (fresh < b)  // rows starting here (hx) or after a step of another path
        at::parallel_for(fresh, b, 16, [&](int64_t r0, int64_t r1) {
          round_to_bf16(cur + r0 * Hs, (r1 - r0) * Hs, x16 + r0 * Hs);
        });
      if (const std::vector<at::Tensor>* parts = p.w_hh16_parts) {
        const int n = static_cast<int>(parts->size());
        const int64_t width = unit_slice_width(n, H);
        at::parallel_for(0, n, 1, [&](int64_t q0, int64_t q1) {
          unit_slices(width, H, q0, q1, [&](int64_t c0, int64_t c1) {
            const at::Tensor y =
                packed_linear(*packed_linear_ops(), (*parts)[c0 / width], x16, b, Hs, Hs);
            lib_units(a, i, bf16_bits_of(y), Cell::kGates * (c1 - c0), c1 - c0, c0, c1, x16_next);
          });
        });
        std::swap(x16, x16_next);
      } else {
        const at::Tensor y = lib_product(p, x16, b, Hs, G, /*forward=*/true);
        const uint16_t* y16 = y.defined() ? bf16_bits_of(y) : p.y16;
        for_unit_slices(recurrent_parts(b * Hs * G, H), H, [&](int64_t c0, int64_t c1) {
          lib_units(a, i, y16 + c0, G, H, c0, c1, x16);
        });
      }
      x16_step = i + 1;
      x16_rows = b;
    }
  };
  // Part q's product of a full step on its packed weight (units [c0, c1) of
  // every gate, gate-major), added to A in the summed gates' blocks and
  // kept apart in the others', as the plain path's GEMMs leave them.
  auto packed_step_product = [&](const At& a, int q, int64_t c0, int64_t c1) {
    if constexpr (std::is_same_v<T, float>) {
      const int64_t cols = c1 - c0;
      const at::Tensor y = packed.product(q, cur, a.b, Hs, Hs);
      const float* yp = y.data_ptr<float>();
      for (int64_t r = 0; r < a.b; ++r)
        for (int g = 0; g < Cell::kGates; ++g) {
          const float* src = yp + (r * Cell::kGates + g) * cols;
          float* dst = gate_out(a, g) + r * gate_ld(a, g) + c0;
          if (g < Cell::kSumGates) {
            for (int64_t j = 0; j < cols; ++j) dst[j] += src[j];
          } else {
            std::copy(src, src + cols, dst);
          }
        }
    }
  };
  // One step of the walk that is not split into unit parts.
  auto step = [&](int64_t i) {
    const At a = at(i);
    const int64_t b = a.b;
    T* ws = a.ws;
    if (lib16 && !small(b)) {
      lib_step(a, i);
      std::swap(cur, nxt);
      return;
    }
    carry_ended(a, i, cur, nxt, 0, Hs);
    if (small(b)) {
      // Single-threaded, no BLAS call: the step's data is in L1/L2. W_hh^T
      // where the layer op made it (the last step, with the fewest rows, is
      // small too), else W_hh as stored (see kTransposeMinRows).
      if (has_wt) {
        input_rows(a, 0, b, 0, H);
        wt_gemm(cur, 0, ws, b, L.sum_cols(), true, Hs, p.ld_ws);
        if (L.rest_cols() > 0) wt_gemm(cur, L.sum_cols(), a.rest, b, L.rest_cols(), false, Hs, a.ld_rest);
      } else {
        small_gemm_nt(cur, p.w_hh, ws, b, Hs, L.sum_cols(), true, Ld{Hs, Hs, p.ld_ws});
        if (L.rest_cols() > 0)
          small_gemm_nt(cur, p.w_hh + L.sum_cols() * Hs, a.rest, b, Hs, L.rest_cols(), false,
                        Ld{Hs, Hs, a.ld_rest});
      }
      pointwise(a, cur, nxt, 0, H);
    } else if (!proj) {
      const bool full = !packed.empty() && b == B0;
      rec[0].for_each_part(
          b,
          [&](int part) {
            const int64_t c0 = rec[0].begin(part), c1 = rec[0].end(part);
            if (full) {
              packed_step_product(a, part, c0, c1);
            } else {
              for (int g = 0; g < Cell::kGates; ++g)
                rec[g].compute(part, cur, b, g < Cell::kSumGates ? T(1) : T(0), gate_out(a, g),
                               Hs, gate_ld(a, g));
            }
            pointwise(a, cur, nxt, c0, c1);
          },
          Cell::kGates);
    } else {
      for (int g = 0; g < Cell::kGates; ++g)
        gemm<T>(false, true, b, H, Hs, T(1), cur, Hs, p.w_hh + g * H * Hs, Hs,
                g < Cell::kSumGates ? T(1) : T(0), gate_out(a, g), gate_ld(a, g));
      pointwise(a, cur, nxt, 0, H);
    }
    if (proj) {
      T* o = p.out + a.row0 * p.ld_out;
      gemm<T>(false, true, b, Hs, H, T(1), m, H, p.w_hr, H, T(0), o, p.ld_out);
      for (int64_t r = 0; r < b; ++r) std::copy(o + r * p.ld_out, o + r * p.ld_out + Hs, nxt + r * Hs);
    }
    std::swap(cur, nxt);
  };
  // Step i on rows [r0, r1) (row_blocks): their own carried rows, one
  // small_gemm over all gates, their pointwise step.
  auto row_step = [&](int64_t i, int64_t r0, int64_t r1, const T* cur, T* nxt) {
    const At a = at(i);
    carry_ended(a, i, cur, nxt, 0, Hs, r0, r1);
    const int64_t n = std::min(r1, a.b) - r0;
    if (n <= 0) return;
    input_rows(a, r0, r1, 0, H);
    wt_gemm(cur + r0 * Hs, 0, a.ws + r0 * p.ld_ws, n, L.sum_cols(), true, Hs, p.ld_ws);
    if (L.rest_cols() > 0)
      wt_gemm(cur + r0 * Hs, L.sum_cols(), a.rest + r0 * a.ld_rest, n, L.rest_cols(), false, Hs,
              a.ld_rest);
    pointwise(a, cur, nxt, 0, H, r0, r1);
  };
  // Walk steps [i0, i1) on P threads, each on its rows (row_parts).
  std::vector<int64_t> bounds;
  auto rows_walk = [&](int64_t i0, int64_t i1, int P) {
    T* even = cur;  // the state entering steps i0, i0 + 2, ...
    T* odd = nxt;
    if (bounds.empty()) bounds = row_blocks(sched, P);
    at::parallel_for(0, P, 1, [&](int64_t q0, int64_t q1) {
      for (int64_t q = q0; q < q1; ++q)
        for (int64_t i = i0; i < i1; ++i) {
          const bool e = (i - i0) % 2 == 0;
          row_step(i, bounds[q], bounds[q + 1], e ? even : odd, e ? odd : even);
        }
    });
    if ((i1 - i0) % 2 == 1) std::swap(cur, nxt);
  };
  // Walk steps [i0, i1): with the rows split (row_parts), every chunk of A
  // in one parallel region; else runs of small steps split into the same
  // number of unit parts (within one chunk of A) in one parallel region
  // each, with a barrier between steps (walk_unit_parts), the other steps
  // one by one.
  const int P = has_wt ? row_parts<Cell>(B0, Hs, G, proj, bf16_steps && !lib16) : 1;
  auto walk_steps = [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1;) {
      load_chunk(i);
      if (P > 1) {  // up to the next chunk of A
        const int64_t j = p.ws_steps > 0 ? std::min(i1, (i / p.ws_steps + 1) * p.ws_steps) : i1;
        rows_walk(i, j, P);
        i = j;
        continue;
      }
      const int parts = step_parts(i);
      if (parts == 1) {
        step(i++);
        continue;
      }
      int64_t j = i + 1;
      while (j < i1 && step_parts(j) == parts && !(p.ws_steps > 0 && j % p.ws_steps == 0)) ++j;
      T* even = cur;  // the state entering steps i, i + 2, ...
      T* odd = nxt;
      walk_unit_parts(parts, H, i, j, [&](int64_t k, int64_t c0, int64_t c1) {
        const bool e = (k - i) % 2 == 0;
        part_step(k, e ? even : odd, e ? odd : even, c0, c1);
      });
      if ((j - i) % 2 == 1) std::swap(cur, nxt);
      i = j;
    }
  };
  if (overlap == 0) {
    walk_steps(0, T_);
    return cur;
  }
  // The single-threaded small steps of chunk c run while another thread
  // computes chunk c + 1's input GEMM (overlap_steps).
  auto chunk_gemm = [&](int64_t i0) {
    const auto [row, rows] = step_rows(i0, std::min(T_, i0 + overlap));
    input_gemm(row, rows, row);
  };
  chunk_gemm(0);
  for (int64_t i0 = 0; i0 < T_; i0 += overlap) {
    const int64_t i1 = std::min(T_, i0 + overlap);
    auto walk = [&] { walk_steps(i0, i1); };
    if (i1 == T_)
      walk();
    else
      beside(walk, [&] { chunk_gemm(i1); });
  }
  return cur;
}

// The state entering step t, row r: the output of the step before it in the
// walk (while that step held row r), else hx.
struct PrevState {
  const StepSchedule& sched;
  bool reverse;
  int64_t prev(int64_t t) const { return reverse ? t + 1 : t - 1; }
  // Row of the previous step's rows holding row r, or -1 (row r starts at t).
  int64_t row(int64_t t, int64_t r) const {
    const int64_t q = prev(t);
    if (q < 0 || q >= sched.steps() || r >= sched.batch[q]) return -1;
    return sched.offset[q] + r;
  }
};

// The sequential part of the backward: the gate grads dG of every step
// (ld_dg apart), walking time opposite to the forward. g: (B, Hs) holding
// grad_hn on entry, grad_hx on exit; dc: (B, H) grad_cn -> grad_cx (LSTM).
// gout: grad of the output, rows ld_gout apart. tmp: (B, H) scratch (the
// LSTM in double; null for float). With a
// projection, gh (N, Hs) receives the total grad of every h_t (for dW_hr)
// and dm (B, H) is scratch.
//
// done (optional): every done->steps steps of the walk, the chunk of steps
// before, whose dG is complete, goes to done->run on a second thread while
// this one walks on (overlap_steps). Returns how many walk steps were handed
// to it (the chunks before the last; 0 without done): the caller runs the
// rest.
struct StepsDone {
  int64_t steps = 0;
  std::function<void(int64_t, int64_t)> run;  // walk steps [i0, i1)
};
template <typename T, typename Cell>
int64_t backward_recurrence(const Cell& cell, const RnnShape& s, const StepSchedule& sched,
                            const LayerPtrs<T>& p, const T* gout, int64_t ld_gout, T* g, T* dc,
                            T* dg, int64_t ld_dg, T* tmp, T* gh, T* dm, const T* zeros,
                            bool reverse, const StepsDone* done = nullptr) {
  const CellLayout<Cell> L{s.hidden};
  const int64_t H = s.hidden, Hs = s.state, G = L.gates();
  const bool proj = p.w_hr != nullptr;
  const int64_t T_ = sched.steps();
  const int64_t B0 = T_ ? sched.batch[0] : 0;
  const PrevState prev{sched, reverse};
  // dh_{t-1} = dG[:, summed gates] W_hh[summed gates] + dR[:, other gates] W_hh[other gates],
  // split by units like the forward.
  // As the forward: with W_hh in bfloat16 pairs every step without a
  // projection takes the small path (small_gemm_bf16). wh_gemm: the product
  // of X (rows x k) and W_hh's rows [krow, krow + k), columns [col, col + n).
  const bool bf16_steps = p.w_hh_bf16 != nullptr && !proj;
  // The large iterations through the library's bfloat16 GEMM instead
  // (LayerPtrs::w_hh16, lib_iteration below).
  const bool lib16 = p.w_hh16 != nullptr && !proj;
  auto small = [&](int64_t b) { return (bf16_steps && !lib16) || small_step<Cell>(b, Hs, G); };
  auto wh_gemm = [&](const T* X, int64_t krow, int64_t col, T* Y, int64_t rows, int64_t k,
                     int64_t n, bool accumulate, int64_t ldx, int64_t ldy) {
    if constexpr (std::is_same_v<T, float>)
      if (bf16_steps)  // krow is even: 0 or the GRU's 2H
        return small_gemm_bf16(X, p.w_hh_bf16 + krow / 2 * Hs + col, Y, rows, k, n, accumulate,
                               Ld{ldx, Hs, ldy});
    small_gemm(X, p.w_hh + krow * Hs + col, Y, rows, k, n, accumulate, Ld{ldx, Hs, ldy});
  };
  std::vector<RecurrentGemm<T>> rec;
  PackedParts packed;
  if (!proj && !small(B0) && !lib16) {
    const int parts = recurrent_parts(B0 * Hs * G, H);
    const int blocks = L.rest_cols() > 0 ? 2 : 1;
    const int64_t grad_bytes = s.rows * ld_dg * int64_t(sizeof(T));
    const int64_t pack =
        p.pack ? packed_rows<T, Cell>(T_, B0, Hs, L.sum_cols(), blocks, parts, grad_bytes / 2)
               : 0;
    // As the forward (forward_layer's `packed`): where oneDNN runs them, the
    // iterations of B0 rows multiply by packed weights, part q's being
    // W_hh's columns of its units, transposed ((its units) x G*H), the
    // product copied into g. Only where dG_t's rows are contiguous (one
    // block: the Elman RNN's and the LSTM's; the operator would copy the
    // GRU's two strided blocks) and dh_{t-1} has no direct term. The
    // plain path's compact slices are then made only if a smaller
    // iteration reaches oneDNN's size (max_rows).
    bool pack_full = false;
    if constexpr (std::is_same_v<T, float>)
      pack_full = L.rest_cols() == 0 && !Cell::kDirectGrad && ld_dg == G && p.pack &&
                  use_packed_weights(sched.full_steps(), B0 * G * ((Hs + parts - 1) / parts),
                                     kPackMinSteps);
    int64_t max_rows = B0;
    if (pack_full) {
      max_rows = 1;  // too few for oneDNN: no compact slices
      for (int64_t b : sched.batch)
        if (b < B0) max_rows = std::max(max_rows, b);
    }
    rec.reserve(2);
    rec.emplace_back(p.w_hh, /*trans=*/false, pack, Hs, L.sum_cols(), parts, max_rows);
    if (L.rest_cols() > 0)
      rec.emplace_back(p.w_hh + L.sum_cols() * Hs, /*trans=*/false, pack, Hs, L.rest_cols(), parts,
                       max_rows);
    if constexpr (std::is_same_v<T, float>) {
      if (pack_full) {
        auto W = at::from_blob(const_cast<float*>(p.w_hh), {G, Hs},
                               at::TensorOptions().dtype(at::kFloat));
        for (int q = 0; q < rec[0].parts(); ++q) {
          const int64_t c0 = rec[0].begin(q), cols = rec[0].end(q) - c0;
          packed.add(W.narrow(1, c0, cols).t().contiguous(), B0);
        }
      }
    }
  }
  const T beta_direct = Cell::kDirectGrad ? T(1) : T(0);
  auto step_at = [&](int64_t i) { return reverse ? i : T_ - 1 - i; };
  // dG of step t over units [c0, c1); g (or dm) holds the grad of h_t.
  // (Rows [r0, r1) only: the row split, row_blocks.)
  auto step_grad = [&](int64_t t, int64_t c0, int64_t c1, int64_t r0 = 0,
                       int64_t r1 = INT64_MAX) {
    for (int64_t r = r0; r < std::min(r1, sched.batch[t]); ++r) {
      const int64_t row = sched.offset[t] + r;
      const int64_t pr = prev.row(t, r);
      CellRow<T> cr;
      cr.ws = p.ws + row * p.ld_ws;
      cr.rest = cr.ws + L.rest_at();
      cr.h_prev = pr >= 0 ? p.out + pr * p.ld_out : p.hx + r * Hs;
      if (Cell::kHasCell) {
        cr.c = dc + r * H;
        cr.c_prev = pr >= 0 ? p.ws + pr * p.ld_ws + L.gates() : p.cx + r * H;
      }
      cr.gout = proj ? zeros : gout + row * ld_gout;
      cr.dh = proj ? dm + r * H : g + r * Hs;
      cr.dg = dg + row * ld_dg;
      cr.tmp = tmp != nullptr ? tmp + r * H : nullptr;
      cell.backward(cr, H, c0, c1);
    }
  };
  // With a projection, the grad of m_t = o tanh(c_t): dm = (gout_t + g) W_hr.
  auto project_grad = [&](int64_t t) {
    const int64_t b = sched.batch[t];
    T* ght = gh + sched.offset[t] * Hs;
    for (int64_t r = 0; r < b; ++r) {
      const T* go = gout + (sched.offset[t] + r) * ld_gout;
      for (int64_t j = 0; j < Hs; ++j) ght[r * Hs + j] = go[j] + g[r * Hs + j];
    }
    gemm<T>(false, false, b, H, Hs, T(1), ght, Hs, p.w_hr, H, T(0), dm, H);
  };
  if (T_ > 0) {
    if (proj) project_grad(step_at(0));
    step_grad(step_at(0), 0, H);
  }
  // Each iteration: g[:b] = [g z +] dG_t W_hh (the grad of the state
  // entering step t), then the next step's dG, which needs only the same
  // units of g, so each part does both while they are in cache.
  auto iteration_parts = [&](int64_t i) {
    const int64_t b = sched.batch[step_at(i)];
    if (proj || !small(b)) return 1;
    if (!small_step<Cell>(b, Hs, G)) return recurrent_parts(b * Hs * G, H);  // bf16_steps
    return small_parts<Cell>(b * Hs * G, H);
  };
  // Units [c0, c1) of a small iteration split across threads.
  auto part_iteration = [&](int64_t i, int64_t c0, int64_t c1) {
    const int64_t t = step_at(i);
    const int64_t b = sched.batch[t];
    const T* d = dg + sched.offset[t] * ld_dg;
    wh_gemm(d, 0, c0, g + c0, b, L.sum_cols(), c1 - c0, Cell::kDirectGrad, ld_dg, Hs);
    if (L.rest_cols() > 0)
      wh_gemm(d + L.rest_at(), L.sum_cols(), c0, g + c0, b, L.rest_cols(), c1 - c0, true, ld_dg,
              Hs);
    if (i + 1 < T_) step_grad(step_at(i + 1), c0, c1);
  };
  // Rows [r0, r1) of step t's gate grads, units [c0, c1) of each gate, rounded
  // into x16 (rows of G*H in W_hh's row order: the summed gates' dG, then
  // the other gates' dR; lib_iteration).
  auto round_dg = [&](int64_t t, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* d = dg + (sched.offset[t] + r) * ld_dg;
      for (int gi = 0; gi < Cell::kGates; ++gi) {
        const int64_t col =
            gi < Cell::kSumGates ? gi * H : L.rest_at() + (gi - Cell::kSumGates) * H;
        if constexpr (std::is_same_v<T, float>)
          round_to_bf16(d + col + c0, c1 - c0, p.x16 + r * G + gi * H + c0);
      }
    }
  };
  // A large iteration through the library's bfloat16 GEMM (lib16): dG_t in
  // bfloat16 (x16; the iteration before wrote it where it was such an
  // iteration too), x16 W_hh in one call (y16), then on each unit part:
  // g's units [g z +] y16, the next step's dG, rounded into x16.
  int64_t x16_iter = -1;  // the iteration whose dG x16 holds
  auto lib_iteration = [&](int64_t i) {
    if constexpr (std::is_same_v<T, float>) {
      const int64_t t = step_at(i), b = sched.batch[t];
      const bool has_next = i + 1 < T_;
      const int64_t t_next = has_next ? step_at(i + 1) : 0;
      if (x16_iter != i)
        at::parallel_for(0, b, 16, [&](int64_t r0, int64_t r1) { round_dg(t, r0, r1, 0, H); });
      const at::Tensor y = lib_product(p, p.x16, b, G, Hs, /*forward=*/false);
      const uint16_t* y16 = y.defined() ? bf16_bits_of(y) : p.y16;
      for_unit_slices(recurrent_parts(b * Hs * G, Hs), Hs, [&](int64_t c0, int64_t c1) {
        for (int64_t r = 0; r < b; ++r)
          widen_bf16(y16 + r * Hs + c0, c1 - c0, g + r * Hs + c0, Cell::kDirectGrad);
        if (has_next) {
          step_grad(t_next, c0, c1);
          round_dg(t_next, 0, sched.batch[t_next], c0, c1);
        }
      });
      x16_iter = has_next ? i + 1 : -1;
    }
  };
  // An iteration that is not split into unit parts.
  auto iteration = [&](int64_t i) {
    const int64_t t = step_at(i);
    const int64_t b = sched.batch[t];
    const T* d = dg + sched.offset[t] * ld_dg;
    const bool has_next = i + 1 < T_;
    const int64_t t_next = has_next ? step_at(i + 1) : 0;
    if (lib16 && !small(b)) return lib_iteration(i);
    if (small(b) || proj) {
      if (small(b)) {
        wh_gemm(d, 0, 0, g, b, L.sum_cols(), Hs, Cell::kDirectGrad, ld_dg, Hs);
        if (L.rest_cols() > 0)
          wh_gemm(d + L.rest_at(), L.sum_cols(), 0, g, b, L.rest_cols(), Hs, true, ld_dg, Hs);
      } else {
        gemm<T>(false, false, b, Hs, L.sum_cols(), T(1), d, ld_dg, p.w_hh, Hs, beta_direct, g, Hs);
        if (L.rest_cols() > 0)
          gemm<T>(false, false, b, Hs, L.rest_cols(), T(1), d + L.rest_at(), ld_dg,
                  p.w_hh + L.sum_cols() * Hs, Hs, T(1), g, Hs);
      }
      if (has_next) {
        if (proj) project_grad(t_next);
        step_grad(t_next, 0, H);
      }
      return;
    }
    const bool full = !packed.empty() && b == B0;
    rec[0].for_each_part(
        b,
        [&](int part) {
          const int64_t c0 = rec[0].begin(part), c1 = rec[0].end(part);
          if (full) {
            if constexpr (std::is_same_v<T, float>) {
              const at::Tensor y = packed.product(part, d, b, G, ld_dg);
              const float* yp = y.data_ptr<float>();
              for (int64_t r = 0; r < b; ++r)
                std::copy(yp + r * (c1 - c0), yp + (r + 1) * (c1 - c0), g + r * Hs + c0);
            }
          } else {
            rec[0].compute(part, d, b, beta_direct, g, ld_dg, Hs);
            if (rec.size() > 1) rec[1].compute(part, d + L.rest_at(), b, T(1), g, ld_dg, Hs);
          }
          if (has_next) step_grad(t_next, c0, c1);
        },
        static_cast<int>(rec.size()));
  };
  // Iterations [i0, i1): runs split into the same number of unit parts in
  // one parallel region each, with a barrier between iterations (the next
  // one's GEMM reads every unit's dG: walk_unit_parts).
  // With the batch rows split among P threads (row_parts, row_blocks, as
  // the forward): each walks every iteration on its block of rows.
  const int P = row_parts<Cell>(B0, Hs, G, proj, bf16_steps && !lib16);
  const std::vector<int64_t> bounds = P > 1 ? row_blocks(sched, P) : std::vector<int64_t>();
  auto row_iteration = [&](int64_t i, int64_t r0, int64_t r1) {
    const int64_t t = step_at(i);
    const int64_t n = std::min(r1, sched.batch[t]) - r0;
    if (n > 0) {
      const T* d = dg + (sched.offset[t] + r0) * ld_dg;
      wh_gemm(d, 0, 0, g + r0 * Hs, n, L.sum_cols(), Hs, Cell::kDirectGrad, ld_dg, Hs);
      if (L.rest_cols() > 0)
        wh_gemm(d + L.rest_at(), L.sum_cols(), 0, g + r0 * Hs, n, L.rest_cols(), Hs, true, ld_dg,
                Hs);
    }
    if (i + 1 < T_) step_grad(step_at(i + 1), 0, H, r0, r1);
  };
  auto walk_iterations = [&](int64_t i0, int64_t i1) {
    if (P > 1) {
      at::parallel_for(0, P, 1, [&](int64_t q0, int64_t q1) {
        for (int64_t q = q0; q < q1; ++q)
          for (int64_t i = i0; i < i1; ++i) row_iteration(i, bounds[q], bounds[q + 1]);
      });
      return;
    }
    for (int64_t i = i0; i < i1;) {
      const int parts = iteration_parts(i);
      if (parts == 1) {
        iteration(i++);
        continue;
      }
      int64_t j = i + 1;
      while (j < i1 && iteration_parts(j) == parts) ++j;
      walk_unit_parts(parts, Hs, i, j, part_iteration);
      i = j;
    }
  };
  const int64_t cs = done != nullptr ? done->steps : 0;
  if (cs <= 0 || cs >= T_) {
    walk_iterations(0, T_);
    return 0;
  }
  int64_t handed = 0;
  for (int64_t i0 = 0; i0 < T_; i0 += cs) {
    const int64_t i1 = std::min(T_, i0 + cs);
    auto walk = [&] { walk_iterations(i0, i1); };
    if (i0 == 0) {
      walk();
      continue;
    }
    // dG of walk steps [0, i0] is complete: the chunk before goes to the
    // other thread while this one walks [i0, i1).
    beside(walk, [&] { done->run(i0 - cs, i0); });
    handed = i0;
  }
  return handed;
}

// dW (width x Hs) = sum over steps of d_t^T @ hprev_t, d_t: `width` columns
// of the gate grads. The state entering step t is, row for row, the output
// of the step before it in the walk (for the rows both steps hold) and hx
// (for rows whose sequence starts at t), so no copy of the states is made:
// consecutive steps whose grad rows and state rows both continue in memory
// are one GEMM. That is one GEMM over the output for padded input, one per
// run of equal batch sizes for packed input, plus the rows that start from
// hx.
template <typename T>
void recurrent_weight_grad(const RnnShape& s, const StepSchedule& sched, const T* hx,
                           const T* out, int64_t ld_out, const T* d_all, int64_t ld_d,
                           int64_t width, T* dw, bool reverse, bool accumulate) {
  const int64_t Hs = s.state, T_ = sched.steps();
  if (!accumulate) std::fill(dw, dw + width * Hs, T(0));
  auto add_run = [&](const T* d, const T* h, int64_t ld_h, int64_t rows) {
    gemm<T>(true, false, width, Hs, rows, T(1), d, ld_d, h, ld_h, T(1), dw, Hs);
  };
  const T* run_d = nullptr;
  const T* run_h = nullptr;
  int64_t run_rows = 0;
  for (int64_t t = 0; t < T_; ++t) {
    const int64_t b = sched.batch[t];
    const T* d = d_all + sched.offset[t] * ld_d;
    const int64_t prev = reverse ? t + 1 : t - 1;  // the step whose output enters t
    const bool has_prev = prev >= 0 && prev < T_;
    const int64_t m = has_prev ? std::min(b, sched.batch[prev]) : 0;
    if (m > 0) {
      const T* h = out + sched.offset[prev] * ld_out;
      if (run_rows > 0 && d == run_d + run_rows * ld_d && h == run_h + run_rows * ld_out) {
        run_rows += m;
      } else {
        if (run_rows > 0) add_run(run_d, run_h, ld_out, run_rows);
        run_d = d, run_h = h, run_rows = m;
      }
    }
    if (b > m) add_run(d + m * ld_d, hx + m * Hs, Hs, b - m);
  }
  if (run_rows > 0) add_run(run_d, run_h, ld_out, run_rows);
}

// Column sums of `cols` columns of rows ld apart (added to sum's values
// when accumulate).
template <typename T>
void column_sums(const T* d, int64_t ld, int64_t rows, int64_t cols, T* sum, bool accumulate) {
  if (!accumulate) std::fill(sum, sum + cols, T(0));
  for (int64_t r = 0; r < rows; ++r) {
    const T* row = d + r * ld;
    for (int64_t j = 0; j < cols; ++j) sum[j] += row[j];
  }
}

// The input grads of rows [row, row + rows): dX's rows = dG's rows @ W_ih,
// dW_ih (+)= dG's rows^T @ X's rows (dx, dw_ih null: not asked for).
template <typename T, typename Cell>
void input_grads(const RnnShape& s, const LayerPtrs<T>& p, const T* dg, int64_t ld_dg, T* dx,
                 T* dw_ih, int64_t row, int64_t rows, bool accumulate) {
  const int64_t G = CellLayout<Cell>{s.hidden}.gates(), I = s.input;
  const T* d = dg + row * ld_dg;
  if (dx != nullptr) gemm<T>(false, false, rows, I, G, T(1), d, ld_dg, p.w_ih, I, T(0), dx + row * I, I);
  if (dw_ih != nullptr)
    gemm<T>(true, false, G, I, rows, T(1), d, ld_dg, p.x + row * I, I, accumulate ? T(1) : T(0),
            dw_ih, I);
}

// Whether the backward's weight grad GEMMs after the walk run as two
// single-threaded halves side by side (beside): dW_hh and the bias grads on
// one thread, dX and dW_ih on the other, instead of each GEMM split across
// both threads. On two threads, where the halves' multiply-adds (per row of
// dG: Hs for dW_hh, `input_work` = 2I for dX and dW_ih) are within 1.5x of
// each other: a GEMM of a few hundred rows gains only 1.4-1.8x from a second
// thread. Measured on an Intel Xeon (AVX-512), LSTM (16,100,64,128): torch
// matmul on 2 threads, dX 0.50 ms, dW_ih 0.51, dW_hh 0.79; on 1 thread 0.68,
// 0.80, 1.44. In the layer, side by side: dW_hh 1.7 ms, dX and dW_ih 1.9,
// the bias grads 0.16 (on the dW_hh side, which is shorter); the GEMM phase
// 2.4-2.6 -> about 1.9-2.2 ms; the call, alternating both ways in one
// process, 6.30 -> 5.71 ms. Large GEMMs gain nearly 2x from a second
// thread, and there the halves' imbalance costs more: GRU (64,100,512,1024)
// fwd+bwd 780 -> 808 ms. So only up to kSideBySideMaxWork multiply-adds for
// dW_hh (1.0e8 above, 2.0e10 there). (With more threads each half would
// leave the others idle.)
constexpr int64_t kSideBySideMaxWork = int64_t(1) << 28;
inline bool side_by_side(int64_t rows, int64_t gates, int64_t input_work, int64_t Hs) {
  if (at::get_num_threads() != 2 || at::in_parallel_region() || input_work == 0 ||
      rows * gates * Hs > kSideBySideMaxWork)
    return false;
  return 2 * std::max(input_work, Hs) <= 3 * std::min(input_work, Hs);
}

// The parallel part of the backward, from every step's gate grads: one GEMM
// each for dX and dW_ih, recurrent_weight_grad per block of dR, and
// reductions for the bias grads (db_hh differs from db_ih only in the gates
// whose R is kept apart: the GRU's n). dx null: not asked for; dw_ih null:
// weight grads not asked for; db_hh null: the cell's two bias grads are equal.
// accumulate: the weight and bias grads are added to what their buffers hold
// (a half-precision call's sum over its chunks of steps, half_layer.h).
// input_done: dX and dW_ih were made during the walk (StepsDone).
template <typename T, typename Cell>
void backward_gemms(const RnnShape& s, const StepSchedule& sched, const LayerPtrs<T>& p,
                    const T* dg, int64_t ld_dg, T* dx, T* dw_ih, T* dw_hh, T* db_ih, T* db_hh,
                    bool reverse, bool accumulate, bool input_done = false) {
  const CellLayout<Cell> L{s.hidden};
  const int64_t G = L.gates(), N = s.rows, Hs = s.state;
  auto input = [&] {
    if (!input_done) input_grads<T, Cell>(s, p, dg, ld_dg, dx, dw_ih, 0, N, accumulate);
  };
  if (dw_ih == nullptr) return input();
  auto recurrent = [&] {
    recurrent_weight_grad(s, sched, p.hx, p.out, p.ld_out, dg, ld_dg, L.sum_cols(), dw_hh, reverse,
                          accumulate);
    if (L.rest_cols() > 0)
      recurrent_weight_grad(s, sched, p.hx, p.out, p.ld_out, dg + L.rest_at(), ld_dg,
                            L.rest_cols(), dw_hh + L.sum_cols() * Hs, reverse, accumulate);
    column_sums(dg, ld_dg, N, G, db_ih, accumulate);
    if (db_hh != nullptr) {
      std::copy(db_ih, db_ih + L.sum_cols(), db_hh);  // equal in the summed gates
      column_sums(dg + L.rest_at(), ld_dg, N, L.rest_cols(), db_hh + L.sum_cols(), accumulate);
    }
  };
  if (side_by_side(N, G, input_done ? 0 : 2 * s.input, Hs)) {
    beside(
        [&] {
          SerialBlasGuard serial(true);
          recurrent();
        },
        input);
  } else {
    input();
    recurrent();
  }
}

}  // namespace rnnattn::cpu

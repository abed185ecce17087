// bfloat16 / float16 layers on the CPU: the float32 engine (layer.h) run
// over chunks of steps, so that what the call holds in float32 beyond the
// weights is one chunk's worth, not the sequence's.
//
// A layer's own results (output, reserve, grads) are allocated once in the
// half dtype; each chunk's input rows (and in the backward its grad_output,
// output and reserve rows) are converted to float32, the float32 layer op
// runs on them with the state carried in float32 from the chunk before, and
// its results are converted into their rows. Converting whole tensors
// instead made the call's peak 1.2-3.3x torch's own module in the same dtype
// (benchmarks/OPTIMISATIONS.md), the opposite of what half precision is for.
//
// The results are those of the whole-sequence float32 call on the converted
// inputs: the forward carries the float32 state across chunks; the backward
// reads the state entering a chunk from the kept output (as the whole call
// does: the backward only has the output in the half dtype) and sums the
// weight grads of the chunks in float32.
//
// With bfloat16 steps (half.h bf16_steps) the steps read W_hh^T (forward)
// and W_hh (backward) as bfloat16 pairs made once per call (and, where they
// are small, W_ih^T's: each forward step then makes its own A), and where
// a chunk's GEMMs reach oneDNN's size they run after its walk in bfloat16
// on its gate grads rounded to bfloat16 (float32 sums inside; the chunks'
// weight grads summed in float32), or, for the Elman RNN and the LSTM over
// a padded batch, once over all the rows after the walk
// (whole_sequence_gemms), as every cell's do in a padded call of few rows
// (in plain loops there): results within bfloat16 rounding of the float32
// call's. Those walks write their gate grads over the chunk's float32
// reserve rows.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstring>
#include <utility>
#include <vector>

#include "../rnn_common.h"
#include "bf16_bits.h"
#include "half.h"
#include "half_product.h"
#include "layer.h"
#include "packed_weights.h"
#include "prefault.h"

namespace rnnattn::cpu {

// A chunk is 1/kHalfChunks of the steps, so its float32 copies are ~1/32
// of the sequence's. Where that is only a few rows, each chunk also holds
// at least kHalfChunkWork multiply-adds of the forward, so that its fixed
// cost (a backward chunk's is about 10 us at a few rows to 0.1 ms at
// hundreds: conversions, allocations, the weight grads' GEMM calls, a
// parallel region) stays about a tenth of its work, but only as far as its
// float32 copies stay within 3/4 of the bytes the call keeps in the half
// dtype anyway (its output and reserve): a chunk's copies must not dwarf
// what half precision saves; and never fewer than kHalfChunkMinRows rows.
// Measured on an AMD EPYC (Zen 4), 2 threads, LSTM (16,100,64,128)
// bfloat16 against torch's bfloat16 module, alternating in one process:
// chunks of 128 / 256 / 400 / 512 rows, fwd 1.07x / 1.12x / 1.16x / 1.17x,
// fwd+bwd 0.94x / 1.09x / 1.21x / 1.18x. The GRU's and the Elman RNN's
// peaks at 512 rows went over their torch modules' (fwd+bwd 5.29 MiB
// against 4.30, 1.66 against 1.32); the 3/4 bound keeps them under.
constexpr int64_t kHalfChunks = 32;
constexpr int64_t kHalfChunkWork = int64_t(1) << 25;
// A chunk may be as small as this where the 3/4 bound asks for it. The
// forward's chunks cost about 7 us each (allocations, conversions, a few
// ATen calls; the weights' bfloat16 pairs are made once a call), the
// backward's more (each runs the float32 op: the gate grads, the weight
// grads' GEMMs, dX), but a backward chunk's float32 rows (input, grad
// output, output, reserve, gate grads, dX) are the most such a call holds
// beside what it keeps. At (1,100,32,64) bfloat16 the bound gives 10-25
// rows; with a floor of 128 rows the forward's peaks were over torch's
// modules' (GRU 0.088 MiB against 0.071, RNN 0.062 against 0.046) and the
// fwd+bwd ones too (GRU 0.455 against 0.213, RNN 0.156 against 0.099; LSTM
// 0.532, nn.LSTM 0.593). With 32: forward GRU 0.063, RNN 0.037, LSTM 0.076;
// fwd+bwd GRU 0.273, RNN 0.090, LSTM 0.333, for 5-12% of a fwd+bwd call
// (16 rows: GRU 0.233, RNN 0.075, for 20-40%). Measured on an AMD EPYC
// (Zen 4), 2 threads (benchmarks/OPTIMISATIONS.md). Only calls of few rows
// are cut this fine: from about 700 rows on (the GRU; fewer for the
// others) the bound asks for 128 rows or more.
constexpr int64_t kHalfChunkMinRows = 32;

// bfloat16 steps make their own A (recurrence.h step_input), re-reading
// W_ih^T's pairs every step where a library GEMM over a chunk of steps
// reads W_ih once: that pays while the pairs are at most this many bytes.
// Measured on an AMD EPYC (Zen 4, 1 MiB of L2 a core), 2 threads,
// (64,100,512,1024) bfloat16 fwd against torch's module, alternating in one
// process, step input against the library GEMM: RNN (1 MiB of pairs)
// 1.30x / 1.20x, GRU (3 MiB) 0.88x / 0.96x, LSTM (4 MiB) 0.65x / 0.75x;
// at (16,100,64,128) (48-64 KiB) LSTM 1.10x / 0.86x, GRU 5.1x / 4.1x.
constexpr int64_t kStepInputMaxBytes = int64_t(1) << 20;

// Where a chunk holds no float32 rows, only its A in bfloat16
// (forward_layer_half's lean chunks), its rows go up to this many, as far
// as the 3/4 bound lets A: a chunk's fixed cost is then a library GEMM for
// its A, the op's set-up and a parallel region, and the input GEMM's rate
// levels off here. bfloat16 A = X W_ih^T at (6400 x 512) x (512 x 4096)
// in GEMMs of 256 / 512 / 1024 / 2048 rows: 19.7 / 14.7 / 13.4 / 13.1 ms,
// 2 threads of a 2-core Xeon (AMX). Larger chunks made A's buffer the
// bulk of what a call allocates and frees, and that came back from glibc
// as fresh pages in some processes and not others (the GRU at
// (64,100,512,1024), 1600 rows: 57 or 70 ms a forward, 0 or 7500 page
// faults a call, by process).
constexpr int64_t kLeanChunkRows = 1024;

// A chunk's least rows (above): work, held and kept are per row of the
// sequence (n rows): multiply-adds, bytes the chunk holds (its float32
// copies, or a lean chunk's A: forward_layer_half), bytes the call keeps
// in its dtype. A lean chunk asks for kLeanChunkRows rows where its work
// would ask for fewer, under the same bound on bytes.
inline int64_t half_chunk_min_rows(int64_t n, int64_t work, int64_t held, int64_t kept,
                                   bool lean = false) {
  int64_t by_work = kHalfChunkWork / std::max<int64_t>(work, 1);
  if (lean) by_work = std::max(by_work, kLeanChunkRows);
  const int64_t by_bytes = 3 * n * kept / (4 * std::max<int64_t>(held, 1));
  return std::max(kHalfChunkMinRows, std::min(by_work, by_bytes));
}

// Steps [t_lo, t_hi] of the schedule: rows [row0, row0 + rows), the walk's
// step before them (t_prev, -1 at the walk's start) and their own schedule.
struct StepChunk {
  int64_t t_lo, t_hi, t_prev, row0, rows;
  StepSchedule sched;
};

// The chunks of a schedule in walk order (time descending when reverse):
// as many as chunks of min_rows rows (at most kHalfChunks) make, their
// steps dealt evenly, so that the largest chunk, whose float32 rows set the
// call's peak, is no larger than it must be (T = 100 at B = 1: 4 chunks of
// 25 steps, not 32, 32, 32 and 4).
inline std::vector<StepChunk> step_chunks(const StepSchedule& sched, int64_t batch,
                                          bool reverse, int64_t min_rows) {
  const int64_t T = sched.steps();
  const int64_t min_steps = (min_rows + batch - 1) / std::max<int64_t>(batch, 1);
  const int64_t K0 = std::max<int64_t>({1, min_steps, (T + kHalfChunks - 1) / kHalfChunks});
  const int64_t n_chunks = (T + K0 - 1) / K0;
  const int64_t K = n_chunks > 0 ? (T + n_chunks - 1) / n_chunks : 1;
  std::vector<StepChunk> chunks;
  for (int64_t i0 = 0; i0 < T; i0 += K) {
    const int64_t i1 = std::min(T, i0 + K);
    StepChunk c;
    c.t_lo = reverse ? T - i1 : i0;
    c.t_hi = reverse ? T - 1 - i0 : i1 - 1;
    c.t_prev = i0 == 0 ? -1 : (reverse ? T - i0 : i0 - 1);
    c.row0 = sched.offset[c.t_lo];
    c.rows = sched.offset[c.t_hi] + sched.batch[c.t_hi] - c.row0;
    for (int64_t t = c.t_lo; t <= c.t_hi; ++t) {
      c.sched.batch.push_back(sched.batch[t]);
      c.sched.offset.push_back(sched.offset[t] - c.row0);
    }
    chunks.push_back(std::move(c));
  }
  return chunks;
}

// The state entering each row of a chunk's steps into hp ((ch.rows, Hs)
// columns of a tensor of out's dtype; rows may be further apart): the
// output row of the walk's step before (PrevState), or hx's row where the
// row starts at its step.
inline void states_entering(const StepSchedule& sched, bool reverse, const StepChunk& ch,
                            const at::Tensor& out, const at::Tensor& hx, at::Tensor hp) {
  const int64_t Hs = out.size(1), es = out.element_size();
  TORCH_CHECK(out.stride(1) == 1 && hx.is_contiguous() && hp.stride(1) == 1,
              "rnnattn: states_entering: strided rows");
  const PrevState prev{sched, reverse};
  const char* src_out = static_cast<const char*>(out.data_ptr());
  const char* src_h0 = static_cast<const char*>(hx.data_ptr());
  char* dst = static_cast<char*>(hp.data_ptr());
  for (int64_t t = ch.t_lo; t <= ch.t_hi; ++t)
    for (int64_t r = 0; r < sched.batch[t]; ++r) {
      const int64_t pr = prev.row(t, r);
      const char* src = pr >= 0 ? src_out + pr * out.stride(0) * es : src_h0 + r * Hs * es;
      std::memcpy(dst + (sched.offset[t] + r - ch.row0) * hp.stride(0) * es, src, Hs * es);
    }
}

// Small conversions between a chunk's float32 rows and the call's half
// dtype run in plain loops: an ATen conversion (an allocation, a
// TensorIterator) costs microseconds, as much as a few steps of a small
// layer, and a call of few rows runs several chunks of a few dozen rows
// each (forward, (1,100,32,64) bfloat16 on an AMD EPYC (Zen 4), best of 5
// rounds of 50 calls, ATen -> plain loops: RNN 54.5 -> 47.6 us, GRU 96.5
// -> 91.4, LSTM 123 -> 115). Larger ones go on all threads
// (recurrence.h copy_to_float, copy_from_float).
constexpr int64_t kPlainConvertMax = int64_t(1) << 14;

// dst (float32, n rows ld apart) = rows [row0, row0 + n), columns [col0,
// col0 + w) of src (2-D, a half dtype, any strides). Pointers, not ATen
// views: a narrow costs about a microsecond too.
inline void to_float_rows(const at::Tensor& src, int64_t row0, int64_t col0, int64_t n,
                          int64_t w, float* dst, int64_t ld) {
  const int64_t s0 = src.stride(0), s1 = src.stride(1), at0 = row0 * s0 + col0 * s1;
  if (src.scalar_type() == at::kBFloat16 && s1 == 1) {
    const uint16_t* q = reinterpret_cast<const uint16_t*>(src.data_ptr<at::BFloat16>()) + at0;
    for (int64_t i = 0; i < n; ++i) widen_bf16(q + i * s0, w, dst + i * ld, /*accumulate=*/false);
    return;
  }
  AT_DISPATCH_REDUCED_FLOATING_TYPES(src.scalar_type(), "rnnattn::to_float_rows", [&] {
    const scalar_t* q = src.data_ptr<scalar_t>() + at0;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < w; ++j) dst[i * ld + j] = static_cast<float>(q[i * s0 + j * s1]);
  });
}

// Rows [row0, row0 + n) of src (2-D, a half dtype) in float32. Small ones:
// the first n rows of buf, which the first call makes for `cap` rows and
// the chunks after reuse. Large ones: a new tensor, freed when the op has
// read it (a buffer kept through a chunk's bfloat16 GEMMs after its walk
// raised the GRU's fwd+bwd peak at (16,100,64,128) from 4.07 to 4.70 MiB).
inline at::Tensor float_rows(const at::Tensor& src, int64_t row0, int64_t n, int64_t cap,
                             at::Tensor& buf) {
  const int64_t w = src.size(1);
  if (n * w > kPlainConvertMax) {
    at::Tensor f = at::empty({n, w}, src.options().dtype(at::kFloat));
    copy_to_float(src.narrow(0, row0, n), f);
    return f;
  }
  if (!buf.defined()) buf = at::empty({cap, w}, src.options().dtype(at::kFloat));
  to_float_rows(src, row0, 0, n, w, buf.data_ptr<float>(), w);
  return n == cap ? buf : buf.narrow(0, 0, n);
}

// Rows [row0, row0 + src's rows) of dst (2-D, a half dtype) = src
// (float32, as many columns, rows any distance apart).
inline void from_float_rows(const at::Tensor& src, const at::Tensor& dst, int64_t row0) {
  const int64_t n = src.numel(), w = dst.size(1), rows = src.size(0);
  if (n > kPlainConvertMax || src.stride(1) != 1 || !dst.is_contiguous())
    return copy_from_float(src, dst.narrow(0, row0, rows));
  const float* q = src.data_ptr<float>();
  const int64_t ld = src.stride(0);
  if (dst.scalar_type() == at::kBFloat16) {
    uint16_t* d = reinterpret_cast<uint16_t*>(dst.data_ptr<at::BFloat16>()) + row0 * w;
    if (ld == w) return round_to_bf16(q, n, d);
    for (int64_t r = 0; r < rows; ++r) round_to_bf16(q + r * ld, w, d + r * w);
    return;
  }
  AT_DISPATCH_REDUCED_FLOATING_TYPES(dst.scalar_type(), "rnnattn::from_float_rows", [&] {
    scalar_t* d = dst.data_ptr<scalar_t>() + row0 * w;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < w; ++j) d[r * w + j] = static_cast<scalar_t>(q[r * ld + j]);
  });
}

// dst (float32, contiguous) += the column sums of src (float32 rows, unit
// column stride), in a plain loop where small (as the conversions above).
inline void add_column_sums(const at::Tensor& dst, const at::Tensor& src) {
  if (src.numel() > kPlainConvertMax || src.stride(1) != 1) {
    dst.add_(src.sum(0));
    return;
  }
  float* d = dst.data_ptr<float>();
  const float* q = src.data_ptr<float>();
  const int64_t w = src.size(1), ld = src.stride(0);
  for (int64_t r = 0; r < src.size(0); ++r)
    for (int64_t j = 0; j < w; ++j) d[j] += q[r * ld + j];
}

// The state entering a chunk (float32, in buf, made once a call like
// init): init's rows (hx or cx, float32), with its first b rows from rows
// [row, row + b), columns [col0, col0 + init's width) of src (the call's
// kept output or reserve, in its half dtype): the rows the walk's step
// before the chunk held.
inline at::Tensor state_rows(const at::Tensor& init, const at::Tensor& src, int64_t row,
                             int64_t b, int64_t col0, at::Tensor& buf) {
  const at::Tensor h = init.contiguous();
  if (!buf.defined()) buf = at::empty(h.sizes(), h.options());
  std::memcpy(buf.data_ptr<float>(), h.data_ptr<float>(), h.numel() * sizeof(float));
  to_float_rows(src, row, col0, b, h.size(1), buf.data_ptr<float>(), h.size(1));
  return buf;
}

// dst (float32, contiguous, rows x w) += columns [c0, c0 + w) of p (in a
// half dtype). A loop: dst.add_ would first make a float32 copy of the
// product, which raised the peak of the Elman RNN at H = 1024.
inline void add_half_columns(at::Tensor dst, const at::Tensor& p, int64_t c0) {
  TORCH_CHECK(dst.is_contiguous() && dst.scalar_type() == at::kFloat && p.stride(1) == 1);
  float* d = dst.data_ptr<float>();
  const int64_t w = dst.numel() / std::max<int64_t>(dst.size(0), 1), ld = p.stride(0);
  AT_DISPATCH_REDUCED_FLOATING_TYPES(p.scalar_type(), "rnnattn::add_half_columns", [&] {
    const scalar_t* q = p.data_ptr<scalar_t>() + c0;
    const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(w, 1));
    at::parallel_for(0, dst.size(0), grain, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i)
        for (int64_t j = 0; j < w; ++j) d[i * w + j] += static_cast<float>(q[i * ld + j]);
    });
  });
}

// dst (float32, contiguous) += a^T b, with the product in a's and b's half
// dtype (float32 sums inside; rounded once to the dtype before it is
// added).
inline void add_half_product(at::Tensor dst, const at::Tensor& a, const at::Tensor& b) {
  add_half_columns(dst, at::mm(a.t(), b), 0);
}

// A weight's bfloat16 pairs (small_gemm_bf16.h): of W^T ((cols + 1) / 2,
// rows) for the forward's W_hh^T and W_ih^T (transposed), of W ((rows + 1)
// / 2, cols) for the backward's W_hh.
inline at::Tensor weight_pairs(const at::Tensor& weight, bool transposed) {
  const at::Tensor w = weight.contiguous();
  const int64_t rows = w.size(0), cols = w.size(1);
  const int64_t k = transposed ? cols : rows, n = transposed ? rows : cols;
  at::Tensor p = at::empty({(k + 1) / 2, n}, w.options().dtype(at::kInt));
  pack_bf16_pairs(reinterpret_cast<const uint16_t*>(w.data_ptr<at::BFloat16>()), k, n,
                  transposed ? 1 : cols, transposed ? cols : 1,
                  reinterpret_cast<uint32_t*>(p.data_ptr<int32_t>()));
  return p;
}

// Whether a bfloat16 call with bfloat16 steps sends its large steps to the
// library's bfloat16 GEMM (half.h bf16_library_steps): where its first step
// (the most rows) is past small_step's size.
template <typename Cell>
bool library_steps(const RnnShape& s, const StepSchedule& sched) {
  return half::bf16_library_steps() && sched.steps() > 0 &&
         !small_step<Cell>(sched.batch[0], s.state, CellLayout<Cell>{s.hidden}.gates());
}

// The library steps' bfloat16 weight w (n x k: W_hh forward, W_hh^T
// backward) in oneDNN's layout for products of `rows` rows, made once a
// call, where oneDNN's packed weights take bfloat16 (packed_weights.h);
// else undefined (the steps then hand oneDNN W_hh as stored).
inline at::Tensor packed_bf16_weight(const at::Tensor& w, int64_t rows) {
  return half::bf16_packed_steps() ? pack_weight(*packed_linear_ops(), w, rows) : at::Tensor();
}

// The forward's library steps' W_hh (w16, bfloat16, G x Hs) in oneDNN's
// layout for products of `rows` rows: one weight per unit part of the
// steps (recurrence.h LayerPtrs::w_hh16_parts: part q's W_hh rows of unit
// slice q in every gate), so that each thread multiplies by its own and
// runs its units' pointwise step on that product with no wait between,
// where the steps split into parts; else one weight. Empty where oneDNN's
// packed weights do not take bfloat16 (the steps then hand it W_hh as it
// is). One product over all threads, then the pointwise step split the
// same way, left the threads waiting on each other at two barriers a step
// (libgomp: 16% of the samples of the LSTM (64,100,512,1024) bfloat16
// forward on a 2-core Xeon (AMX), 11% split). Split, the forward there was
// 1.03x faster for the LSTM and the GRU (alternating processes, median of
// 4-5 rounds; no change at (32,100,256,512)). The backward's products
// split the same way gained nothing measurable (1.00-1.02x) and stay whole.
template <typename Cell>
std::vector<at::Tensor> packed_step_parts(const at::Tensor& w16, const RnnShape& s,
                                          int64_t rows) {
  if (!half::bf16_packed_steps()) return {};
  const int64_t H = s.hidden, Hs = s.state;
  const int parts = recurrent_parts(rows * Hs * CellLayout<Cell>{H}.gates(), H);
  if (parts <= 1) return {packed_bf16_weight(w16, rows)};
  const at::Tensor w = w16.view({Cell::kGates, H, Hs});
  const int64_t width = unit_slice_width(parts, H);
  std::vector<at::Tensor> packed(parts);
  unit_slices(width, H, 0, parts, [&](int64_t c0, int64_t c1) {
    packed[c0 / width] = packed_bf16_weight(
        w.narrow(1, c0, c1 - c0).reshape({Cell::kGates * (c1 - c0), Hs}), rows);
  });
  return packed;
}

inline c10::optional<at::Tensor> opt(const at::Tensor& t) {
  return t.defined() ? c10::optional<at::Tensor>(t) : c10::nullopt;
}

// A bfloat16 forward's input GEMM (A = X W_ih^T, the library's) over
// consecutive chunks of steps at once, up to I rows (the input size): a
// GEMM of fewer rows reads more of W_ih (G x I) than it writes of A (rows
// x G), and the chunks are a few steps each (256 rows at B = 64). Measured
// on a 2-core Xeon (AMX), 2 threads, bfloat16 fwd, alternating processes:
// LSTM (64,100,512,1024) (chunks of 256 rows) 1.05-1.08x with 512 or
// 1024 rows a GEMM, 0.8x with 4096 (A's fresh pages, out of cache); at
// (32,100,256,512) (chunks of 128 rows) 256 rows a GEMM level, 512 and
// 1024 5-10% slower (A out of L2 when the steps read it).
class InputRows {
 public:
  // on: whether A comes from the library (else of() is undefined);
  // max_rows: the most rows a GEMM takes beyond its first chunk's.
  InputRows(const at::Tensor& x, const at::Tensor& w_ih, const std::vector<StepChunk>& chunks,
            bool on, int64_t max_rows)
      : x_(x), w_ih_(w_ih), chunks_(chunks) {
    if (!on) return;
    // Each GEMM's rows [lo, hi), over its chunks [k, end) (consecutive runs
    // of rows in walk order: upwards, or downwards reversed), for each of
    // those chunks; and the most rows one takes.
    int64_t cap = 0;
    for (size_t k = 0; k < chunks.size();) {
      int64_t lo = chunks[k].row0, hi = lo + chunks[k].rows;
      size_t end = k + 1;
      for (; end < chunks.size(); ++end) {
        const int64_t j0 = chunks[end].row0, j1 = j0 + chunks[end].rows;
        if (std::max(hi, j1) - std::min(lo, j0) > max_rows) break;
        lo = std::min(lo, j0);
        hi = std::max(hi, j1);
      }
      gemm_rows_.resize(end, {lo, hi});
      cap = std::max(cap, hi - lo);
      k = end;
    }
    // One buffer for every GEMM's A, written in place (mm_out): a new
    // tensor a GEMM came from the allocator's free blocks or fresh pages
    // (about 1.8 us a 4 KiB page on a 2-core Xeon VM), by its state.
    buf_ = at::empty({cap, w_ih.size(0)}, x.options());
  }

  // Chunk k's rows of A (contiguous), computed with the rest of its GEMM's
  // chunks where k is the GEMM's first.
  at::Tensor of(size_t k) {
    if (!buf_.defined()) return at::Tensor();
    const auto [lo, hi] = gemm_rows_[k];
    if (k == 0 || gemm_rows_[k - 1] != gemm_rows_[k]) {
      a_ = buf_.narrow(0, 0, hi - lo);
      at::mm_out(a_, x_.narrow(0, lo, hi - lo), w_ih_.t());
    }
    return a_.narrow(0, chunks_[k].row0 - lo, chunks_[k].rows);
  }

 private:
  const at::Tensor& x_;
  const at::Tensor& w_ih_;
  const std::vector<StepChunk>& chunks_;
  std::vector<std::pair<int64_t, int64_t>> gemm_rows_;  // chunk k's GEMM's rows [lo, hi)
  at::Tensor buf_, a_;
};

template <typename Cell>
LayerForward forward_layer_half(const Cell& cell, const RnnShape& s, const StepSchedule& sched,
                                const at::Tensor& input, const at::Tensor& hx,
                                const c10::optional<at::Tensor>& cx, const at::Tensor& w_ih,
                                const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_ih,
                                const c10::optional<at::Tensor>& b_hh,
                                const c10::optional<at::Tensor>& w_hr, bool reverse, bool train) {
  using half::up;
  const auto opts = input.options();
  // W_hh in float32 only where some step reads it: not where every step
  // takes the bfloat16 pairs below (bfloat16 steps without a projection).
  const bool pairs = sched.steps() > 0 && half::bf16_steps(input.scalar_type());
  const bool no_proj = !(w_hr.has_value() && w_hr->defined());
  // Likewise W_ih: not where the input GEMM runs in the half dtype (half.h).
  const at::Tensor none = at::empty({0}, opts.dtype(at::kFloat));
  const at::Tensor wi = half::library_half_gemm(input.scalar_type()) ? none : up(w_ih),
                   wh = pairs && no_proj ? none : up(w_hh);
  const auto bi = up(b_ih), bh = up(b_hh), wr = up(w_hr);
  const at::Tensor x = input.reshape({-1, s.input});
  std::vector<int64_t> out_shape(input.sizes().begin(), input.sizes().end());
  out_shape.back() = s.state;
  LayerForward r;
  r.output = at::empty(out_shape, opts);
  const at::Tensor out = r.output.view({-1, s.state});
  const bool has_reserve = Cell::kWsBlocks > 1;  // else the output is the reserve
  if (has_reserve)
    r.reserve =
        train ? at::empty({s.rows, Cell::kWsBlocks * s.hidden}, opts) : at::empty({0}, opts);
  // Mapped in before the chunks write it (prefault.h).
  if (has_reserve && train) prefault_for_write(r.reserve);
  at::Tensor h = up(hx), c = Cell::kHasCell ? up(*cx) : at::Tensor();
  // The chunks update the state in place (forward_layer_op's
  // state_in_place): after the first, h and c are the last chunk's; the
  // first's only where up() copied hx (and cx), never the caller's own.
  const bool own_state0 = !h.is_same(hx) && (!Cell::kHasCell || !c.is_same(*cx));
  // W_hh^T for the steps (layer.h), made once for all the chunks: in
  // bfloat16 pairs where the steps multiply in bfloat16 (half.h; then every
  // step without a projection reads it), else in float32 for the small
  // steps.
  const CellLayout<Cell> L{s.hidden};
  const bool small = sched.steps() > 0 && small_step<Cell>(sched.batch.back(), s.state, L.gates());
  // Where the large steps go to the library's bfloat16 GEMM (library_steps),
  // it reads W_hh as it is, and the pairs are made only for the small steps
  // of a batch that shrinks; A then comes from the library's GEMM too.
  // Else, without a projection, W_ih^T in pairs too where they are at most
  // kStepInputMaxBytes: each step makes its own rows' A from the chunk's
  // float32 input (recurrence.h step_input).
  const bool lib = pairs && no_proj && library_steps<Cell>(s, sched);
  const at::Tensor w16 = lib ? w_hh.contiguous() : at::Tensor();
  const std::vector<at::Tensor> w16p =
      lib ? packed_step_parts<Cell>(w16, s, sched.batch[0]) : std::vector<at::Tensor>();
  at::Tensor wt, wit;
  if (pairs) {
    if (!lib || small) wt = weight_pairs(w_hh, /*transposed=*/true);
    if (!lib && no_proj && (s.input + 1) / 2 * L.gates() * 4 <= kStepInputMaxBytes)
      wit = weight_pairs(w_ih, /*transposed=*/true);
  } else if (small) {
    wt = at::empty({s.state, L.gates()}, wh.options());
    transpose(wh.data_ptr<float>(), L.gates(), s.state, wt.data_ptr<float>());
  }
  // A from the library's half-precision GEMM, or undefined: the op
  // computes it from the chunk's input rows in float32.
  const bool a_lib = !wit.defined() && half::library_half_gemm(input.scalar_type());
  // A bfloat16 output the fused steps may write themselves (forward_layer_op's out16).
  const bool out16 = input.scalar_type() == at::kBFloat16;
  // What a chunk holds beside what the call keeps, a row: in float32 its
  // input and output, and its reserve in training (in inference only where
  // A is made a chunk at a time: layer.h). Where every step is a fused
  // large bfloat16 step on A in bfloat16 (layer.h a16) that writes the
  // output itself (out16), and in training the reserve too (layer.h
  // reserve16), a chunk holds no float32 rows (one step's gates at most),
  // only its A in bfloat16: such lean chunks run to kLeanChunkRows rows.
  // At (64,100,512,1024): 25 chunks of 256 rows -> 7 of 960 (a GEMM each:
  // 13 of 512 rows before), and a training call no longer rounds each
  // chunk's float32 reserve in a pass of its own.
  const int64_t es = input.element_size(), H = s.hidden;
  const bool lean = out16 && lib && a_lib && !small;
  const int64_t ws_f32 = !has_reserve                ? 0
                         : train                      ? Cell::kWsBlocks * H
                         : wit.defined()              ? 0
                                                      : L.gates();
  const int64_t held = lean ? es * L.gates() : 4 * (s.input + s.state + ws_f32);
  const int64_t kept = es * (s.state + (has_reserve && train ? Cell::kWsBlocks * H : 0));
  const int64_t min_rows =
      half_chunk_min_rows(s.rows, L.gates() * (s.input + s.state), held, kept, lean);
  const std::vector<StepChunk> chunks = step_chunks(sched, s.batch, reverse, min_rows);
  int64_t cap = 0;
  for (const StepChunk& ch : chunks) cap = std::max(cap, ch.rows);
  at::Tensor buf_x;  // small chunks' float32 input rows (float_rows)
  // One GEMM serves consecutive chunks up to I rows (InputRows).
  InputRows a_rows{x, w_ih, chunks, a_lib, s.input};
  for (size_t k = 0; k < chunks.size(); ++k) {
    const StepChunk& ch = chunks[k];
    RnnShape sc = s;
    sc.rows = ch.rows;
    const at::Tensor a = a_rows.of(k);
    LayerForward rc = forward_layer_op(
        cell, sc, ch.sched,
        a.defined() ? x.narrow(0, ch.row0, ch.rows) : float_rows(x, ch.row0, ch.rows, cap, buf_x),
        h, opt(c), wi, wh, bi, bh, wr, reverse, train, a, /*pack_w_hh=*/false, wt, wit, w16, w16p,
        out16 ? out.narrow(0, ch.row0, ch.rows) : at::Tensor(), k > 0 || own_state0,
        lean && has_reserve && train ? r.reserve.narrow(0, ch.row0, ch.rows) : at::Tensor());
    if (rc.output.defined()) from_float_rows(rc.output, out, ch.row0);  // else in out already
    if (has_reserve && train && rc.reserve.numel() > 0)  // else in r.reserve already
      from_float_rows(rc.reserve, r.reserve, ch.row0);
    h = rc.h_n;
    c = rc.c_n;
  }
  r.h_n = h.to(input.scalar_type());
  if (Cell::kHasCell) r.c_n = c.to(input.scalar_type());
  return r;
}

// Whether a half-precision backward whose chunks' GEMMs run in bfloat16
// (backward_layer_half's gemms16) runs them once over the whole sequence
// instead, after the walk: each chunk's gate grads go, rounded, into one
// (N, kGradBlocks * H) tensor in the half dtype, and dX, dW_ih and dW_hh
// are one library call each (the GRU's dW_hh two), with results in the
// half dtype. That drops the float32 sums of the weight grads and, a
// chunk, the product rounded to the dtype and added into them (at
// (64,100,512,1024), 25 chunks: 0.56 ms of adding a chunk for the Elman
// RNN), and the weight grads are rounded once instead of once a chunk.
// Only where every step holds all the batch's rows: the output one step
// back is then each row's h_{t-1} (a packed batch keeps the chunks).
// lib_size: the chunks' GEMMs reach oneDNN's size (where they run in
// bfloat16 anyway). There only where every gate's A and R add (the Elman
// RNN, the LSTM): the GRU's gate grads take four blocks a row for its
// three gates (dR kept apart), and over the whole sequence they took its
// peak at (64,100,512,1024) from 110.8 to 136.6 MiB, torch's bfloat16
// module's being 137.6. Measured on an AMD EPYC (Zen 4), 2 threads,
// fwd+bwd against torch's bfloat16 module, alternating in one process: the
// Elman RNN 0.94-1.04x -> 1.01-1.17x, the LSTM 1.17-1.24x -> 1.17-1.28x
// (16,100,64,128: 1.17x -> 1.30x); peaks RNN 35.8 -> 35.4 MiB, LSTM 143 ->
// 147.5 MiB with W_ih's float32 copy gone too (torch's 39.6, 375).
// Below that size, for every cell, where the kept gate grads take no more
// bytes than what they replace: the float32 sums of dW_ih and dW_hh and
// W_ih's float32 copy (the float32 op's dX reads it). That is a call of
// few rows (up to 2 (2I + H) for the LSTM and the Elman RNN, 1.5 (2I + H)
// for the GRU), whose peak those sums set; its products run in plain loops
// (whole_weight_grads). Measured on an AMD EPYC (Zen 4), 2 threads,
// bfloat16 fwd+bwd, with the walk's gate grads written over the chunk's
// float32 reserve rows too (backward_layer_half): peaks at (1,100,32,64)
// GRU 0.273 -> 0.183 MiB (torch's module 0.213), LSTM 0.333 -> 0.212, RNN
// 0.090 -> 0.057; time against the chunks' float32 GEMMs, alternating in
// one process: 1.04x faster at (1,100,32,64), 1.09-1.26x at (2,100,64,128),
// RNN (4,64,64,256) 1.27x, LSTM (8,64,96,96) 1.40x, RNN (8,100,256,256)
// 1.73x (B, T, I, H).
template <typename Cell>
bool whole_sequence_gemms(const RnnShape& s, const StepSchedule& sched, bool lib_size,
                          int64_t elem_size) {
  const CellLayout<Cell> L{s.hidden};
  if (!(sched.steps() > 0 && sched.full_steps() == sched.steps() && sched.batch[0] == s.batch))
    return false;
  if (lib_size) return L.rest_cols() == 0;
  return s.rows * Cell::kGradBlocks * s.hidden * elem_size <=
         4 * L.gates() * (2 * s.input + s.state);
}

// The weight grads of whole_sequence_gemms from every row's gate grads dg
// (N x kGradBlocks * H, contiguous, the half dtype): dW_ih = dA^T X, dW_hh =
// dG^T h_{t-1} (the GRU's n rows: dR^T h_{t-1}), h_{t-1} being hx's rows
// for the walk's first step and the output one step back for the others.
// Through the library where its GEMMs run at their size (lib_size), else in
// plain loops (half_product.h: no operand copies at the peak of a call of
// few rows). dw_ih and dw_hh are made here, in dg's dtype.
// Either dg, or (lib_size only) dg_t: the same transposed (kGradBlocks * H
// x N, contiguous; bf16_transpose.h), which the library's products read as
// stored instead of re-laying out dg's transposed view.
template <typename Cell>
void whole_weight_grads(const RnnShape& s, bool reverse, bool lib_size, const at::Tensor& dg,
                        const at::Tensor& dg_t, const at::Tensor& x, const at::Tensor& hx,
                        const at::Tensor& out, at::Tensor& dw_ih, at::Tensor& dw_hh) {
  const CellLayout<Cell> L{s.hidden};
  TORCH_INTERNAL_ASSERT(dg.defined() != dg_t.defined() && (lib_size || dg.defined()));
  const auto opts = x.options();
  const int64_t B = s.batch, n = s.rows - B;
  const int64_t first = reverse ? n : 0, rest = reverse ? 0 : B, out0 = reverse ? B : 0;
  // dg's columns [col, col + cnt), transposed (cnt x N).
  auto grads_t = [&](int64_t col, int64_t cnt) {
    return dg_t.defined() ? dg_t.narrow(0, col, cnt) : dg.narrow(1, col, cnt).t();
  };
  // dW_hh's rows [row, row + cnt) from dg's columns [col, col + cnt).
  auto recurrent = [&](int64_t row, int64_t col, int64_t cnt) {
    at::Tensor dst = dw_hh.narrow(0, row, cnt);
    if (lib_size) {
      const at::Tensor d = grads_t(col, cnt);
      at::mm_out(dst, d.narrow(1, first, B), hx);
      if (n > 0) dst.addmm_(d.narrow(1, rest, n), out.narrow(0, out0, n));
      return;
    }
    const uint16_t* g = bf16_bits_of(dg) + col;
    const int64_t ld = dg.stride(0);
    const uint16_t* out_prev = bf16_bits_of(out) + out0 * out.stride(0);
    bf16_product(bf16_bits_of(dst), s.state, cnt, s.state,
                 {{g + first * ld, 1, ld, bf16_bits_of(hx), hx.stride(0), B},
                  {g + rest * ld, 1, ld, out_prev, out.stride(0), n}});
  };
  dw_ih = at::empty({L.gates(), s.input}, opts);
  if (lib_size) {
    at::mm_out(dw_ih, grads_t(0, L.gates()), x);
  } else {
    const at::Tensor xr = x.stride(1) == 1 ? x : x.contiguous();
    bf16_product(bf16_bits_of(dw_ih), s.input, L.gates(), s.input,
                 {{bf16_bits_of(dg), 1, dg.stride(0), bf16_bits_of(xr), xr.stride(0), s.rows}});
  }
  dw_hh = at::empty({L.gates(), s.state}, opts);  // after dW_ih's library call, as dX (below)
  recurrent(0, 0, L.sum_cols());
  if (L.rest_cols() > 0) recurrent(L.sum_cols(), L.rest_at(), L.rest_cols());
}

template <typename Cell>
LayerGrads backward_layer_half(const Cell& cell, const RnnShape& s, const StepSchedule& sched,
                               const at::Tensor& grad_output, const at::Tensor& grad_hn,
                               const c10::optional<at::Tensor>& grad_cn, const at::Tensor& input,
                               const at::Tensor& hx, const c10::optional<at::Tensor>& cx,
                               const at::Tensor& w_ih, const at::Tensor& w_hh,
                               const c10::optional<at::Tensor>& w_hr, const at::Tensor& output,
                               const c10::optional<at::Tensor>& reserve, bool reverse,
                               bool need_input_grad, bool need_weight_grad) {
  using half::up;
  const auto dtype = input.scalar_type();
  const auto opts = input.options();
  const CellLayout<Cell> L{s.hidden};
  at::Tensor wi, wh;  // W_ih, W_hh in float32, where the float32 op reads them (below)
  c10::optional<at::Tensor> wr = up(w_hr);
  const at::Tensor x = input.reshape({-1, s.input});
  const at::Tensor gout = grad_output.reshape({-1, s.state});  // a view where strides allow
  const at::Tensor out = output.reshape({-1, s.state});
  const at::Tensor ws = Cell::kWsBlocks > 1 ? *reserve : at::Tensor();
  const at::Tensor h0 = up(hx), c0 = Cell::kHasCell ? up(*cx) : at::Tensor();
  at::Tensor g = up(grad_hn), dc = Cell::kHasCell ? up(*grad_cn) : at::Tensor();
  LayerGrads r, sum;  // sum: the weight grads (whole: the bias grads), in float32, over the chunks
  at::Tensor dx;  // r.dx as rows
  auto make_dx = [&] {
    r.dx = need_input_grad ? at::empty(input.sizes(), opts) : at::empty({0}, opts);
    if (need_input_grad) dx = r.dx.view({-1, s.input});
  };
  // Where the steps multiply in bfloat16 (half.h), so do each chunk's
  // GEMMs after its walk (dX, dW_ih, dW_hh), on its gate grads rounded to
  // bfloat16, with the chunks' weight grads summed in float32; not with a
  // projection, whose steps run in float32. Else the float32 op makes them.
  // (The Elman RNN's and the LSTM's over a padded batch run once over all
  // the rows instead: whole_sequence_gemms; the GRU's gate grads kept for
  // the whole sequence took its peak over torch's.) Only where a
  // chunk's GEMMs reach oneDNN's size (blas.h): below it their fixed cost,
  // three calls a chunk, outweighs the faster arithmetic (LSTM
  // (16,100,64,128) fwd+bwd went from about 1.0x torch's to 0.8x).
  const bool has_proj = w_hr.has_value() && w_hr->defined();
  // A chunk's float32 rows (above): grad_output, input, output, reserve and
  // the gate grads; the call keeps the output and reserve.
  const int64_t es = input.element_size(), H = s.hidden;
  const int64_t ws_cols = Cell::kWsBlocks > 1 ? Cell::kWsBlocks * H : 0;
  const std::vector<StepChunk> chunks = step_chunks(
      sched, s.batch, reverse,
      half_chunk_min_rows(s.rows, L.gates() * (s.input + s.state),
                          4 * (s.input + 2 * s.state + ws_cols + Cell::kGradBlocks * H),
                          es * (s.state + ws_cols)));
  // The steps multiply in bfloat16 (half.h bf16_steps; not with a projection).
  const bool steps16 = sched.steps() > 0 && half::bf16_steps(dtype) && !has_proj;
  const bool asked = steps16 && (need_input_grad || need_weight_grad) && !chunks.empty();
  const bool lib_size =
      asked && chunks[0].rows * L.gates() * std::max(s.input, s.state) >= kOnednnMinWork;
  // whole: those GEMMs once over all the rows after the walk instead of
  // once a chunk (whole_sequence_gemms; below lib_size too where that keeps
  // less).
  const bool whole = asked && whole_sequence_gemms<Cell>(s, sched, lib_size, es);
  const bool gemms16 = lib_size || whole;
  // W_ih in float32 only where the float32 op makes dX or dW_ih (not where
  // the chunks' GEMMs run in bfloat16 on W_ih as it is).
  wi = gemms16 ? at::empty({0}, opts.dtype(at::kFloat)) : up(w_ih);
  const at::Tensor out_rows = gemms16 && out.stride(1) != 1 ? out.contiguous() : out;
  const at::Tensor hx_rows = gemms16 ? hx.contiguous() : hx;
  // whole: every row's gate grads rounded to the half dtype, for dX and the
  // weight grads after the walk (dg16); or, where the library makes the
  // weight grads of a cell with several gates (the LSTM) in bfloat16, kept
  // transposed for them instead (dg16_t, bf16_transpose.h), dX made a chunk
  // at a time from the chunk's rows (chunk16), still in cache. Measured on
  // a 2-core Xeon (AMX), LSTM (64,100,512,1024) bfloat16 fwd+bwd: dW_hh
  // 55.5 -> 23.7 ms, dW_ih 28.6 -> 12.3, dX 13.3 -> 17.8 (25 calls of 256
  // rows; gathering 1024 rows a call took 25.4: the rows out of cache);
  // the call 1.09x faster, alternating processes. Not the Elman RNN's: one
  // product of its three gains there (dW_hh; dW_ih ran faster on the
  // transposed view), for 25 library calls for dX instead of one.
  const bool whole_t =
      whole && lib_size && need_weight_grad && Cell::kGates > 1 && dtype == at::kBFloat16;
  at::Tensor dg16, dg16_t, chunk16;
  if (whole_t) {
    dg16_t = at::empty({Cell::kGradBlocks * H, s.rows}, opts);
    prefault_for_write(dg16_t);  // each chunk writes a column stripe
  } else if (whole) {
    dg16 = at::empty({s.rows, Cell::kGradBlocks * H}, opts);
    prefault_for_write(dg16);
  }
  if (!whole || whole_t) make_dx();  // whole: after the walk, whose peak it would raise
  if (need_weight_grad && whole) {
    sum.db_ih = at::zeros({L.gates()}, opts.dtype(at::kFloat));
    if (L.rest_cols() > 0) sum.db_hh = at::zeros({L.gates()}, opts.dtype(at::kFloat));
  } else if (need_weight_grad) {
    const auto f32 = opts.dtype(at::kFloat);
    sum.dw_ih = at::zeros(w_ih.sizes(), f32);
    sum.dw_hh = at::zeros(w_hh.sizes(), f32);
    sum.db_ih = at::zeros({L.gates()}, f32);
    if (L.rest_cols() > 0) sum.db_hh = at::zeros({L.gates()}, f32);
    if (wr.has_value() && wr->defined()) sum.dw_hr = at::zeros(wr->sizes(), f32);
  }
  // W_hh in bfloat16 pairs for the steps' dh GEMM where the steps multiply
  // in bfloat16 (half.h), made once for all the chunks. The GRU's other
  // gates start at row 2H, on a pair's edge.
  // Where the large steps go to the library's bfloat16 GEMM (as the
  // forward), it reads W_hh as it is; the pairs only for small steps.
  const bool lib = steps16 && library_steps<Cell>(s, sched);
  at::Tensor w16 = lib ? w_hh.contiguous() : at::Tensor();
  at::Tensor w16p = lib ? packed_bf16_weight(transposed_copy(w_hh), sched.batch[0]) : at::Tensor();
  at::Tensor wh_pairs;
  if (steps16 && (!lib || small_step<Cell>(sched.batch.back(), s.state, L.gates())))
    wh_pairs = weight_pairs(w_hh, /*transposed=*/false);
  // W_hh in float32 only where the steps read it (not with bfloat16 steps).
  wh = steps16 ? at::empty({0}, opts.dtype(at::kFloat)) : up(w_hh);
  // Each chunk's small float32 rows (float_rows), in buffers made for the largest.
  int64_t cap = 0;
  for (const StepChunk& c : chunks) cap = std::max(cap, c.rows);
  if (whole_t) chunk16 = at::empty({cap, Cell::kGradBlocks * H}, opts);
  at::Tensor buf_gout, buf_x, buf_out, buf_ws, buf_h, buf_c;
  for (auto it = chunks.rbegin(); it != chunks.rend(); ++it) {
    const StepChunk& ch = *it;
    auto rows = [&](const at::Tensor& t, at::Tensor& buf) {
      return float_rows(t, ch.row0, ch.rows, cap, buf);
    };
    // The state entering the chunk: the output (and c_t) of the walk's step
    // before it for the rows that step held, hx (cx) for the others.
    at::Tensor h_in = h0, c_in = c0;
    if (ch.t_prev >= 0) {
      const int64_t b = sched.batch[ch.t_prev], row = sched.offset[ch.t_prev];
      h_in = state_rows(h0, out, row, b, 0, buf_h);
      if (Cell::kHasCell) c_in = state_rows(c0, ws, row, b, L.gates(), buf_c);
    }
    RnnShape sc = s;
    sc.rows = ch.rows;
    // The walk alone (gemms16) does not read the input, and writes its gate
    // grads over the reserve's float32 rows (layer.h backward_layer_op's
    // dg_out), whose first kGradBlocks * H columns each row reads before.
    const at::Tensor xc =
        gemms16 ? at::empty({0, s.input}, opts.dtype(at::kFloat)) : rows(x, buf_x);
    const at::Tensor wsc = ws.defined() ? rows(ws, buf_ws) : at::Tensor();
    at::Tensor dgc =
        gemms16 && wsc.defined() ? wsc.narrow(1, 0, Cell::kGradBlocks * H) : at::Tensor();
    LayerGrads gc = backward_layer_op(
        cell, sc, ch.sched, rows(gout, buf_gout), g, opt(dc), xc, h_in, opt(c_in), wi, wh, wr,
        rows(out, buf_out), opt(wsc), reverse, need_input_grad && !gemms16,
        need_weight_grad && !gemms16, /*pack_w_hh=*/false, &sum, wh_pairs,
        gemms16 ? &dgc : nullptr, w16, w16p);
    if (whole_t) {
      // The bias grads' sums in the same pass (every gate's A and R add
      // here: the column sums of dA are both bias grads).
      TORCH_INTERNAL_ASSERT(dgc.stride(1) == 1 && L.rest_cols() == 0 &&
                            dgc.size(1) == L.gates() && chunk16.size(1) == L.gates());
      const at::Tensor d16 = chunk16.narrow(0, 0, ch.rows);
      round_to_bf16_with_transpose(dgc.data_ptr<float>(), dgc.stride(0), ch.rows, dgc.size(1),
                                   bf16_bits_of(d16), d16.stride(0),
                                   bf16_bits_of(dg16_t) + ch.row0, dg16_t.stride(0),
                                   sum.db_ih.data_ptr<float>());
      if (need_input_grad) {
        at::Tensor dxc = dx.narrow(0, ch.row0, ch.rows);
        at::mm_out(dxc, d16.narrow(1, 0, L.gates()), w_ih);
      }
    } else if (whole) {
      from_float_rows(dgc, dg16, ch.row0);
    }
    if (whole) {
      if (need_weight_grad && !whole_t) {
        add_column_sums(sum.db_ih, dgc.narrow(1, 0, L.gates()));
        if (L.rest_cols() > 0)
          add_column_sums(sum.db_hh.narrow(0, L.sum_cols(), L.rest_cols()),
                          dgc.narrow(1, L.rest_at(), L.rest_cols()));
      }
    } else if (gemms16) {
      const at::Tensor d = dgc.narrow(1, 0, L.gates());
      const at::Tensor d16 = d.to(dtype);
      if (need_input_grad) {
        at::Tensor dxc = dx.narrow(0, ch.row0, ch.rows);
        at::mm_out(dxc, d16, w_ih);
      }
      if (need_weight_grad) {
        sum.db_ih.add_(d.sum(0));
        if (L.rest_cols() == 0) {
          // Every gate's A and R add (the LSTM, the Elman RNN): one product
          // dG^T [x | h_{t-1}] gives dW_ih and dW_hh, one library call
          // instead of two.
          const int64_t I = s.input, Hs = s.state;
          at::Tensor xh = at::empty({ch.rows, I + Hs}, opts);
          xh.narrow(1, 0, I).copy_(x.narrow(0, ch.row0, ch.rows));
          states_entering(sched, reverse, ch, out_rows, hx_rows, xh.narrow(1, I, Hs));
          const at::Tensor p = at::mm(d16.t(), xh);
          xh = at::Tensor();
          add_half_columns(sum.dw_ih, p, 0);
          add_half_columns(sum.dw_hh, p, I);
        } else {
          // The GRU: dW_hh of its other gates is dR^T h_{t-1}, with dR apart.
          add_half_product(sum.dw_ih, d16, x.narrow(0, ch.row0, ch.rows));
          at::Tensor hp = at::empty({ch.rows, s.state}, opts);  // h_{t-1} of each row
          states_entering(sched, reverse, ch, out_rows, hx_rows, hp);
          add_half_product(sum.dw_hh.narrow(0, 0, L.sum_cols()), d16.narrow(1, 0, L.sum_cols()),
                           hp);
          const at::Tensor dr = dgc.narrow(1, L.rest_at(), L.rest_cols());
          add_half_product(sum.dw_hh.narrow(0, L.sum_cols(), L.rest_cols()), dr.to(dtype), hp);
          sum.db_hh.narrow(0, L.sum_cols(), L.rest_cols()).add_(dr.sum(0));
        }
      }
    } else if (need_input_grad) {
      from_float_rows(gc.dx, dx, ch.row0);
    }
    g = gc.dhx;
    dc = gc.dcx;
  }
  // The float32 weights and rows go before the grads are made in the half
  // dtype.
  buf_gout = buf_x = buf_out = buf_ws = buf_h = buf_c = chunk16 = at::Tensor();
  wi = wh = w16 = w16p = wh_pairs = at::Tensor();
  wr = c10::nullopt;
  if (whole_t) {
    whole_weight_grads<Cell>(s, reverse, lib_size, dg16, dg16_t, x, hx_rows, out_rows, r.dw_ih,
                             r.dw_hh);
    dg16_t = at::Tensor();
  } else if (whole) {
    const at::Tensor da = dg16.narrow(1, 0, L.gates());  // the gates' dA (the GRU's dR apart)
    if (need_weight_grad)
      whole_weight_grads<Cell>(s, reverse, lib_size, dg16, dg16_t, x, hx_rows, out_rows,
                               r.dw_ih, r.dw_hh);
    make_dx();  // last: the weight grads' library calls take scratch of their own
    if (need_input_grad && lib_size) {
      at::mm_out(dx, da, w_ih);
    } else if (need_input_grad) {
      const at::Tensor w = w_ih.stride(1) == 1 ? w_ih : w_ih.contiguous();
      bf16_product(
          bf16_bits_of(dx), dx.stride(0), s.rows, s.input,
          {{bf16_bits_of(dg16), dg16.stride(0), 1, bf16_bits_of(w), w.stride(0), L.gates()}});
    }
    dg16 = at::Tensor();
  }
  auto down = [&](at::Tensor& t) {
    if (!need_weight_grad) return at::empty({0}, opts);
    at::Tensor d = t.to(dtype);
    t = at::Tensor();
    return d;
  };
  r.dhx = g.to(dtype);
  if (Cell::kHasCell) r.dcx = dc.to(dtype);
  if (gemms16 && need_weight_grad && L.rest_cols() > 0)  // the summed gates' b_hh grad is b_ih's
    sum.db_hh.narrow(0, 0, L.sum_cols()).copy_(sum.db_ih.narrow(0, 0, L.sum_cols()));
  if (!whole || !need_weight_grad) {  // whole: made above
    r.dw_ih = down(sum.dw_ih);
    r.dw_hh = down(sum.dw_hh);
  }
  r.db_ih = down(sum.db_ih);
  if (L.rest_cols() > 0) r.db_hh = down(sum.db_hh);
  if (w_hr.has_value() && w_hr->defined()) r.dw_hr = down(sum.dw_hr);
  return r;
}

// The layer op for the call's dtype: the chunked path above for bfloat16 /
// float16, layer.h's for float32 / float64 (the ops check that all tensors
// share one dtype).
template <typename Cell, typename... Rest>
LayerForward forward_layer_any_dtype(const Cell& cell, const RnnShape& s,
                                     const StepSchedule& sched, const at::Tensor& input,
                                     const Rest&... rest) {
  if (half::is_half(input)) return forward_layer_half(cell, s, sched, input, rest...);
  return forward_layer_op(cell, s, sched, input, rest...);
}

template <typename Cell, typename... Rest>
LayerGrads backward_layer_any_dtype(const Cell& cell, const RnnShape& s,
                                    const StepSchedule& sched, const at::Tensor& grad_output,
                                    const Rest&... rest) {
  if (half::is_half(grad_output)) return backward_layer_half(cell, s, sched, grad_output, rest...);
  return backward_layer_op(cell, s, sched, grad_output, rest...);
}

}  // namespace rnnattn::cpu

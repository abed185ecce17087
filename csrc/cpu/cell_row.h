// One batch row of a recurrent cell's pointwise step (cells.h): the
// pointers the engine (recurrence.h) hands a cell, apart so that the
// vectorized float kernels (cell_kernels.h) can take them without the
// engine's headers.
#pragma once

#include <cstdint>

namespace rnnattn::cpu {

// One batch row's pointers for a cell's pointwise step. Forward: ws holds
// the pre-activations (without bias) and receives the gate activations;
// rest holds R of the gates whose A and R do not simply add (the GRU's
// R_n: in the reserve row when training, else step scratch); h_prev is the
// state entering the step; h_out the output row (the projection's input with
// proj_size); h_next the next state row (null with proj_size); c the cell
// state, updated in place, and c_keep where c_t is kept for the backward
// (null in inference). r16 and h16 (float rows only, else null): the
// large bfloat16 steps' fused form (recurrence.h lib_step): r16 holds the
// step's R of every gate in bfloat16 (unit c0's, not unit 0's; gate blocks
// r16_gate apart), added to A as it is read, and h16 receives h_t rounded
// to bfloat16 (the next step's left operand); a16 (with r16, or null): A
// in bfloat16, read in place of ws's; with a16, ws (and rest) null in
// inference (the gates are not kept) and for the Elman RNN (whose reserve
// is its output); and h16_out (with r16, or null): the output row in
// bfloat16, which receives h_t rounded in place of h_out's float32 (h_out
// then null); and ws16 (with a16, in training, or null): the reserve row in
// bfloat16, laid out as ws's (the GRU's R_n at 3H, the LSTM's c_t at 4H),
// which receives what ws and rest would keep, rounded, in their place (ws
// and rest then null: the chunk keeps no float32 rows).
// Backward: dh is the grad of h_t (gout is added to it)
// and receives the part of the grad of h_{t-1} that does not go through
// W_hh; c holds dc, updated in place; dg receives the gate grads.
template <typename T>
struct CellRow {
  T* ws = nullptr;
  T* rest = nullptr;
  T* h_out = nullptr;
  const T* h_prev = nullptr;
  T* h_next = nullptr;
  T* c = nullptr;
  T* c_keep = nullptr;
  const T* c_prev = nullptr;
  const T* gout = nullptr;
  T* dh = nullptr;
  T* dg = nullptr;
  T* tmp = nullptr;  // H scratch values (the LSTM backward in double)
  const uint16_t* r16 = nullptr;
  int64_t r16_gate = 0;
  const uint16_t* a16 = nullptr;
  uint16_t* h16 = nullptr;
  uint16_t* h16_out = nullptr;
  uint16_t* ws16 = nullptr;
};

}  // namespace rnnattn::cpu

// Stands in for CUDA's <cooperative_groups.h> in the emulation (found first
// on the include path): the grid group of a cooperative launch, whose sync()
// is a barrier of every thread of the grid (see ../cuda_emu.h).
#pragma once

#include "../cuda_emu.h"

namespace cooperative_groups {

struct grid_group {
  void sync(std::source_location where = std::source_location::current()) const { emu::grid_sync(where); }
};

inline grid_group this_grid() { return {}; }

}  // namespace cooperative_groups

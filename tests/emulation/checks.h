// What the emulated checks share: the case registry, guarded buffers,
// random inputs and the error measure. See main.cpp for how cases run.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "cuda_emu.h"

namespace emu_check {

// One checked kernel of one case: `text` starts with the kernel's name.
struct Line {
  bool ok;
  std::string text;
};
using Lines = std::vector<Line>;

struct Case {
  std::string name;  // unique; what --filter matches
  bool quick;        // part of --quick
  std::function<Lines()> run;
};

void add_attention_cases(std::vector<Case>& cases);
void add_rnn_cases(std::vector<Case>& cases);

template <typename T>
const char* dtype_name() {
  if constexpr (std::is_same_v<T, float>) return "f32";
  if constexpr (std::is_same_v<T, double>) return "f64";
  if constexpr (std::is_same_v<T, c10::Half>) return "f16";
  if constexpr (std::is_same_v<T, c10::BFloat16>) return "bf16";
  return "?";
}

// A buffer of n T in guarded memory (cuda_emu.h: Memory), filled with 0xff
// bytes: NaN in every floating type, so an element a kernel should write and
// does not shows up in the comparison.
template <typename T>
struct Buf {
  emu::Memory mem;
  T* p = nullptr;
  size_t n = 0;
  Buf() = default;
  Buf(size_t n_, const std::string& name) : mem(n_ * sizeof(T), 16, name), p(static_cast<T*>(mem.data())), n(n_) {
    poison();
  }
  void poison() {
    if (n) {
      mem.set_readonly(false);
      std::memset(static_cast<void*>(p), 0xff, n * sizeof(T));
    }
  }
  T& operator[](size_t i) { return p[i]; }
  const T& operator[](size_t i) const { return p[i]; }
  // Inputs are read-only while a kernel runs: a write faults.
  void readonly(bool ro = true) { mem.set_readonly(ro); }
  bool same_bits(const Buf& o) const { return n == o.n && (n == 0 || std::memcmp(p, o.p, n * sizeof(T)) == 0); }
};

inline std::mt19937_64& rng() {
  thread_local std::mt19937_64 g(1234);
  return g;
}
inline void reseed(uint64_t s) { rng().seed(s); }
inline double uni(double lo = -1, double hi = 1) { return std::uniform_real_distribution<double>(lo, hi)(rng()); }

// max |got - want| / max(1, max |want|) over n pairs (got as read by at(i));
// inf where got is NaN or inf and want is not.
struct ErrAcc {
  double worst = 0, scale = 1;
  bool bad = false;
  void add(double got, double want) {
    if (!std::isfinite(got) && got != want) bad = true;
    worst = std::max(worst, std::fabs(got - want));
    scale = std::max(scale, std::fabs(want));
  }
  double value() const { return bad ? std::numeric_limits<double>::infinity() : worst / scale; }
};

inline std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

inline std::string list(const std::vector<int64_t>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
  return s + "]";
}

inline const std::vector<emu::Schedule>& all_schedules() {
  static const std::vector<emu::Schedule> s = {emu::Schedule::kForward, emu::Schedule::kReverse,
                                               emu::Schedule::kSweep, emu::Schedule::kRandom};
  return s;
}

inline std::string schedules_text(const std::vector<emu::Schedule>& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) out += (i ? "," : "") + std::string(emu::schedule_name(s[i]));
  return out;
}

}  // namespace emu_check

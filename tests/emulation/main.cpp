// Runs the emulated kernel checks (check_attention.cpp, check_rnn.cpp).
//
//   check_kernels [--quick] [--filter REGEX] [--list] [--jobs N]
//
// Prints one line per checked kernel, starting with "ok" or "FAIL" and the
// kernel's name, in case order; then a summary. Exit status 1 if any failed.
// Cases run on --jobs OS threads (default: the usable CPUs, at most 4), each
// case's fibers on one of them. A case running longer than
// EMU_CASE_TIMEOUT seconds (default 600) stops the run.
#include <pthread.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "checks.h"

using namespace emu_check;

namespace {

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

int usable_cpus() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) return CPU_COUNT(&set);
  return static_cast<int>(std::thread::hardware_concurrency());
}

struct Slot {
  Lines lines;
  double seconds = 0;
  bool done = false;
};

}  // namespace

int main(int argc, char** argv) {
  bool quick = false, list_only = false;
  std::string filter;
  int jobs = std::min(4, std::max(1, usable_cpus()));
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--quick") {
      quick = true;
    } else if (a == "--list") {
      list_only = true;
    } else if (a == "--filter" && i + 1 < argc) {
      filter = argv[++i];
    } else if (a == "--jobs" && i + 1 < argc) {
      jobs = std::max(1, std::atoi(argv[++i]));
    } else {
      std::fprintf(stderr, "usage: %s [--quick] [--filter REGEX] [--list] [--jobs N]\n", argv[0]);
      return 2;
    }
  }
  std::vector<Case> all;
  add_attention_cases(all);
  add_rnn_cases(all);
  std::vector<Case> cases;
  const std::regex re(filter.empty() ? std::string(".*") : filter);
  for (Case& c : all) {
    if ((!quick || c.quick) && std::regex_search(c.name, re)) cases.push_back(std::move(c));
  }
  if (list_only) {
    for (const Case& c : cases) std::printf("%s%s\n", c.name.c_str(), c.quick ? "   (quick)" : "");
    return 0;
  }
  if (cases.empty()) {
    std::fprintf(stderr, "no case matches\n");
    return 2;
  }
  const double timeout = std::getenv("EMU_CASE_TIMEOUT") ? std::atof(std::getenv("EMU_CASE_TIMEOUT")) : 600;
  std::printf("emulating %zu cases (%s) on %d thread(s)\n", cases.size(), quick ? "--quick" : "full", jobs);
  std::fflush(stdout);

  const double t0 = now();
  std::vector<Slot> slots(cases.size());
  std::atomic<size_t> next{0};
  std::mutex print_mu;
  size_t printed = 0;
  int failed = 0, passed = 0;
  std::vector<std::atomic<double>> started(jobs);
  std::vector<std::atomic<long>> running(jobs);
  for (int j = 0; j < jobs; ++j) {
    started[j] = 0;
    running[j] = -1;
  }
  auto worker = [&](int j) {
    for (size_t i; (i = next++) < cases.size();) {
      running[j] = static_cast<long>(i);
      started[j] = now();
      const double s0 = now();
      Lines lines = cases[i].run();
      if (lines.empty()) lines.push_back({false, cases[i].name + ": no result"});
      const double secs = now() - s0;
      running[j] = -1;
      std::lock_guard<std::mutex> lock(print_mu);
      slots[i].lines = std::move(lines);
      slots[i].seconds = secs;
      slots[i].done = true;
      while (printed < slots.size() && slots[printed].done) {
        for (const Line& l : slots[printed].lines) {
          std::printf("%s %s  (%.2f s)\n", l.ok ? "ok  " : "FAIL", l.text.c_str(), slots[printed].seconds);
          (l.ok ? passed : failed)++;
        }
        ++printed;
      }
      std::fflush(stdout);
    }
  };
  std::atomic<bool> finished{false};
  std::thread watchdog([&] {
    while (!finished) {
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      for (int j = 0; j < jobs; ++j) {
        const long i = running[j];
        if (i >= 0 && now() - started[j] > timeout) {
          std::fprintf(stdout, "FAIL %s: still running after %.0f s (EMU_CASE_TIMEOUT): a kernel that never "
                               "reaches a barrier or never ends?\n", cases[i].name.c_str(), timeout);
          std::fflush(stdout);
          std::_Exit(1);
        }
      }
    }
  });
  std::vector<std::thread> threads;
  for (int j = 0; j < jobs; ++j) {
    threads.emplace_back(worker, j);
  }
  for (auto& t : threads) t.join();
  finished = true;
  watchdog.join();
  std::printf("%d passed, %d FAILED, %zu cases, %.1f s\n", passed, failed, cases.size(), now() - t0);
  return failed ? 1 : 0;
}

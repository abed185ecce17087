/* The CPU's multiply-add ceiling: how many float32 GFLOP/s its FMA units
 * retire on 1 and on N threads, with no memory traffic at all (12
 * independent 8-lane accumulator chains per thread, enough to cover the FMA
 * latency on every AVX2 core). It puts the tables' "GEMM floor" in context:
 * a GEMM or a recurrent layer cannot beat this, so a module already running
 * near it cannot be made much faster, only matched.
 *
 *   gcc -O3 -mavx2 -mfma -fopenmp benchmarks/fma_peak.c -o /tmp/fma_peak
 *   /tmp/fma_peak 2        # threads: 1 .. 2
 *
 * AVX2 + FMA only (the AVX-512 units, where present, would give up to 2x
 * more; this file does not measure them). */
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char** argv) {
  const int max_threads = argc > 1 ? atoi(argv[1]) : omp_get_max_threads();
  const long iters = 50000000L;
  for (int nt = 1; nt <= max_threads; ++nt) {
    double best = 0;
    for (int trial = 0; trial < 5; ++trial) {
      float sink = 0;
      const double t0 = now();
#pragma omp parallel num_threads(nt) reduction(+ : sink)
      {
        __m256 acc[12];
        const __m256 b = _mm256_set1_ps(0.999f), c = _mm256_set1_ps(0.001f);
        for (int k = 0; k < 12; ++k) acc[k] = _mm256_set1_ps((float)k);
        for (long i = 0; i < iters; ++i)
          for (int k = 0; k < 12; ++k) acc[k] = _mm256_fmadd_ps(acc[k], b, c);
        __m256 s = acc[0];
        for (int k = 1; k < 12; ++k) s = _mm256_add_ps(s, acc[k]);
        float out[8];
        _mm256_storeu_ps(out, s);
        sink += out[0];
      }
      const double gflops = nt * iters * 12.0 * 16 / (now() - t0) / 1e9;
      if (gflops > best) best = gflops;
      if (sink == 12345.f) puts("");  /* keeps the chains live */
    }
    printf("%d thread%s: %.1f GFLOP/s float32 FMA peak (best of 5)\n", nt, nt > 1 ? "s" : "", best);
  }
  return 0;
}

/* The CPU's multiply-add ceiling: how many float32 GFLOP/s its FMA units
 * retire on 1 and on N threads, with no memory traffic at all (independent
 * accumulator chains per thread, enough to cover the FMA latency on every
 * x86 core: 12 of 8 lanes with AVX2, 24 of 16 lanes with AVX-512). It puts
 * the tables' "GEMM floor" in context: a GEMM or a recurrent layer cannot
 * beat this, so a module already running near it cannot be made much
 * faster, only matched.
 *
 *   gcc -O3 -fopenmp benchmarks/fma_peak.c -o /tmp/fma_peak
 *   /tmp/fma_peak 2        # threads: 1 .. 2
 *
 * Prints the AVX2 ceiling, and the AVX-512 one where the CPU has AVX-512F
 * (cores with one 512-bit FMA unit show about the AVX2 figure there; cores
 * with two, about twice it). The unroll pragmas keep every chain in a
 * register. */
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

static const long kIters = 50000000L;

/* One thread's chains; returns a value that depends on them all. */
__attribute__((target("avx2,fma"))) static float chains_avx2(void) {
  __m256 acc[12];
  const __m256 b = _mm256_set1_ps(0.999f), c = _mm256_set1_ps(0.001f);
  for (int k = 0; k < 12; ++k) acc[k] = _mm256_set1_ps((float)k);
  for (long i = 0; i < kIters; ++i)
#pragma GCC unroll 12
    for (int k = 0; k < 12; ++k) acc[k] = _mm256_fmadd_ps(acc[k], b, c);
  __m256 s = acc[0];
  for (int k = 1; k < 12; ++k) s = _mm256_add_ps(s, acc[k]);
  float out[8];
  _mm256_storeu_ps(out, s);
  return out[0];
}

__attribute__((target("avx512f"))) static float chains_avx512(void) {
  __m512 acc[24];
  const __m512 b = _mm512_set1_ps(0.999f), c = _mm512_set1_ps(0.001f);
  for (int k = 0; k < 24; ++k) acc[k] = _mm512_set1_ps((float)k);
  for (long i = 0; i < kIters / 2; ++i)
#pragma GCC unroll 24
    for (int k = 0; k < 24; ++k) acc[k] = _mm512_fmadd_ps(acc[k], b, c);
  __m512 s = acc[0];
  for (int k = 1; k < 24; ++k) s = _mm512_add_ps(s, acc[k]);
  float out[16];
  _mm512_storeu_ps(out, s);
  return out[0];
}

static void measure(const char* name, float (*chains)(void), double flops_per_thread,
                    int max_threads) {
  for (int nt = 1; nt <= max_threads; ++nt) {
    double best = 0;
    for (int trial = 0; trial < 5; ++trial) {
      float sink = 0;
      const double t0 = now();
#pragma omp parallel num_threads(nt) reduction(+ : sink)
      sink += chains();
      const double gflops = nt * flops_per_thread / (now() - t0) / 1e9;
      if (gflops > best) best = gflops;
      if (sink == 12345.f) puts(""); /* keeps the chains live */
    }
    printf("%-7s %d thread%s: %.1f GFLOP/s float32 FMA peak (best of 5)\n", name, nt,
           nt > 1 ? "s" : "", best);
  }
}

int main(int argc, char** argv) {
  const int max_threads = argc > 1 ? atoi(argv[1]) : omp_get_max_threads();
  __builtin_cpu_init();
  /* 12 chains x 8 lanes x 2 flops; 24 x 16 x 2 over half the iterations. */
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    measure("AVX2", chains_avx2, kIters * 12.0 * 16, max_threads);
  if (__builtin_cpu_supports("avx512f"))
    measure("AVX-512", chains_avx512, kIters / 2 * 24.0 * 32, max_threads);
  return 0;
}

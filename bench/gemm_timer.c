// gemm_timer: an LD_PRELOAD library that times every cblas_sgemm call of a program and prints,
// at exit, the mean time per call for each shape and transpose variant. It shows how long the
// GEMMs of a training step take inside the step (operands and outputs not warm in cache, other
// work in between) next to bench_gemm's figures for the same products run alone in a loop.
//
//   cc -O2 -shared -fPIC bench/gemm_timer.c -o build-bench/gemm_timer.so -ldl
//   OPENBLAS_NUM_THREADS=2 LD_PRELOAD=build-bench/gemm_timer.so \
//     build-bench/bench_tapegrad --threads 2 --only W3
//
// Calls per shape include the warm-up steps; the per-call mean is what to compare.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <time.h>

typedef void (*sgemm_fn)(int, int, int, int, int, int, float, const float*, int, const float*, int, float,
                         float*, int);
struct Entry {
  int m, n, k, ta, tb;
  double seconds;
  long calls;
};
static struct Entry entries[64];
static int n_entries;

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

void cblas_sgemm(int order, int ta, int tb, int m, int n, int k, float alpha, const float* A, int lda,
                 const float* B, int ldb, float beta, float* C, int ldc) {
  static sgemm_fn real;
  if (!real) real = (sgemm_fn)dlsym(RTLD_NEXT, "cblas_sgemm");
  double t0 = now();
  real(order, ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
  double dt = now() - t0;
  int i = 0;
  while (i < n_entries && !(entries[i].m == m && entries[i].n == n && entries[i].k == k && entries[i].ta == ta &&
                            entries[i].tb == tb))
    ++i;
  if (i == n_entries && n_entries < 64) entries[n_entries++] = (struct Entry){m, n, k, ta, tb, 0, 0};
  if (i < 64) {
    entries[i].seconds += dt;
    entries[i].calls++;
  }
}

__attribute__((destructor)) static void report(void) {
  for (int i = 0; i < n_entries; ++i) {
    const struct Entry* e = &entries[i];
    fprintf(stderr, "GEMMTIMER M=%d N=%d K=%d %c%c calls=%ld mean_ms=%.4f\n", e->m, e->n, e->k,
            e->ta == 112 ? 'T' : 'N', e->tb == 112 ? 'T' : 'N', e->calls, e->seconds / e->calls * 1e3);
  }
}

// gemm_timer: an LD_PRELOAD library that times every cblas_sgemm call of a program and prints,
// at exit, the mean time per call for each shape and transpose variant. It shows how long the
// GEMMs of a training step take inside the step (operands and outputs not warm in cache, other
// work in between) next to bench_gemm's figures for the same products run alone in a loop.
//
//   cc -O2 -shared -fPIC bench/gemm_timer.c -o build-bench/gemm_timer.so -ldl
//   OPENBLAS_NUM_THREADS=2 LD_PRELOAD=build-bench/gemm_timer.so build-bench/bench_tapegrad --threads 2 --only W3
//
// Calls per shape include the warm-up steps; the per-call mean is what to compare.
//
// GEMM_TIMER_PER_STEP=<n> (the number of sgemm calls in one step, 8 for W2/W3) also prints, for each
// position in the step, the median time of that GEMM and of the gap before it (the time since the
// previous sgemm returned: the engine's own work between two products), over every step after the
// first three; the gaps' sum is what the engine adds to the GEMMs. Give the same program a raw
// BLAS sequence (bench_gemm's GEMMSEQ) to see the gaps it has without an engine.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
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

// The timeline for GEMM_TIMER_PER_STEP: start and end of each call, in order.
#define MAX_CALLS 200000
static double call_t0[MAX_CALLS], call_t1[MAX_CALLS];
static struct Entry call_shape[MAX_CALLS];
static long n_calls;

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
  double t1 = now(), dt = t1 - t0;
  if (n_calls < MAX_CALLS) {
    call_t0[n_calls] = t0;
    call_t1[n_calls] = t1;
    call_shape[n_calls++] = (struct Entry){m, n, k, ta, tb, 0, 0};
  }
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

static int cmp_double(const void* a, const void* b) {
  double x = *(const double*)a, y = *(const double*)b;
  return (x > y) - (x < y);
}
static double median(double* v, long n) {
  qsort(v, n, sizeof *v, cmp_double);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static void report_timeline(int per_step) {
  long steps = n_calls / per_step, skip = 3;
  if (per_step <= 0 || steps <= skip) return;
  double* gap = malloc(sizeof(double) * steps);
  double* dur = malloc(sizeof(double) * steps);
  double sum_gap = 0, sum_dur = 0;
  for (int p = 0; p < per_step; ++p) {
    long n = 0;
    for (long s = skip; s < steps; ++s, ++n) {
      long i = s * per_step + p;
      gap[n] = (call_t0[i] - call_t1[i - 1]) * 1e3;
      dur[n] = (call_t1[i] - call_t0[i]) * 1e3;
    }
    const struct Entry* e = &call_shape[skip * per_step + p];
    double g = median(gap, n), d = median(dur, n);
    sum_gap += g;
    sum_dur += d;
    fprintf(stderr, "GEMMSTEP pos=%d M=%d N=%d K=%d %c%c gap_before_ms=%.4f gemm_ms=%.4f\n", p, e->m, e->n, e->k,
            e->ta == 112 ? 'T' : 'N', e->tb == 112 ? 'T' : 'N', g, d);
  }
  fprintf(stderr, "GEMMSTEP steps=%ld sum_gaps_ms=%.4f sum_gemms_ms=%.4f\n", steps - skip, sum_gap, sum_dur);
  free(gap);
  free(dur);
}

__attribute__((destructor)) static void report(void) {
  for (int i = 0; i < n_entries; ++i) {
    const struct Entry* e = &entries[i];
    fprintf(stderr, "GEMMTIMER M=%d N=%d K=%d %c%c calls=%ld mean_ms=%.4f\n", e->m, e->n, e->k,
            e->ta == 112 ? 'T' : 'N', e->tb == 112 ? 'T' : 'N', e->calls, e->seconds / e->calls * 1e3);
  }
  const char* per_step = getenv("GEMM_TIMER_PER_STEP");
  if (per_step) report_timeline(atoi(per_step));
}

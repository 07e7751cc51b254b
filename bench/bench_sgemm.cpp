// bench_sgemm.cpp -- tapegrad's own float32 kernels (ops/sgemm.cpp) against OpenBLAS's cblas_sgemm,
// one product at a time, on the calling thread: the products of W2 and W5 that kernel::sgemm takes
// (sgemm_takes), and W2's two larger ones and W3's, which kernel::sgemm_large runs (it takes them
// where OpenBLAS's kernels are narrower, sgemm_large_takes; timed here either way). Not a workload
// of WORKLOADS.md: it is where the figures in ops/sgemm.cpp come from, and the check when a new CPU
// arrives.
//
// Usage: bench_sgemm [--min-time-ms T]   (run with OPENBLAS_NUM_THREADS=1)
// Each product: 15 samples of at least T ms (default 20) of back-to-back calls, median per call.
// Prints one line per product: SGEMM <name> M= N= K= ta= tb= takes= own_us= blas_us= own_over_blas=
// max_abs_diff= check=ok|FAIL, where takes is small, large (the blocked kernel, where OpenBLAS's
// kernels here are narrower) or blas, and own_us times kernel::sgemm when K ≤ 512 and
// kernel::sgemm_large otherwise; the kernel's C must agree with OpenBLAS's to 1e-3 relative, else
// the program exits non-zero.
//
// ops/sgemm.hpp is private to the library (as tests/test_linalg.cpp uses it): this program links
// the library for kernel::sgemm alone, not its public API.
#include <cblas.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "../engine/blas.hpp"
#include "../engine/tensor.hpp"
#include "../ops/sgemm.hpp"
#include "common.hpp"

namespace {

double g_min_time_ms = 20;

template <class F>
double median_us_per_call(F&& call) {
  call();  // warm: buffers, caches
  std::vector<double> samples;
  for (int s = 0; s < 15; ++s) {
    int n = 0;
    auto t0 = bench::clk::now();
    double ms = 0;
    do {
      call();
      ++n;
      ms = bench::ms_between(t0, bench::clk::now());
    } while (ms < g_min_time_ms);
    samples.push_back(1e3 * ms / n);
  }
  return bench::stats(samples).median;
}

struct Product {
  const char* name;
  size_t M, N, K;
  bool ta, tb;
};

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--min-time-ms" && i + 1 < argc) {
      g_min_time_ms = std::atof(argv[++i]);
    } else {
      std::fprintf(stderr, "bench_sgemm [--min-time-ms T]\n");
      return 2;
    }
  }
  // W2 (784-512-256-10, B = 128): fwd X·W, dW = Xᵀ·dY (TN), dX = dY·Wᵀ (NT). W5 (B = 32, H = 128,
  // vocabulary 64; the input product is a row gather): h·Whh, h·Why and their dh·Whhᵀ,
  // dlogits·Whyᵀ (NT), dWhh = hᵀ·dh, dWhy = hᵀ·dlogits (TN).
  const std::vector<Product> products = {
      {"W2_fwd2", 128, 256, 512, false, false},  {"W2_fwd3", 128, 10, 256, false, false},
      {"W2_dW2", 512, 256, 128, true, false},    {"W2_dW3", 256, 10, 128, true, false},
      {"W2_dX2", 128, 512, 256, false, true},    {"W2_dX3", 128, 256, 10, false, true},
      {"W2_fwd1", 128, 512, 784, false, false},  {"W2_dW1", 784, 512, 128, true, false},
      {"W5_hWhh", 32, 128, 128, false, false},   {"W5_hWhy", 32, 64, 128, false, false},
      {"W5_dhWhhT", 32, 128, 128, false, true},  {"W5_dlWhyT", 32, 128, 64, false, true},
      {"W5_dWhh", 128, 128, 32, true, false},    {"W5_dWhy", 128, 64, 32, true, false},
      {"W3_fwd", 512, 2048, 2048, false, false}, {"W3_dW", 2048, 2048, 512, true, false},
      {"W3_dX", 512, 2048, 2048, false, true},
  };
  std::printf("INFO has_own_kernel=%d l2_bytes=%zu blas_core=%s blas_floats=%d register_floats=%d\n",
              int(tapegrad::kernel::kHasSgemm), tapegrad::kernel::l2_bytes(), tapegrad::blas_core().c_str(),
              tapegrad::detail::blas_float_lanes(),
#if defined(__AVX512F__)
              16
#elif defined(__AVX2__)
              8
#else
              0
#endif
  );
  bool ok = true;
  for (const Product& p : products) {
    std::vector<float> A(p.M * p.K), B(p.K * p.N), C_own(p.M * p.N), C_blas(p.M * p.N);
    bench::fill_uniform(A.data(), A.size(), 1, -1.0, 1.0);
    bench::fill_uniform(B.data(), B.size(), 2, -1.0, 1.0);
    const size_t lda = p.ta ? p.M : p.K, ldb = p.tb ? p.K : p.N;
    // The kernels run every product, taken or not, so that the rules can be judged: the one that
    // takes it, else sgemm where K is within its limit and sgemm_large beyond.
    namespace kernel = tapegrad::kernel;
    const bool runs = kernel::kHasSgemm;
    const char* takes = kernel::sgemm_takes(p.M, p.N, p.K) ? "small"
                        : kernel::sgemm_large_takes(p.M, p.N, p.K, tapegrad::detail::blas_float_lanes()) ? "large"
                                                                                                          : "blas";
    const bool large = std::string(takes) == "large" || (std::string(takes) == "blas" && p.K > kernel::kSgemmMaxK);
    const double own_us = runs ? median_us_per_call([&] {
      if (large)
        kernel::sgemm_large(A.data(), B.data(), C_own.data(), p.M, p.N, p.K, lda, ldb, p.N, p.ta, p.tb, 1.0f, 0.0f);
      else
        kernel::sgemm(A.data(), B.data(), C_own.data(), p.M, p.N, p.K, lda, ldb, p.N, p.ta, p.tb, 1.0f, 0.0f);
    })
                               : 0.0;
    const double blas_us = median_us_per_call([&] {
      cblas_sgemm(CblasRowMajor, p.ta ? CblasTrans : CblasNoTrans, p.tb ? CblasTrans : CblasNoTrans, int(p.M),
                  int(p.N), int(p.K), 1.0f, A.data(), int(lda), B.data(), int(ldb), 0.0f, C_blas.data(), int(p.N));
    });
    double diff = 0, scale = 0;
    if (runs)
      for (size_t i = 0; i < C_own.size(); ++i) {
        diff = std::max(diff, double(std::fabs(C_own[i] - C_blas[i])));
        scale = std::max(scale, double(std::fabs(C_blas[i])));
      }
    const bool good = !runs || diff <= 1e-3 * scale;
    ok &= good;
    std::printf("SGEMM %s M=%zu N=%zu K=%zu ta=%d tb=%d takes=%s own_us=%.2f blas_us=%.2f own_over_blas=%s "
                "max_abs_diff=%.2g check=%s\n",
                p.name, p.M, p.N, p.K, int(p.ta), int(p.tb), takes,
                own_us, blas_us, runs ? std::to_string(own_us / blas_us).substr(0, 5).c_str() : "-", diff,
                good ? "ok" : "FAIL");
  }
  return ok ? 0 : 1;
}

// tapegrad's own float32 product kernel, for the small products that sgemm_takes (ops/sgemm.hpp).
//
// Why not BLAS for these: OpenBLAS packs both operands into its own layout on every call, and for
// W5's products ([32,128]·[128,128] and the like, 64 of each per step) that packing was 13.6 % of
// the step's samples. Here only a panel of 16 columns of op(B) is copied, K×16 floats into one
// contiguous buffer that stays in L1 (read in place, rows of B 512 bytes apart fall into few of
// L1's sets and evict each other; for Bᵀ the copy is an 8×8 transpose in registers), and A is read where
// it lies: a tile of 6 rows of C takes one broadcast of A(i,k) per row and two loads of the panel
// per k, for 12 fused multiply-adds into 12 accumulators (6×2 + 2 + 1 = 15 of the 16 AVX registers).
// Measured alone against OpenBLAS's Haswell kernel at one thread (median of 7) on Zen 5: the six W5
// products 48–50 µs against 52–59 µs, W2's products with K ≤ 512 3–11 % faster, K = 784 2 %
// slower; larger products slower still, and on Zen 3's smaller L2 those whose A and C do not fit
// in it, hence sgemm_takes. Each C(i,j) is summed over k in order, whatever the tile or the block
// of C a thread was given, so a product's value does not depend on the thread count.
#include "sgemm.hpp"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstdint>
#include <vector>

#include <unistd.h>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

namespace tapegrad {
namespace {
thread_local unsigned long long g_sgemm_calls = 0;
}
unsigned long long detail::sgemm_calls() { return g_sgemm_calls; }

size_t kernel::l2_bytes() {
  static const size_t bytes = [] {
    const long l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
    return l2 > 0 ? size_t(l2) : size_t(512) << 10;
  }();
  return bytes;
}

#if defined(__AVX2__) && defined(__FMA__)
namespace {

constexpr size_t kNR = 16;  // columns of C per panel: two AVX vectors
constexpr size_t kMR = 6;   // rows of C per tile

// C[0:R, 0:n] = alpha·Σ_k A(r,k)·P[k, 0:16] + beta·C, for n ≤ 16 (P is zero past column n).
// A(r,k) is at A + r·rsA + k·csA, so that A is read in place whether or not it is transposed.
// The loops over r are unrolled so that the accumulators live in registers, not on the stack.
template <size_t R>
inline void tile(const float* A, size_t rsA, size_t csA, const float* P, size_t K, float* C, size_t ldc, size_t n,
                 float alpha, float beta) {
  __m256 acc[R][2];
#pragma GCC unroll 8
  for (size_t r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
#pragma GCC unroll 2
  for (size_t k = 0; k < K; ++k) {
    const __m256 b0 = _mm256_load_ps(P + k * kNR), b1 = _mm256_load_ps(P + k * kNR + 8);
#pragma GCC unroll 8
    for (size_t r = 0; r < R; ++r) {
      const __m256 a = _mm256_broadcast_ss(A + r * rsA + k * csA);
      acc[r][0] = _mm256_fmadd_ps(a, b0, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(a, b1, acc[r][1]);
    }
  }
  const __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);
#pragma GCC unroll 8
  for (size_t r = 0; r < R; ++r) {
    acc[r][0] = _mm256_mul_ps(va, acc[r][0]);
    acc[r][1] = _mm256_mul_ps(va, acc[r][1]);
  }
  if (n == kNR) {
#pragma GCC unroll 8
    for (size_t r = 0; r < R; ++r) {
      float* c = C + r * ldc;
      if (beta != 0.0f) {  // beta = 0 must not read C: it may hold anything, NaN included
        acc[r][0] = _mm256_fmadd_ps(vb, _mm256_loadu_ps(c), acc[r][0]);
        acc[r][1] = _mm256_fmadd_ps(vb, _mm256_loadu_ps(c + 8), acc[r][1]);
      }
      _mm256_storeu_ps(c, acc[r][0]);
      _mm256_storeu_ps(c + 8, acc[r][1]);
    }
    return;
  }
  alignas(32) float part[R][kNR];  // the last panel of a C whose width is not a multiple of 16
#pragma GCC unroll 8
  for (size_t r = 0; r < R; ++r) {
    _mm256_store_ps(part[r], acc[r][0]);
    _mm256_store_ps(part[r] + 8, acc[r][1]);
  }
  for (size_t r = 0; r < R; ++r)  // std::fma: rounded as the full panels' fmadd, so no entry depends on its panel
    for (size_t j = 0; j < n; ++j) C[r * ldc + j] = beta != 0.0f ? std::fma(beta, C[r * ldc + j], part[r][j]) : part[r][j];
}

// All M rows of C against one panel: tiles of 6 rows, then one of the 1–5 left.
void panel_rows(const float* A, size_t rsA, size_t csA, const float* P, size_t K, float* C, size_t ldc, size_t M,
                size_t n, float alpha, float beta) {
  size_t i = 0;
  for (; i + kMR <= M; i += kMR) tile<kMR>(A + i * rsA, rsA, csA, P, K, C + i * ldc, ldc, n, alpha, beta);
  const float* a = A + i * rsA;
  float* c = C + i * ldc;
  switch (M - i) {
    case 5: tile<5>(a, rsA, csA, P, K, c, ldc, n, alpha, beta); break;
    case 4: tile<4>(a, rsA, csA, P, K, c, ldc, n, alpha, beta); break;
    case 3: tile<3>(a, rsA, csA, P, K, c, ldc, n, alpha, beta); break;
    case 2: tile<2>(a, rsA, csA, P, K, c, ldc, n, alpha, beta); break;
    case 1: tile<1>(a, rsA, csA, P, K, c, ldc, n, alpha, beta); break;
    default: break;
  }
}

// P[k, c] = B[c, k] for c < 8, k < 8: eight rows of Bᵀ's 8×8 block become eight panel rows.
inline void transpose8(const float* B, size_t ldb, float* P) {
  __m256 r[8], t[8], s[8];
  for (size_t c = 0; c < 8; ++c) r[c] = _mm256_loadu_ps(B + c * ldb);
  for (size_t c = 0; c < 8; c += 2) {
    t[c] = _mm256_unpacklo_ps(r[c], r[c + 1]);
    t[c + 1] = _mm256_unpackhi_ps(r[c], r[c + 1]);
  }
  for (size_t c = 0; c < 8; c += 4) {
    s[c] = _mm256_shuffle_ps(t[c], t[c + 2], 0x44);
    s[c + 1] = _mm256_shuffle_ps(t[c], t[c + 2], 0xEE);
    s[c + 2] = _mm256_shuffle_ps(t[c + 1], t[c + 3], 0x44);
    s[c + 3] = _mm256_shuffle_ps(t[c + 1], t[c + 3], 0xEE);
  }
  for (size_t k = 0; k < 4; ++k) {
    _mm256_store_ps(P + k * kNR, _mm256_permute2f128_ps(s[k], s[k + 4], 0x20));
    _mm256_store_ps(P + (k + 4) * kNR, _mm256_permute2f128_ps(s[k], s[k + 4], 0x31));
  }
}

// P[k, c] = op(B)(k, j + c) for c < n, and 0 for n ≤ c < 16.
void pack_panel(const float* B, size_t ldb, bool tb, size_t K, size_t j, size_t n, float* P) {
  if (!tb) {  // op(B)(k, j+c) = B[k·ldb + j + c]: a row of the panel is a piece of a row of B
    for (size_t k = 0; k < K; ++k) {
      const float* b = B + k * ldb + j;
      if (n == kNR) {
        _mm256_store_ps(P + k * kNR, _mm256_loadu_ps(b));
        _mm256_store_ps(P + k * kNR + 8, _mm256_loadu_ps(b + 8));
      } else {
        for (size_t c = 0; c < kNR; ++c) P[k * kNR + c] = c < n ? b[c] : 0.0f;
      }
    }
    return;
  }
  size_t k = 0;  // op(B)(k, j+c) = B[(j+c)·ldb + k]: a column of the panel is a piece of a row of B
  if (n == kNR)
    for (; k + 8 <= K; k += 8) {
      transpose8(B + j * ldb + k, ldb, P + k * kNR);
      transpose8(B + (j + 8) * ldb + k, ldb, P + k * kNR + 8);
    }
  for (; k < K; ++k)
    for (size_t c = 0; c < kNR; ++c) P[k * kNR + c] = c < n ? B[(j + c) * ldb + k] : 0.0f;
}

}  // namespace

void kernel::sgemm(const float* A, const float* B, float* C, size_t M, size_t N, size_t K, size_t lda, size_t ldb,
                   size_t ldc, bool ta, bool tb, float alpha, float beta) {
  assert(K <= kSgemmMaxK);
  thread_local std::vector<float> buffer;  // one panel, 32-byte aligned inside
  if (buffer.size() < kSgemmMaxK * kNR + 8) buffer.resize(kSgemmMaxK * kNR + 8);
  auto addr = reinterpret_cast<std::uintptr_t>(buffer.data());
  float* P = buffer.data() + ((32 - addr % 32) % 32) / sizeof(float);
  const size_t rsA = ta ? 1 : lda, csA = ta ? lda : 1;  // A(i,k) = A[i·rsA + k·csA]
  for (size_t j = 0; j < N; j += kNR) {
    const size_t n = std::min(kNR, N - j);
    pack_panel(B, ldb, tb, K, j, n, P);
    panel_rows(A, rsA, csA, P, K, C + j, ldc, M, n, alpha, beta);
  }
  ++g_sgemm_calls;
}

#else  // kHasSgemm is false: gemm never calls this

void kernel::sgemm(const float*, const float*, float*, size_t, size_t, size_t, size_t, size_t, size_t, bool, bool,
                   float, float) {
  assert(false);
}

#endif
}  // namespace tapegrad

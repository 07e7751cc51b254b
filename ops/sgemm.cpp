// tapegrad's own float32 product kernel, for the small products that sgemm_takes (ops/sgemm.hpp),
// and the same tiles blocked for the caches (sgemm_large, below) for large products where
// OpenBLAS's kernels are narrower than this build's (sgemm_large_takes).
//
// Why not BLAS for these: OpenBLAS packs both operands into its own layout on every call, and for
// W5's products ([32,128]·[128,128] and the like, 64 of each per step) that packing was 13.6 % of
// the step's samples. Here only a panel of two registers' width of op(B) is copied (16 columns on
// AVX2, 32 on AVX-512), K rows of it into one contiguous buffer (read in place, rows of B 512 bytes
// apart fall into few of L1's sets and evict each other, but on Zen 4, below; for Bᵀ the copy is
// 8×8 transposes in registers), and A is read where it lies: a tile of R rows of C takes one
// broadcast of A(i,k) per row and two loads of the panel per k, for 2·R fused multiply-adds into as
// many accumulators (AVX2: 6 rows, 12 + 2 + 1 of the 16 registers; AVX-512: 12 rows, 24 + 2 of the
// 32, or 8 on Zen 4).
// Measured alone against OpenBLAS at one thread (bench/bench_sgemm, medians):
// - AVX2 on Zen 5 (Haswell kernels): the six W5 products 48–50 µs against 52–59 µs, W2's products
//   with K ≤ 512 3–11 % faster, K = 784 2 % slower; larger products slower still, and on Zen 3's
//   smaller L2 those whose A and C do not fit in it, hence sgemm_takes.
// - On an AVX-512 Xeon (SkylakeX kernels) the AVX2 tile ran 1.1–1.6× OpenBLAS's time but for the
//   NT products; the 12×32 tile: W2's 128×256×512 203 against 252 µs, 512×256×128 (TN) 215
//   against 241, 128×512×256 (NT) 205 against 261; W5's 32×128×128 7.2 against 9.2 (NN) and 14.1
//   (NT), 128×128×32 (TN) 6.9–7.7 against 6.6–7.3 (three runs). It loses on W2's 256×10×128 (TN),
//   10.5 against 7.5: one register of 10 columns, one broadcast per multiply-add. 14 rows spill
//   the accumulators (2× slower); 8 rows 2–5 % slower than 12.
// - On Zen 4 (AVX-512 on 256-bit units; OpenBLAS's Cooperlake kernels, whose NN products of W5's
//   size take its unpacked "direct" path) the 12-row tile took 10.3–11.0 µs for W5's NN and TN
//   products with 128 columns, where OpenBLAS took 9.2–9.8, and 5.2–5.5 for the 64-column ones,
//   where it took 4.6–4.8. 8-row tiles (hot, alone: 116.6 against 111.9 GFLOP/s) that read a full
//   panel of an untransposed B in place: 9.2–10.0 and 4.6–5.0 µs, the NT products unchanged
//   (10.1–10.2 against OpenBLAS's 13.3), W2's products with 256 and 512 columns 0.87–0.89× of
//   OpenBLAS's time (were 0.90–0.97); W5's step about 3 % faster. Reading B in place on the AVX2
//   tile (one cache line per panel row) made W2's products 11–15 % slower there, and the Xeons were
//   measured with the packed 12-row tile only: so only an AMD core with AVX-512 reads B in place
//   (sgemm_layout).
// Each C(i,j) is summed over k in order, whatever the tile or the block of C a thread was given,
// so a product's value does not depend on the thread count (nor on the register width).
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

// One SIMD register of floats: AVX-512's 16 where the build has it (-march=native on such a CPU),
// else AVX2's 8. The kernel below is written once against these few operations.
#if defined(__AVX512F__)
using vec = __m512;
constexpr size_t kW = 16;
inline vec vzero() { return _mm512_setzero_ps(); }
inline vec vset1(float x) { return _mm512_set1_ps(x); }
inline vec vload(const float* p) { return _mm512_load_ps(p); }
inline vec vloadu(const float* p) { return _mm512_loadu_ps(p); }
inline void vstore(float* p, vec v) { _mm512_store_ps(p, v); }
inline void vstoreu(float* p, vec v) { _mm512_storeu_ps(p, v); }
inline vec vfmadd(vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); }
inline vec vmul(vec a, vec b) { return _mm512_mul_ps(a, b); }
constexpr size_t kMR = 12;  // rows of C per tile: 12×2 accumulators + 2 panel vectors of the 32 registers
#else
using vec = __m256;
constexpr size_t kW = 8;
inline vec vzero() { return _mm256_setzero_ps(); }
inline vec vset1(float x) { return _mm256_set1_ps(x); }
inline vec vload(const float* p) { return _mm256_load_ps(p); }
inline vec vloadu(const float* p) { return _mm256_loadu_ps(p); }
inline void vstore(float* p, vec v) { _mm256_store_ps(p, v); }
inline void vstoreu(float* p, vec v) { _mm256_storeu_ps(p, v); }
inline vec vfmadd(vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); }
inline vec vmul(vec a, vec b) { return _mm256_mul_ps(a, b); }
constexpr size_t kMR = 6;  // rows of C per tile: 6×2 accumulators + 2 panel vectors + 1 of A, of the 16
#endif
constexpr size_t kNR = 2 * kW;  // columns of C per panel: two registers

// C[0:R, 0:n] = alpha·Σ_k A(r,k)·P[k·ldp, 0:n] + beta·C, for n ≤ V·kW (P is zero past column n) and a
// panel of V = 1 or 2 registers (1: the last panel of a C narrower than half a panel, as W2's 10).
// A(r,k) is at A + r·rsA + k·csA, so that A is read in place whether or not it is transposed; P is
// the packed panel (ldp = kNR) or B itself (ldp = ldb).
// The loops over r are unrolled so that the accumulators live in registers, not on the stack.
template <size_t R, size_t V, size_t PackedA = 0>
inline void tile(const float* A, size_t rsA, size_t csA, const float* P, size_t ldp, size_t K, float* C, size_t ldc,
                 size_t n, float alpha, float beta) {
  if constexpr (PackedA > 0) {  // A packed by pack_a: known strides, so each broadcast is at a fixed offset
    rsA = 1;
    csA = PackedA;
  }
  vec acc[R][V];
#pragma GCC unroll 12
  for (size_t r = 0; r < R; ++r)
    for (size_t v = 0; v < V; ++v) acc[r][v] = vzero();
#pragma GCC unroll 2
  for (size_t k = 0; k < K; ++k) {
    vec b[V];
    for (size_t v = 0; v < V; ++v) b[v] = vloadu(P + k * ldp + v * kW);
#pragma GCC unroll 12
    for (size_t r = 0; r < R; ++r) {
      const vec a = vset1(A[r * rsA + k * csA]);
      for (size_t v = 0; v < V; ++v) acc[r][v] = vfmadd(a, b[v], acc[r][v]);
    }
  }
  const vec va = vset1(alpha), vb = vset1(beta);
#pragma GCC unroll 12
  for (size_t r = 0; r < R; ++r)
    for (size_t v = 0; v < V; ++v) acc[r][v] = vmul(va, acc[r][v]);
  if (n == V * kW) {
#pragma GCC unroll 12
    for (size_t r = 0; r < R; ++r) {
      float* c = C + r * ldc;
      for (size_t v = 0; v < V; ++v) {
        if (beta != 0.0f) acc[r][v] = vfmadd(vb, vloadu(c + v * kW), acc[r][v]);  // beta = 0 must not read C: it may hold NaN
        vstoreu(c + v * kW, acc[r][v]);
      }
    }
    return;
  }
  alignas(64) float part[R][V * kW];  // the last panel of a C whose width is not a multiple of the panel's
#pragma GCC unroll 12
  for (size_t r = 0; r < R; ++r)
    for (size_t v = 0; v < V; ++v) vstore(part[r] + v * kW, acc[r][v]);
  for (size_t r = 0; r < R; ++r)  // std::fma: rounded as the full panels' fmadd, so no entry depends on its panel
    for (size_t j = 0; j < n; ++j) C[r * ldc + j] = beta != 0.0f ? std::fma(beta, C[r * ldc + j], part[r][j]) : part[r][j];
}

// The tile of the last R rows (R < MR): tile<R, V> by a search over R made at compile time.
template <size_t V, size_t R, size_t PackedA = 0>
inline void tile_rest(size_t rows, const float* A, size_t rsA, size_t csA, const float* P, size_t ldp, size_t K,
                      float* C, size_t ldc, size_t n, float alpha, float beta) {
  if constexpr (R > 0) {
    if (rows == R) return tile<R, V, PackedA>(A, rsA, csA, P, ldp, K, C, ldc, n, alpha, beta);
    tile_rest<V, R - 1, PackedA>(rows, A, rsA, csA, P, ldp, K, C, ldc, n, alpha, beta);
  }
}

// All M rows of C against one panel: tiles of MR rows, then one of the rest. Row i of A starts at
// A + i·rsA, or for A packed by pack_a (PackedA = MR) its micro-panel at A + i·K.
template <size_t V, size_t MR, size_t PackedA = 0>
void panel_rows(const float* A, size_t rsA, size_t csA, const float* P, size_t ldp, size_t K, float* C, size_t ldc,
                size_t M, size_t n, float alpha, float beta) {
  const size_t step = PackedA > 0 ? K : rsA;
  size_t i = 0;
  for (; i + MR <= M; i += MR) tile<MR, V, PackedA>(A + i * step, rsA, csA, P, ldp, K, C + i * ldc, ldc, n, alpha, beta);
  tile_rest<V, MR - 1, PackedA>(M - i, A + i * step, rsA, csA, P, ldp, K, C + i * ldc, ldc, n, alpha, beta);
}

// `floats` floats of v, from a 64-byte boundary (a thread's buffer, grown as needed).
float* aligned_floats(std::vector<float>& v, size_t floats) {
  if (v.size() < floats + 16) v.resize(floats + 16);
  auto addr = reinterpret_cast<std::uintptr_t>(v.data());
  return v.data() + ((64 - addr % 64) % 64) / sizeof(float);
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

// P[k, c] = op(B)(k, j + c) for c < n, and 0 for n ≤ c < kNR.
void pack_panel(const float* B, size_t ldb, bool tb, size_t K, size_t j, size_t n, float* P) {
  if (!tb) {  // op(B)(k, j+c) = B[k·ldb + j + c]: a row of the panel is a piece of a row of B
    for (size_t k = 0; k < K; ++k) {
      const float* b = B + k * ldb + j;
      if (n == kNR) {
        for (size_t v = 0; v < 2; ++v) vstore(P + k * kNR + v * kW, vloadu(b + v * kW));
      } else {
        for (size_t c = 0; c < kNR; ++c) P[k * kNR + c] = c < n ? b[c] : 0.0f;
      }
    }
    return;
  }
  size_t k = 0;  // op(B)(k, j+c) = B[(j+c)·ldb + k]: a column of the panel is a piece of a row of B
  if (n == kNR)
    for (; k + 8 <= K; k += 8)
      for (size_t c = 0; c < kNR; c += 8) transpose8(B + (j + c) * ldb + k, ldb, P + k * kNR + c);
  for (; k < K; ++k)
    for (size_t c = 0; c < kNR; ++c) P[k * kNR + c] = c < n ? B[(j + c) * ldb + k] : 0.0f;
}

// Every panel of C: op(B)'s columns j.. packed into P, or read in place when the layout says so
// and the panel is a full one of an untransposed B (its rows are then kNR contiguous floats of B's).
template <size_t MR>
void panels(const float* A, size_t rsA, size_t csA, const float* B, size_t ldb, bool tb, float* P, float* C,
            size_t ldc, size_t M, size_t N, size_t K, bool b_in_place, float alpha, float beta) {
  for (size_t j = 0; j < N; j += kNR) {
    const size_t n = std::min(kNR, N - j);
    const bool in_place = b_in_place && !tb && n == kNR;
    if (!in_place) pack_panel(B, ldb, tb, K, j, n, P);
    const float* Pj = in_place ? B + j : P;
    const size_t ldp = in_place ? ldb : kNR;
    if (n <= kW)
      panel_rows<1, MR>(A, rsA, csA, Pj, ldp, K, C + j, ldc, M, n, alpha, beta);
    else
      panel_rows<2, MR>(A, rsA, csA, Pj, ldp, K, C + j, ldc, M, n, alpha, beta);
  }
}

// ---- large products: blocked ---------------------------------------------------------------------
// Blocks of op(A) and op(B) are packed so that every tile reads both contiguously: op(B) in blocks
// of kKC rows by up to kNC columns, as panels of kNR columns (one panel, kKC×kNR floats, stays near
// while the tiles of a block of A pass over it), and op(A) in blocks of kMC rows by kKC, as
// micro-panels of kMR rows stored k-major (a block, 288 KB on AVX-512, stays in L2). C is summed
// over one block of k at a time (beta on the first, 1 after), so each C(i,j) is summed in the order
// of k, in the same blocks whichever block of C a thread was given. On the Zen 5 VM (6 Dec 2026, one
// thread, bench/bench_sgemm): W3's 512×2048×2048 NN and NT and
// 2048×2048×512 TN at 177-213 GFLOP/s, W2's 128×512×784 and 784×512×128 at 186-215, where
// OpenBLAS's Haswell kernels ran 89-101 and its SkylakeX ones 200. kKC 256 and 384 ran 5-15 %
// slower; kMC from 8 to 24 micro-panels within the noise.
constexpr size_t kKC = kernel::kSgemmMaxK;
constexpr size_t kMC = 12 * kMR;
constexpr size_t kNC = 2048;

// Ap[p·kMR·kc + k·kMR + r] = op(A)(i + p·kMR + r, k0 + k) for the m rows from i (the last
// micro-panel's missing rows are left as they are: tile_rest never reads them).
void pack_a(const float* A, size_t lda, bool ta, size_t i, size_t m, size_t k0, size_t kc, float* Ap) {
  for (size_t p = 0; p < m; p += kMR) {
    const size_t rows = std::min(kMR, m - p);
    float* dst = Ap + p * kc;
    if (ta)  // op(A)(i, k) = A[k·lda + i]: a micro-panel's k-th row is a piece of A's row k
      for (size_t k = 0; k < kc; ++k)
        for (size_t r = 0; r < rows; ++r) dst[k * kMR + r] = A[(k0 + k) * lda + i + p + r];
    else  // op(A)(i, k) = A[i·lda + k]: row by row, each read in order
      for (size_t r = 0; r < rows; ++r) {
        const float* a = A + (i + p + r) * lda + k0;
        for (size_t k = 0; k < kc; ++k) dst[k * kMR + r] = a[k];
      }
  }
}

void sgemm_blocked(const float* A, const float* B, float* C, size_t M, size_t N, size_t K, size_t lda, size_t ldb,
                   size_t ldc, bool ta, bool tb, float alpha, float beta) {
  thread_local std::vector<float> a_buffer, b_buffer;  // at most 288 KB and 4 MB on AVX-512
  float* Ap = aligned_floats(a_buffer, kMC * kKC);
  float* Bp = aligned_floats(b_buffer, kKC * ((std::min(kNC, N) + kNR - 1) / kNR * kNR));
  for (size_t j0 = 0; j0 < N; j0 += kNC) {
    const size_t nc = std::min(kNC, N - j0);
    for (size_t k0 = 0; k0 < K; k0 += kKC) {
      const size_t kc = std::min(kKC, K - k0);
      const float b_k = k0 == 0 ? beta : 1.0f;  // later blocks of k add to the first's
      const float* Bk = tb ? B + k0 : B + k0 * ldb;
      for (size_t j = 0; j < nc; j += kNR) pack_panel(Bk, ldb, tb, kc, j0 + j, std::min(kNR, nc - j), Bp + j * kc);
      for (size_t i0 = 0; i0 < M; i0 += kMC) {
        const size_t mc = std::min(kMC, M - i0);
        pack_a(A, lda, ta, i0, mc, k0, kc, Ap);
        for (size_t j = 0; j < nc; j += kNR) {
          const size_t n = std::min(kNR, nc - j);
          float* Cj = C + i0 * ldc + j0 + j;
          if (n <= kW)
            panel_rows<1, kMR, kMR>(Ap, 1, kMR, Bp + j * kc, kNR, kc, Cj, ldc, mc, n, alpha, b_k);
          else
            panel_rows<2, kMR, kMR>(Ap, 1, kMR, Bp + j * kc, kNR, kc, Cj, ldc, mc, n, alpha, b_k);
        }
      }
    }
  }
}

}  // namespace

void kernel::sgemm_large(const float* A, const float* B, float* C, size_t M, size_t N, size_t K, size_t lda,
                         size_t ldb, size_t ldc, bool ta, bool tb, float alpha, float beta) {
  sgemm_blocked(A, B, C, M, N, K, lda, ldb, ldc, ta, tb, alpha, beta);
  ++g_sgemm_calls;
}

std::vector<kernel::SgemmLayout> kernel::sgemm_layouts() {
#if defined(__AVX512F__)
  return {{kMR, false}, {8, true}};
#else
  return {{kMR, false}};
#endif
}

kernel::SgemmLayout kernel::sgemm_layout() {
  static const SgemmLayout layout = [] {
#if defined(__AVX512F__)
    if (__builtin_cpu_is("amd")) return SgemmLayout{8, true};  // Zen 4: the figures at the top
#endif
    return sgemm_layouts().front();
  }();
  return layout;
}

void kernel::sgemm(const float* A, const float* B, float* C, size_t M, size_t N, size_t K, size_t lda, size_t ldb,
                   size_t ldc, bool ta, bool tb, float alpha, float beta, SgemmLayout layout) {
  assert(K <= kSgemmMaxK);
  assert(layout.rows == kMR || (kW == 16 && layout.rows == 8));
  thread_local std::vector<float> buffer;  // one panel
  float* P = aligned_floats(buffer, kSgemmMaxK * kNR);
  const size_t rsA = ta ? 1 : lda, csA = ta ? lda : 1;  // A(i,k) = A[i·rsA + k·csA]
#if defined(__AVX512F__)
  if (layout.rows == 8)
    panels<8>(A, rsA, csA, B, ldb, tb, P, C, ldc, M, N, K, layout.b_in_place, alpha, beta);
  else
#endif
    panels<kMR>(A, rsA, csA, B, ldb, tb, P, C, ldc, M, N, K, layout.b_in_place, alpha, beta);
  ++g_sgemm_calls;
}

#else  // kHasSgemm is false: gemm never calls this

void kernel::sgemm_large(const float*, const float*, float*, size_t, size_t, size_t, size_t, size_t, size_t, bool,
                         bool, float, float) {
  assert(false);
}
std::vector<kernel::SgemmLayout> kernel::sgemm_layouts() { return {}; }
kernel::SgemmLayout kernel::sgemm_layout() { return {0, false}; }
void kernel::sgemm(const float*, const float*, float*, size_t, size_t, size_t, size_t, size_t, size_t, bool, bool,
                   float, float, SgemmLayout) {
  assert(false);
}

#endif
}  // namespace tapegrad

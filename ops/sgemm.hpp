#pragma once
// tapegrad's own float32 product kernel, for small products (ops/sgemm.cpp says why).
// ops/linalg.cpp's gemm is its only caller in the library; tests call it directly and through mm.
#include <cstddef>
#include <vector>

namespace tapegrad {
namespace kernel {

#if defined(__AVX2__) && defined(__FMA__)
constexpr bool kHasSgemm = true;
#else
constexpr bool kHasSgemm = false;  // no AVX2 and FMA in this build: BLAS runs every product
#endif
// Floats in one of the kernel's vector registers: 16 where the build has AVX-512, else 8.
#if defined(__AVX512F__)
constexpr int kSgemmLanes = 16;
#else
constexpr int kSgemmLanes = 8;
#endif

// The L2 cache of one core, in bytes, as the C library reports it (sysconf), or 512 KiB when it
// does not say; read once.
size_t l2_bytes();

// Whether sgemm takes a product of these sizes: K ≤ 512, so that a panel of op(B), K×16 floats
// (K×32 on AVX-512), stays in L1 (the widest, 64 KB, in L2 on a 48 KB L1: 0.81× OpenBLAS's time
// still); and A and C together in the core's L2 (l2), since every panel passes over all of A and C
// is written a panel's columns at a time; and at most M·K ≤ 65,536 (256 KB of A) and
// M·N ≤ 131,072 (512 KB of C), the largest measured, on a 1 MiB L2. Larger products are what
// BLAS's cache blocking is for. Measured alone at one thread: W3's dW, 2048×2048×512, 25 % slower
// on a 1 MiB L2; 512×2048×10 (W3's last dX) and 1024×1024×16 2–2.5× slower; on a 512 KiB L2
// (Zen 3), W2's dW 512×256×128 (A 256 KB + C 512 KB) 25 % slower, where the products whose A and C
// fit ran 0.54–1.02× OpenBLAS's time. gemm decides by the whole product, so every block of it at 2
// threads runs on the same kernel.
constexpr size_t kSgemmMaxK = 512;
inline bool sgemm_takes(size_t M, size_t N, size_t K, size_t l2 = l2_bytes()) {
  return kHasSgemm && K <= kSgemmMaxK && M * K <= 65536 && M * N <= 131072 && sizeof(float) * (M * K + M * N) <= l2;
}

// How the kernel lays out its work: rows of C per register tile, and whether a full panel of an
// untransposed B is read where it lies rather than copied first. Which is faster depends on the
// core (ops/sgemm.cpp has the figures); the value of C does not, as every C(i,j) is summed over k
// in the same order either way.
struct SgemmLayout {
  size_t rows;
  bool b_in_place;
};
// The layouts this build has: {6, copy} on AVX2; {12, copy} and {8, in place} on AVX-512.
std::vector<SgemmLayout> sgemm_layouts();
// The one for this CPU, chosen once: {8, in place} on an AMD core with AVX-512, else the first.
SgemmLayout sgemm_layout();

// C[M,N] = alpha·op(A)·op(B) + beta·C, row-major with row strides lda, ldb, ldc, as cblas_sgemm;
// C is not read when beta = 0. Only for K ≤ kSgemmMaxK (asserted), in a build with kHasSgemm, and
// a layout of sgemm_layouts().
void sgemm(const float* A, const float* B, float* C, size_t M, size_t N, size_t K, size_t lda, size_t ldb,
           size_t ldc, bool ta, bool tb, float alpha, float beta, SgemmLayout layout = sgemm_layout());

// Whether sgemm_large takes a product that sgemm does not: when OpenBLAS's kernels have narrower
// registers than this build's (blas_lanes, detail::blas_float_lanes()), as where OpenBLAS falls back
// to SSE3 on a CPU it does not know, or where OPENBLAS_CORETYPE=Haswell is set on an AVX-512 CPU
// (the Zen 5 VM of 6 Dec 2026: OpenBLAS's W3 products at 98-101 GFLOP/s, sgemm_large's at 177-213,
// OpenBLAS's own AVX-512 ones, SkylakeX, at 200), and when C has a panel's worth of columns and the
// sum at least 64 terms: on 512×2048×10 (K = 10) it took 1.8× OpenBLAS's time, packing for little.
inline bool sgemm_large_takes(size_t M, size_t N, size_t K, int blas_lanes) {
  return kHasSgemm && kSgemmLanes > blas_lanes && M >= 16 && N >= 2 * size_t(kSgemmLanes) && K >= 64;
}

// The same for products of any size, blocked for the caches (ops/sgemm.cpp): blocks of 512 k's,
// so each C(i,j) is rounded once per block rather than once.
void sgemm_large(const float* A, const float* B, float* C, size_t M, size_t N, size_t K, size_t lda, size_t ldb,
                 size_t ldc, bool ta, bool tb, float alpha, float beta);

}  // namespace kernel

namespace detail {
// Products run by kernel::sgemm on this thread so far (tests: which kernel ran a product).
unsigned long long sgemm_calls();

// Whether a product on tapegrad's kernels large enough to be cut among the threads is cut:
// measured per shape (the default: after its first 64 calls, which are cut, a few run whole and a
// few cut, timed, and the faster way is kept for 4096 calls, then timed again; none while the
// helpers are far; ops/linalg.cpp says why), always, or never. Process-wide; tests set it to count
// the cuts.
enum class ProductCut { measure, always, never };
void set_product_cut(ProductCut policy);
// The shapes this thread has looked up to time their cut (tests: none while the helpers are far).
size_t cut_shapes();
}  // namespace detail
}  // namespace tapegrad

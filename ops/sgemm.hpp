#pragma once
// tapegrad's own float32 product kernel, for the products whose inner dimension is short
// (ops/sgemm.cpp says why). ops/linalg.cpp's gemm is its only caller; tests reach it through mm.
#include <cstddef>

namespace tapegrad {
namespace kernel {

// The longest inner dimension K given to sgemm: its panel of op(B), K×16 floats, stays in L1.
constexpr size_t kSgemmMaxK = 512;

// C[M,N] = alpha·op(A)·op(B) + beta·C, row-major with row strides lda, ldb, ldc, as cblas_sgemm;
// C is not read when beta = 0. Returns false, having done nothing, when this build has no AVX2
// and FMA (then BLAS runs the product) or K > kSgemmMaxK.
bool sgemm(const float* A, const float* B, float* C, size_t M, size_t N, size_t K, size_t lda, size_t ldb,
           size_t ldc, bool ta, bool tb, float alpha, float beta);

}  // namespace kernel

namespace detail {
// Products run by kernel::sgemm on this thread so far (tests: which kernel ran a product).
unsigned long long sgemm_calls();
}  // namespace detail
}  // namespace tapegrad

#pragma once
// Which kernels OpenBLAS runs on, and the one way that choice goes wrong: OpenBLAS picks its kernels
// per CPU model at load time, and a release older than the CPU does not know its model and falls
// back to "Prescott", its SSE3 kernels. Debian 12's OpenBLAS 0.3.21 does that on Intel's CPU model
// 207 (an AVX-512 Xeon): sgemm of W3's products ran at 20–31 GFLOP/s on one core there, against
// 104–121 with OPENBLAS_CORETYPE=SkylakeX (bench/HISTORY.md, 3 Dec 2026). OpenBLAS reads that
// variable only when it is loaded, so tapegrad cannot change it from inside the program; it says so
// once (warn_if_blas_fallback), and its scripts set it (scripts/openblas-coretype).
#include <string>
#include <string_view>

namespace tapegrad::detail {

// The OPENBLAS_CORETYPE to suggest for OpenBLAS's pick `core` on a CPU with these features:
// "SkylakeX" (AVX-512) or "Haswell" (AVX2 and FMA) when core is OpenBLAS's fallback, "Prescott";
// "" when the pick is not the fallback, or the CPU has nothing better.
std::string blas_coretype_advice(std::string_view core, bool avx2_fma, bool avx512);

// How many floats one vector register of OpenBLAS's kernels for `core` holds: 4 for its SSE kernels
// (Prescott, Nehalem, ...), 8 for the AVX ones (Haswell, Zen, Sandybridge, Bulldozer's family),
// else 16 (SkylakeX, Cooperlake, SapphireRapids, and any name this list does not know: assume the
// best). blas_float_lanes() is that of the kernels in use, read once.
int blas_float_lanes(std::string_view core);
int blas_float_lanes();

// Once per process, on stderr, when OpenBLAS runs its fallback kernels on a CPU that has better
// ones: what it costs and which OPENBLAS_CORETYPE to set. Silent with TAPEGRAD_NO_BLAS_WARNING=1.
void warn_if_blas_fallback();

}  // namespace tapegrad::detail

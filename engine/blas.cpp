#include "blas.hpp"

#include <cstdio>
#include <cstdlib>
#include <mutex>

#include "tensor.hpp"

extern "C" char* openblas_get_corename(void);

namespace tapegrad {

std::string blas_core() {
  const char* name = openblas_get_corename();
  return name ? name : "";
}

namespace detail {

std::string blas_coretype_advice(std::string_view core, bool avx2_fma, bool avx512) {
  if (core != "Prescott") return "";
  if (avx512) return "SkylakeX";
  return avx2_fma ? "Haswell" : "";
}

int blas_float_lanes(std::string_view core) {
  for (std::string_view sse : {"Prescott", "Core2", "Penryn", "Dunnington", "Nehalem", "Atom", "Opteron",
                               "Opteron_SSE3", "Barcelona", "Nano", "Katmai", "Coppermine", "Northwood"})
    if (core == sse) return 4;
  for (std::string_view avx : {"Sandybridge", "Haswell", "Zen", "Bulldozer", "Piledriver", "Steamroller", "Excavator"})
    if (core == avx) return 8;
  return 16;
}

int blas_float_lanes() {
  static const int lanes = blas_float_lanes(blas_core());
  return lanes;
}

void warn_if_blas_fallback() {
  static std::once_flag once;
  std::call_once(once, [] {
    const char* quiet = std::getenv("TAPEGRAD_NO_BLAS_WARNING");
    if (quiet && *quiet && std::string_view(quiet) != "0") return;
#if defined(__x86_64__) || defined(__i386__)
    const bool avx2_fma = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    const bool avx512 = __builtin_cpu_supports("avx512f");
#else
    const bool avx2_fma = false, avx512 = false;
#endif
    const std::string core = blas_core(), advice = blas_coretype_advice(core, avx2_fma, avx512);
    if (advice.empty()) return;
    std::fprintf(stderr,
                 "tapegrad: OpenBLAS runs its %s kernels (SSE3), the fallback for a CPU it does not know, on a "
                 "CPU with %s; its large matrix products run several times slower than they could (3-6x, "
                 "measured on an AVX-512 Xeon). Start the program with OPENBLAS_CORETYPE=%s in its environment "
                 "(OpenBLAS reads it only at load; tapegrad's scripts set it). TAPEGRAD_NO_BLAS_WARNING=1 "
                 "silences this.\n",
                 core.c_str(), avx512 ? "AVX-512" : "AVX2", advice.c_str());
  });
}

}  // namespace detail
}  // namespace tapegrad

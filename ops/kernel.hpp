#pragma once
// Private to ops/: xtensor views over tensor data, and the checks every op shares.
#include <xtensor/xadapt.hpp>
#include <xtensor/xarray.hpp>
#include <xtensor/xmath.hpp>
#include <xtensor/xnoalias.hpp>

#include <unistd.h>

#include <algorithm>
#include <cstring>
#if defined(__SSE2__)
#include <immintrin.h>
#endif

#include "../engine/dispatch.hpp"
#include "../engine/parallel.hpp"
#include "ops.hpp"

namespace tapegrad::kernel {

// 1-D views (fast: fixed rank) over n elements from p, or over all of a tensor's elements.
template <class T>
auto flat(const T* p, size_t n) {
  return xt::adapt(p, n, xt::no_ownership(), std::array<size_t, 1>{n});
}
template <class T>
auto flat_mut(T* p, size_t n) {
  return xt::adapt(p, n, xt::no_ownership(), std::array<size_t, 1>{n});
}
template <class T>
auto flat(const Tensor& t) {
  return flat(static_cast<const T*>(t.impl()->data), t.numel());
}
template <class T>
auto flat_mut(const Tensor& t) {
  return flat_mut(static_cast<T*>(t.impl()->data), t.numel());
}

// ---- large outputs written around the cache ------------------------------------------------------
// An elementwise output bigger than the core's L2 cache is read back from memory by whatever uses
// it next, so caching it on the way out only costs: a plain store first reads each line in
// (write-allocate), a third of a unary op's memory traffic. write_out computes such an output in
// L1-sized blocks and copies each out with streaming (non-temporal) stores of whole cache lines.
// Measured on W3's training step at 2 threads, alternating runs: the work between its GEMMs
// 3.74-3.94 -> 3.07-3.26 ms, the GEMMs that read the outputs unchanged. Whole cache lines matter:
// in a prototype of the step, 5.5 ms plain, 3.6 ms with 64-byte and 4.0 with 16-byte stores.
#if defined(__AVX512F__)
constexpr size_t kStreamBytes = 64;
inline void stream_chunk(char* d, const char* s) {
  _mm512_stream_si512(reinterpret_cast<__m512i*>(d), _mm512_loadu_si512(s));
}
#elif defined(__AVX__)
constexpr size_t kStreamBytes = 32;
inline void stream_chunk(char* d, const char* s) {
  _mm256_stream_si256(reinterpret_cast<__m256i*>(d), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s)));
}
#elif defined(__SSE2__)
constexpr size_t kStreamBytes = 16;
inline void stream_chunk(char* d, const char* s) {
  _mm_stream_si128(reinterpret_cast<__m128i*>(d), _mm_loadu_si128(reinterpret_cast<const __m128i*>(s)));
}
#else
constexpr size_t kStreamBytes = 0;  // no streaming stores on this target: outputs are written plainly
#endif

// A gradient's kernel of fewer elements than this runs on the sweep's thread, not on its lane
// (Backward::add_into_later): a post costs the sweep ~0.1 µs, and a futex call when the helper
// sleeps. Products go there from 1e5 multiply-adds (ops/linalg.cpp).
constexpr size_t kLaneMinElements = 4096;

// Outputs from this size up are streamed: the L2 cache of this machine (1 MiB if unknown).
inline size_t streaming_threshold_bytes() {
  static const size_t bytes = [] {
    long l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
    return l2 > 0 ? static_cast<size_t>(l2) : size_t(1) << 20;
  }();
  return bytes;
}

#if defined(__SSE2__)
// dst[0, bytes) = src[0, bytes), streaming the part of dst aligned to whole chunks.
inline void copy_streaming(void* dst, const void* src, size_t bytes) {
  auto* d = static_cast<char*>(dst);
  auto* s = static_cast<const char*>(src);
  size_t head = std::min(bytes, (kStreamBytes - reinterpret_cast<uintptr_t>(d) % kStreamBytes) % kStreamBytes);
  std::memcpy(d, s, head);
  d += head;
  s += head;
  bytes -= head;
  for (; bytes >= kStreamBytes; d += kStreamBytes, s += kStreamBytes, bytes -= kStreamBytes) stream_chunk(d, s);
  std::memcpy(d, s, bytes);
}
#else
inline void copy_streaming(void* dst, const void* src, size_t bytes) { std::memcpy(dst, src, bytes); }
#endif

// out[0, n) as produce(begin, end, dst) computes elements [begin, end) into dst[0, end - begin):
// at once into out when it is small, else block by block through an L1 scratch, streamed out.
// A large output is also cut into one run of blocks per intra-op thread (set_num_threads), side
// by side: each element is computed alone, so the cut changes no value. produce must not throw.
// Measured on W3 at 2 threads (an AVX-512 Xeon, 2 MiB L2): relu of [512,2048] 0.39 → 0.20 ms;
// with the column cut of sum_axes below, the step 77.9–78.6 → 75.8–76.2 ms (alternating runs).
template <class T, class P>
void write_out(T* out, size_t n, P&& produce) {
  if (kStreamBytes == 0 || n * sizeof(T) < streaming_threshold_bytes()) {
    produce(size_t(0), n, out);
    return;
  }
  constexpr size_t kBlock = 16384 / sizeof(T);
  const size_t blocks = (n + kBlock - 1) / kBlock;
  const size_t parts = std::min(blocks, size_t(detail::intra_op_threads()));
  const size_t per_part = (blocks + parts - 1) / parts;
  detail::run_parts(int(parts), [&](int k) {
    alignas(64) T block[kBlock];
    const size_t stop = std::min(n, (size_t(k) + 1) * per_part * kBlock);
    for (size_t begin = size_t(k) * per_part * kBlock; begin < stop; begin += kBlock) {
      size_t end = std::min(stop, begin + kBlock);
      produce(begin, end, block);
      copy_streaming(out + begin, block, (end - begin) * sizeof(T));
    }
#if defined(__SSE2__)
    _mm_sfence();  // streaming stores are weakly ordered: complete them before another thread reads out
#endif
  });
}

}  // namespace tapegrad::kernel

namespace tapegrad::detail {
// One element per lane along `axis` (reduce.cpp), each the other's backward: take_along picks
// x at idx (int64, x's shape with size 1 at axis); put_along scatters src into zeros of `shape`.
// They route max/min and nll_loss gradients.
Tensor take_along(const Tensor& x, const Tensor& idx, size_t axis);
Tensor put_along(const Tensor& src, const Tensor& idx, size_t axis, const Shape& shape);
}  // namespace tapegrad::detail

namespace tapegrad::kernel {

// xt::exp for any input: xsimd's exp converts x to an integer internally, which is undefined for
// NaN and for |x| beyond ~9e18 (finding F7). The argument is clamped to [-1e4, 1e4] (exp has
// saturated to 0 / inf there in float and double, so no result changes) with NaN sent to the low
// end, and NaN is put back in the result. Each use of v is a copy of the expression (cheap:
// adaptors and lazy functions hold pointers), so the result owns it by value and stays valid
// after a temporary argument is gone.
template <class E>
auto safe_exp(E&& v) {
  using X = std::decay_t<E>;
  using T = typename X::value_type;
  // (bounds as temporaries: a named scalar would be held by reference)
  auto clamped = xt::where(X(v) > T(1e4), T(1e4), xt::where(X(v) >= T(-1e4), X(v), T(-1e4)));  // NaN: -1e4
  return xt::where(xt::isnan(X(v)), X(v), xt::exp(std::move(clamped)));
}

// A fresh output with uninitialised data.
inline Tensor empty_out(Dtype d, const Shape& s) { return Tensor(TensorImpl::create(d, s)); }

inline void check_float(const char* op, const Tensor& x) {
  if (!x.defined()) fail(op, ": undefined tensor");
  if (x.dtype() == kInt64) fail(op, ": int64 tensor of shape ", x.shape(), " is not differentiable (float32 or float64 needed)");
}
inline void check_same_dtype(const char* op, const Tensor& a, const Tensor& b) {
  check_float(op, a);
  check_float(op, b);
  if (a.dtype() != b.dtype())
    fail(op, ": dtypes differ (", a.dtype(), " ", a.shape(), " and ", b.dtype(), " ", b.shape(),
         "); convert one explicitly");
}

// o = f(a, b) where a and b broadcast to o's shape (NumPy rules; shapes already checked).
// Each operand gets a stride of 0 along the dims it is broadcast over; the outer dims are walked
// with an odometer and the innermost dim is a plain loop specialised for stride 0 or 1 on each
// side, so row and column broadcasts vectorise like same-shape ones.
template <class T, class F>
void broadcast_binary(const T* a, const Shape& as, const T* b, const Shape& bs, T* o, const Shape& os, F f) {
  size_t rank = os.rank(), n = os.numel();
  if (n == 0) return;
  size_t sa[Shape::kMaxRank] = {}, sb[Shape::kMaxRank] = {}, idx[Shape::kMaxRank] = {};
  for (size_t d = rank, ka = 1, kb = 1; d-- > 0;) {
    size_t da = d + as.rank() >= rank ? as[d + as.rank() - rank] : 1;
    size_t db = d + bs.rank() >= rank ? bs[d + bs.rank() - rank] : 1;
    sa[d] = da == 1 ? 0 : ka;
    sb[d] = db == 1 ? 0 : kb;
    ka *= da;
    kb *= db;
  }
  size_t inner = rank ? os[rank - 1] : 1, ia = rank ? sa[rank - 1] : 0, ib = rank ? sb[rank - 1] : 0;
  size_t oa = 0, ob = 0;
  for (size_t start = 0; start < n; start += inner) {
    const T* x = a + oa;
    const T* y = b + ob;
    T* out = o + start;
    if (ia && ib) for (size_t i = 0; i < inner; ++i) out[i] = f(x[i], y[i]);
    else if (ia) for (size_t i = 0; i < inner; ++i) out[i] = f(x[i], y[0]);
    else if (ib) for (size_t i = 0; i < inner; ++i) out[i] = f(x[0], y[i]);
    else for (size_t i = 0; i < inner; ++i) out[i] = f(x[0], y[0]);
    for (size_t d = rank - 1; d-- > 0;) {  // odometer over the outer dims
      oa += sa[d];
      ob += sb[d];
      if (++idx[d] < os[d]) break;
      oa -= sa[d] * os[d];
      ob -= sb[d] * os[d];
      idx[d] = 0;
    }
  }
}

// out = x summed over `axes` (sorted, unique); out holds the kept elements in row-major order.
// Fast paths: leading axes (out[j] = Σ_i x[i·inner + j], the bias gradient) and trailing axes
// (out[i] = Σ_j x[i·inner + j], row sums); both vectorise. Otherwise xtensor, evaluated
// immediately (its lazy reducers are 10-100× slower).
template <class T>
void sum_axes(const Tensor& x, const Tensor& out, const std::vector<size_t>& axes) {
  const T* src = static_cast<const T*>(x.impl()->data);
  T* dst = static_cast<T*>(out.impl()->data);
  size_t rank = x.dim(), n_out = out.numel();
  bool leading = true, trailing = true;
  for (size_t i = 0; i < axes.size(); ++i) {
    leading &= axes[i] == i;
    trailing &= axes[i] == rank - axes.size() + i;
  }
  if (leading) {
    // Columns [lo, hi) of out, summed over the rows in order. An x beyond the L2 cache with 32
    // columns or more per intra-op thread is cut into runs of columns, one per thread, side by side;
    // each column is still summed alone in the same order, so the cut changes no value.
    const size_t outer = n_out ? x.numel() / n_out : 0;
    auto columns = [&](size_t lo, size_t hi) {
      std::fill(dst + lo, dst + hi, T(0));
      for (size_t i = 0; i < outer; ++i)
        for (size_t j = lo; j < hi; ++j) dst[j] += src[i * n_out + j];
    };
    if (x.numel() * sizeof(T) < streaming_threshold_bytes()) return columns(0, n_out);
    const size_t threads = size_t(detail::intra_op_threads());
    if (threads < 2 || n_out < 32 * threads) return columns(0, n_out);
    const size_t per_part = ((n_out + 15) / 16 + threads - 1) / threads * 16;  // multiples of 16 columns
    const size_t parts = (n_out + per_part - 1) / per_part;
    detail::run_parts(int(parts), [&](int k) { columns(size_t(k) * per_part, std::min(n_out, (size_t(k) + 1) * per_part)); });
  } else if (trailing) {
    size_t inner = n_out ? x.numel() / n_out : 0;
    for (size_t i = 0; i < n_out; ++i) {
      T acc = 0;
      for (size_t j = 0; j < inner; ++j) acc += src[i * inner + j];
      dst[i] = acc;
    }
  } else {  // general case: walk x in row-major order, adding into the kept position
    const Shape& s = x.shape();
    size_t out_stride[Shape::kMaxRank] = {}, idx[Shape::kMaxRank] = {};
    for (size_t d = rank, stride = 1; d-- > 0;) {
      bool reduced = std::find(axes.begin(), axes.end(), d) != axes.end();
      out_stride[d] = reduced ? 0 : stride;
      if (!reduced) stride *= s[d];
    }
    std::fill(dst, dst + n_out, T(0));
    size_t o = 0;
    for (size_t i = 0, n = x.numel(); i < n; ++i) {
      dst[o] += src[i];
      for (size_t d = rank; d-- > 0;) {  // odometer increment of idx, keeping o in step
        o += out_stride[d];
        if (++idx[d] < s[d]) break;
        o -= out_stride[d] * s[d];
        idx[d] = 0;
      }
    }
  }
}

}  // namespace tapegrad::kernel

#pragma once
// Private to ops/: xtensor views over tensor data, and the checks every op shares.
#include <xtensor/xadapt.hpp>
#include <xtensor/xarray.hpp>
#include <xtensor/xmath.hpp>
#include <xtensor/xnoalias.hpp>

#include "../engine/dispatch.hpp"
#include "ops.hpp"

namespace tapegrad::kernel {

// 1-D views (fast: fixed rank) over all elements.
template <class T>
auto flat(const Tensor& t) {
  return xt::adapt(static_cast<const T*>(t.impl()->data), t.numel(), xt::no_ownership(),
                   std::array<size_t, 1>{t.numel()});
}
template <class T>
auto flat_mut(const Tensor& t) {
  return xt::adapt(static_cast<T*>(t.impl()->data), t.numel(), xt::no_ownership(),
                   std::array<size_t, 1>{t.numel()});
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
    size_t outer = n_out ? x.numel() / n_out : 0;
    std::fill(dst, dst + n_out, T(0));
    for (size_t i = 0; i < outer; ++i)
      for (size_t j = 0; j < n_out; ++j) dst[j] += src[i * n_out + j];
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

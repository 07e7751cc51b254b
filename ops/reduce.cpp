// Reductions over all elements or given dims, with keepdim: sum, mean, max, min, argmax, argmin.
// Also the pair take_along/put_along (each the other's backward), which route a gradient to one
// element per lane: the backward of max/min here and of nll_loss in loss.cpp.
#include <algorithm>
#include <cmath>

#include "kernel.hpp"

namespace tapegrad {
using namespace kernel;


namespace {

// The dims to reduce, normalised, sorted and unique; empty `dims` means all of them.
std::vector<size_t> reduce_axes(const char* op, const Tensor& x, const std::vector<int64_t>& dims) {
  std::vector<size_t> axes;
  if (dims.empty()) {
    for (size_t i = 0; i < x.dim(); ++i) axes.push_back(i);
    return axes;
  }
  for (int64_t d : dims) axes.push_back(normalize_dim(op, d, x.dim()));
  std::sort(axes.begin(), axes.end());
  if (std::adjacent_find(axes.begin(), axes.end()) != axes.end())
    fail(op, ": dim listed twice for a tensor of shape ", x.shape());
  return axes;
}

// x's shape with the reduced axes set to 1 (keepdim) or removed.
Shape reduced_shape(const Shape& s, const std::vector<size_t>& axes, bool keepdim) {
  Shape out;
  for (size_t i = 0; i < s.rank(); ++i) {
    bool reduced = std::find(axes.begin(), axes.end(), i) != axes.end();
    if (!reduced) out.push_back(s[i]);
    else if (keepdim) out.push_back(1);
  }
  return out;
}

std::vector<int64_t> as_dims(const Shape& s) { return {s.begin(), s.end()}; }

}  // namespace

// sum: y = Σ_axes x      dx = dy expanded back over the summed axes
Tensor sum(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim, CallSite site) {
  const SiteScope in(site);
  check_float("sum", x);
  std::vector<size_t> axes = reduce_axes("sum", x, dims);
  Tensor out = empty_out(x.dtype(), reduced_shape(x.shape(), axes, keepdim));
  dispatch("sum", x.dtype(), [&]<class T>() { sum_axes<T>(x, out, axes); });
  Shape in_shape = x.shape(), kept = reduced_shape(x.shape(), axes, true);
  return record("sum", out, {x}, [in_shape, kept](Backward& g) {
    g.add(0, expand(reshape(g.dout(), as_dims(kept)), in_shape), "dx += expand(dout)");
  });
}
Tensor sum(const Tensor& x, CallSite site) { return sum(x, std::vector<int64_t>{}, false, site); }
Tensor sum(const Tensor& x, int64_t dim, bool keepdim, CallSite site) {
  return sum(x, std::vector<int64_t>{dim}, keepdim, site);
}

// mean: y = Σ_axes x / n      dx = dy / n, expanded
Tensor mean(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim, CallSite site) {
  const SiteScope in(site);
  check_float("mean", x);
  std::vector<size_t> axes = reduce_axes("mean", x, dims);
  size_t n = 1;
  for (size_t a : axes) n *= x.shape()[a];
  if (n == 0) fail("mean: reducing ", x.shape(), " over an empty dim");
  return sum(x, dims, keepdim) * (1.0 / static_cast<double>(n));
}
Tensor mean(const Tensor& x, CallSite site) { return mean(x, std::vector<int64_t>{}, false, site); }
Tensor mean(const Tensor& x, int64_t dim, bool keepdim, CallSite site) {
  return mean(x, std::vector<int64_t>{dim}, keepdim, site);
}

// ---- one element per lane: take_along / put_along ------------------------------------------------
// A dim `axis` of a shape splits it into lanes: [outer, n, inner], lane (o, i) holding the n
// elements x[o, k, i]. `idx` (int64) has the shape with axis set to 1 and picks one k per lane.
namespace {

struct Lanes {
  size_t outer = 1, n = 1, inner = 1;
};
Lanes lanes(const Shape& s, size_t axis) {
  Lanes l;
  for (size_t i = 0; i < axis; ++i) l.outer *= s[i];
  l.n = s[axis];
  for (size_t i = axis + 1; i < s.rank(); ++i) l.inner *= s[i];
  return l;
}

void check_lane_index(const char* op, const Shape& shape, const Tensor& idx, size_t axis) {
  if (idx.dtype() != kInt64) fail(op, ": index must be int64, got ", idx.dtype(), " ", idx.shape());
  Shape want = shape;
  if (axis >= want.rank()) fail(op, ": axis ", axis, " is out of range for ", shape);
  want[axis] = 1;
  if (idx.shape() != want) fail(op, ": index of shape ", idx.shape(), " does not fit ", shape, " along dim ", axis);
  const int64_t* k = idx.data_ptr<int64_t>();
  for (size_t j = 0, m = idx.numel(); j < m; ++j)
    if (k[j] < 0 || static_cast<size_t>(k[j]) >= shape[axis])
      fail(op, ": index ", k[j], " is out of range [0,", shape[axis], ") for ", shape, " along dim ", axis);
}

}  // namespace

namespace detail {

// take_along: y[o,0,i] = x[o, idx[o,0,i], i]      dx = put_along(dy, idx)
Tensor take_along(const Tensor& x, const Tensor& idx, size_t axis) {
  check_float("take_along", x);
  check_lane_index("take_along", x.shape(), idx, axis);
  Tensor out = empty_out(x.dtype(), idx.shape());
  Lanes l = lanes(x.shape(), axis);
  dispatch("take_along", x.dtype(), [&]<class T>() {
    const T* src = x.data_ptr<T>();
    const int64_t* k = idx.data_ptr<int64_t>();
    T* dst = out.data_ptr<T>();
    for (size_t o = 0; o < l.outer; ++o)
      for (size_t i = 0; i < l.inner; ++i) {
        size_t j = o * l.inner + i;
        dst[j] = src[(o * l.n + static_cast<size_t>(k[j])) * l.inner + i];
      }
  });
  Shape in_shape = x.shape();
  return record("take_along", out, {x, idx}, [in_shape, axis](Backward& g) {
    g.add(0, put_along(g.dout(), g.input(1), axis, in_shape));
  });
}

// put_along: y = zeros(shape); y[o, idx[o,0,i], i] = src[o,0,i]      dsrc = take_along(dy, idx)
Tensor put_along(const Tensor& src, const Tensor& idx, size_t axis, const Shape& shape) {
  check_float("put_along", src);
  check_lane_index("put_along", shape, idx, axis);
  if (src.shape() != idx.shape()) fail("put_along: source ", src.shape(), " and index ", idx.shape(), " differ");
  Tensor out = zeros(shape, src.dtype());
  Lanes l = lanes(shape, axis);
  dispatch("put_along", src.dtype(), [&]<class T>() {
    const T* s = src.data_ptr<T>();
    const int64_t* k = idx.data_ptr<int64_t>();
    T* dst = out.data_ptr<T>();
    for (size_t o = 0; o < l.outer; ++o)
      for (size_t i = 0; i < l.inner; ++i) {
        size_t j = o * l.inner + i;
        dst[(o * l.n + static_cast<size_t>(k[j])) * l.inner + i] = s[j];
      }
  });
  return record("put_along", out, {src, idx}, [axis](Backward& g) {
    g.add(0, take_along(g.dout(), g.input(1), axis));
  });
}

}  // namespace detail

// ---- max / min / argmax / argmin ---------------------------------------------------------------
namespace {

// For each lane along `axis`: the max (or min) value and its first index. NaN counts as the
// extreme (the first NaN wins), so a NaN input gives a NaN result, as in PyTorch.
void extreme_kernel(const Tensor& x, size_t axis, bool is_max, const Tensor& val, const Tensor& idx) {
  Lanes l = lanes(x.shape(), axis);
  dispatch("max", x.dtype(), [&]<class T>() {
    const T* src = x.data_ptr<T>();
    int64_t* k = idx.data_ptr<int64_t>();
    std::vector<T> scratch;
    T* best = val.defined() ? val.data_ptr<T>() : (scratch.resize(l.outer * l.inner), scratch.data());
    for (size_t o = 0; o < l.outer; ++o) {
      const T* lane = src + o * l.n * l.inner;
      T* b = best + o * l.inner;
      int64_t* bk = k + o * l.inner;
      for (size_t i = 0; i < l.inner; ++i) b[i] = lane[i], bk[i] = 0;
      for (size_t r = 1; r < l.n; ++r) {  // rows of the lane block, so memory is read in order
        const T* row = lane + r * l.inner;
        for (size_t i = 0; i < l.inner; ++i) {
          T v = row[i];
          bool better = is_max ? v > b[i] : v < b[i];
          if (better || (std::isnan(v) && !std::isnan(b[i]))) b[i] = v, bk[i] = static_cast<int64_t>(r);
        }
      }
    }
  });
}

// max/min along dim: y = x[argmax]      dx = put_along(dy, argmax): all of dy to the first extreme
Tensor extreme(const char* op, const Tensor& x, int64_t dim, bool keepdim, bool is_max) {
  check_float(op, x);
  size_t axis = normalize_dim(op, dim, x.dim());
  if (x.shape()[axis] == 0) fail(op, ": dim ", dim, " of ", x.shape(), " is empty; no ", op, " exists");
  Shape kept = reduced_shape(x.shape(), {axis}, true);
  Tensor out = empty_out(x.dtype(), reduced_shape(x.shape(), {axis}, keepdim));
  Tensor idx = empty_out(kInt64, kept);
  extreme_kernel(x, axis, is_max, out, idx);
  Shape in_shape = x.shape();
  return record(op, out, {x}, [idx, axis, kept, in_shape](Backward& g) {
    g.add(0, detail::put_along(reshape(g.dout(), as_dims(kept)), idx, axis, in_shape));
  });
}

Tensor extreme_all(const char* op, const Tensor& x, bool is_max) {
  check_float(op, x);
  if (x.numel() == 0) fail(op, ": cannot reduce the empty tensor ", x.shape());
  return extreme(op, reshape(x, {-1}), 0, false, is_max);  // gradient flows back through the reshape
}

Tensor arg_extreme(const char* op, const Tensor& x, int64_t dim, bool keepdim, bool is_max) {
  check_float(op, x);
  size_t axis = normalize_dim(op, dim, x.dim());
  if (x.shape()[axis] == 0) fail(op, ": dim ", dim, " of ", x.shape(), " is empty; no ", op, " exists");
  Tensor idx = empty_out(kInt64, reduced_shape(x.shape(), {axis}, keepdim));
  extreme_kernel(x, axis, is_max, Tensor(), idx);
  return idx;
}

}  // namespace

Tensor max(const Tensor& x, CallSite site) {
  const SiteScope in(site);
  return extreme_all("max", x, true);
}
Tensor max(const Tensor& x, int64_t dim, bool keepdim, CallSite site) {
  const SiteScope in(site);
  return extreme("max", x, dim, keepdim, true);
}
Tensor min(const Tensor& x, CallSite site) {
  const SiteScope in(site);
  return extreme_all("min", x, false);
}
Tensor min(const Tensor& x, int64_t dim, bool keepdim, CallSite site) {
  const SiteScope in(site);
  return extreme("min", x, dim, keepdim, false);
}
Tensor argmax(const Tensor& x, int64_t dim, bool keepdim, CallSite site) {
  const SiteScope in(site);
  return arg_extreme("argmax", x, dim, keepdim, true);
}
Tensor argmin(const Tensor& x, int64_t dim, bool keepdim, CallSite site) {
  const SiteScope in(site);
  return arg_extreme("argmin", x, dim, keepdim, false);
}

}  // namespace tapegrad

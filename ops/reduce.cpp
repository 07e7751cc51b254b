// Reductions over all elements or given dims, with keepdim.
#include <algorithm>

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
Tensor sum(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim) {
  check_float("sum", x);
  std::vector<size_t> axes = reduce_axes("sum", x, dims);
  Tensor out = empty_out(x.dtype(), reduced_shape(x.shape(), axes, keepdim));
  dispatch("sum", x.dtype(), [&]<class T>() { sum_axes<T>(x, out, axes); });
  Shape in_shape = x.shape(), kept = reduced_shape(x.shape(), axes, true);
  return record("sum", out, {x}, [in_shape, kept](Backward& g) {
    g.add(0, expand(reshape(g.dout(), as_dims(kept)), in_shape));
  });
}
Tensor sum(const Tensor& x) { return sum(x, std::vector<int64_t>{}, false); }
Tensor sum(const Tensor& x, int64_t dim, bool keepdim) { return sum(x, std::vector<int64_t>{dim}, keepdim); }

// mean: y = Σ_axes x / n      dx = dy / n, expanded
Tensor mean(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim) {
  check_float("mean", x);
  std::vector<size_t> axes = reduce_axes("mean", x, dims);
  size_t n = 1;
  for (size_t a : axes) n *= x.shape()[a];
  if (n == 0) fail("mean: reducing ", x.shape(), " over an empty dim");
  return sum(x, dims, keepdim) * (1.0 / static_cast<double>(n));
}
Tensor mean(const Tensor& x) { return mean(x, std::vector<int64_t>{}, false); }
Tensor mean(const Tensor& x, int64_t dim, bool keepdim) { return mean(x, std::vector<int64_t>{dim}, keepdim); }

}  // namespace tapegrad

// Broadcasting: the shape rule, and the one helper that sums a gradient back to an input's shape.
#include "kernel.hpp"

namespace tapegrad {
using namespace kernel;

Shape broadcast_shapes(const char* op, const Shape& a, const Shape& b) {
  if (a == b) return a;
  size_t rank = std::max(a.rank(), b.rank());
  Shape out;
  for (size_t i = 0; i < rank; ++i) {
    // align trailing dims: a missing leading dim counts as 1
    size_t da = i + a.rank() >= rank ? a[i + a.rank() - rank] : 1;
    size_t db = i + b.rank() >= rank ? b[i + b.rank() - rank] : 1;
    if (da != db && da != 1 && db != 1)
      fail(op, ": shapes ", a, " and ", b, " cannot be broadcast (dim ", i, ": ", da, " vs ", db, ")");
    out.push_back(da == 1 ? db : da);
  }
  return out;
}

// sum_to: y = Σ over broadcast axes of x      dx = expand(dy, shape(x))
Tensor sum_to(const Tensor& x, const Shape& shape, CallSite site) {
  const SiteScope in(site);
  if (x.shape() == shape) return x;
  const Shape& xs = x.shape();
  if (shape.rank() > xs.rank()) fail("sum_to: cannot reduce ", xs, " to the larger rank ", shape);
  size_t lead = xs.rank() - shape.rank();
  std::vector<size_t> axes;
  for (size_t i = 0; i < lead; ++i) axes.push_back(i);
  for (size_t i = 0; i < shape.rank(); ++i) {
    if (shape[i] == xs[lead + i]) continue;
    if (shape[i] != 1) fail("sum_to: cannot reduce ", xs, " to ", shape);
    axes.push_back(lead + i);
  }
  Tensor out = empty_out(x.dtype(), shape);
  dispatch("sum_to", x.dtype(), [&]<class T>() { sum_axes<T>(x, out, axes); });
  Shape in_shape = xs;
  return record("sum_to", out, {x}, [in_shape](Backward& g) {
    g.add(0, expand(g.dout(), in_shape), "dx += expand(dout)");  // dout copied along the summed axes
  });
}

// expand: y = x broadcast to shape      dx = sum_to(dy, shape(x))
Tensor expand(const Tensor& x, const Shape& shape, CallSite site) {
  const SiteScope in(site);
  check_float("expand", x);
  if (broadcast_shapes("expand", x.shape(), shape) != shape)
    fail("expand: shape ", x.shape(), " cannot be expanded to ", shape);
  if (x.shape() == shape) return x;
  Tensor out = empty_out(x.dtype(), shape);
  dispatch("expand", x.dtype(), [&]<class T>() {
    const T* src = x.data_ptr<T>();
    broadcast_binary<T>(src, x.shape(), src, x.shape(), out.data_ptr<T>(), shape, [](T v, T) { return v; });
  });
  Shape in_shape = x.shape();
  return record("expand", out, {x}, [in_shape](Backward& g) {
    g.add(0, sum_to(g.dout(), in_shape), "dx += sum_to(dout)");  // Σ dout over the expanded axes
  });
}

}  // namespace tapegrad

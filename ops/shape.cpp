// Shape ops. reshape/view/flatten/squeeze/unsqueeze return views that share x's data; their
// backward reshapes the gradient back.
#include <algorithm>

#include "kernel.hpp"

namespace tapegrad {
using namespace kernel;

// A view of x with a new shape of the same number of elements      dx = reshape(dy, shape(x))
static Tensor as_shape(const char* op, const Tensor& x, const Shape& shape) {
  if (shape.numel() != x.numel()) fail(op, ": cannot view ", x.shape(), " as ", shape);
  if (shape == x.shape()) return x;
  Tensor out(TensorImpl::view_of(x.ref(), shape));
  Shape in_shape = x.shape();
  return record(op, out, {x}, [in_shape](Backward& g) {
    g.add(0, reshape(g.dout(), {in_shape.begin(), in_shape.end()}));
  });
}

Tensor reshape(const Tensor& x, const std::vector<int64_t>& shape) {
  if (!x.defined()) fail("reshape: undefined tensor");
  Shape s;
  int64_t infer = -1;
  size_t known = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1) {
      if (infer >= 0) fail("reshape: more than one -1 in the target shape for ", x.shape());
      infer = static_cast<int64_t>(i);
      s.push_back(1);
    } else if (shape[i] < 0) {
      fail("reshape: negative size ", shape[i], " in the target shape for ", x.shape());
    } else {
      s.push_back(static_cast<size_t>(shape[i]));
      known *= static_cast<size_t>(shape[i]);
    }
  }
  if (infer >= 0) {
    if (known == 0 || x.numel() % known != 0) fail("reshape: cannot infer -1 reshaping ", x.shape(), " (", x.numel(), " elements)");
    s[static_cast<size_t>(infer)] = x.numel() / known;
  }
  return as_shape("reshape", x, s);
}

Tensor view(const Tensor& x, const std::vector<int64_t>& shape) { return reshape(x, shape); }

Tensor flatten(const Tensor& x, int64_t start_dim, int64_t end_dim) {
  if (x.dim() == 0) return as_shape("flatten", x, Shape{1});
  size_t a = normalize_dim("flatten", start_dim, x.dim()), b = normalize_dim("flatten", end_dim, x.dim());
  if (a > b) fail("flatten: start_dim ", start_dim, " is after end_dim ", end_dim, " for ", x.shape());
  Shape s;
  for (size_t i = 0; i < a; ++i) s.push_back(x.shape()[i]);
  size_t m = 1;
  for (size_t i = a; i <= b; ++i) m *= x.shape()[i];
  s.push_back(m);
  for (size_t i = b + 1; i < x.dim(); ++i) s.push_back(x.shape()[i]);
  return as_shape("flatten", x, s);
}

Tensor squeeze(const Tensor& x) {
  Shape s;
  for (size_t d : x.shape())
    if (d != 1) s.push_back(d);
  return as_shape("squeeze", x, s);
}

Tensor squeeze(const Tensor& x, int64_t dim) {
  size_t d = normalize_dim("squeeze", dim, x.dim());
  Shape s = x.shape();
  if (s[d] == 1) s.erase(d);  // like PyTorch, a dim of another size is left alone
  return as_shape("squeeze", x, s);
}

Tensor unsqueeze(const Tensor& x, int64_t dim) {
  size_t d = normalize_dim("unsqueeze", dim, x.dim() + 1);
  Shape s = x.shape();
  s.insert(d, 1);
  return as_shape("unsqueeze", x, s);
}

}  // namespace tapegrad

// Shape ops. reshape/view/flatten/squeeze/unsqueeze return views that share x's data; their
// backward reshapes the gradient back. The others (transpose, permute, narrow, slice, select,
// cat, stack, index_select, clone) make contiguous copies; all but permute go through one
// row-copy kernel, `move_rows`, that sees a tensor around one dim as [outer, n, inner].
// Their backwards are ops too (slice_backward pads into zeros, index_add scatter-adds), so
// gradients of gradients work.
#include <algorithm>
#include <array>
#include <cstddef>
#include <cstring>
#include <string>

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

Tensor reshape(const Tensor& x, const std::vector<int64_t>& shape, CallSite site) {
  const SiteScope in(site);
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

Tensor view(const Tensor& x, const std::vector<int64_t>& shape, CallSite site) { return reshape(x, shape, site); }

Tensor flatten(const Tensor& x, int64_t start_dim, int64_t end_dim, CallSite site) {
  const SiteScope in(site);
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

Tensor squeeze(const Tensor& x, CallSite site) {
  const SiteScope in(site);
  Shape s;
  for (size_t d : x.shape())
    if (d != 1) s.push_back(d);
  return as_shape("squeeze", x, s);
}

Tensor squeeze(const Tensor& x, int64_t dim, CallSite site) {
  const SiteScope in(site);
  size_t d = normalize_dim("squeeze", dim, x.dim());
  Shape s = x.shape();
  if (s[d] == 1) s.erase(d);  // like PyTorch, a dim of another size is left alone
  return as_shape("squeeze", x, s);
}

Tensor unsqueeze(const Tensor& x, int64_t dim, CallSite site) {
  const SiteScope in(site);
  size_t d = normalize_dim("unsqueeze", dim, x.dim() + 1);
  Shape s = x.shape();
  s.insert(d, 1);
  return as_shape("unsqueeze", x, s);
}

// ---- copies: transpose, permute, narrow, slice, select, cat, stack, index_select, clone ------------
namespace {

void check_defined(const char* op, const Tensor& x) {
  if (!x.defined()) fail(op, ": undefined tensor");
}

// Product of s[from..to): with a dim d, outer = extent(s, 0, d), inner = extent(s, d + 1, rank).
size_t extent(const Shape& s, size_t from, size_t to) {
  size_t n = 1;
  for (size_t i = from; i < to; ++i) n *= s[i];
  return n;
}

std::string dims_str(const std::vector<int64_t>& dims) {
  std::string s = "[";
  for (size_t i = 0; i < dims.size(); ++i) {
    if (i) s += ',';
    s += std::to_string(dims[i]);
  }
  return s + ']';
}

// Which rows of a block a copy reads or writes: start + i·step, or index[i] when an index is given.
struct Rows {
  size_t start = 0, step = 1;
  const int64_t* index = nullptr;
  size_t operator()(size_t i) const { return index ? static_cast<size_t>(index[i]) : start + i * step; }
  bool contiguous() const { return !index && step == 1; }
};
Rows at(size_t start, size_t step = 1) { return Rows{start, step, nullptr}; }
Rows indexed(const int64_t* index) { return Rows{0, 1, index}; }

// The one copy kernel. src is seen as [outer, src_n, inner] and dst as [outer, dst_n, inner]
// (inner counted in elements of T); for every o < outer and i < count, row src_rows(i) of src
// block o is copied (Add: added) into row dst_rows(i) of dst block o. When both sides are
// contiguous runs (cat, narrow), each block is one run of count·inner elements.
template <bool Add, class T>
void move_rows(const T* src, size_t src_n, Rows src_rows, T* dst, size_t dst_n, Rows dst_rows, size_t outer,
               size_t inner, size_t count) {
  auto move = [](const T* from, T* to, size_t n) {
    if constexpr (Add) {
      for (size_t k = 0; k < n; ++k) to[k] += from[k];
    } else if (n == 1) {
      *to = *from;  // a row of one element (the last dim): no call
    } else {
      std::memcpy(to, from, n * sizeof(T));
    }
  };
  bool runs = src_rows.contiguous() && dst_rows.contiguous();
  for (size_t o = 0; o < outer; ++o) {
    const T* s = src + o * src_n * inner;
    T* d = dst + o * dst_n * inner;
    if (runs) {
      move(s + src_rows.start * inner, d + dst_rows.start * inner, count * inner);
      continue;
    }
    for (size_t i = 0; i < count; ++i) move(s + src_rows(i) * inner, d + dst_rows(i) * inner, inner);
  }
}

// The same for tensors of any dtype: elements are moved as 4- or 8-byte words.
void copy_rows(const Tensor& src, size_t src_n, Rows src_rows, const Tensor& dst, size_t dst_n, Rows dst_rows,
               size_t outer, size_t inner, size_t count) {
  auto run = [&]<class U>() {
    move_rows<false>(static_cast<const U*>(src.impl()->data), src_n, src_rows, static_cast<U*>(dst.impl()->data),
                     dst_n, dst_rows, outer, inner, count);
  };
  if (dtype_size(src.dtype()) == 4) run.template operator()<uint32_t>();
  else run.template operator()<uint64_t>();
}

Tensor slice_rows(const char* op, const Tensor& x, size_t d, size_t start, size_t count, size_t step);

// slice_backward: y = zeros(shape); y[.., start + i·step, ..] = x[.., i, ..] along dim d
//   dx = slice(dy, d, start, count, step)      (the rows it was placed at)
Tensor slice_backward(const Tensor& x, const Shape& shape, size_t d, size_t start, size_t step) {
  check_float("slice_backward", x);
  size_t count = x.shape()[d];
  Tensor out = zeros(shape, x.dtype());
  copy_rows(x, count, at(0), out, shape[d], at(start, step), extent(shape, 0, d), extent(shape, d + 1, shape.rank()),
            count);
  return record("slice_backward", out, {x}, [d, start, count, step](Backward& g) {
    g.add(0, slice_rows("slice", g.dout(), d, start, count, step), "dx += dout[rows it was placed at]");
  });
}

// slice: y = x[.., start : start + count·step : step, ..] along dim d (checked by the caller)
//   dx = slice_backward(dy): dy placed back at those rows of zeros
Tensor slice_rows(const char* op, const Tensor& x, size_t d, size_t start, size_t count, size_t step) {
  const Shape& s = x.shape();
  Shape os = s;
  os[d] = count;
  Tensor out = empty_out(x.dtype(), os);
  copy_rows(x, s[d], at(start, step), out, count, at(0), extent(s, 0, d), extent(s, d + 1, s.rank()), count);
  Shape in_shape = s;
  return record(op, out, {x}, [in_shape, d, start, step](Backward& g) {
    g.add(0, slice_backward(g.dout(), in_shape, d, start, step), "dx += dout padded with zeros");
  });
}

// out[.., index[i], ..] += x[.., i, ..] along dim d, out of shape `shape`: on raw data, so that the
// sweep's lane can run it (index_select's backward)
static void scatter_add_rows(Dtype dt, const void* x, void* out, const Shape& shape, size_t d, const int64_t* idx,
                             size_t m) {
  dispatch("index_add", dt, [&]<class T>() {
    move_rows<true>(static_cast<const T*>(x), m, at(0), static_cast<T*>(out), shape[d], indexed(idx),
                    extent(shape, 0, d), extent(shape, d + 1, shape.rank()), m);
  });
}

static void scatter_add_rows(const Tensor& x, const Tensor& out, size_t d, const Tensor& index) {
  scatter_add_rows(x.dtype(), x.impl()->data, out.impl()->data, out.shape(), d, index.data_ptr<int64_t>(),
                   index.numel());
}

// index_add: y = zeros(shape); y[.., index[i], ..] += x[.., i, ..] along dim d (repeats add up)
//   dx = index_select(dy, d, index)
Tensor index_add(const Tensor& x, const Shape& shape, size_t d, const Tensor& index) {
  check_float("index_add", x);
  Tensor out = zeros(shape, x.dtype());
  scatter_add_rows(x, out, d, index);
  return record("index_add", out, {x, index}, [d](Backward& g) {
    g.add(0, index_select(g.dout(), static_cast<int64_t>(d), g.input(1)), "dx += index_select(dout, index)");
  }, "x index");
}

using Perm = std::array<size_t, Shape::kMaxRank>;

// permute: y[i_0, .., i_r] = x[j] with j[perm[k]] = i_k, so y.shape[k] = x.shape[perm[k]]
//   dx = permute(dy, inverse(perm))
// An odometer over y's other dims walks x with the permuted strides; the inner loops copy a tile.
Tensor permute_impl(const char* op, const Tensor& x, const Perm& perm) {
  const Shape& s = x.shape();
  size_t rank = s.rank();
  Shape os;
  Perm stride{}, inverse{};
  for (size_t k = 0; k < rank; ++k) {
    os.push_back(s[perm[k]]);
    stride[k] = extent(s, perm[k] + 1, rank);  // x's row-major stride of dim perm[k]
    inverse[perm[k]] = k;
  }
  Tensor out = empty_out(x.dtype(), os);
  auto copy = [&]<class U>() {
    const U* src = static_cast<const U*>(x.impl()->data);
    U* dst = static_cast<U*>(out.impl()->data);
    size_t n = out.numel();
    if (n == 0) return;
    if (rank == 0) {
      dst[0] = src[0];
      return;
    }
    Perm dstride{};  // y's row-major strides
    for (size_t k = 0; k < rank; ++k) dstride[k] = extent(os, k + 1, rank);
    // y's last dim b is written contiguously; y's dim a reads x's last dim contiguously. When they
    // differ, [a, b] is copied in tiles so that reads and writes both stay in cache.
    size_t b = rank - 1, a = inverse[rank - 1];
    bool tiled = a != b;
    size_t na = tiled ? os[a] : 1, nb = os[b], sa = tiled ? stride[a] : 0, da = tiled ? dstride[a] : 0,
           sb = stride[b];
    constexpr size_t kTile = 32;
    Perm idx{};
    size_t src_off = 0, dst_off = 0;
    for (size_t block = 0, blocks = n / (na * nb); block < blocks; ++block) {
      for (size_t i0 = 0; i0 < na; i0 += kTile)
        for (size_t j0 = 0; j0 < nb; j0 += kTile)
          for (size_t i = i0, ie = std::min(i0 + kTile, na); i < ie; ++i)
            for (size_t j = j0, je = std::min(j0 + kTile, nb); j < je; ++j)
              dst[dst_off + i * da + j] = src[src_off + i * sa + j * sb];
      for (size_t k = b; k-- > 0;) {  // next block: carry through the other dims of y
        if (tiled && k == a) continue;
        src_off += stride[k];
        dst_off += dstride[k];
        if (++idx[k] < os[k]) break;
        src_off -= idx[k] * stride[k];
        dst_off -= idx[k] * dstride[k];
        idx[k] = 0;
      }
    }
  };
  if (dtype_size(x.dtype()) == 4) copy.template operator()<uint32_t>();
  else copy.template operator()<uint64_t>();
  return record(op, out, {x}, [op, inverse](Backward& g) {
    g.add(0, permute_impl(op, g.dout(), inverse), "dx += dout with the inverse permutation");
  });
}

}  // namespace

Tensor transpose(const Tensor& x, int64_t dim0, int64_t dim1, CallSite site) {
  const SiteScope in(site);
  check_defined("transpose", x);
  size_t a = normalize_dim("transpose", dim0, x.dim()), b = normalize_dim("transpose", dim1, x.dim());
  Perm perm{};
  for (size_t k = 0; k < x.dim(); ++k) perm[k] = k;
  std::swap(perm[a], perm[b]);
  return permute_impl("transpose", x, perm);
}

Tensor permute(const Tensor& x, const std::vector<int64_t>& dims, CallSite site) {
  const SiteScope in(site);
  check_defined("permute", x);
  if (dims.size() != x.dim())
    fail("permute: dims ", dims_str(dims), " do not match the rank of a tensor of shape ", x.shape());
  Perm perm{};
  std::array<bool, Shape::kMaxRank> seen{};
  for (size_t k = 0; k < dims.size(); ++k) {
    perm[k] = normalize_dim("permute", dims[k], x.dim());
    if (seen[perm[k]]) fail("permute: dims ", dims_str(dims), " repeat a dim (tensor of shape ", x.shape(), ")");
    seen[perm[k]] = true;
  }
  return permute_impl("permute", x, perm);
}

Tensor narrow(const Tensor& x, int64_t dim, int64_t start, int64_t length, CallSite site) {
  const SiteScope in(site);
  check_defined("narrow", x);
  size_t d = normalize_dim("narrow", dim, x.dim());
  auto n = static_cast<int64_t>(x.shape()[d]);
  if (start < -n || start > n)
    fail("narrow: start ", start, " is out of range for dim ", dim, " of size ", n, " (tensor ", x.shape(), ")");
  if (start < 0) start += n;
  if (length < 0 || length > n - start)  // not start + length: that can overflow
    fail("narrow: start ", start, " + length ", length, " exceeds dim ", dim, " of size ", n, " (tensor ",
         x.shape(), ")");
  return slice_rows("narrow", x, d, static_cast<size_t>(start), static_cast<size_t>(length), 1);
}

// Like PyTorch and Python: negative start/end count from the end, then both clamp to [0, n].
Tensor slice(const Tensor& x, int64_t dim, int64_t start, int64_t end, int64_t step, CallSite site) {
  const SiteScope in(site);
  check_defined("slice", x);
  size_t d = normalize_dim("slice", dim, x.dim());
  if (step <= 0) fail("slice: step must be positive, got ", step, " (tensor ", x.shape(), ")");
  auto n = static_cast<int64_t>(x.shape()[d]);
  auto clamp = [n](int64_t v) { return std::clamp(v < 0 ? v + n : v, int64_t(0), n); };
  int64_t b = clamp(start), e = clamp(end);
  int64_t count = e > b ? (e - b - 1) / step + 1 : 0;
  return slice_rows("slice", x, d, static_cast<size_t>(b), static_cast<size_t>(count), static_cast<size_t>(step));
}

// select: y = x[.., index, ..] with dim d dropped      dx = slice_backward(unsqueeze(dy, d)) at row index
Tensor select(const Tensor& x, int64_t dim, int64_t index, CallSite site) {
  const SiteScope in(site);
  check_defined("select", x);
  size_t d = normalize_dim("select", dim, x.dim());
  const Shape& s = x.shape();
  auto n = static_cast<int64_t>(s[d]);
  if (index < -n || index >= n)
    fail("select: index ", index, " is out of range for dim ", dim, " of size ", n, " (tensor ", s, ")");
  size_t i = static_cast<size_t>(index < 0 ? index + n : index);
  Shape os = s;
  os.erase(d);
  Tensor out = empty_out(x.dtype(), os);
  copy_rows(x, s[d], at(i), out, 1, at(0), extent(s, 0, d), extent(s, d + 1, s.rank()), 1);
  Shape in_shape = s;
  return record("select", out, {x}, [in_shape, d, i](Backward& g) {
    g.add(0, slice_backward(unsqueeze(g.dout(), static_cast<int64_t>(d)), in_shape, d, i, 1),
          "dx += dout placed at index, zeros elsewhere");
  });
}

// cat: y = [x_0, x_1, ..] joined along dim      dx_k = narrow(dy, dim, offset_k, size_k)
Tensor cat(const std::vector<Tensor>& xs, int64_t dim, CallSite site) {
  const SiteScope in(site);
  if (xs.empty()) fail("cat: expected a non-empty list of tensors");
  for (const Tensor& x : xs) check_defined("cat", x);
  const Tensor& x0 = xs[0];
  if (x0.dim() == 0) fail("cat: a 0-d tensor (shape []) cannot be concatenated");
  size_t d = normalize_dim("cat", dim, x0.dim());
  Shape os = x0.shape();
  std::vector<size_t> sizes;
  size_t total = 0;
  for (size_t k = 0; k < xs.size(); ++k) {
    const Shape& s = xs[k].shape();
    bool fits = s.rank() == os.rank();
    for (size_t a = 0; fits && a < s.rank(); ++a) fits = a == d || s[a] == os[a];
    if (!fits)
      fail("cat: shapes ", x0.shape(), " and ", s, " (tensor ", k, ") must match except in dim ", dim);
    if (xs[k].dtype() != x0.dtype())
      fail("cat: dtypes differ (", x0.dtype(), " ", x0.shape(), " and ", xs[k].dtype(), " ", s, ", tensor ", k, ")");
    sizes.push_back(s[d]);
    total += s[d];
  }
  os[d] = total;
  Tensor out = empty_out(x0.dtype(), os);
  size_t outer = extent(os, 0, d), inner = extent(os, d + 1, os.rank()), off = 0;
  for (size_t k = 0; k < xs.size(); ++k) {
    copy_rows(xs[k], sizes[k], at(0), out, total, at(off), outer, inner, sizes[k]);
    off += sizes[k];
  }
  return record("cat", out, xs, [d, sizes](Backward& g) {
    int64_t off = 0;
    for (size_t k = 0; k < sizes.size(); ++k) {
      auto n = static_cast<int64_t>(sizes[k]);
      if (g.wants(k)) g.add(k, narrow(g.dout(), static_cast<int64_t>(d), off, n), "dx_k += narrow(dout, offset_k, size_k)");
      off += n;
    }
  });
}

// stack: y[.., k, ..] = x_k along a new dim      dx_k = select(dy, dim, k)
Tensor stack(const std::vector<Tensor>& xs, int64_t dim, CallSite site) {
  const SiteScope in(site);
  if (xs.empty()) fail("stack: expected a non-empty list of tensors");
  for (const Tensor& x : xs) check_defined("stack", x);
  const Tensor& x0 = xs[0];
  const Shape& s = x0.shape();
  for (size_t k = 1; k < xs.size(); ++k) {
    if (xs[k].shape() != s)
      fail("stack: shapes ", s, " and ", xs[k].shape(), " (tensor ", k, ") differ; stack needs equal shapes");
    if (xs[k].dtype() != x0.dtype())
      fail("stack: dtypes differ (", x0.dtype(), " ", s, " and ", xs[k].dtype(), " ", xs[k].shape(), ", tensor ", k, ")");
  }
  size_t d = normalize_dim("stack", dim, s.rank() + 1);
  if (s.rank() == Shape::kMaxRank) fail("stack: tensors of shape ", s, " already have the maximum rank");
  Shape os = s;
  os.insert(d, xs.size());
  Tensor out = empty_out(x0.dtype(), os);
  size_t outer = extent(s, 0, d), inner = extent(s, d, s.rank());  // each x_k seen as [outer, 1, inner]
  for (size_t k = 0; k < xs.size(); ++k)
    copy_rows(xs[k], 1, at(0), out, xs.size(), at(k), outer, inner, 1);
  return record("stack", out, xs, [d, n = xs.size()](Backward& g) {
    for (size_t k = 0; k < n; ++k)
      if (g.wants(k)) g.add(k, select(g.dout(), static_cast<int64_t>(d), static_cast<int64_t>(k)), "dx_k += select(dout, k)");
  });
}

// index_select: y[.., i, ..] = x[.., index[i], ..] along dim      dx = index_add(dy): repeats add up
Tensor index_select(const Tensor& x, int64_t dim, const Tensor& index, CallSite site) {
  const SiteScope in(site);
  check_defined("index_select", x);
  check_defined("index_select", index);
  if (index.dtype() != kInt64)
    fail("index_select: index must be int64, got ", index.dtype(), " ", index.shape());
  if (index.dim() != 1) fail("index_select: index must be 1-D, got shape ", index.shape());
  size_t d = normalize_dim("index_select", dim, x.dim());
  const Shape& s = x.shape();
  const int64_t* idx = index.data_ptr<int64_t>();
  size_t m = index.numel();
  for (size_t k = 0; k < m; ++k)
    if (idx[k] < 0 || idx[k] >= static_cast<int64_t>(s[d]))
      fail("index_select: index ", idx[k], " (position ", k, ") is out of range for dim ", dim, " of size ", s[d],
           " (tensor ", s, ")");
  Shape os = s;
  os[d] = m;
  Tensor out = empty_out(x.dtype(), os);
  copy_rows(x, s[d], indexed(idx), out, m, at(0), extent(s, 0, d), extent(s, d + 1, s.rank()), m);
  Shape in_shape = s;
  return record("index_select", out, {x, index}, [in_shape, d](Backward& g) {
    const char* rule = "dx += index_add(dout): repeats add up";
    if (g.create_graph()) {  // the scatter-add must be recorded for gradients of gradients
      g.add(0, index_add(g.dout(), in_shape, d, g.input(1)), rule);
      return;
    }
    // A gathered table's rows add into its pending gradient; on the sweep's lane when the table is
    // a leaf and the rows are many (W5's embedding: 32 of 128), as its products' gradients are.
    const Tensor &dout = g.dout(), &index = g.input(1);
    auto scatter = [x = dout.impl()->data, dt = dout.dtype(), idx = index.data_ptr<int64_t>(), m = index.numel(),
                    in_shape, d](void* dx, bool accumulate) {
      if (!accumulate) std::memset(dx, 0, in_shape.numel() * dtype_size(dt));
      scatter_add_rows(dt, x, dx, in_shape, d, idx, m);
    };
    if (dout.numel() < kLaneMinElements) {
      g.add_into(0, [&](Tensor& dx, bool accumulate) { scatter(dx.impl()->data, accumulate); }, rule);
      return;
    }
    // dout and index keep the buffers scatter reads until it has run
    g.add_into_later(0, [scatter, dout, index](void* dx, bool accumulate, bool) { scatter(dx, accumulate); }, rule);
  }, "x index");
}

// clone: y = x, a deep copy      dx = dy
Tensor clone(const Tensor& x, CallSite site) {
  const SiteScope in(site);
  check_defined("clone", x);
  Tensor out = empty_out(x.dtype(), x.shape());
  if (x.numel()) std::memcpy(out.impl()->data, x.impl()->data, x.impl()->nbytes());
  return record("clone", out, {x}, [](Backward& g) { g.add(0, g.dout(), "dx += dout"); });
}

}  // namespace tapegrad

// Tensor storage, lifetime, factories and printing.
#include "tensor.hpp"

#include <cmath>
#include <iomanip>
#include <iostream>
#include <new>
#include <sstream>

#include "dispatch.hpp"
#include "node.hpp"
#include "parallel.hpp"
#include "pool.hpp"

namespace tapegrad {

// ---- Dtype and Shape -------------------------------------------------------------------------
const char* dtype_name(Dtype d) {
  switch (d) {
    case kFloat32: return "float32";
    case kFloat64: return "float64";
    case kInt64: return "int64";
  }
  return "?";
}
size_t dtype_size(Dtype d) { return d == kFloat32 ? 4 : 8; }

void Shape::insert(size_t pos, size_t n) {
  if (rank_ == kMaxRank) fail("tensors have at most ", kMaxRank, " dimensions");
  for (size_t i = rank_; i > pos; --i) d_[i] = d_[i - 1];
  d_[pos] = n;
  ++rank_;
}
void Shape::erase(size_t pos) {
  for (size_t i = pos; i + 1 < rank_; ++i) d_[i] = d_[i + 1];
  --rank_;
}
std::string Shape::str() const {
  std::string s = "[";
  for (size_t i = 0; i < rank_; ++i) s += (i ? "," : "") + std::to_string(d_[i]);
  return s + "]";
}

size_t normalize_dim(const char* op, int64_t dim, size_t rank) {
  int64_t r = static_cast<int64_t>(rank);
  if (dim < -r || dim >= r || (r == 0))
    fail(op, ": dim ", dim, " is out of range for a tensor of rank ", rank);
  return static_cast<size_t>(dim < 0 ? dim + r : dim);
}

// ---- TensorImpl lifetime -----------------------------------------------------------------------
static size_t header_size() { return (sizeof(TensorImpl) + 15) / 16 * 16; }

// Data of 64 bytes or more starts on a 64-byte boundary: SIMD kernels then split every buffer
// the same way (aligned body, no scalar head), so results do not depend on where malloc put it.
// Smaller data (a scalar in a long chain) stays packed right after the header.
static constexpr size_t kAlign = 64;

// Bytes for `shape` of `dtype`; an Error when the size does not fit (the product of huge extents
// would otherwise wrap around to a small buffer).
static size_t checked_nbytes(Dtype dtype, const Shape& shape) {
  size_t n = dtype_size(dtype);
  for (size_t d : shape)
    if (__builtin_mul_overflow(n, d, &n) || n > (size_t(1) << 48))
      fail("tensor of shape ", shape, " and dtype ", dtype, " is too large to allocate");
  return n;
}

Ref<TensorImpl> TensorImpl::create(Dtype dtype, const Shape& shape) {
  size_t nbytes = checked_nbytes(dtype, shape);
  size_t slack = nbytes >= kAlign ? kAlign - 1 : 0;
  void* mem;
  try {
    mem = detail::pool_alloc(header_size() + slack + nbytes);
  } catch (const std::bad_alloc&) {
    fail("out of memory allocating a tensor of shape ", shape, " (", nbytes, " bytes)");
  }
  auto* p = new (mem) TensorImpl;
  p->dtype = dtype;
  p->shape = shape;
  auto addr = reinterpret_cast<uintptr_t>(mem) + header_size();  // data lives after the header
  p->data = reinterpret_cast<void*>(slack ? (addr + slack) & ~uintptr_t(kAlign - 1) : addr);
  return Ref<TensorImpl>::adopt(p);
}

// The size of the block holding p (header, alignment slack, data), as create/view_of made it.
static size_t block_size(const TensorImpl* p) {
  if (p->base) return header_size();
  size_t nbytes = p->nbytes();
  return header_size() + (nbytes >= kAlign ? kAlign - 1 : 0) + nbytes;
}

Ref<TensorImpl> TensorImpl::view_of(const Ref<TensorImpl>& src, const Shape& shape) {
  void* mem = detail::pool_alloc(header_size());
  auto* p = new (mem) TensorImpl;
  p->dtype = src->dtype;
  p->shape = shape;
  p->data = src->data;
  p->base = src->base ? src->base : src;  // always point at the owner: views of views stay flat
  return Ref<TensorImpl>::adopt(p);
}

// Destroying the last tensor of a long chain frees its node, whose inputs may then die, and so
// on: done with recursion that would overflow the stack after ~100k ops. Instead each dying
// tensor is pushed on a thread-local list (linked through its `data` field, which is no longer
// needed) and the outermost call drains the list in a loop.
namespace {
thread_local TensorImpl* dead_list = nullptr;
thread_local bool draining = false;
}  // namespace

void TensorImpl::destroy(TensorImpl* p) {
  p->data = dead_list;
  dead_list = p;
  if (draining) return;
  draining = true;
  while (dead_list) {
    TensorImpl* q = dead_list;
    dead_list = static_cast<TensorImpl*>(q->data);
    delete q->node;  // releases its inputs: they may join the list
    if (q->has(kHasExtras)) detail::drop_extras(q);
    size_t bytes = block_size(q);
    q->~TensorImpl();  // releases base, grad, pending: the same
    detail::pool_free(q, bytes);
  }
  draining = false;
}

// ---- Tensor --------------------------------------------------------------------------------------
size_t Tensor::size(int64_t dim) const { return shape()[normalize_dim("size", dim, this->dim())]; }

Tensor& Tensor::requires_grad_(bool on) {
  TensorImpl* p = checked();
  if (!is_leaf())
    fail("requires_grad_: only leaf tensors can change requires_grad (tensor made by ", op_name(),
         "; use detach() for a leaf)");
  if (on && p->dtype == kInt64) fail("requires_grad_: int64 tensors cannot require gradients");
  p->set(TensorImpl::kRequiresGrad, on);
  return *this;
}

Tensor Tensor::grad() const {
  TensorImpl* p = checked();
  if (!is_leaf() && !p->has(TensorImpl::kRetainGrad) && !p->grad) {
    static thread_local bool warned = false;
    if (!warned)
      std::cerr << "tapegrad warning: grad() of a non-leaf tensor of shape " << p->shape
                << " is undefined; call retain_grad() on it before backward() to keep it\n";
    warned = true;
  }
  return Tensor(p->grad);
}

void Tensor::set_grad(const Tensor& g) {
  TensorImpl* p = checked();
  if (g.defined() && (g.shape() != p->shape || g.dtype() != p->dtype))
    fail("set_grad: gradient ", g.shape(), " ", g.dtype(), " does not match tensor ", p->shape, " ",
         p->dtype);
  p->grad = g.ref();
}

void Tensor::zero_grad() { checked()->grad.reset(); }

void Tensor::retain_grad() {
  TensorImpl* p = checked();
  if (!requires_grad()) fail("retain_grad: tensor does not require grad");
  p->set(TensorImpl::kRetainGrad, true);
}

Tensor Tensor::detach() const { return Tensor(TensorImpl::view_of(impl_, checked()->shape)); }

void Tensor::backward(const Tensor& gradient, bool retain_graph, bool create_graph) const {
  tapegrad::backward({*this}, gradient.defined() ? std::vector<Tensor>{gradient} : std::vector<Tensor>{},
                     retain_graph, create_graph);
}

const char* Tensor::op_name() const {
  TensorImpl* p = checked();
  return p->node ? p->node->name : "";
}

static double read_at(const TensorImpl* p, size_t i) {
  switch (p->dtype) {
    case kFloat32: return static_cast<const float*>(p->data)[i];
    case kFloat64: return static_cast<const double*>(p->data)[i];
    case kInt64: return static_cast<double>(static_cast<const int64_t*>(p->data)[i]);
  }
  return 0;
}
static void write_at(TensorImpl* p, size_t i, double v) {
  switch (p->dtype) {
    case kFloat32: static_cast<float*>(p->data)[i] = static_cast<float>(v); break;
    case kFloat64: static_cast<double*>(p->data)[i] = v; break;
    case kInt64:
      // 2^63 itself is out of range; NaN fails both comparisons
      if (!(v >= -9223372036854775808.0 && v < 9223372036854775808.0))
        fail("int64 tensor: value ", v, " is not representable as int64");
      static_cast<int64_t*>(p->data)[i] = static_cast<int64_t>(v);
      break;
  }
}

double Tensor::item() const {
  TensorImpl* p = checked();
  if (p->numel() != 1) fail("item: tensor of shape ", p->shape, " has ", p->numel(), " elements, not 1");
  return read_at(p, 0);
}

std::vector<double> Tensor::to_vector() const {
  TensorImpl* p = checked();
  std::vector<double> v(p->numel());
  for (size_t i = 0; i < v.size(); ++i) v[i] = read_at(p, i);
  return v;
}

// Printing, PyTorch style: tensor([[1, 2], [3, 4]], grad_fn=<mul>). Long dims are elided.
static void print_dim(std::ostream& os, const TensorImpl* p, size_t dim, size_t offset, size_t stride_prod,
                      size_t indent) {
  const Shape& s = p->shape;
  size_t n = s[dim], stride = stride_prod / n;
  bool elide = n > 6 && p->numel() > 1000;
  os << '[';
  for (size_t i = 0; i < n; ++i) {
    if (elide && i == 3) {
      os << (dim + 1 == s.rank() ? "..., " : "...,\n" + std::string(indent + 1, ' '));
      i = n - 3;
    }
    if (dim + 1 == s.rank()) {
      os << read_at(p, offset + i);
    } else {
      print_dim(os, p, dim + 1, offset + i * stride, stride, indent + 1);  // depth ≤ rank ≤ 6
    }
    if (i + 1 < n) os << (dim + 1 == s.rank() ? ", " : ",\n" + std::string(indent + 1, ' '));
  }
  os << ']';
}

std::string Tensor::str() const {
  if (!impl_) return "tensor(undefined)";
  std::ostringstream os;
  os << std::setprecision(6) << "tensor(";
  if (impl_->shape.rank() == 0) os << read_at(impl_.get(), 0);
  else if (impl_->numel() == 0) os << "[], size=" << impl_->shape;
  else print_dim(os, impl_.get(), 0, 0, impl_->numel(), 7);
  if (impl_->dtype != kFloat32) os << ", dtype=" << impl_->dtype;
  if (impl_->node) os << ", grad_fn=<" << impl_->node->name << '>';
  else if (requires_grad()) os << ", requires_grad=true";
  os << ')';
  return os.str();
}

std::ostream& operator<<(std::ostream& os, const Tensor& t) { return os << t.str(); }

// ---- factories ---------------------------------------------------------------------------------
static Tensor finish(Ref<TensorImpl> impl, TensorOptions opt) {
  Tensor t(std::move(impl));
  if (opt.requires_grad_) t.requires_grad_(true);
  return t;
}

Tensor empty(const Shape& shape, TensorOptions opt) {
  return finish(TensorImpl::create(opt.dtype_, shape), opt);
}
Tensor full(const Shape& shape, double value, TensorOptions opt) {
  auto p = TensorImpl::create(opt.dtype_, shape);
  size_t n = p->numel();
  if (n > 0) {
    write_at(p.get(), 0, value);  // converts (and range-checks for int64) once
    char* d = static_cast<char*>(p->data);
    switch (p->dtype) {  // then a typed fill: zeros() runs in every backward that pads or scatters
      case kFloat32: std::fill_n(reinterpret_cast<float*>(d) + 1, n - 1, *reinterpret_cast<float*>(d)); break;
      case kFloat64: std::fill_n(reinterpret_cast<double*>(d) + 1, n - 1, *reinterpret_cast<double*>(d)); break;
      case kInt64: std::fill_n(reinterpret_cast<int64_t*>(d) + 1, n - 1, *reinterpret_cast<int64_t*>(d)); break;
    }
  }
  return finish(std::move(p), opt);
}
Tensor zeros(const Shape& shape, TensorOptions opt) { return full(shape, 0.0, opt); }
Tensor ones(const Shape& shape, TensorOptions opt) { return full(shape, 1.0, opt); }
Tensor zeros_like(const Tensor& t) { return zeros(t.shape(), t.dtype()); }
Tensor ones_like(const Tensor& t) { return ones(t.shape(), t.dtype()); }
Tensor scalar_tensor(double value, TensorOptions opt) { return full(Shape{}, value, opt); }

Tensor arange(double end, TensorOptions opt) { return arange(0.0, end, 1.0, opt); }
Tensor arange(double start, double end, double step, TensorOptions opt) {
  if (step == 0 || !std::isfinite(start) || !std::isfinite(end) || !std::isfinite(step))
    fail("arange: start ", start, ", end ", end, ", step ", step, " do not give a finite range");
  double count = std::ceil((end - start) / step);
  if (count > 1e15) fail("arange: start ", start, ", end ", end, ", step ", step, " give too many elements");
  size_t n = count > 0 ? static_cast<size_t>(count) : 0;
  auto p = TensorImpl::create(opt.dtype_, Shape{n});
  for (size_t i = 0; i < n; ++i) write_at(p.get(), i, start + step * static_cast<double>(i));
  return finish(std::move(p), opt);
}

Tensor from_vector(const std::vector<double>& values, const Shape& shape, TensorOptions opt) {
  if (values.size() != shape.numel())
    fail("from_vector: ", values.size(), " values do not fill shape ", shape);
  auto p = TensorImpl::create(opt.dtype_, shape);
  for (size_t i = 0; i < values.size(); ++i) write_at(p.get(), i, values[i]);
  return finish(std::move(p), opt);
}

Tensor from_indices(const std::vector<int64_t>& values, const Shape& shape) {
  if (values.size() != shape.numel())
    fail("from_indices: ", values.size(), " values do not fill shape ", shape);
  auto p = TensorImpl::create(kInt64, shape);
  std::copy(values.begin(), values.end(), static_cast<int64_t*>(p->data));
  return Tensor(std::move(p));
}

Tensor tensor(std::initializer_list<double> v, TensorOptions opt) {
  return from_vector(std::vector<double>(v), Shape{v.size()}, opt);
}
Tensor tensor(std::initializer_list<std::initializer_list<double>> v, TensorOptions opt) {
  std::vector<double> flat;
  size_t cols = v.size() ? v.begin()->size() : 0;
  for (auto& row : v) {
    if (row.size() != cols) fail("tensor: ragged nested list (rows of ", cols, " and ", row.size(), ")");
    flat.insert(flat.end(), row.begin(), row.end());
  }
  return from_vector(flat, Shape{v.size(), cols}, opt);
}
Tensor tensor(std::initializer_list<std::initializer_list<std::initializer_list<double>>> v,
              TensorOptions opt) {
  std::vector<double> flat;
  size_t rows = v.size() ? v.begin()->size() : 0;
  size_t cols = rows ? v.begin()->begin()->size() : 0;
  for (auto& m : v) {
    if (m.size() != rows) fail("tensor: ragged nested list");
    for (auto& row : m) {
      if (row.size() != cols) fail("tensor: ragged nested list");
      flat.insert(flat.end(), row.begin(), row.end());
    }
  }
  return from_vector(flat, Shape{v.size(), rows, cols}, opt);
}

Generator& default_generator() {
  thread_local Generator gen;
  return gen;
}
void manual_seed(uint64_t seed) { default_generator().manual_seed(seed); }

template <class Dist>
static Tensor random_fill(const Shape& shape, TensorOptions opt, Generator* gen, Dist dist) {
  if (opt.dtype_ == kInt64) fail("random: use randint for int64 tensors");
  auto& eng = (gen ? *gen : default_generator()).engine();
  auto p = TensorImpl::create(opt.dtype_, shape);
  for (size_t i = 0, n = p->numel(); i < n; ++i) write_at(p.get(), i, dist(eng));
  return finish(std::move(p), opt);
}
Tensor rand(const Shape& shape, TensorOptions opt, Generator* gen) {
  return random_fill(shape, opt, gen, std::uniform_real_distribution<double>(0.0, 1.0));
}
Tensor randn(const Shape& shape, TensorOptions opt, Generator* gen) {
  return random_fill(shape, opt, gen, std::normal_distribution<double>(0.0, 1.0));
}
Tensor randint(int64_t low, int64_t high, const Shape& shape, Generator* gen) {
  if (low >= high) fail("randint: empty range [", low, ", ", high, ")");
  auto& eng = (gen ? *gen : default_generator()).engine();
  std::uniform_int_distribution<int64_t> dist(low, high - 1);
  auto p = TensorImpl::create(kInt64, shape);
  auto* d = static_cast<int64_t*>(p->data);
  for (size_t i = 0, n = p->numel(); i < n; ++i) d[i] = dist(eng);
  return Tensor(std::move(p));
}

void set_num_threads(int n) {
  if (n < 1) fail("set_num_threads: need at least 1 thread, got ", n);
  if (detail::in_part())  // the threads are running the job this call comes from
    fail("set_num_threads: called while the threads run a shard (backward_sharded's loss function); call it outside");
  detail::set_intra_op_threads(n);
}
int get_num_threads() { return detail::intra_op_threads(); }

}  // namespace tapegrad

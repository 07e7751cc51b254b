#pragma once
// Tensor: a cheap handle (one pointer) to a TensorImpl. Copies share the value, the gradient and
// the node that made it. A TensorImpl owns its data in the same allocation, or views the data of
// a base tensor (reshape, detach), sharing that base's version counter.
#include <atomic>
#include <cstdint>
#include <initializer_list>
#include <iosfwd>
#include <random>
#include <string>
#include <vector>

#include "error.hpp"
#include "ref.hpp"
#include "shape.hpp"

namespace tapegrad {

struct Node;
struct TensorExtras;
class Tensor;

struct TensorImpl {
  // kOnLane: a task on the sweep's lane adds into this leaf's pending gradient (engine/autograd.cpp).
  enum Flag : uint8_t { kRequiresGrad = 1, kNonLeaf = 2, kReleased = 4, kRetainGrad = 8, kHasExtras = 16, kOnLane = 32 };

  std::atomic<uint32_t> refs{1};
  uint32_t version = 0;  // bumped by every in-place write; lives on the data's owner
  Dtype dtype = kFloat32;
  uint8_t flags = 0;
  uint32_t visit = 0;  // sweep epoch marker, so a sweep visits each tensor once
  Shape shape;
  void* data = nullptr;
  Ref<TensorImpl> base;     // data owner, when this tensor is a view of another's data
  Ref<TensorImpl> grad;     // .grad(): accumulated across backward() calls
  Ref<TensorImpl> pending;  // the gradient being summed during one sweep
  Node* node = nullptr;     // the op that made this tensor, with its inputs; null for leaves
  // Hooks and other rarely used state live in a side table (kHasExtras), keeping this small.

  static Ref<TensorImpl> create(Dtype dtype, const Shape& shape);  // uninitialised data
  static Ref<TensorImpl> view_of(const Ref<TensorImpl>& src, const Shape& shape);
  static void destroy(TensorImpl* p);  // iterative: a long chain never recurses

  bool has(Flag f) const { return flags & f; }
  void set(Flag f, bool on) { flags = on ? (flags | f) : (flags & ~f); }
  size_t numel() const { return shape.numel(); }
  size_t nbytes() const { return numel() * dtype_size(dtype); }
  TensorImpl* owner() { return base ? base.get() : this; }
  // True when nobody else can see this buffer, so a gradient may be accumulated into it in place.
  bool unique() const { return refs.load(std::memory_order_relaxed) == 1 && !base; }
};

struct TensorOptions {
  Dtype dtype_ = kFloat32;
  bool requires_grad_ = false;
  TensorOptions() = default;
  TensorOptions(Dtype d) : dtype_(d) {}  // NOLINT: implicit, as in libtorch (zeros(s, kFloat64))
  TensorOptions dtype(Dtype d) const { TensorOptions o = *this; o.dtype_ = d; return o; }
  TensorOptions requires_grad(bool r = true) const { TensorOptions o = *this; o.requires_grad_ = r; return o; }
};
inline TensorOptions dtype(Dtype d) { return TensorOptions(d); }
inline TensorOptions requires_grad(bool r = true) { return TensorOptions().requires_grad(r); }

class Tensor {
 public:
  Tensor() = default;  // undefined: defined() is false
  explicit Tensor(Ref<TensorImpl> impl) : impl_(std::move(impl)) {}

  bool defined() const { return bool(impl_); }
  TensorImpl* impl() const { return impl_.get(); }
  const Ref<TensorImpl>& ref() const { return impl_; }

  Dtype dtype() const { return checked()->dtype; }
  const Shape& shape() const { return checked()->shape; }
  std::vector<size_t> sizes() const { return shape().vec(); }
  size_t dim() const { return shape().rank(); }
  size_t size(int64_t dim) const;
  size_t numel() const { return shape().numel(); }

  bool requires_grad() const { return checked()->has(TensorImpl::kRequiresGrad); }
  // Only leaves can be switched: a computed tensor's requirement follows from its inputs.
  Tensor& requires_grad_(bool on = true);
  Tensor& set_requires_grad(bool on) { return requires_grad_(on); }
  bool is_leaf() const { return !checked()->has(TensorImpl::kNonLeaf); }
  // The accumulated gradient: undefined until a backward() reaches this tensor. For a non-leaf
  // it stays undefined (with a warning on stderr) unless retain_grad() was called before.
  Tensor grad() const;
  void set_grad(const Tensor& g);  // replace .grad() (shape and dtype must match)
  void zero_grad();  // drop the accumulated gradient (set to undefined, like set_to_none)
  void retain_grad();
  bool retains_grad() const { return checked()->has(TensorImpl::kRetainGrad); }
  // A new leaf sharing this tensor's data, cut from the graph.
  Tensor detach() const;

  // backward(): seeds 1 for a one-element tensor, otherwise needs `gradient` of this shape.
  void backward(const Tensor& gradient = {}, bool retain_graph = false, bool create_graph = false) const;

  double item() const;  // one-element tensors only
  template <class T> T item() const { return static_cast<T>(item()); }
  // Raw contiguous row-major data. Writing through it bypasses stale-value detection: call
  // bump_version() after an in-place write that a recorded graph may have saved.
  template <class T> T* data_ptr() const;
  uint32_t version() const { return checked()->owner()->version; }
  void bump_version() const { ++checked()->owner()->version; }

  // xtensor interop (defined in engine/interop.hpp): a zero-copy expression over the value,
  // a mutable one (bumps the version), and a copy.
  template <class T> auto value() const;
  template <class T> auto mutable_value() const;
  template <class T> auto to_xarray() const;

  std::string str() const;
  const char* op_name() const;  // name of the op that made it, "" for a leaf
  // Values as doubles, row-major (handy in tests and for printing).
  std::vector<double> to_vector() const;

 private:
  TensorImpl* checked() const {
    if (!impl_) fail("use of an undefined tensor (default-constructed, or a gradient not computed yet)");
    return impl_.get();
  }
  Ref<TensorImpl> impl_;
};

std::ostream& operator<<(std::ostream& os, const Tensor& t);

template <class T> constexpr Dtype dtype_of();
template <> constexpr Dtype dtype_of<float>() { return kFloat32; }
template <> constexpr Dtype dtype_of<double>() { return kFloat64; }
template <> constexpr Dtype dtype_of<int64_t>() { return kInt64; }

template <class T>
T* Tensor::data_ptr() const {
  TensorImpl* p = checked();
  if (p->dtype != dtype_of<T>())
    fail("data_ptr: tensor has dtype ", p->dtype, ", asked for ", dtype_of<T>());
  return static_cast<T*>(p->data);
}

// ---- factories -------------------------------------------------------------------------------
Tensor empty(const Shape& shape, TensorOptions opt = {});
Tensor zeros(const Shape& shape, TensorOptions opt = {});
Tensor ones(const Shape& shape, TensorOptions opt = {});
Tensor full(const Shape& shape, double value, TensorOptions opt = {});
Tensor zeros_like(const Tensor& t);
Tensor ones_like(const Tensor& t);
Tensor scalar_tensor(double value, TensorOptions opt = {});  // 0-d
Tensor arange(double end, TensorOptions opt = {});
Tensor arange(double start, double end, double step = 1.0, TensorOptions opt = {});
Tensor from_vector(const std::vector<double>& values, const Shape& shape, TensorOptions opt = {});
Tensor from_indices(const std::vector<int64_t>& values, const Shape& shape);  // int64 tensor
// Nested initializer lists: tensor({1, 2}), tensor({{1, 2}, {3, 4}}), tensor({{{...}}}).
Tensor tensor(std::initializer_list<double> v, TensorOptions opt = {});
Tensor tensor(std::initializer_list<std::initializer_list<double>> v, TensorOptions opt = {});
Tensor tensor(std::initializer_list<std::initializer_list<std::initializer_list<double>>> v,
              TensorOptions opt = {});

// A seedable source of random numbers; one default generator per thread.
class Generator {
 public:
  explicit Generator(uint64_t seed = 5489u) : engine_(seed) {}
  void manual_seed(uint64_t seed) { engine_.seed(seed); }
  std::mt19937_64& engine() { return engine_; }

 private:
  std::mt19937_64 engine_;
};
Generator& default_generator();
void manual_seed(uint64_t seed);
Tensor rand(const Shape& shape, TensorOptions opt = {}, Generator* gen = nullptr);   // U[0,1)
Tensor randn(const Shape& shape, TensorOptions opt = {}, Generator* gen = nullptr);  // N(0,1)
Tensor randint(int64_t low, int64_t high, const Shape& shape, Generator* gen = nullptr);  // int64

// Intra-op threads: products are cut into blocks that this thread and n − 1 helpers compute side by
// side, each with OpenBLAS on one thread (engine/parallel.hpp). The default is OpenBLAS's default
// (OPENBLAS_NUM_THREADS, else the number of cores). tapegrad's other kernels run on one thread.
void set_num_threads(int n);
int get_num_threads();

// The kernels OpenBLAS picked for this CPU, as it names them ("SkylakeX", "Haswell", "Zen", ...).
// "Prescott" on a recent CPU means OpenBLAS did not know it; tapegrad then warns once on stderr at
// its first BLAS product and names the OPENBLAS_CORETYPE to set (engine/blas.hpp).
std::string blas_core();

}  // namespace tapegrad

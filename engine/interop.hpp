#pragma once
// xtensor interop: tensor values as xtensor expressions (no copy), and tensors from xtensor data.
#include <xtensor/xadapt.hpp>
#include <xtensor/xarray.hpp>

#include "tensor.hpp"

namespace tapegrad {

// A read-only xtensor view of the value (row-major, no copy). Valid while the tensor lives.
template <class T>
auto Tensor::value() const {
  const T* p = data_ptr<T>();
  return xt::adapt(p, numel(), xt::no_ownership(), xt::dynamic_shape<size_t>(shape().begin(), shape().end()));
}

// A writable view. Bumps the version counter first: a graph that saved this value will refuse
// to backward through it (the saved value would be stale).
template <class T>
auto Tensor::mutable_value() const {
  T* p = data_ptr<T>();
  bump_version();
  return xt::adapt(p, numel(), xt::no_ownership(), xt::dynamic_shape<size_t>(shape().begin(), shape().end()));
}

template <class T>
auto Tensor::to_xarray() const {
  return xt::xarray<T>(value<T>());
}

// A new leaf holding a copy of any xtensor expression of float, double or int64_t.
template <class E>
Tensor from_xtensor(const xt::xexpression<E>& expr, bool requires_grad = false) {
  using T = typename E::value_type;
  xt::xarray<T> a = expr.derived_cast();
  Shape shape(a.shape().begin(), a.shape().end());
  Tensor t(TensorImpl::create(dtype_of<T>(), shape));
  std::copy(a.begin(), a.end(), t.data_ptr<T>());
  if (requires_grad) t.requires_grad_(true);
  return t;
}

}  // namespace tapegrad

#pragma once
// Runs a templated lambda for the tensor's element type: dispatch(op, dtype, [&]<class T>() {...}).
#include "shape.hpp"

namespace tapegrad {

template <class F>
decltype(auto) dispatch(const char* op, Dtype d, F&& f) {
  switch (d) {
    case kFloat32: return f.template operator()<float>();
    case kFloat64: return f.template operator()<double>();
    default: fail(op, ": dtype ", d, " is not supported here (float32 or float64 expected)");
  }
}

}  // namespace tapegrad

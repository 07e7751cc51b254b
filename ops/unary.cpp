// Unary elementwise ops. Where the derivative is cheaper from the output (tanh, exp, sigmoid,
// sqrt), the backward reads the output instead of the input.
#include "kernel.hpp"

namespace tapegrad {
using namespace kernel;

// out = f(x), elementwise, vectorised by xtensor/xsimd.
template <class F>
static Tensor unary(const char* op, const Tensor& x, F f) {
  check_float(op, x);
  Tensor out = empty_out(x.dtype(), x.shape());
  dispatch(op, x.dtype(), [&]<class T>() {
    auto o = flat_mut<T>(out);
    xt::noalias(o) = f(flat<T>(x));
  });
  return out;
}

// tanh: y = tanh(x)      dx = dy·(1 - y²)
Tensor tanh(const Tensor& x) {
  Tensor out = unary("tanh", x, [](auto&& v) { return xt::tanh(v); });
  return record("tanh", out, {x}, [](Backward& g) {
    const Tensor& y = g.out();
    g.add(0, g.dout() * (1.0 - y * y));
  });
}

}  // namespace tapegrad

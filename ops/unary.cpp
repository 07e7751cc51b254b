// Unary elementwise ops. Where the derivative is cheaper from the output (tanh, exp, sigmoid,
// sqrt), the backward reads the output instead of the input. Every backward is written with
// ops, so gradients of gradients work; the step functions in derivatives (relu, abs, clamp) are
// constant masks, whose own derivative is 0 almost everywhere.
#include <cmath>
#include <limits>

#include "kernel.hpp"

namespace tapegrad {
using namespace kernel;

namespace {

constexpr double kInvSqrt2 = 0.70710678118654752440;    // 1/√2
constexpr double kInvSqrt2Pi = 0.39894228040143267794;  // 1/√(2π)

// out = f(x), elementwise, vectorised by xtensor/xsimd.
template <class F>
Tensor unary(const char* op, const Tensor& x, F f) {
  check_float(op, x);
  Tensor out = empty_out(x.dtype(), x.shape());
  dispatch(op, x.dtype(), [&]<class T>() {
    const T* src = x.data_ptr<T>();
    write_out(out.data_ptr<T>(), x.numel(), [&](size_t begin, size_t end, T* dst) {
      auto o = flat_mut(dst, end - begin);
      xt::noalias(o) = f(flat(src + begin, end - begin));
    });
  });
  return out;
}

// A constant (never recorded) tensor of x's dtype and shape holding f(v) for each value v of x:
// the masks of piecewise derivatives (x > 0 as 0/1, sign(x), lo <= x <= hi).
template <class F>
Tensor constant_map(const char* op, const Tensor& x, F f) {
  Tensor out = empty_out(x.dtype(), x.shape());
  dispatch(op, x.dtype(), [&]<class T>() {
    const T* s = static_cast<const T*>(x.impl()->data);
    T* d = static_cast<T*>(out.impl()->data);
    for (size_t i = 0, n = x.numel(); i < n; ++i) d[i] = static_cast<T>(f(s[i]));
  });
  return out;
}

// φ(x) = exp(-x²/2)/√(2π), the standard normal density, written with ops (differentiable).
Tensor normal_pdf(const Tensor& x) { return exp(x * x * -0.5) * kInvSqrt2Pi; }

// normal_cdf: y = Φ(x) = (1 + erf(x/√2))/2      dx = dy·φ(x)
Tensor normal_cdf(const Tensor& x) {
  Tensor out = unary("normal_cdf", x, [](auto&& v) {
    using T = typename std::decay_t<decltype(v)>::value_type;
    return T(0.5) * (T(1) + xt::erf(v * T(kInvSqrt2)));
  });
  return record("normal_cdf", out, {x}, [](Backward& g) { g.add(0, g.dout() * normal_pdf(g.input(0))); });
}

}  // namespace

// tanh: y = tanh(x)      dx = dy·(1 - y²)
Tensor tanh(const Tensor& x, CallSite site) {
  const SiteScope in(site);
  Tensor out = unary("tanh", x, [](auto&& v) { return xt::tanh(v); });
  return record("tanh", out, {x}, [](Backward& g) { g.add(0, tanh_backward(g.dout(), g.out()), "dx = dout·(1 - y²)"); });
}

// The derivative rules of tanh and sigmoid as single ops: one pass and one buffer instead of
// three or four temporaries, in the backward of every tanh/sigmoid layer. Each is differentiable.
template <class F>
static Tensor from_output_rule(const char* op, const Tensor& dy, const Tensor& y, F f) {
  check_same_dtype(op, dy, y);
  if (dy.shape() != y.shape()) fail(op, ": gradient ", dy.shape(), " and output ", y.shape(), " differ");
  Tensor out = empty_out(y.dtype(), y.shape());
  dispatch(op, y.dtype(), [&]<class T>() {
    const T* d = dy.data_ptr<T>();
    const T* v = y.data_ptr<T>();
    write_out(out.data_ptr<T>(), y.numel(), [&](size_t begin, size_t end, T* o) {
      for (size_t i = begin; i < end; ++i) o[i - begin] = f(d[i], v[i]);
    });
  });
  return out;
}

// tanh_backward: dx = dy·(1 - y²)      d(dy) = ddx·(1 - y²)      d(y) = -2·ddx·dy·y
Tensor tanh_backward(const Tensor& dy, const Tensor& y, CallSite site) {
  const SiteScope in(site);
  Tensor out = from_output_rule("tanh_backward", dy, y, [](auto d, auto v) { return d * (1 - v * v); });
  return record("tanh_backward", out, {dy, y}, [](Backward& g) {
    const Tensor &dy = g.input(0), &y = g.input(1);
    if (g.wants(0)) g.add(0, tanh_backward(g.dout(), y));
    if (g.wants(1)) g.add(1, g.dout() * dy * y * -2.0);
  }, "dy y");
}

// sigmoid_backward: dx = dy·y·(1 - y)      d(dy) = ddx·y·(1 - y)      d(y) = ddx·dy·(1 - 2y)
Tensor sigmoid_backward(const Tensor& dy, const Tensor& y, CallSite site) {
  const SiteScope in(site);
  Tensor out = from_output_rule("sigmoid_backward", dy, y, [](auto d, auto v) { return d * v * (1 - v); });
  return record("sigmoid_backward", out, {dy, y}, [](Backward& g) {
    const Tensor &dy = g.input(0), &y = g.input(1);
    if (g.wants(0)) g.add(0, sigmoid_backward(g.dout(), y));
    if (g.wants(1)) g.add(1, g.dout() * dy * (1.0 - 2.0 * y));
  }, "dy y");
}

// exp: y = eˣ      dx = dy·y
Tensor exp(const Tensor& x, CallSite site) {
  const SiteScope in(site);
  Tensor out = unary("exp", x, [](auto&& v) { return safe_exp(v); });
  return record("exp", out, {x}, [](Backward& g) { g.add(0, g.dout() * g.out()); });
}

// log: y = ln x      dx = dy / x
Tensor log(const Tensor& x, CallSite site) {
  const SiteScope in(site);
  Tensor out = unary("log", x, [](auto&& v) { return xt::log(v); });
  return record("log", out, {x}, [](Backward& g) { g.add(0, g.dout() / g.input(0)); });
}

// sqrt: y = √x      dx = dy / (2y)
Tensor sqrt(const Tensor& x, CallSite site) {
  const SiteScope in(site);
  Tensor out = unary("sqrt", x, [](auto&& v) { return xt::sqrt(v); });
  return record("sqrt", out, {x}, [](Backward& g) { g.add(0, g.dout() / (g.out() * 2.0)); });
}

// out[i] = std::pow(x[i], e[i]) over same-shape tensors (scalar loop: xsimd's pow trips gcc
// warnings under AVX-512, and pow is never on a hot path).
static void pow_kernel(const Tensor& x, const Tensor& e, const Tensor& out) {
  dispatch("pow", x.dtype(), [&]<class T>() {
    const T *a = x.data_ptr<T>(), *b = e.data_ptr<T>();
    T* o = out.data_ptr<T>();
    size_t n = out.numel(), be = e.numel() == 1 ? 0 : 1;  // be = 0: a one-element exponent
    for (size_t i = 0; i < n; ++i) o[i] = std::pow(a[i], b[i * be]);
  });
}

// pow: y = xᵖ (p a number)      dx = dy·p·xᵖ⁻¹
Tensor pow(const Tensor& x, double p, CallSite site) {
  const SiteScope in(site);
  check_float("pow", x);
  Tensor out = empty_out(x.dtype(), x.shape());
  pow_kernel(x, scalar_like(x, p), out);
  return record("pow", out, {x}, [p](Backward& g) {
    const Tensor& x = g.input(0);
    if (p == 0.0) g.add(0, zeros_like(x));  // y = 1: constant
    else if (p == 1.0) g.add(0, g.dout());
    else if (p == 2.0) g.add(0, g.dout() * x * 2.0);
    else g.add(0, g.dout() * pow(x, p - 1.0) * p);
  });
}

// pow: y = xᵉ (e a tensor, broadcast with x)      dx = dy·e·xᵉ⁻¹      de = dy·y·ln x
// At x = 0 the exponent's derivative is taken as 0 (PyTorch's choice): ln is read at 1 there.
Tensor pow(const Tensor& x, const Tensor& e, CallSite site) {
  const SiteScope in(site);
  check_same_dtype("pow", x, e);
  Shape shape = broadcast_shapes("pow", x.shape(), e.shape());
  Tensor out = empty_out(x.dtype(), shape);
  {
    NoGradGuard no_grad;  // operands broadcast to the output's shape (no copy when it already fits)
    Tensor xb = expand(x, shape), eb = e.numel() == 1 ? e : expand(e, shape);
    pow_kernel(xb, eb, out);
  }
  return record("pow", out, {x, e}, [](Backward& g) {
    const Tensor &x = g.input(0), &e = g.input(1), &dy = g.dout();
    if (g.wants(0)) g.add(0, sum_to(dy * e * pow(x, e - 1.0), x.shape()));
    if (g.wants(1)) {
      Tensor ln_x = log(x + constant_map("pow", x, [](auto v) { return v == 0 ? 1 : 0; }));
      g.add(1, sum_to(dy * g.out() * ln_x, e.shape()));
    }
  });
}

// abs: y = |x|      dx = dy·sign(x)   (0 at 0)
Tensor abs(const Tensor& x, CallSite site) {
  const SiteScope in(site);
  Tensor out = unary("abs", x, [](auto&& v) { return xt::abs(v); });
  return record("abs", out, {x}, [](Backward& g) {
    g.add(0, g.dout() * constant_map("abs", g.input(0), [](auto v) { return (v > 0) - (v < 0); }));
  });
}

// sigmoid: y = 1/(1 + e⁻ˣ)      dx = dy·y·(1 - y)
// (for x → -∞, e⁻ˣ overflows to inf and y to exactly 0: no NaN on either side)
Tensor sigmoid(const Tensor& x, CallSite site) {
  const SiteScope in(site);
  Tensor out = unary("sigmoid", x, [](auto&& v) {
    using T = typename std::decay_t<decltype(v)>::value_type;
    return T(1) / (T(1) + safe_exp(-v));
  });
  return record("sigmoid", out, {x}, [](Backward& g) {
    g.add(0, sigmoid_backward(g.dout(), g.out()), "dx = dout·y·(1 - y)");
  });
}

// relu: y = max(x, 0)      dx = dy·[x > 0]
Tensor relu(const Tensor& x, CallSite site) {
  const SiteScope in(site);
  Tensor out = unary("relu", x, [](auto&& v) {
    using T = typename std::decay_t<decltype(v)>::value_type;
    return xt::maximum(v, T(0));
  });
  return record("relu", out, {x}, [](Backward& g) { g.add(0, relu_backward(g.dout(), g.out()), "dx = dout·[y > 0]"); });
}

// relu_backward: dx = dy·[y > 0]      d(dy) = ddx·[y > 0]      (the mask's own derivative is 0)
Tensor relu_backward(const Tensor& dy, const Tensor& y, CallSite site) {
  const SiteScope in(site);
  Tensor out = from_output_rule("relu_backward", dy, y, [](auto d, auto v) { return v > 0 ? d : decltype(d)(0); });
  return record("relu_backward", out, {dy, y}, [](Backward& g) {
    if (g.wants(0)) g.add(0, relu_backward(g.dout(), g.input(1)));
  }, "dy y");
}

// leaky_relu: y = x if x > 0 else s·x      dx = dy·(1 if x > 0 else s)
Tensor leaky_relu(const Tensor& x, double s, CallSite site) {
  const SiteScope in(site);
  Tensor out = unary("leaky_relu", x, [s](auto&& v) {
    using T = typename std::decay_t<decltype(v)>::value_type;
    return xt::where(v > T(0), v, v * static_cast<T>(s));
  });
  return record("leaky_relu", out, {x}, [s](Backward& g) {
    g.add(0, g.dout() * constant_map("leaky_relu", g.input(0), [s](auto v) { return v > 0 ? 1.0 : s; }));
  });
}

// gelu: y = x·Φ(x)      dx = dy·(Φ(x) + x·φ(x))
Tensor gelu(const Tensor& x, CallSite site) {
  const SiteScope in(site);
  Tensor out = unary("gelu", x, [](auto&& v) {
    using T = typename std::decay_t<decltype(v)>::value_type;
    return v * T(0.5) * (T(1) + xt::erf(v * T(kInvSqrt2)));
  });
  return record("gelu", out, {x}, [](Backward& g) {
    const Tensor& x = g.input(0);
    g.add(0, g.dout() * (normal_cdf(x) + x * normal_pdf(x)));
  });
}

// clamp: y = min(max(x, lo), hi)      dx = dy·[lo <= x <= hi]
Tensor clamp(const Tensor& x, double lo, double hi, CallSite site) {
  const SiteScope in(site);
  check_float("clamp", x);
  if (std::isnan(lo) || std::isnan(hi)) fail("clamp: bounds must not be NaN (lo ", lo, ", hi ", hi, ") for ", x.shape());
  if (lo > hi) fail("clamp: lo ", lo, " is greater than hi ", hi, " for input ", x.shape());
  Tensor out = empty_out(x.dtype(), x.shape());
  dispatch("clamp", x.dtype(), [&]<class T>() {
    const T* s = x.data_ptr<T>();
    T* d = out.data_ptr<T>();
    // bounds in T: an out-of-range double bound becomes ±inf, which still clamps correctly
    T l = static_cast<T>(lo), h = static_cast<T>(hi);
    for (size_t i = 0, n = x.numel(); i < n; ++i) d[i] = s[i] < l ? l : (s[i] > h ? h : s[i]);  // NaN stays NaN
  });
  return record("clamp", out, {x}, [lo, hi](Backward& g) {
    g.add(0, g.dout() * constant_map("clamp", g.input(0), [lo, hi](auto v) { return lo <= v && v <= hi ? 1 : 0; }));
  });
}

}  // namespace tapegrad

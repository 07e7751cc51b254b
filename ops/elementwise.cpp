// Elementwise arithmetic with NumPy broadcasting. Each backward sums its gradient back to the
// input's shape with sum_to, the one broadcasting helper.
#include "kernel.hpp"

namespace tapegrad {
using namespace kernel;

// out = f(a, b) with broadcasting. Same shapes and scalar operands take plain loops (the compiler
// vectorises them, and they cost nothing to set up for tiny tensors); the general case walks the
// broadcast with per-operand strides (kernel::broadcast_binary).
template <class F>
static Tensor binary(const char* op, const Tensor& a, const Tensor& b, F f) {
  check_same_dtype(op, a, b);
  Shape shape = broadcast_shapes(op, a.shape(), b.shape());
  Tensor out = empty_out(a.dtype(), shape);
  dispatch(op, a.dtype(), [&]<class T>() {
    const T* x = a.data_ptr<T>();
    const T* y = b.data_ptr<T>();
    T* o = out.data_ptr<T>();
    size_t n = out.numel();
    if (a.shape() == b.shape()) {
      write_out(o, n, [&](size_t begin, size_t end, T* dst) {
        for (size_t i = begin; i < end; ++i) dst[i - begin] = f(x[i], y[i]);
      });
    } else if (b.numel() == 1 && shape == a.shape()) {
      const T s = y[0];
      write_out(o, n, [&](size_t begin, size_t end, T* dst) {
        for (size_t i = begin; i < end; ++i) dst[i - begin] = f(x[i], s);
      });
    } else if (a.numel() == 1 && shape == b.shape()) {
      const T s = x[0];
      write_out(o, n, [&](size_t begin, size_t end, T* dst) {
        for (size_t i = begin; i < end; ++i) dst[i - begin] = f(s, y[i]);
      });
    } else {
      broadcast_binary<T>(x, a.shape(), y, b.shape(), o, shape, f);
    }
  });
  return out;
}

// add: y = a + b      da = dy      db = dy      (each summed to its input's shape)
Tensor add(const Tensor& a, const Tensor& b, CallSite site) {
  const SiteScope in(site);
  Tensor out = binary("add", a, b, [](auto&& x, auto&& y) { return x + y; });
  return record("add", out, {a, b}, [](Backward& g) {
    if (g.wants(0)) g.add(0, sum_to(g.dout(), g.input(0).shape()), "da += sum_to(dout)");
    if (g.wants(1)) g.add(1, sum_to(g.dout(), g.input(1).shape()), "db += sum_to(dout)");
  });
}

// sub: y = a - b      da = dy      db = -dy
Tensor sub(const Tensor& a, const Tensor& b, CallSite site) {
  const SiteScope in(site);
  Tensor out = binary("sub", a, b, [](auto&& x, auto&& y) { return x - y; });
  return record("sub", out, {a, b}, [](Backward& g) {
    if (g.wants(0)) g.add(0, sum_to(g.dout(), g.input(0).shape()), "da += sum_to(dout)");
    if (g.wants(1)) g.add(1, sum_to(neg(g.dout()), g.input(1).shape()), "db += sum_to(-dout)");
  });
}

// Input i's gradient dout·other, summed to input i's shape. When nothing was broadcast, the
// tensors are small (below the size write_out streams or cuts) and no graph of the backward is
// built, one loop writes it, or adds it, straight into input i's gradient (Backward::add_into): a
// factor used in many products (W1's a, 10,000 times) sums them in place, with no temporary and
// no op call for each. W1's backward 203-206 -> 155-161 ns/op (Zen 5 VM, 6 Dec 2026, runs of
// the two builds in turn on one vCPU).
static void add_mul_grad(Backward& g, size_t i, const Tensor& other, const char* rule) {
  if (!g.wants(i)) return;
  const Tensor& dout = g.dout();
  const Shape& shape = g.input(i).shape();
  if (g.create_graph() || dout.shape() != shape || other.shape() != shape ||
      dout.impl()->nbytes() >= streaming_threshold_bytes()) {
    g.add(i, sum_to(mul(dout, other), shape), rule);
    return;
  }
  g.add_into(i, [&](Tensor& dst, bool accumulate) {
    dispatch("mul", dst.dtype(), [&]<class T>() {
      T* d = dst.data_ptr<T>();
      const T* x = dout.data_ptr<T>();
      const T* y = other.data_ptr<T>();
      const size_t n = dst.numel();
      if (accumulate)
        for (size_t k = 0; k < n; ++k) d[k] += x[k] * y[k];
      else
        for (size_t k = 0; k < n; ++k) d[k] = x[k] * y[k];
    });
  }, rule);
}

// mul: y = a·b      da = dy·b      db = dy·a
Tensor mul(const Tensor& a, const Tensor& b, CallSite site) {
  const SiteScope in(site);
  Tensor out = binary("mul", a, b, [](auto&& x, auto&& y) { return x * y; });
  return record("mul", out, {a, b}, [](Backward& g) {
    add_mul_grad(g, 0, g.input(1), "da += sum_to(dout·b)");
    add_mul_grad(g, 1, g.input(0), "db += sum_to(dout·a)");
  });
}

// div: y = a / b      da = dy / b      db = -dy·a / b² = -dy·y / b
Tensor div(const Tensor& a, const Tensor& b, CallSite site) {
  const SiteScope in(site);
  Tensor out = binary("div", a, b, [](auto&& x, auto&& y) { return x / y; });
  return record("div", out, {a, b}, [](Backward& g) {
    const Tensor& b = g.input(1);
    if (g.wants(0)) g.add(0, sum_to(div(g.dout(), b), g.input(0).shape()), "da += sum_to(dout / b)");
    if (g.wants(1)) g.add(1, sum_to(neg(div(mul(g.dout(), g.input(0)), mul(b, b))), b.shape()), "db += sum_to(-dout·a / b²)");
  });
}

// neg: y = -x      dx = -dy
Tensor neg(const Tensor& x, CallSite site) {
  const SiteScope in(site);
  check_float("neg", x);
  Tensor out = empty_out(x.dtype(), x.shape());
  dispatch("neg", x.dtype(), [&]<class T>() {
    auto o = flat_mut<T>(out);
    xt::noalias(o) = -flat<T>(x);
  });
  return record("neg", out, {x}, [](Backward& g) { g.add(0, neg(g.dout()), "dx += -dout"); });
}

// (For an int64 x the op itself then reports the dtype, naming the op.)
Tensor scalar_like(const Tensor& x, double value) {
  if (!x.defined()) fail("scalar operand: undefined tensor");
  return scalar_tensor(value, x.dtype() == kInt64 ? kFloat32 : x.dtype());
}

Tensor operator+(const Tensor& a, Operand b) { return add(a, b.tensor, b.site); }
Tensor operator-(const Tensor& a, Operand b) { return sub(a, b.tensor, b.site); }
Tensor operator*(const Tensor& a, Operand b) { return mul(a, b.tensor, b.site); }
Tensor operator/(const Tensor& a, Operand b) { return div(a, b.tensor, b.site); }
Tensor operator-(Operand x) { return neg(x.tensor, x.site); }
// ---- a tensor and a number ------------------------------------------------------------------------
// The number is kept in the node (8 bytes) rather than saved as a tensor: in a long chain of
// `y = y * w + 0.0001` that is a quarter of the memory per op.

// scale_shift: y = s·x + c      dx = s·dy
static Tensor scale_shift(const char* op, const Tensor& x, double s, double c) {
  check_float(op, x);
  Tensor out = empty_out(x.dtype(), x.shape());
  dispatch(op, x.dtype(), [&]<class T>() {
    const T* v = x.data_ptr<T>();
    T* o = out.data_ptr<T>();
    const T ts = static_cast<T>(s), tc = static_cast<T>(c);
    write_out(o, x.numel(), [&](size_t begin, size_t end, T* dst) {
      if (ts == T(1)) for (size_t i = begin; i < end; ++i) dst[i - begin] = v[i] + tc;  // exact, like x + c
      else for (size_t i = begin; i < end; ++i) dst[i - begin] = ts * v[i] + tc;
    });
  });
  return record(op, out, {x}, [s](Backward& g) {
    g.add(0, s == 1.0 ? g.dout() : scale_shift("mul", g.dout(), s, 0.0), "dx += s·dout");
  });
}

// div_scalar: y = x / d      dx = dy / d
static Tensor div_scalar(const Tensor& x, double d) {
  check_float("div", x);
  Tensor out = empty_out(x.dtype(), x.shape());
  dispatch("div", x.dtype(), [&]<class T>() {
    const T* v = x.data_ptr<T>();
    T* o = out.data_ptr<T>();
    const T td = static_cast<T>(d);
    write_out(o, x.numel(), [&](size_t begin, size_t end, T* dst) {
      for (size_t i = begin; i < end; ++i) dst[i - begin] = v[i] / td;
    });
  });
  return record("div", out, {x}, [d](Backward& g) { g.add(0, div_scalar(g.dout(), d), "dx += dout / d"); });
}

Tensor operator+(Operand a, double b) { const SiteScope in(a.site); return scale_shift("add", a.tensor, 1.0, b); }
Tensor operator-(Operand a, double b) { const SiteScope in(a.site); return scale_shift("sub", a.tensor, 1.0, -b); }
Tensor operator*(Operand a, double b) { const SiteScope in(a.site); return scale_shift("mul", a.tensor, b, 0.0); }
Tensor operator/(Operand a, double b) { const SiteScope in(a.site); return div_scalar(a.tensor, b); }
Tensor operator+(double a, Operand b) { const SiteScope in(b.site); return scale_shift("add", b.tensor, 1.0, a); }
Tensor operator-(double a, Operand b) { const SiteScope in(b.site); return scale_shift("sub", b.tensor, -1.0, a); }
Tensor operator*(double a, Operand b) { const SiteScope in(b.site); return scale_shift("mul", b.tensor, a, 0.0); }
Tensor operator/(double a, Operand b) { const SiteScope in(b.site); return div(scalar_like(b.tensor, a), b.tensor); }

}  // namespace tapegrad

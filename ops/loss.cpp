// Softmax and losses. softmax/log_softmax subtract the lane's max before exponentiating, so
// logits of any size give finite results. nll_loss, mse_loss and BCE-with-logits are single fused
// ops (they run in every training step); their backwards are written with ops, so they stay
// differentiable.
#include <cmath>

#include "kernel.hpp"

namespace tapegrad {
using namespace kernel;


namespace {

// ---- softmax kernel --------------------------------------------------------------------------------
// max and sum of a contiguous row with 8 independent accumulators, so they vectorise (a single
// running max or sum is a chain of dependent instructions, ~4 cycles per element)
template <class T>
T row_max(const T* x, size_t n) {
  T m[8];
  std::fill(m, m + 8, x[0]);
  size_t k = 0;
  for (; k + 8 <= n; k += 8)
    for (size_t j = 0; j < 8; ++j) m[j] = x[k + j] > m[j] ? x[k + j] : m[j];
  for (; k < n; ++k) m[0] = x[k] > m[0] ? x[k] : m[0];
  for (size_t j = 1; j < 8; ++j) m[0] = m[j] > m[0] ? m[j] : m[0];
  return m[0];
}
template <class T>
T row_sum(const T* x, size_t n) {
  T s[8] = {};
  size_t k = 0;
  for (; k + 8 <= n; k += 8)
    for (size_t j = 0; j < 8; ++j) s[j] += x[k + j];
  for (; k < n; ++k) s[0] += x[k];
  return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

// x laid out as [outer, n, inner] around the softmax dim; a lane is the n elements (o, ·, i).
// Passes: lane max m; y = x - m; y = exp(y) in place, vectorised over everything; lane sums s;
// then softmax: y /= s, log_softmax: y = (x - m) - ln s. A NaN anywhere in a lane makes it NaN.
template <class T>
void softmax_kernel(const Tensor& x, const Tensor& out, size_t axis, bool log) {
  const Shape& s = x.shape();
  size_t outer = 1, n = s[axis], inner = 1;
  for (size_t i = 0; i < axis; ++i) outer *= s[i];
  for (size_t i = axis + 1; i < s.rank(); ++i) inner *= s[i];
  size_t lanes = outer * inner, total = x.numel();
  if (total == 0) return;
  const T* src = x.data_ptr<T>();
  T* y = out.data_ptr<T>();
  std::vector<T> m(lanes), sum(lanes, T(0));
  auto exp_in_place = [&] {
    auto yv = xt::adapt(y, total, xt::no_ownership(), std::array<size_t, 1>{total});
    xt::noalias(yv) = safe_exp(yv);  // same-index elementwise: in place is safe
  };

  if (inner == 1) {  // fast path (the last dim): each lane is a contiguous row
    for (size_t o = 0; o < outer; ++o) {
      const T* xr = src + o * n;
      T* yr = y + o * n;
      T mx = m[o] = row_max(xr, n);
      for (size_t k = 0; k < n; ++k) yr[k] = xr[k] - mx;
    }
    exp_in_place();
    for (size_t o = 0; o < outer; ++o) {
      const T* xr = src + o * n;
      T* yr = y + o * n;
      T total_exp = row_sum(yr, n);
      if (log) {
        T mx = m[o], ls = std::log(total_exp);  // (x - m) - ln s: exact for x near m, even in float32
        for (size_t k = 0; k < n; ++k) yr[k] = (xr[k] - mx) - ls;
      } else {
        T inv = T(1) / total_exp;
        for (size_t k = 0; k < n; ++k) yr[k] *= inv;
      }
    }
    return;
  }
  // general path: element (o, k, i) is at (o·n + k)·inner + i and its lane is o·inner + i; the
  // loops run over i innermost, so memory is read in order
  for (size_t o = 0; o < outer; ++o) {
    T* mo = m.data() + o * inner;
    const T* xo = src + o * n * inner;
    std::copy(xo, xo + inner, mo);
    for (size_t k = 1; k < n; ++k)
      for (size_t i = 0; i < inner; ++i) mo[i] = xo[k * inner + i] > mo[i] ? xo[k * inner + i] : mo[i];
    for (size_t k = 0; k < n; ++k)
      for (size_t i = 0; i < inner; ++i) y[(o * n + k) * inner + i] = xo[k * inner + i] - mo[i];
  }
  exp_in_place();
  for (size_t o = 0; o < outer; ++o) {
    T* so = sum.data() + o * inner;
    for (size_t k = 0; k < n; ++k)
      for (size_t i = 0; i < inner; ++i) so[i] += y[(o * n + k) * inner + i];
    const T* mo = m.data() + o * inner;
    for (size_t i = 0; i < inner; ++i) so[i] = log ? std::log(so[i]) : T(1) / so[i];
    for (size_t k = 0; k < n; ++k)
      for (size_t i = 0; i < inner; ++i) {
        size_t j = (o * n + k) * inner + i;
        y[j] = log ? (src[j] - mo[i]) - so[i] : y[j] * so[i];
      }
  }
}

Tensor softmax_forward(const char* op, const Tensor& x, int64_t dim, bool log) {
  check_float(op, x);
  size_t axis = normalize_dim(op, dim, x.dim());
  Tensor out = empty_out(x.dtype(), x.shape());
  dispatch(op, x.dtype(), [&]<class T>() { softmax_kernel<T>(x, out, axis, log); });
  return out;
}

// ---- shared checks and reductions ------------------------------------------------------------------
// scores [B,C] (float), labels int64 [B] with values in [0,C).
void check_labels(const char* op, const Tensor& scores, const Tensor& labels) {
  check_float(op, scores);
  if (scores.dim() != 2) fail(op, ": expected scores of shape [B,C], got ", scores.shape());
  if (!labels.defined()) fail(op, ": undefined labels");
  size_t B = scores.shape()[0], C = scores.shape()[1];
  if (labels.dtype() != kInt64)
    fail(op, ": labels must be int64 class indices, got ", labels.dtype(), " ", labels.shape(), " (scores ", scores.shape(), ")");
  if (labels.dim() != 1 || labels.shape()[0] != B)
    fail(op, ": labels of shape ", labels.shape(), " do not match scores ", scores.shape(), " (expected [", B, "])");
  const int64_t* y = labels.data_ptr<int64_t>();
  for (size_t b = 0; b < B; ++b)
    if (y[b] < 0 || static_cast<size_t>(y[b]) >= C)
      fail(op, ": label ", y[b], " at position ", b, " is out of range [0,", C, ") for scores ", scores.shape());
}

void check_same_shapes(const char* op, const char* what_a, const Tensor& a, const char* what_b, const Tensor& b) {
  check_same_dtype(op, a, b);
  if (a.shape() != b.shape())
    fail(op, ": ", what_a, " ", a.shape(), " and ", what_b, " ", b.shape(), " must have the same shape");
}

// The loss value from per-element losses `elems`: elems itself (None), or their sum or mean as a
// 0-d tensor (accumulated in double).
Tensor reduce_elems(const char* op, const Tensor& elems, Reduction r) {
  if (r == Reduction::None) return elems;
  size_t n = elems.numel();
  if (r == Reduction::Mean && n == 0)
    fail(op, ": the mean over an empty input ", elems.shape(), " is undefined (use Reduction::Sum)");
  Tensor out = empty_out(elems.dtype(), Shape{});
  dispatch(op, elems.dtype(), [&]<class T>() {
    const T* v = elems.data_ptr<T>();
    double acc = 0;
    for (size_t i = 0; i < n; ++i) acc += v[i];
    out.data_ptr<T>()[0] = static_cast<T>(r == Reduction::Mean ? acc / static_cast<double>(n) : acc);
  });
  return out;
}

// What each element's local derivative is multiplied by in the backward: dy itself (None, one
// per element), the 0-d dy (Sum), or dy/n (Mean).
Tensor loss_scale(const Tensor& dy, Reduction r, size_t n) {
  return r == Reduction::Mean ? dy * (1.0 / static_cast<double>(n)) : dy;
}

}  // namespace

// log_softmax: y = x - m - ln Σ exp(x - m)      dx = dy - softmax(x)·Σ dy,   softmax(x) = exp(y)
Tensor log_softmax(const Tensor& x, int64_t dim, CallSite site) {
  const SiteScope in(site);
  Tensor out = softmax_forward("log_softmax", x, dim, true);
  return record("log_softmax", out, {x}, [dim](Backward& g) {
    const Tensor& dy = g.dout();
    g.add(0, dy - exp(g.out()) * sum(dy, dim, true));
  });
}

// softmax: y = exp(x - m) / Σ exp(x - m)      dx = y·(dy - Σ dy·y)
Tensor softmax(const Tensor& x, int64_t dim, CallSite site) {
  const SiteScope in(site);
  Tensor out = softmax_forward("softmax", x, dim, false);
  return record("softmax", out, {x}, [dim](Backward& g) {
    const Tensor &y = g.out(), &dy = g.dout();
    g.add(0, y * (dy - sum(dy * y, dim, true)));
  });
}

// nll_loss: l_b = -lp[b, y_b], reduced      dlp[b, y_b] = -dl_b (÷B for Mean), 0 elsewhere
Tensor nll_loss(const Tensor& log_probs, const Tensor& labels, Reduction r, CallSite site) {
  const SiteScope in(site);
  check_labels("nll_loss", log_probs, labels);
  size_t B = log_probs.shape()[0], C = log_probs.shape()[1];
  Tensor elems = empty_out(log_probs.dtype(), Shape{B});
  dispatch("nll_loss", log_probs.dtype(), [&]<class T>() {
    const T* lp = log_probs.data_ptr<T>();
    const int64_t* y = labels.data_ptr<int64_t>();
    T* l = elems.data_ptr<T>();
    for (size_t b = 0; b < B; ++b) l[b] = -lp[b * C + static_cast<size_t>(y[b])];
  });
  Tensor out = reduce_elems("nll_loss", elems, r);
  // labels are an input (never differentiated) so that changing them in place is detected
  return record("nll_loss", out, {log_probs, labels}, [r, B](Backward& g) {
    Tensor coef = neg(loss_scale(g.dout(), r, B));  // [B] for None, else 0-d
    auto b = static_cast<int64_t>(B);
    coef = r == Reduction::None ? reshape(coef, {b, 1}) : expand(reshape(coef, {1, 1}), Shape{B, 1});
    g.add(0, detail::put_along(coef, reshape(g.input(1), {b, 1}), 1, g.input(0).shape()));
  });
}

// cross_entropy: nll_loss(log_softmax(logits, 1), labels)
Tensor cross_entropy(const Tensor& logits, const Tensor& labels, Reduction r, CallSite site) {
  const SiteScope in(site);
  check_labels("cross_entropy", logits, labels);
  if (r == Reduction::Mean && logits.shape()[0] == 0)
    fail("cross_entropy: the mean over an empty batch ", logits.shape(), " is undefined (use Reduction::Sum)");
  return nll_loss(log_softmax(logits, 1), labels, r);
}

// mse_loss: l = (x - t)², reduced      dx = 2(x - t)·dl (÷n for Mean)      dt = -dx
Tensor mse_loss(const Tensor& input, const Tensor& target, Reduction r, CallSite site) {
  const SiteScope in(site);
  check_same_shapes("mse_loss", "input", input, "target", target);
  Tensor elems = empty_out(input.dtype(), input.shape());
  dispatch("mse_loss", input.dtype(), [&]<class T>() {
    auto l = flat_mut<T>(elems);
    xt::noalias(l) = xt::square(flat<T>(input) - flat<T>(target));
  });
  Tensor out = reduce_elems("mse_loss", elems, r);
  size_t n = input.numel();
  return record("mse_loss", out, {input, target}, [r, n](Backward& g) {
    Tensor dx = (g.input(0) - g.input(1)) * (loss_scale(g.dout(), r, n) * 2.0);
    if (g.wants(0)) g.add(0, dx);
    if (g.wants(1)) g.add(1, neg(dx));
  });
}

// binary_cross_entropy_with_logits: l = max(x,0) - x·t + ln(1 + e^-|x|), reduced
//   dx = (σ(x) - t)·dl (÷n for Mean)      dt = -x·dl (÷n for Mean)
Tensor binary_cross_entropy_with_logits(const Tensor& logits, const Tensor& targets, Reduction r, CallSite site) {
  const SiteScope in(site);
  const char* op = "binary_cross_entropy_with_logits";
  check_same_shapes(op, "logits", logits, "targets", targets);
  Tensor elems = empty_out(logits.dtype(), logits.shape());
  dispatch(op, logits.dtype(), [&]<class T>() {
    auto l = flat_mut<T>(elems);
    auto x = flat<T>(logits);
    xt::noalias(l) = xt::maximum(x, T(0)) - x * flat<T>(targets) + xt::log1p(safe_exp(-xt::abs(x)));
  });
  Tensor out = reduce_elems(op, elems, r);
  size_t n = logits.numel();
  return record(op, out, {logits, targets}, [r, n](Backward& g) {
    Tensor scale = loss_scale(g.dout(), r, n);
    if (g.wants(0)) g.add(0, (sigmoid(g.input(0)) - g.input(1)) * scale);
    if (g.wants(1)) g.add(1, neg(g.input(0)) * scale);
  });
}

}  // namespace tapegrad

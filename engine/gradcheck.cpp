#include "gradcheck.hpp"

#include <cmath>
#include <sstream>

#include "node.hpp"

namespace tapegrad {

static std::string index_str(const Shape& s, size_t flat) {
  std::vector<size_t> idx(s.rank());
  for (size_t d = s.rank(); d-- > 0;) {
    idx[d] = flat % s[d];
    flat /= s[d];
  }
  std::string out = "[";
  for (size_t d = 0; d < idx.size(); ++d) out += (d ? "," : "") + std::to_string(idx[d]);
  return out + "]";
}

namespace {

// All outputs' values, concatenated.
std::vector<double> values_of(const std::vector<Tensor>& outs) {
  std::vector<double> v;
  for (const Tensor& o : outs) {
    std::vector<double> part = o.to_vector();
    v.insert(v.end(), part.begin(), part.end());
  }
  return v;
}

// Which output (and element of it) the j-th concatenated element is.
std::pair<size_t, size_t> locate(const std::vector<Tensor>& outs, size_t j) {
  size_t o = 0;
  while (j >= outs[o].numel()) j -= outs[o++].numel();
  return {o, j};
}

}  // namespace

GradcheckResult gradcheck(const MultiTensorFn& f, const std::vector<Tensor>& inputs, GradcheckOptions opt) {
  std::vector<Tensor> wrt;
  std::vector<size_t> wrt_index;
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (inputs[i].dtype() != kFloat64)
      fail("gradcheck: input ", i, " is ", inputs[i].dtype(), "; finite differences need float64");
    if (inputs[i].requires_grad()) {
      if (!inputs[i].is_leaf()) fail("gradcheck: input ", i, " must be a leaf tensor");
      wrt.push_back(inputs[i]);
      wrt_index.push_back(i);
    }
  }
  if (wrt.empty()) fail("gradcheck: no input requires grad");

  std::vector<Tensor> outs = f(inputs);
  size_t m = 0;
  for (const Tensor& o : outs) {
    if (o.dtype() != kFloat64) fail("gradcheck: f returned ", o.dtype(), ", expected float64");
    m += o.numel();
  }

  // analytic[i][k * m + j] = d out[j] / d wrt[i][k], one backward per output element
  std::vector<std::vector<double>> analytic(wrt.size());
  for (size_t i = 0; i < wrt.size(); ++i) analytic[i].assign(wrt[i].numel() * m, 0.0);
  std::vector<Tensor> roots, seeds;
  for (const Tensor& o : outs)
    if (o.requires_grad()) roots.push_back(o);
  for (size_t j = 0; j < m && !roots.empty(); ++j) {
    auto [oj, ej] = locate(outs, j);
    if (!outs[oj].requires_grad()) continue;
    seeds.clear();
    for (const Tensor& r : roots) {
      seeds.push_back(zeros(r.shape(), kFloat64));
      if (r.impl() == outs[oj].impl()) seeds.back().data_ptr<double>()[ej] = 1.0;
    }
    auto g = grad(roots, wrt, seeds, /*retain_graph=*/true, false, /*allow_unused=*/true);
    for (size_t i = 0; i < wrt.size(); ++i) {
      if (!g[i].defined()) continue;
      const double* gd = g[i].data_ptr<double>();
      for (size_t k = 0; k < wrt[i].numel(); ++k) analytic[i][k * m + j] = gd[k];
    }
  }

  GradcheckResult res;
  double worst_excess = -INFINITY;
  NoGradGuard no_grad;
  for (size_t i = 0; i < wrt.size(); ++i) {
    double* x = wrt[i].data_ptr<double>();
    for (size_t k = 0; k < wrt[i].numel(); ++k) {
      double saved = x[k];
      x[k] = saved + opt.eps;
      std::vector<double> plus = values_of(f(inputs));
      x[k] = saved - opt.eps;
      std::vector<double> minus = values_of(f(inputs));
      x[k] = saved;
      if (plus.size() != m || minus.size() != m) fail("gradcheck: f changed its output size");
      for (size_t j = 0; j < m; ++j) {
        double numeric = (plus[j] - minus[j]) / (2 * opt.eps);
        double a = analytic[i][k * m + j];
        double err = std::fabs(a - numeric);
        double tol = opt.atol + opt.rtol * std::fabs(numeric);
        double excess = std::isnan(err) ? INFINITY : err - tol;
        ++res.checked;
        res.max_abs_error = std::isnan(err) ? INFINITY : std::max(res.max_abs_error, err);
        if (excess > 0) res.ok = false;
        if (excess > worst_excess) {
          worst_excess = excess;
          auto [oj, ej] = locate(outs, j);
          std::ostringstream os;
          os.precision(10);
          os << "gradcheck: worst entry d out" << (outs.size() > 1 ? std::to_string(oj) : "")
             << index_str(outs[oj].shape(), ej) << " / d input" << wrt_index[i] << index_str(wrt[i].shape(), k)
             << ": analytic " << a << ", numeric " << numeric << ", |diff| " << err << " (tolerance " << tol << ")";
          res.report = os.str();
        }
      }
    }
  }
  if (res.ok) res.report = "gradcheck: ok, " + std::to_string(res.checked) + " entries (" + res.report + ")";
  return res;
}

GradcheckResult gradcheck(const TensorFn& f, const std::vector<Tensor>& inputs, GradcheckOptions opt) {
  return gradcheck(MultiTensorFn([&f](const std::vector<Tensor>& xs) { return std::vector<Tensor>{f(xs)}; }),
                   inputs, opt);
}

GradcheckResult gradgradcheck(const TensorFn& f, const std::vector<Tensor>& inputs, GradcheckOptions opt) {
  Tensor probe = f(inputs);
  Generator gen(1234);
  Tensor v = randn(probe.shape(), kFloat64, &gen);  // fixed: the same v in every evaluation
  MultiTensorFn first_derivatives = [&](const std::vector<Tensor>& xs) {
    std::vector<Tensor> wrt;
    for (const Tensor& x : xs)
      if (x.requires_grad()) wrt.push_back(x);
    EnableGradGuard with_grad;  // gradcheck evaluates f under NoGradGuard for differences
    Tensor out = f(xs);
    if (!out.requires_grad()) return std::vector<Tensor>{};
    std::vector<Tensor> g = grad({out}, wrt, {v}, /*retain_graph=*/true, /*create_graph=*/true, true);
    for (size_t i = 0; i < g.size(); ++i)
      if (!g[i].defined()) g[i] = zeros(wrt[i].shape(), kFloat64);
    return g;
  };
  return gradcheck(first_derivatives, inputs, opt);
}

}  // namespace tapegrad

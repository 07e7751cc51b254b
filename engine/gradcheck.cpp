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

GradcheckResult gradcheck(const Function& f, const std::vector<Tensor>& inputs, GradcheckOptions opt) {
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

  Tensor out = f(inputs);
  if (out.dtype() != kFloat64) fail("gradcheck: f returned ", out.dtype(), ", expected float64");
  size_t m = out.numel();

  // analytic[i][k * m + j] = d out[j] / d wrt[i][k]
  std::vector<std::vector<double>> analytic(wrt.size());
  for (size_t i = 0; i < wrt.size(); ++i) analytic[i].assign(wrt[i].numel() * m, 0.0);
  if (out.requires_grad()) {
    for (size_t j = 0; j < m; ++j) {
      Tensor onehot = zeros(out.shape(), kFloat64);
      onehot.data_ptr<double>()[j] = 1.0;
      auto g = grad({out}, wrt, {onehot}, /*retain_graph=*/true, false, /*allow_unused=*/true);
      for (size_t i = 0; i < wrt.size(); ++i) {
        if (!g[i].defined()) continue;
        const double* gd = g[i].data_ptr<double>();
        for (size_t k = 0; k < wrt[i].numel(); ++k) analytic[i][k * m + j] = gd[k];
      }
    }
  }

  GradcheckResult res;
  double worst_excess = -1;
  NoGradGuard no_grad;
  for (size_t i = 0; i < wrt.size(); ++i) {
    double* x = wrt[i].data_ptr<double>();
    for (size_t k = 0; k < wrt[i].numel(); ++k) {
      double saved = x[k];
      x[k] = saved + opt.eps;
      std::vector<double> plus = f(inputs).to_vector();
      x[k] = saved - opt.eps;
      std::vector<double> minus = f(inputs).to_vector();
      x[k] = saved;
      if (plus.size() != m || minus.size() != m) fail("gradcheck: f changed its output size");
      for (size_t j = 0; j < m; ++j) {
        double numeric = (plus[j] - minus[j]) / (2 * opt.eps);
        double a = analytic[i][k * m + j];
        double err = std::fabs(a - numeric);
        double excess = err - (opt.atol + opt.rtol * std::fabs(numeric));
        ++res.checked;
        if (!(err <= res.max_abs_error)) res.max_abs_error = std::isnan(err) ? INFINITY : std::max(res.max_abs_error, err);
        if (excess > 0 || std::isnan(err)) res.ok = false;
        if (std::isnan(err) ? worst_excess < INFINITY : excess > worst_excess) {
          worst_excess = std::isnan(err) ? INFINITY : excess;
          std::ostringstream os;
          os.precision(10);
          os << "gradcheck: worst entry d out" << index_str(out.shape(), j) << " / d input" << wrt_index[i]
             << index_str(wrt[i].shape(), k) << ": analytic " << a << ", numeric " << numeric << ", |diff| "
             << err << " (tolerance " << opt.atol + opt.rtol * std::fabs(numeric) << ")";
          res.report = os.str();
        }
      }
    }
  }
  if (res.ok) res.report = "gradcheck: ok, " + std::to_string(res.checked) + " entries";
  return res;
}

}  // namespace tapegrad

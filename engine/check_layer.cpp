#include "check_layer.hpp"

#include <cmath>
#include <iomanip>
#include <sstream>

#include "node.hpp"

namespace tapegrad {

static double rel_error(const Array& a, const Array& b) {
  if (a.shape() != b.shape()) return INFINITY;
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    double d = std::fabs(a.flat(i) - b.flat(i)) / std::max(1e-8, std::fabs(a.flat(i)) + std::fabs(b.flat(i)));
    worst = std::isnan(d) ? INFINITY : std::max(worst, d);
  }
  return worst;
}

static Array to_array(const Tensor& t) { return t.to_xarray<double>(); }

LayerCheck check_layer(const HandWrittenLayer& layer, const Arrays& inputs, const TensorFn& engine, double tolerance,
                       uint64_t seed) {
  if (!layer.forward || !layer.backward) fail("check_layer: ", layer.name, " needs both forward and backward");
  Arrays in = inputs;
  Array out = layer.forward(in);
  Generator gen(seed);
  Tensor dout_t = randn(Shape(out.shape().begin(), out.shape().end()), kFloat64, &gen);
  Array dout = to_array(dout_t);
  Arrays hand = layer.backward(dout, in);
  if (hand.size() != in.size())
    fail("check_layer: ", layer.name, " backward returned ", hand.size(), " gradients for ", in.size(), " inputs");

  LayerCheck res;
  res.ok = true;
  // numeric: d Σ(out·dout) / d input, by central differences of the hand-written forward
  const double h = 1e-6;
  for (size_t i = 0; i < in.size(); ++i) {
    LayerCheck::Input r;
    r.name = i < layer.input_names.size() ? layer.input_names[i] : "input " + std::to_string(i);
    Array numeric = xt::zeros<double>(in[i].shape());
    for (size_t k = 0; k < in[i].size(); ++k) {
      double saved = in[i].flat(k);
      in[i].flat(k) = saved + h;
      double plus = xt::sum(layer.forward(in) * dout)();
      in[i].flat(k) = saved - h;
      double minus = xt::sum(layer.forward(in) * dout)();
      in[i].flat(k) = saved;
      numeric.flat(k) = (plus - minus) / (2 * h);
    }
    r.rel_error_numeric = hand[i].shape() == in[i].shape() ? rel_error(hand[i], numeric) : INFINITY;
    res.inputs.push_back(r);
  }
  if (engine) {
    std::vector<Tensor> ts;
    for (const Array& a : in) ts.push_back(from_xtensor(a, /*requires_grad=*/true));
    Tensor y = engine(ts);
    res.forward_rel_error = rel_error(out, to_array(y));
    res.ok &= res.forward_rel_error <= tolerance;
    y.backward(dout_t);
    for (size_t i = 0; i < in.size(); ++i)
      res.inputs[i].rel_error_engine = ts[i].grad().defined() ? rel_error(hand[i], to_array(ts[i].grad())) : INFINITY;
  }
  std::ostringstream os;
  os << std::scientific << std::setprecision(2) << layer.name << ":";
  if (res.forward_rel_error >= 0) os << " forward vs engine rel. error " << res.forward_rel_error;
  os << "\n";
  for (auto& r : res.inputs) {
    r.ok = r.rel_error_numeric <= tolerance && r.rel_error_engine <= tolerance;
    res.ok &= r.ok;
    os << "  d" << r.name << ": " << (r.ok ? "ok   " : "WRONG") << "  rel. error vs numeric " << r.rel_error_numeric;
    if (r.rel_error_engine >= 0) os << ", vs engine " << r.rel_error_engine;
    os << "\n";
  }
  res.report = os.str();
  return res;
}

}  // namespace tapegrad

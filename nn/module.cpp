// Module: registration by name, recursive listing with dotted paths, train/eval, zero_grad.
#include "module.hpp"

#include <sstream>

#include <tapegrad/tapegrad.hpp>

namespace tapegrad::nn {

Tensor Module::forward(const Tensor&) {
  fail(name(), ": this module has no single-input forward");
}

static void check_name(const char* what, const std::string& name) {
  if (name.empty() || name.find('.') != std::string::npos)
    fail(what, ": name '", name, "' must be non-empty and contain no '.'");
}

Tensor Module::register_parameter(const std::string& name, Tensor t, bool requires_grad) {
  check_name("register_parameter", name);
  if (!t.defined()) fail("register_parameter: '", name, "' is an undefined tensor");
  if (!t.is_leaf()) fail("register_parameter: '", name, "' must be a leaf tensor (detach() it first)");
  if (t.dtype() == kInt64) fail("register_parameter: '", name, "' has dtype int64; parameters are float");
  for (auto& [n, p] : params_)
    if (n == name) fail("register_parameter: '", name, "' is already registered");
  for (auto& [n, c] : children_)
    if (n == name) fail("register_parameter: '", name, "' is already the name of a submodule");
  t.requires_grad_(requires_grad);
  params_.emplace_back(name, t);
  return t;
}

void Module::add_child(const std::string& name, std::shared_ptr<Module> m) {
  check_name("register_module", name);
  if (!m) fail("register_module: '", name, "' is null");
  if (m.get() == this) fail("register_module: '", name, "' is the module itself");
  for (auto& [n, c] : children_)
    if (n == name) fail("register_module: '", name, "' is already registered");
  for (auto& [n, p] : params_)
    if (n == name) fail("register_module: '", name, "' is already the name of a parameter");
  children_.emplace_back(name, std::move(m));
}

// Depth first, own parameters before children's. The module tree is shallow (its depth is the
// nesting of the model definition), so plain recursion is fine here.
static void collect(const Module& m, const std::string& prefix, std::vector<NamedTensor>& out) {
  for (auto& [n, p] : m.local_parameters()) out.emplace_back(prefix + n, p);
  for (auto& [n, c] : m.children()) collect(*c, prefix + n + ".", out);
}

std::vector<NamedTensor> Module::named_parameters() const {
  std::vector<NamedTensor> out;
  collect(*this, "", out);
  return out;
}

std::vector<Tensor> Module::parameters() const {
  std::vector<Tensor> out;
  for (auto& [n, p] : named_parameters()) out.push_back(p);
  return out;
}

size_t Module::num_parameters() const {
  size_t n = 0;
  for (auto& [name, p] : named_parameters()) n += p.numel();
  return n;
}

void Module::train(bool on) {
  training_ = on;
  for (auto& [n, c] : children_) c->train(on);
}

void Module::zero_grad() {
  for (auto& [n, p] : named_parameters()) p.zero_grad();
}

static void describe(const Module& m, const std::string& label, int depth, std::ostringstream& os) {
  os << std::string(2 * depth, ' ') << (label.empty() ? "" : "(" + label + "): ") << m.name() << "\n";
  for (auto& [n, c] : m.children()) describe(*c, n, depth + 1, os);
}

std::string Module::str() const {
  std::ostringstream os;
  describe(*this, "", 0, os);
  return os.str();
}

Tensor uniform(const Shape& shape, double lo, double hi, const Options& opt) {
  if (opt.dtype == kInt64) fail("uniform: dtype int64 is not supported (float32 or float64)");
  Tensor t = rand(shape, opt.dtype, opt.gen);  // U[0,1), then an affine map in place
  if (opt.dtype == kFloat32) {
    float* p = t.data_ptr<float>();
    for (size_t i = 0; i < t.numel(); ++i) p[i] = static_cast<float>(lo + (hi - lo) * p[i]);
  } else {
    double* p = t.data_ptr<double>();
    for (size_t i = 0; i < t.numel(); ++i) p[i] = lo + (hi - lo) * p[i];
  }
  return t;
}

Tensor normal(const Shape& shape, double mean, double stddev, const Options& opt) {
  if (opt.dtype == kInt64) fail("normal: dtype int64 is not supported (float32 or float64)");
  Tensor t = randn(shape, opt.dtype, opt.gen);
  if (opt.dtype == kFloat32) {
    float* p = t.data_ptr<float>();
    for (size_t i = 0; i < t.numel(); ++i) p[i] = static_cast<float>(mean + stddev * p[i]);
  } else {
    double* p = t.data_ptr<double>();
    for (size_t i = 0; i < t.numel(); ++i) p[i] = mean + stddev * p[i];
  }
  return t;
}

}  // namespace tapegrad::nn

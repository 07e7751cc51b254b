#pragma once
// Module: a named tree of parameters and submodules, the way a user builds a model.
// Modules are held by std::shared_ptr; a parent keeps its children by name, in registration
// order, so named_parameters() gives stable dotted paths ("layers.0.W") for saving and loading.
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "../engine/interop.hpp"
#include "../ops/ops.hpp"

namespace tapegrad::nn {

// Construction options shared by the modules that own parameters.
struct Options {
  Dtype dtype = kFloat32;      // kFloat64 for gradchecks
  Generator* gen = nullptr;    // initialisation randomness; null = default_generator()
  Options() = default;
  Options(Dtype d) : dtype(d) {}  // NOLINT: implicit, so Linear(3, 4, kFloat64) reads well
  Options with_gen(Generator* g) const { Options o = *this; o.gen = g; return o; }
};

using NamedTensor = std::pair<std::string, Tensor>;

class Module : public std::enable_shared_from_this<Module> {
 public:
  Module() = default;
  virtual ~Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  // The single-input forward; modules with other signatures (RNNCell, LSTMCell) add overloads.
  virtual Tensor forward(const Tensor& x);
  Tensor operator()(const Tensor& x) { return forward(x); }

  // A short description, e.g. "Linear(in=3, out=4)".
  virtual std::string name() const { return "Module"; }
  // The whole tree, one module a line, indented.
  std::string str() const;

  // Registers a leaf tensor as a parameter (sets requires_grad) and returns the same handle.
  Tensor register_parameter(const std::string& name, Tensor t, bool requires_grad = true);
  // Registers a child module; its parameters appear as "<name>.<their path>".
  template <class M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> m) {
    add_child(name, m);
    return m;
  }

  // Own parameters first, then each child's, in registration order (depth first).
  std::vector<Tensor> parameters() const;
  std::vector<NamedTensor> named_parameters() const;
  const std::vector<NamedTensor>& local_parameters() const { return params_; }
  const std::vector<std::pair<std::string, std::shared_ptr<Module>>>& children() const { return children_; }
  size_t num_parameters() const;  // total number of scalar parameter values

  // train()/eval() switch this module and every descendant (Dropout reads is_training()).
  virtual void train(bool on = true);
  void eval() { train(false); }
  bool is_training() const { return training_; }

  // Drops every parameter's .grad() (set to undefined, like PyTorch's set_to_none).
  void zero_grad();

 private:
  void add_child(const std::string& name, std::shared_ptr<Module> m);
  std::vector<NamedTensor> params_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
  bool training_ = true;
};

// A tensor of `shape` with values drawn from U(lo, hi): the building block of the initialisers.
Tensor uniform(const Shape& shape, double lo, double hi, const Options& opt = {});
Tensor normal(const Shape& shape, double mean, double stddev, const Options& opt = {});

}  // namespace tapegrad::nn

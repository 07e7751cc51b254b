#pragma once
// gradcheck: compares the backward of f with central finite differences, in float64.
#include <functional>
#include <string>
#include <vector>

#include "tensor.hpp"

namespace tapegrad {

struct GradcheckOptions {
  double eps = 1e-6;   // finite-difference step
  double atol = 1e-5;  // |analytic - numeric| <= atol + rtol * |numeric|
  double rtol = 1e-3;
};

struct GradcheckResult {
  bool ok = true;
  double max_abs_error = 0;  // over every Jacobian entry
  size_t checked = 0;        // Jacobian entries compared
  std::string report;        // on failure: the worst entry (input, element, output, both values)
  explicit operator bool() const { return ok; }
};

using TensorFn = std::function<Tensor(const std::vector<Tensor>&)>;
using MultiTensorFn = std::function<std::vector<Tensor>(const std::vector<Tensor>&)>;

// Every input must be float64; those that require grad are checked, the others are constants.
// The full Jacobian is compared: one backward per output element, two forwards per input element.
GradcheckResult gradcheck(const TensorFn& f, const std::vector<Tensor>& inputs, GradcheckOptions opt = {});
GradcheckResult gradcheck(const MultiTensorFn& f, const std::vector<Tensor>& inputs, GradcheckOptions opt = {});

// Second derivatives: checks, by the same finite differences, the Jacobian of
// x ↦ ∂(Σ f(x)·v)/∂x computed with create_graph, for a fixed random v. It passes only if every
// op's backward is itself correctly differentiable.
GradcheckResult gradgradcheck(const TensorFn& f, const std::vector<Tensor>& inputs, GradcheckOptions opt = {});

}  // namespace tapegrad

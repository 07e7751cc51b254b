#pragma once
// Checking a learner's own backward (the CS231n exercise): give a hand-written forward/backward
// pair for a layer, and optionally the same layer written with tapegrad ops; check_layer reports,
// input by input, the relative error of the hand-written gradients against central finite
// differences of the hand-written forward, and against the engine's gradients.
//
//   HandWrittenLayer affine{"affine", {"x", "W", "b"},
//     [](const Arrays& in) { return Array(xt::linalg::dot(in[0], in[1]) + in[2]); },
//     [](const Array& dout, const Arrays& in) { return Arrays{dx, dW, db}; }};
//   LayerCheck r = check_layer(affine, {x, W, b}, [](auto& t) { return linear(t[0], t[1], t[2]); });
//   std::cout << r.report;
#include <functional>
#include <string>
#include <vector>

#include "gradcheck.hpp"
#include "interop.hpp"

namespace tapegrad {

using Array = xt::xarray<double>;
using Arrays = std::vector<Array>;

struct HandWrittenLayer {
  std::string name;
  std::vector<std::string> input_names;                             // may be empty: "input 0", ...
  std::function<Array(const Arrays& inputs)> forward;               // out = f(inputs)
  std::function<Arrays(const Array& dout, const Arrays& inputs)> backward;  // one gradient per input
};

struct LayerCheck {
  struct Input {
    std::string name;
    double rel_error_numeric = 0;  // max |hand - numeric| / max(1e-8, |hand| + |numeric|)
    double rel_error_engine = -1;  // the same against the engine; -1 when no engine version given
    bool ok = false;
  };
  std::vector<Input> inputs;
  double forward_rel_error = -1;  // hand forward vs engine forward; -1 when no engine version
  bool ok = false;
  std::string report;  // one line per input
};

// `tolerance` bounds every relative error (1e-6 is typical for float64 layers).
LayerCheck check_layer(const HandWrittenLayer& layer, const Arrays& inputs, const TensorFn& engine = nullptr,
                       double tolerance = 1e-6, uint64_t seed = 0);

}  // namespace tapegrad

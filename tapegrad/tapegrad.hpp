#pragma once
// tapegrad: reverse-mode automatic differentiation on n-dimensional tensors.
// The one header users include.
#include "../engine/check_layer.hpp"
#include "../engine/function.hpp"
#include "../engine/gradcheck.hpp"
#include "../engine/interop.hpp"
#include "../engine/node.hpp"
#include "../engine/tensor.hpp"
#include "../ops/ops.hpp"
#include "../nn/nn.hpp"  // nn:: modules, save/load, and optim:: (engine → ops → nn → optim)

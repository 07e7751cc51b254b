#pragma once
// tapegrad::nn and tapegrad::optim in one include: modules, save/load, optimizers, schedules.
#include "layers.hpp"
#include "module.hpp"
#include "serialize.hpp"
#include "../optim/optim.hpp"  // (optim/ sits beside nn/)

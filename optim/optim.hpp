#pragma once
// Optimizers: read each parameter's .grad() and update its value in place, recording nothing.
// The update rules are PyTorch's (torch/optim/*.py, single-tensor path), documented per class.
// Parameters without a gradient (undefined .grad()) are skipped, as in PyTorch.
#include <cstdint>
#include <vector>

#include "../engine/interop.hpp"
#include "../ops/ops.hpp"

namespace tapegrad::optim {

class Optimizer {
 public:
  Optimizer(std::vector<Tensor> params, double lr);
  virtual ~Optimizer() = default;
  virtual void step() = 0;
  void zero_grad();  // drops every parameter's .grad()
  double lr() const { return lr_; }
  virtual void set_lr(double lr) { lr_ = lr; }
  const std::vector<Tensor>& params() const { return params_; }
  int64_t steps() const { return steps_; }

 protected:
  std::vector<Tensor> params_;
  double lr_;
  int64_t steps_ = 0;  // number of step() calls so far
};

// SGD (PyTorch):
//   g = ∇ + wd·p
//   momentum > 0:  buf = g at the first step, then buf = μ·buf + (1-dampening)·g
//                  g = nesterov ? g + μ·buf : buf
//   p = p - lr·g
// in_backward (momentum 0 only): the update is applied by backward() itself, to each parameter
// as soon as its gradient is complete (register_step_in_backward), and .grad() is not filled;
// step() then only counts. A weight used once by linear or matmul gets the update folded into
// the gemm of its gradient, which is never stored. Destroying the optimizer ends it. A backward()
// that throws midway has already updated the parameters whose gradient was complete.
struct SGDOptions {
  double momentum = 0, dampening = 0, weight_decay = 0;
  bool nesterov = false;
  bool in_backward = false;
};
class SGD : public Optimizer {
 public:
  SGD(std::vector<Tensor> params, double lr, SGDOptions opt = {});
  ~SGD() override;
  SGD(const SGD&) = delete;  // each parameter takes one in-backward rule
  SGD& operator=(const SGD&) = delete;
  void step() override;
  void set_lr(double lr) override;
  SGDOptions options;

 private:
  std::vector<Tensor> buf_;
  std::shared_ptr<StepInBackward> rule_;  // in_backward: read by every backward()
  std::vector<HookHandle> handles_;
};

// Adam (PyTorch), t = 1, 2, ...:
//   g = ∇ + wd·p                    (L2 penalty in the gradient; AdamW decouples it)
//   m = β1·m + (1-β1)·g    v = β2·v + (1-β2)·g²
//   p = p - lr/(1-β1^t) · m / (√v/√(1-β2^t) + eps)
// AdamW: p = p·(1 - lr·wd) first, then the same update with g = ∇.
struct AdamOptions {
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0;
};
class Adam : public Optimizer {
 public:
  Adam(std::vector<Tensor> params, double lr = 1e-3, AdamOptions opt = {});
  void step() override;
  AdamOptions options;

 protected:
  bool decoupled_ = false;

 private:
  std::vector<Tensor> m_, v_;
};
class AdamW : public Adam {
 public:
  // PyTorch's AdamW default weight decay is 0.01.
  AdamW(std::vector<Tensor> params, double lr = 1e-3, AdamOptions opt = {0.9, 0.999, 1e-8, 0.01});
};

// RMSprop (PyTorch):
//   g = ∇ + wd·p;   s = α·s + (1-α)·g²
//   centered: a = α·a + (1-α)·g,  d = √(s - a²) + eps;   otherwise d = √s + eps
//   momentum > 0: buf = μ·buf + g/d,  p = p - lr·buf;   otherwise p = p - lr·g/d
struct RMSpropOptions {
  double alpha = 0.99, eps = 1e-8, weight_decay = 0, momentum = 0;
  bool centered = false;
};
class RMSprop : public Optimizer {
 public:
  RMSprop(std::vector<Tensor> params, double lr = 1e-2, RMSpropOptions opt = {});
  void step() override;
  RMSpropOptions options;

 private:
  std::vector<Tensor> sq_, avg_, buf_;
};

// Scales every gradient by max_norm/(total + 1e-6) when the total 2-norm of all gradients
// exceeds max_norm (PyTorch's clip_grad_norm_). Returns the total norm before clipping.
double clip_grad_norm(const std::vector<Tensor>& params, double max_norm);

// Learning-rate schedules: call step() once per epoch, after the optimizer's steps.
class LRScheduler {
 public:
  explicit LRScheduler(Optimizer& opt) : opt_(opt), base_lr_(opt.lr()) {}
  virtual ~LRScheduler() = default;
  void step() { opt_.set_lr(lr_at(++epoch_)); }
  int64_t epoch() const { return epoch_; }
  virtual double lr_at(int64_t epoch) const = 0;

 protected:
  Optimizer& opt_;
  double base_lr_;
  int64_t epoch_ = 0;
};
// lr = base·γ^⌊epoch/step_size⌋
class StepLR : public LRScheduler {
 public:
  StepLR(Optimizer& opt, int64_t step_size, double gamma = 0.1);
  double lr_at(int64_t epoch) const override;
  int64_t step_size;
  double gamma;
};
// lr = η_min + (base - η_min)·(1 + cos(π·epoch/T_max))/2   (PyTorch's closed form)
class CosineAnnealingLR : public LRScheduler {
 public:
  CosineAnnealingLR(Optimizer& opt, int64_t T_max, double eta_min = 0);
  double lr_at(int64_t epoch) const override;
  int64_t T_max;
  double eta_min;
};

}  // namespace tapegrad::optim

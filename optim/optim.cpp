// Optimizer updates: plain loops over each parameter's value, gradient and state, in the
// parameter's own dtype. They write through data_ptr under NoGradGuard and bump the version, so a
// graph that saved the old value refuses to backward through it.
#include "optim.hpp"

#include <cmath>
#include <numbers>

#include <tapegrad/tapegrad.hpp>

namespace tapegrad::optim {

namespace {

// Runs f.template operator()<T>() for the parameter's float dtype.
template <class F>
void for_dtype(const char* who, const Tensor& p, F&& f) {
  switch (p.dtype()) {
    case kFloat32: f.template operator()<float>(); break;
    case kFloat64: f.template operator()<double>(); break;
    default: fail(who, ": parameter of shape ", p.shape(), " has dtype ", p.dtype(), "; float expected");
  }
}

Tensor state_like(const Tensor& p) { return zeros(p.shape(), p.dtype()); }

// A parameter's gradient, checked to fit it; undefined when there is none (then skip).
Tensor grad_of(const char* who, const Tensor& p) {
  Tensor g = p.grad();
  if (g.defined() && (!(g.shape() == p.shape()) || g.dtype() != p.dtype()))
    fail(who, ": gradient ", g.shape(), " ", g.dtype(), " does not fit parameter ", p.shape(), " ", p.dtype());
  return g;
}

}  // namespace

Optimizer::Optimizer(std::vector<Tensor> params, double lr) : params_(std::move(params)), lr_(lr) {
  for (size_t i = 0; i < params_.size(); ++i) {
    const Tensor& p = params_[i];
    if (!p.defined()) fail("optimizer: parameter ", i, " is undefined");
    if (!p.is_leaf()) fail("optimizer: parameter ", i, " of shape ", p.shape(), " is not a leaf");
    if (p.dtype() == kInt64) fail("optimizer: parameter ", i, " of shape ", p.shape(), " has dtype int64");
  }
  if (!(lr >= 0)) fail("optimizer: learning rate ", lr, " must be >= 0");
}

void Optimizer::zero_grad() {
  for (Tensor& p : params_) p.zero_grad();
}

// ---- SGD -------------------------------------------------------------------------------------------
SGD::SGD(std::vector<Tensor> params, double lr, SGDOptions opt)
    : Optimizer(std::move(params), lr), options(opt), buf_(params_.size()) {
  if (opt.nesterov && (opt.momentum <= 0 || opt.dampening != 0))
    fail("SGD: nesterov needs momentum > 0 and dampening = 0");
  if (opt.in_backward) {
    if (opt.momentum != 0)
      fail("SGD: in_backward needs momentum = 0 (got ", opt.momentum, "): the update must not need state");
    rule_ = std::make_shared<StepInBackward>(StepInBackward{lr, opt.weight_decay});
    try {
      for (const Tensor& p : params_) {
        if (!p.requires_grad()) fail("SGD: in_backward needs parameters that require grad (shape ", p.shape(), ")");
        handles_.push_back(register_step_in_backward(p, rule_));
      }
    } catch (...) {  // no half-registered optimizer: the destructor will not run
      for (HookHandle& h : handles_) h.remove();
      throw;
    }
  }
}

SGD::~SGD() {
  for (HookHandle& h : handles_) h.remove();
}

void SGD::set_lr(double lr) {
  Optimizer::set_lr(lr);
  if (rule_) rule_->lr = lr;
}

void SGD::step() {
  NoGradGuard no_grad;
  ++steps_;
  if (rule_) return;  // backward() has applied the update
  const double lr = lr_, mu = options.momentum, damp = options.dampening, wd = options.weight_decay;
  for (size_t k = 0; k < params_.size(); ++k) {
    Tensor& p = params_[k];
    Tensor grad = grad_of("SGD", p);
    if (!grad.defined()) continue;
    bool first = false;
    if (mu != 0 && !buf_[k].defined()) {
      buf_[k] = state_like(p);
      first = true;
    }
    for_dtype("SGD", p, [&]<class T>() {
      T* w = p.data_ptr<T>();
      const T* gp = grad.data_ptr<T>();
      T* b = mu != 0 ? buf_[k].data_ptr<T>() : nullptr;
      for (size_t i = 0; i < p.numel(); ++i) {
        double g = gp[i] + wd * w[i];
        if (b) {
          double bi = first ? g : mu * b[i] + (1 - damp) * g;
          b[i] = static_cast<T>(bi);
          g = options.nesterov ? g + mu * bi : bi;
        }
        w[i] = static_cast<T>(w[i] - lr * g);
      }
    });
    p.bump_version();
  }
}

// ---- Adam / AdamW ------------------------------------------------------------------------------------
Adam::Adam(std::vector<Tensor> params, double lr, AdamOptions opt)
    : Optimizer(std::move(params), lr), options(opt), m_(params_.size()), v_(params_.size()) {
  if (!(opt.beta1 >= 0 && opt.beta1 < 1 && opt.beta2 >= 0 && opt.beta2 < 1))
    fail("Adam: betas (", opt.beta1, ", ", opt.beta2, ") must be in [0, 1)");
}

AdamW::AdamW(std::vector<Tensor> params, double lr, AdamOptions opt) : Adam(std::move(params), lr, opt) {
  decoupled_ = true;
}

void Adam::step() {
  NoGradGuard no_grad;
  ++steps_;
  const double lr = lr_, b1 = options.beta1, b2 = options.beta2, eps = options.eps, wd = options.weight_decay;
  const double t = static_cast<double>(steps_);
  const double bc1 = 1 - std::pow(b1, t), bc2 = 1 - std::pow(b2, t);
  const double step_size = lr / bc1, bc2_sqrt = std::sqrt(bc2);
  for (size_t k = 0; k < params_.size(); ++k) {
    Tensor& p = params_[k];
    Tensor grad = grad_of(decoupled_ ? "AdamW" : "Adam", p);
    if (!grad.defined()) continue;
    if (!m_[k].defined()) m_[k] = state_like(p), v_[k] = state_like(p);
    for_dtype("Adam", p, [&]<class T>() {
      T* w = p.data_ptr<T>();
      const T* gp = grad.data_ptr<T>();
      T* m = m_[k].data_ptr<T>();
      T* v = v_[k].data_ptr<T>();
      for (size_t i = 0; i < p.numel(); ++i) {
        double g = gp[i], wi = w[i];
        if (decoupled_) wi *= 1 - lr * wd;  // AdamW: decay the weight itself
        else g += wd * wi;                  // Adam: L2 penalty through the gradient
        double mi = b1 * m[i] + (1 - b1) * g;
        double vi = b2 * v[i] + (1 - b2) * g * g;
        m[i] = static_cast<T>(mi);
        v[i] = static_cast<T>(vi);
        w[i] = static_cast<T>(wi - step_size * mi / (std::sqrt(vi) / bc2_sqrt + eps));
      }
    });
    p.bump_version();
  }
}

// ---- RMSprop -----------------------------------------------------------------------------------------
RMSprop::RMSprop(std::vector<Tensor> params, double lr, RMSpropOptions opt)
    : Optimizer(std::move(params), lr), options(opt), sq_(params_.size()), avg_(params_.size()), buf_(params_.size()) {
  if (!(opt.alpha >= 0 && opt.alpha <= 1)) fail("RMSprop: alpha ", opt.alpha, " must be in [0, 1]");
}

void RMSprop::step() {
  NoGradGuard no_grad;
  ++steps_;
  const double lr = lr_, a = options.alpha, eps = options.eps, wd = options.weight_decay, mu = options.momentum;
  for (size_t k = 0; k < params_.size(); ++k) {
    Tensor& p = params_[k];
    Tensor grad = grad_of("RMSprop", p);
    if (!grad.defined()) continue;
    if (!sq_[k].defined()) {
      sq_[k] = state_like(p);
      if (options.centered) avg_[k] = state_like(p);
      if (mu > 0) buf_[k] = state_like(p);
    }
    for_dtype("RMSprop", p, [&]<class T>() {
      T* w = p.data_ptr<T>();
      const T* gp = grad.data_ptr<T>();
      T* sq = sq_[k].data_ptr<T>();
      T* ga = options.centered ? avg_[k].data_ptr<T>() : nullptr;
      T* b = mu > 0 ? buf_[k].data_ptr<T>() : nullptr;
      for (size_t i = 0; i < p.numel(); ++i) {
        double g = gp[i] + wd * w[i];
        double s = a * sq[i] + (1 - a) * g * g;
        sq[i] = static_cast<T>(s);
        double d;
        if (ga) {
          double gi = a * ga[i] + (1 - a) * g;
          ga[i] = static_cast<T>(gi);
          d = std::sqrt(s - gi * gi) + eps;
        } else {
          d = std::sqrt(s) + eps;
        }
        if (b) {
          double bi = mu * b[i] + g / d;
          b[i] = static_cast<T>(bi);
          w[i] = static_cast<T>(w[i] - lr * bi);
        } else {
          w[i] = static_cast<T>(w[i] - lr * g / d);
        }
      }
    });
    p.bump_version();
  }
}

// ---- gradient clipping -------------------------------------------------------------------------------
double clip_grad_norm(const std::vector<Tensor>& params, double max_norm) {
  NoGradGuard no_grad;
  double total_sq = 0;
  std::vector<Tensor> grads;
  for (const Tensor& p : params) {
    Tensor g = grad_of("clip_grad_norm", p);
    if (!g.defined()) continue;
    grads.push_back(g);
    for_dtype("clip_grad_norm", g, [&]<class T>() {
      const T* d = g.data_ptr<T>();
      for (size_t i = 0; i < g.numel(); ++i) total_sq += double(d[i]) * double(d[i]);
    });
  }
  double total = std::sqrt(total_sq);
  double coef = max_norm / (total + 1e-6);
  if (coef < 1) {
    for (Tensor& g : grads) {
      for_dtype("clip_grad_norm", g, [&]<class T>() {
        T* d = g.data_ptr<T>();
        for (size_t i = 0; i < g.numel(); ++i) d[i] = static_cast<T>(d[i] * coef);
      });
      g.bump_version();
    }
  }
  return total;
}

// ---- schedules ---------------------------------------------------------------------------------------
StepLR::StepLR(Optimizer& opt, int64_t step_size_, double gamma_)
    : LRScheduler(opt), step_size(step_size_), gamma(gamma_) {
  if (step_size <= 0) fail("StepLR: step_size ", step_size, " must be positive");
}

double StepLR::lr_at(int64_t epoch) const {
  return base_lr_ * std::pow(gamma, static_cast<double>(epoch / step_size));
}

CosineAnnealingLR::CosineAnnealingLR(Optimizer& opt, int64_t T_max_, double eta_min_)
    : LRScheduler(opt), T_max(T_max_), eta_min(eta_min_) {
  if (T_max <= 0) fail("CosineAnnealingLR: T_max ", T_max, " must be positive");
}

double CosineAnnealingLR::lr_at(int64_t epoch) const {
  double x = std::numbers::pi * static_cast<double>(epoch) / static_cast<double>(T_max);
  return eta_min + (base_lr_ - eta_min) * (1 + std::cos(x)) / 2;
}

}  // namespace tapegrad::optim

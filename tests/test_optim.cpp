// optim: every optimizer's first steps against its published update rule, evaluated here by hand
// on f(p) = Σ ½·a·p² (so ∇f = a·p), plus clip_grad_norm and the schedules.
#include <cmath>
#include <functional>

#include <nn/nn.hpp>
#include "helpers.hpp"

using namespace tapegrad;
namespace optim = tapegrad::optim;

namespace {

const std::vector<double> kA = {1.0, 3.0, -0.5};    // curvature per coordinate
const std::vector<double> kP0 = {1.0, -2.0, 0.25};  // starting point

// Runs `steps` optimizer steps on f(p) = Σ ½·a·p² and returns p after each step.
std::vector<std::vector<double>> run(const std::function<std::unique_ptr<optim::Optimizer>(std::vector<Tensor>)>& make,
                                     int steps, Dtype dt = kFloat64) {
  Tensor p = from_vector(kP0, Shape{3}, dtype(dt).requires_grad());
  Tensor a = from_vector(kA, Shape{3}, dt);
  auto opt = make({p});
  std::vector<std::vector<double>> out;
  for (int s = 0; s < steps; ++s) {
    opt->zero_grad();
    sum(a * p * p * 0.5).backward();
    opt->step();
    out.push_back(p.to_vector());
  }
  return out;
}

double grad_at(size_t i, double p) { return kA[i] * p; }

void check_trajectory(const std::vector<std::vector<double>>& got, const std::vector<std::vector<double>>& want,
                      double tol = 1e-12) {
  REQUIRE(got.size() == want.size());
  for (size_t s = 0; s < got.size(); ++s)
    for (size_t i = 0; i < 3; ++i) {
      INFO("step " << s + 1 << ", coordinate " << i);
      CHECK(got[s][i] == doctest::Approx(want[s][i]).epsilon(tol));
    }
}

}  // namespace

TEST_CASE("optim: SGD plain: p ← p - lr·∇") {
  const double lr = 0.1;
  auto got = run([&](auto ps) { return std::make_unique<optim::SGD>(ps, lr); }, 3);
  std::vector<std::vector<double>> want;
  std::vector<double> p = kP0;
  for (int s = 0; s < 3; ++s) {
    for (size_t i = 0; i < 3; ++i) p[i] = p[i] - lr * grad_at(i, p[i]);  // = p·(1 - lr·a)
    want.push_back(p);
  }
  check_trajectory(got, want);
  // Closed form after 3 steps: p0·(1 - lr·a)³
  for (size_t i = 0; i < 3; ++i) CHECK(got[2][i] == doctest::Approx(kP0[i] * std::pow(1 - lr * kA[i], 3)));
}

TEST_CASE("optim: SGD with momentum and weight decay, written out step by step") {
  const double lr = 0.1, mu = 0.9, wd = 0.01, damp = 0.2;
  auto got = run([&](auto ps) { return std::make_unique<optim::SGD>(ps, lr, optim::SGDOptions{mu, damp, wd, false}); }, 3);
  std::vector<std::vector<double>> want(3, std::vector<double>(3));
  for (size_t i = 0; i < 3; ++i) {
    double p0 = kP0[i];
    double g1 = grad_at(i, p0) + wd * p0;
    double b1 = g1;  // first step: the buffer is the gradient itself (no dampening)
    double p1 = p0 - lr * b1;
    double g2 = grad_at(i, p1) + wd * p1;
    double b2 = mu * b1 + (1 - damp) * g2;
    double p2 = p1 - lr * b2;
    double g3 = grad_at(i, p2) + wd * p2;
    double b3 = mu * b2 + (1 - damp) * g3;
    double p3 = p2 - lr * b3;
    want[0][i] = p1, want[1][i] = p2, want[2][i] = p3;
  }
  check_trajectory(got, want);
}

TEST_CASE("optim: SGD Nesterov: p ← p - lr·(g + μ·buf)") {
  const double lr = 0.05, mu = 0.8;
  auto got = run([&](auto ps) { return std::make_unique<optim::SGD>(ps, lr, optim::SGDOptions{mu, 0, 0, true}); }, 2);
  std::vector<std::vector<double>> want(2, std::vector<double>(3));
  for (size_t i = 0; i < 3; ++i) {
    double p0 = kP0[i];
    double g1 = grad_at(i, p0), b1 = g1;
    double p1 = p0 - lr * (g1 + mu * b1);
    double g2 = grad_at(i, p1), b2 = mu * b1 + g2;
    double p2 = p1 - lr * (g2 + mu * b2);
    want[0][i] = p1, want[1][i] = p2;
  }
  check_trajectory(got, want);
  Tensor q = zeros(Shape{1}, requires_grad());
  CHECK_THROWS_WITH_AS(optim::SGD({q}, 0.1, optim::SGDOptions{0, 0, 0, true}), doctest::Contains("nesterov"), Error);
}

TEST_CASE("optim: Adam's first step moves each coordinate by ≈ lr against the gradient's sign") {
  const double lr = 0.01;
  auto got = run([&](auto ps) { return std::make_unique<optim::Adam>(ps, lr); }, 1);
  for (size_t i = 0; i < 3; ++i) {
    double g = grad_at(i, kP0[i]);
    // m̂ = g, v̂ = g²  ⇒  Δ = -lr·g/(|g| + eps)
    CHECK(got[0][i] == doctest::Approx(kP0[i] - lr * g / (std::fabs(g) + 1e-8)).epsilon(1e-12));
  }
}

TEST_CASE("optim: Adam with weight decay, three steps with bias correction") {
  const double lr = 0.1, b1 = 0.8, b2 = 0.95, eps = 1e-6, wd = 0.1;
  auto got = run([&](auto ps) { return std::make_unique<optim::Adam>(ps, lr, optim::AdamOptions{b1, b2, eps, wd}); }, 3);
  std::vector<std::vector<double>> want(3, std::vector<double>(3));
  for (size_t i = 0; i < 3; ++i) {
    double p = kP0[i], m = 0, v = 0;
    for (int t = 1; t <= 3; ++t) {
      double g = grad_at(i, p) + wd * p;
      m = b1 * m + (1 - b1) * g;
      v = b2 * v + (1 - b2) * g * g;
      double mhat = m / (1 - std::pow(b1, t)), vhat = v / (1 - std::pow(b2, t));
      p = p - lr * mhat / (std::sqrt(vhat) + eps);
      want[t - 1][i] = p;
    }
  }
  check_trajectory(got, want, 1e-10);
}

TEST_CASE("optim: AdamW decays the weight directly, not through the gradient") {
  const double lr = 0.1, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.5;
  auto got = run([&](auto ps) { return std::make_unique<optim::AdamW>(ps, lr, optim::AdamOptions{b1, b2, eps, wd}); }, 3);
  std::vector<std::vector<double>> want(3, std::vector<double>(3));
  for (size_t i = 0; i < 3; ++i) {
    double p = kP0[i], m = 0, v = 0;
    for (int t = 1; t <= 3; ++t) {
      double g = grad_at(i, p);  // gradient at the point before decay
      p = p * (1 - lr * wd);
      m = b1 * m + (1 - b1) * g;
      v = b2 * v + (1 - b2) * g * g;
      double mhat = m / (1 - std::pow(b1, t)), vhat = v / (1 - std::pow(b2, t));
      p = p - lr * mhat / (std::sqrt(vhat) + eps);
      want[t - 1][i] = p;
    }
  }
  check_trajectory(got, want, 1e-10);
  // AdamW's default weight decay is PyTorch's 0.01.
  Tensor q = zeros(Shape{1}, requires_grad());
  CHECK(optim::AdamW({q}).options.weight_decay == 0.01);
}

TEST_CASE("optim: RMSprop plain, then centered with momentum") {
  {
    const double lr = 0.01, a = 0.99, eps = 1e-8;
    auto got = run([&](auto ps) { return std::make_unique<optim::RMSprop>(ps, lr); }, 2);
    std::vector<std::vector<double>> want(2, std::vector<double>(3));
    for (size_t i = 0; i < 3; ++i) {
      double p0 = kP0[i];
      double g1 = grad_at(i, p0), s1 = (1 - a) * g1 * g1;
      double p1 = p0 - lr * g1 / (std::sqrt(s1) + eps);  // first step: -lr·g/(|g|·√0.01) = ±0.1
      double g2 = grad_at(i, p1), s2 = a * s1 + (1 - a) * g2 * g2;
      double p2 = p1 - lr * g2 / (std::sqrt(s2) + eps);
      want[0][i] = p1, want[1][i] = p2;
      CHECK(p1 == doctest::Approx(p0 - lr * (g1 > 0 ? 1 : -1) / std::sqrt(1 - a)).epsilon(1e-6));
    }
    check_trajectory(got, want);
  }
  {
    const double lr = 0.02, a = 0.9, eps = 1e-8, wd = 0.05, mu = 0.5;
    auto got = run([&](auto ps) { return std::make_unique<optim::RMSprop>(ps, lr, optim::RMSpropOptions{a, eps, wd, mu, true}); }, 3);
    std::vector<std::vector<double>> want(3, std::vector<double>(3));
    for (size_t i = 0; i < 3; ++i) {
      double p = kP0[i], s = 0, ga = 0, buf = 0;
      for (int t = 0; t < 3; ++t) {
        double g = grad_at(i, p) + wd * p;
        s = a * s + (1 - a) * g * g;
        ga = a * ga + (1 - a) * g;
        double d = std::sqrt(s - ga * ga) + eps;
        buf = mu * buf + g / d;
        p = p - lr * buf;
        want[t][i] = p;
      }
    }
    check_trajectory(got, want, 1e-10);
  }
}

TEST_CASE("optim: float32 parameters are updated in their own dtype") {
  auto got = run([&](auto ps) { return std::make_unique<optim::Adam>(ps, 0.1); }, 2, kFloat32);
  auto ref = run([&](auto ps) { return std::make_unique<optim::Adam>(ps, 0.1); }, 2, kFloat64);
  for (size_t i = 0; i < 3; ++i) CHECK(got[1][i] == doctest::Approx(ref[1][i]).epsilon(1e-6));
}

TEST_CASE("optim: parameters without a gradient are skipped; the update records nothing and bumps the version") {
  Tensor p = tensor({1.0, 2.0}, requires_grad()), q = tensor({5.0}, requires_grad());
  optim::SGD sgd({p, q}, 0.5);
  sum(p * p).backward();
  uint32_t v0 = p.version();
  sgd.step();
  check_values(p, {1 - 0.5 * 2, 2 - 0.5 * 4});
  check_values(q, {5.0});
  CHECK(p.version() > v0);
  CHECK(p.is_leaf());
  CHECK(p.requires_grad());
  sgd.zero_grad();
  CHECK_FALSE(p.grad().defined());
  CHECK_THROWS_AS(optim::SGD({p * 2.0}, 0.1), Error);  // not a leaf
}

TEST_CASE("optim: clip_grad_norm returns the total norm and scales only when above max_norm") {
  Tensor a = tensor({3.0, 0.0}, requires_grad()), b = tensor({4.0}, requires_grad());
  (sum(a * a) * 0.5 + sum(b * b) * 0.5).backward();  // grads (3, 0) and (4): total norm 5
  double total = optim::clip_grad_norm({a, b}, 10.0);
  CHECK(total == doctest::Approx(5.0));
  check_values(a.grad(), {3, 0});
  total = optim::clip_grad_norm({a, b}, 1.0);
  CHECK(total == doctest::Approx(5.0));
  double coef = 1.0 / (5.0 + 1e-6);
  check_values(a.grad(), {3 * coef, 0});
  check_values(b.grad(), {4 * coef});
  Tensor none = tensor({1.0}, requires_grad());
  CHECK(optim::clip_grad_norm({none}, 1.0) == 0.0);
}

TEST_CASE("optim: StepLR and CosineAnnealingLR follow their formulas") {
  Tensor p = zeros(Shape{1}, requires_grad());
  optim::SGD sgd({p}, 0.8);
  optim::StepLR step(sgd, 3, 0.5);
  std::vector<double> lrs;
  for (int e = 1; e <= 7; ++e) {
    step.step();
    lrs.push_back(sgd.lr());
  }
  // epochs 1..7: ⌊e/3⌋ = 0,0,1,1,1,2,2
  std::vector<double> want = {0.8, 0.8, 0.4, 0.4, 0.4, 0.2, 0.2};
  for (size_t i = 0; i < lrs.size(); ++i) CHECK(lrs[i] == doctest::Approx(want[i]));

  optim::SGD sgd2({p}, 1.0);
  optim::CosineAnnealingLR cos(sgd2, 4, 0.1);
  for (int e = 1; e <= 4; ++e) {
    cos.step();
    CHECK(sgd2.lr() == doctest::Approx(0.1 + 0.9 * (1 + std::cos(M_PI * e / 4)) / 2));
  }
  CHECK(sgd2.lr() == doctest::Approx(0.1));  // reaches eta_min at T_max
}

// ---- SGD in backward ---------------------------------------------------------------------------------
namespace {

struct Net {  // one of each use the engine treats differently
  Tensor W1, b1, W2, V, S;
  std::vector<Tensor> params() const { return {W1, b1, W2, V, S}; }
  Net clone() const {
    auto c = [](const Tensor& t) { return from_vector(t.to_vector(), t.shape(), dtype(kFloat64).requires_grad()); };
    return {c(W1), c(b1), c(W2), c(V), c(S)};
  }
  Tensor loss(const Tensor& x) const {
    Tensor h = tanh(linear(x, W1, b1));  // W1: folded into linear's dW gemm; b1: stepped by the sweep
    Tensor z2 = mm(h, W2, false, true);  // W2 [2,3] read transposed; h needs W2's old value for dh
    Tensor y = mm(V, z2, true, true);    // V [2,3] read transposed as the left operand
    Tensor u = mm(y, S), v = mm(y, S);   // S used twice: its gradient is a sum, stepped by the sweep
    return sum(tanh(u)) + sum(v * v) * 0.1;
  }
};

}  // namespace

TEST_CASE("optim: SGD in_backward matches backward() then step(), weight decay included") {
  Net a{leaf64({4, 3}, 1), leaf64({3}, 2), leaf64({2, 3}, 3), leaf64({2, 3}, 4), leaf64({5, 2}, 5)};
  Net b = a.clone();
  Tensor x = leaf64({5, 4}, 6);
  x.requires_grad_(false);
  const double lr = 0.05, wd = 0.1;
  optim::SGD after(a.params(), lr, optim::SGDOptions{0, 0, wd, false});
  optim::SGD during(b.params(), lr, optim::SGDOptions{.weight_decay = wd, .in_backward = true});
  for (int step = 0; step < 3; ++step) {
    after.zero_grad();
    a.loss(x).backward();
    after.step();
    during.zero_grad();
    uint32_t v0 = b.W1.version();
    uint64_t folded0 = detail::folded_steps();
    b.loss(x).backward();
    CHECK(detail::folded_steps() - folded0 == 3);  // W1, W2, V: in their gemms; b1, S: by the sweep
    CHECK(b.W1.version() > v0);  // updated in place by backward(): graphs that saved W1 see it
    during.step();                // only counts
    std::vector<Tensor> pa = a.params(), pb = b.params();
    for (size_t k = 0; k < pa.size(); ++k) {
      INFO("step " << step + 1 << ", parameter " << k);
      CHECK_FALSE(pb[k].grad().defined());  // the gradient went into the parameter, not .grad()
      check_values(pb[k], pa[k].to_vector(), 1e-12);
    }
  }
  CHECK(during.steps() == 3);
  // Changing lr reaches the next backward (schedules work), and x needing a gradient changes nothing.
  during.set_lr(0.0);
  x.requires_grad_(true);
  std::vector<double> before = b.W1.to_vector();
  b.loss(x).backward();
  check_values(b.W1, before, 1e-15);
  
  CHECK(x.grad().defined());
}

TEST_CASE("optim: SGD in_backward with hooks, grad(), and after the optimizer is gone") {
  Tensor W = leaf64({3, 2}, 7), x = leaf64({4, 3}, 8);
  x.requires_grad_(false);
  auto loss = [&] { return sum(linear(x, W, Tensor()) * linear(x, W, Tensor()).detach()); };
  // d/dW Σ (xW)∘c = xᵀ·c with c = xW held constant
  auto expected_grad = [&] { return mm(x, linear(x, W, Tensor()), true, false).detach().to_vector(); };
  std::vector<double> seen;
  HookHandle h = register_hook(W, [&](const Tensor& g) { seen = g.to_vector(); return Tensor(); });
  std::vector<double> w0 = W.to_vector(), g0 = expected_grad();
  {
    optim::SGD sgd({W}, 0.5, optim::SGDOptions{.in_backward = true});
    // A hook must see the gradient, so it is formed (not folded) and then applied.
    uint64_t folded0 = detail::folded_steps();
    loss().backward();
    CHECK(detail::folded_steps() == folded0);
    REQUIRE(seen.size() == g0.size());
    for (size_t i = 0; i < g0.size(); ++i) {
      CHECK(seen[i] == doctest::Approx(g0[i]).epsilon(1e-12));
      CHECK(W.to_vector()[i] == doctest::Approx(w0[i] - 0.5 * g0[i]).epsilon(1e-12));
    }
    // grad() returns gradients and leaves parameters alone.
    std::vector<double> w1 = W.to_vector();
    std::vector<Tensor> gs = grad({loss()}, {W});
    check_values(gs[0], expected_grad(), 1e-12);
    check_values(W, w1, 1e-15);
    // One rule per parameter; no state-needing update.
    CHECK_THROWS_WITH_AS(optim::SGD({W}, 0.1, optim::SGDOptions{.in_backward = true}),
                         doctest::Contains("already updated in backward"), Error);
    // A failed constructor leaves no parameter registered: `fresh` is not stepped by backward().
    Tensor fresh = leaf64({2}, 10);
    CHECK_THROWS_AS(optim::SGD({fresh, W}, 0.1, optim::SGDOptions{.in_backward = true}), Error);
    std::vector<double> f0 = fresh.to_vector();
    sum(fresh * fresh).backward();
    check_values(fresh, f0, 1e-15);
    check_values(fresh.grad(), {2 * f0[0], 2 * f0[1]}, 1e-15);
    CHECK_THROWS_WITH_AS(optim::SGD({leaf64({2}, 9)}, 0.1, optim::SGDOptions{.momentum = 0.9, .in_backward = true}),
                         doctest::Contains("momentum = 0"), Error);
  }
  // With the optimizer gone, backward() accumulates into .grad() again.
  h.remove();
  std::vector<double> w2 = W.to_vector(), g2 = expected_grad();
  loss().backward();
  check_values(W, w2, 1e-15);
  check_values(W.grad(), g2, 1e-12);
}

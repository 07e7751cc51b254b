// Unary ops: values by hand, gradcheck in float64 (inputs kept away from kinks), gradients of
// gradients, every broadcast variant of pow(x, Tensor), float32, errors.
#include <limits>

#include "helpers.hpp"

using namespace tapegrad;

namespace {

using V = std::vector<Tensor>;
using UnaryFn = std::function<Tensor(const Tensor&)>;

Tensor f64(std::initializer_list<double> v) { return tensor(v, dtype(kFloat64).requires_grad()); }

// x -> d/dx Σ f(x), recorded (create_graph), so gradcheck of it checks second derivatives.
// gradcheck runs its finite differences under NoGradGuard: the inner graph needs grad mode on.
TensorFn grad_of(UnaryFn f) {
  return [f](const std::vector<Tensor>& in) {
    EnableGradGuard with_grad;
    return grad({sum(f(in[0]))}, {in[0]}, {}, /*retain_graph=*/true, /*create_graph=*/true)[0];
  };
}

TensorFn fn(UnaryFn f) {
  return [f](const std::vector<Tensor>& in) { return f(in[0]); };
}

}  // namespace

TEST_CASE("unary values by hand") {
  check_values(exp(tensor({0.0, 1.0, -1.0})), {1.0, std::exp(1.0), std::exp(-1.0)});
  check_values(log(tensor({1.0, std::exp(2.0), 0.5})), {0.0, 2.0, std::log(0.5)});
  check_values(sqrt(tensor({4.0, 9.0, 0.25})), {2.0, 3.0, 0.5});
  check_values(pow(tensor({2.0, 3.0, -2.0}), 2.0), {4.0, 9.0, 4.0});
  check_values(pow(tensor({2.0, -2.0}), 3.0), {8.0, -8.0});
  check_values(pow(tensor({4.0, 9.0}), 0.5), {2.0, 3.0});
  check_values(pow(tensor({4.0, 0.5}), -1.0), {0.25, 2.0});
  check_values(abs(tensor({-1.5, 0.0, 2.0})), {1.5, 0.0, 2.0});
  check_values(sigmoid(tensor({0.0, 2.0, -2.0})), {0.5, 1 / (1 + std::exp(-2.0)), 1 / (1 + std::exp(2.0))});
  check_values(relu(tensor({-1.0, 0.0, 2.5})), {0.0, 0.0, 2.5});
  check_values(leaky_relu(tensor({-2.0, 0.0, 3.0})), {-0.02, 0.0, 3.0});
  check_values(leaky_relu(tensor({-2.0, 3.0}), 0.2), {-0.4, 3.0});
  // gelu(x) = x·Φ(x): Φ(1) = 0.8413447460685429, Φ(-1) = 0.15865525393145707
  check_values(gelu(tensor({1.0, -1.0, 0.0})), {0.8413447460685429, -0.15865525393145707, 0.0});
  check_values(tanh(tensor({0.5})), {std::tanh(0.5)});
  check_values(clamp(tensor({-2.0, 0.5, 3.0}), -1.0, 1.0), {-1.0, 0.5, 1.0});
}

TEST_CASE("unary gradients by hand") {
  Tensor x = f64({-2.0, 0.0, 3.0});
  sum(relu(x)).backward();
  check_values(x.grad(), {0, 0, 1});  // 0 at the kink
  x.zero_grad();
  sum(abs(x)).backward();
  check_values(x.grad(), {-1, 0, 1});
  x.zero_grad();
  sum(leaky_relu(x, 0.1)).backward();
  check_values(x.grad(), {0.1, 0.1, 1});
  x.zero_grad();
  sum(clamp(x, -2.0, 1.0)).backward();  // inside-inclusive: passes at x = lo
  check_values(x.grad(), {1, 1, 0});

  Tensor p = f64({2.0, 3.0});
  sum(pow(p, 3.0)).backward();  // 3x²
  check_values(p.grad(), {12, 27});
  p.zero_grad();
  sum(sqrt(p)).backward();  // 1/(2√x)
  check_values(p.grad(), {0.5 / std::sqrt(2.0), 0.5 / std::sqrt(3.0)});
  p.zero_grad();
  sum(pow(p, 0.0)).backward();
  check_values(p.grad(), {0, 0});

  Tensor s = f64({0.0});
  sum(sigmoid(s)).backward();
  CHECK(s.grad().item() == doctest::Approx(0.25));

  // gelu'(x) = Φ(x) + x·φ(x); at 1: 0.8413447460685429 + 0.24197072451914337
  Tensor g = f64({1.0});
  sum(gelu(g)).backward();
  CHECK(g.grad().item() == doctest::Approx(0.8413447460685429 + 0.24197072451914337));
}

TEST_CASE("unary gradcheck in float64") {
  Tensor any = leaf64({2, 3}, 1, -2.0, 2.0);
  Tensor pos = leaf64({2, 3}, 2, 0.3, 2.0);
  // values away from 0 (kinks of relu, abs, leaky_relu) and away from clamp's bounds
  Tensor signed_ = from_vector({-1.3, -0.4, 0.2, 0.7, 1.9, -2.2}, {2, 3}, dtype(kFloat64).requires_grad());
  CHECK_GRADCHECK(fn([](const Tensor& x) { return exp(x); }), V{any});
  CHECK_GRADCHECK(fn([](const Tensor& x) { return tanh(x); }), V{any});
  CHECK_GRADCHECK(fn([](const Tensor& x) { return log(x); }), V{pos});
  CHECK_GRADCHECK(fn([](const Tensor& x) { return sqrt(x); }), V{pos});
  CHECK_GRADCHECK(fn([](const Tensor& x) { return pow(x, 3.0); }), V{any});
  CHECK_GRADCHECK(fn([](const Tensor& x) { return pow(x, 2.0); }), V{any});
  CHECK_GRADCHECK(fn([](const Tensor& x) { return pow(x, 1.0); }), V{any});
  CHECK_GRADCHECK(fn([](const Tensor& x) { return pow(x, 0.0); }), V{any});
  CHECK_GRADCHECK(fn([](const Tensor& x) { return pow(x, 0.5); }), V{pos});
  CHECK_GRADCHECK(fn([](const Tensor& x) { return pow(x, -1.5); }), V{pos});
  CHECK_GRADCHECK(fn([](const Tensor& x) { return abs(x); }), V{signed_});
  CHECK_GRADCHECK(fn([](const Tensor& x) { return sigmoid(x); }), V{any});
  CHECK_GRADCHECK(fn([](const Tensor& x) { return relu(x); }), V{signed_});
  CHECK_GRADCHECK(fn([](const Tensor& x) { return leaky_relu(x); }), V{signed_});
  CHECK_GRADCHECK(fn([](const Tensor& x) { return leaky_relu(x, 0.3); }), V{signed_});
  CHECK_GRADCHECK(fn([](const Tensor& x) { return gelu(x); }), V{any});
  CHECK_GRADCHECK(fn([](const Tensor& x) { return clamp(x, -1.0, 1.0); }), V{signed_});
  CHECK_GRADCHECK(fn([](const Tensor& x) { return clamp(x, -INFINITY, 0.5); }), V{signed_});
  CHECK_GRADCHECK(fn([](const Tensor& x) { return clamp(x, 0.0, INFINITY); }), V{signed_});
}

TEST_CASE("unary gradients of gradients (backwards are differentiable)") {
  Tensor any = leaf64({5}, 3, -2.0, 2.0);
  Tensor pos = leaf64({5}, 4, 0.3, 2.0);
  Tensor signed_ = from_vector({-1.3, -0.4, 0.2, 0.7, 1.9}, {5}, dtype(kFloat64).requires_grad());
  CHECK_GRADCHECK(grad_of([](const Tensor& x) { return exp(x); }), V{any});
  CHECK_GRADCHECK(grad_of([](const Tensor& x) { return tanh(x); }), V{any});
  CHECK_GRADCHECK(grad_of([](const Tensor& x) { return log(x); }), V{pos});
  CHECK_GRADCHECK(grad_of([](const Tensor& x) { return sqrt(x); }), V{pos});
  CHECK_GRADCHECK(grad_of([](const Tensor& x) { return pow(x, 3.0); }), V{any});
  CHECK_GRADCHECK(grad_of([](const Tensor& x) { return pow(x, -1.5); }), V{pos});
  CHECK_GRADCHECK(grad_of([](const Tensor& x) { return sigmoid(x); }), V{any});
  CHECK_GRADCHECK(grad_of([](const Tensor& x) { return gelu(x); }), V{any});
  // piecewise-linear ops: second derivative 0 away from the kinks (x² keeps it non-trivial)
  CHECK_GRADCHECK(grad_of([](const Tensor& x) { return relu(x) * x; }), V{signed_});
  CHECK_GRADCHECK(grad_of([](const Tensor& x) { return abs(x) * x; }), V{signed_});
  CHECK_GRADCHECK(grad_of([](const Tensor& x) { return leaky_relu(x, 0.2) * x; }), V{signed_});
  CHECK_GRADCHECK(grad_of([](const Tensor& x) { return clamp(x, -1.0, 1.0) * x; }), V{signed_});
  // and a third order: d³/dx³ Σ exp(x) = exp(x)
  Tensor x = f64({0.5, -1.0});
  Tensor g1 = grad({sum(exp(x))}, {x}, {}, true, true)[0];
  Tensor g2 = grad({sum(g1)}, {x}, {}, true, true)[0];
  Tensor g3 = grad({sum(g2)}, {x})[0];
  check_values(g3, {std::exp(0.5), std::exp(-1.0)});
}

TEST_CASE("pow(x, Tensor): values and every broadcast variant under gradcheck") {
  Tensor b = tensor({2.0, 3.0});
  check_values(pow(b, tensor({3.0, 0.5})), {8.0, std::sqrt(3.0)});
  check_values(pow(from_vector({2.0, 3.0}, {2, 1}), tensor({1.0, 2.0})), {2, 4, 3, 9});  // [2,1]^[2] -> [2,2]
  CHECK(pow(from_vector({2.0, 3.0}, {2, 1}), tensor({1.0, 2.0})).shape() == Shape{2, 2});

  auto f = [](const std::vector<Tensor>& in) { return pow(in[0], in[1]); };
  struct Case {
    Shape x, e;
  };
  for (Case c : {Case{{2, 3}, {2, 3}}, Case{{2, 3}, {3}}, Case{{3}, {2, 3}}, Case{{2, 1}, {1, 3}},
                 Case{{2, 1}, {3}}, Case{{2, 3}, {}}, Case{{2, 3}, {1}}, Case{{}, {2, 3}}, Case{{2, 3, 1}, {3, 4}}}) {
    INFO("x " << c.x << " ^ e " << c.e);
    Tensor x = leaf64(c.x, 10, 0.5, 2.0), e = leaf64(c.e, 11, -1.5, 2.5);
    CHECK(pow(x, e).shape() == broadcast_shapes("pow", c.x, c.e));
    CHECK_GRADCHECK(f, (V{x, e}));
    // one side constant
    CHECK_GRADCHECK(f, (V{x, e.detach()}));
    CHECK_GRADCHECK(f, (V{x.detach(), e}));
  }
  // second order through both operands
  Tensor x = leaf64({2, 3}, 12, 0.5, 2.0), e = leaf64({3}, 13, -1.0, 2.0);
  CHECK_GRADCHECK(([](const std::vector<Tensor>& in) {
                    EnableGradGuard with_grad;
                    auto g = grad({sum(pow(in[0], in[1]))}, {in[0], in[1]}, {}, true, true);
                    return sum(g[0]) + sum(g[1] * g[1]);
                  }),
                  (V{x, e}));

  // d/de at x = 0 is taken as 0 (no NaN): 0^e = 0 for e > 0
  Tensor z = f64({0.0, 2.0});
  Tensor ez = f64({2.0, 2.0});
  sum(pow(z, ez)).backward();
  check_values(ez.grad(), {0.0, 4.0 * std::log(2.0)});
  check_values(z.grad(), {0.0, 4.0});
}

TEST_CASE("sigmoid and friends stay finite at extreme inputs") {
  Tensor x = tensor({-1000.0, 1000.0, -80.0}, requires_grad());
  Tensor y = sigmoid(x);
  check_values(y, {0.0, 1.0, 1 / (1 + std::exp(80.0f))}, 1e-5);
  sum(y).backward();
  for (double g : x.grad().to_vector()) CHECK(std::isfinite(g));
  check_values(gelu(tensor({-1000.0, 1000.0})), {0.0, 1000.0});
  check_values(clamp(tensor({-1e30, 1e30}), -INFINITY, INFINITY), {-1e30, 1e30});
}

TEST_CASE("unary ops in float32 match float64") {
  Tensor x64 = leaf64({7}, 20, 0.2, 3.0);
  Tensor x32 = from_vector(x64.to_vector(), {7}, kFloat32);
  std::vector<UnaryFn> ops = {
      [](const Tensor& x) { return exp(x); },          [](const Tensor& x) { return log(x); },
      [](const Tensor& x) { return sqrt(x); },         [](const Tensor& x) { return pow(x, 1.7); },
      [](const Tensor& x) { return abs(x - 1.0); },    [](const Tensor& x) { return sigmoid(x - 1.0); },
      [](const Tensor& x) { return relu(x - 1.0); },   [](const Tensor& x) { return leaky_relu(x - 1.0); },
      [](const Tensor& x) { return gelu(x - 1.5); },   [](const Tensor& x) { return clamp(x, 0.5, 2.0); },
      [](const Tensor& x) { return pow(x, x * 0.5); }, [](const Tensor& x) { return tanh(x); }};
  for (size_t i = 0; i < ops.size(); ++i) {
    INFO("op " << i);
    Tensor y32 = ops[i](x32);
    CHECK(y32.dtype() == kFloat32);
    check_values(y32, ops[i](x64).to_vector(), 1e-5);
  }
}

TEST_CASE("unary errors name the op and the shapes") {
  Tensor i = from_indices({1, 2}, {2});
  CHECK_THROWS_WITH_AS(exp(i), doctest::Contains("exp: int64"), Error);
  CHECK_THROWS_WITH_AS(gelu(i), doctest::Contains("gelu: int64"), Error);
  CHECK_THROWS_WITH_AS(pow(i, 2.0), doctest::Contains("pow: int64"), Error);
  Tensor x = tensor({1.0, 2.0});
  CHECK_THROWS_WITH_AS(clamp(x, 1.0, -1.0), doctest::Contains("clamp: lo 1 is greater than hi -1"), Error);
  CHECK_THROWS_WITH_AS(clamp(x, 1.0, -1.0), doctest::Contains("[2]"), Error);
  CHECK_THROWS_WITH_AS(clamp(x, NAN, 1.0), doctest::Contains("clamp: bounds must not be NaN"), Error);
  CHECK_THROWS_WITH_AS(pow(zeros({2, 3}), zeros({4})), doctest::Contains("pow: shapes [2,3] and [4]"), Error);
  CHECK_THROWS_WITH_AS(pow(zeros({2}), zeros({2}, kFloat64)), doctest::Contains("pow: dtypes differ"), Error);
  CHECK_THROWS_WITH_AS(relu(Tensor()), doctest::Contains("relu: undefined"), Error);
}

// Issue 6: functional grad, gradients of gradients, custom functions, hooks, explain mode,
// checking a learner's hand-written backward; and anomaly mode.
#include <xtensor-blas/xlinalg.hpp>

#include "helpers.hpp"

using namespace tapegrad;

TEST_CASE("grad() returns gradients without touching .grad()") {
  Tensor x = tensor({2.0}, dtype(kFloat64).requires_grad());
  Tensor y = x * x * x;
  auto g = grad({y}, {x});
  CHECK(g[0].item() == doctest::Approx(12.0));
  CHECK_FALSE(x.grad().defined());
}

TEST_CASE("d²/dx² of x³ is 6x") {
  for (double v : {-1.5, 0.5, 2.0}) {
    Tensor x = tensor({v}, dtype(kFloat64).requires_grad());
    Tensor y = x * x * x;
    Tensor dy = grad({y}, {x}, {}, false, /*create_graph=*/true)[0];
    CHECK(dy.item() == doctest::Approx(3 * v * v));
    CHECK(dy.requires_grad());
    Tensor d2y = grad({dy}, {x})[0];
    CHECK(d2y.item() == doctest::Approx(6 * v));
  }
}

TEST_CASE("unused inputs: an error unless allow_unused") {
  Tensor x = tensor({1.0}, requires_grad()), z = tensor({1.0}, requires_grad());
  CHECK_THROWS_WITH_AS(grad({x * 2.0}, {x, z}), doctest::Contains("allow_unused"), Error);
  auto g = grad({x * 2.0}, {x, z}, {}, false, false, /*allow_unused=*/true);
  CHECK_FALSE(g[1].defined());
}

TEST_CASE("Hessian-vector product of a small MLP loss matches finite differences of its gradient") {
  Tensor X = leaf64({4, 3}, 1);
  X.requires_grad_(false);
  Tensor W1 = leaf64({3, 5}, 2), b1 = leaf64({5}, 3), W2 = leaf64({5, 1}, 4);
  auto loss_of = [&](const Tensor& w1) { return mean(tanh(linear(tanh(linear(X, w1, b1)), W2)) * 2.0); };
  Tensor v = leaf64({3, 5}, 5);
  v.requires_grad_(false);
  // Hv = d/dW1 (∇_W1 loss · v)
  Tensor g = grad({loss_of(W1)}, {W1}, {}, false, /*create_graph=*/true)[0];
  Tensor Hv = grad({sum(g * v)}, {W1})[0];
  // finite differences: (∇L(W1 + εv) - ∇L(W1 - εv)) / 2ε
  double eps = 1e-6;
  std::vector<double> w = W1.to_vector(), vv = v.to_vector(), plus(w), minus(w);
  for (size_t i = 0; i < w.size(); ++i) plus[i] += eps * vv[i], minus[i] -= eps * vv[i];
  Tensor Wp = from_vector(plus, W1.shape(), dtype(kFloat64).requires_grad());
  Tensor Wm = from_vector(minus, W1.shape(), dtype(kFloat64).requires_grad());
  std::vector<double> gp = grad({loss_of(Wp)}, {Wp})[0].to_vector(), gm = grad({loss_of(Wm)}, {Wm})[0].to_vector();
  std::vector<double> hv = Hv.to_vector();
  for (size_t i = 0; i < hv.size(); ++i) CHECK(hv[i] == doctest::Approx((gp[i] - gm[i]) / (2 * eps)).epsilon(1e-5));
}

TEST_CASE("gradgradcheck: the MLP loss Hessian and second derivatives of core ops") {
  Tensor X = leaf64({3, 2}, 11);
  X.requires_grad_(false);
  Tensor W1 = leaf64({2, 4}, 12), b1 = leaf64({4}, 13), W2 = leaf64({4, 2}, 14);
  auto r = gradgradcheck([&](const std::vector<Tensor>& t) { return sum(tanh(linear(tanh(linear(X, t[0], t[1])), t[2]))); },
                         {W1, b1, W2});
  INFO(r.report);
  CHECK(r.ok);
  Tensor a = leaf64({2, 3}, 21), b = leaf64({3, 2}, 22), c = leaf64({3}, 23, 0.5, 2.0);
  CHECK(gradgradcheck([](auto& t) { return matmul(t[0], t[1]); }, {a, b}).ok);
  CHECK(gradgradcheck([](auto& t) { return mm(t[0], t[1], true, true); }, {b, a}).ok);
  CHECK(gradgradcheck([](auto& t) { return linear(t[0], t[1], t[2]); }, {a, leaf64({3, 4}, 24), leaf64({4}, 25)}).ok);
  CHECK(gradgradcheck([](auto& t) { return t[0] * t[1] / t[2] - t[1]; }, {a, leaf64({2, 3}, 26), leaf64({3}, 27, 0.5, 2)}).ok);
  CHECK(gradgradcheck([](auto& t) { return tanh(t[0]); }, {c}).ok);
}

TEST_CASE("a gradient penalty ‖∂f/∂x‖² trains through") {
  // f(x) = tanh(x·w); penalty = Σ (∂f/∂x)²; minimise it over w by gradient descent.
  Tensor x = leaf64({4, 3}, 31);
  Tensor w = leaf64({3, 1}, 32);
  x.requires_grad_(true);
  double first = 0, last = 0;
  for (int step = 0; step < 30; ++step) {
    Tensor f = sum(tanh(matmul(x, w)));
    Tensor dfdx = grad({f}, {x}, {}, false, /*create_graph=*/true)[0];
    Tensor penalty = sum(dfdx * dfdx);
    if (step == 0) first = penalty.item();
    last = penalty.item();
    Tensor dw = grad({penalty}, {w})[0];
    NoGradGuard no_grad;
    double* wp = w.data_ptr<double>();
    std::vector<double> d = dw.to_vector();
    for (size_t i = 0; i < d.size(); ++i) wp[i] -= 0.1 * d[i];
  }
  CHECK(last < 0.5 * first);
}

// ---- custom functions ----------------------------------------------------------------------------
struct Cube : Function<Cube> {
  static constexpr const char* name = "cube";
  static Tensor forward(AutogradContext& ctx, const Tensor& x) {
    ctx.save_for_backward({x});
    return x * x * x;
  }
  static std::vector<Tensor> backward(AutogradContext& ctx, const Tensor& dout) {
    const Tensor& x = ctx.saved()[0];
    return {dout * 3.0 * x * x};
  }
};

// Saves its output: exp-like y = x·x + 1 with backward computed from y: dy/dx = 2·sqrt(y - 1) sign...
// kept simple: y = 2x, backward reads y to return dout·y/x.
struct SavesOutput : Function<SavesOutput> {
  static Tensor forward(AutogradContext& ctx, const Tensor& x) {
    Tensor y = x * 2.0;
    ctx.save_for_backward({x, y});
    return y;
  }
  static std::vector<Tensor> backward(AutogradContext& ctx, const Tensor& dout) {
    return {dout * ctx.saved()[1] / ctx.saved()[0]};
  }
};

TEST_CASE("custom functions: values, gradcheck, second order, saved output") {
  Tensor x = leaf64({3}, 41, 0.5, 1.5);
  CHECK_GRADCHECK([](auto& t) { return Cube::apply(t[0]); }, std::vector<Tensor>{x});
  CHECK(gradgradcheck([](auto& t) { return Cube::apply(t[0]); }, {x}).ok);
  Tensor y = Cube::apply(x);
  CHECK(std::string(y.op_name()) == "cube");
  // (the affine layer as a custom function: tests/test_readme.cpp)
  CHECK_GRADCHECK([](auto& t) { return SavesOutput::apply(t[0]); }, std::vector<Tensor>{x});
}

struct ArgMaxIndex : Function<ArgMaxIndex> {
  static Tensor forward(AutogradContext& ctx, const Tensor& x) {
    ctx.mark_non_differentiable();
    return x * 0.0;
  }
  static std::vector<Tensor> backward(AutogradContext&, const Tensor&) { return {Tensor()}; }
};

TEST_CASE("custom functions: non-differentiable outputs and wrong gradient counts") {
  Tensor x = tensor({1.0, 2.0}, requires_grad());
  CHECK_FALSE(ArgMaxIndex::apply(x).requires_grad());
  struct TooMany : Function<TooMany> {
    static Tensor forward(AutogradContext&, const Tensor& x) { return x * 1.0; }
    static std::vector<Tensor> backward(AutogradContext&, const Tensor& d) { return {d, d}; }
  };
  CHECK_THROWS_WITH_AS(sum(TooMany::apply(x)).backward(), doctest::Contains("2 gradients for 1"), Error);
}

// ---- hooks -----------------------------------------------------------------------------------------
TEST_CASE("hooks read and replace gradients; handles remove them") {
  Tensor x = tensor({1.0, 2.0}, requires_grad());
  Tensor h = x * 3.0;
  std::vector<double> seen;
  auto reader = register_hook(h, [&](const Tensor& g) { seen = g.to_vector(); return Tensor(); });
  auto doubler = register_hook(h, [](const Tensor& g) { return g * 2.0; });
  sum(h * h).backward();
  check_values(tensor(std::initializer_list<double>{seen[0], seen[1]}), {6, 12});  // dh = 2h
  check_values(x.grad(), {36, 72});                                                 // 2 · 3 · dh
  int calls = 0;
  auto post = register_post_accumulate_grad_hook(x, [&](const Tensor& leaf) { calls += leaf.grad().defined(); });
  x.zero_grad();
  Tensor h2 = x * 3.0;
  sum(h2).backward();
  CHECK(calls == 1);
  post.remove();
  post.remove();  // twice is fine
  sum(x * 1.0).backward();
  CHECK(calls == 1);
  reader.remove();
  doubler.remove();
}

// ---- explain mode ------------------------------------------------------------------------------------
TEST_CASE("explain mode prints each rule with concrete shapes and every fan-out +=") {
  Tensor x = leaf64({4, 3}, 51), W = leaf64({3, 2}, 52), b = leaf64({2}, 53);
  Tensor y = linear(x, W, b);
  Tensor loss = sum(y * y + y);  // y feeds two consumers: fan-out
  ExplainGuard explain;
  loss.backward();
  std::string text = explain.text();
  INFO(text);
  CHECK(text.find("linear: dW += xᵀ·dout   [3,2] += [3,4]·[4,2]") != std::string::npos);
  CHECK(text.find("linear: dx += dout·Wᵀ   [4,3] += [4,2]·[2,3]") != std::string::npos);
  CHECK(text.find("linear: db += Σ_batch dout   [2] += Σ_batch [4,2]") != std::string::npos);
  CHECK(text.find("fan-out: linear [4,2]") != std::string::npos);
  std::string dot = explain.dot();
  CHECK(dot.find("digraph") != std::string::npos);
  CHECK(dot.find("linear\\n[4,2]") != std::string::npos);
}

// ---- a learner's own backward ---------------------------------------------------------------------------
static HandWrittenLayer affine_layer(bool buggy) {
  HandWrittenLayer L;
  L.name = buggy ? "affine (buggy)" : "affine";
  L.input_names = {"x", "W", "b"};
  L.forward = [](const Arrays& in) { return Array(xt::linalg::dot(in[0], in[1]) + in[2]); };
  L.backward = [buggy](const Array& dout, const Arrays& in) {
    Array dx = xt::linalg::dot(dout, xt::transpose(in[1]));
    Array dW = xt::linalg::dot(xt::transpose(in[0]), dout);
    // (xtensor 0.24's immediate reducers with runtime axes crash on xarray: use the lazy form)
    Array db = xt::sum(dout, {0});
    if (buggy) db = xt::mean(dout, {0});  // the classic mistake
    return Arrays{dx, dW, db};
  };
  return L;
}

TEST_CASE("check_layer reports a learner's affine backward input by input") {
  Array x = {{0.1, -0.2, 0.3}, {0.5, 0.4, -0.6}}, W = {{0.2, -0.1}, {0.3, 0.7}, {-0.5, 0.1}}, b = {0.05, -0.02};
  auto engine = [](const std::vector<Tensor>& t) { return linear(t[0], t[1], t[2]); };
  LayerCheck good = check_layer(affine_layer(false), {x, W, b}, engine);
  INFO(good.report);
  CHECK(good.ok);
  CHECK(good.inputs[1].rel_error_numeric < 1e-7);
  CHECK(good.inputs[1].rel_error_engine < 1e-12);
  LayerCheck bad = check_layer(affine_layer(true), {x, W, b}, engine);
  CHECK_FALSE(bad.ok);
  CHECK(bad.inputs[0].ok);
  CHECK(bad.inputs[1].ok);
  CHECK_FALSE(bad.inputs[2].ok);
  CHECK(bad.report.find("db: WRONG") != std::string::npos);
}

// ---- anomaly mode ------------------------------------------------------------------------------------
struct NaNBackward : Function<NaNBackward> {
  static constexpr const char* name = "nan_backward";
  static Tensor forward(AutogradContext&, const Tensor& x) { return x * 1.0; }
  static std::vector<Tensor> backward(AutogradContext&, const Tensor& d) { return {d * NAN}; }
};

TEST_CASE("anomaly mode names the op that first produced NaN or Inf") {
  Tensor x = tensor({0.0, 1.0}, requires_grad());
  {
    DetectAnomalyGuard anomaly;
    CHECK_THROWS_WITH_AS(1.0 / x, doctest::Contains("anomaly: div produced NaN or Inf"), Error);
    Tensor y = NaNBackward::apply(x);
    CHECK_THROWS_WITH_AS(sum(y).backward(), doctest::Contains("during the backward of nan_backward"), Error);
    CHECK_FALSE(x.grad().defined());  // nothing accumulated
  }
  Tensor inf = 1.0 / x;  // outside the guard: no check
  CHECK(std::isinf(inf.to_vector()[0]));
}

// Matches `before` followed by "file:line in " of a line of this file, as std::source_location reports it.
static doctest::Contains here(const std::string& before, unsigned line) {
  return doctest::Contains((before + std::string(__FILE__) + ":" + std::to_string(line) + " in ").c_str());
}
static Tensor reciprocal_in_a_helper(const Tensor& x) { return div(ones_like(x), x); }  // the site is this line
static const unsigned kHelperLine = __LINE__ - 1;

TEST_CASE("anomaly errors give the call site in user code, or only the op number without source_location") {
  Tensor x = tensor({0.0, 4.0}, dtype(kFloat64).requires_grad());
  Tensor logits = tensor({{NAN, 0.0}}, kFloat64), labels = from_indices({0}, {1});
  DetectAnomalyGuard anomaly;
#if defined(__cpp_lib_source_location)
  const unsigned op_line = __LINE__ + 1;
  CHECK_THROWS_WITH_AS(1.0 / x, here("on the tape, called at ", op_line), Error);  // an operator
  const unsigned fn_line = __LINE__ + 1;
  CHECK_THROWS_WITH_AS(log(x), here("called at ", fn_line), Error);  // a named op
  // a composite op (cross_entropy -> log_softmax -> ...): the user's line, not the library's
  const unsigned ce_line = __LINE__ + 1;
  CHECK_THROWS_WITH_AS(cross_entropy(logits, labels), here("called at ", ce_line), Error);
  // a site ends with its op: the helper's own div is reported, not the relu whose result it takes
  CHECK_THROWS_WITH_AS(reciprocal_in_a_helper(relu(x)), here("called at ", kHelperLine), Error);
  // backward: sqrt is fine at 0 in the forward; its derivative 1/(2·sqrt(0)) is not, and the error
  // names where the sqrt node was created
  const unsigned sqrt_line = __LINE__ + 1;
  Tensor r = sqrt(x);
  CHECK_THROWS_WITH_AS(sum(r).backward(),
                       here("during the backward of sqrt (op number " + std::to_string(r.impl()->node->seq) + ", created at ",
                            sqrt_line),
                       Error);
#else
  CHECK_THROWS_WITH_AS(1.0 / x, doctest::Contains("on the tape)"), Error);
#endif
  CHECK_FALSE(x.grad().defined());
}

TEST_CASE("tanh_backward, sigmoid_backward and relu_backward are differentiable ops of their own") {
  Tensor dy = leaf64({2, 3}, 61), y = leaf64({2, 3}, 62, -0.9, 0.9);
  CHECK_GRADCHECK([](auto& t) { return tanh_backward(t[0], t[1]); }, (std::vector<Tensor>{dy, y}));
  CHECK_GRADCHECK([](auto& t) { return sigmoid_backward(t[0], t[1]); }, (std::vector<Tensor>{dy, y}));
  CHECK(gradgradcheck([](auto& t) { return tanh_backward(t[0], t[1]); }, {dy, y}).ok);
  CHECK(gradgradcheck([](auto& t) { return sigmoid_backward(t[0], t[1]); }, {dy, y}).ok);
  Tensor dy_only = leaf64({2, 3}, 63), y_const = leaf64({2, 3}, 64);
  y_const.requires_grad_(false);  // relu's mask has derivative 0 in y: check the dy side
  CHECK_GRADCHECK([&](auto& t) { return relu_backward(t[0], y_const); }, std::vector<Tensor>{dy_only});
  CHECK(gradgradcheck([&](auto& t) { return relu_backward(t[0], y_const); }, {dy_only}).ok);
  check_values(relu_backward(tensor({1.0, 2.0, 3.0}), tensor({-1.0, 0.0, 0.5})), {0, 0, 3});
  double d = dy.to_vector()[0], v = y.to_vector()[0];
  CHECK(tanh_backward(dy, y).to_vector()[0] == doctest::Approx(d * (1 - v * v)));
  CHECK_THROWS_WITH_AS(tanh_backward(dy, leaf64({3}, 1)), doctest::Contains("tanh_backward: gradient [2,3] and output [3]"), Error);
}

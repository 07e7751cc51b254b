// nn: module registration and paths, train/eval, the layers' values, Dropout's statistics, and
// gradchecks of the layers built from ops (LayerNorm, Embedding, RNNCell, LSTMCell) in float64.
#include <cmath>

#include <nn/nn.hpp>
#include "helpers.hpp"

using namespace tapegrad;
namespace nn = tapegrad::nn;

namespace {
// Overwrites a float64 parameter's values in place.
void set_values(const Tensor& t, const std::vector<double>& v) {
  REQUIRE(v.size() == t.numel());
  std::copy(v.begin(), v.end(), t.data_ptr<double>());
  t.bump_version();
}

// A model with nesting: own parameter, a submodule, and a Sequential.
struct Net : nn::Module {
  Tensor scale;
  std::shared_ptr<nn::Linear> head;
  std::shared_ptr<nn::Sequential> layers;
  Net() {
    scale = register_parameter("scale", ones(Shape{1}));
    layers = register_module("layers", std::make_shared<nn::Sequential>(std::initializer_list<std::shared_ptr<nn::Module>>{
                                           std::make_shared<nn::Linear>(4, 8), std::make_shared<nn::ReLU>(),
                                           std::make_shared<nn::Dropout>(0.5), std::make_shared<nn::Linear>(8, 3)}));
    head = register_module("head", std::make_shared<nn::Linear>(3, 2, /*bias=*/false));
  }
  Tensor forward(const Tensor& x) override { return head->forward(layers->forward(x)) * scale; }
};
}  // namespace

TEST_CASE("nn: registration gives dotted paths in registration order, depth first") {
  Net net;
  auto named = net.named_parameters();
  std::vector<std::string> names;
  for (auto& [n, p] : named) names.push_back(n);
  CHECK(names == std::vector<std::string>{"scale", "layers.0.W", "layers.0.b", "layers.3.W", "layers.3.b", "head.W"});
  CHECK(net.parameters().size() == 6);
  CHECK(net.num_parameters() == 1 + 4 * 8 + 8 + 8 * 3 + 3 + 3 * 2);
  for (auto& p : net.parameters()) CHECK(p.requires_grad());
  // The registered tensor is the member: same storage.
  CHECK(named[1].second.impl() == std::static_pointer_cast<nn::Linear>((*net.layers)[0])->W.impl());
  CHECK(named[1].second.shape() == Shape{4, 8});  // W is [in, out]
  CHECK(net.str().find("(head): Linear(in=3, out=2, bias=0)") != std::string::npos);
}

TEST_CASE("nn: duplicate or dotted names are errors") {
  nn::Module m;
  m.register_parameter("w", zeros(Shape{2}));
  CHECK_THROWS_WITH_AS(m.register_parameter("w", zeros(Shape{2})), doctest::Contains("already registered"), Error);
  CHECK_THROWS_WITH_AS(m.register_module("w", std::make_shared<nn::ReLU>()), doctest::Contains("'w'"), Error);
  CHECK_THROWS_WITH_AS(m.register_parameter("a.b", zeros(Shape{2})), doctest::Contains("'.'"), Error);
  CHECK_THROWS_AS(m.forward(zeros(Shape{2})), Error);
}

TEST_CASE("nn: train/eval reach every descendant; zero_grad clears all gradients") {
  Net net;
  CHECK(net.is_training());
  net.eval();
  CHECK_FALSE(net.is_training());
  CHECK_FALSE((*net.layers)[2]->is_training());
  CHECK_FALSE(net.head->is_training());
  net.train();
  CHECK((*net.layers)[2]->is_training());

  Tensor x = randn(Shape{5, 4});
  sum(net(x)).backward();
  for (auto& p : net.parameters()) CHECK(p.grad().defined());
  net.zero_grad();
  for (auto& p : net.parameters()) CHECK_FALSE(p.grad().defined());
}

TEST_CASE("nn: Linear computes x·W + b and has PyTorch's default init range") {
  Generator gen(7);
  nn::Linear lin(100, 50, true, nn::Options(kFloat32).with_gen(&gen));
  double k = 1.0 / std::sqrt(100.0);
  double lo = 1, hi = -1;
  for (double v : lin.W.to_vector()) lo = std::min(lo, v), hi = std::max(hi, v);
  CHECK(lo >= -k);
  CHECK(hi <= k);
  CHECK(lo < -0.9 * k);  // the range is actually used
  CHECK(hi > 0.9 * k);
  for (double v : lin.b.to_vector()) CHECK(std::fabs(v) <= k);

  nn::Linear small(2, 1, true, kFloat64);
  set_values(small.W, {2.0, -1.0});
  set_values(small.b, {0.5});
  Tensor y = small(tensor({{1, 2}, {3, 4}}, kFloat64));
  check_values(y, {1 * 2 - 2 + 0.5, 3 * 2 - 4 + 0.5});
  CHECK_THROWS_WITH_AS(small(tensor({{1, 2, 3}}, kFloat64)), doctest::Contains("linear"), Error);
}

TEST_CASE("nn: activations match their functions") {
  Tensor x = tensor({-2, -0.5, 0.5, 2}, kFloat64);
  std::vector<double> xs = x.to_vector();
  std::vector<double> r, t, s, g;
  for (double v : xs) {
    r.push_back(v > 0 ? v : 0);
    t.push_back(std::tanh(v));
    s.push_back(1 / (1 + std::exp(-v)));
    g.push_back(0.5 * v * (1 + std::erf(v / std::sqrt(2.0))));
  }
  check_values(nn::ReLU()(x), r);
  check_values(nn::Tanh()(x), t);
  check_values(nn::Sigmoid()(x), s);
  check_values(nn::GELU()(x), g);
}

TEST_CASE("nn: Dropout zeroes about p of the elements in train, scales survivors by 1/(1-p), is identity in eval") {
  Generator gen(123);
  const double p = 0.3;
  nn::Dropout drop(p, &gen);
  Tensor x = ones(Shape{200, 100}, requires_grad());
  Tensor y = drop(x);
  size_t zeros_n = 0;
  bool scaled = true;
  for (double v : y.to_vector()) {
    if (v == 0) ++zeros_n;
    else scaled = scaled && std::fabs(v - 1 / (1 - p)) < 1e-6;
  }
  CHECK(scaled);
  double frac = double(zeros_n) / 20000.0;
  CHECK(frac == doctest::Approx(p).epsilon(0.1));  // 3σ ≈ 0.01 here; 10% of p = 0.03
  // The gradient is the mask.
  sum(y).backward();
  std::vector<double> yv = y.to_vector(), gv = x.grad().to_vector();
  for (size_t i = 0; i < yv.size(); ++i) REQUIRE(gv[i] == doctest::Approx(yv[i]));

  drop.eval();
  Tensor z = drop(x);
  CHECK(z.impl() == x.impl());
  nn::Dropout all(1.0, &gen);
  for (double v : all(x).to_vector()) CHECK(v == 0);
  CHECK_THROWS_AS(nn::Dropout(1.5), Error);
}

TEST_CASE("nn: Embedding looks up rows, for any index shape") {
  nn::Embedding emb(5, 3, kFloat64);
  std::vector<double> w = emb.weight.to_vector();
  Tensor rows = emb(from_indices({4, 0, 4}, Shape{3}));
  CHECK(rows.shape() == Shape{3, 3});
  check_values(rows, {w[12], w[13], w[14], w[0], w[1], w[2], w[12], w[13], w[14]});
  Tensor grid = emb(from_indices({1, 2, 3, 4}, Shape{2, 2}));
  CHECK(grid.shape() == Shape{2, 2, 3});
  CHECK(grid.to_vector()[3 * 3] == doctest::Approx(w[4 * 3]));
  CHECK_THROWS_AS(emb(tensor({1.0})), Error);
}

TEST_CASE("nn: gradcheck Embedding w.r.t. its weight (repeated indices accumulate)") {
  nn::Embedding emb(4, 3, kFloat64);
  Tensor idx = from_indices({2, 0, 2, 3}, Shape{2, 2});
  Tensor c = leaf64({2, 2, 3}, 5);  // a fixed weighting so every entry matters
  c.requires_grad_(false);
  CHECK_GRADCHECK([&](const std::vector<Tensor>&) { return sum(emb(idx) * c); }, std::vector<Tensor>{emb.weight});
}

TEST_CASE("nn: LayerNorm normalises the last dim; gradcheck w.r.t. input, weight and bias") {
  nn::LayerNorm ln(4, kFloat64);
  Tensor x = tensor({{1, 2, 3, 4}, {-1, 0, 0, 5}}, kFloat64);
  Tensor y = ln(x);
  std::vector<double> xv = x.to_vector(), yv = y.to_vector();
  for (int r = 0; r < 2; ++r) {
    double mu = 0, var = 0;
    for (int j = 0; j < 4; ++j) mu += xv[r * 4 + j] / 4;
    for (int j = 0; j < 4; ++j) var += (xv[r * 4 + j] - mu) * (xv[r * 4 + j] - mu) / 4;
    for (int j = 0; j < 4; ++j) CHECK(yv[r * 4 + j] == doctest::Approx((xv[r * 4 + j] - mu) / std::sqrt(var + 1e-5)));
  }
  // Non-trivial affine parameters, then the gradcheck of all three.
  set_values(ln.weight, {0.5, -1.0, 2.0, 1.5});
  set_values(ln.bias, {0.1, 0.2, -0.3, 0.0});
  Tensor xin = leaf64({3, 4}, 11, -2, 2);
  Tensor c = leaf64({3, 4}, 12);
  c.requires_grad_(false);
  CHECK_GRADCHECK([&](const std::vector<Tensor>& in) { return sum(ln(in[0]) * c); },
                  (std::vector<Tensor>{xin, ln.weight, ln.bias}));
  CHECK_THROWS_WITH_AS(ln(zeros(Shape{2, 3}, kFloat64)), doctest::Contains("LayerNorm"), Error);
}

TEST_CASE("nn: RNNCell value by hand and gradcheck w.r.t. input, state and every parameter") {
  nn::RNNCell cell(3, 2, kFloat64);
  Tensor x = leaf64({4, 3}, 21), h = leaf64({4, 2}, 22);
  // By hand: tanh(x·W_ih + b_ih + h·W_hh + b_hh) for element [1,0].
  auto X = x.to_vector(), Hv = h.to_vector(), Wi = cell.W_ih.to_vector(), Wh = cell.W_hh.to_vector();
  double pre = cell.b_ih.to_vector()[0] + cell.b_hh.to_vector()[0];
  for (int k = 0; k < 3; ++k) pre += X[1 * 3 + k] * Wi[k * 2 + 0];
  for (int k = 0; k < 2; ++k) pre += Hv[1 * 2 + k] * Wh[k * 2 + 0];
  CHECK(cell.forward(x, h).to_vector()[2] == doctest::Approx(std::tanh(pre)));
  CHECK_GRADCHECK([&](const std::vector<Tensor>& in) { return cell.forward(in[0], in[1]); },
                  (std::vector<Tensor>{x, h, cell.W_ih, cell.W_hh, cell.b_ih, cell.b_hh}));
  CHECK_THROWS_WITH_AS(cell.forward(x, zeros(Shape{4, 3}, kFloat64)), doctest::Contains("RNNCell"), Error);
}

TEST_CASE("nn: LSTMCell value by hand and gradcheck of h and c over two steps") {
  nn::LSTMCell cell(3, 2, kFloat64);
  Tensor x = leaf64({2, 3}, 31), h = leaf64({2, 2}, 32), c = leaf64({2, 2}, 33);
  // By hand for element [0,1]: gate pre-activations in the order i, f, g, o.
  auto X = x.to_vector(), Hv = h.to_vector(), C = c.to_vector(), Wi = cell.W_ih.to_vector(),
       Wh = cell.W_hh.to_vector(), bi = cell.b_ih.to_vector(), bh = cell.b_hh.to_vector();
  auto gate = [&](int q) {
    int col = q * 2 + 1;
    double s = bi[col] + bh[col];
    for (int k = 0; k < 3; ++k) s += X[k] * Wi[k * 8 + col];
    for (int k = 0; k < 2; ++k) s += Hv[k] * Wh[k * 8 + col];
    return s;
  };
  auto sig = [](double v) { return 1 / (1 + std::exp(-v)); };
  double c1 = sig(gate(1)) * C[1] + sig(gate(0)) * std::tanh(gate(2));
  double h1 = sig(gate(3)) * std::tanh(c1);
  auto out = cell.forward(x, {h, c});
  CHECK(out.c.to_vector()[1] == doctest::Approx(c1));
  CHECK(out.h.to_vector()[1] == doctest::Approx(h1));
  CHECK(cell.zero_state(5).h.shape() == Shape{5, 2});

  Tensor x2 = leaf64({2, 3}, 34);
  auto two_steps = [&](const std::vector<Tensor>& in) {
    auto s1 = cell.forward(in[0], {in[1], in[2]});
    auto s2 = cell.forward(in[3], s1);
    return std::vector<Tensor>{s2.h, s2.c};
  };
  auto res = gradcheck(tg::MultiTensorFn(two_steps),
                       std::vector<Tensor>{x, h, c, x2, cell.W_ih, cell.W_hh, cell.b_ih, cell.b_hh});
  INFO(res.report);
  CHECK(res.ok);
}

TEST_CASE("nn: MLP builder names its layers and trains a tiny regression") {
  Generator gen(3);
  nn::MLP mlp({2, 16, 1}, nn::Activation::Tanh, nn::Options(kFloat64).with_gen(&gen));
  std::vector<std::string> names;
  for (auto& [n, p] : mlp.named_parameters()) names.push_back(n);
  CHECK(names == std::vector<std::string>{"layers.0.W", "layers.0.b", "layers.2.W", "layers.2.b"});
  CHECK(mlp.layers->size() == 3);
  // y = x0·x1 on a few points; plain gradient descent must reduce the loss a lot.
  Tensor X = leaf64({32, 2}, 41);
  X.requires_grad_(false);
  auto xv = X.to_vector();
  std::vector<double> yv;
  for (size_t i = 0; i < 32; ++i) yv.push_back(xv[2 * i] * xv[2 * i + 1]);
  Tensor Y = from_vector(yv, Shape{32, 1}, kFloat64);
  auto loss_now = [&] { Tensor d = mlp(X) - Y; return mean(d * d); };
  double first = loss_now().item();
  for (int it = 0; it < 300; ++it) {
    mlp.zero_grad();
    loss_now().backward();
    NoGradGuard ng;
    for (auto& p : mlp.parameters()) {
      auto w = p.mutable_value<double>();
      w -= 0.5 * p.grad().value<double>();
    }
  }
  CHECK(loss_now().item() < 0.2 * first);
}

// The README's snippets, compiled and run, so the README stays true.
#include "helpers.hpp"

using namespace tapegrad;

TEST_CASE("README: using it") {
  manual_seed(0);
  Tensor x = tensor({{1, 2, 3}, {4, 5, 6}});  // [2,3] float32
  Tensor W = randn({3, 2}, requires_grad());
  Tensor b = zeros({2}, requires_grad());
  Tensor loss = mean(tanh(linear(x, W, b)));  // y = x·W + b, fused
  loss.backward();                            // seeds 1, sweeps the tape backwards
  CHECK(W.grad().shape() == Shape{3, 2});     // dW = xᵀ·dout
  CHECK(b.grad().shape() == Shape{2});
}

TEST_CASE("README: gradients of gradients") {
  Tensor x = tensor({2.0}, dtype(kFloat64).requires_grad());
  Tensor y = x * x * x;
  Tensor dy = grad({y}, {x}, {}, /*retain_graph=*/false, /*create_graph=*/true)[0];  // 3x² = 12
  Tensor d2y = grad({dy}, {x})[0];                                                    // 6x  = 12
  CHECK(dy.item() == doctest::Approx(12));
  CHECK(d2y.item() == doctest::Approx(12));
}

struct ReadmeAffine : Function<ReadmeAffine> {
  static constexpr const char* name = "affine";
  static Tensor forward(AutogradContext& ctx, const Tensor& x, const Tensor& W, const Tensor& b) {
    ctx.save_for_backward({x, W});
    return matmul(x, W) + b;
  }
  static std::vector<Tensor> backward(AutogradContext& ctx, const Tensor& dout) {
    const Tensor &x = ctx.saved()[0], &W = ctx.saved()[1];
    return {mm(dout, W, false, true),  // dx = dout·Wᵀ
            mm(x, dout, true, false),  // dW = xᵀ·dout
            sum(dout, 0)};             // db = Σ_batch dout
  }
};

TEST_CASE("README: custom function, hooks, explain") {
  Tensor x2 = leaf64({4, 3}, 1), W = leaf64({3, 2}, 2), b = leaf64({2}, 3);
  Tensor out = ReadmeAffine::apply(x2, W, b);
  CHECK_GRADCHECK([](auto& t) { return ReadmeAffine::apply(t[0], t[1], t[2]); }, (std::vector<Tensor>{x2, W, b}));
  Tensor hidden = tanh(out);
  HookHandle h = register_hook(hidden, [](const Tensor& g) { return g * 0.5; });
  ExplainGuard explain;
  Tensor loss = sum(hidden);
  loss.backward();
  CHECK(explain.text().find("tanh: dx = dout·(1 - y²)") != std::string::npos);
  CHECK(explain.dot().find("affine") != std::string::npos);
  h.remove();
}

TEST_CASE("README: models and training") {
  manual_seed(1);
  auto model = std::make_shared<nn::Sequential>();
  model->push_back(std::make_shared<nn::Linear>(64, 128));  // W is [in, out], as in the math
  model->push_back(std::make_shared<nn::ReLU>());
  model->push_back(std::make_shared<nn::Linear>(128, 10));
  optim::Adam opt(model->parameters(), 1e-3);
  Tensor x = randn({16, 64});
  Tensor labels = randint(0, 10, {16});
  double first = 0, last = 0;
  for (int step = 0; step < 20; ++step) {
    opt.zero_grad();
    Tensor loss = cross_entropy(model->forward(x), labels);  // labels: int64 tensor
    loss.backward();
    opt.step();  // runs without recording
    (step == 0 ? first : last) = loss.item();
  }
  CHECK(last < first);
  std::string path = "readme_model.npz";
  nn::save(*model, path);  // NumPy-readable, named by path
  nn::load(*model, path);  // all-or-nothing: checks names, shapes
  std::remove(path.c_str());
}

TEST_CASE("README: SGD in backward") {
  manual_seed(2);
  auto model = std::make_shared<nn::Sequential>();
  model->push_back(std::make_shared<nn::Linear>(64, 32));
  model->push_back(std::make_shared<nn::ReLU>());
  model->push_back(std::make_shared<nn::Linear>(32, 10));
  optim::SGD opt(model->parameters(), 0.01, {.weight_decay = 1e-4, .in_backward = true});
  Tensor x = randn({16, 64});
  Tensor labels = randint(0, 10, {16});
  double first = 0, last = 0;
  for (int step = 0; step < 20; ++step) {
    Tensor loss = cross_entropy(model->forward(x), labels);
    loss.backward();  // updates the parameters
    opt.step();       // only counts steps
    (step == 0 ? first : last) = loss.item();
  }
  CHECK(last < first);
  CHECK(opt.steps() == 20);
  for (const Tensor& p : model->parameters()) CHECK_FALSE(p.grad().defined());
}

TEST_CASE("README: a batch across threads") {
  manual_seed(3);
  const Tensor x = randn({24, 16}), labels = randint(0, 4, {24});
  const Tensor W0 = randn({16, 4}) * 0.1;
  std::vector<double> losses[2];
  const int before = get_num_threads();
  for (int threads : {1, 2}) {
    set_num_threads(threads);
    Tensor W = clone(W0).requires_grad_(true), b = zeros({4}).requires_grad_(true);
    optim::SGD opt({W, b}, 0.1, {.in_backward = true});
    for (int step = 0; step < 10; ++step) {
      const int64_t n = x.shape()[0];
      Tensor loss = backward_sharded({W, b}, n, [&](const std::vector<Tensor>& p, int64_t begin, int64_t end) {
        Tensor logits = linear(narrow(x, 0, begin, end - begin), p[0], p[1]);  // p: W and b again
        return cross_entropy(logits, narrow(labels, 0, begin, end - begin), Reduction::Sum) / double(n);
      });  // the loss's value; W and b already stepped
      losses[threads - 1].push_back(loss.item());
    }
  }
  set_num_threads(before);
  CHECK(losses[0].back() < losses[0].front());
  for (size_t i = 0; i < losses[0].size(); ++i) CHECK(losses[1][i] == doctest::Approx(losses[0][i]).epsilon(1e-5));
}

// softmax, log_softmax and losses: values by hand, stability at ±1000, gradcheck for every dim
// and reduction, second order, float32, errors naming the op and the shapes.
#include "helpers.hpp"

using namespace tapegrad;

namespace {
using V = std::vector<Tensor>;
constexpr Reduction kAll[] = {Reduction::Mean, Reduction::Sum, Reduction::None};

Tensor f64(std::initializer_list<std::initializer_list<double>> v) { return tensor(v, dtype(kFloat64).requires_grad()); }

void check_all_finite(const Tensor& t) {
  for (double v : t.to_vector()) CHECK(std::isfinite(v));
}
}  // namespace

TEST_CASE("softmax and log_softmax values by hand") {
  // softmax([1,2,3]) = e^k / (e + e² + e³)
  double z = std::exp(1.0) + std::exp(2.0) + std::exp(3.0);
  check_values(softmax(tensor({1.0, 2.0, 3.0})), {std::exp(1.0) / z, std::exp(2.0) / z, std::exp(3.0) / z});
  check_values(softmax(tensor({1.0, 2.0, 3.0})), {0.09003057317038046, 0.24472847105479767, 0.6652409557748219});
  check_values(log_softmax(tensor({1.0, 2.0, 3.0})), {1 - std::log(z), 2 - std::log(z), 3 - std::log(z)});
  // along dim 0 of a [2,2]: columns are normalised
  check_values(softmax(tensor({{0.0, 1.0}, {0.0, 3.0}}), 0), {0.5, 1 / (1 + std::exp(2.0)), 0.5, 1 / (1 + std::exp(-2.0))});
  // a middle dim of [2,3,4]: every lane sums to 1, log_softmax = log(softmax)
  Tensor x = leaf64({2, 3, 4}, 5, -3.0, 3.0);
  for (int64_t dim : {0, 1, 2, -1, -2}) {
    INFO("dim " << dim);
    Tensor s = softmax(x, dim);
    check_values(sum(s, dim), std::vector<double>(x.numel() / x.shape()[normalize_dim("t", dim, 3)], 1.0));
    check_values(log_softmax(x, dim), log(s).to_vector(), 1e-9);
  }
}

TEST_CASE("softmax family is finite and correct at logits of ±1000") {
  for (Dtype dt : {kFloat64, kFloat32}) {
    INFO("dtype " << dt);
    Tensor x = tensor({{1000.0, 0.0, -1000.0}, {-1000.0, -1000.0, -1000.0}}, dtype(dt).requires_grad());
    Tensor ls = log_softmax(x, 1);
    check_values(ls, {0, -1000, -2000, -std::log(3.0), -std::log(3.0), -std::log(3.0)});
    check_values(softmax(x, 1), {1, 0, 0, 1.0 / 3, 1.0 / 3, 1.0 / 3});
    check_values(log_softmax(x, 0), {0, 0, -std::log(2.0), -2000, -1000, -std::log(2.0)});
    Tensor labels = from_indices({1, 2}, {2});
    Tensor ce = cross_entropy(x, labels, Reduction::Sum);  // 1000 + ln 3
    CHECK(ce.item() == doctest::Approx(1000 + std::log(3.0)));
    ce.backward();
    check_all_finite(x.grad());
    check_values(x.grad(), {1, -1, 0, 1.0 / 3, 1.0 / 3, -2.0 / 3}, 1e-5);  // softmax - onehot
    Tensor y = tensor({1000.0, -1000.0}, dtype(dt).requires_grad());
    sum(softmax(y) * tensor({1.0, 2.0}, dt)).backward();
    check_all_finite(y.grad());
  }
}

TEST_CASE("cross_entropy and nll_loss of a tiny batch by hand") {
  // logits [[1,2,3],[1,1,1]], labels [2,0]
  //   l0 = -ln softmax([1,2,3])[2] = ln(e + e² + e³) - 3 = 0.40760596444438
  //   l1 = ln 3 = 1.09861228866811
  Tensor logits = f64({{1, 2, 3}, {1, 1, 1}});
  Tensor labels = from_indices({2, 0}, {2});
  double l0 = std::log(std::exp(1.0) + std::exp(2.0) + std::exp(3.0)) - 3, l1 = std::log(3.0);
  CHECK(l0 == doctest::Approx(0.40760596444438));
  check_values(cross_entropy(logits, labels, Reduction::None), {l0, l1});
  CHECK(cross_entropy(logits, labels, Reduction::Sum).item() == doctest::Approx(l0 + l1));
  Tensor loss = cross_entropy(logits, labels);
  CHECK(loss.shape() == Shape{});
  CHECK(loss.item() == doctest::Approx((l0 + l1) / 2));
  loss.backward();
  // d mean / d logits = (softmax - onehot) / B
  std::vector<double> s0 = softmax(tensor({1.0, 2.0, 3.0})).to_vector();
  check_values(logits.grad(), {s0[0] / 2, s0[1] / 2, (s0[2] - 1) / 2, 1.0 / 6 - 0.5, 1.0 / 6, 1.0 / 6}, 1e-5);

  // nll_loss picks -log_probs[b, y_b]
  Tensor lp = f64({{-0.5, -1.5}, {-2.0, -0.1}, {-0.3, -0.7}});
  Tensor y = from_indices({1, 1, 0}, {3});
  check_values(nll_loss(lp, y, Reduction::None), {1.5, 0.1, 0.3});
  CHECK(nll_loss(lp, y, Reduction::Sum).item() == doctest::Approx(1.9));
  Tensor m = nll_loss(lp, y);
  CHECK(m.item() == doctest::Approx(1.9 / 3));
  m.backward();
  check_values(lp.grad(), {0, -1.0 / 3, 0, -1.0 / 3, -1.0 / 3, 0});
  lp.zero_grad();
  nll_loss(lp, y, Reduction::None).backward(tensor({1.0, 2.0, 3.0}, kFloat64));
  check_values(lp.grad(), {0, -1, 0, -2, -3, 0});
}

TEST_CASE("softmax, log_softmax, cross_entropy, nll_loss gradcheck") {
  Tensor x = leaf64({2, 3, 4}, 6, -2.0, 2.0);
  for (int64_t dim : {0, 1, 2, -1}) {
    INFO("dim " << dim);
    CHECK_GRADCHECK(([dim](const V& in) { return softmax(in[0], dim); }), V{x});
    CHECK_GRADCHECK(([dim](const V& in) { return log_softmax(in[0], dim); }), V{x});
  }
  Tensor logits = leaf64({4, 5}, 7, -3.0, 3.0);
  Tensor labels = from_indices({4, 0, 2, 2}, {4});
  for (Reduction r : kAll) {
    INFO("reduction " << static_cast<int>(r));
    CHECK_GRADCHECK(([&labels, r](const V& in) { return cross_entropy(in[0], labels, r); }), V{logits});
    CHECK_GRADCHECK(([&labels, r](const V& in) { return nll_loss(in[0], labels, r); }), V{logits});
    CHECK(gradgradcheck([&labels, r](const V& in) { return cross_entropy(in[0], labels, r); }, V{logits}).ok);
    CHECK(gradgradcheck([&labels, r](const V& in) { return nll_loss(in[0] * in[0], labels, r); }, V{logits}).ok);
  }
  CHECK(gradgradcheck([](const V& in) { return softmax(in[0], 1); }, V{x}).ok);
  CHECK(gradgradcheck([](const V& in) { return log_softmax(in[0], 0); }, V{x}).ok);
}

TEST_CASE("mse_loss: values, gradients, gradcheck for every reduction") {
  Tensor in = tensor({1.0, 2.0, 3.0}, dtype(kFloat64).requires_grad());
  Tensor tg_ = tensor({1.0, 0.0, 0.0}, dtype(kFloat64).requires_grad());
  check_values(mse_loss(in, tg_, Reduction::None), {0, 4, 9});
  CHECK(mse_loss(in, tg_, Reduction::Sum).item() == doctest::Approx(13));
  Tensor l = mse_loss(in, tg_);
  CHECK(l.item() == doctest::Approx(13.0 / 3));
  l.backward();
  check_values(in.grad(), {0, 4.0 / 3, 2});  // 2(x - t)/n
  check_values(tg_.grad(), {0, -4.0 / 3, -2});

  Tensor a = leaf64({2, 3}, 8), b = leaf64({2, 3}, 9);
  for (Reduction r : kAll) {
    INFO("reduction " << static_cast<int>(r));
    CHECK_GRADCHECK(([r](const V& v) { return mse_loss(v[0], v[1], r); }), (V{a, b}));
    CHECK_GRADCHECK(([r](const V& v) { return mse_loss(v[0], v[1], r); }), (V{a, b.detach()}));
    CHECK(gradgradcheck([r](const V& v) { return mse_loss(v[0], v[1], r); }, V{a, b}).ok);
  }
}

TEST_CASE("binary_cross_entropy_with_logits: values, stability, gradcheck") {
  // l(x, t) = max(x,0) - x·t + ln(1 + e^-|x|)
  Tensor x = tensor({0.0, 2.0, -1.0}, dtype(kFloat64).requires_grad());
  Tensor t = tensor({1.0, 0.0, 0.25}, kFloat64);
  auto ref = [](double x, double t) { return -(t * std::log(1 / (1 + std::exp(-x))) + (1 - t) * std::log(1 - 1 / (1 + std::exp(-x)))); };
  check_values(binary_cross_entropy_with_logits(x, t, Reduction::None), {std::log(2.0), ref(2, 0), ref(-1, 0.25)});
  CHECK(ref(2, 0) == doctest::Approx(2.1269280110429727));
  Tensor l = binary_cross_entropy_with_logits(x, t);
  CHECK(l.item() == doctest::Approx((std::log(2.0) + ref(2, 0) + ref(-1, 0.25)) / 3));
  l.backward();
  auto sig = [](double v) { return 1 / (1 + std::exp(-v)); };
  check_values(x.grad(), {(0.5 - 1) / 3, sig(2) / 3, (sig(-1) - 0.25) / 3});  // (σ(x) - t)/n

  Tensor big = tensor({1000.0, -1000.0, 1000.0}, requires_grad());
  Tensor bl = binary_cross_entropy_with_logits(big, tensor({1.0, 0.0, 0.0}), Reduction::None);
  check_values(bl, {0, 0, 1000});
  sum(bl).backward();
  check_values(big.grad(), {0, 0, 1});

  Tensor a = leaf64({2, 3}, 10, -3.0, 3.0), b = leaf64({2, 3}, 11, 0.0, 1.0);
  for (Reduction r : kAll) {
    INFO("reduction " << static_cast<int>(r));
    CHECK_GRADCHECK(([r](const V& v) { return binary_cross_entropy_with_logits(v[0], v[1], r); }), (V{a, b}));
    CHECK(gradgradcheck([r](const V& v) { return binary_cross_entropy_with_logits(v[0], v[1], r); }, V{a, b}).ok);
  }
}

TEST_CASE("losses in float32 agree with float64") {
  Tensor l64 = leaf64({3, 4}, 12, -2.0, 2.0), t64 = leaf64({3, 4}, 13, 0.0, 1.0);
  Tensor l32 = from_vector(l64.to_vector(), {3, 4}, kFloat32), t32 = from_vector(t64.to_vector(), {3, 4}, kFloat32);
  Tensor y = from_indices({3, 0, 1}, {3});
  CHECK(cross_entropy(l32, y).dtype() == kFloat32);
  CHECK(cross_entropy(l32, y).item() == doctest::Approx(cross_entropy(l64, y).item()).epsilon(1e-5));
  CHECK(mse_loss(l32, t32).item() == doctest::Approx(mse_loss(l64, t64).item()).epsilon(1e-5));
  CHECK(binary_cross_entropy_with_logits(l32, t32).item() ==
        doctest::Approx(binary_cross_entropy_with_logits(l64, t64).item()).epsilon(1e-5));
  check_values(softmax(l32, 0), softmax(l64, 0).to_vector(), 1e-5);
}

TEST_CASE("loss errors name the op and the shapes") {
  Tensor logits = zeros({3, 4});
  CHECK_THROWS_WITH_AS(nll_loss(logits, from_indices({0, 1, 4}, {3})),
                       doctest::Contains("nll_loss: label 4 at position 2 is out of range [0,4) for scores [3,4]"), Error);
  CHECK_THROWS_WITH_AS(nll_loss(logits, from_indices({0, -1, 1}, {3})), doctest::Contains("nll_loss: label -1"), Error);
  CHECK_THROWS_WITH_AS(cross_entropy(logits, from_indices({0, 1, 4}, {3})), doctest::Contains("cross_entropy: label 4"), Error);
  CHECK_THROWS_WITH_AS(cross_entropy(logits, zeros({3})),
                       doctest::Contains("cross_entropy: labels must be int64 class indices, got float32 [3]"), Error);
  CHECK_THROWS_WITH_AS(nll_loss(logits, from_indices({0, 1}, {2})),
                       doctest::Contains("nll_loss: labels of shape [2] do not match scores [3,4] (expected [3])"), Error);
  CHECK_THROWS_WITH_AS(nll_loss(logits, from_indices({0, 1, 2}, {3, 1})), doctest::Contains("nll_loss: labels of shape [3,1]"), Error);
  CHECK_THROWS_WITH_AS(cross_entropy(zeros({2, 3, 4}), from_indices({0, 1}, {2})),
                       doctest::Contains("cross_entropy: expected scores of shape [B,C], got [2,3,4]"), Error);
  CHECK_THROWS_WITH_AS(cross_entropy(logits, Tensor()), doctest::Contains("cross_entropy: undefined labels"), Error);
  CHECK_THROWS_WITH_AS(cross_entropy(zeros({0, 4}), from_indices({}, {0})), doctest::Contains("cross_entropy: the mean over an empty batch [0,4]"), Error);
  CHECK(cross_entropy(zeros({0, 4}), from_indices({}, {0}), Reduction::Sum).item() == 0);
  CHECK_THROWS_WITH_AS(mse_loss(zeros({2, 3}), zeros({3})),
                       doctest::Contains("mse_loss: input [2,3] and target [3] must have the same shape"), Error);
  CHECK_THROWS_WITH_AS(mse_loss(zeros({2}), zeros({2}, kFloat64)), doctest::Contains("mse_loss: dtypes differ"), Error);
  CHECK_THROWS_WITH_AS(binary_cross_entropy_with_logits(zeros({4}), zeros({4, 1})),
                       doctest::Contains("binary_cross_entropy_with_logits: logits [4] and targets [4,1] must have the same shape"), Error);
  CHECK_THROWS_WITH_AS(mse_loss(zeros({0}), zeros({0})), doctest::Contains("mse_loss: the mean over an empty input [0]"), Error);
  CHECK_THROWS_WITH_AS(softmax(logits, 2), doctest::Contains("softmax: dim 2 is out of range"), Error);
  CHECK_THROWS_WITH_AS(log_softmax(logits, -3), doctest::Contains("log_softmax: dim -3 is out of range"), Error);
  CHECK_THROWS_WITH_AS(log_softmax(from_indices({1}, {1})), doctest::Contains("log_softmax: int64"), Error);
}

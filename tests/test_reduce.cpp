// Reductions: sum/mean over dims (keepdim, negative dims, several dims), max/min (the whole
// gradient to the first extreme), argmax/argmin, errors.
#include "helpers.hpp"

using namespace tapegrad;

namespace {
using V = std::vector<Tensor>;

// 0..23 as a [2,3,4] float64 tensor: x[i,j,k] = 12i + 4j + k
Tensor iota234() { return from_vector(arange(24).to_vector(), {2, 3, 4}, kFloat64); }
}  // namespace

TEST_CASE("sum and mean over several dims, keepdim, negative dims: values") {
  Tensor x = iota234();
  // over {0,2}: Σ_i Σ_k (12i + 4j + k) = 2·(4·4j + 6) + 4·12 = 32j + 60
  check_values(sum(x, {0, 2}), {60, 92, 124});
  CHECK(sum(x, {0, 2}).shape() == Shape{3});
  CHECK(sum(x, {0, 2}, true).shape() == Shape{1, 3, 1});
  check_values(sum(x, {-1, 0}), {60, 92, 124});
  check_values(mean(x, {0, 2}), {60.0 / 8, 92.0 / 8, 124.0 / 8});
  check_values(sum(x, -1), {6, 22, 38, 54, 70, 86});
  CHECK(sum(x, -1, true).shape() == Shape{2, 3, 1});
  check_values(mean(x, 1), {4, 5, 6, 7, 16, 17, 18, 19});
  CHECK(mean(x, 1, true).shape() == Shape{2, 1, 4});
  check_values(sum(x), {276});
  CHECK(sum(x).shape() == Shape{});
  check_values(mean(x), {11.5});
}

TEST_CASE("sum and mean gradcheck for every dim pattern") {
  Tensor x = leaf64({2, 3, 4}, 1);
  std::vector<std::vector<int64_t>> patterns = {{0}, {1}, {2}, {-1}, {-2}, {0, 2}, {2, 0}, {0, 1}, {1, 2}, {0, 1, 2}, {}};
  for (const auto& dims : patterns) {
    for (bool keep : {false, true}) {
      INFO("dims size " << dims.size() << " keepdim " << keep);
      CHECK_GRADCHECK(([dims, keep](const V& in) { return sum(in[0], dims, keep); }), V{x});
      CHECK_GRADCHECK(([dims, keep](const V& in) { return mean(in[0], dims, keep); }), V{x});
    }
  }
  CHECK_GRADCHECK(([](const V& in) { return mean(in[0]); }), V{x});
  CHECK(tg::gradgradcheck([](const V& in) { return mean(in[0], {0, 2}, true) * sum(in[0], 1, true); }, V{x}).ok);
}

TEST_CASE("max/min over all elements: values, gradient to one element, ties to the first") {
  Tensor x = tensor({{1.0, 5.0, -2.0}, {5.0, 0.0, -2.0}}, requires_grad());
  Tensor m = max(x);
  CHECK(m.shape() == Shape{});
  CHECK(m.item() == 5.0);
  m.backward();
  check_values(x.grad(), {0, 1, 0, 0, 0, 0});  // tie between [0,1] and [1,0]: the first wins
  x.zero_grad();
  min(x).backward();
  CHECK(min(x).item() == -2.0);
  check_values(x.grad(), {0, 0, 1, 0, 0, 0});

  Tensor s = scalar_tensor(3.0, dtype(kFloat64).requires_grad());
  max(s).backward();
  CHECK(s.grad().item() == 1.0);

  Tensor r = leaf64({3, 4}, 2);
  CHECK_GRADCHECK([](const V& in) { return max(in[0]); }, V{r});
  CHECK_GRADCHECK([](const V& in) { return min(in[0]); }, V{r});
}

TEST_CASE("max/min along a dim: values, shapes, keepdim, negative dims") {
  Tensor x = tensor({{3.0, 7.0, 7.0}, {9.0, -1.0, 4.0}});
  check_values(max(x, 1), {7, 9});
  check_values(max(x, -1), {7, 9});
  check_values(max(x, 0), {9, 7, 7});
  check_values(min(x, 1), {3, -1});
  check_values(min(x, 0), {3, -1, 4});
  CHECK(max(x, 1).shape() == Shape{2});
  CHECK(max(x, 1, true).shape() == Shape{2, 1});
  CHECK(min(x, 0, true).shape() == Shape{1, 3});
  CHECK(min(x, -2).shape() == Shape{3});

  // the gradient of a row max with a tie goes to the first column only
  Tensor g = tensor({{3.0, 7.0, 7.0}, {9.0, -1.0, 4.0}}, requires_grad());
  max(g, 1).backward(tensor({10.0, 20.0}));
  check_values(g.grad(), {0, 10, 0, 20, 0, 0});
  g.zero_grad();
  min(g, 0, true).backward(tensor({{1.0, 2.0, 3.0}}));
  check_values(g.grad(), {1, 0, 0, 0, 2, 3});

  Tensor x3 = leaf64({2, 3, 4}, 3);
  for (int64_t dim : {0, 1, 2, -1, -3}) {
    for (bool keep : {false, true}) {
      INFO("dim " << dim << " keepdim " << keep);
      CHECK_GRADCHECK(([dim, keep](const V& in) { return max(in[0], dim, keep); }), V{x3});
      CHECK_GRADCHECK(([dim, keep](const V& in) { return min(in[0], dim, keep); }), V{x3});
    }
  }
  // values agree with a reduction by hand on the middle dim
  std::vector<double> v = x3.to_vector(), want;
  for (size_t i = 0; i < 2; ++i)
    for (size_t k = 0; k < 4; ++k) {
      double m = v[i * 12 + k];
      for (size_t j = 1; j < 3; ++j) m = std::max(m, v[i * 12 + j * 4 + k]);
      want.push_back(m);
    }
  check_values(max(x3, 1), want);
}

TEST_CASE("max/min backwards are differentiable (second order)") {
  Tensor x = leaf64({3, 4}, 4);
  CHECK(tg::gradgradcheck([](const V& in) { return max(in[0], 1) * max(in[0], 1); }, V{x}).ok);
  CHECK(tg::gradgradcheck([](const V& in) { return min(in[0], 0, true) * sum(in[0], 0, true); }, V{x}).ok);
  CHECK(tg::gradgradcheck([](const V& in) { return max(in[0]) * max(in[0]); }, V{x}).ok);
  // d/dx of (dL/dx) where L = Σ max(x,1)²: 2 on each row's argmax diagonal entry
  Tensor y = tensor({{1.0, 4.0}, {3.0, 2.0}}, dtype(kFloat64).requires_grad());
  Tensor g = grad({sum(pow(max(y, 1), 2.0))}, {y}, {}, true, true)[0];
  check_values(g, {0, 8, 6, 0});
  Tensor h = grad({sum(g)}, {y})[0];
  check_values(h, {0, 2, 2, 0});
}

TEST_CASE("argmax/argmin: int64, first index on ties, keepdim, negative dims") {
  Tensor x = tensor({{3.0, 7.0, 7.0}, {9.0, -1.0, 9.0}});
  Tensor a = argmax(x, 1);
  CHECK(a.dtype() == kInt64);
  CHECK(a.shape() == Shape{2});
  CHECK(a.to_vector() == std::vector<double>{1, 0});
  CHECK(argmax(x, -1, true).shape() == Shape{2, 1});
  CHECK(argmax(x, 0).to_vector() == std::vector<double>{1, 0, 1});
  CHECK(argmin(x, 1).to_vector() == std::vector<double>{0, 1});
  CHECK(argmin(x, -2, true).to_vector() == std::vector<double>{0, 1, 0});
  CHECK(argmin(x, -2, true).shape() == Shape{1, 3});
  Tensor ties = zeros({4});
  CHECK(argmax(ties, 0).item() == 0);
  CHECK(argmin(ties, 0).item() == 0);
  CHECK_FALSE(argmax(tensor({1.0, 2.0}, requires_grad()), 0).requires_grad());
}

TEST_CASE("argmax along the middle and last dims of a 3-d tensor") {
  Tensor x3 = from_vector({0, 5, 2, 5, 1, 9, 9, 0}, {2, 2, 2});
  CHECK(argmax(x3, 1).to_vector() == std::vector<double>{1, 0, 1, 0});
  // Compared element by element on purpose: written as `== std::vector<double>{1, 1, 1, 0}` here,
  // GCC 12.2 -O3 (its SLP vectorizer) built the constant as four 1.0s (one vpbroadcastq) and the
  // check failed on correct values; -O2 or -fno-tree-slp-vectorize compiled it right.
  std::vector<double> last = argmax(x3, 2).to_vector();
  REQUIRE(last.size() == 4);
  CHECK(last[0] == 1);
  CHECK(last[1] == 1);
  CHECK(last[2] == 1);
  CHECK(last[3] == 0);
  CHECK(argmin(x3, 2).to_vector() == std::vector<double>{0, 0, 0, 1});
}

TEST_CASE("max propagates NaN; float32 works") {
  CHECK(std::isnan(max(tensor({1.0, NAN, 3.0})).item()));
  CHECK(argmax(tensor({1.0, NAN, 3.0}), 0).item() == 1);
  Tensor x = tensor({{1.5f, -2.0f}, {0.5f, 8.0f}}, requires_grad());
  Tensor m = max(x, 0);
  CHECK(m.dtype() == kFloat32);
  check_values(m, {1.5, 8.0});
  sum(m).backward();
  check_values(x.grad(), {1, 0, 0, 1});
}

TEST_CASE("reduction errors name the op and the shapes") {
  CHECK_THROWS_WITH_AS(max(zeros({0, 3})), doctest::Contains("max: cannot reduce the empty tensor [0,3]"), Error);
  CHECK_THROWS_WITH_AS(min(zeros({0})), doctest::Contains("min: cannot reduce the empty tensor [0]"), Error);
  CHECK_THROWS_WITH_AS(max(zeros({2, 0}), 1), doctest::Contains("max: dim 1 of [2,0] is empty"), Error);
  CHECK_THROWS_WITH_AS(argmin(zeros({0, 2}), 0), doctest::Contains("argmin: dim 0 of [0,2] is empty"), Error);
  CHECK(max(zeros({0, 3}), 1).shape() == Shape{0});  // empty lanes, nothing to reduce
  CHECK_THROWS_WITH_AS(max(zeros({2, 3}), 2), doctest::Contains("max: dim 2 is out of range"), Error);
  CHECK_THROWS_WITH_AS(argmax(zeros({2, 3}), -3), doctest::Contains("argmax: dim -3 is out of range"), Error);
  CHECK_THROWS_WITH_AS(min(zeros({2, 3}), 5, true), doctest::Contains("min: dim 5"), Error);
  CHECK_THROWS_WITH_AS(max(from_indices({1, 2}, {2})), doctest::Contains("max: int64"), Error);
  CHECK_THROWS_WITH_AS(argmax(from_indices({1, 2}, {2}), 0), doctest::Contains("argmax: int64"), Error);
  CHECK_THROWS_WITH_AS(sum(zeros({2, 3}), {0, 0}), doctest::Contains("sum: dim listed twice"), Error);
  CHECK_THROWS_WITH_AS(mean(zeros({2, 0}), 1), doctest::Contains("mean: reducing [2,0]"), Error);
}

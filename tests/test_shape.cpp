// Shape ops: views (reshape/view/flatten/squeeze/unsqueeze) and copies (transpose, permute,
// narrow, slice, select, cat, stack, index_select, clone): values, float64 gradcheck of each op
// and of its backward (gradients of gradients), hand-derived gradients, and errors.
#include <cstdint>
#include <functional>
#include <limits>

#include "helpers.hpp"

using namespace tapegrad;

namespace {

#define GRADCHECK(f, ...) CHECK_GRADCHECK(f, (std::vector<Tensor>{__VA_ARGS__}))

using Op = std::function<Tensor(const Tensor&)>;

// Gradcheck of op's backward as a function of the incoming gradient v: the backward must itself
// be differentiable (its ops recorded), so d(dx)/dv is compared with finite differences.
void check_backward_of(const Op& op, const Shape& x_shape, uint64_t seed) {
  Tensor x = leaf64(x_shape, seed);
  Tensor v = leaf64(op(x).shape(), seed + 1);
  auto f = [op](const std::vector<Tensor>& in) {
    EnableGradGuard with_grad;  // gradcheck's finite differences run under NoGradGuard
    Tensor y = op(in[0]);
    return grad({y}, {in[0]}, {in[1]}, /*retain_graph=*/false, /*create_graph=*/true)[0];
  };
  GRADCHECK(f, x, v);
}

// y[i] for a row-major index into shape s
double at(const Tensor& t, std::initializer_list<size_t> idx) {
  const Shape& s = t.shape();
  size_t flat = 0, k = 0;
  for (size_t i : idx) flat = flat * s[k++] + i;
  return t.to_vector()[flat];
}

Tensor range64(const Shape& s) { return reshape(arange(static_cast<double>(s.numel()), kFloat64), {s.begin(), s.end()}); }

}  // namespace

// ---- views ---------------------------------------------------------------------------------------

TEST_CASE("shape: reshape/view/flatten/squeeze/unsqueeze gradcheck, incl. -1 and negative dims") {
  Tensor x = leaf64({2, 3, 4}, 1);
  auto sq = [](const Tensor& t) { return t * t; };  // a nonlinearity after each view
  auto r1 = [&](const std::vector<Tensor>& v) { return sq(reshape(v[0], {4, -1})); };
  auto r2 = [&](const std::vector<Tensor>& v) { return sq(view(v[0], {-1})); };
  auto f1 = [&](const std::vector<Tensor>& v) { return sq(flatten(v[0])); };
  auto f2 = [&](const std::vector<Tensor>& v) { return sq(flatten(v[0], -2, -1)); };
  auto f3 = [&](const std::vector<Tensor>& v) { return sq(flatten(v[0], 0, 1)); };
  GRADCHECK(r1, x);
  GRADCHECK(r2, x);
  GRADCHECK(f1, x);
  GRADCHECK(f2, x);
  GRADCHECK(f3, x);
  CHECK(reshape(x, {4, -1}).shape() == Shape{4, 6});
  CHECK(flatten(x, -2, -1).shape() == Shape{2, 12});
  CHECK(flatten(x, 0, 1).shape() == Shape{6, 4});

  Tensor y = leaf64({2, 1, 3, 1}, 2);
  auto s1 = [&](const std::vector<Tensor>& v) { return sq(squeeze(v[0])); };
  auto s2 = [&](const std::vector<Tensor>& v) { return sq(squeeze(v[0], -1)); };
  auto s3 = [&](const std::vector<Tensor>& v) { return sq(squeeze(v[0], 1)); };
  auto u1 = [&](const std::vector<Tensor>& v) { return sq(unsqueeze(v[0], -1)); };
  auto u2 = [&](const std::vector<Tensor>& v) { return sq(unsqueeze(v[0], 0)); };
  GRADCHECK(s1, y);
  GRADCHECK(s2, y);
  GRADCHECK(s3, y);
  GRADCHECK(u1, y);
  GRADCHECK(u2, y);
  CHECK(squeeze(y).shape() == Shape{2, 3});
  CHECK(squeeze(y, -1).shape() == Shape{2, 1, 3});
  CHECK(squeeze(y, 0).shape() == Shape{2, 1, 3, 1});  // a dim of size 2 is left alone
  CHECK(unsqueeze(y, -1).shape() == Shape{2, 1, 3, 1, 1});
  CHECK(unsqueeze(x, 1).shape() == Shape{2, 1, 3, 4});
  check_backward_of([](const Tensor& t) { return reshape(t, {3, -1}); }, {2, 3, 2}, 3);
}

TEST_CASE("shape: reshape shares data with its source, both ways") {
  Tensor x = arange(6.0, kFloat64);
  Tensor y = reshape(x, {2, 3});
  Tensor z = flatten(unsqueeze(y, 0));
  x.data_ptr<double>()[4] = 40;
  CHECK(at(y, {1, 1}) == 40);
  CHECK(z.to_vector()[4] == 40);
  y.data_ptr<double>()[0] = -7;
  CHECK(x.to_vector()[0] == -7);
  uint32_t v = x.version();
  y.bump_version();  // the version counter lives on the data's owner
  CHECK(x.version() == v + 1);
}

// ---- transpose / permute ---------------------------------------------------------------------------

TEST_CASE("shape: transpose values, gradcheck with negative dims, backward of backward") {
  Tensor x = tensor({{1, 2, 3}, {4, 5, 6}});
  Tensor t = transpose(x, 0, 1);
  CHECK(t.shape() == Shape{3, 2});
  check_values(t, {1, 4, 2, 5, 3, 6});
  check_values(transpose(x, -1, -2), {1, 4, 2, 5, 3, 6});
  check_values(transpose(x, 1, 1), {1, 2, 3, 4, 5, 6});

  Tensor a = leaf64({2, 3, 4}, 4);
  Tensor t3 = transpose(a, 0, 2);
  CHECK(t3.shape() == Shape{4, 3, 2});
  for (size_t i = 0; i < 2; ++i)
    for (size_t j = 0; j < 3; ++j)
      for (size_t k = 0; k < 4; ++k) CHECK(at(t3, {k, j, i}) == at(a, {i, j, k}));
  auto f = [](const std::vector<Tensor>& v) { return transpose(v[0], 0, 2); };
  auto g = [](const std::vector<Tensor>& v) { return transpose(v[0], -1, -2) * v[1]; };
  GRADCHECK(f, a);
  GRADCHECK(g, a, leaf64({2, 4, 3}, 5));
  check_backward_of([](const Tensor& t) { return transpose(t, 1, -1); }, {2, 3, 4}, 6);
}

TEST_CASE("shape: permute values, inverse-permutation backward, gradcheck") {
  Tensor x = range64({2, 3, 4});
  Tensor p = permute(x, {1, 2, 0});
  CHECK(p.shape() == Shape{3, 4, 2});
  for (size_t i = 0; i < 2; ++i)
    for (size_t j = 0; j < 3; ++j)
      for (size_t k = 0; k < 4; ++k) CHECK(at(p, {j, k, i}) == at(x, {i, j, k}));
  CHECK(permute(x, {-1, 0, -2}).shape() == Shape{4, 2, 3});

  // backward: dx = permute(dy, inverse) — here dx[i,j,k] = dy[j,k,i]
  Tensor a = leaf64({2, 3, 4}, 7);
  Tensor dy = range64({3, 4, 2});
  permute(a, {1, 2, 0}).backward(dy);
  for (size_t i = 0; i < 2; ++i)
    for (size_t j = 0; j < 3; ++j)
      for (size_t k = 0; k < 4; ++k) CHECK(at(a.grad(), {i, j, k}) == at(dy, {j, k, i}));

  auto f = [](const std::vector<Tensor>& v) { return permute(v[0], {2, 0, 1}) * permute(v[0], {2, 0, 1}); };
  auto g = [](const std::vector<Tensor>& v) { return permute(v[0], {3, 1, 0, 2}); };
  GRADCHECK(f, leaf64({2, 3, 4}, 8));
  GRADCHECK(g, leaf64({2, 1, 3, 2}, 9));
  check_backward_of([](const Tensor& t) { return permute(t, {1, 2, 0}); }, {2, 3, 4}, 10);

  // float32 (4-byte elements) and 0-d tensors take the same path
  Tensor f32 = tensor({{1, 2}, {3, 4}});
  check_values(permute(f32, {1, 0}), {1, 3, 2, 4});
  CHECK(permute(scalar_tensor(5.0), {}).item() == 5.0);
}

// ---- narrow / slice / select ------------------------------------------------------------------------

TEST_CASE("shape: narrow values, negative dim and start, empty window, gradcheck") {
  Tensor x = range64({3, 4});
  check_values(narrow(x, 1, 1, 2), {1, 2, 5, 6, 9, 10});
  check_values(narrow(x, -2, -1, 1), {8, 9, 10, 11});  // start -1 = the last row
  CHECK(narrow(x, 0, 3, 0).shape() == Shape{0, 4});

  Tensor a = leaf64({3, 4}, 11);
  sum(narrow(a, 1, 1, 2)).backward();
  check_values(a.grad(), {0, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1, 0});

  auto f = [](const std::vector<Tensor>& v) { return narrow(v[0], -1, 1, 2) * narrow(v[0], -1, 2, 2); };
  auto g = [](const std::vector<Tensor>& v) { return narrow(v[0], 1, -2, 2); };
  auto e = [](const std::vector<Tensor>& v) { return sum(narrow(v[0], 0, 1, 0)) + sum(v[0]); };
  GRADCHECK(f, leaf64({2, 3, 4}, 12));
  GRADCHECK(g, leaf64({2, 3, 4}, 13));
  GRADCHECK(e, leaf64({2, 3}, 14));
  check_backward_of([](const Tensor& t) { return narrow(t, 1, 1, 2); }, {2, 4, 3}, 15);
}

TEST_CASE("shape: slice follows PyTorch semantics (negative and out-of-range start/end clamp)") {
  Tensor x = arange(7.0, kFloat64);  // 0..6
  const int64_t big = std::numeric_limits<int64_t>::max();
  check_values(slice(x, 0, 1, 6, 2), {1, 3, 5});
  check_values(slice(x, 0, 0, big, 3), {0, 3, 6});
  check_values(slice(x, 0, -3, big), {4, 5, 6});
  check_values(slice(x, 0, -100, 3), {0, 1, 2});
  check_values(slice(x, 0, 2, -2), {2, 3, 4});
  check_values(slice(x, -1, 1, 100, 4), {1, 5});
  CHECK(slice(x, 0, 5, 2).numel() == 0);
  CHECK(slice(x, 0, 10, 20).numel() == 0);
  CHECK(slice(x, 0, -1, -3).numel() == 0);
  CHECK(slice(x, 0, 6, 7, 5).to_vector() == std::vector<double>{6});
  check_values(slice(x, 0, std::numeric_limits<int64_t>::min(), big, big), {0});

  Tensor m = range64({3, 5});
  check_values(slice(m, 1, 0, 5, 2), {0, 2, 4, 5, 7, 9, 10, 12, 14});
  check_values(slice(m, 0, 1, big), {5, 6, 7, 8, 9, 10, 11, 12, 13, 14});

  Tensor a = leaf64({2, 7}, 16);
  sum(slice(a, 1, 1, 7, 3)).backward();  // rows 1 and 4
  check_values(a.grad(), {0, 1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 1, 0, 0});

  auto f = [](const std::vector<Tensor>& v) { return slice(v[0], 1, 0, 7, 2) * slice(v[0], -2, -4, 100); };
  auto g = [](const std::vector<Tensor>& v) { return slice(v[0], -1, 1, -1, 2); };
  GRADCHECK(f, leaf64({3, 7, 2}, 17));
  GRADCHECK(g, leaf64({3, 7, 5}, 18));
  check_backward_of([](const Tensor& t) { return slice(t, 1, 1, 7, 2); }, {2, 7, 2}, 19);
}

TEST_CASE("shape: select drops the dim, negative index and dim, gradcheck") {
  Tensor x = range64({2, 3, 4});
  Tensor s = select(x, 1, 2);
  CHECK(s.shape() == Shape{2, 4});
  check_values(s, {8, 9, 10, 11, 20, 21, 22, 23});
  check_values(select(x, -1, -1), {3, 7, 11, 15, 19, 23});
  check_values(select(x, 0, -2), {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11});
  Tensor v = select(arange(3.0, kFloat64), 0, 1);
  CHECK(v.dim() == 0);
  CHECK(v.item() == 1);

  Tensor a = leaf64({2, 3}, 20);
  (select(a, 1, -1) * tensor({2.0, 3.0}, kFloat64)).backward(ones({2}, kFloat64));
  check_values(a.grad(), {0, 0, 2, 0, 0, 3});

  auto f = [](const std::vector<Tensor>& t) { return select(t[0], 1, 0) * select(t[0], -1, -1); };
  auto g = [](const std::vector<Tensor>& t) { return select(t[0], 0, 1) * select(t[0], 0, 1); };
  GRADCHECK(f, leaf64({3, 3}, 21));
  GRADCHECK(g, leaf64({2, 3, 2}, 22));
  check_backward_of([](const Tensor& t) { return select(t, -2, 1); }, {2, 3, 2}, 23);
}

// ---- cat / stack -------------------------------------------------------------------------------------

TEST_CASE("shape: cat of 3 tensors along dim 1: values, gradcheck, constants, fan-out") {
  Tensor a = range64({2, 1, 3}), b = range64({2, 2, 3}) + 100.0, c = range64({2, 3, 3}) + 200.0;
  Tensor y = cat({a, b, c}, 1);
  CHECK(y.shape() == Shape{2, 6, 3});
  for (size_t i = 0; i < 2; ++i)
    for (size_t k = 0; k < 3; ++k) {
      CHECK(at(y, {i, 0, k}) == at(a, {i, 0, k}));
      for (size_t j = 0; j < 2; ++j) CHECK(at(y, {i, 1 + j, k}) == at(b, {i, j, k}));
      for (size_t j = 0; j < 3; ++j) CHECK(at(y, {i, 3 + j, k}) == at(c, {i, j, k}));
    }
  check_values(cat({tensor({1, 2}), tensor({3})}), {1, 2, 3});
  check_values(cat({reshape(tensor({1, 2}), {2, 1}), tensor({{3, 4}, {5, 6}})}, -1), {1, 3, 4, 2, 5, 6});

  auto f = [](const std::vector<Tensor>& v) { return cat({v[0], v[1], v[2]}, 1) * cat({v[2], v[1], v[0]}, 1); };
  GRADCHECK(f, leaf64({2, 1, 3}, 24), leaf64({2, 2, 3}, 25), leaf64({2, 1, 3}, 26));
  auto g = [](const std::vector<Tensor>& v) { return cat({v[0], v[1], v[2]}, -1); };
  GRADCHECK(g, leaf64({2, 2}, 27), leaf64({2, 1}, 28), leaf64({2, 3}, 29));
  check_backward_of([](const Tensor& t) { return cat({t, t * 2.0, t}, 1); }, {2, 2, 3}, 30);

  // one constant input; one tensor used twice (its two slices add up)
  Tensor x = leaf64({2, 2}, 31);
  Tensor k = ones({2, 1}, kFloat64);
  Tensor z = cat({x, k, x}, 1);
  z.backward(range64({2, 5}));
  check_values(x.grad(), {0 + 3, 1 + 4, 5 + 8, 6 + 9});
  CHECK_FALSE(k.grad().defined());
}

TEST_CASE("shape: stack along every position, values and gradcheck") {
  Tensor a = tensor({{1, 2, 3}, {4, 5, 6}}), b = tensor({{7, 8, 9}, {10, 11, 12}});
  CHECK(stack({a, b}).shape() == Shape{2, 2, 3});
  check_values(stack({a, b}, 0), {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12});
  check_values(stack({a, b}, 1), {1, 2, 3, 7, 8, 9, 4, 5, 6, 10, 11, 12});
  check_values(stack({a, b}, 2), {1, 7, 2, 8, 3, 9, 4, 10, 5, 11, 6, 12});
  check_values(stack({a, b}, -1), {1, 7, 2, 8, 3, 9, 4, 10, 5, 11, 6, 12});
  check_values(stack({scalar_tensor(1.0), scalar_tensor(2.0)}), {1, 2});

  for (int64_t d : {0, 1, 2, -1, -3}) {
    CAPTURE(d);
    auto f = [d](const std::vector<Tensor>& v) { return stack({v[0], v[1], v[2]}, d) * stack({v[2], v[0], v[1]}, d); };
    GRADCHECK(f, leaf64({2, 3}, 32), leaf64({2, 3}, 33), leaf64({2, 3}, 34));
  }
  check_backward_of([](const Tensor& t) { return stack({t, t * 3.0}, 1); }, {2, 3}, 35);

  Tensor x = leaf64({3}, 36);
  stack({x, x, x}, 0).backward(range64({3, 3}));
  check_values(x.grad(), {0 + 3 + 6, 1 + 4 + 7, 2 + 5 + 8});
}

// ---- index_select -------------------------------------------------------------------------------------

// An embedding table gathered at several steps (W5's Wxh): each gather's backward scatter-adds
// into the table's pending gradient in place (Backward::add_into), repeats and all.
TEST_CASE("shape: a table gathered several times sums every gather's rows, scatter-added in place") {
  Tensor table = leaf64({4, 3}, 50);
  std::vector<Tensor> idx = {from_indices({1, 3, 1}, {3}), from_indices({0, 1}, {2}), from_indices({3, 3, 3, 2}, {4})};
  std::vector<Tensor> scale = {from_vector({1, 2, 3}, {3, 1}, kFloat64), from_vector({4, 5}, {2, 1}, kFloat64),
                               from_vector({6, 7, 8, 9}, {4, 1}, kFloat64)};
  auto f = [&](const Tensor& t) {
    Tensor loss = sum(index_select(t, 0, idx[0]) * scale[0]);
    for (size_t s = 1; s < idx.size(); ++s) loss = loss + sum(index_select(t, 0, idx[s]) * scale[s]);
    return loss;
  };
  uint64_t in_place0 = detail::added_in_place();
  f(table).backward();
  CHECK(detail::added_in_place() - in_place0 == 2);  // the first gather's rows are stored, two add in place
  // Row r of d(table) is the sum of the scales of every position that gathered row r.
  std::vector<double> row = {4, 1 + 3 + 5, 9, 2 + 6 + 7 + 8}, want;
  for (double r : row) want.insert(want.end(), {r, r, r});
  check_values(table.grad(), want, 1e-12);
  CHECK_GRADCHECK([&](const std::vector<Tensor>& t) { return f(t[0]); }, (std::vector<Tensor>{table}));
  CHECK(gradgradcheck([&](const std::vector<Tensor>& t) { return sum(tanh(index_select(t[0], 0, idx[0]))) +
                                                                 sum(tanh(index_select(t[0], 0, idx[2]))); },
                      {table}).ok);
}

TEST_CASE("shape: index_select values and repeated indices accumulating their gradient") {
  Tensor x = range64({2, 3});
  Tensor idx = from_indices({2, 0, 0, 2, 0}, {5});
  check_values(index_select(x, 1, idx), {2, 0, 0, 2, 0, 5, 3, 3, 5, 3});
  check_values(index_select(x, 0, from_indices({1, 1}, {2})), {3, 4, 5, 3, 4, 5});
  check_values(index_select(x, -1, from_indices({1}, {1})), {1, 4});
  CHECK(index_select(x, 0, from_indices({}, {0})).shape() == Shape{0, 3});

  // hand value: y[:, p] = x[:, idx[p]], so dx[:, c] = Σ_{p: idx[p] = c} dy[:, p]
  Tensor a = leaf64({2, 3}, 37);
  Tensor dy = tensor({{1, 10, 100, 1000, 10000}, {2, 20, 200, 2000, 20000}}, kFloat64);
  index_select(a, 1, idx).backward(dy);
  check_values(a.grad(), {10 + 100 + 10000, 0, 1 + 1000, 20 + 200 + 20000, 0, 2 + 2000});
  a.zero_grad();
  sum(index_select(a, 1, idx)).backward();
  check_values(a.grad(), {3, 0, 2, 3, 0, 2});

  auto f = [idx](const std::vector<Tensor>& v) { return index_select(v[0], 1, idx) * index_select(v[0], 1, idx); };
  GRADCHECK(f, leaf64({2, 3}, 38));
  Tensor rows = from_indices({3, 0, 3, 1}, {4});
  auto g = [rows](const std::vector<Tensor>& v) { return index_select(v[0], 0, rows); };
  GRADCHECK(g, leaf64({4, 2, 2}, 39));
  Tensor mid = from_indices({1, 1, 0}, {3});
  check_backward_of([mid](const Tensor& t) { return index_select(t, -2, mid); }, {2, 2, 3}, 40);
}

TEST_CASE("shape: an index modified in place after index_select is detected at backward") {
  Tensor a = leaf64({3}, 41);
  Tensor idx = from_indices({0, 2}, {2});
  Tensor y = index_select(a, 0, idx);
  idx.data_ptr<int64_t>()[0] = 1;
  idx.bump_version();
  CHECK_THROWS_WITH_AS(sum(y).backward(), doctest::Contains("modified in place"), Error);
}

// ---- clone -----------------------------------------------------------------------------------------------

TEST_CASE("shape: clone is a deep copy with dx = dy") {
  Tensor x = leaf64({2, 3}, 42);
  Tensor c = clone(x);
  check_values(c, x.to_vector());
  c.data_ptr<double>()[0] = 99;
  CHECK(x.to_vector()[0] != 99);
  auto f = [](const std::vector<Tensor>& v) { return clone(v[0]) * v[0]; };
  GRADCHECK(f, leaf64({2, 3}, 43));
  Tensor y = leaf64({3}, 44);
  clone(y).backward(tensor({1.0, 2.0, 3.0}, kFloat64));
  check_values(y.grad(), {1, 2, 3});
  CHECK(clone(from_indices({4, 5}, {2})).to_vector() == std::vector<double>{4, 5});
}

// ---- composition and dtypes -----------------------------------------------------------------------------

TEST_CASE("shape: a chain of every copy op gradchecks end to end") {
  Tensor idx = from_indices({1, 0, 1}, {3});
  auto f = [idx](const std::vector<Tensor>& v) {
    Tensor t = transpose(v[0], 0, 1);                            // [3,2]
    Tensor s = slice(cat({t, v[1]}, 0), 0, 1, 5, 2);             // [5,2] -> rows 1,3 -> [2,2]
    Tensor p = permute(stack({s, narrow(t, 0, 0, 2)}, 0), {2, 1, 0});  // [2,2,2]
    Tensor q = index_select(select(p, 0, 1), 1, idx);            // [2,3]
    return clone(q) * q;
  };
  GRADCHECK(f, leaf64({2, 3}, 45), leaf64({2, 2}, 46));
}

TEST_CASE("shape: copies keep int64 and float32 data exact") {
  Tensor labels = from_indices({3, 1, 4, 1, 5, 9}, {2, 3});
  CHECK(cat({labels, labels}, 0).dtype() == kInt64);
  CHECK(transpose(labels, 0, 1).to_vector() == std::vector<double>{3, 1, 1, 5, 4, 9});
  CHECK(index_select(labels, 1, from_indices({2, 2}, {2})).to_vector() == std::vector<double>{4, 4, 9, 9});
  CHECK(select(labels, 0, 1).to_vector() == std::vector<double>{1, 5, 9});
  Tensor f = tensor({{1, 2, 3}, {4, 5, 6}}, requires_grad());
  sum(slice(transpose(f, 0, 1), 0, 0, 3, 2) * 2.0).backward();
  CHECK(f.grad().dtype() == kFloat32);
  check_values(f.grad(), {2, 0, 2, 2, 0, 2});
}

// ---- errors ----------------------------------------------------------------------------------------------

TEST_CASE("shape: errors name the op and the shapes") {
  Tensor x = zeros({2, 3}, kFloat64);
  CHECK_THROWS_WITH_AS(transpose(x, 0, 2), doctest::Contains("transpose: dim 2 is out of range"), Error);
  CHECK_THROWS_WITH_AS(transpose(x, -3, 0), doctest::Contains("transpose: dim -3"), Error);
  CHECK_THROWS_WITH_AS(permute(x, {0}), doctest::Contains("permute: dims [0] do not match the rank of a tensor of shape [2,3]"), Error);
  CHECK_THROWS_WITH_AS(permute(x, {1, -1}), doctest::Contains("permute: dims [1,-1] repeat a dim (tensor of shape [2,3])"), Error);
  CHECK_THROWS_WITH_AS(permute(x, {0, 2}), doctest::Contains("permute: dim 2 is out of range"), Error);

  CHECK_THROWS_WITH_AS(narrow(x, 1, 2, 2), doctest::Contains("narrow: start 2 + length 2 exceeds dim 1 of size 3 (tensor [2,3])"), Error);
  CHECK_THROWS_WITH_AS(narrow(x, 1, 4, 0), doctest::Contains("narrow: start 4 is out of range for dim 1 of size 3 (tensor [2,3])"), Error);
  CHECK_THROWS_WITH_AS(narrow(x, 1, -4, 1), doctest::Contains("narrow: start -4"), Error);
  CHECK_THROWS_WITH_AS(narrow(x, 0, 0, -1), doctest::Contains("narrow: start 0 + length -1"), Error);
  CHECK_THROWS_WITH_AS(narrow(x, 2, 0, 1), doctest::Contains("narrow: dim 2 is out of range"), Error);

  CHECK_THROWS_WITH_AS(slice(x, 1, 0, 3, 0), doctest::Contains("slice: step must be positive, got 0 (tensor [2,3])"), Error);
  CHECK_THROWS_WITH_AS(slice(x, 1, 0, 3, -1), doctest::Contains("slice: step must be positive, got -1"), Error);
  CHECK_THROWS_WITH_AS(slice(x, -3, 0, 1), doctest::Contains("slice: dim -3 is out of range"), Error);

  CHECK_THROWS_WITH_AS(select(x, 1, 3), doctest::Contains("select: index 3 is out of range for dim 1 of size 3 (tensor [2,3])"), Error);
  CHECK_THROWS_WITH_AS(select(x, 0, -3), doctest::Contains("select: index -3 is out of range for dim 0 of size 2"), Error);
  CHECK_THROWS_WITH_AS(select(scalar_tensor(1.0), 0, 0), doctest::Contains("select: dim 0 is out of range for a tensor of rank 0"), Error);

  CHECK_THROWS_WITH_AS(cat({}, 0), doctest::Contains("cat: expected a non-empty list"), Error);
  CHECK_THROWS_WITH_AS(cat({x, zeros({3, 3}, kFloat64)}, 1), doctest::Contains("cat: shapes [2,3] and [3,3] (tensor 1) must match except in dim 1"), Error);
  CHECK_THROWS_WITH_AS(cat({x, zeros({2, 3, 1}, kFloat64)}, 0), doctest::Contains("cat: shapes [2,3] and [2,3,1]"), Error);
  CHECK_THROWS_WITH_AS(cat({x, zeros({2, 3})}, 0), doctest::Contains("cat: dtypes differ"), Error);
  CHECK_THROWS_WITH_AS(cat({x, x}, 2), doctest::Contains("cat: dim 2 is out of range"), Error);
  CHECK_THROWS_WITH_AS(cat({scalar_tensor(1.0)}, 0), doctest::Contains("cat: a 0-d tensor"), Error);
  CHECK_THROWS_WITH_AS(cat({x, Tensor()}, 0), doctest::Contains("cat: undefined tensor"), Error);

  CHECK_THROWS_WITH_AS(stack({}, 0), doctest::Contains("stack: expected a non-empty list"), Error);
  CHECK_THROWS_WITH_AS(stack({x, zeros({3, 2}, kFloat64)}, 0), doctest::Contains("stack: shapes [2,3] and [3,2] (tensor 1) differ"), Error);
  CHECK_THROWS_WITH_AS(stack({x, x}, 3), doctest::Contains("stack: dim 3 is out of range"), Error);
  CHECK_THROWS_WITH_AS(stack({x, zeros({2, 3})}, 0), doctest::Contains("stack: dtypes differ"), Error);
  CHECK_THROWS_WITH_AS(stack({zeros({1, 1, 1, 1, 1, 1})}, 0), doctest::Contains("stack: tensors of shape [1,1,1,1,1,1]"), Error);

  CHECK_THROWS_WITH_AS(index_select(x, 1, from_indices({0, 3}, {2})), doctest::Contains("index_select: index 3 (position 1) is out of range for dim 1 of size 3 (tensor [2,3])"), Error);
  CHECK_THROWS_WITH_AS(index_select(x, 1, from_indices({-1}, {1})), doctest::Contains("index_select: index -1"), Error);
  CHECK_THROWS_WITH_AS(index_select(x, 0, tensor({0.0})), doctest::Contains("index_select: index must be int64, got float32 [1]"), Error);
  CHECK_THROWS_WITH_AS(index_select(x, 0, from_indices({0, 1}, {1, 2})), doctest::Contains("index_select: index must be 1-D, got shape [1,2]"), Error);
  CHECK_THROWS_WITH_AS(index_select(x, 2, from_indices({0}, {1})), doctest::Contains("index_select: dim 2 is out of range"), Error);

  CHECK_THROWS_WITH_AS(clone(Tensor()), doctest::Contains("clone: undefined tensor"), Error);
  CHECK_THROWS_WITH_AS(reshape(x, {4, -1}), doctest::Contains("reshape: cannot infer -1 reshaping [2,3]"), Error);
  CHECK_THROWS_WITH_AS(reshape(x, {4, 2}), doctest::Contains("reshape: cannot view [2,3] as [4,2]"), Error);
  CHECK_THROWS_WITH_AS(unsqueeze(x, 3), doctest::Contains("unsqueeze: dim 3 is out of range"), Error);
}

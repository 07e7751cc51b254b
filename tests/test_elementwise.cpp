// Elementwise arithmetic with broadcasting: add/sub/mul/div/neg for every broadcast variant
// (values against an explicit-index reference, float64 gradcheck), scalar operands, sum_to and
// expand directly, hand-derived gradients, fan-out, and errors.
#include <functional>
#include <string>

#include "../ops/kernel.hpp"  // copy_streaming, streaming_threshold_bytes (private to ops/)
#include "helpers.hpp"

using namespace tapegrad;

namespace {

#define GRADCHECK(f, ...) CHECK_GRADCHECK(f, (std::vector<Tensor>{__VA_ARGS__}))

using Binary = std::function<Tensor(const Tensor&, const Tensor&)>;
using Scalar = std::function<double(double, double)>;

struct BinaryOp {
  const char* name;
  Binary op;
  Scalar ref;
};

const std::vector<BinaryOp>& binary_ops() {
  static const std::vector<BinaryOp> ops = {
      {"add", [](const Tensor& a, const Tensor& b) { return add(a, b); }, [](double x, double y) { return x + y; }},
      {"sub", [](const Tensor& a, const Tensor& b) { return a - b; }, [](double x, double y) { return x - y; }},
      {"mul", [](const Tensor& a, const Tensor& b) { return mul(a, b); }, [](double x, double y) { return x * y; }},
      {"div", [](const Tensor& a, const Tensor& b) { return a / b; }, [](double x, double y) { return x / y; }},
  };
  return ops;
}

// The broadcast shape computed independently of broadcast_shapes (trailing alignment).
Shape ref_shape(const Shape& a, const Shape& b) {
  size_t rank = std::max(a.rank(), b.rank());
  Shape s;
  for (size_t i = 0; i < rank; ++i) {
    size_t da = i + a.rank() >= rank ? a[i + a.rank() - rank] : 1;
    size_t db = i + b.rank() >= rank ? b[i + b.rank() - rank] : 1;
    s.push_back(std::max(da, db));
  }
  return s;
}

// out[i] = f(a[i mapped], b[i mapped]) by explicit multi-index arithmetic.
std::vector<double> ref_binary(const Tensor& a, const Tensor& b, const Scalar& f) {
  Shape s = ref_shape(a.shape(), b.shape());
  std::vector<double> av = a.to_vector(), bv = b.to_vector(), out;
  std::vector<size_t> idx(s.rank());
  for (size_t flat = 0; flat < s.numel(); ++flat) {
    size_t r = flat;
    for (size_t d = s.rank(); d-- > 0;) {
      idx[d] = r % s[d];
      r /= s[d];
    }
    auto offset = [&](const Shape& t) {
      size_t off = 0, lead = s.rank() - t.rank();
      for (size_t d = 0; d < t.rank(); ++d) off = off * t[d] + (t[d] == 1 ? 0 : idx[lead + d]);
      return off;
    };
    out.push_back(f(av[offset(a.shape())], bv[offset(b.shape())]));
  }
  return out;
}

struct Variant {
  Shape a, b;
};
// Every broadcast variant: equal, trailing vector either side, outer product, rank 3 against
// rank 2, 0-d on either or both sides, one-element [1] operands, a size-1 column.
const std::vector<Variant> kVariants = {
    {{2, 3}, {2, 3}}, {{2, 3}, {3}},    {{3}, {2, 3}},    {{2, 1}, {1, 3}}, {{4, 1, 3}, {2, 1}},
    {{2, 1}, {4, 1, 3}}, {{2, 3}, {}},  {{}, {2, 3}},     {{}, {}},         {{2, 3}, {1}},
    {{1}, {2, 3}},    {{2, 3}, {2, 1}}, {{1, 3}, {2, 1}}, {{3, 1, 2}, {1, 4, 1}},
};

std::string variant_name(const char* op, const Variant& v) { return std::string(op) + " " + v.a.str() + " ∘ " + v.b.str(); }

}  // namespace

TEST_CASE("elementwise: every op and broadcast variant matches an explicit-index reference") {
  uint64_t seed = 100;
  for (const BinaryOp& op : binary_ops())
    for (const Variant& v : kVariants) {
      INFO(variant_name(op.name, v));
      Tensor a = leaf64(v.a, seed++);
      Tensor b = leaf64(v.b, seed++, 0.5, 1.5);  // away from 0 for div
      Tensor y = op.op(a, b);
      CHECK(y.shape() == ref_shape(v.a, v.b));
      check_values(y, ref_binary(a, b, op.ref), 1e-12);
      // float32 takes the same paths
      Tensor a32 = from_vector(a.to_vector(), v.a), b32 = from_vector(b.to_vector(), v.b);
      check_values(op.op(a32, b32), ref_binary(a, b, op.ref), 1e-5);
    }
}

TEST_CASE("elementwise: gradcheck of add/sub/mul/div for every broadcast variant") {
  uint64_t seed = 200;
  for (const BinaryOp& op : binary_ops())
    for (const Variant& v : kVariants) {
      INFO(variant_name(op.name, v));
      Binary fn = op.op;
      auto f = [fn](const std::vector<Tensor>& in) { return fn(in[0], in[1]); };
      Tensor a = leaf64(v.a, seed++), b = leaf64(v.b, seed++, 0.5, 1.5);
      GRADCHECK(f, a, b);
      // one side constant: only the other's gradient is computed
      Tensor ca = leaf64(v.a, seed++).detach(), cb = leaf64(v.b, seed++, 0.5, 1.5).detach();
      GRADCHECK(f, ca, b);
      GRADCHECK(f, a, cb);
    }
}

TEST_CASE("elementwise: gradients of gradients for every op (backward is differentiable)") {
  uint64_t seed = 300;
  for (const BinaryOp& op : binary_ops())
    for (const Variant& v : {Variant{{2, 3}, {3}}, Variant{{2, 1}, {1, 3}}, Variant{{}, {2, 2}}}) {
      INFO(variant_name(op.name, v));
      Binary fn = op.op;
      Tensor a = leaf64(v.a, seed++), b = leaf64(v.b, seed++, 0.5, 1.5);
      Tensor dy = leaf64(ref_shape(v.a, v.b), seed++);
      auto f = [fn](const std::vector<Tensor>& in) {
        EnableGradGuard with_grad;  // the finite differences run under NoGradGuard
        Tensor y = fn(in[0], in[1]);
        auto g = grad({y}, {in[0], in[1]}, {in[2]}, false, /*create_graph=*/true);
        return sum(g[0] * g[0]) + sum(g[1] * g[1] * g[1]);
      };
      GRADCHECK(f, a, b, dy);
    }
}

TEST_CASE("elementwise: neg, and scalar operands on either side") {
  Tensor x = leaf64({2, 3}, 400, 0.5, 1.5);
  std::vector<double> xv = x.to_vector();
  auto map = [&](const Scalar& f) {
    std::vector<double> r;
    for (double v : xv) r.push_back(f(v, 0));
    return r;
  };
  check_values(-x, map([](double v, double) { return -v; }), 1e-12);
  check_values(neg(x), map([](double v, double) { return -v; }), 1e-12);
  check_values(x * 2.0, map([](double v, double) { return v * 2; }), 1e-12);
  check_values(2.0 * x, map([](double v, double) { return 2 * v; }), 1e-12);
  check_values(x + 1.5, map([](double v, double) { return v + 1.5; }), 1e-12);
  check_values(1.5 + x, map([](double v, double) { return 1.5 + v; }), 1e-12);
  check_values(x - 1.0, map([](double v, double) { return v - 1; }), 1e-12);
  check_values(1.0 - x, map([](double v, double) { return 1 - v; }), 1e-12);
  check_values(x / 4.0, map([](double v, double) { return v / 4; }), 1e-12);
  check_values(2.0 / x, map([](double v, double) { return 2 / v; }), 1e-12);
  CHECK((x * 2.0).dtype() == kFloat64);
  CHECK((tensor({1.0}) * 2.0).dtype() == kFloat32);

  std::vector<std::pair<const char*, std::function<Tensor(const Tensor&)>>> cases = {
      {"-x", [](const Tensor& t) { return -t; }},           {"neg", [](const Tensor& t) { return neg(t); }},
      {"x*2", [](const Tensor& t) { return t * 2.0; }},     {"2*x", [](const Tensor& t) { return 2.0 * t; }},
      {"x+1", [](const Tensor& t) { return t + 1.0; }},     {"1+x", [](const Tensor& t) { return 1.0 + t; }},
      {"x-1", [](const Tensor& t) { return t - 1.0; }},     {"1-x", [](const Tensor& t) { return 1.0 - t; }},
      {"x/2", [](const Tensor& t) { return t / 2.0; }},     {"2/x", [](const Tensor& t) { return 2.0 / t; }},
      {"(1-x)*x", [](const Tensor& t) { return (1.0 - t) * t; }},
  };
  for (auto& [name, fn] : cases) {
    INFO(name);
    auto f = [fn = fn](const std::vector<Tensor>& in) { return fn(in[0]); };
    GRADCHECK(f, leaf64({2, 3}, 401, 0.5, 1.5));
    GRADCHECK(f, leaf64({}, 402, 0.5, 1.5));  // 0-d
  }
  // hand values: d(1 - x)/dx = -1, d(2/x)/dx = -2/x²
  Tensor s = leaf64({3}, 403, 0.5, 1.5);
  sum(1.0 - s).backward();
  check_values(s.grad(), {-1, -1, -1});
  s.zero_grad();
  sum(2.0 / s).backward();
  std::vector<double> sv = s.to_vector();
  check_values(s.grad(), {-2 / (sv[0] * sv[0]), -2 / (sv[1] * sv[1]), -2 / (sv[2] * sv[2])}, 1e-12);
}

TEST_CASE("elementwise: broadcast gradients are summed back to each input's shape") {
  Tensor a = leaf64({2, 3}, 500), b = leaf64({3}, 501);
  (a + b).backward(ones({2, 3}, kFloat64));
  check_values(b.grad(), {2, 2, 2});
  check_values(a.grad(), {1, 1, 1, 1, 1, 1});

  // outer product: da[i] = Σ_j dy[i,j]·c[j]      dc[j] = Σ_i dy[i,j]·r[i]
  Tensor r = leaf64({2, 1}, 502), c = leaf64({1, 3}, 503);
  Tensor dy = tensor({{1, 2, 3}, {4, 5, 6}}, kFloat64);
  (r * c).backward(dy);
  std::vector<double> rv = r.to_vector(), cv = c.to_vector(), dv = dy.to_vector();
  std::vector<double> dr(2, 0.0), dc(3, 0.0);
  for (size_t i = 0; i < 2; ++i)
    for (size_t j = 0; j < 3; ++j) {
      dr[i] += dv[i * 3 + j] * cv[j];
      dc[j] += dv[i * 3 + j] * rv[i];
    }
  check_values(r.grad(), dr, 1e-12);
  check_values(c.grad(), dc, 1e-12);
  CHECK(r.grad().shape() == Shape{2, 1});
  CHECK(c.grad().shape() == Shape{1, 3});

  // a 0-d operand receives the sum of every element's gradient
  Tensor k = leaf64({}, 504);
  Tensor m = leaf64({2, 2}, 505);
  (k * m).backward(ones({2, 2}, kFloat64));
  CHECK(k.grad().dim() == 0);
  CHECK(k.grad().item() == doctest::Approx(sum(m).item()).epsilon(1e-12));
}

TEST_CASE("elementwise: sum_to directly: values, gradcheck, gradients of gradients") {
  Tensor x = reshape(arange(24.0, kFloat64), {4, 2, 3});
  check_values(sum_to(x, {2, 3}), {36, 40, 44, 48, 52, 56});          // leading axis
  check_values(sum_to(x, {4, 1, 3}), {3, 5, 7, 15, 17, 19, 27, 29, 31, 39, 41, 43});  // middle axis
  check_values(sum_to(x, {4, 2, 1}), {3, 12, 21, 30, 39, 48, 57, 66});  // trailing axis
  check_values(sum_to(x, {1, 3}), {84, 92, 100});
  check_values(sum_to(x, {2, 1}), {0 + 1 + 2 + 6 + 7 + 8 + 12 + 13 + 14 + 18 + 19 + 20, 276 - 120});
  CHECK(sum_to(x, {}).dim() == 0);
  CHECK(sum_to(x, {}).item() == 276);
  CHECK(sum_to(x, {4, 2, 3}).impl() == x.impl());  // nothing to reduce: the same tensor

  uint64_t seed = 600;
  for (Shape target : {Shape{2, 3}, Shape{4, 1, 3}, Shape{4, 2, 1}, Shape{1, 3}, Shape{2, 1}, Shape{3}, Shape{},
                       Shape{1, 1, 1}, Shape{4, 2, 3}}) {
    INFO("sum_to [4,2,3] -> " << target.str());
    auto f = [target](const std::vector<Tensor>& in) { return sum_to(in[0] * in[0], target); };
    GRADCHECK(f, leaf64({4, 2, 3}, seed++));
    auto gg = [target](const std::vector<Tensor>& in) {
      EnableGradGuard with_grad;
      Tensor y = sum_to(in[0], target);
      return grad({y}, {in[0]}, {in[1]}, false, true)[0];  // = expand(dy): linear in dy
    };
    GRADCHECK(gg, leaf64({4, 2, 3}, seed++), leaf64(target, seed++));
  }
}

TEST_CASE("elementwise: expand directly: values, gradcheck, gradients of gradients") {
  check_values(expand(tensor({1, 2, 3}), {2, 3}), {1, 2, 3, 1, 2, 3});
  check_values(expand(reshape(tensor({1, 2}), {2, 1}), {2, 3}), {1, 1, 1, 2, 2, 2});
  check_values(expand(scalar_tensor(7.0), {2, 2}), {7, 7, 7, 7});
  check_values(expand(reshape(tensor({1, 2, 3}), {1, 3}), {2, 2, 3}), {1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3});

  uint64_t seed = 700;
  for (auto [from, to] : {std::pair{Shape{3}, Shape{2, 3}}, std::pair{Shape{2, 1}, Shape{2, 4}},
                          std::pair{Shape{}, Shape{2, 2}}, std::pair{Shape{1, 3}, Shape{4, 2, 3}},
                          std::pair{Shape{2, 1, 3}, Shape{2, 4, 3}}, std::pair{Shape{2, 3}, Shape{2, 3}}}) {
    INFO("expand " << from.str() << " -> " << to.str());
    auto f = [to = to](const std::vector<Tensor>& in) { return expand(in[0], to) * expand(in[0], to); };
    GRADCHECK(f, leaf64(from, seed++));
    auto gg = [to = to](const std::vector<Tensor>& in) {
      EnableGradGuard with_grad;
      Tensor y = expand(in[0], to);
      return grad({y}, {in[0]}, {in[1]}, false, true)[0];  // = sum_to(dy): linear in dy
    };
    GRADCHECK(gg, leaf64(from, seed++), leaf64(to, seed++));
  }
  // hand value: expand [3] -> [2,3], then dx[j] = Σ_i dy[i,j]
  Tensor v = leaf64({3}, 710);
  expand(v, {2, 3}).backward(tensor({{1, 2, 3}, {10, 20, 30}}, kFloat64));
  check_values(v.grad(), {11, 22, 33});
}

TEST_CASE("elementwise: hand-derived gradients and fan-out") {
  // d(x·x)/dx = 2x
  Tensor x = leaf64({2, 3}, 800);
  sum(x * x).backward();
  std::vector<double> xv = x.to_vector(), expect;
  for (double v : xv) expect.push_back(2 * v);
  check_values(x.grad(), expect, 1e-12);

  // d(x·x·x)/dx = 3x²
  x.zero_grad();
  sum(x * x * x).backward();
  expect.clear();
  for (double v : xv) expect.push_back(3 * v * v);
  check_values(x.grad(), expect, 1e-12);

  // fan-out: y = x·x + 3x      dy/dx = 2x + 3
  x.zero_grad();
  sum(x * x + x * 3.0).backward();
  expect.clear();
  for (double v : xv) expect.push_back(2 * v + 3);
  check_values(x.grad(), expect, 1e-12);

  // diamond: h = 2x, y = h·h + h      dy/dx = (2h + 1)·2
  x.zero_grad();
  Tensor h = x * 2.0;
  sum(h * h + h).backward();
  expect.clear();
  for (double v : xv) expect.push_back((4 * v + 1) * 2);
  check_values(x.grad(), expect, 1e-12);

  // fan-out through broadcasting: y = Σ_ij x_i·x_j = (Σx)²      dy/dx_k = 2·Σx
  Tensor u = leaf64({3}, 801);
  sum(u * reshape(u, {3, 1})).backward();
  double su = sum(u).item();
  check_values(u.grad(), {2 * su, 2 * su, 2 * su}, 1e-12);

  // x - x and x / x are constant: zero gradient, not undefined
  Tensor w = leaf64({2}, 802, 0.5, 1.5);
  sum(w - w).backward();
  check_values(w.grad(), {0, 0});
  w.zero_grad();
  sum(w / w).backward();
  check_values(w.grad(), {0, 0}, 1e-12);
  CHECK(std::abs(w.grad().to_vector()[0]) < 1e-12);

  // second order: d²(x³)/dx² = 6x
  Tensor s = leaf64({3}, 803);
  Tensor g = grad({sum(s * s * s)}, {s}, {}, false, /*create_graph=*/true)[0];
  sum(g).backward();
  std::vector<double> sv = s.to_vector();
  check_values(s.grad(), {6 * sv[0], 6 * sv[1], 6 * sv[2]}, 1e-12);

  auto f = [](const std::vector<Tensor>& in) {
    const Tensor &a = in[0], &b = in[1];
    Tensor t = a * b + a / b - b;  // a and b each feed three consumers
    return t * t - a;
  };
  GRADCHECK(f, leaf64({2, 3}, 804), leaf64({3}, 805, 0.5, 1.5));
}

// mul's backward writes a gradient of an unbroadcast, small product straight into its input's
// pending gradient (ops/elementwise.cpp, add_mul_grad): a factor used T times sums T contributions
// in place. The chain y ← y·a from x0: dL/da = T·a^(T−1)·x0 and dL/dx0 = a^T, elementwise.
TEST_CASE("elementwise: a factor in many products sums its gradient in place, to the hand formula") {
  const size_t T = 50;
  const std::vector<double> av = {0.99, 1.01, -0.98, 0.5}, xv = {1.5, -2.0, 0.25, 3.0};
  Tensor a = from_vector(av, {4}, dtype(kFloat64).requires_grad());
  Tensor x0 = from_vector(xv, {4}, dtype(kFloat64).requires_grad());
  Tensor y = x0;
  for (size_t t = 0; t < T; ++t) y = y * a;
  const uint64_t in_place0 = detail::added_in_place();
  sum(y).backward();
  CHECK(detail::added_in_place() - in_place0 == T - 1);  // every contribution to a's but the first
  std::vector<double> da, dx;
  for (size_t k = 0; k < 4; ++k) {
    da.push_back(double(T) * std::pow(av[k], double(T - 1)) * xv[k]);
    dx.push_back(std::pow(av[k], double(T)));
  }
  check_values(a.grad(), da, 1e-12);
  check_values(x0.grad(), dx, 1e-12);
  // A broadcast factor takes the general path: sum_to(dout·x), then added.
  Tensor s = from_vector({0.9}, {1}, dtype(kFloat64).requires_grad());
  Tensor z = x0.detach();
  for (size_t t = 0; t < 3; ++t) z = z * s;
  sum(z).backward();
  check_values(s.grad(), {3 * 0.81 * (1.5 - 2.0 + 0.25 + 3.0)}, 1e-12);
}

TEST_CASE("elementwise: errors name the op and the shapes") {
  Tensor a = zeros({2, 3}), b = zeros({4});
  CHECK_THROWS_WITH_AS(a + b, doctest::Contains("add: shapes [2,3] and [4] cannot be broadcast"), Error);
  CHECK_THROWS_WITH_AS(add(a, b), doctest::Contains("add: shapes [2,3] and [4] cannot be broadcast"), Error);
  CHECK_THROWS_WITH_AS(a - b, doctest::Contains("sub: shapes [2,3] and [4] cannot be broadcast"), Error);
  CHECK_THROWS_WITH_AS(a * b, doctest::Contains("mul: shapes [2,3] and [4] cannot be broadcast"), Error);
  CHECK_THROWS_WITH_AS(a / b, doctest::Contains("div: shapes [2,3] and [4] cannot be broadcast"), Error);
  CHECK_THROWS_WITH_AS(a + zeros({3, 2}), doctest::Contains("add: shapes [2,3] and [3,2] cannot be broadcast"), Error);
  CHECK_THROWS_WITH_AS(zeros({4, 1, 3}) * zeros({2, 2}), doctest::Contains("mul: shapes [4,1,3] and [2,2] cannot be broadcast"), Error);
  CHECK_THROWS_WITH_AS(broadcast_shapes("myop", {5}, {2, 3}), doctest::Contains("myop: shapes [5] and [2,3] cannot be broadcast"), Error);

  CHECK_THROWS_WITH_AS(a * zeros({2, 3}, kFloat64), doctest::Contains("mul: dtypes differ"), Error);
  CHECK_THROWS_WITH_AS(a + from_indices({1, 2, 3}, {3}), doctest::Contains("add: int64 tensor of shape [3]"), Error);
  CHECK_THROWS_WITH_AS(-from_indices({1}, {1}), doctest::Contains("neg: int64 tensor of shape [1]"), Error);
  CHECK_THROWS_WITH_AS(from_indices({1}, {1}) * 2.0, doctest::Contains("int64"), Error);
  CHECK_THROWS_WITH_AS(a + Tensor(), doctest::Contains("add: undefined tensor"), Error);

  CHECK_THROWS_WITH_AS(sum_to(a, {4}), doctest::Contains("sum_to: cannot reduce [2,3] to [4]"), Error);
  CHECK_THROWS_WITH_AS(sum_to(a, {2, 2}), doctest::Contains("sum_to: cannot reduce [2,3] to [2,2]"), Error);
  CHECK_THROWS_WITH_AS(sum_to(b, {2, 4}), doctest::Contains("sum_to: cannot reduce [4] to the larger rank [2,4]"), Error);
  CHECK_THROWS_WITH_AS(expand(a, {3, 3}), doctest::Contains("expand: shapes [2,3] and [3,3] cannot be broadcast"), Error);
  CHECK_THROWS_WITH_AS(expand(a, {3}), doctest::Contains("expand: shape [2,3] cannot be expanded to [3]"), Error);
  CHECK_THROWS_WITH_AS(expand(zeros({3}), {1, 1}), doctest::Contains("expand: shape [3] cannot be expanded to [1,1]"), Error);
}

// Outputs larger than the L2 cache are computed in blocks and written with streaming stores
// (ops/kernel.hpp, write_out), at 2 threads in two runs of blocks side by side. They must equal, bit
// for bit, what the same op writes plainly for small pieces of the input, including a tail that is
// not a whole block; and so must the bias gradient's sum over the batch, cut into runs of columns.
TEST_CASE("elementwise: outputs beyond the cache (streamed; cut between threads) equal the op on small pieces, bit for bit") {
  const int before = get_num_threads();
  for (int threads : {1, 2})
  for (Dtype dt : {kFloat32, kFloat64}) {
    set_num_threads(threads);
    // ~6 times the threshold; rows·cols is no multiple of a block or a cache line
    const size_t cols = 1543, rows = 6 * kernel::streaming_threshold_bytes() / (cols * dtype_size(dt)) + 7;
    CAPTURE(threads);
    CAPTURE(dt);
    CAPTURE(rows);
    std::vector<double> xv(rows * cols), yv(rows * cols);
    for (size_t i = 0; i < xv.size(); ++i) {
      xv[i] = std::sin(0.37 * double(i)) * 3.0;
      yv[i] = std::cos(0.11 * double(i)) + 1.5;
    }
    Tensor x = from_vector(xv, {rows, cols}, dtype(dt)), y = from_vector(yv, {rows, cols}, dtype(dt));
    const std::vector<std::pair<std::string, Binary>> ops = {
        {"relu", [](const Tensor& a, const Tensor&) { return relu(a); }},
        {"exp", [](const Tensor& a, const Tensor&) { return exp(a); }},
        {"add", [](const Tensor& a, const Tensor& b) { return a + b; }},
        {"mul", [](const Tensor& a, const Tensor& b) { return a * b; }},
        {"mul scalar", [](const Tensor& a, const Tensor&) { return a * 2.5; }},
        {"scalar sub", [](const Tensor& a, const Tensor&) { return 0.5 - a; }},
        {"div scalar", [](const Tensor& a, const Tensor&) { return a / 3.0; }},
    };
    for (const auto& [name, f] : ops) {
      CAPTURE(name);
      const unsigned long long jobs0 = detail::parallel_jobs();
      std::vector<double> big = f(x, y).to_vector();
      CHECK(detail::parallel_jobs() - jobs0 == (threads > 1 ? 1u : 0u));  // the one large output was cut
      size_t mismatches = 0;
      // small pieces, well under the threshold; each but the last a multiple of 64 elements, so that
      // SIMD kernels split them into vector body and scalar tail exactly as they split the whole
      const size_t piece = 64 * 1500;
      for (size_t i0 = 0; i0 < xv.size(); i0 += piece) {
        size_t n = std::min(piece, xv.size() - i0);
        std::vector<double> xs(xv.begin() + i0, xv.begin() + i0 + n), ys(yv.begin() + i0, yv.begin() + i0 + n);
        std::vector<double> small = f(from_vector(xs, {n}, dtype(dt)), from_vector(ys, {n}, dtype(dt))).to_vector();
        for (size_t i = 0; i < n; ++i) mismatches += small[i] != big[i0 + i];
      }
      CHECK(mismatches == 0);
    }

    // relu's backward (dx = dout·[y > 0]) and linear's bias rows, against exact expected values
    Tensor xg = from_vector(xv, {rows, cols}, dtype(dt).requires_grad());
    sum(relu(xg) * y).backward();
    std::vector<double> dx = xg.grad().to_vector();
    Tensor bias = from_vector(std::vector<double>(yv.begin(), yv.begin() + cols), {cols}, dtype(dt));
    std::vector<double> rows_of_bias = linear(ones({rows, 3}, dt), zeros({3, cols}, dt), bias).to_vector();
    size_t bad_dx = 0, bad_bias = 0;
    for (size_t i = 0; i < xv.size(); ++i) {
      double xi = dt == kFloat32 ? double(float(xv[i])) : xv[i], yi = dt == kFloat32 ? double(float(yv[i])) : yv[i];
      bad_dx += dx[i] != (xi > 0 ? yi : 0.0);
      bad_bias += rows_of_bias[i] != (dt == kFloat32 ? double(float(yv[i % cols])) : yv[i % cols]);
    }
    CHECK(bad_dx == 0);
    CHECK(bad_bias == 0);

    // Σ over the batch (linear's db), each column summed in row order: exactly that sum in T
    const unsigned long long jobs0 = detail::parallel_jobs();
    std::vector<double> col_sums = sum(x, 0).to_vector();
    CHECK(detail::parallel_jobs() - jobs0 == (threads > 1 ? 1u : 0u));
    size_t bad_sum = 0;
    for (size_t j = 0; j < cols; ++j) {
      float s32 = 0;
      double s64 = 0;
      for (size_t i = 0; i < rows; ++i) {
        s32 += float(xv[i * cols + j]);
        s64 += xv[i * cols + j];
      }
      bad_sum += col_sums[j] != (dt == kFloat32 ? double(s32) : s64);
    }
    CHECK(bad_sum == 0);
  }
  set_num_threads(before);
}

// The streaming copy itself, at every alignment of the destination and lengths around a chunk.
TEST_CASE("elementwise: copy_streaming copies every byte at any alignment and length") {
  std::vector<unsigned char> src(4096 + 256), dst(4096 + 256);
  for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<unsigned char>(i * 131 + 7);
  size_t bad = 0;
  for (size_t offset = 0; offset < 64; ++offset)
    for (size_t len : {size_t(0), size_t(1), size_t(15), size_t(63), size_t(64), size_t(65), size_t(200), size_t(4096)}) {
      std::fill(dst.begin(), dst.end(), 0);
      kernel::copy_streaming(dst.data() + offset, src.data() + 3, len);
      for (size_t i = 0; i < dst.size(); ++i) {
        unsigned char want = i >= offset && i < offset + len ? src[3 + i - offset] : 0;
        bad += dst[i] != want;
      }
    }
  CHECK(bad == 0);
}

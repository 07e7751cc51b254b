// Linear algebra: matmul (2-D, batched 3-D·3-D, 3-D·2-D), mm with every transpose flag, linear
// with/without bias and with 3-D input — values against explicit loops, float64 gradcheck of
// each and of its backward, the affine layer's hand-derived dW, db, dx, fan-out, and errors.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <cstdlib>
#include <functional>
#include <limits>
#include <optional>
#include <random>
#include <thread>
#include <tuple>

#include "engine/blas.hpp"
#include "engine/parallel.hpp"
#include "helpers.hpp"
#include "ops/sgemm.hpp"

using namespace tapegrad;

namespace {

#define GRADCHECK(f, ...) CHECK_GRADCHECK(f, (std::vector<Tensor>{__VA_ARGS__}))

// C[M,N] = op(A)·op(B) by loops; A is stored [M,K] ([K,M] when ta), B [K,N] ([N,K] when tb).
std::vector<double> ref_mm(const std::vector<double>& A, const std::vector<double>& B, size_t M, size_t K,
                           size_t N, bool ta = false, bool tb = false, size_t a_off = 0, size_t b_off = 0) {
  std::vector<double> C(M * N, 0.0);
  for (size_t i = 0; i < M; ++i)
    for (size_t j = 0; j < N; ++j) {
      double acc = 0;
      for (size_t k = 0; k < K; ++k) {
        double a = A[a_off + (ta ? k * M + i : i * K + k)];
        double b = B[b_off + (tb ? j * K + k : k * N + j)];
        acc += a * b;
      }
      C[i * N + j] = acc;
    }
  return C;
}

// Gradcheck of a two-input op's backward as a function of (a, b, dy), with create_graph.
void check_backward_of(const std::function<Tensor(const Tensor&, const Tensor&)>& op, const Tensor& a,
                       const Tensor& b, uint64_t seed) {
  Tensor dy = leaf64(op(a, b).shape(), seed);
  auto f = [op](const std::vector<Tensor>& in) {
    EnableGradGuard with_grad;  // gradcheck's finite differences run under NoGradGuard
    Tensor y = op(in[0], in[1]);
    auto g = grad({y}, {in[0], in[1]}, {in[2]}, false, /*create_graph=*/true);
    return sum(g[0] * g[0]) + sum(g[1] * g[1]);  // nonlinear, so both second-order paths show
  };
  GRADCHECK(f, a, b, dy);
}

}  // namespace

TEST_CASE("linalg: matmul 2-D values and gradcheck") {
  for (auto [M, K, N] : {std::tuple{3, 4, 2}, std::tuple{1, 5, 1}, std::tuple{4, 1, 3}, std::tuple{2, 2, 2}}) {
    INFO("[" << M << "," << K << "]·[" << K << "," << N << "]");
    Tensor a = leaf64({size_t(M), size_t(K)}, 10 + M), b = leaf64({size_t(K), size_t(N)}, 20 + N);
    Tensor c = matmul(a, b);
    CHECK(c.shape() == Shape{size_t(M), size_t(N)});
    check_values(c, ref_mm(a.to_vector(), b.to_vector(), M, K, N), 1e-12);
    auto f = [](const std::vector<Tensor>& in) { return matmul(in[0], in[1]); };
    GRADCHECK(f, a, b);
  }
  check_backward_of([](const Tensor& a, const Tensor& b) { return matmul(a, b); }, leaf64({3, 4}, 30),
                    leaf64({4, 2}, 31), 32);
}

TEST_CASE("linalg: batched matmul 3-D·3-D values and gradcheck") {
  Tensor a = leaf64({2, 3, 4}, 40), b = leaf64({2, 4, 5}, 41);
  Tensor c = matmul(a, b);
  CHECK(c.shape() == Shape{2, 3, 5});
  std::vector<double> expect;
  for (size_t i = 0; i < 2; ++i) {
    auto ci = ref_mm(a.to_vector(), b.to_vector(), 3, 4, 5, false, false, i * 12, i * 20);
    expect.insert(expect.end(), ci.begin(), ci.end());
  }
  check_values(c, expect, 1e-12);
  auto f = [](const std::vector<Tensor>& in) { return matmul(in[0], in[1]); };
  GRADCHECK(f, a, b);
  GRADCHECK(f, leaf64({3, 1, 2}, 42), leaf64({3, 2, 1}, 43));
  check_backward_of([](const Tensor& x, const Tensor& y) { return matmul(x, y); }, leaf64({2, 2, 3}, 44),
                    leaf64({2, 3, 2}, 45), 46);
}

TEST_CASE("linalg: matmul 3-D·2-D values and gradcheck") {
  Tensor a = leaf64({2, 3, 4}, 50), b = leaf64({4, 5}, 51);
  Tensor c = matmul(a, b);
  CHECK(c.shape() == Shape{2, 3, 5});
  check_values(c, ref_mm(a.to_vector(), b.to_vector(), 6, 4, 5), 1e-12);  // the batch folds into rows
  auto f = [](const std::vector<Tensor>& in) { return matmul(in[0], in[1]); };
  GRADCHECK(f, a, b);
  check_backward_of([](const Tensor& x, const Tensor& y) { return matmul(x, y); }, leaf64({2, 2, 3}, 52),
                    leaf64({3, 2}, 53), 54);
}

TEST_CASE("linalg: mm with every transpose flag combination") {
  const size_t M = 3, K = 4, N = 2;
  uint64_t seed = 60;
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      INFO("ta=" << ta << " tb=" << tb);
      Tensor a = leaf64(ta ? Shape{K, M} : Shape{M, K}, seed++), b = leaf64(tb ? Shape{N, K} : Shape{K, N}, seed++);
      Tensor c = mm(a, b, ta, tb);
      CHECK(c.shape() == Shape{M, N});
      check_values(c, ref_mm(a.to_vector(), b.to_vector(), M, K, N, ta, tb), 1e-12);
      // the same product with explicit transposes
      Tensor c2 = matmul(ta ? transpose(a, 0, 1) : a, tb ? transpose(b, 0, 1) : b);
      check_values(c, c2.to_vector(), 1e-12);
      auto f = [ta, tb](const std::vector<Tensor>& in) { return mm(in[0], in[1], ta, tb); };
      GRADCHECK(f, a, b);
      check_backward_of([ta, tb](const Tensor& x, const Tensor& y) { return mm(x, y, ta, tb); }, a, b, seed++);
    }
}

TEST_CASE("linalg: linear with and without bias, 1-D/2-D/3-D input, values and gradcheck") {
  Tensor x = leaf64({3, 4}, 70), W = leaf64({4, 2}, 71), b = leaf64({2}, 72);
  std::vector<double> xw = ref_mm(x.to_vector(), W.to_vector(), 3, 4, 2), bv = b.to_vector();
  std::vector<double> xwb = xw;
  for (size_t i = 0; i < 3; ++i)
    for (size_t j = 0; j < 2; ++j) xwb[i * 2 + j] += bv[j];
  check_values(linear(x, W, b), xwb, 1e-12);
  check_values(linear(x, W), xw, 1e-12);
  CHECK(linear(x, W, b).shape() == Shape{3, 2});

  Tensor x3 = leaf64({2, 3, 4}, 73);
  Tensor y3 = linear(x3, W, b);
  CHECK(y3.shape() == Shape{2, 3, 2});
  std::vector<double> e3 = ref_mm(x3.to_vector(), W.to_vector(), 6, 4, 2);
  for (size_t i = 0; i < 6; ++i)
    for (size_t j = 0; j < 2; ++j) e3[i * 2 + j] += bv[j];
  check_values(y3, e3, 1e-12);
  Tensor x1 = leaf64({4}, 74);
  CHECK(linear(x1, W, b).shape() == Shape{2});

  auto with_b = [](const std::vector<Tensor>& in) { return linear(in[0], in[1], in[2]); };
  auto no_b = [](const std::vector<Tensor>& in) { return linear(in[0], in[1]); };
  GRADCHECK(with_b, x, W, b);
  GRADCHECK(no_b, x, W);
  GRADCHECK(with_b, x3, W, b);
  GRADCHECK(no_b, x3, W);
  GRADCHECK(with_b, x1, W, b);
  GRADCHECK(with_b, x.detach(), W, b);  // only the parameters need gradients
  GRADCHECK(with_b, x, W.detach(), b.detach());
  check_backward_of([](const Tensor& in, const Tensor& w) { return linear(in, w); }, leaf64({3, 2}, 75),
                    leaf64({2, 3}, 76), 77);
  auto gg = [](const std::vector<Tensor>& in) {
    EnableGradGuard with_grad;
    Tensor y = tanh(linear(in[0], in[1], in[2]));
    auto g = grad({sum(y * y)}, {in[0], in[1], in[2]}, {}, false, /*create_graph=*/true);
    return sum(g[0]) + sum(g[1] * g[1]) + sum(g[2] * g[2]);
  };
  GRADCHECK(gg, leaf64({2, 3}, 78), leaf64({3, 2}, 79), leaf64({2}, 80));

  // float32 agrees with the float64 reference
  Tensor x32 = from_vector(x.to_vector(), {3, 4}), W32 = from_vector(W.to_vector(), {4, 2}),
         b32 = from_vector(bv, {2});
  check_values(linear(x32, W32, b32), xwb, 1e-5);
}

TEST_CASE("linalg: the affine layer's hand-derived dW, db, dx against explicit loops") {
  const size_t B = 3, K = 4, N = 2;
  Tensor x = leaf64({B, K}, 90), W = leaf64({K, N}, 91), b = leaf64({N}, 92);
  Tensor dout = tensor({{1.0, -2.0}, {0.5, 3.0}, {-1.5, 0.25}}, kFloat64);
  linear(x, W, b).backward(dout);
  std::vector<double> xv = x.to_vector(), Wv = W.to_vector(), dv = dout.to_vector();
  std::vector<double> db(N, 0.0), dW(K * N, 0.0), dx(B * K, 0.0);
  for (size_t i = 0; i < B; ++i)
    for (size_t n = 0; n < N; ++n) db[n] += dv[i * N + n];  // db = Σ_batch dout
  for (size_t k = 0; k < K; ++k)
    for (size_t n = 0; n < N; ++n)
      for (size_t i = 0; i < B; ++i) dW[k * N + n] += xv[i * K + k] * dv[i * N + n];  // dW = xᵀ·dout
  for (size_t i = 0; i < B; ++i)
    for (size_t k = 0; k < K; ++k)
      for (size_t n = 0; n < N; ++n) dx[i * K + k] += dv[i * N + n] * Wv[k * N + n];  // dx = dout·Wᵀ
  check_values(b.grad(), db, 1e-12);
  check_values(W.grad(), dW, 1e-12);
  check_values(x.grad(), dx, 1e-12);
  check_values(b.grad(), {0.0, 1.25}, 1e-12);  // by hand: 1 + 0.5 - 1.5, -2 + 3 + 0.25

  // matmul + add gives the same gradients as the fused op
  Tensor x2 = x.detach().requires_grad_(), W2 = W.detach().requires_grad_(), b2 = b.detach().requires_grad_();
  (matmul(x2, W2) + b2).backward(dout);
  check_values(x2.grad(), dx, 1e-12);
  check_values(W2.grad(), dW, 1e-12);
  check_values(b2.grad(), db, 1e-12);
}

TEST_CASE("linalg: W shared by two linear calls accumulates both contributions") {
  Tensor W = leaf64({3, 2}, 100), b = leaf64({2}, 101);
  Tensor x1 = leaf64({4, 3}, 102), x2 = leaf64({2, 3}, 103);
  Tensor d1 = leaf64({4, 2}, 104).detach(), d2 = leaf64({2, 2}, 105).detach();
  Tensor loss = sum(linear(x1, W, b) * d1) + sum(linear(x2, W) * d2);
  loss.backward();
  // dW = x1ᵀ·d1 + x2ᵀ·d2      db = Σ d1 (only the first call has a bias)
  std::vector<double> e1 = ref_mm(x1.to_vector(), d1.to_vector(), 3, 4, 2, /*ta=*/true);
  std::vector<double> e2 = ref_mm(x2.to_vector(), d2.to_vector(), 3, 2, 2, /*ta=*/true);
  for (size_t i = 0; i < e1.size(); ++i) e1[i] += e2[i];
  check_values(W.grad(), e1, 1e-12);
  std::vector<double> dv = d1.to_vector();
  check_values(b.grad(), {dv[0] + dv[2] + dv[4] + dv[6], dv[1] + dv[3] + dv[5] + dv[7]}, 1e-12);
  check_values(x1.grad(), ref_mm(d1.to_vector(), W.to_vector(), 4, 2, 3, false, /*tb=*/true), 1e-12);

  auto f = [](const std::vector<Tensor>& in) { return linear(tanh(linear(in[0], in[1], in[2])), in[3]) + linear(in[0], in[1]); };
  GRADCHECK(f, leaf64({2, 3}, 106), leaf64({3, 3}, 107), leaf64({3}, 108), leaf64({3, 3}, 109));
}

TEST_CASE("linalg: empty batches and an empty inner dimension") {
  Tensor W = leaf64({4, 2}, 110), b = leaf64({2}, 111);
  Tensor y = linear(zeros({0, 4}, kFloat64), W, b);
  CHECK(y.shape() == Shape{0, 2});
  sum(y).backward();
  check_values(W.grad(), std::vector<double>(8, 0.0));
  check_values(b.grad(), {0, 0});
  check_values(matmul(zeros({2, 0}, kFloat64), zeros({0, 3}, kFloat64)), std::vector<double>(6, 0.0));
  CHECK(matmul(zeros({2, 0, 4}, kFloat64), zeros({4, 3}, kFloat64)).shape() == Shape{2, 0, 3});
}

TEST_CASE("linalg: errors name the op and the shapes") {
  Tensor a = zeros({2, 3}), b = zeros({4, 5});
  CHECK_THROWS_WITH_AS(matmul(a, b), doctest::Contains("matmul: shapes [2,3] and [4,5] do not align"), Error);
  CHECK_THROWS_WITH_AS(mm(a, b), doctest::Contains("matmul: shapes [2,3] and [4,5] do not align"), Error);
  CHECK_THROWS_WITH_AS(mm(a, zeros({3, 3}), true, false), doctest::Contains("matmul: shapes [2,3]ᵀ and [3,3] do not align"), Error);
  CHECK_THROWS_WITH_AS(mm(a, zeros({3, 4}), false, true), doctest::Contains("matmul: shapes [2,3] and [3,4]ᵀ do not align"), Error);
  CHECK_THROWS_WITH_AS(matmul(zeros({2, 3, 4}), zeros({2, 5, 6})), doctest::Contains("matmul: shapes [2,3,4] and [2,5,6] do not align"), Error);
  CHECK_THROWS_WITH_AS(matmul(zeros({2, 3, 4}), zeros({3, 4, 5})), doctest::Contains("matmul: batch sizes of [2,3,4] and [3,4,5] differ"), Error);
  CHECK_THROWS_WITH_AS(matmul(zeros({2, 3, 4}), zeros({5, 6})), doctest::Contains("matmul: shapes [2,3,4] and [5,6] do not align"), Error);
  CHECK_THROWS_WITH_AS(matmul(zeros({3}), zeros({3, 2})), doctest::Contains("matmul: supports 2-D·2-D, 3-D·3-D and 3-D·2-D operands, got [3] and [3,2]"), Error);
  CHECK_THROWS_WITH_AS(mm(zeros({2, 3, 4}), b), doctest::Contains("matmul: mm needs 2-D operands, got [2,3,4] and [4,5]"), Error);
  CHECK_THROWS_WITH_AS(matmul(a, zeros({3, 2}, kFloat64)), doctest::Contains("matmul: dtypes differ"), Error);
  CHECK_THROWS_WITH_AS(matmul(from_indices({1, 2}, {1, 2}), zeros({2, 1})), doctest::Contains("matmul: int64 tensor of shape [1,2]"), Error);

  Tensor x = zeros({3, 4}), W = zeros({4, 2});
  CHECK_THROWS_WITH_AS(linear(x, W, zeros({3})), doctest::Contains("linear: shapes x [3,4], W [4,2], b [3] do not fit"), Error);
  CHECK_THROWS_WITH_AS(linear(x, W, zeros({1, 2})), doctest::Contains("linear: shapes x [3,4], W [4,2], b [1,2] do not fit"), Error);
  CHECK_THROWS_WITH_AS(linear(x, zeros({5, 2})), doctest::Contains("linear: shapes x [3,4], W [5,2], b none do not fit"), Error);
  CHECK_THROWS_WITH_AS(linear(x, zeros({4})), doctest::Contains("linear: shapes x [3,4], W [4]"), Error);
  CHECK_THROWS_WITH_AS(linear(x, zeros({4, 2}, kFloat64)), doctest::Contains("linear: dtypes differ"), Error);
  CHECK_THROWS_WITH_AS(linear(x, W, zeros({2}, kFloat64)), doctest::Contains("linear: dtypes differ"), Error);
  CHECK_THROWS_WITH_AS(linear(scalar_tensor(1.0), W), doctest::Contains("linear: shapes x []"), Error);
}

// Sets detail::set_product_cut for a scope, then back to the default (measure).
struct ProductCutPolicy {
  explicit ProductCutPolicy(detail::ProductCut p) { detail::set_product_cut(p); }
  ~ProductCutPolicy() { detail::set_product_cut(detail::ProductCut::measure); }
};

// At n threads (set_num_threads) a product of 10⁵ multiply-adds or more is cut into blocks of its
// output's rows, or columns when it is wider than tall, in multiples of 16, computed side by side
// (ops/linalg.cpp). The values and gradients are those of one thread up to the rounding of sums
// over K: OpenBLAS may sum a block in another order than the whole (seen: float32 up to 4 ulps on
// Zen; float64 2 ulps on its SkylakeX kernels, for blocks of columns, where Zen's were bit for bit).
TEST_CASE("linalg: at 2 threads products are cut into blocks, with the values and gradients of 1 thread") {
  const int before = get_num_threads();
  const ProductCutPolicy always(detail::ProductCut::always);  // products on the kernel too, not as measured
  const LanePolicyGuard lane(detail::LanePolicy::always);
  struct Case { size_t M, K, N; };
  const std::vector<Case> cases = {
      {64, 48, 40},   // C by rows: 2 blocks of 32
      {20, 64, 96},   // C by columns: 2 blocks of 48
      {37, 70, 53},   // C by columns, 32 + 21
      {130, 40, 24},  // C by rows, 64 + 66 (the last block takes the rest)
      {8, 600, 24},   // 115,200 multiply-adds: C [8,24] has no 16 rows or columns to spare, dA and dB do
      {30, 40, 50},   // 60,000 multiply-adds: under the threshold, nothing is cut
  };
  for (Dtype dt : {kFloat32, kFloat64})
    for (const Case& c : cases)
      for (int flags = 0; flags < 4; ++flags) {
        const bool ta = flags & 1, tb = flags & 2;
        CAPTURE(c.M); CAPTURE(c.K); CAPTURE(c.N); CAPTURE(ta); CAPTURE(tb); CAPTURE(std::string(dtype_name(dt)));
        std::vector<double> av = leaf64(ta ? Shape{c.K, c.M} : Shape{c.M, c.K}, 7).to_vector();
        std::vector<double> bv = leaf64(tb ? Shape{c.N, c.K} : Shape{c.K, c.N}, 8).to_vector();
        std::vector<double> wv = leaf64({c.M, c.N}, 9).to_vector();
        // value, and gradients through a product whose output is used twice (dA, dB accumulate).
        // The product's operands are the leaves themselves, whose gradients' products a helper
        // runs on the sweep's lane at 2 threads (Backward::add_into_later), in their blocks one
        // after another; or a·1 and b·1, whose gradients' products are cut like the forward's.
        for (bool leaves : {false, true}) {
          CAPTURE(leaves);
          auto run = [&](int threads) {
            set_num_threads(threads);
            Tensor a0 = from_vector(av, ta ? Shape{c.K, c.M} : Shape{c.M, c.K}, dtype(dt).requires_grad());
            Tensor b0 = from_vector(bv, tb ? Shape{c.N, c.K} : Shape{c.K, c.N}, dtype(dt).requires_grad());
            Tensor a = leaves ? a0 : a0 * 1.0, b = leaves ? b0 : b0 * 1.0;
            Tensor w = from_vector(wv, {c.M, c.N}, dt);
            Tensor y = mm(a, b, ta, tb);
            (sum(y * w) + sum(mm(a, b, ta, tb))).backward();
            return std::vector<std::vector<double>>{y.to_vector(), a0.grad().to_vector(), b0.grad().to_vector()};
          };
          auto one = run(1);
          const unsigned long long jobs0 = detail::parallel_jobs();
          const uint64_t on_lane0 = detail::lane_posted();
          auto two = run(2);
          // Two products forward; backward, dA [M,K] and dB [K,N] of each. All have M·K·N multiply-adds.
          const bool big = double(c.M * c.K * c.N) >= 1e5;
          auto cut = [&](size_t rows, size_t cols) { return big && std::max(rows, cols) >= 32 ? 2u : 0u; };
          CHECK(detail::parallel_jobs() - jobs0 == cut(c.M, c.N) + (leaves ? 0u : cut(c.M, c.K) + cut(c.K, c.N)));
          CHECK(detail::lane_posted() - on_lane0 == (leaves && big ? 4u : 0u));
          for (size_t q = 0; q < 3; ++q) {
            CAPTURE(q);
            REQUIRE(two[q].size() == one[q].size());
            double scale = 0, worst = 0;
            for (double x : one[q]) scale = std::max(scale, std::fabs(x));
            for (size_t i = 0; i < one[q].size(); ++i) worst = std::max(worst, std::fabs(two[q][i] - one[q][i]));
            // some 16 ulps of the largest entry: sums over K rounded apart
            CHECK(worst <= (dt == kFloat64 ? 4e-15 : 1e-6) * scale);
          }
          std::vector<double> want = ref_mm(av, bv, c.M, c.K, c.N, ta, tb);
          if (dt == kFloat32)
            for (double& x : want) x = double(float(x));
          check_values(from_vector(two[0], {c.M, c.N}, kFloat64), want, dt == kFloat32 ? 1e-4 : 1e-12);
        }
      }
  set_num_threads(before);
  CHECK(get_num_threads() == before);
  CHECK_THROWS_WITH_AS(set_num_threads(0), doctest::Contains("set_num_threads: need at least 1 thread, got 0"), Error);
}

// Operands of C = alpha·op(A)·op(B) + beta·C for the kernels' tests, stored with row strides
// wider than the matrices (the gaps hold NaN, so a read of one shows), and C random where beta
// reads it, else NaN (it must not be read).
struct KernelOperands {
  size_t M, N, K;
  bool ta, tb;
  float alpha, beta;
  size_t lda, ldb, ldc;
  std::vector<float> A, B, C0;  // C0: C before the product

  KernelOperands(size_t M_, size_t N_, size_t K_, bool ta_, bool tb_, float alpha_, float beta_, std::mt19937& rng)
      : M(M_), N(N_), K(K_), ta(ta_), tb(tb_), alpha(alpha_), beta(beta_) {
    const float nan = std::numeric_limits<float>::quiet_NaN();
    std::uniform_real_distribution<float> U(-1.0f, 1.0f);
    const size_t ar = ta ? K : M, ac = ta ? M : K, br = tb ? N : K, bc = tb ? K : N;
    lda = ac + 3, ldb = bc + 1, ldc = N + 2;
    A.assign(ar * lda, nan), B.assign(br * ldb, nan), C0.assign(M * ldc, nan);
    for (size_t r = 0; r < ar; ++r)
      for (size_t q = 0; q < ac; ++q) A[r * lda + q] = U(rng);
    for (size_t r = 0; r < br; ++r)
      for (size_t q = 0; q < bc; ++q) B[r * ldb + q] = U(rng);
    if (beta != 0.0f)
      for (size_t i = 0; i < M; ++i)
        for (size_t j = 0; j < N; ++j) C0[i * ldc + j] = U(rng);
  }

  // Entries of C off the sum in double by more than its rounding allows (the error of a sum of K
  // terms scales with Σ|a·b|), and entries of the gaps that were written.
  size_t wrong(const std::vector<float>& C) const {
    size_t bad = 0;
    for (size_t i = 0; i < M; ++i) {
      for (size_t j = 0; j < N; ++j) {
        double sum = 0, size = 0;
        for (size_t k = 0; k < K; ++k) {
          double a = A[ta ? k * lda + i : i * lda + k], b = B[tb ? j * ldb + k : k * ldb + j];
          sum += a * b;
          size += std::fabs(a * b);
        }
        const double c0 = beta != 0.0f ? double(C0[i * ldc + j]) : 0.0;
        const double want = double(alpha) * sum + double(beta) * c0;
        const double tol = double(K + 2) * 6e-8 * (std::fabs(double(alpha)) * size + std::fabs(c0)) + 1e-30;
        if (!(std::fabs(double(C[i * ldc + j]) - want) <= tol)) ++bad;
      }
      for (size_t j = N; j < ldc; ++j) bad += !std::isnan(C[i * ldc + j]);  // the gaps stay unwritten
    }
    return bad;
  }
};

// The kernel alone, against sums in double, in every layout the build has (6-row tiles on AVX2;
// 12-row, and 8-row reading B in place, on AVX-512), whichever this CPU runs: C = alpha·op(A)·op(B)
// + beta·C for tiles of 1–12 rows and more, panels of 16 and 32 columns and parts of one (a part of
// at most half a panel runs on one register), K with and without a tail of the 8×8 transpose,
// operands read in place with row strides wider than the matrix (the gaps hold NaN, so a read of one
// shows), and beta = 0 over a C of NaN (C must not be read). The layouts give the same bits.
TEST_CASE("linalg: sgemm, tapegrad's float32 kernel, against double sums: tiles, panels, strides, alpha and beta") {
  if (!kernel::kHasSgemm) return;  // a build without AVX2 and FMA: BLAS runs every product
  std::mt19937 rng(11);
  struct AB { float alpha, beta; };
  const std::vector<AB> scalars = {{1.0f, 0.0f}, {1.0f, 1.0f}, {-0.01f, 0.999f}};
  const std::vector<kernel::SgemmLayout> layouts = kernel::sgemm_layouts();
  const kernel::SgemmLayout mine = kernel::sgemm_layout();
  CHECK(std::any_of(layouts.begin(), layouts.end(),
                    [&](const kernel::SgemmLayout& l) { return l.rows == mine.rows && l.b_in_place == mine.b_in_place; }));
  size_t cases = 0;
  for (size_t M : {1, 2, 5, 6, 7, 11, 12, 13, 32})
    for (size_t N : {1, 15, 16, 17, 31, 32, 33, 40, 128})
      for (size_t K : {1, 7, 8, 9, 70, 512})
        for (int flags = 0; flags < 4; ++flags)
          for (const AB& s : scalars) {
            const bool ta = flags & 1, tb = flags & 2;
            const KernelOperands o(M, N, K, ta, tb, s.alpha, s.beta, rng);
            std::vector<float> C = o.C0;
            CAPTURE(M); CAPTURE(N); CAPTURE(K); CAPTURE(ta); CAPTURE(tb); CAPTURE(s.alpha); CAPTURE(s.beta);
            REQUIRE(kernel::sgemm_takes(M, N, K));
            const unsigned long long calls0 = detail::sgemm_calls();
            kernel::sgemm(o.A.data(), o.B.data(), C.data(), M, N, K, o.lda, o.ldb, o.ldc, ta, tb, s.alpha, s.beta,
                          layouts.front());
            CHECK(detail::sgemm_calls() - calls0 == 1u);
            for (size_t l = 1; l < layouts.size(); ++l) {
              std::vector<float> Cl = o.C0;
              kernel::sgemm(o.A.data(), o.B.data(), Cl.data(), M, N, K, o.lda, o.ldb, o.ldc, ta, tb, s.alpha, s.beta,
                            layouts[l]);
              CAPTURE(layouts[l].rows);
              CHECK(std::memcmp(Cl.data(), C.data(), C.size() * sizeof(float)) == 0);  // NaN gaps compare as bits
            }
            ++cases;
            CHECK(o.wrong(C) == 0u);
          }
  CHECK(cases == 9u * 9u * 6u * 4u * 3u);
}

// The blocked kernel for large products (kernel::sgemm_large), called directly whatever this
// machine's OpenBLAS runs, against sums in double: blocks of k (512: K = 530 and 1030 cross one
// and two), of rows (12 micro-panels: M = 150 crosses one on AVX-512 and two on AVX2) and of
// columns (2048: N = 2100), panels of 32, 16 and fewer columns, strides wider than the matrices
// (the gaps hold NaN), beta = 0 over a C of NaN. Then blocks of C's rows and columns computed
// apart, as at 2 threads, give the whole's bits.
TEST_CASE("linalg: sgemm_large, the blocked float32 kernel, against double sums; its blocks give the whole's bits") {
  if (!kernel::kHasSgemm) return;
  std::mt19937 rng(12);
  struct Case { size_t M, N, K; };
  struct AB { float alpha, beta; };
  for (const Case& c : std::vector<Case>{{150, 40, 530}, {16, 2100, 64}, {13, 33, 1030}, {29, 8, 70}})
    for (int flags = 0; flags < 4; ++flags)
      for (const AB& s : std::vector<AB>{{1.0f, 0.0f}, {-0.01f, 0.999f}}) {
        const bool ta = flags & 1, tb = flags & 2;
        const size_t M = c.M, N = c.N, K = c.K;
        const KernelOperands o(M, N, K, ta, tb, s.alpha, s.beta, rng);
        const size_t lda = o.lda, ldb = o.ldb, ldc = o.ldc;
        const std::vector<float>& A = o.A;
        const std::vector<float>& B = o.B;
        std::vector<float> C = o.C0;
        CAPTURE(M); CAPTURE(N); CAPTURE(K); CAPTURE(ta); CAPTURE(tb); CAPTURE(s.beta);
        const unsigned long long calls0 = detail::sgemm_calls();
        kernel::sgemm_large(A.data(), B.data(), C.data(), M, N, K, lda, ldb, ldc, ta, tb, s.alpha, s.beta);
        CHECK(detail::sgemm_calls() - calls0 == 1u);
        CHECK(o.wrong(C) == 0u);
        // Two blocks of rows, then two of columns, each a product of its own (gemm's cut at 2 threads).
        for (bool by_rows : {true, false}) {
          std::vector<float> D = o.C0;
          const size_t cut = (by_rows ? M : N) / 2;
          for (size_t part = 0; part < 2; ++part) {
            const size_t lo = part ? cut : 0, len = part ? (by_rows ? M : N) - cut : cut;
            if (by_rows)
              kernel::sgemm_large(ta ? A.data() + lo : A.data() + lo * lda, B.data(), D.data() + lo * ldc, len, N, K,
                                  lda, ldb, ldc, ta, tb, s.alpha, s.beta);
            else
              kernel::sgemm_large(A.data(), tb ? B.data() + lo * ldb : B.data() + lo, D.data() + lo, M, len, K, lda,
                                  ldb, ldc, ta, tb, s.alpha, s.beta);
          }
          size_t differ = 0;
          for (size_t i = 0; i < M; ++i)
            for (size_t j = 0; j < N; ++j) differ += std::memcmp(&D[i * ldc + j], &C[i * ldc + j], sizeof(float)) != 0;
          CAPTURE(by_rows);
          CHECK(differ == 0u);
        }
      }
}

// set_num_threads puts OpenBLAS on one thread and ends its idle worker threads (engine/parallel.cpp).
// A program that then asks OpenBLAS itself for threads gets them back: its products stay right.
extern "C" void openblas_set_num_threads(int);
extern "C" int openblas_get_num_threads(void);
TEST_CASE("linalg: OpenBLAS runs on its own threads again when asked after set_num_threads ended them") {
  const int before = get_num_threads();
  const size_t n = 384;  // 56 M multiply-adds: OpenBLAS cuts it among its threads
  Tensor a = leaf64({n, n}, 61), b = leaf64({n, n}, 62);
  set_num_threads(2);
  set_num_threads(1);  // tapegrad cuts nothing; OpenBLAS on one thread, its workers ended
  const std::vector<double> one = mm(a.detach(), b.detach()).to_vector();
  openblas_set_num_threads(2);
  CHECK(openblas_get_num_threads() == 2);
  const std::vector<double> two = mm(a.detach(), b.detach()).to_vector();
  double worst = 0, scale = 0;
  for (size_t i = 0; i < one.size(); ++i) {
    worst = std::max(worst, std::fabs(two[i] - one[i]));
    scale = std::max(scale, std::fabs(one[i]));
  }
  CHECK(worst <= 1e-13 * scale);
  set_num_threads(before);
  CHECK(openblas_get_num_threads() == 1);
}

// Which products sgemm_large takes: only where OpenBLAS's registers hold fewer floats than the
// kernel's, and for a C of at least 16 rows and a panel of columns and sums of at least 64 terms.
TEST_CASE("linalg: sgemm_large takes large products only where OpenBLAS's kernels are narrower") {
  CHECK(detail::blas_float_lanes("Prescott") == 4);
  CHECK(detail::blas_float_lanes("Haswell") == 8);
  CHECK(detail::blas_float_lanes("Zen") == 8);
  CHECK(detail::blas_float_lanes("SkylakeX") == 16);
  CHECK(detail::blas_float_lanes("Cooperlake") == 16);
  CHECK(detail::blas_float_lanes("a core named after this test") == 16);  // unknown: assume the best
  const bool k = kernel::kHasSgemm;
  const size_t panel = 2 * size_t(kernel::kSgemmLanes);
  CHECK(kernel::sgemm_large_takes(512, 2048, 2048, 4) == k);
  CHECK(kernel::sgemm_large_takes(512, 2048, 2048, 8) == (k && kernel::kSgemmLanes == 16));
  CHECK_FALSE(kernel::sgemm_large_takes(512, 2048, 2048, 16));
  CHECK_FALSE(kernel::sgemm_large_takes(15, 2048, 2048, 4));       // fewer than 16 rows
  CHECK_FALSE(kernel::sgemm_large_takes(512, panel - 1, 2048, 4));  // less than a panel of columns
  CHECK(kernel::sgemm_large_takes(512, panel, 2048, 4) == k);
  CHECK_FALSE(kernel::sgemm_large_takes(512, 2048, 63, 4));        // sums of fewer than 64 terms
}

// Through mm: small float32 products run on the kernel, larger ones and float64 on BLAS; and
// a float32 product cut into blocks at 2 threads has the value of 1 thread bit for bit, since each
// entry is summed over k in the same order whichever thread ran its block.
TEST_CASE("linalg: float32 mm runs tapegrad's kernel for K <= 512, M*K <= 65536, M*N <= 131072 and A, C in L2, BLAS beyond; at 2 threads its values are 1 thread's") {
  const int before = get_num_threads();
  set_num_threads(1);  // one kernel call per product, whatever OPENBLAS_NUM_THREADS the run started with
  auto calls_for = [](size_t M, size_t K, size_t N, Dtype dt) {
    Tensor a = from_vector(leaf64({M, K}, 3).to_vector(), {M, K}, dt);
    Tensor b = from_vector(leaf64({K, N}, 4).to_vector(), {K, N}, dt);
    const unsigned long long calls0 = detail::sgemm_calls();
    Tensor c = mm(a, b);
    check_values(c, ref_mm(a.to_vector(), b.to_vector(), M, K, N), dt == kFloat32 ? 1e-4 : 1e-12);
    return detail::sgemm_calls() - calls0;
  };
  const unsigned long long own = kernel::kHasSgemm ? 1 : 0;
  const ProductCutPolicy always(detail::ProductCut::always);  // the count of cuts below, not as measured
  CHECK(calls_for(32, 512, 128, kFloat32) == own);
  CHECK(calls_for(128, 512, 8, kFloat32) == own);   // M·K = 65,536
  // K > 512: BLAS, or the blocked kernel where OpenBLAS's kernels are narrower (sgemm_large_takes)
  const unsigned long long large = kernel::sgemm_large_takes(32, 128, 513, detail::blas_float_lanes()) ? 1 : 0;
  CHECK(calls_for(32, 513, 128, kFloat32) == large);
  CHECK(calls_for(129, 512, 8, kFloat32) == 0u);    // M·K > 65,536
  // M·N = 131,072: A and C take 545 KB, more than a 512 KiB L2 holds
  const bool fits = kernel::l2_bytes() >= sizeof(float) * (512 * 10 + 512 * 256);
  CHECK(calls_for(512, 10, 256, kFloat32) == (fits ? own : 0u));
  CHECK(calls_for(512, 10, 257, kFloat32) == 0u);   // M·N > 131,072
  // The rule itself, for a 512 KiB and a 1 MiB L2: W2's dW 512×256×128 needs 768 KB (A 256 KB, C 512 KB).
  CHECK(kernel::sgemm_takes(512, 256, 128, size_t(1) << 20) == kernel::kHasSgemm);
  CHECK_FALSE(kernel::sgemm_takes(512, 256, 128, size_t(512) << 10));
  CHECK(kernel::sgemm_takes(128, 256, 512, size_t(512) << 10) == kernel::kHasSgemm);  // 384 KB
  CHECK(kernel::sgemm_takes(128, 384, 512, size_t(512) << 10) == kernel::kHasSgemm);  // 448 KB
  CHECK_FALSE(kernel::sgemm_takes(128, 640, 512, size_t(512) << 10));                  // 576 KB
  CHECK_FALSE(kernel::sgemm_takes(512, 257, 128, size_t(64) << 20));                   // M·N cap, any L2
  CHECK(calls_for(32, 128, 128, kFloat64) == 0u);
  for (int flags = 0; flags < 4; ++flags) {
    const bool ta = flags & 1, tb = flags & 2;
    CAPTURE(ta); CAPTURE(tb);
    const size_t M = 32, K = 128, N = 128;  // 524,288 multiply-adds: cut into 2 blocks of columns
    std::vector<double> av = leaf64(ta ? Shape{K, M} : Shape{M, K}, 5).to_vector();
    std::vector<double> bv = leaf64(tb ? Shape{N, K} : Shape{K, N}, 6).to_vector();
    auto run = [&](int threads) {
      set_num_threads(threads);
      Tensor a = from_vector(av, ta ? Shape{K, M} : Shape{M, K}, kFloat32);
      Tensor b = from_vector(bv, tb ? Shape{N, K} : Shape{K, N}, kFloat32);
      return mm(a, b, ta, tb).to_vector();
    };
    const std::vector<double> one = run(1);
    const unsigned long long jobs0 = detail::parallel_jobs();
    const std::vector<double> two = run(2);
    CHECK(detail::parallel_jobs() - jobs0 == 1u);
    if (kernel::kHasSgemm) CHECK(two == one);
  }
  set_num_threads(before);
}

// Backward::add_into: a weight that several products use gets its gradient summed by the gemms
// themselves (beta = 1 into the pending buffer) instead of a summand per product added afterwards.
// Whether a product on the kernel is cut at 2 threads is measured per shape (ops/linalg.cpp): its
// first 64 calls are cut, then some run whole and some cut, timed, and the faster way stays for
// the shape's next 4096 calls, when it is timed again. The values never depend on it; a product on
// BLAS (float64 here) is cut by its size whatever the policy.
TEST_CASE("linalg: at 2 threads a product on the kernel is cut or not as measured for its shape, with 1 thread's values") {
  const int before = get_num_threads();
  std::optional<HelpersFarGuard> near(0);  // the timings run (far, they are skipped: below)
  const size_t M = 32, K = 128, N = 96;  // 393,216 multiply-adds: cut into 2 blocks of columns
  Tensor a = from_vector(leaf64({M, K}, 15).to_vector(), {M, K}, kFloat32);
  Tensor b = from_vector(leaf64({K, N}, 16).to_vector(), {K, N}, kFloat32);
  set_num_threads(1);
  const std::vector<double> one = mm(a, b).to_vector();
  set_num_threads(2);
  auto cuts_in = [&](int calls) {  // of `calls` products, how many were cut; each must equal `one`
    const unsigned long long jobs0 = detail::parallel_jobs();
    size_t differ = 0;
    for (int i = 0; i < calls; ++i) differ += mm(a, b).to_vector() != one;
    CHECK(differ == 0u);
    return detail::parallel_jobs() - jobs0;
  };
  if (kernel::kHasSgemm) {
    // On a thread of its own: this one may still hold a far answer from earlier products (below).
    unsigned long long warm = 0, trials = 0, later = 0, again = 0;
    std::thread([&] {
      warm = cuts_in(64);     // the first calls: cut, as before any measurement
      trials = cuts_in(200);  // at most 6 whole and 26 cut, then as chosen
      later = cuts_in(40);
      // After 4096 calls the shape is timed again (what pays changes with the host's load): whole
      // calls among a chosen cut's, or cut calls among a chosen whole's.
      again = cuts_in(4200);
    }).join();
    CHECK(warm == 64u);
    CHECK((later == 0u || later == 40u));  // decided: the next calls all go the same way
    CHECK(trials >= (later == 40u ? 194u : 1u));
    CHECK(trials <= (later == 40u ? 200u : 26u));
    if (later == 40u) CHECK(again <= 4194u);
    else CHECK(again >= 1u);
  }
  {
    const ProductCutPolicy never(detail::ProductCut::never);
    CHECK(cuts_in(3) == (kernel::kHasSgemm ? 0u : 3u));  // without the kernel, BLAS runs it
    Tensor a64 = from_vector(leaf64({M, K}, 15).to_vector(), {M, K}, kFloat64);
    Tensor b64 = from_vector(leaf64({K, N}, 16).to_vector(), {K, N}, kFloat64);
    const unsigned long long jobs0 = detail::parallel_jobs();
    mm(a64, b64);
    CHECK(detail::parallel_jobs() - jobs0 == 1u);  // BLAS's product: by size alone
  }
  {
    const ProductCutPolicy always(detail::ProductCut::always);
    CHECK(cuts_in(3) == 3u);
  }
  // With the helpers far (detail::helpers_far) every product runs whole from the thread's first,
  // untimed, its shape not even looked up, and far is asked again every 4096 products. (On threads
  // of their own, where the shape is new: the timings are per thread.)
  near.reset();
  if (kernel::kHasSgemm) {
    size_t differ = 0;
    auto cuts = [&](int calls) {
      const unsigned long long jobs0 = detail::parallel_jobs();
      for (int i = 0; i < calls; ++i) differ += mm(a, b).to_vector() != one;
      return detail::parallel_jobs() - jobs0;
    };
    unsigned long long first = 0, after = 0;
    size_t shapes = 1;
    std::thread([&] {
      const HelpersFarGuard far(1);
      first = cuts(64);
      after = cuts(4200);  // past the 4096 products after which far is asked again
      shapes = detail::cut_shapes();
    }).join();
    CHECK(first == 0u);
    CHECK(after == 0u);
    CHECK(shapes == 0u);
    // Near, then far (the host moved the vCPUs apart), then near again: the shape's warm-up calls
    // are cut; far, products run whole until far is asked again, 4096 products on; then the shape
    // takes up its timing where it stopped, whole calls and cut ones.
    unsigned long long warm = 0, while_far = 0, window = 0, near_again = 0;
    std::thread([&] {
      {
        const HelpersFarGuard near_(0);
        warm = cuts(64);
      }
      {
        const HelpersFarGuard far(1);
        while_far = cuts(4200);
      }
      const HelpersFarGuard near_(0);
      window = cuts(3900);       // what is left of the 4096 products begun at call 4097
      near_again = cuts(200);    // timed: some whole, some cut
    }).join();
    CHECK(warm == 64u);
    CHECK(while_far == 0u);
    CHECK(window == 0u);
    CHECK(near_again >= 1u);
    CHECK(near_again <= 199u);
    CHECK(differ == 0u);
  }
  set_num_threads(before);
}

TEST_CASE("linalg: a weight in several products: dW sums every product's xᵀ·dout, added in place by gemm") {
  auto constant = [](const Shape& s, uint64_t seed) { return from_vector(leaf64(s, seed).to_vector(), s, kFloat64); };
  Tensor W = leaf64({3, 2}, 40);
  Tensor x1 = constant({4, 3}, 41), x2 = constant({5, 3}, 42), x3 = constant({2, 3}, 43);
  auto f = [&](const Tensor& w) { return sum(matmul(x1, w)) + sum(matmul(x2, w) * 3.0) + sum(w * w) + sum(linear(x3, w)); };
  uint64_t in_place0 = detail::added_in_place();
  f(W).backward();
  // Swept newest first: linear's dW is stored, w*w's two (dout·w each, ops/elementwise.cpp) and
  // both matmuls' gemms add in place.
  CHECK(detail::added_in_place() - in_place0 == 4);
  // By hand: d/dW Σ(x·W) = xᵀ·1 (each column of dW is the column sums of x), d/dW Σ W² = 2W.
  std::vector<double> w = W.to_vector(), a = x1.to_vector(), b = x2.to_vector(), c = x3.to_vector(), want(6);
  for (size_t k = 0; k < 3; ++k)
    for (size_t n = 0; n < 2; ++n) {
      double s = 2 * w[k * 2 + n];
      for (size_t r = 0; r < 4; ++r) s += a[r * 3 + k];
      for (size_t r = 0; r < 5; ++r) s += 3 * b[r * 3 + k];
      for (size_t r = 0; r < 2; ++r) s += c[r * 3 + k];
      want[k * 2 + n] = s;
    }
  check_values(W.grad(), want, 1e-12);
  CHECK_GRADCHECK([&](const std::vector<Tensor>& t) { return f(t[0]); }, (std::vector<Tensor>{W}));
  // A pending gradient that is not the sweep's alone (here a view: reshape's backward reshapes
  // dout) is left as it is: the product is written apart and summed.
  Tensor V = leaf64({3, 2}, 44);
  auto g = [&](const Tensor& v) { return sum(matmul(x1, v)) + sum(reshape(v, {6}) * 2.0); };
  in_place0 = detail::added_in_place();
  g(V).backward();
  CHECK(detail::added_in_place() == in_place0);
  for (size_t k = 0; k < 3; ++k)
    for (size_t n = 0; n < 2; ++n) want[k * 2 + n] = 2 + a[0 * 3 + k] + a[1 * 3 + k] + a[2 * 3 + k] + a[3 * 3 + k];
  check_values(V.grad(), want, 1e-12);
  CHECK_GRADCHECK([&](const std::vector<Tensor>& t) { return g(t[0]); }, (std::vector<Tensor>{V}));
  // Gradients of gradients through the shared weight: the products are recorded (create_graph).
  CHECK(gradgradcheck([&](const std::vector<Tensor>& t) { return sum(tanh(matmul(x1, t[0]))) + sum(tanh(matmul(x2, t[0]))); },
                      {W}).ok);
}

TEST_CASE("linalg: OpenBLAS's kernel pick, and the OPENBLAS_CORETYPE advice when it fell back to Prescott") {
  // OpenBLAS names its pick; on a build host it is never empty.
  const std::string core = blas_core();
  CHECK(!core.empty());
  // The name follows OPENBLAS_CORETYPE when that is set to a core this CPU can run (scripts set it).
#if defined(__x86_64__) || defined(__i386__)
  if (const char* forced = std::getenv("OPENBLAS_CORETYPE");
      forced && std::string(forced) == "SkylakeX" && __builtin_cpu_supports("avx512f"))
    CHECK(core == "SkylakeX");
#endif
  // Advice only for the fallback, and only what the CPU can run.
  CHECK(detail::blas_coretype_advice("Prescott", true, true) == "SkylakeX");
  CHECK(detail::blas_coretype_advice("Prescott", true, false) == "Haswell");
  CHECK(detail::blas_coretype_advice("Prescott", false, false) == "");
  CHECK(detail::blas_coretype_advice("SkylakeX", true, true) == "");
  CHECK(detail::blas_coretype_advice("Haswell", true, true) == "");
  CHECK(detail::blas_coretype_advice("Zen", true, false) == "");
  CHECK(detail::blas_coretype_advice("", true, true) == "");
}

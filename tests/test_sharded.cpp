// backward_sharded: a batch's loss cut into one shard of rows per thread, each shard's graph
// recorded and swept on its own thread, the gradients summed (engine/node.hpp).
#include <mutex>
#include <set>
#include <thread>
#include <utility>

#include "helpers.hpp"

using namespace tapegrad;

namespace {

// Restores the thread count a test found.
struct ThreadsAt {
  int before = get_num_threads();
  explicit ThreadsAt(int n) { set_num_threads(n); }
  ~ThreadsAt() { set_num_threads(before); }
};

// A batch of n rows x [n,4] through y = tanh(x·W + b), W [4,3], b [3]; loss = Σ_rows Σ_j y² / n.
struct Model {
  int64_t n;
  Tensor x, W, b;
  explicit Model(int64_t rows) : n(rows), x(leaf64({size_t(rows), 4}, 1)), W(leaf64({4, 3}, 2)), b(leaf64({3}, 3)) {
    x.requires_grad_(false);
  }
  std::vector<Tensor> params() const { return {W, b}; }
  // The share of rows [begin, end) with the weights P = {W, b}.
  Tensor loss(const std::vector<Tensor>& P, int64_t begin, int64_t end) const {
    Tensor y = tanh(add(matmul(narrow(x, 0, begin, end - begin), P[0]), P[1]));
    return sum(mul(y, y)) / double(n);
  }
  // The same by hand: dW = xᵀ·dpre, db = Σ_rows dpre, dpre = 2y·(1 − y²)/n.
  std::pair<std::vector<double>, std::vector<double>> by_hand() const {
    std::vector<double> dW(12, 0.0), db(3, 0.0);
    const double* xd = x.data_ptr<double>();
    const double* Wd = W.data_ptr<double>();
    const double* bd = b.data_ptr<double>();
    for (int64_t r = 0; r < n; ++r)
      for (int j = 0; j < 3; ++j) {
        double pre = bd[j];
        for (int i = 0; i < 4; ++i) pre += xd[r * 4 + i] * Wd[i * 3 + j];
        const double y = std::tanh(pre), dpre = 2 * y * (1 - y * y) / double(n);
        db[j] += dpre;
        for (int i = 0; i < 4; ++i) dW[i * 3 + j] += xd[r * 4 + i] * dpre;
      }
    return {dW, db};
  }
  double loss_by_hand() const {
    double total = 0;
    const double* xd = x.data_ptr<double>();
    for (int64_t r = 0; r < n; ++r)
      for (int j = 0; j < 3; ++j) {
        double pre = b.data_ptr<double>()[j];
        for (int i = 0; i < 4; ++i) pre += xd[r * 4 + i] * W.data_ptr<double>()[i * 3 + j];
        total += std::tanh(pre) * std::tanh(pre);
      }
    return total / double(n);
  }
};

}  // namespace

TEST_CASE("backward_sharded: each thread gets its rows and copies of the params; gradients as by hand") {
  for (int threads : {1, 2, 3}) {
    CAPTURE(threads);
    ThreadsAt at(threads);
    Model m(7);
    std::mutex mu;
    std::set<std::pair<int64_t, int64_t>> ranges;
    std::set<std::thread::id> ran_on;
    bool copies = true, shared_storage = true;
    Tensor loss = backward_sharded(m.params(), m.n, [&](const std::vector<Tensor>& P, int64_t begin, int64_t end) {
      {
        std::lock_guard<std::mutex> lock(mu);
        ranges.insert({begin, end});
        ran_on.insert(std::this_thread::get_id());
        copies &= (P[0].impl() == m.W.impl()) == (threads == 1);
        shared_storage &= P[0].data_ptr<double>() == m.W.data_ptr<double>() && P[1].data_ptr<double>() == m.b.data_ptr<double>();
      }
      return m.loss(P, begin, end);
    });
    const std::set<std::pair<int64_t, int64_t>> want_ranges =
        threads == 1 ? std::set<std::pair<int64_t, int64_t>>{{0, 7}}
        : threads == 2 ? std::set<std::pair<int64_t, int64_t>>{{0, 3}, {3, 7}}
                       : std::set<std::pair<int64_t, int64_t>>{{0, 2}, {2, 4}, {4, 7}};
    CHECK(ranges == want_ranges);
    CHECK(copies);
    CHECK(shared_storage);
    CHECK(ran_on.size() <= size_t(threads));
    CHECK_FALSE(loss.requires_grad());
    CHECK(loss.item() == doctest::Approx(m.loss_by_hand()).epsilon(1e-12));
    auto [dW, db] = m.by_hand();
    check_values(m.W.grad(), dW, 1e-12);
    check_values(m.b.grad(), db, 1e-12);
  }
}

TEST_CASE("backward_sharded: the same gradients as one backward over the batch, the same every call") {
  ThreadsAt at(2);
  Model whole(9), split(9);
  whole.loss(whole.params(), 0, whole.n).backward();
  auto loss_of = [&](const std::vector<Tensor>& P, int64_t begin, int64_t end) { return split.loss(P, begin, end); };
  backward_sharded(split.params(), split.n, loss_of);
  for (size_t i = 0; i < 2; ++i) {
    const Tensor &a = whole.params()[i].grad(), &g = split.params()[i].grad();
    for (size_t k = 0; k < a.numel(); ++k) CHECK(g.data_ptr<double>()[k] == doctest::Approx(a.data_ptr<double>()[k]).epsilon(1e-13));
  }
  // A second call adds into .grad(), as backward() does, and adds the same values bit for bit.
  const std::vector<double> first(split.W.grad().data_ptr<double>(), split.W.grad().data_ptr<double>() + 12);
  backward_sharded(split.params(), split.n, loss_of);
  for (size_t k = 0; k < 12; ++k) CHECK(split.W.grad().data_ptr<double>()[k] == 2 * first[k]);
}

TEST_CASE("backward_sharded: hooks see the summed gradient once; the optimizer's step in backward applies it") {
  ThreadsAt at(2);
  Model m(6), ref(6);
  int calls = 0;
  Tensor seen;
  HookHandle h = register_hook(m.b, [&](const Tensor& g) {
    ++calls;
    seen = clone(g);
    return Tensor();
  });
  ref.loss(ref.params(), 0, ref.n).backward();
  const Tensor dW = clone(ref.W.grad()), db = clone(ref.b.grad());
  {
    // b's hook runs, then its step; W gets the step only.
    const Tensor W0 = clone(m.W), b0 = clone(m.b);
    optim::SGD sgd(m.params(), 0.5, optim::SGDOptions{.in_backward = true});
    backward_sharded(m.params(), m.n, [&](const std::vector<Tensor>& P, int64_t begin, int64_t end) { return m.loss(P, begin, end); });
    CHECK(calls == 1);
    check_values(seen, std::vector<double>(db.data_ptr<double>(), db.data_ptr<double>() + 3), 1e-13);
    CHECK_FALSE(m.W.grad().defined());  // the step took the gradient instead
    for (size_t k = 0; k < 12; ++k)
      CHECK(m.W.data_ptr<double>()[k] == doctest::Approx(W0.data_ptr<double>()[k] - 0.5 * dW.data_ptr<double>()[k]).epsilon(1e-13));
    for (size_t k = 0; k < 3; ++k)
      CHECK(m.b.data_ptr<double>()[k] == doctest::Approx(b0.data_ptr<double>()[k] - 0.5 * db.data_ptr<double>()[k]).epsilon(1e-13));
  }
  h.remove();
}

TEST_CASE("backward_sharded: bad calls and a shard's error leave every parameter and gradient as they were") {
  for (int threads : {1, 2}) {
    CAPTURE(threads);
    ThreadsAt at(threads);
    Model m(5);
    auto ok = [&](const std::vector<Tensor>& P, int64_t begin, int64_t end) { return m.loss(P, begin, end); };
    CHECK_THROWS_WITH_AS(backward_sharded(m.params(), 0, ok), doctest::Contains("backward_sharded: need a batch of at least 1 row, got 0"), Error);
    CHECK_THROWS_WITH_AS(backward_sharded({m.W, m.x}, 5, ok), doctest::Contains("params[1] (shape [5,4]) must be a leaf that requires grad"), Error);
    CHECK_THROWS_WITH_AS(backward_sharded({m.W, m.W}, 5, ok), doctest::Contains("params[0] and params[1] are the same tensor"), Error);
    {
      NoGradGuard no_grad;
      CHECK_THROWS_WITH_AS(backward_sharded(m.params(), 5, ok), doctest::Contains("backward_sharded: called under NoGradGuard"), Error);
    }
    CHECK_THROWS_WITH_AS(backward_sharded(m.params(), 5,
                                          [&](const std::vector<Tensor>& P, int64_t begin, int64_t end) {
                                            return tanh(matmul(narrow(m.x, 0, begin, end - begin), P[0]));
                                          }),
                         doctest::Contains("backward_sharded: output of shape"), Error);
    // The last shard fails (at 2 threads the other one has computed its gradients by then).
    CHECK_THROWS_WITH_AS(backward_sharded(m.params(), 5,
                                          [&](const std::vector<Tensor>& P, int64_t begin, int64_t end) {
                                            if (end == 5) return matmul(P[0], P[0]);  // [4,3]·[4,3]
                                            return m.loss(P, begin, end);
                                          }),
                         doctest::Contains("matmul"), Error);
    if (threads == 2)
      CHECK_THROWS_WITH_AS(backward_sharded(m.params(), 5,
                                            [&](const std::vector<Tensor>& P, int64_t begin, int64_t end) {
                                              set_num_threads(1);
                                              return m.loss(P, begin, end);
                                            }),
                           doctest::Contains("set_num_threads: called while the threads run a shard"), Error);
    CHECK_FALSE(m.W.grad().defined());
    CHECK_FALSE(m.b.grad().defined());
    CHECK(m.W.data_ptr<double>()[0] == leaf64({4, 3}, 2).data_ptr<double>()[0]);
    // After all that, a good call works.
    backward_sharded(m.params(), m.n, ok);
    auto [dW, db] = m.by_hand();
    check_values(m.W.grad(), dW, 1e-12);
  }
}

TEST_CASE("backward_sharded: a loss that uses the params themselves, not the shard's copies, is refused at 2 threads") {
  ThreadsAt at(2);
  Model m(4);
  CHECK_THROWS_WITH_AS(backward_sharded(m.params(), 4,
                                        [&](const std::vector<Tensor>& P, int64_t begin, int64_t end) {
                                          return m.loss({m.W, P[1]}, begin, end);
                                        }),
                       doctest::Contains("backward_sharded: the loss depends on a leaf of shape [4,3] that requires grad and "
                                         "is not one of the shard's params"),
                       Error);
  CHECK_FALSE(m.W.grad().defined());
  CHECK_FALSE(m.b.grad().defined());
}

TEST_CASE("backward_sharded: one shard where there is one row, or inside a shard") {
  ThreadsAt at(2);
  Model m(1);
  int shards = 0;
  backward_sharded(m.params(), 1, [&](const std::vector<Tensor>& P, int64_t begin, int64_t end) {
    ++shards;
    return m.loss(P, begin, end);
  });
  CHECK(shards == 1);
  check_values(m.W.grad(), m.by_hand().first, 1e-12);
  // Nested: the inner call runs on the outer shard's thread, as one shard, on that shard's copies.
  Model outer(4);
  std::mutex mu;
  std::vector<int64_t> inner_rows;
  backward_sharded(outer.params(), 4, [&](const std::vector<Tensor>& P, int64_t begin, int64_t end) {
    Tensor part = backward_sharded(P, end - begin, [&](const std::vector<Tensor>& Q, int64_t b, int64_t e) {
      std::lock_guard<std::mutex> lock(mu);
      inner_rows.push_back(e - b);
      return outer.loss(Q, begin + b, begin + e);
    });
    Tensor mine = outer.loss(P, begin, end);
    CHECK(part.item() == doctest::Approx(mine.item()).epsilon(1e-14));  // the same rows' loss, as a value
    CHECK_FALSE(part.requires_grad());
    return mine;
  });
  std::sort(inner_rows.begin(), inner_rows.end());
  CHECK(inner_rows == std::vector<int64_t>{2, 2});
  // Each shard's copies got the inner gradient and the outer; only the outer reaches W.grad().
  check_values(outer.W.grad(), outer.by_hand().first, 1e-12);
}

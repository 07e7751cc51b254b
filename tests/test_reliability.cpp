// Reliability: memory that stays put, graphs that free themselves, retain_graph, stale saved
// values, threads, the errors users hit, and regression tests for bugs found by the randomized
// graph tests and the fuzzer (marked "Finding Fn").
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <latch>
#include <string>
#include <chrono>
#include <thread>

#include "engine/parallel.hpp"
#include "helpers.hpp"
#include "ops/sgemm.hpp"

using namespace tapegrad;

namespace {

uint32_t refs(const Tensor& t) { return t.impl()->refs.load(); }

// A small MLP: x [B,I] -> linear -> tanh -> linear -> y [B,1], mean-squared loss.
struct Mlp {
  Tensor W1, b1, W2, b2;
  explicit Mlp(uint64_t seed) {
    W1 = leaf64({8, 16}, seed, -0.5, 0.5);
    b1 = leaf64({16}, seed + 1, -0.1, 0.1);
    W2 = leaf64({16, 1}, seed + 2, -0.5, 0.5);
    b2 = leaf64({1}, seed + 3, -0.1, 0.1);
  }
  std::vector<Tensor> params() const { return {W1, b1, W2, b2}; }
  Tensor loss(const Tensor& x, const Tensor& target) const {
    Tensor h = tanh(linear(x, W1, b1));
    Tensor d = linear(h, W2, b2) - target;
    return mean(d * d);
  }
  // Plain SGD, written as a user would: in place, without recording.
  void step(double lr) {
    NoGradGuard no_grad;
    for (Tensor p : params()) {
      auto v = p.mutable_value<double>();
      v -= lr * p.grad().value<double>();
      p.zero_grad();
    }
  }
};

}  // namespace

// ---- memory ------------------------------------------------------------------------------------

TEST_CASE("1,000 training steps of an MLP: loss falls, graphs are released, memory stays put") {
  Mlp net(7);
  Tensor x = leaf64({32, 8}, 11);
  x.requires_grad_(false);
  Tensor target = sum(tanh(x), 1, true).detach();  // [32,1], a learnable function of x
  double first_loss = 0, last_loss = 0;
  long rss_warm = 0, rss_peak = 0;
  for (int step = 0; step < 1000; ++step) {
    Tensor loss = net.loss(x, target);
    if (step == 0) first_loss = loss.item();
    last_loss = loss.item();
    loss.backward();
    net.step(0.1);
    // after backward the graph is gone: each parameter is held by the net alone
    for (const Tensor& p : net.params()) REQUIRE(refs(p) == 2);  // net's member + params() copy
    if (step == 100) rss_warm = resident_kb();
    if (step > 100) rss_peak = std::max(rss_peak, resident_kb());
  }
  CHECK(last_loss < 0.5 * first_loss);
  INFO("VmRSS after warm-up " << rss_warm << " kB, peak later " << rss_peak << " kB");
  if (!under_sanitizer() && rss_warm > 0)  // ASan's quarantine holds freed memory on purpose
    CHECK(rss_peak - rss_warm < 1024);     // < 1 MB over 900 steps
}

TEST_CASE("a graph whose outputs go out of scope without backward frees everything") {
  Tensor a = leaf64({3, 4}, 1), b = leaf64({4, 2}, 2), c = leaf64({2}, 3);
  Tensor kept_intermediate;
  {
    Tensor h = tanh(matmul(a, b) + c);  // [3,2]
    Tensor fan = h * h + h - h / (h * h + 1.0);
    Tensor out = sum(reshape(fan, {-1}) * 2.0) + sum(reshape(mean(h, 0), {1, 2}));
    kept_intermediate = h;
    CHECK(refs(a) > 1);
    CHECK(refs(c) > 1);
  }
  // h is still held, so its own node (and through it a, b, c) stays: that is the user's choice
  CHECK(refs(a) == 2);
  kept_intermediate = Tensor();
  CHECK(refs(a) == 1);
  CHECK(refs(b) == 1);
  CHECK(refs(c) == 1);
}

// ---- retain_graph ------------------------------------------------------------------------------

TEST_CASE("retain_graph: keeps saved values for another backward; without it they are freed") {
  Tensor x = tensor({0.5, -1.0}, dtype(kFloat64).requires_grad());
  Tensor y = sum(tanh(x) * x);
  y.backward({}, /*retain_graph=*/true);
  std::vector<double> g1 = x.grad().to_vector();
  CHECK(refs(x) > 1);  // still saved by the retained graph
  y.backward();        // accumulates, then frees
  std::vector<double> g2 = x.grad().to_vector();
  for (size_t i = 0; i < g1.size(); ++i) CHECK(g2[i] == doctest::Approx(2 * g1[i]));
  CHECK(refs(x) == 1);  // the graph released its saved values although y is alive
  CHECK_THROWS_WITH_AS(y.backward(), doctest::Contains("second time"), Error);
  CHECK(x.grad().to_vector() == g2);  // nothing lost

  // functional grad() obeys the same rule and never touches .grad()
  Tensor z = sum(x * x * x);
  auto d1 = grad({z}, {x}, {}, /*retain_graph=*/true);
  auto d2 = grad({z}, {x});
  CHECK(d1[0].to_vector() == d2[0].to_vector());
  check_values(d1[0], {0.75, 3.0});
  CHECK_THROWS_WITH_AS(grad({z}, {x}), doctest::Contains("second time"), Error);
  CHECK(x.grad().to_vector() == g2);
}

// ---- stale saved values --------------------------------------------------------------------------

TEST_CASE("modifying a saved input before backward is an error naming the op; nothing is lost") {
  Tensor x = tensor({1.0, 2.0}, dtype(kFloat64).requires_grad());
  Tensor w = tensor({3.0, 4.0}, dtype(kFloat64).requires_grad());
  Tensor y = sum(mul(x, w));
  {
    NoGradGuard no_grad;
    auto v = w.mutable_value<double>();  // bumps w's version: mul saved the old value
    v(0) = 30.0;
  }
  CHECK_THROWS_WITH_AS(y.backward(), doctest::Contains("mul"), Error);
  CHECK_THROWS_WITH_AS(y.backward(), doctest::Contains("modified in place"), Error);  // still refused, not "freed"
  CHECK_FALSE(x.grad().defined());  // nothing was half-accumulated
  CHECK_FALSE(w.grad().defined());

  // an unrelated graph still works, and a fresh graph sees the new value
  Tensor z = sum(mul(x, w));
  z.backward();
  check_values(x.grad(), {30.0, 4.0});
}

TEST_CASE("stale values: a raw write with bump_version, and a write through a view, are detected") {
  Tensor x = tensor({1.0, 2.0, 3.0, 4.0}, dtype(kFloat64).requires_grad());
  Tensor base = tensor({1.0, 1.0, 1.0, 1.0}, kFloat64);
  Tensor v = reshape(base, {2, 2});  // shares base's data and version counter
  Tensor y = sum(tanh(reshape(x, {2, 2}) * v));
  base.data_ptr<double>()[0] = 5.0;
  base.bump_version();
  CHECK_THROWS_WITH_AS(y.backward(), doctest::Contains("mul"), Error);

  // an intermediate saved by its consumer
  Tensor t = tanh(x);
  Tensor s = sum(t * 2.0);
  t.mutable_value<double>()(1) = 0.0;
  CHECK_THROWS_WITH_AS(s.backward(), doctest::Contains("modified in place"), Error);
}

// ---- threads -------------------------------------------------------------------------------------

namespace {
// An independent graph per seed; returns the gradients of its leaves, flattened.
std::vector<double> thread_workload(uint64_t seed, const Tensor& shared_constant) {
  Mlp net(seed);
  Tensor x = leaf64({16, 8}, seed + 100);
  x.requires_grad_(false);
  std::vector<double> out;
  for (int rep = 0; rep < 20; ++rep) {
    Tensor loss = net.loss(x * shared_constant, sum(x, 1, true).detach());
    loss.backward();
    for (const Tensor& p : net.params()) {
      std::vector<double> g = p.grad().to_vector();
      out.insert(out.end(), g.begin(), g.end());
    }
    net.step(0.05);
  }
  return out;
}
}  // namespace

TEST_CASE("threads: independent graphs on 4 threads give exactly the sequential gradients") {
  Tensor shared = full({8}, 0.5, kFloat64);  // read by every thread: only its refcount is shared
  std::vector<std::vector<double>> sequential, parallel(4);
  for (uint64_t i = 0; i < 4; ++i) sequential.push_back(thread_workload(10 * i + 1, shared));
  std::latch start(4);
  std::vector<std::thread> threads;
  for (uint64_t i = 0; i < 4; ++i)
    threads.emplace_back([&, i] {
      start.arrive_and_wait();
      parallel[i] = thread_workload(10 * i + 1, shared);
    });
  for (auto& t : threads) t.join();
  for (size_t i = 0; i < 4; ++i) {
    REQUIRE(parallel[i].size() == sequential[i].size());
    size_t first_diff = parallel[i].size();
    double max_diff = 0;
    for (size_t k = 0; k < parallel[i].size(); ++k)
      if (parallel[i][k] != sequential[i][k]) {
        first_diff = std::min(first_diff, k);
        max_diff = std::max(max_diff, std::fabs(parallel[i][k] - sequential[i][k]));
      }
    INFO("thread " << i << ": first differing gradient entry " << first_diff << " of " << parallel[i].size()
                   << ", max |diff| " << max_diff);
    // bit for bit (before the fix of Finding F4, results depended on the buffers' alignment,
    // which differs between threads' malloc arenas)
    CHECK(parallel[i] == sequential[i]);
  }
  CHECK(refs(shared) == 1);
}

// engine/parallel.cpp: the helpers take parts of one caller's job at a time; a caller that finds
// them busy runs its parts itself. Every part must run exactly once, whoever runs it.
TEST_CASE("threads: run_parts runs every part exactly once, with callers on 4 threads at once") {
  const int before = get_num_threads();
  set_num_threads(3);  // two helpers
  std::atomic<uint64_t> on_helpers{0};  // parts run by a thread other than their job's caller
  auto jobs = [&](int count, uint64_t seed) {
    const auto caller = std::this_thread::get_id();
    uint64_t bad = 0;
    for (int j = 0; j < count; ++j) {
      const int parts = 2 + int((seed + uint64_t(j) * 7) % 6);
      std::vector<int> hits(size_t(parts), 0);  // plain ints: parts write disjoint memory
      std::atomic<int> elsewhere{0};
      const int helped = detail::run_parts(parts, [&](int k) {
        for (volatile int spin = 0; spin < 2000; spin = spin + 1) {}  // a part's worth of work
        hits[size_t(k)] += 1 + k;
        if (std::this_thread::get_id() != caller) ++elsewhere;
      });
      on_helpers += uint64_t(elsewhere);
      bad += helped != elsewhere;  // it returns the parts helpers ran
      for (int k = 0; k < parts; ++k) bad += hits[size_t(k)] != 1 + k;
    }
    return bad;
  };
  const unsigned long long jobs0 = detail::parallel_jobs();
  CHECK(jobs(500, 1) == 0);
  CHECK(detail::parallel_jobs() - jobs0 == 500);
  // The helpers take parts once they are up (a new thread can take milliseconds to start here)
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (on_helpers == 0 && std::chrono::steady_clock::now() < give_up) CHECK(jobs(10, 3) == 0);
  CHECK(on_helpers > 0);
  std::vector<uint64_t> bad(4, 1);
  std::latch start(4);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < 4; ++i)
    threads.emplace_back([&, i] {
      start.arrive_and_wait();
      bad[i] = jobs(3000, i);
    });
  for (auto& t : threads) t.join();
  CHECK(bad == std::vector<uint64_t>(4, 0));
  set_num_threads(1);  // no helper takes part: the caller runs all
  const uint64_t on_helpers1 = on_helpers;
  CHECK(jobs(50, 2) == 0);
  CHECK(on_helpers == on_helpers1);
  set_num_threads(before);
}

// engine/parallel.cpp: a chore goes to a helper, which runs it once, on its own thread, while the
// caller goes on; with no helper (threads = 1) post_chore refuses it and nothing runs.
namespace {
std::atomic<int> chore_runs{0};
std::atomic<bool> chore_elsewhere{false};
std::thread::id chore_poster;
void count_chore() {
  chore_elsewhere = std::this_thread::get_id() != chore_poster;
  ++chore_runs;
}
}  // namespace

TEST_CASE("threads: a posted chore runs once on a helper, and is refused at 1 thread") {
  const int before = get_num_threads();
  chore_poster = std::this_thread::get_id();
  set_num_threads(1);
  CHECK_FALSE(detail::post_chore(count_chore));
  set_num_threads(2);
  for (int round = 1; round <= 3; ++round) {
    bool posted = false;  // a chore of the pool may still be pending: then try again
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (!(posted = detail::post_chore(count_chore)) && std::chrono::steady_clock::now() < give_up)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    REQUIRE(posted);
    while (chore_runs < round && std::chrono::steady_clock::now() < give_up)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    CHECK(chore_runs == round);
    CHECK(chore_elsewhere);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  CHECK(chore_runs == 3);  // each ran once
  set_num_threads(1);
  CHECK_FALSE(detail::post_chore(count_chore));
  CHECK(chore_runs == 3);
  set_num_threads(before);
}

// engine/parallel.hpp: the lane's tasks run one at a time, in the order posted, mostly on a helper
// while the owner goes on; drain() runs what no helper has begun. The owner destroys every task.
namespace {
struct Witness {  // counts its destructions, and those on another thread than its owner's
  std::atomic<int>* destroyed;
  std::atomic<int>* elsewhere;
  std::thread::id owner;
  bool live = true;
  Witness(std::atomic<int>* d, std::atomic<int>* e) : destroyed(d), elsewhere(e), owner(std::this_thread::get_id()) {}
  Witness(Witness&& o) noexcept : destroyed(o.destroyed), elsewhere(o.elsewhere), owner(o.owner) { o.live = false; }
  ~Witness() {
    if (!live) return;
    ++*destroyed;
    if (std::this_thread::get_id() != owner) ++*elsewhere;
  }
};
}  // namespace

TEST_CASE("threads: the lane runs tasks one at a time in the order posted, on a helper; drain runs the rest") {
  const int before = get_num_threads();
  set_num_threads(1);
  CHECK(detail::Lane::acquire() == nullptr);  // no helper to run them
  set_num_threads(2);
  detail::Lane* lane = detail::Lane::acquire();
  REQUIRE(lane != nullptr);
  CHECK(detail::Lane::acquire() == nullptr);  // one owner at a time, the same thread included
  bool other_got_it = true;
  std::thread([&] { other_got_it = detail::Lane::acquire() != nullptr; }).join();
  CHECK_FALSE(other_got_it);

  const int kTasks = 1000;  // more than the lane's 256 slots: the owner waits for, or runs, some
  std::vector<int> order;   // plain: tasks never overlap
  std::atomic<int> running{0}, overlaps{0}, destroyed{0}, elsewhere{0};
  const uint64_t posted0 = detail::lane_posted(), by_helper0 = detail::lane_run_by_helper();
  for (int i = 0; i < kTasks; ++i) {
    lane->post([&, i, w = Witness(&destroyed, &elsewhere)] {
      if (running.fetch_add(1) != 0) ++overlaps;
      for (volatile int spin = 0; spin < 300; spin = spin + 1) {}
      order.push_back(i);
      running.fetch_sub(1);
    });
    if (i == 10) {  // the helper takes tasks once it is up (a new thread can take milliseconds to start here)
      const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(20);
      while (detail::lane_run_by_helper() == by_helper0 && std::chrono::steady_clock::now() < give_up)
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }
  lane->drain();
  std::vector<int> want(kTasks);
  for (int i = 0; i < kTasks; ++i) want[size_t(i)] = i;
  CHECK(order == want);
  CHECK(overlaps == 0);
  CHECK(detail::lane_posted() - posted0 == uint64_t(kTasks));
  CHECK(detail::lane_run_by_helper() > by_helper0);
  CHECK(destroyed == kTasks);  // each once, once it had run, by the owner
  CHECK(elsewhere == 0);
  lane->release();
  std::thread([&] {
    detail::Lane* l = detail::Lane::acquire();
    other_got_it = l != nullptr;
    if (l) l->release();
  }).join();
  CHECK(other_got_it);
  set_num_threads(before);
}

// engine/autograd.cpp: at 2 threads the products that add into leaves' gradients run on the lane
// while the sweep goes on. The gradients are those the sweep gets running them itself (here: while
// this thread holds the lane), bit for bit, and those of 1 thread (bit for bit on tapegrad's own
// kernel; BLAS may round the 2 threads' blocks of a product apart from the whole). An embedding's
// rows (index_select) add up on the lane too, when there are enough of them. The graph also
// reaches the leaves other ways, which must wait for the lane's tasks: Whh squared, a hook on Why
// (which sees the full gradient), and a backward of another graph through Whh in a hook.
TEST_CASE("threads: at 2 threads products into leaves run on the lane, with the sweep's own gradients") {
  const int before = get_num_threads();
  const LanePolicyGuard always(detail::LanePolicy::always);
  const size_t T = 6, B = 32, H = 128, V = 64;  // each product: 128·128·32 multiply-adds; B·H rows' elements
  for (Dtype dt : {kFloat32, kFloat64}) {
    CAPTURE(std::string(dtype_name(dt)));
    auto param = [&](const Shape& s, uint64_t seed) {
      return from_vector(leaf64(s, seed, -0.3, 0.3).to_vector(), s, dtype(dt).requires_grad());
    };
    auto constant = [&](const Shape& s, uint64_t seed) { return from_vector(leaf64(s, seed).to_vector(), s, dt); };
    auto run = [&](int threads, bool hold_lane) {
      set_num_threads(threads);
      Tensor Wxh = param({V, H}, 1), Whh = param({H, H}, 2), b = param({H}, 3), Why = param({H, H}, 4);
      Tensor xc = constant({B, H}, 5);
      auto hook = register_hook(Why, [](const Tensor& g) { return g * 2.0; });
      Tensor h = zeros({B, H}, dt), loss = sum(Whh * Whh) * 0.01;
      for (size_t t = 0; t < T; ++t) {
        std::vector<int64_t> tokens(B);
        for (size_t k = 0; k < B; ++k) tokens[k] = int64_t((k * 7 + t * 13) % V);
        h = tanh(index_select(Wxh, 0, from_indices(tokens, {B})) + matmul(h, Whh) + b);
        if (t == 2)
          register_hook(h, [&](const Tensor&) {
            EnableGradGuard record;  // a sweep records nothing by itself
            sum(matmul(xc, Whh)).backward();
            return Tensor();
          });
        loss = loss + sum(tanh(matmul(h, Why)));
      }
      detail::Lane* held = hold_lane ? detail::Lane::acquire() : nullptr;
      if (hold_lane) REQUIRE(held != nullptr);
      const uint64_t posted0 = detail::lane_posted();
      loss.backward({}, true);
      loss.backward();
      const uint64_t posted = detail::lane_posted() - posted0;
      if (held) held->release();
      std::vector<std::vector<double>> out;
      for (const Tensor& p : {Wxh, Whh, b, Why}) out.push_back(p.grad().to_vector());
      return std::make_pair(out, posted);
    };
    auto [one, posted_one] = run(1, false);
    auto [inline_two, posted_inline] = run(2, true);
    auto [lane_two, posted_lane] = run(2, false);
    CHECK(posted_one == 0u);
    CHECK(posted_inline == 0u);
    CHECK(posted_lane == 2 * 3 * T);  // two backwards; at each step Whh's and Why's products, Wxh's rows
    CHECK(lane_two == inline_two);
    for (size_t q = 0; q < one.size(); ++q) {
      CAPTURE(q);
      double scale = 0, worst = 0;
      for (size_t i = 0; i < one[q].size(); ++i) {
        scale = std::max(scale, std::fabs(one[q][i]));
        worst = std::max(worst, std::fabs(lane_two[q][i] - one[q][i]));
      }
      if (dt == kFloat32 && kernel::kHasSgemm) CHECK(worst == 0.0);
      else CHECK(worst <= 1e-14 * scale);
    }
  }
  set_num_threads(before);
}

// detail::Hold: a timed choice is held for twice as many calls each time a new timing confirms
// it, up to 8 × the base, and for the base again when a timing changes it.
TEST_CASE("threads: a timed choice is held longer while the timings confirm it") {
  detail::Hold hold;
  CHECK(hold.after(true, 512) == 512u);  // the first timing
  CHECK(hold.after(true, 512) == 1024u);
  CHECK(hold.after(true, 512) == 2048u);
  CHECK(hold.after(true, 512) == 4096u);
  CHECK(hold.after(true, 512) == 4096u);  // at most 8×
  CHECK(hold.after(false, 512) == 512u);  // changed
  CHECK(hold.after(false, 4096) == 8192u);
  CHECK(hold.after(true, 4096) == 4096u);
}

// engine/autograd.cpp: by default a thread's backwards take the lane or not as measured: in runs
// of two with it and two without, whose periods from one backward to the next (a training step)
// are timed, then, from the 21st, the faster way for 512 backwards; then the trials start again,
// and the way they find is held for 1024 backwards if it is the same as before, else 512.
// (On a thread of its own: the trials are per thread.) The gradients are the same either way.
// With the helpers far, the trials are skipped: no backward takes the lane (below).
TEST_CASE("threads: whether backward takes the lane is measured over training steps, then held") {
  const int before = get_num_threads();
  const HelpersFarGuard near(0);
  set_num_threads(2);
  std::vector<int> took;  // per backward: 1 if it put its product on the lane
  std::vector<std::vector<double>> grads;
  std::thread([&] {
    Tensor x = from_vector(leaf64({32, 64}, 31).to_vector(), {32, 64}, kFloat32);
    Tensor W = from_vector(leaf64({64, 64}, 32, -0.1, 0.1).to_vector(), {64, 64}, dtype(kFloat32).requires_grad());
    for (int step = 0; step < 1600; ++step) {
      const uint64_t posted0 = detail::lane_posted();
      sum(tanh(matmul(x, W))).backward();  // dW += xᵀ·dout: 64·64·32 multiply-adds
      took.push_back(int(detail::lane_posted() - posted0));
      if (step < 24) grads.push_back(W.grad().to_vector());
      W.zero_grad();
    }
  }).join();
  REQUIRE(took.size() == 1600u);
  auto trials_at = [&](size_t from, size_t n) {  // lane, lane, none, none, lane, ...
    for (size_t k = 0; k < n; ++k) CHECK(took[from + k] == ((k / 2) % 2 == 0 ? 1 : 0));
  };
  auto held_from = [&](size_t from, size_t n) {  // the way decided, n backwards from `from`
    size_t held = 0;
    for (size_t k = from; k < from + n; ++k) held += took[k] == took[from];
    CHECK(held == n);
    return took[from];
  };
  trials_at(0, 20);
  const int first = held_from(20, 512);
  trials_at(532, 20);  // the trials again
  const size_t second_hold = took[552] == first ? 1024 : 512;  // longer when they found the same
  held_from(552, second_hold);
  trials_at(552 + second_hold, 4);
  for (const auto& g : grads) CHECK(g == grads[0]);  // the weights do not move: the same gradient each way
  set_num_threads(before);
}

// detail::helpers_far: with the helpers far from the sweep's thread the lane's trials are skipped
// and the lane left, 512 backwards at a time; near again, the next round's trials run. The
// gradients are those of the lane.
TEST_CASE("threads: with the helpers far, backward leaves the lane without trials") {
  const int before = get_num_threads();
  set_num_threads(2);
  Tensor x = from_vector(leaf64({32, 64}, 31).to_vector(), {32, 64}, kFloat32);
  Tensor W = from_vector(leaf64({64, 64}, 32, -0.1, 0.1).to_vector(), {64, 64}, dtype(kFloat32).requires_grad());
  std::vector<int> took;  // per backward: 1 if it put its product on the lane
  std::vector<double> far_grad, lane_grad;
  std::thread([&] {
    auto step = [&] {
      W.zero_grad();
      const uint64_t posted0 = detail::lane_posted();
      sum(tanh(matmul(x, W))).backward();
      took.push_back(int(detail::lane_posted() - posted0));
    };
    {
      const HelpersFarGuard far(1);
      for (int i = 0; i < 1030; ++i) step();  // rounds begin at backwards 0, 512 and 1024
      far_grad = W.grad().to_vector();
    }
    {
      const HelpersFarGuard near(0);
      for (int i = 1030; i < 1540; ++i) step();  // the round begun far holds to 1535; then trials
    }
    const LanePolicyGuard always(detail::LanePolicy::always);
    step();
    lane_grad = W.grad().to_vector();
  }).join();
  REQUIRE(took.size() == 1541u);
  size_t on_lane = 0;
  for (size_t k = 0; k < 1536; ++k) on_lane += took[k];
  CHECK(on_lane == 0u);
  CHECK(std::vector<int>(took.begin() + 1536, took.begin() + 1540) == std::vector<int>{1, 1, 0, 0});
  CHECK(took[1540] == 1);
  CHECK(far_grad == lane_grad);
  set_num_threads(before);
}

// detail::helpers_round_trip_ns: a cache line's round trip to a helper, measured by a ball passed
// between the two parts of a job; none without a helper.
TEST_CASE("threads: the helpers' round trip is measured at 2 threads, not at 1") {
  const int before = get_num_threads();
  set_num_threads(1);
  const auto t0 = std::chrono::steady_clock::now();
  CHECK(detail::helpers_round_trip_ns() == -1.0);
  // at once: no game is played alone (each would wait 10 ms for a second player)
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::milliseconds(50));
  set_num_threads(2);
  double ns = detail::helpers_round_trip_ns();
  if (!under_sanitizer()) {  // instrumented, a game may outlast its 2 ms
    // A loaded host (ctest runs two cases at once) may keep a player off its CPU for a whole
    // probe, or put the helper beside the caller. On the 2-vCPU VM of 7 Dec 2026, one CPU busy
    // with another process: every one of 20 runs had a reading within 2 s. Both CPUs busy: 13 of
    // 20 runs read -1 in five probes (~0.1 s: a CI failure), 8 of 20 in 2 s. So for up to 5 s.
    for (auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
         ns < 0 && std::chrono::steady_clock::now() < until;)
      ns = detail::helpers_round_trip_ns();
    CHECK(ns > 1.0);  // a cache line crossing cores: tens of ns at the least
    CHECK(ns < 1e5);  // and a 256-trip game within its 2 ms
  }
  const uint64_t jobs0 = detail::parallel_jobs();
  detail::helpers_round_trip_ns();
  CHECK(detail::parallel_jobs() == jobs0);  // its games are not counted as cut work
  set_num_threads(before);
}

// A backward that throws while the lane has products to add: the sweep waits for them, drops every
// pending gradient, and leaves .grad() as it was; the next backward starts clean.
TEST_CASE("threads: a backward that throws with products on the lane leaves the gradients as they were") {
  const int before = get_num_threads();
  const LanePolicyGuard always(detail::LanePolicy::always);
  Tensor x = from_vector(leaf64({32, 64}, 21).to_vector(), {32, 64}, kFloat64);
  Tensor W = leaf64({64, 64}, 22, -0.2, 0.2), V = leaf64({64, 64}, 23, -0.2, 0.2);
  auto loss_of = [&] { return sum(tanh(matmul(tanh(matmul(x, W)), V))); };
  set_num_threads(2);
  loss_of().backward();
  const std::vector<double> dW = W.grad().to_vector(), dV = V.grad().to_vector();
  W.zero_grad();
  V.zero_grad();
  Tensor h = tanh(matmul(x, W));
  register_hook(h, [](const Tensor&) -> Tensor { throw std::runtime_error("hook failed"); });
  Tensor loss = sum(tanh(matmul(h, V)));
  const uint64_t posted0 = detail::lane_posted();
  CHECK_THROWS_WITH_AS(loss.backward(), "hook failed", std::runtime_error);
  CHECK(detail::lane_posted() - posted0 == 1u);  // dV += hᵀ·dout, before h's hook threw
  CHECK_FALSE(W.grad().defined());
  CHECK_FALSE(V.grad().defined());
  CHECK_FALSE(V.impl()->pending);
  CHECK_FALSE(V.impl()->has(TensorImpl::kOnLane));
  loss_of().backward();
  CHECK(W.grad().to_vector() == dW);
  CHECK(V.grad().to_vector() == dV);
  set_num_threads(before);
}

// Products large enough to be cut into blocks (ops/linalg.cpp), from several threads at once: one
// thread's blocks run on the helpers, the others' on their own thread; all are the 1-thread values.
TEST_CASE("threads: products cut into blocks while 4 threads train their own graphs") {
  const int before = get_num_threads();
  auto workload = [](uint64_t seed) {
    Tensor W = leaf64({64, 48}, seed), V = leaf64({48, 40}, seed + 1);
    Tensor x = leaf64({96, 64}, seed + 2);
    x.requires_grad_(false);
    std::vector<double> out;
    for (int rep = 0; rep < 5; ++rep) {
      Tensor loss = sum(tanh(matmul(tanh(matmul(x, W)), V)));
      loss.backward();
      for (Tensor* p : {&W, &V}) {
        std::vector<double> g = p->grad().to_vector();
        out.insert(out.end(), g.begin(), g.end());
        NoGradGuard no_grad;
        auto v = p->mutable_value<double>();
        v -= 0.01 * p->grad().value<double>();
        p->zero_grad();
      }
    }
    return out;
  };
  set_num_threads(1);
  std::vector<std::vector<double>> sequential, parallel(4);
  for (uint64_t i = 0; i < 4; ++i) sequential.push_back(workload(10 * i + 3));
  set_num_threads(2);
  std::latch start(4);
  std::vector<std::thread> threads;
  for (uint64_t i = 0; i < 4; ++i)
    threads.emplace_back([&, i] {
      start.arrive_and_wait();
      parallel[i] = workload(10 * i + 3);
    });
  for (auto& t : threads) t.join();
  for (size_t i = 0; i < 4; ++i) CHECK(parallel[i] == sequential[i]);
  set_num_threads(before);
}

TEST_CASE("threads: grad mode is per thread") {
  Tensor x = tensor({1.0}, requires_grad());
  std::latch guard_on(2), checked(2);
  bool recorded_in_other = false, recorded_under_guard = true;
  std::thread a([&] {
    NoGradGuard no_grad;
    guard_on.arrive_and_wait();
    Tensor y = x * 2.0;
    recorded_under_guard = y.requires_grad();
    checked.arrive_and_wait();
  });
  std::thread b([&] {
    guard_on.arrive_and_wait();  // a's guard is alive now
    Tensor y = x * 2.0;
    recorded_in_other = y.requires_grad();
    checked.arrive_and_wait();
  });
  a.join();
  b.join();
  CHECK_FALSE(recorded_under_guard);
  CHECK(recorded_in_other);
  CHECK(GradMode::is_enabled());  // this thread was never affected
}

// ---- errors users hit ------------------------------------------------------------------------------

TEST_CASE("errors users hit say what to do") {
  Tensor c = tensor({1.0, 2.0});
  CHECK_THROWS_WITH_AS(sum(c * 2.0).backward(), doctest::Contains("does not require grad"), Error);

  Tensor x = tensor({1.0, 2.0}, requires_grad());
  CHECK_THROWS_WITH_AS((x * 2.0).backward(), doctest::Contains("pass a gradient"), Error);
  CHECK_THROWS_WITH_AS((x * 2.0).backward(tensor({1.0})), doctest::Contains("[1]"), Error);

  Tensor y = sum(x * x);
  y.backward();
  CHECK_THROWS_WITH_AS(y.backward(), doctest::Contains("retain_graph=true"), Error);

  Tensor h = x * 3.0;
  sum(h).backward();
  CHECK_FALSE(h.grad().defined());  // non-leaf without retain_grad(): undefined (and a warning)
  CHECK(x.grad().defined());
  CHECK_THROWS_WITH_AS(h.grad().item(), doctest::Contains("undefined tensor"), Error);

  Tensor f32 = ones({2}, kFloat32), f64 = ones({2}, kFloat64), i64 = from_indices({1, 2}, {2});
  CHECK_THROWS_WITH_AS(mul(f32, f64), doctest::Contains("mul: dtypes differ (float"), Error);
  CHECK_THROWS_WITH_AS(add(f32, i64), doctest::Contains("int64"), Error);
  CHECK_THROWS_WITH_AS(tanh(i64), doctest::Contains("tanh"), Error);
  CHECK_THROWS_WITH_AS(matmul(ones({2, 2}, kFloat32), ones({2, 2}, kFloat64)), doctest::Contains("matmul"), Error);
}

TEST_CASE("shape mismatches name the op and both shapes") {
  auto t = [](Shape s) { return ones(s, kFloat64); };
  CHECK_THROWS_WITH_AS(add(t({2, 3}), t({4})), doctest::Contains("add: shapes [2,3] and [4]"), Error);
  CHECK_THROWS_WITH_AS(sub(t({2, 3}), t({3, 2})), doctest::Contains("sub: shapes [2,3] and [3,2]"), Error);
  CHECK_THROWS_WITH_AS(mul(t({5}), t({2, 4})), doctest::Contains("[5]"), Error);
  CHECK_THROWS_WITH_AS(div(t({5}), t({4})), doctest::Contains("div"), Error);
  CHECK_THROWS_WITH_AS(matmul(t({2, 3}), t({4, 5})), doctest::Contains("matmul: shapes [2,3] and [4,5]"), Error);
  CHECK_THROWS_WITH_AS(matmul(t({2}), t({2})), doctest::Contains("matmul"), Error);
  CHECK_THROWS_WITH_AS(linear(t({2, 3}), t({4, 5})), doctest::Contains("linear: shapes x [2,3], W [4,5]"), Error);
  CHECK_THROWS_WITH_AS(linear(t({2, 3}), t({3, 5}), t({4})), doctest::Contains("b [4]"), Error);
  CHECK_THROWS_WITH_AS(reshape(t({2, 3}), {4, 2}), doctest::Contains("reshape: cannot view [2,3] as [4,2]"), Error);
  CHECK_THROWS_WITH_AS(reshape(t({2, 3}), {-1, -1}), doctest::Contains("reshape"), Error);
  CHECK_THROWS_WITH_AS(sum(t({2, 3}), 2), doctest::Contains("sum"), Error);
  CHECK_THROWS_WITH_AS(mean(t({2, 3}), -3), doctest::Contains("mean"), Error);
  CHECK_THROWS_WITH_AS(unsqueeze(t({2, 3}), 4), doctest::Contains("unsqueeze"), Error);
  CHECK_THROWS_WITH_AS(expand(t({2, 3}), Shape{3, 3}), doctest::Contains("expand"), Error);
  CHECK_THROWS_WITH_AS(sum_to(t({2, 3}), Shape{4}), doctest::Contains("sum_to"), Error);
}

// ---- regression tests for findings ----------------------------------------------------------------

// Finding F1 (randomized graphs, seed 7 and 26): sum over axes that are neither a leading nor a
// trailing run — sum([2,3,4], 1), and every broadcast gradient reduced that way, e.g. the grad of a
// [2,1,4] operand added to a [2,3,4] one — crashed (SIGSEGV) in sum_axes: xtensor 0.24.3's
// xt::sum(..., evaluation_strategy::immediate) is broken for such axes.
TEST_CASE("Finding F1: sums over middle axes, and broadcast gradients reduced over them") {
  // first in a child process, so that a crash fails this test instead of ending the whole run
  std::fflush(nullptr);
  pid_t pid = fork();
  if (pid == 0) {
    Tensor a = leaf64({2, 1, 4}, 1), b = leaf64({2, 3, 4}, 2);
    sum(a + b).backward();
    _exit(sum(ones({2, 3, 4}, kFloat64), 1).numel() == 8 ? 0 : 1);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  INFO("child status " << status << (WIFSIGNALED(status) ? " (killed by a signal)" : ""));
  REQUIRE((WIFEXITED(status) && WEXITSTATUS(status) == 0));

  Tensor x = from_vector(arange(24, kFloat64).to_vector(), {2, 3, 4}, kFloat64);
  Tensor s = sum(x, 1);
  REQUIRE(s.shape() == Shape{2, 4});
  check_values(s, {12, 15, 18, 21, 48, 51, 54, 57});
  check_values(sum(x, std::vector<int64_t>{0, 2}), {60, 92, 124});
  check_values(mean(x, 1, true), {4, 5, 6, 7, 16, 17, 18, 19});

  Tensor a = leaf64({2, 1, 4}, 1), b = leaf64({2, 3, 4}, 2);
  sum(a + b).backward();
  check_values(a.grad(), std::vector<double>(8, 3.0));
  Tensor c = leaf64({3, 1}, 3), d = leaf64({2, 3, 4}, 4);
  CHECK_GRADCHECK([](const std::vector<Tensor>& in) { return mul(in[0], in[1]); }, (std::vector<Tensor>{c, d}));
}

// Finding F2 (randomized graphs, seeds 1132 and 1651): matmul [B,M,K]·[K,N] and linear with a
// >2-D x reshape with -1 internally, which cannot be inferred when a dim is 0, so valid empty
// inputs threw "reshape: cannot infer -1".
TEST_CASE("Finding F2: matmul and linear on empty batches") {
  CHECK(matmul(zeros({0, 2, 3}, kFloat64), zeros({3, 4}, kFloat64)).shape() == Shape{0, 2, 4});
  CHECK(matmul(zeros({2, 0, 3}, kFloat64), zeros({3, 4}, kFloat64)).shape() == Shape{2, 0, 4});
  Tensor y = linear(zeros({1, 2, 0}, kFloat64), zeros({0, 3}, kFloat64), ones({3}, kFloat64));
  REQUIRE(y.shape() == Shape{1, 2, 3});
  check_values(y, std::vector<double>(6, 1.0));  // an empty sum plus the bias
  CHECK(linear(zeros({0, 5, 2}, kFloat64), zeros({2, 3}, kFloat64)).shape() == Shape{0, 5, 3});
}

// Finding F3 (writing test_reliability): a backward that reads its own output (tanh, exp, sigmoid,
// sqrt: `g.out()`) is not protected by the version check — only inputs' versions are recorded.
// Modifying such an output that is then differentiated directly (the root, or a tensor no later
// op consumed) silently gives a wrong gradient: here 1 - 0² = 1 instead of 1 - tanh²(0.5).
TEST_CASE("Finding F3: modifying an output that its own backward reads is detected") {
  Tensor x = tensor({0.5}, dtype(kFloat64).requires_grad());
  Tensor t = tanh(x);
  t.mutable_value<double>()(0) = 0.0;
  CHECK_THROWS_WITH_AS(t.backward(), doctest::Contains("tanh"), Error);
  CHECK_FALSE(x.grad().defined());
}

// Finding F4 (writing the threads test): elementwise results depend on where the buffers happen to
// be in memory. TensorImpl data is only 16-byte aligned; xtensor/xsimd computes the unaligned head
// and tail of a buffer with scalar std::tanh and the rest with the SIMD tanh, which differ in the
// last ulp. So the same graph gives slightly different gradients in another thread (another malloc
// arena) or after other allocations. Aligning tensor data (e.g. 64 bytes) would make it
// deterministic.
TEST_CASE("Finding F4: the same op on the same values gives the same bits wherever the buffers are") {
  Generator gen(1);
  Tensor x = rand({256}, kFloat64, &gen);
  std::vector<double> first = tanh(x).to_vector();
  std::vector<Tensor> keep;  // allocations in between move later buffers around
  size_t differing = 0;
  for (size_t i = 0; i < 64; ++i) {
    keep.push_back(zeros({i % 7 + 1}, kFloat64));
    Tensor copy = x * 1.0;
    if (tanh(copy).to_vector() != first) ++differing;
  }
  CHECK(differing == 0);
}

// Finding F5 (fuzzer, tests/fuzz): sizes are not validated. Extents whose product (or product
// times the element size) overflows size_t — zeros({1 << 62}, kFloat32): numel·4 wraps to 0 —
// allocate a tiny buffer that full()/from_vector() then write past (ASan: heap-buffer-overflow in
// write_at); arange with a huge count asks for 2^63 bytes. They must throw tapegrad::Error.
// Run in a child process: without the fix this corrupts the heap.
TEST_CASE("Finding F5: shapes whose size overflows are refused with an Error") {
  std::fflush(nullptr);
  pid_t pid = fork();
  if (pid == 0) {
    int refused = 0;
    for (Shape s : {Shape{size_t(1) << 62}, Shape{size_t(1) << 32, size_t(1) << 32}, Shape{~size_t(0), 2}}) {
      try {
        zeros(s, kFloat32);
      } catch (const Error&) {
        ++refused;
      }
    }
    try {
      arange(0.0, 1e300, 1e-300);
    } catch (const Error&) {
      ++refused;
    }
    _exit(refused == 4 ? 0 : 1);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  INFO("child status " << status << (WIFSIGNALED(status) ? " (killed by a signal)" : " (exit 1: a size was accepted)"));
  CHECK((WIFEXITED(status) && WEXITSTATUS(status) == 0));
}

// Finding F6 (fuzzer): int64 factories (full, from_vector, tensor, arange with dtype kInt64)
// convert doubles with a plain cast; 1e308, NaN or ±Inf is undefined behaviour (UBSan:
// float-cast-overflow in write_at). They should throw an Error naming the value.
TEST_CASE("Finding F6: int64 factories refuse values outside int64") {
  CHECK_THROWS_AS(full({2}, 1e308, kInt64), Error);
  CHECK_THROWS_AS(full({2}, std::nan(""), kInt64), Error);
  CHECK_THROWS_AS(from_vector({-INFINITY}, {1}, kInt64), Error);
  check_values(full({2}, -3.0, kInt64), {-3, -3});
}

// Finding F9 (the fuzzer, in CI): narrow(x, d, start, length) checked `start + length > n`, a
// signed overflow (undefined) for a length near INT64_MAX. The check is now `length > n - start`.
TEST_CASE("Finding F9: narrow with a huge length is an error, not an overflow") {
  Tensor x = tensor({{1.0, 2.0, 3.0}, {4.0, 5.0, 6.0}});
  CHECK_THROWS_WITH_AS(narrow(x, 1, 2, std::numeric_limits<int64_t>::max()),
                       doctest::Contains("narrow: start 2 + length 9223372036854775807 exceeds dim 1 of size 3"),
                       Error);
  CHECK_THROWS_AS(narrow(x, 0, -1, std::numeric_limits<int64_t>::max()), Error);
  check_values(narrow(x, 1, 2, 1), {3.0, 6.0});
}

// Finding F8 (the sanitizer suite: "explain mode prints each rule..." in test_higher_order.cpp):
// heap-use-after-free in engine/debug.cpp explain_visit. It holds `ExplainNode& n` into
// ExplainGuard::nodes, then `n.inputs.push_back(ex->node_for(in, ...).id)`: node_for may append to
// `nodes` and reallocate, so the push goes into freed memory and the input is lost. Take the id
// first (or index the node) before pushing.
TEST_CASE("Finding F8: explain mode records every input of every node") {
  Tensor x = tensor({1.0, 2.0}, dtype(kFloat64).requires_grad());
  Tensor y = x;
  for (int i = 0; i < 40; ++i) y = mul(y, tensor({1.0, 1.0}, dtype(kFloat64).requires_grad()));  // many new nodes
  ExplainGuard ex;
  sum(y).backward();
  size_t muls = 0;
  for (const ExplainNode& n : ex.nodes)
    if (n.op == "mul") {
      ++muls;
      CHECK(n.inputs.size() == 2);
    }
  CHECK(muls == 40);
}

// Finding F7 (fuzzer): xsimd's exp converts its argument to an integer, undefined for |x| beyond
// ~9e18, reached by exp, sigmoid, softmax and BCE-with-logits of huge values. Exp-based ops now
// clamp the argument where exp has already saturated; results are unchanged (inf, 0, NaN kept).
TEST_CASE("Finding F7: exp-based ops of huge values saturate without undefined behaviour") {
  Tensor x = tensor({1e30, -1e30, 0.0, std::nan("")}, kFloat64);
  std::vector<double> e = exp(x).to_vector();
  CHECK(std::isinf(e[0]));
  CHECK(e[1] == 0.0);
  CHECK(e[2] == 1.0);
  CHECK(std::isnan(e[3]));
  std::vector<double> s = sigmoid(x).to_vector();
  CHECK(s[0] == 1.0);
  CHECK(s[1] == 0.0);
  check_values(softmax(tensor({{1e30, 0.0}}, kFloat64), 1), {1.0, 0.0});
  Tensor l = binary_cross_entropy_with_logits(tensor({1e30, -1e30}, kFloat64), tensor({1.0, 0.0}, kFloat64));
  CHECK(l.item() == 0.0);
}

// The engine: handles, the tape, the sweep, accumulation, grad mode, release, errors.
#include "helpers.hpp"
#include <sys/resource.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <mutex>
#include <set>
#include <thread>

#include "../engine/pool.hpp"

using namespace tapegrad;

TEST_CASE("a tensor handle is cheap to copy and copies share value and gradient") {
  Tensor a = tensor({1, 2, 3}, requires_grad());
  Tensor b = a;
  CHECK(a.impl() == b.impl());
  sum(a * a).backward();
  check_values(b.grad(), {2, 4, 6});
  CHECK(a.is_leaf());
  CHECK(a.shape() == Shape{3});
  CHECK(a.numel() == 3);
  CHECK(a.dtype() == kFloat32);
}

TEST_CASE("fan-out: a value used twice receives the sum of both gradients") {
  // y = x·x + x   dy/dx = 2x + 1: x feeds three consumers' slots
  Tensor x = tensor({3.0}, requires_grad());
  Tensor y = x * x + x;
  y.backward();
  CHECK(x.grad().item() == doctest::Approx(7.0));
}

TEST_CASE("leaves accumulate across backward calls until zero_grad") {
  Tensor x = tensor({2.0}, requires_grad());
  (x * 3.0).backward();
  (x * 3.0).backward();
  CHECK(x.grad().item() == doctest::Approx(6.0));
  x.zero_grad();
  CHECK_FALSE(x.grad().defined());
  (x * 5.0).backward();
  CHECK(x.grad().item() == doctest::Approx(5.0));
}

TEST_CASE("backward of a non-scalar needs an explicit gradient") {
  Tensor x = tensor({1, 2}, requires_grad());
  Tensor y = x * 2.0;
  CHECK_THROWS_WITH_AS(y.backward(), doctest::Contains("not a single element"), Error);
  y.backward(tensor({1, 10}));
  check_values(x.grad(), {2, 20});
  Tensor z = x * 2.0;
  CHECK_THROWS_WITH_AS(z.backward(tensor({1, 2, 3})), doctest::Contains("[3]"), Error);
}

TEST_CASE("a second backward through a released graph is an error; retain_graph keeps it") {
  Tensor x = tensor({1.5}, requires_grad());
  Tensor y = tanh(x) * x;
  y.backward(Tensor(), /*retain_graph=*/true);
  double g1 = x.grad().item();
  y.backward();
  CHECK(x.grad().item() == doctest::Approx(2 * g1));
  CHECK_THROWS_WITH_AS(y.backward(), doctest::Contains("second time"), Error);
  CHECK(x.grad().item() == doctest::Approx(2 * g1));  // nothing lost
}

TEST_CASE("backward on a tensor that does not require grad is an error") {
  Tensor x = tensor({1.0});
  CHECK_THROWS_WITH_AS((x * 2.0).backward(), doctest::Contains("does not require grad"), Error);
}

TEST_CASE("NoGradGuard records nothing") {
  Tensor x = tensor({1.0}, requires_grad());
  Tensor y;
  {
    NoGradGuard guard;
    y = x * 2.0;
  }
  CHECK_FALSE(y.requires_grad());
  CHECK(y.is_leaf());
  Tensor z = x * 2.0;
  CHECK(z.requires_grad());
  CHECK_FALSE(z.is_leaf());
}

TEST_CASE("subgraphs that need no gradient are skipped and constants get no grad") {
  Tensor c = tensor({2.0});
  Tensor x = tensor({3.0}, requires_grad());
  Tensor y = (c * c) * x;
  y.backward();
  CHECK(x.grad().item() == doctest::Approx(4.0));
  CHECK_FALSE(c.grad().defined());
}

TEST_CASE("retain_grad keeps a non-leaf gradient; without it grad() is undefined") {
  Tensor x = tensor({2.0}, requires_grad());
  Tensor h = x * x;
  Tensor k = x * 3.0;
  h.retain_grad();
  (h * 5.0 + k).backward();
  CHECK(h.grad().item() == doctest::Approx(5.0));
  CHECK_FALSE(k.grad().defined());
}

TEST_CASE("detach shares data and cuts the graph") {
  Tensor x = tensor({1, 2}, requires_grad());
  Tensor d = (x * 2.0).detach();
  CHECK(d.is_leaf());
  CHECK_FALSE(d.requires_grad());
  check_values(d, {2, 4});
}

TEST_CASE("dtype mixing is an error, not a conversion") {
  Tensor a = ones({2}, kFloat32);
  Tensor b = ones({2}, kFloat64);
  CHECK_THROWS_WITH_AS(a + b, doctest::Contains("add: dtypes differ"), Error);
}

TEST_CASE("float32 and float64 both work end to end") {
  for (Dtype d : {kFloat32, kFloat64}) {
    Tensor x = full({2, 2}, 0.5, dtype(d).requires_grad());
    Tensor loss = sum(tanh(x) * x);
    loss.backward();
    CHECK(x.grad().dtype() == d);
    double t = std::tanh(0.5);
    CHECK(x.grad().to_vector()[0] == doctest::Approx(t + 0.5 * (1 - t * t)).epsilon(1e-5));
  }
}

TEST_CASE("a chain of 1,000,000 ops goes forward, backward and out of scope") {
  Tensor w = tensor({0.9999}, requires_grad());
  Tensor y = tensor({1.0});
  {
    Tensor c = scalar_like(y, 0.0001);
    for (int i = 0; i < 500000; ++i) {
      y = y * w;
      y = y + c;
    }
  }
  CHECK(y.item() == doctest::Approx(1.0));
  sum(y).backward();
  CHECK(w.grad().item() == doctest::Approx(9995).epsilon(0.002));
  y = Tensor();  // released iteratively
}

TEST_CASE("a graph never backpropagated is freed when its last tensor goes away") {
  Tensor x = tensor({1.0}, requires_grad());
  Tensor y = x;
  for (int i = 0; i < 300000; ++i) y = y * 1.0;
  CHECK(x.impl()->refs.load() == 2);  // x and the first node's input
  y = Tensor();
  CHECK(x.impl()->refs.load() == 1);
}

TEST_CASE("printing") {
  Tensor x = tensor({{1, 2}, {3, 4}});
  CHECK(x.str() == "tensor([[1, 2],\n        [3, 4]])");
  Tensor y = tensor({1.5}, requires_grad()) * 2.0;
  CHECK(y.str() == "tensor([3], grad_fn=<mul>)");
}

TEST_CASE("factories") {
  check_values(arange(4), {0, 1, 2, 3});
  check_values(arange(1, 2, 0.25), {1, 1.25, 1.5, 1.75});
  check_values(full({2}, 7), {7, 7});
  CHECK(zeros({2, 3}, kFloat64).dtype() == kFloat64);
  Generator g1(42), g2(42);
  check_values(randn({5}, {}, &g1), randn({5}, {}, &g2).to_vector());
  CHECK_THROWS_AS(tensor({{1, 2}, {3}}), Error);
}

// Buffers from 2 MiB up come 2 MiB-aligned with huge-page advice (engine/pool.cpp) and are reused
// by exact size; small and large ones must keep their values through free and reuse.
TEST_CASE("large buffers: values survive reuse, sizes around the huge-page threshold") {
  for (size_t n : {size_t(262144), size_t(524287), size_t(524288), size_t(524289), size_t(786433)}) {
    for (int round = 0; round < 3; ++round) {  // round 1 and 2 get the block freed by round 0
      Tensor a = full({n}, 1.5 + round);
      Tensor b = arange(static_cast<double>(n));
      Tensor c = a * b;
      const float* p = c.data_ptr<float>();
      CHECK(p[0] == 0.0f);
      CHECK(p[n - 1] == doctest::Approx((1.5 + round) * double(n - 1)));
      CHECK(reinterpret_cast<uintptr_t>(p) % 64 == 0);
    }
  }
}

// Large buffers (over 1 KiB) freed by a thread wait in its cache by exact size (engine/pool.cpp),
// up to 256 MiB, the oldest going first. A training step of W5's kind frees hundreds of two sizes and
// allocates them again: all of them must come back from the cache (it once kept 64).
TEST_CASE("pool: a step's large buffers come back from the cache, which keeps its budget, the oldest leaving first") {
  if (!detail::pool_enabled()) return;
  const size_t cached0 = detail::pool_large_cached_bytes();
  auto step = [](std::vector<std::pair<uint64_t*, size_t>>& blocks) {
    for (size_t i = 0; i < 900; ++i) {
      const size_t bytes = i % 3 == 2 ? 8192 : 16384;
      auto* p = static_cast<uint64_t*>(detail::pool_alloc(bytes));
      for (size_t w = 0; w < bytes / 8; ++w) p[w] = i * 7 + w;
      blocks.emplace_back(p, bytes);
    }
  };
  std::vector<std::pair<uint64_t*, size_t>> first, second;
  step(first);
  size_t bad = 0;
  for (size_t i = 0; i < first.size(); ++i) bad += first[i].first[first[i].second / 8 - 1] != i * 7 + first[i].second / 8 - 1;
  CHECK(bad == 0);
  std::set<uint64_t*> freed;
  for (auto [p, bytes] : first) detail::pool_free(p, bytes), freed.insert(p);
  CHECK(detail::pool_large_cached_bytes() - cached0 == 600 * 16384 + 300 * 8192);
  step(second);
  size_t reused = 0;
  for (auto [p, bytes] : second) reused += freed.count(p);
  CHECK(reused == 900);
  CHECK(detail::pool_large_cached_bytes() == cached0);
  for (auto [p, bytes] : second) detail::pool_free(p, bytes);

  // 90 buffers of 3 MiB (270 MiB): the cache keeps 256 MiB at most, dropping the oldest (the
  // step's buffers first); the newest comes back first.
  const size_t mib3 = size_t(3) << 20;
  std::vector<void*> big;
  for (int i = 0; i < 90; ++i) big.push_back(detail::pool_alloc(mib3));
  for (void* p : big) detail::pool_free(p, mib3);
  CHECK(detail::pool_large_cached_bytes() <= (size_t(256) << 20));
  CHECK(detail::pool_large_cached_bytes() > (size_t(256) << 20) - mib3);
  void* newest = detail::pool_alloc(mib3);
  CHECK(newest == big.back());
  big.pop_back();
  for (void*& p : big) p = detail::pool_alloc(mib3);
  big.push_back(newest);
  CHECK(detail::pool_large_cached_bytes() == 0);  // every one taken back, nothing else left

  // 17,000 of 16 KiB (272 MiB) freed in turn: the oldest leave one by one, and the 16,384 newest
  // (256 MiB) are the ones that come back.
  const size_t kib16 = 16384, n16 = 17000, fit = (size_t(256) << 20) / kib16;
  std::vector<void*> many(n16);
  for (void*& p : many) p = detail::pool_alloc(kib16);
  for (void* p : many) detail::pool_free(p, kib16);
  CHECK(detail::pool_large_cached_bytes() == fit * kib16);
  const std::set<void*> newest_freed(many.end() - std::ptrdiff_t(fit), many.end());
  void* const last_freed = many.back();
  size_t from_newest = 0;
  for (void*& p : many) {
    p = detail::pool_alloc(kib16);
    from_newest += newest_freed.count(p);
  }
  CHECK(many[0] == last_freed);
  CHECK(from_newest == fit);
  CHECK(detail::pool_large_cached_bytes() == 0);  // all held again, till the end

  // 250 sizes at once: the table of sizes holds 192, so the first 192 freed are kept and the
  // others go back; all that was kept comes back.
  std::vector<std::pair<void*, size_t>> sizes;
  size_t want_kept = 0;
  for (size_t i = 0; i < 250; ++i) {
    sizes.emplace_back(detail::pool_alloc(1040 + 16 * i), 1040 + 16 * i);
    if (i < 192) want_kept += 1040 + 16 * i;
  }
  for (auto [p, bytes] : sizes) detail::pool_free(p, bytes);
  CHECK(detail::pool_large_cached_bytes() == want_kept);
  size_t back = 0;  // of the kept: the very buffer (the others, from malloc, may be too)
  for (size_t i = 0; i < sizes.size(); ++i) {
    void* q = detail::pool_alloc(sizes[i].second);
    back += i < 192 && q == sizes[i].first ? sizes[i].second : 0;
    sizes[i].first = q;
  }
  CHECK(back == want_kept);
  CHECK(detail::pool_large_cached_bytes() == 0);
  for (auto [p, bytes] : sizes) detail::pool_free(p, bytes);
  for (void* p : big) detail::pool_free(p, mib3);
  for (void* p : many) detail::pool_free(p, kib16);
}

// The small-block pool (engine/pool.cpp): blocks never overlap, may be freed by another thread
// (which then ends), and a thread keeps at most 16 MiB of empty slabs, giving the rest back.
TEST_CASE("pool: 2 M small blocks are distinct, freed across threads, and the cache stays in budget") {
  const std::vector<size_t> sizes = {8, 24, 120, 200, 1000};  // several classes, the largest pooled one
  const size_t n = 400000;                                    // per size: ~2 M blocks, ~300 MiB in all
  std::vector<std::pair<uint64_t*, size_t>> blocks;
  blocks.reserve(n * sizes.size());
  size_t misaligned = 0;
  for (size_t i = 0; i < n; ++i)
    for (size_t bytes : sizes) {
      auto* p = static_cast<uint64_t*>(detail::pool_alloc(bytes));
      misaligned += reinterpret_cast<uintptr_t>(p) % 16 != 0;
      for (size_t w = 0; w < bytes / 8; ++w) p[w] = blocks.size() * 131 + w;  // fills the whole block
      blocks.emplace_back(p, bytes);
    }
  size_t bad = 0;
  for (size_t k = 0; k < blocks.size(); ++k)
    for (size_t w = 0; w < blocks[k].second / 8; ++w) bad += blocks[k].first[w] != k * 131 + w;
  CHECK(misaligned == 0);
  CHECK(bad == 0);  // no block overlaps another, nor the slab's own bookkeeping
  // A quarter is freed by another thread, which then ends.
  size_t quarter = blocks.size() / 4;
  std::thread([&] {
    for (size_t k = 0; k < quarter; ++k) detail::pool_free(blocks[k].first, blocks[k].second);
  }).join();
  for (size_t k = quarter; k < blocks.size(); ++k) detail::pool_free(blocks[k].first, blocks[k].second);
  // 225 MiB were freed on this thread: all but the budget left it.
  CHECK(detail::pool_cached_bytes() <= (size_t(16) << 20));
  // Reuse after all that: fresh blocks still hold their values.
  std::vector<Tensor> ts;
  for (int i = 0; i < 1000; ++i) ts.push_back(full({3}, double(i)));
  for (int i = 0; i < 1000; ++i) CHECK(ts[size_t(i)].to_vector()[2] == double(i));
}

// Pages of empty slabs beyond the budgets (16 MiB a thread, 64 MiB a process) go back to the kernel,
// in batches of 4 MiB (engine/pool.cpp): after 200 MiB of small blocks are freed, the process's
// resident memory is back within the budgets of where it started.
TEST_CASE("pool: 200 MiB of small blocks freed: their pages go back to the kernel but the budgets") {
  // Without the pool operator new serves them (glibc decides); under a sanitizer its shadow
  // memory comes and goes with them.
  if (!detail::pool_enabled() || under_sanitizer()) return;
  // Memory that earlier cases in this process left in the pool would be reused here.
  if (!in_fresh_process()) {
    CHECK(status_in_fresh_process("pool: 200 MiB of small blocks freed: their pages go back to the kernel but the budgets") == 0);
    return;
  }
  auto resident_mib = [] { return double(resident_kb()) / 1024.0; };
  std::vector<void*> blocks(200000);
  const double start = resident_mib();
  for (void*& p : blocks) {
    p = detail::pool_alloc(1000);
    std::memset(p, 1, 1000);
  }
  const double peak = resident_mib();
  for (void* p : blocks) detail::pool_free(p, 1000);
  const double end = resident_mib();
  CAPTURE(start); CAPTURE(peak); CAPTURE(end);
  CHECK(peak - start >= 190.0);
  CHECK(end - start <= 16.0 + 64.0 + 4.0 + 8.0);  // budgets, a batch on its way, and some slack
}

// Buffers of 128 KiB to 2 MiB are shares of 2 MiB chunks on huge pages (engine/pool.cpp). Blocks
// of every share must be distinct and keep their values, may be freed by another thread, and a
// chunk goes back to the kernel with its last block (after the threads' caches are gone).
TEST_CASE("pool: medium buffers share 2 MiB chunks, stay intact across threads, and are given back") {
  const size_t before = detail::pool_medium_chunks();
  const std::vector<size_t> sizes = {size_t(128) << 10, (size_t(128) << 10) + 8, 200000, size_t(256) << 10, 699048,
                                     size_t(1) << 20, (size_t(1) << 20) + 64, (size_t(2) << 20) - 16};
  using Block = std::pair<uint64_t*, size_t>;
  std::vector<Block> blocks, handed;
  size_t bad = 0, misaligned = 0, chunks_in_use = 0;
  std::thread owner([&] {
    for (int round = 0; round < 12; ++round)
      for (size_t bytes : sizes) {
        Block b{static_cast<uint64_t*>(detail::pool_alloc(bytes)), bytes};
        misaligned += reinterpret_cast<uintptr_t>(b.first) % 64 != 0;
        for (size_t w = 0; w < bytes / 8; ++w) b.first[w] = blocks.size() * 1000003 + w;  // fills it all
        blocks.push_back(b);
      }
    chunks_in_use = detail::pool_medium_chunks() - before;
    for (size_t k = 0; k < blocks.size(); ++k)  // no block overlaps another
      for (size_t w = 0; w < blocks[k].second / 8; ++w) bad += blocks[k].first[w] != k * 1000003 + w;
    for (size_t k = 0; k < blocks.size(); ++k) {  // every other block is freed by another thread
      if (k % 2) handed.push_back(blocks[k]);
      else detail::pool_free(blocks[k].first, blocks[k].second);
    }
  });
  owner.join();
  std::thread([&] {
    for (Block b : handed) detail::pool_free(b.first, b.second);
  }).join();
  CHECK(bad == 0);
  CHECK(misaligned == 0);
  // 12 rounds of 8 sizes in shares of 16, 15, 10, 8, 2, 2, 1, 1 blocks a chunk: 1 + 1 + 2 + 2 + 12 +
  // 24 = 42 chunks (none where operator new serves them: huge pages off, or no pool under ASan)
  CHECK(chunks_in_use == (detail::pool_medium_on_huge_pages() ? 42u : 0u));
  CHECK(detail::pool_medium_chunks() == before);
}

// At threads >= 2 a helper maps (and touches) the pool's next 4 MiB segments while the allocating
// thread cuts the current one into slabs (engine/pool.cpp, map_ahead); at one thread nothing is
// mapped ahead. Blocks from those segments are distinct and keep their values.
TEST_CASE("pool: at 2 threads a helper maps the next segments ahead, at 1 none is") {
  if (!detail::pool_enabled()) return;
  const int before = get_num_threads();
  std::vector<uint64_t*> blocks;
  // Allocates 64-byte blocks, each stamped with its index, until `n` more segments are in use.
  auto grow_by_segments = [&](size_t n) {
    const size_t target = detail::pool_segments().used + n;
    while (detail::pool_segments().used < target)
      for (int i = 0; i < 1024; ++i) {
        auto* b = static_cast<uint64_t*>(detail::pool_alloc(64));
        *b = blocks.size();
        blocks.push_back(b);
      }
  };
  // The helper is on its own: give it up to 20 s (sanitizers are slow).
  auto wait_until = [](auto done) {
    for (int i = 0; i < 20000 && !done(detail::pool_segments()); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
  };
  auto wait_ready = [&] {
    wait_until([](const detail::PoolSegments& s) { return s.ready >= 1; });
    return detail::pool_segments().ready;
  };

  set_num_threads(2);
  grow_by_segments(2);  // past the first segment: the helper starts
  for (int round = 0; round < 3; ++round) {
    REQUIRE(wait_ready() >= 1);
    const detail::PoolSegments s0 = detail::pool_segments();
    grow_by_segments(1);
    const detail::PoolSegments s1 = detail::pool_segments();
    CHECK(s1.taken_ahead == s0.taken_ahead + 1);
    CHECK(s1.ready <= 2);
  }

  set_num_threads(1);
  wait_until([](const detail::PoolSegments& s) { return !s.mapping; });  // a helper at work finishes
  grow_by_segments(detail::pool_segments().ready + 1);  // uses up what was mapped ahead
  const detail::PoolSegments s0 = detail::pool_segments();
  grow_by_segments(2);
  const detail::PoolSegments s1 = detail::pool_segments();
  CHECK(s1.taken_ahead == s0.taken_ahead);
  CHECK(s1.ready == 0);

  std::set<uint64_t*> distinct(blocks.begin(), blocks.end());
  CHECK(distinct.size() == blocks.size());
  size_t bad = 0;
  for (size_t i = 0; i < blocks.size(); ++i) bad += *blocks[i] != i;
  CHECK(bad == 0);
  for (uint64_t* b : blocks) detail::pool_free(b, 64);
  set_num_threads(before);
}

// The backward sweep's lists grow to the same size every step; their storage passes from one
// sweep to the next (engine/autograd.cpp). Fresh each time, buffers this big went back to the
// kernel and W1's backward paid ~90 page faults a repetition (a chain of 30,000 ops).
TEST_CASE("backward: a third sweep through a chain of 30,000 ops takes no new pages") {
  if (!detail::pool_enabled() || under_sanitizer()) return;
  Tensor a = full({16}, 1.0, requires_grad());
  auto minor_faults = [] {
    rusage u{};
    getrusage(RUSAGE_THREAD, &u);
    return u.ru_minflt;
  };
  long faults[3] = {};
  for (long& f : faults) {
    Tensor y = full({16}, 0.1);
    for (int i = 0; i < 30000; ++i) y = y * a;
    Tensor loss = sum(y);
    const long f0 = minor_faults();
    loss.backward();
    f = minor_faults() - f0;
  }
  CAPTURE(faults[0]); CAPTURE(faults[1]); CAPTURE(faults[2]);
  CHECK(faults[2] <= 4);
  // d/da Σ 0.1·a³⁰⁰⁰⁰ = 3000 at a = 1, three times over (float32 sums of 30,000 terms)
  CHECK(a.grad().to_vector()[7] == doctest::Approx(9000.0).epsilon(1e-3));
}

// Blocks passed between threads while they allocate and free, and blocks outliving the thread
// that allocated them (their slabs are abandoned, then emptied by other threads' frees).
TEST_CASE("pool: blocks handed between threads, some of which end before their blocks are freed") {
  using Block = std::pair<uint64_t*, size_t>;
  auto stamp = [](Block b, uint64_t id) {
    for (size_t w = 0; w < b.second / 8; ++w) b.first[w] = w == 0 ? id : id * 131 + w;
  };
  std::atomic<size_t> bad{0};
  auto check_and_free = [&](Block b) {
    for (size_t w = 1; w < b.second / 8; ++w) bad += b.first[w] != b.first[0] * 131 + w;
    detail::pool_free(b.first, b.second);
  };
  constexpr size_t kThreads = 4, kPerThread = 200000;
  std::mutex m;
  std::vector<Block> shared;
  std::vector<std::thread> threads;
  for (size_t t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      std::vector<Block> mine, taken;
      for (size_t i = 0; i < kPerThread; ++i) {
        size_t bytes = 8 + (i * 37 + t * 11) % 1017;
        Block b{static_cast<uint64_t*>(detail::pool_alloc(bytes)), bytes};
        stamp(b, t * kPerThread + i);
        if (i % 2 == 0) {
          mine.push_back(b);
          continue;
        }
        std::lock_guard<std::mutex> lock(m);
        shared.push_back(b);
        if (i % 1001 == 0)  // take a batch of other threads' blocks to free here
          for (size_t k = 0; k < 300 && !shared.empty(); ++k) {
            taken.push_back(shared.back());
            shared.pop_back();
          }
      }
      for (Block b : taken) check_and_free(b);
      for (Block b : mine) check_and_free(b);
    });
  for (auto& th : threads) th.join();
  CHECK(shared.size() > 100000);  // most odd blocks outlived their threads
  for (Block b : shared) check_and_free(b);
  CHECK(bad == 0);
}

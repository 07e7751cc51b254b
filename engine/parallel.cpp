#include "parallel.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>

extern "C" {
void openblas_set_num_threads(int);
int openblas_get_num_threads(void);
// OpenBLAS's own (exported, undocumented) call that ends its thread pool, as it does before a
// fork. Weak: a BLAS without it leaves the pointer null.
int blas_thread_shutdown_(void) __attribute__((weak));
}

namespace tapegrad::detail {
namespace {

void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

Lane& the_lane() {
  static Lane* l = new Lane;  // never destroyed, like the team
  return *l;
}

thread_local bool t_in_part = false;

// Runs part k of a job, marked as such (in_part).
void run_part(void (*part)(const void*, int), const void* ctx, int k) {
  const bool outer = t_in_part;
  t_in_part = true;
  part(ctx, k);
  t_in_part = outer;
}

// One job at a time: its id, part count and next unclaimed part live in one 64-bit word, so a
// claim is a single compare-and-swap and a helper late from an earlier job can never claim a
// part of the next one (the id differs). A helper reads part/ctx only after claiming a part; the
// caller changes them only after every part of its job has reported done, so they stay put.
struct Team {
  std::mutex use;                       // held by the thread whose job this is
  std::atomic<uint64_t> job{0};         // id << 32 | parts << 16 | next part
  std::atomic<int> done{0};             // parts of the current job that have run
  void (*part)(const void*, int) = nullptr;
  const void* ctx = nullptr;
  std::atomic<int> active{0};           // helpers that take part (set_num_threads − 1)
  std::atomic<int> sleepers{0};         // helpers asleep on `wake`
  std::mutex sleep;                     // guards wake_seq
  std::condition_variable wake;
  uint64_t wake_seq = 0;                // bumped to wake sleeping helpers
  int helpers = 0;                      // started (detached); never fewer: those beyond `active` sleep
  uint32_t last_id = 0;
  std::atomic<void (*)()> chore{nullptr};  // posted by post_chore, run by the first helper free

  // Runs the pending chore, if any; whether there was one.
  bool run_chore() {
    void (*c)() = chore.exchange(nullptr);
    if (c) c();
    return c != nullptr;
  }

  void wake_all() {
    {
      std::lock_guard<std::mutex> lock(sleep);
      ++wake_seq;
    }
    wake.notify_all();
  }

  static bool open(uint64_t j) { return (j & 0xffff) < ((j >> 16) & 0xffff); }

  // Claims and runs parts of the current job until none is left (or, for helper `index`, until it
  // no longer takes part); returns how many it ran.
  int work(int index = -1) {
    int ran = 0;
    uint64_t j = job.load(std::memory_order_acquire);
    while (open(j) && index < active.load(std::memory_order_relaxed))
      if (job.compare_exchange_weak(j, j + 1, std::memory_order_acq_rel, std::memory_order_acquire)) {
        run_part(part, ctx, int(j & 0xffff));
        done.fetch_add(1, std::memory_order_release);
        ++ran;
        j = job.load(std::memory_order_acquire);
      }
    return ran;
  }

  // A helper spins a little after its last part, since products come in bursts (W5 runs 384 a
  // step, microseconds apart), then sleeps so an idle process leaves the core alone.
  void helper_loop(int index) {
    using clock = std::chrono::steady_clock;
    constexpr auto kSpin = std::chrono::microseconds(300);
    auto last = clock::now();
    for (unsigned i = 0;; ++i) {
      if (index < active.load(std::memory_order_relaxed) && open(job.load(std::memory_order_acquire))) {
        work(index);
        last = clock::now();
        i = 0;
        continue;
      }
      if (index < active.load(std::memory_order_relaxed) && the_lane().run_next(true)) {
        last = clock::now();
        i = 0;
        continue;
      }
      if (run_chore()) {
        last = clock::now();
        i = 0;
        continue;
      }
      cpu_relax();
      if (i % 64 != 63 || clock::now() - last < kSpin) continue;
      // Dekker with run_parts: we count ourselves a sleeper, then look for work; it publishes work,
      // then looks for sleepers (all seq_cst), so one of us sees the other.
      // The same with Lane::publish for the lane's tasks.
      // (A helper beyond `active` is not counted: set_intra_op_threads wakes it.) A chore is
      // posted before post_chore takes `sleep` to wake us, so under the lock we see one or the other.
      {
        std::unique_lock<std::mutex> lock(sleep);
        const uint64_t seen = wake_seq;
        const bool taking_part = index < active.load();
        if (taking_part) sleepers.fetch_add(1);
        if (!(taking_part && (open(job.load()) || the_lane().has_work())) && !chore.load())
          wake.wait(lock, [&] { return wake_seq != seen; });
        if (taking_part) sleepers.fetch_sub(1);
      }
      last = clock::now();
      i = 0;
    }
  }
};

Team& team() {
  static Team* t = new Team;  // never destroyed: helpers may still be asleep at exit
  return *t;
}

thread_local unsigned long long jobs_cut = 0;

std::atomic<int>& threads_set() {
  static std::atomic<int> n{0};  // 0: not set yet
  return n;
}

}  // namespace

int intra_op_threads() {
  if (int n = threads_set().load(std::memory_order_acquire)) return n;
  static const int first = [] {
    int n = openblas_get_num_threads();
    set_intra_op_threads(n < 1 ? 1 : n);
    return 0;
  }();
  (void)first;
  return threads_set().load(std::memory_order_acquire);
}

void set_intra_op_threads(int n) {
  Team& t = team();
  std::lock_guard<std::mutex> lock(t.use);  // no job is running
  // OpenBLAS on one thread from now on, and its idle workers ended: started for
  // OPENBLAS_NUM_THREADS = n at load, they spin on sched_yield for their first ~0.1 s and then
  // sleep; on the Zen 5 VM (6 Dec 2026) that spin cost W1 1.5 % at 2 threads (243 against 240
  // ns/op, 10 runs each). OpenBLAS starts them again if it is ever asked for more threads.
  openblas_set_num_threads(1);
  if (blas_thread_shutdown_) blas_thread_shutdown_();
  for (; t.helpers < n - 1; ++t.helpers) std::thread([&t, index = t.helpers] { t.helper_loop(index); }).detach();
  t.active.store(n - 1);
  t.wake_all();  // helpers asleep see the new count
  threads_set().store(n, std::memory_order_release);
}

unsigned long long parallel_jobs() { return jobs_cut; }

bool in_part() { return t_in_part; }

bool post_chore(void (*c)()) {
  Team& t = team();
  if (t.active.load() == 0) return false;
  void (*none)() = nullptr;
  if (!t.chore.compare_exchange_strong(none, c)) return false;
  t.wake_all();  // a futex call per chore: chores are rare (one per 4 MiB the pool maps)
  return true;
}

Lane* Lane::acquire() {
  if (team().active.load() == 0 || t_in_part) return nullptr;
  Lane& l = the_lane();
  bool owned = false;
  return l.owned_.compare_exchange_strong(owned, true, std::memory_order_acquire) ? &l : nullptr;
}

void Lane::release() {
  drain();
  owned_.store(false, std::memory_order_release);
}

bool Lane::has_work() const { return claimed_.load() < posted_.load(); }

bool Lane::run_next(bool helper) {
  uint64_t k = claimed_.load(std::memory_order_acquire);
  do {
    if (k >= posted_.load(std::memory_order_acquire)) return false;
  } while (!claimed_.compare_exchange_weak(k, k + 1, std::memory_order_acq_rel, std::memory_order_acquire));
  while (done_.load(std::memory_order_acquire) != k) cpu_relax();  // one at a time, in order
  Slot& s = slots_[k % kSlots];
  s.run(s.bytes);
  if (helper) by_helper_.fetch_add(1, std::memory_order_relaxed);
  done_.store(k + 1, std::memory_order_release);
  return true;
}

void Lane::retire() {
  for (const uint64_t d = done_.load(std::memory_order_acquire); retired_ < d; ++retired_) {
    Slot& s = slots_[retired_ % kSlots];
    s.destroy(s.bytes);
  }
}

Lane::Slot& Lane::free_slot() {
  retire();
  const uint64_t k = posted_.load(std::memory_order_relaxed);
  while (k - retired_ >= kSlots) {
    if (!run_next(false)) cpu_relax();
    retire();
  }
  return slots_[k % kSlots];
}

void Lane::publish() {
  posted_.fetch_add(1);  // seq_cst: publishes the slot; then we look for sleepers (Dekker, helper_loop)
  if (team().sleepers.load() > 0) team().wake_all();
}

uint64_t lane_posted() { return the_lane().posted_.load(std::memory_order_relaxed); }
uint64_t lane_run_by_helper() { return the_lane().by_helper_.load(std::memory_order_relaxed); }

void Lane::drain() {
  while (run_next(false)) {
  }
  while (done_.load(std::memory_order_acquire) < posted_.load(std::memory_order_relaxed)) cpu_relax();
  retire();
}

namespace {
// run_parts, uncounted; with alone = false, a job the helpers cannot join (threads = 1, or the team
// held by another thread) is not run at all, and -1 returned.
int run_job(int parts, void (*part)(const void* ctx, int k), const void* ctx, bool alone = true) {
  Team& t = team();
  std::unique_lock<std::mutex> lock(t.use, std::defer_lock);
  // Inside a part the team is busy with the outer job (and may be held by this very thread).
  if (parts <= 1 || parts > 0xffff || t_in_part || !lock.try_lock() || t.active.load() == 0) {
    if (!alone) return -1;
    for (int k = 0; k < parts; ++k) run_part(part, ctx, k);
    return 0;
  }
  t.part = part;
  t.ctx = ctx;
  t.done.store(0, std::memory_order_relaxed);
  t.job.store(uint64_t(++t.last_id) << 32 | uint64_t(parts) << 16);  // seq_cst: publishes part, ctx
  if (t.sleepers.load() > 0) t.wake_all();
  const int mine = t.work();
  while (t.done.load(std::memory_order_acquire) < parts) cpu_relax();
  return parts - mine;
}

// A cache line's round trip between the calling thread and a helper: a ball passed back and forth
// kTrips times through one atomic by the two parts of a job. The part that starts waits kJoin for
// the other (a helper asleep on a far vCPU took over 2 ms to wake, at times), then gives up, and
// the other, if it comes late, sees that and leaves; a player descheduled mid-game gives up after
// kPlay. So a game costs at most kJoin + kPlay, never a hang.
struct PingPong {
  using clock = std::chrono::steady_clock;
  static constexpr uint32_t kTrips = 256;
  static constexpr auto kJoin = std::chrono::milliseconds(10), kPlay = std::chrono::milliseconds(2);
  std::atomic<uint32_t> ball{0};  // odd: the joiner's turn; even: the starter's
  std::atomic<int> state{0};      // 0 waiting for the joiner, 1 playing, 2 given up
  double ns = -1;                 // per round trip, once the starter has played every trip

  // Spins until the ball is `want`; false if the game was given up, by either side.
  bool wait_for(uint32_t want, clock::time_point deadline) {
    for (unsigned i = 1; ball.load(std::memory_order_acquire) != want; ++i) {
      if (state.load(std::memory_order_relaxed) == 2) return false;
      cpu_relax();
      if (i % 256 == 0 && clock::now() > deadline) {
        state.store(2);
        return false;
      }
    }
    return true;
  }
  void join() {
    int waiting = 0;
    if (!state.compare_exchange_strong(waiting, 1)) return;  // given up already
    const auto deadline = clock::now() + kPlay;
    for (uint32_t i = 0; i < kTrips; ++i) {
      if (!wait_for(2 * i + 1, deadline)) return;
      ball.store(2 * i + 2, std::memory_order_release);
    }
  }
  void start() {
    const auto join_by = clock::now() + kJoin;
    while (state.load(std::memory_order_acquire) == 0) {
      cpu_relax();
      int waiting = 0;
      if (clock::now() > join_by && state.compare_exchange_strong(waiting, 2)) return;
    }
    const auto t0 = clock::now(), deadline = t0 + kPlay;
    for (uint32_t i = 0; i < kTrips; ++i) {
      ball.store(2 * i + 1, std::memory_order_release);
      if (!wait_for(2 * i + 2, deadline)) return;
    }
    ns = std::chrono::duration<double, std::nano>(clock::now() - t0).count() / kTrips;
  }
  static void play(const void* ctx, int k) {
    auto* g = static_cast<PingPong*>(const_cast<void*>(ctx));
    k == 0 ? g->start() : g->join();
  }
};

// One game's round trip in ns, or -1 when no helper played. Not played at all when no helper can
// join: the caller would run both parts and wait out kJoin for itself.
double one_round_trip_ns() {
  PingPong game;
  if (run_job(2, PingPong::play, &game, /*alone=*/false) < 0) return -1;
  return game.state.load() == 1 ? game.ns : -1;
}

std::atomic<int> g_far_set{-1};
}  // namespace

int run_parts(int parts, void (*part)(const void* ctx, int k), const void* ctx) {
  if (parts >= 2) ++jobs_cut;
  return run_job(parts, part, ctx);
}

double helpers_round_trip_ns() {
  constexpr int kGames = 9;
  double ns[kGames];
  // A first game may go unjoined while a helper wakes from sleep; a second means they are busy,
  // or the host too loaded for a reading (a game given up midway).
  for (int n = 0, missed = 0; n < kGames;)
    if ((ns[n] = one_round_trip_ns()) > 0) ++n;
    else if (++missed == 2) return -1;
  std::nth_element(ns, ns + kGames / 2, ns + kGames);
  return ns[kGames / 2];
}

void set_helpers_far(int far) { g_far_set.store(far); }

bool helpers_far() {
  if (int set = g_far_set.load(std::memory_order_relaxed); set >= 0) return set == 1;
  using clock = std::chrono::steady_clock;
  thread_local clock::time_point measured{};
  thread_local bool far = false;
  const auto now = clock::now();
  if (measured == clock::time_point{} || now - measured > std::chrono::milliseconds(100)) {
    const double ns = helpers_round_trip_ns();
    far = ns > kFarRoundTripNs;
    measured = now;
  }
  return far;
}

}  // namespace tapegrad::detail

// tapegrad's intra-op threads. At set_num_threads(n), a kernel may cut its work into parts that the
// calling thread and n − 1 helper threads run side by side (ops/linalg.cpp cuts a product into
// blocks of rows or columns). BLAS itself then runs on one thread inside each part: two thread
// pools on two cores would take turns spinning (bench/HISTORY.md, the 2 Dec runs).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <new>
#include <type_traits>
#include <utility>

namespace tapegrad::detail {

// The thread count set_num_threads set; until then OpenBLAS's own default (OPENBLAS_NUM_THREADS or
// the number of cores), after which OpenBLAS is put on one thread.
int intra_op_threads();
void set_intra_op_threads(int n);

// Runs part(ctx, k) for every k in [0, parts) and returns when all have run, with the number of
// parts helpers ran. The caller runs parts too and never waits for a helper to wake: it takes any
// part no helper has taken yet. When the helpers are busy with another thread's work, or asleep
// and slow to wake, the caller runs every part itself (and 0 is returned). A part must not throw,
// and parts must write disjoint memory.
int run_parts(int parts, void (*part)(const void* ctx, int k), const void* ctx);

// Whether the calling thread is running a part of a job (run_parts). Inside one, run_parts runs
// every part on the calling thread, the lane is not taken and products are not cut: the threads
// are busy with the job itself (backward_sharded runs a shard of a batch per part).
bool in_part();

// Hands `chore` to a helper, which runs it when it has no parts to run; false, and nothing done,
// when there is no helper (threads = 1) or a chore is still pending. For work that can run late
// and on any thread, such as the pool's mapping of memory ahead of need (engine/pool.cpp); a
// chore must not throw, and runs even if the thread count drops to 1 meanwhile.
bool post_chore(void (*chore)());

// An ordered lane: the tasks its owner posts run one at a time, in the order posted, on a helper,
// while the owner goes on; drain() runs those no helper has begun on the owner itself and returns
// once every one has run. In order, because two tasks may add into the same buffer and a sum's
// value depends on its order: a lane's results are those of running its tasks inline. The backward
// sweep owns it for the products that add into leaves' gradients (Backward::add_into_later), which
// nothing reads before the sweep's end. A task must not throw. Tasks are destroyed by the owner,
// never by a helper, so what they hold is released on the thread that made it.
class Lane {
 public:
  // The lane, owned by the calling thread until release(): null at 1 thread, or while another
  // thread (or this one, in an outer sweep) owns it.
  static Lane* acquire();
  void release();  // drains first

  template <class F>
  void post(F&& f) {
    using Task = std::decay_t<F>;
    static_assert(sizeof(Task) <= kTaskBytes && alignof(Task) <= alignof(std::max_align_t), "task too large for a slot");
    Slot& s = free_slot();
    ::new (static_cast<void*>(s.bytes)) Task(std::forward<F>(f));
    s.run = [](void* t) { (*static_cast<Task*>(t))(); };
    s.destroy = [](void* t) { static_cast<Task*>(t)->~Task(); };
    publish();
  }
  void drain();

  // Used by the helpers: runs the next task if there is one no one has begun; whether it did.
  bool run_next(bool helper);
  bool has_work() const;  // seq_cst: pairs with publish() for a helper about to sleep

 private:
  static constexpr size_t kSlots = 256, kTaskBytes = 192;
  struct Slot {
    void (*run)(void*) = nullptr;
    void (*destroy)(void*) = nullptr;
    alignas(std::max_align_t) unsigned char bytes[kTaskBytes];
  };
  Slot& free_slot();  // retires tasks that have run; runs one itself when all slots are taken
  void publish();     // makes the slot free_slot gave visible, and wakes a sleeping helper
  void retire();      // destroys the tasks that have run

  friend uint64_t lane_posted();
  friend uint64_t lane_run_by_helper();
  // The owner's counters apart from the helper's: a line both write would cross the cores twice
  // for every task.
  alignas(64) std::atomic<bool> owned_{false};
  std::atomic<uint64_t> posted_{0};
  uint64_t retired_ = 0;  // owner only
  alignas(64) std::atomic<uint64_t> claimed_{0}, done_{0}, by_helper_{0};
  alignas(64) Slot slots_[kSlots];
};

// Tasks posted to the lane so far, and how many of them a helper ran (for tests).
uint64_t lane_posted();
uint64_t lane_run_by_helper();

// Jobs of two parts or more this thread has run, with helpers or alone (for tests).
unsigned long long parallel_jobs();

// A cache line's round trip between the calling thread and a helper, in ns: the median of 9 games
// of 256 trips, or -1 at once when no helper can join (threads = 1, or the helpers held by another
// thread's job), and after at most 24 ms when two games went unplayed: no helper free to join
// (busy with another thread's lane, or slow to wake), or a player descheduled mid-game for 2 ms
// (a loaded host: with both CPUs busy with other work, most probes end so).
double helpers_round_trip_ns();

// Whether this thread's helpers are far from it: helpers_round_trip_ns() over kFarRoundTripNs,
// measured at most every 100 ms per thread (false when it could not be measured). Then the lane's
// trials (engine/autograd.cpp) and a product's cuts and their timings (ops/linalg.cpp) are skipped,
// their choice being to keep the work on the calling thread: on the Zen 5 VM of 6 Dec 2026 the host
// put the two vCPUs near (bench/bench_cores: 170-380 ns; this probe 59-175) or far apart (545-815;
// this probe 370-693), and far apart neither the lane nor a cut of a small product ever paid, and
// their timings cost W5 ~0.6 % over the whole run (Hold, below; without them, 0.9913 of its step
// time with them, bench/HISTORY.md), its first cuts another ~0.5 % (7 Dec). Nor did any part of the
// lane (7 Dec, run P in bench/HISTORY.md): W5's step took 1.05-1.20x its time at 1 thread with all
// its tasks, its products, or only Whh's on the helper, each time with the forward after it
// 1.30-1.37x as long. That is the helper's reads: a helper that only loaded a word of each line of
// its products' operands, and computed nothing, cost the forward 1.27x and the step 14 % (run Q,
// bench/HISTORY.md). An answer is kept a while where it is used (ops/linalg.cpp: far, 4096 products
// of any shape; engine/autograd.cpp: 512 backwards). set_helpers_far(1 or 0) fixes the answer
// (tests, bench/bench_tapegrad --far) from the next question on, -1 measures again.
constexpr double kFarRoundTripNs = 280;
bool helpers_far();
void set_helpers_far(int far);

// How long a choice that was timed (the lane in engine/autograd.cpp, a product's cut in
// ops/linalg.cpp) is held before it is timed again: `base` calls, twice as many each time a new
// timing confirms the last choice (up to 8×), `base` again when it changes. What pays moves with
// the host (bench/bench_cores), so the choice is timed again; but on a host that stays as it was,
// each timing only costs. With the vCPUs far apart (6 Dec 2026, run K in bench/HISTORY.md) W5's
// step at 2 threads was 1.1 % slower than at 1 (faster in 9 of 40 pairs), where it timed its 6
// product shapes every 64 steps, their cut calls 2.6× as long as whole ones; in 20 pairs after,
// W5 with the timings took 1.0045× its time at 1 thread, and with the lane and the cut forced off
// 1.0002×. Held, it still took ~1.006× (run M); what is left of that lies outside the timed calls
// themselves: the lane's ten trial backwards leave every later forward ~1 % slower, for hundreds of
// steps. Their tasks hold their operands until retired, so those backwards give the pool's large
// buffers back in another order, which the later steps keep (taken last-in first-out, given back
// in reverse), and W5's forward is slower in that order (bench/HISTORY.md). Hence helpers_far,
// above: far apart, where the timings only ever found against the lane and the cut, they are
// skipped.
struct Hold {
  unsigned doublings = 0;
  int last = -1;  // the last choice (0 or 1), -1 before the first
  unsigned after(bool choice, unsigned base) {
    doublings = last == int(choice) ? (doublings < 3 ? doublings + 1 : 3) : 0;
    last = int(choice);
    return base << doublings;
  }
};

template <class F>
int run_parts(int parts, const F& part) {
  return run_parts(parts, [](const void* f, int k) { (*static_cast<const F*>(f))(k); }, &part);
}

}  // namespace tapegrad::detail

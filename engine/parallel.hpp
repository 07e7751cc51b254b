// tapegrad's intra-op threads. At set_num_threads(n), a kernel may cut its work into parts that the
// calling thread and n − 1 helper threads run side by side (ops/linalg.cpp cuts a product into
// blocks of rows or columns). BLAS itself then runs on one thread inside each part: two thread
// pools on two cores would take turns spinning (bench/README.md, the 2 Dec runs).
#pragma once

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

// Hands `chore` to a helper, which runs it when it has no parts to run; false, and nothing done,
// when there is no helper (threads = 1) or a chore is still pending. For work that can run late
// and on any thread, such as the pool's mapping of memory ahead of need (engine/pool.cpp); a
// chore must not throw, and runs even if the thread count drops to 1 meanwhile.
bool post_chore(void (*chore)());

// Jobs of two parts or more this thread has run, with helpers or alone (for tests).
unsigned long long parallel_jobs();

template <class F>
int run_parts(int parts, const F& part) {
  return run_parts(parts, [](const void* f, int k) { (*static_cast<const F*>(f))(k); }, &part);
}

}  // namespace tapegrad::detail

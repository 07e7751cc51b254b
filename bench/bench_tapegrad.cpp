// bench_tapegrad: tapegrad's implementation of workloads W1–W5 as defined in
// /work/shared/peers/WORKLOADS.md (deterministic data, check values, one output line per workload:
// `<ID> <name> threads=<n> key=value ...`). A wrong check value or a crashed W4 child makes the run
// exit non-zero. Uses only the public API, like a user's program.
//
// Usage: bench_tapegrad [--threads N] [--only W1,W2,W3,W4,W5] [--w1-reps R] [--w2-steps S]
//                       [--w3-steps S] [--w5-steps S] [--w4-reps R] [--w4-nobwd] [--sgd-after-backward]
//                       [--main-cpu C] [--alternate-threads] [--lane measure|always|never]
//                       [--cut measure|always|never] [--far measure|yes|no] [--w5-whole]
// W5 is written for tg::backward_sharded (one shard of the batch per thread); --w5-whole records one
// graph over the whole batch at every thread count instead.
// W2, W3 and W5 update the parameters with optim::SGD in backward (in_backward = true: in W2/W3 the
// step of each weight is folded into the gemm of its gradient); --sgd-after-backward runs the
// usual backward() then a separate SGD pass instead.
// Threads: tapegrad::set_num_threads(N) (products are cut into blocks that N threads compute, with
// OpenBLAS on one thread inside each); run with OPENBLAS_NUM_THREADS=N in the environment too
// (scripts/bench does), as the libtorch program needs it. --main-cpu C pins the main thread (the
// one that runs the workloads) to CPU C and leaves the helpers free: scripts/bench compares 1 and
// 2 threads with the main thread on the same CPU, since a VM's vCPUs may differ in speed.
// --alternate-threads (W1 and W5): see alternate_threads below. --lane: whether a backward at 2
// threads takes the helpers' lane (engine/node.hpp, detail::LanePolicy; default measure). --cut:
// whether a product small enough to be timed whole and cut is cut between the threads
// (ops/linalg.cpp, detail::ProductCut; default measure). --far yes|no: whether the helpers count as
// far from the main thread, which skips both timings (detail::helpers_far; default: measured).
#include <ops/sgemm.hpp>
#include <tapegrad/tapegrad.hpp>

#include <optional>

#include "common.hpp"

namespace tg = tapegrad;
using bench::clk;
using bench::ms_between;
using bench::stats;
using bench::Stats;
using tg::Tensor;

namespace {

bench::Options g_opt;

Tensor uniform(const tg::Shape& shape, uint64_t stream, double lo, double hi, bool requires_grad = false) {
  Tensor t = tg::empty(shape);
  bench::fill_uniform(t.data_ptr<float>(), t.numel(), stream, lo, hi);
  if (requires_grad) t.requires_grad_(true);
  return t;
}
Tensor labels(const tg::Shape& shape, uint64_t stream, int64_t classes) {
  Tensor t = tg::empty(shape, tg::kInt64);
  bench::fill_labels(t.data_ptr<int64_t>(), t.numel(), stream, classes);
  return t;
}

// Plain SGD written on the public API: p ← p − lr·p.grad, in place, not recorded.
void sgd_step(const std::vector<Tensor>& params, float lr) {
  tg::NoGradGuard no_grad;
  for (const Tensor& p : params) {
    Tensor g = p.grad();
    if (!g.defined()) continue;
    float* d = p.data_ptr<float>();
    const float* gd = g.data_ptr<float>();
    for (size_t i = 0, n = p.numel(); i < n; ++i) d[i] -= lr * gd[i];
    p.bump_version();
  }
}
void zero_grads(std::vector<Tensor>& params) {
  for (Tensor& p : params) p.zero_grad();
}

// --alternate-threads: W1's repetitions and W5's steps switch between 1 and 2 threads (1 2 2 1 1 2
// ...) within one process, so that both counts share the process's memory, CPU and minutes; the
// line then gives each count's median and their ratio instead of the usual line. Returns the count
// repetition r runs at (and sets it), or 0 without the flag.
int alternate_threads(int r) {
  if (!g_opt.alternate_threads) return 0;
  const int n = (r / 2) % 2 == 0 ? 1 + r % 2 : 2 - r % 2;
  tg::set_num_threads(n);
  return n;
}

// An --alternate-threads line: `head`, each count's median of `per_count[n - 1]` as `key`, t2/t1.
void print_alternating(const char* head, const char* key, const std::vector<double> (&per_count)[2], bool ok) {
  const double m1 = stats(per_count[0]).median, m2 = stats(per_count[1]).median;
  std::printf("%s threads=1,2 reps_each=%zu t1_%s=%.4g t2_%s=%.4g t2_over_t1=%.4f check=%s\n", head,
              per_count[1].size(), key, m1, key, m2, m2 / m1, ok ? "ok" : "FAIL");
  std::fflush(stdout);
}

// ================================================================ W1 op-overhead
void run_w1() {
  const int kIters = 10000;
  const double kOps = 3.0 * kIters;  // mul, add, tanh per iteration; the final sum is not counted
  Tensor a = uniform({16}, 11, -0.5, 0.5, true);
  Tensor b = uniform({16}, 12, -0.5, 0.5, true);
  Tensor x0 = uniform({16}, 13, -1.0, 1.0);
  std::vector<double> fwd, bwd, fre, tot, tot_at[2];
  double loss_v = 0;
  long flt0 = 0;
  for (int r = 0; r < g_opt.w1_warm + g_opt.w1_reps; ++r) {
    if (r == g_opt.w1_warm) flt0 = bench::minflt_self();
    const int n = alternate_threads(r);
    a.zero_grad();
    b.zero_grad();
    auto t0 = clk::now();
    Tensor loss;
    {
      Tensor y = x0;
      for (int i = 0; i < kIters; ++i) y = tg::tanh(tg::add(tg::mul(y, a), b));
      loss = tg::sum(y);
    }
    auto t1 = clk::now();
    loss.backward();
    auto t2 = clk::now();
    loss_v = loss.item();  // not timed
    auto t2b = clk::now();
    loss = Tensor();  // drops the last reference to the recorded graph
    auto t3 = clk::now();
    if (r >= g_opt.w1_warm) {
      double f = ms_between(t0, t1), bw = ms_between(t1, t2), fr = ms_between(t2b, t3);
      fwd.push_back(f * 1e6 / kOps);
      bwd.push_back(bw * 1e6 / kOps);
      fre.push_back(fr * 1e6 / kOps);
      tot.push_back((f + bw + fr) * 1e6 / kOps);
      if (n > 0) tot_at[n - 1].push_back(tot.back());
    }
  }
  double flt_per_rep = double(bench::minflt_self() - flt0) / double(g_opt.w1_reps);
  double ga0 = a.grad().to_vector()[0], gb0 = b.grad().to_vector()[0];
  bool ok = bench::check("W1", "loss", loss_v, -0.538822, 1e-4);
  ok &= bench::check("W1", "a.grad[0]", ga0, -0.0327919, 1e-4);
  ok &= bench::check("W1", "b.grad[0]", gb0, 1.54235, 1e-4);
  Stats f = stats(fwd), bw = stats(bwd), fr = stats(fre), t = stats(tot);
  if (g_opt.alternate_threads)
    return print_alternating("W1ALT op_overhead_alternating", "total_ns_per_op_median", tot_at, ok);
  std::printf(
      "W1 op_overhead threads=%d reps=%zu ops=%d fwd_ns_per_op_median=%.1f fwd_ns_per_op_min=%.1f "
      "bwd_ns_per_op_median=%.1f bwd_ns_per_op_min=%.1f free_ns_per_op_median=%.1f free_ns_per_op_min=%.1f "
      "total_ns_per_op_median=%.1f total_ns_per_op_min=%.1f minflt_per_rep=%.0f check_loss=%.6g check_grad_a0=%.6g "
      "check_grad_b0=%.6g check=%s\n",
      g_opt.threads, tot.size(), int(kOps), f.median, f.min, bw.median, bw.min, fr.median, fr.min, t.median, t.min,
      flt_per_rep, loss_v, ga0, gb0, ok ? "ok" : "FAIL");
  std::fflush(stdout);
}

// ================================================================ W2 / W3 MLP training step
void run_mlp(const char* id, const char* name, const std::vector<size_t>& dims, size_t batch, uint64_t sbase,
             int warm, int steps, double want_loss, bench::LastLoss last) {
  const size_t L = dims.size() - 1;
  std::vector<Tensor> W(L), bias(L), params;
  for (size_t l = 0; l < L; ++l) {
    size_t in = dims[l], out = dims[l + 1];
    double r = 1.0 / std::sqrt(double(in));
    W[l] = uniform({in, out}, sbase + 2 * l + 1, -r, r, true);  // [in, out]: y = x·W + b
    bias[l] = uniform({out}, sbase + 2 * l + 2, -r, r, true);
    params.push_back(W[l]);
    params.push_back(bias[l]);
  }
  Tensor X = uniform({batch, dims[0]}, sbase + 8, 0.0, 1.0);
  Tensor y = labels({batch}, sbase + 9, int64_t(dims.back()));
  // p ← p − 0.01·∂loss/∂p, applied by backward() itself unless --sgd-after-backward.
  std::optional<tg::optim::SGD> in_backward;
  if (!g_opt.sgd_after) in_backward.emplace(params, 0.01, tg::optim::SGDOptions{.in_backward = true});

  std::vector<double> tz, tf, tb, to, tr, tt;
  double loss_first = 0, loss_last = 0;
  long flt0 = 0;
  for (int s = 0; s < warm + steps; ++s) {
    if (s == warm) flt0 = bench::minflt_self();
    auto t0 = clk::now(), t1 = t0, t2 = t0, t3 = t0, t4 = t0, t4b = t0;
    {
      zero_grads(params);
      t1 = clk::now();
      Tensor h = X;
      for (size_t l = 0; l < L; ++l) {
        h = tg::linear(h, W[l], bias[l]);
        if (l + 1 < L) h = tg::relu(h);
      }
      Tensor loss = tg::cross_entropy(h, y);  // mean over the batch
      t2 = clk::now();
      loss.backward();
      t3 = clk::now();
      if (g_opt.sgd_after) sgd_step(params, 0.01f);
      t4 = clk::now();
      double lv = loss.item();  // not timed
      if (s == 0) loss_first = lv;
      loss_last = lv;
      t4b = clk::now();
    }  // the step's graph is released here (timed as "release")
    auto t5 = clk::now();
    if (s >= warm) {
      tz.push_back(ms_between(t0, t1));
      tf.push_back(ms_between(t1, t2));
      tb.push_back(ms_between(t2, t3));
      to.push_back(ms_between(t3, t4));
      tr.push_back(ms_between(t4b, t5));
      tt.push_back(ms_between(t0, t4) + ms_between(t4b, t5));
    }
  }
  double flt = double(bench::minflt_self() - flt0) / double(steps);
  bool ok = bench::check(id, "first-step loss", loss_first, want_loss, 1e-4);
  ok &= bench::check_last_loss(id, warm + steps, loss_last, last);
  Stats T = stats(tt);
  std::printf(
      "%s %s threads=%d steps=%zu median_ms=%.3f min_ms=%.3f zero_median_ms=%.3f fwd_median_ms=%.3f "
      "bwd_median_ms=%.3f opt_median_ms=%.3f release_median_ms=%.3f minflt_per_step=%.1f loss_first=%.6f "
      "loss_last=%.6f sgd=%s check=%s\n",
      id, name, g_opt.threads, tt.size(), T.median, T.min, stats(tz).median, stats(tf).median, stats(tb).median,
      stats(to).median, stats(tr).median, flt, loss_first, loss_last,
      g_opt.sgd_after ? "after_backward" : "in_backward", ok ? "ok" : "FAIL");
  std::fflush(stdout);
}

// ================================================================ W5 Elman RNN training step
// The step is written for tg::backward_sharded: at n threads the batch's 32 sequences are cut
// into n shards of rows, each run forward and backward on its own thread with the weights shared,
// their gradients summed once (at 1 thread: the loss over all 32 rows and backward()). Each
// shard's loss is its share of the mean: Σ_t Σ_rows −log p / (T·B). --w5-whole: one graph over
// the whole batch at every thread count (the engine's intra-op threads only), as before 7 Dec 2026.
struct W5Rows {  // a shard's rows of the data: tokens and targets per time step, and h_0
  int64_t begin = 0, end = 0;
  std::vector<Tensor> tok, tgt;
  Tensor h0;
};

void run_w5() {
  const size_t T = 64, B = 32, V = 64, H = 128;
  double r = 1.0 / std::sqrt(double(H));
  Tensor Wxh = uniform({V, H}, 51, -r, r, true);
  Tensor Whh = uniform({H, H}, 52, -r, r, true);
  Tensor bh = uniform({H}, 53, -r, r, true);
  Tensor Why = uniform({H, V}, 54, -r, r, true);
  std::vector<Tensor> params = {Wxh, Whh, bh, Why};
  std::vector<int64_t> tokens(T * B), targets(T * B);
  bench::fill_labels(tokens.data(), tokens.size(), 55, int64_t(V));
  bench::fill_labels(targets.data(), targets.size(), 56, int64_t(V));
  // Every shard backward_sharded can make here (1 or 2 shards, or --threads), built once.
  std::vector<W5Rows> rows;
  for (int64_t shards : {int64_t(1), int64_t(2), int64_t(g_opt.threads)})
    for (int64_t k = 0; k < shards; ++k) {
      W5Rows w{int64_t(B) * k / shards, int64_t(B) * (k + 1) / shards, {}, {}, {}};
      if (std::any_of(rows.begin(), rows.end(), [&](const W5Rows& o) { return o.begin == w.begin && o.end == w.end; }))
        continue;
      const size_t b0 = size_t(w.begin), b1 = size_t(w.end);
      for (size_t t = 0; t < T; ++t) {
        w.tok.push_back(tg::from_indices({tokens.begin() + t * B + b0, tokens.begin() + t * B + b1}, {b1 - b0}));
        w.tgt.push_back(tg::from_indices({targets.begin() + t * B + b0, targets.begin() + t * B + b1}, {b1 - b0}));
      }
      w.h0 = tg::zeros({b1 - b0, H});
      rows.push_back(std::move(w));
    }
  // The forward over rows [begin, end) with the weights P = {Wxh, Whh, b, Why}.
  auto shard_loss = [&](const std::vector<Tensor>& P, int64_t begin, int64_t end) {
    const W5Rows& d = *std::find_if(rows.begin(), rows.end(), [&](const W5Rows& o) { return o.begin == begin && o.end == end; });
    Tensor h = d.h0, total;
    for (size_t t = 0; t < T; ++t) {
      Tensor e = tg::index_select(P[0], 0, d.tok[t]);  // == onehot(x_t)·Wxh
      Tensor pre = tg::add(e, tg::matmul(h, P[1]));
      pre = tg::add(pre, P[2]);
      h = tg::tanh(pre);
      Tensor logits = tg::matmul(h, P[3]);
      Tensor lt = tg::nll_loss(tg::log_softmax(logits, 1), d.tgt[t], tg::Reduction::Sum);
      total = t == 0 ? lt : tg::add(total, lt);
    }
    return total / double(T * B);
  };
  // As in W2/W3: p ← p − 0.01·∂loss/∂p applied by the backward itself (each parameter is used 64
  // times, so it is stepped once its gradient is summed), unless --sgd-after-backward.
  std::optional<tg::optim::SGD> in_backward;
  if (!g_opt.sgd_after) in_backward.emplace(params, 0.01, tg::optim::SGDOptions{.in_backward = true});

  std::vector<double> tf, tb, tt, tt_at[2];
  double loss_first = 0, loss_last = 0;
  long flt0 = 0;
  uint64_t lane0 = 0, helper0 = 0;  // products on the sweep's lane, and those a helper ran
  for (int s = 0; s < g_opt.w5_warm + g_opt.w5_steps; ++s) {
    if (s == g_opt.w5_warm) {
      flt0 = bench::minflt_self();
      lane0 = tg::detail::lane_posted();
      helper0 = tg::detail::lane_run_by_helper();
    }
    const int n = alternate_threads(s);
    auto t0 = clk::now(), t2 = t0, t3 = t0, t4 = t0, t4b = t0;
    {
      zero_grads(params);
      Tensor loss;
      if (g_opt.w5_whole) {
        loss = shard_loss(params, 0, int64_t(B));
        t2 = clk::now();
        loss.backward();
      } else {
        loss = tg::backward_sharded(params, int64_t(B), shard_loss);
        t2 = clk::now();
      }
      t3 = clk::now();
      if (g_opt.sgd_after) sgd_step(params, 0.01f);
      t4 = clk::now();
      double lv = loss.item();
      if (s == 0) loss_first = lv;
      loss_last = lv;
      t4b = clk::now();
    }
    auto t5 = clk::now();
    if (s >= g_opt.w5_warm) {
      tf.push_back(ms_between(t0, t2));
      tb.push_back(ms_between(t2, t3));
      tt.push_back(ms_between(t0, t4) + ms_between(t4b, t5));
      if (n > 0) tt_at[n - 1].push_back(tt.back());
    }
  }
  double flt = double(bench::minflt_self() - flt0) / double(g_opt.w5_steps);
  const double lane = double(tg::detail::lane_posted() - lane0), by_helper = double(tg::detail::lane_run_by_helper() - helper0);
  bool ok = bench::check("W5", "first-step loss", loss_first, 4.158030, 1e-4);
  ok &= bench::check_last_loss("W5", g_opt.w5_warm + g_opt.w5_steps, loss_last, bench::kLastLossW5);
  Stats S = stats(tt);
  if (g_opt.alternate_threads) return print_alternating("W5ALT rnn_step_alternating", "median_ms", tt_at, ok);
  // Sharded, the forward and backward are one call, timed as zero_fwd (bwd is then ~0).
  std::printf(
      "W5 rnn_step threads=%d steps=%zu median_ms=%.3f min_ms=%.3f shards=%d zero_fwd_median_ms=%.3f "
      "bwd_median_ms=%.3f minflt_per_step=%.1f lane_per_step=%.0f lane_on_helper=%.3f loss_first=%.6f loss_last=%.6f "
      "sgd=%s check=%s\n",
      g_opt.threads, tt.size(), S.median, S.min, g_opt.w5_whole ? 1 : std::min(g_opt.threads, int(B)), stats(tf).median,
      stats(tb).median, flt, lane / double(g_opt.w5_steps), lane > 0 ? by_helper / lane : 0.0, loss_first, loss_last,
      g_opt.sgd_after ? "after_backward" : "in_backward", ok ? "ok" : "FAIL");
  std::fflush(stdout);
}

// ================================================================ W4 deep chain (child side)
int w4_child(bool do_backward) {
  const int kIters = 500000;  // two recorded ops each -> 1,000,000 ops
  long hwm0 = bench::proc_status_kb("VmHWM"), rss0 = bench::proc_status_kb("VmRSS");
  Tensor w = tg::full({1}, 0.9999, tg::requires_grad());
  Tensor y = tg::ones({1});
  auto t0 = clk::now();
  for (int i = 0; i < kIters; ++i) {
    y = y * w;
    y = y + 0.0001;  // a constant operand, as a user writes it
  }
  Tensor loss = tg::sum(y);
  auto t1 = clk::now();
  long rss_fwd = bench::proc_status_kb("VmRSS");
  double yv = loss.item();
  auto t1c = clk::now();
  if (do_backward) loss.backward();
  auto t2 = clk::now();
  double gw = do_backward ? w.grad().item() : 0.0;
  auto t2b = clk::now();
  loss = Tensor();
  y = Tensor();  // the last reference to the graph
  auto t3 = clk::now();
  bench::print_w4_child(ms_between(t0, t1), ms_between(t1c, t2), ms_between(t2b, t3), hwm0, rss0, rss_fwd, yv, gw);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  g_opt = bench::parse_args(argc, argv);
  // The helpers start free (a W4 child inherits its parent's pin), and the main thread is pinned
  // after them.
  if (g_opt.main_cpu >= 0) bench::pin_this_thread(-1);
  tg::set_num_threads(g_opt.threads);
  if (g_opt.main_cpu >= 0) bench::pin_this_thread(g_opt.main_cpu);
  tg::detail::set_lane_policy(g_opt.lane == "always"  ? tg::detail::LanePolicy::always
                              : g_opt.lane == "never" ? tg::detail::LanePolicy::never
                                                      : tg::detail::LanePolicy::measure);
  tg::detail::set_product_cut(g_opt.cut == "always"  ? tg::detail::ProductCut::always
                              : g_opt.cut == "never" ? tg::detail::ProductCut::never
                                                     : tg::detail::ProductCut::measure);
  tg::detail::set_helpers_far(g_opt.far == "yes" ? 1 : g_opt.far == "no" ? 0 : -1);
  if (g_opt.w4_child >= 0) return w4_child(g_opt.w4_child == 1);

  const char* ob_env = std::getenv("OPENBLAS_NUM_THREADS");
  // The helpers' round trip as detail::helpers_far reads it (-1: threads = 1 or not measured).
  // Probes for up to 0.5 s: in a process's first ~0.1 s a helper just started (vCPUs far) was
  // often held back mid-game (in run P 5 of 40 two-thread W5 runs printed -1 with one probe,
  // though the engine, probing later, found the helper far; with 3 probes 2 of 6 runs still did).
  double round_trip = -1;
  for (auto until = clk::now() + std::chrono::milliseconds(500); g_opt.threads > 1 && round_trip < 0 && clk::now() < until;)
    round_trip = tg::detail::helpers_round_trip_ns();
  std::printf("INFO engine=tapegrad threads=%d tapegrad_threads=%d OPENBLAS_NUM_THREADS=%s main_cpu=%d "
              "helpers_round_trip_ns=%.0f far=%s\n",
              g_opt.threads, tg::get_num_threads(), ob_env ? ob_env : "unset", g_opt.main_cpu, round_trip,
              g_opt.far.c_str());
  if (!ob_env || std::atoi(ob_env) != g_opt.threads)
    std::fprintf(stderr, "note: set OPENBLAS_NUM_THREADS=%d in the environment too (WORKLOADS.md, threads)\n",
                 g_opt.threads);
  std::fflush(stdout);

  // Each workload on its own: an error in one (e.g. an op throwing) fails the run but not the others.
  auto guarded = [](const char* id, auto&& fn) {
    if (!g_opt.selected(id)) return;
    try {
      fn();
    } catch (const std::exception& e) {
      bench::fail_run(id, e.what());
    }
  };
  guarded("W1", [] { run_w1(); });
  guarded("W2", [] { run_mlp("W2", "mlp_step", {784, 512, 256, 10}, 128, 20, g_opt.w2_warm, g_opt.w2_steps, 2.289553, bench::kLastLossW2); });
  guarded("W3", [] {
    run_mlp("W3", "wide_mlp_step", {2048, 2048, 2048, 10}, 512, 30, g_opt.w3_warm, g_opt.w3_steps, 2.303267, bench::kLastLossW3);
  });
  guarded("W5", [] { run_w5(); });
  guarded("W4", [] {
    bench::run_w4_parent("W4", "deep_chain", g_opt.threads, g_opt.w4_reps, true, g_opt.child_args(true));
    if (g_opt.w4_nobwd)
      bench::run_w4_parent("W4b", "deep_chain_nobwd", g_opt.threads, g_opt.w4_reps, false, g_opt.child_args(false));
  });
  return bench::g_failed ? 1 : 0;
}

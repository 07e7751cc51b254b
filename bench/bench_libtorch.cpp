// bench_libtorch.cpp -- W1..W5 of /work/shared/peers/WORKLOADS.md on the PyTorch C++ frontend
// (Debian libtorch 1.13.1).
//
// Attribution: adapted from the project's shared peer code, /work/shared/peers/libtorch/bench_libtorch.cpp.
// The workload bodies are that file's, unchanged; what changed: the helpers (data streams, stats,
// /proc readers, the W4 child driver, the command line) come from bench/common.hpp, shared with
// bench_tapegrad, and every workload now checks WORKLOADS.md's check values — a wrong value (or a
// crashed W4 child) makes the run exit non-zero and prints check=FAIL.
//
// Usage: bench_libtorch [--threads N] [--blas-threads K] [--only W1,W2,...]
//                       [--w1-reps R] [--w2-steps S] [--w3-steps S] [--w5-steps S]
//                       [--w4-reps R] [--w4-nobwd] [--info]
//   --threads N       torch::set_num_threads(N) (ATen/OpenMP intra-op pool). Default 1.
//   --blas-threads K  threads for the OpenBLAS that libtorch calls through sgemm_
//                     (openblas_set_num_threads via dlsym). Default: same as N.
//                     0 = leave OpenBLAS alone (it then uses OPENBLAS_NUM_THREADS or all cores).
//   --w4-nobwd        additionally run W4 without backward (graph destroyed with saved tensors).
// W4 runs each repetition in a fresh child process (re-exec of /proc/self/exe) so that peak
// RSS (VmHWM) is per-run and a crash (e.g. stack overflow on graph destruction) is detected.

#include <torch/torch.h>
#include <torch/version.h>

#include <dlfcn.h>

#include "common.hpp"

namespace {

using bench::clk;
using bench::minflt_self;
using bench::ms_between;
using bench::stats;
using bench::Stats;

bench::Options g_opt;

torch::Tensor uniform_tensor(std::vector<int64_t> shape, uint64_t stream, double lo, double hi) {
  torch::Tensor t = torch::empty(shape, torch::kFloat32);
  bench::fill_uniform(t.data_ptr<float>(), size_t(t.numel()), stream, lo, hi);
  return t;
}
torch::Tensor label_tensor(std::vector<int64_t> shape, uint64_t stream, int64_t classes) {
  torch::Tensor t = torch::empty(shape, torch::kInt64);
  bench::fill_labels(t.data_ptr<int64_t>(), size_t(t.numel()), stream, classes);
  return t;
}

// ---------------------------------------------------------------- OpenBLAS (used by libtorch via sgemm_)
struct OpenBlasHooks {
  void (*set_threads)(int) = nullptr;
  int (*get_threads)() = nullptr;
  char* (*corename)() = nullptr;
  char* (*config)() = nullptr;
  int (*parallel)() = nullptr;
  void load() {
    set_threads = reinterpret_cast<void (*)(int)>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
    get_threads = reinterpret_cast<int (*)()>(dlsym(RTLD_DEFAULT, "openblas_get_num_threads"));
    corename = reinterpret_cast<char* (*)()>(dlsym(RTLD_DEFAULT, "openblas_get_corename"));
    config = reinterpret_cast<char* (*)()>(dlsym(RTLD_DEFAULT, "openblas_get_config"));
    parallel = reinterpret_cast<int (*)()>(dlsym(RTLD_DEFAULT, "openblas_get_parallel"));
  }
};
OpenBlasHooks g_blas;

// ================================================================ W1 op-overhead
void run_w1() {
  const int kIters = 10000;
  const double kOps = 3.0 * kIters;  // mul, add, tanh per iteration (final sum not counted)
  torch::Tensor a = uniform_tensor({16}, 11, -0.5, 0.5).requires_grad_(true);
  torch::Tensor b = uniform_tensor({16}, 12, -0.5, 0.5).requires_grad_(true);
  torch::Tensor x0 = uniform_tensor({16}, 13, -1.0, 1.0);
  std::vector<double> fwd, bwd, fre, tot;
  double loss_v = 0, ga0 = 0, gb0 = 0;
  long flt0 = 0;
  for (int r = 0; r < g_opt.w1_warm + g_opt.w1_reps; ++r) {
    if (r == g_opt.w1_warm) flt0 = minflt_self();
    a.mutable_grad().reset();
    b.mutable_grad().reset();
    auto t0 = clk::now();
    torch::Tensor loss;
    {
      torch::Tensor y = x0;
      for (int i = 0; i < kIters; ++i) y = torch::tanh(y * a + b);
      loss = y.sum();
    }
    auto t1 = clk::now();
    loss.backward();
    auto t2 = clk::now();
    loss_v = loss.item<float>();  // not timed
    auto t2b = clk::now();
    loss = torch::Tensor();  // releases the whole recorded graph
    auto t3 = clk::now();
    if (r >= g_opt.w1_warm) {
      double f = ms_between(t0, t1), bw = ms_between(t1, t2), fr = ms_between(t2b, t3);
      fwd.push_back(f * 1e6 / kOps);
      bwd.push_back(bw * 1e6 / kOps);
      fre.push_back(fr * 1e6 / kOps);
      tot.push_back((f + bw + fr) * 1e6 / kOps);
    }
  }
  double flt_per_rep = double(minflt_self() - flt0) / double(g_opt.w1_reps);
  ga0 = a.grad()[0].item<float>();
  gb0 = b.grad()[0].item<float>();
  bool ok = bench::check("W1", "loss", loss_v, -0.538822, 1e-4);
  ok &= bench::check("W1", "a.grad[0]", ga0, -0.0327919, 1e-4);
  ok &= bench::check("W1", "b.grad[0]", gb0, 1.54235, 1e-4);
  Stats f = stats(fwd), bw = stats(bwd), fr = stats(fre), t = stats(tot);
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
void run_mlp(const char* id, const char* name, std::vector<int64_t> dims, int64_t batch, uint64_t sbase,
             int warm, int steps, double want_loss, bench::LastLoss last) {
  const size_t L = dims.size() - 1;
  std::vector<torch::nn::Linear> layers;
  std::vector<torch::Tensor> params;
  for (size_t l = 0; l < L; ++l) {
    int64_t in = dims[l], out = dims[l + 1];
    double r = 1.0 / std::sqrt(double(in));
    torch::nn::Linear lin(torch::nn::LinearOptions(in, out).bias(true));
    // WORKLOADS.md defines W as [in, out]; nn::Linear stores [out, in] -> copy the transpose.
    torch::Tensor Wdef = uniform_tensor({in, out}, sbase + 2 * l + 1, -r, r);
    torch::Tensor bdef = uniform_tensor({out}, sbase + 2 * l + 2, -r, r);
    {
      torch::NoGradGuard ng;
      lin->weight.copy_(Wdef.t());
      lin->bias.copy_(bdef);
    }
    layers.push_back(lin);
    for (auto& p : lin->parameters()) params.push_back(p);
  }
  torch::Tensor X = uniform_tensor({batch, dims[0]}, sbase + 8, 0.0, 1.0);
  torch::Tensor labels = label_tensor({batch}, sbase + 9, dims.back());
  torch::optim::SGD opt(params, torch::optim::SGDOptions(0.01));

  std::vector<double> tz, tf, tb, to, tr, tt;
  double loss_first = 0, loss_last = 0;
  long flt0 = 0;
  for (int s = 0; s < warm + steps; ++s) {
    if (s == warm) flt0 = minflt_self();
    auto t0 = clk::now(), t1 = t0, t2 = t0, t3 = t0, t4 = t0, t4b = t0;
    {
      opt.zero_grad();
      t1 = clk::now();
      torch::Tensor h = X;
      for (size_t l = 0; l < L; ++l) {
        h = layers[l]->forward(h);
        if (l + 1 < L) h = torch::relu(h);
      }
      torch::Tensor loss = torch::nll_loss(torch::log_softmax(h, 1), labels);  // mean over batch
      t2 = clk::now();
      loss.backward();
      t3 = clk::now();
      opt.step();
      t4 = clk::now();
      float lv = loss.item<float>();  // not timed
      if (s == 0) loss_first = lv;
      loss_last = lv;
      t4b = clk::now();
    }  // graph released here (timed as "release")
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
  double flt = double(minflt_self() - flt0) / double(steps);
  bool ok = bench::check(id, "first-step loss", loss_first, want_loss, 1e-4);
  ok &= bench::check_last_loss(id, warm + steps, loss_last, last);
  Stats T = stats(tt);
  std::printf(
      "%s %s threads=%d steps=%zu median_ms=%.3f min_ms=%.3f zero_median_ms=%.3f fwd_median_ms=%.3f "
      "bwd_median_ms=%.3f opt_median_ms=%.3f release_median_ms=%.3f minflt_per_step=%.1f loss_first=%.6f "
      "loss_last=%.6f check=%s\n",
      id, name, g_opt.threads, tt.size(), T.median, T.min, stats(tz).median, stats(tf).median, stats(tb).median,
      stats(to).median, stats(tr).median, flt, loss_first, loss_last, ok ? "ok" : "FAIL");
  std::fflush(stdout);
}

// ================================================================ W5 Elman RNN training step
void run_w5() {
  const int64_t T = 64, B = 32, V = 64, H = 128;
  double r = 1.0 / std::sqrt(double(H));
  torch::Tensor Wxh = uniform_tensor({V, H}, 51, -r, r).requires_grad_(true);
  torch::Tensor Whh = uniform_tensor({H, H}, 52, -r, r).requires_grad_(true);
  torch::Tensor bh = uniform_tensor({H}, 53, -r, r).requires_grad_(true);
  torch::Tensor Why = uniform_tensor({H, V}, 54, -r, r).requires_grad_(true);
  torch::Tensor tokens = label_tensor({T, B}, 55, V);
  torch::Tensor targets = label_tensor({T, B}, 56, V);
  std::vector<torch::Tensor> tok(T), tgt(T);
  for (int64_t t = 0; t < T; ++t) {
    tok[t] = tokens[t].contiguous();
    tgt[t] = targets[t].contiguous();
  }
  torch::Tensor h0 = torch::zeros({B, H});
  torch::optim::SGD opt({Wxh, Whh, bh, Why}, torch::optim::SGDOptions(0.01));

  std::vector<double> tf, tb, tt;
  double loss_first = 0, loss_last = 0;
  long flt0 = 0;
  for (int s = 0; s < g_opt.w5_warm + g_opt.w5_steps; ++s) {
    if (s == g_opt.w5_warm) flt0 = minflt_self();
    auto t0 = clk::now(), t2 = t0, t3 = t0, t4 = t0, t4b = t0;
    {
      opt.zero_grad();
      torch::Tensor h = h0, total;
      for (int64_t t = 0; t < T; ++t) {
        torch::Tensor e = torch::index_select(Wxh, 0, tok[t]);  // == one_hot(x_t) . W_xh
        torch::Tensor pre = e + torch::matmul(h, Whh);
        pre = pre + bh;
        h = torch::tanh(pre);
        torch::Tensor logits = torch::matmul(h, Why);
        torch::Tensor lt = torch::nll_loss(torch::log_softmax(logits, 1), tgt[t]);  // mean over batch
        total = (t == 0) ? lt : total + lt;
      }
      torch::Tensor loss = total / double(T);
      t2 = clk::now();
      loss.backward();
      t3 = clk::now();
      opt.step();
      t4 = clk::now();
      float lv = loss.item<float>();
      if (s == 0) loss_first = lv;
      loss_last = lv;
      t4b = clk::now();
    }
    auto t5 = clk::now();
    if (s >= g_opt.w5_warm) {
      tf.push_back(ms_between(t0, t2));
      tb.push_back(ms_between(t2, t3));
      tt.push_back(ms_between(t0, t4) + ms_between(t4b, t5));
    }
  }
  double flt = double(minflt_self() - flt0) / double(g_opt.w5_steps);
  bool ok = bench::check("W5", "first-step loss", loss_first, 4.158030, 1e-4);
  ok &= bench::check_last_loss("W5", g_opt.w5_warm + g_opt.w5_steps, loss_last, bench::kLastLossW5);
  Stats S = stats(tt);
  std::printf(
      "W5 rnn_step threads=%d steps=%zu median_ms=%.3f min_ms=%.3f zero_fwd_median_ms=%.3f bwd_median_ms=%.3f "
      "minflt_per_step=%.1f loss_first=%.6f loss_last=%.6f check=%s\n",
      g_opt.threads, tt.size(), S.median, S.min, stats(tf).median, stats(tb).median, flt, loss_first, loss_last,
      ok ? "ok" : "FAIL");
  std::fflush(stdout);
}

// ================================================================ W4 deep chain (child side)
int w4_child(bool do_backward) {
  const int kIters = 500000;  // 2 ops each -> 1,000,000 recorded ops
  long hwm0 = bench::proc_status_kb("VmHWM"), rss0 = bench::proc_status_kb("VmRSS");
  torch::Tensor w = torch::full({1}, 0.9999f).requires_grad_(true);
  torch::Tensor y = torch::ones({1});
  auto t0 = clk::now();
  for (int i = 0; i < kIters; ++i) {
    y = y * w;
    y = y + 0.0001;
  }
  torch::Tensor loss = y.sum();
  auto t1 = clk::now();
  long rss_fwd = bench::proc_status_kb("VmRSS");
  double yv = loss.item<float>();
  auto t1c = clk::now();
  if (do_backward) loss.backward();
  auto t2 = clk::now();
  double gw = do_backward ? w.grad().item<float>() : 0.0;
  auto t2b = clk::now();
  loss = torch::Tensor();
  y = torch::Tensor();  // last reference to the graph
  auto t3 = clk::now();
  bench::print_w4_child(ms_between(t0, t1), ms_between(t1c, t2), ms_between(t2b, t3), hwm0, rss0, rss_fwd, yv, gw);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  g_opt = bench::parse_args(argc, argv);
  // OpenMP starts its threads at the first parallel region: they would inherit a pin.
  if (g_opt.main_cpu >= 0 || g_opt.alternate_threads || g_opt.lane != "measure" || g_opt.cut != "measure") {
    std::fprintf(stderr, "--main-cpu, --alternate-threads, --lane, --cut: bench_tapegrad only\n");
    return 2;
  }
  torch::manual_seed(0);  // no torch RNG is used (init is explicit), seeded anyway
  torch::set_num_threads(g_opt.threads);
  g_blas.load();
  if (g_opt.blas_threads > 0 && g_blas.set_threads) g_blas.set_threads(g_opt.blas_threads);

  if (g_opt.w4_child >= 0) return w4_child(g_opt.w4_child == 1);

  struct rlimit rl {};
  getrlimit(RLIMIT_STACK, &rl);
  const char* omp_env = std::getenv("OMP_NUM_THREADS");
  const char* ob_env = std::getenv("OPENBLAS_NUM_THREADS");
  const char* wait_env = std::getenv("OMP_WAIT_POLICY");
  std::printf(
      "INFO engine=libtorch libtorch_version=%s torch_threads=%d interop_threads=%d openblas_hooks=%s "
      "openblas_threads=%d openblas_parallel=%d openblas_core=%s OMP_NUM_THREADS=%s OPENBLAS_NUM_THREADS=%s "
      "OMP_WAIT_POLICY=%s stack_limit_kb=%ld\n",
      TORCH_VERSION, at::get_num_threads(), at::get_num_interop_threads(), g_blas.set_threads ? "found" : "missing",
      g_blas.get_threads ? g_blas.get_threads() : -1, g_blas.parallel ? g_blas.parallel() : -1,
      g_blas.corename ? g_blas.corename() : "?", omp_env ? omp_env : "unset", ob_env ? ob_env : "unset",
      wait_env ? wait_env : "unset", rl.rlim_cur == RLIM_INFINITY ? -1L : long(rl.rlim_cur / 1024));
  if (g_blas.config) {
    std::string c = g_blas.config();
    for (auto& ch : c) if (ch == ' ') ch = '_';
    std::printf("INFO openblas_config=%s\n", c.c_str());
  }
  if (g_opt.info) std::printf("%s\n%s\n", at::get_parallel_info().c_str(), at::show_config().c_str());
  std::fflush(stdout);

  auto guarded = [](const char* id, auto&& fn) {
    if (!g_opt.selected(id)) return;
    try {
      fn();
    } catch (const std::exception& e) {
      bench::fail_run(id, e.what());
    }
  };
  guarded("W1", [] { run_w1(); });
  guarded("W2", [] {
    run_mlp("W2", "mlp_step", {784, 512, 256, 10}, 128, 20, g_opt.w2_warm, g_opt.w2_steps, 2.289553, bench::kLastLossW2);
  });
  guarded("W3", [] {
    run_mlp("W3", "wide_mlp_step", {2048, 2048, 2048, 10}, 512, 30, g_opt.w3_warm, g_opt.w3_steps, 2.303267, bench::kLastLossW3);
  });
  guarded("W5", [] { run_w5(); });
  guarded("W4", [] {
    bench::run_w4_parent("W4", "deep_chain", g_opt.threads, g_opt.w4_reps, true, g_opt.child_args(true));
    if (g_opt.w4_nobwd)
      bench::run_w4_parent("W4b", "deep_chain_nobwd", g_opt.threads, g_opt.w4_reps, false, g_opt.child_args(false));
  });
  std::printf("INFO process_threads_at_exit=%ld\n", bench::proc_status_kb("Threads"));
  return bench::g_failed ? 1 : 0;
}

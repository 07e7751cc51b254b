#pragma once
// Shared by bench_tapegrad.cpp and bench_libtorch.cpp: WORKLOADS.md's deterministic data
// (splitmix64 streams), statistics, /proc readers, the check-value test, and the W4 driver that
// runs each repetition in a fresh child process. Engine-neutral: no tapegrad or torch header.
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <sstream>
#include <string>
#include <vector>

extern char** environ;

namespace bench {

using clk = std::chrono::steady_clock;
inline double ms_between(clk::time_point a, clk::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

// ---- WORKLOADS.md 0.1: element i of stream s uses splitmix64((s << 32) + i) --------------------
inline uint64_t splitmix64(uint64_t x) {
  uint64_t z = x + 0x9E3779B97F4A7C15ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}
inline uint64_t hash_si(uint64_t s, uint64_t i) { return splitmix64((s << 32) + i); }
inline double u01(uint64_t s, uint64_t i) { return double(hash_si(s, i) >> 40) * (1.0 / 16777216.0); }
// U(s; lo, hi) into p[0..n), computed in double and rounded once.
inline void fill_uniform(float* p, size_t n, uint64_t s, double lo, double hi) {
  for (size_t i = 0; i < n; ++i) p[i] = float(lo + (hi - lo) * u01(s, i));
}
// L(s; C) into p[0..n).
inline void fill_labels(int64_t* p, size_t n, uint64_t s, int64_t classes) {
  for (size_t i = 0; i < n; ++i) p[i] = int64_t(hash_si(s, i) % uint64_t(classes));
}

// ---- statistics ----------------------------------------------------------------------------------
struct Stats {
  double median = 0, min = 0;
};
inline Stats stats(std::vector<double> v) {
  Stats s;
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
  s.min = v.front();
  size_t n = v.size();
  s.median = (n % 2) ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
  return s;
}

// ---- /proc and rusage ----------------------------------------------------------------------------
inline long proc_status_kb(const char* key) {  // "VmHWM", "VmRSS", "Threads"
  FILE* f = std::fopen("/proc/self/status", "r");
  if (!f) return -1;
  char line[256];
  long val = -1;
  size_t klen = std::strlen(key);
  while (std::fgets(line, sizeof line, f)) {
    if (std::strncmp(line, key, klen) == 0 && line[klen] == ':') {
      val = std::strtol(line + klen + 1, nullptr, 10);
      break;
    }
  }
  std::fclose(f);
  return val;
}
inline long minflt_self() {
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_minflt;
}

// ---- check values: a wrong one makes the run fail (non-zero exit at the end) ---------------------
inline bool g_failed = false;
// |got - want| <= rel·|want|; reports a mismatch on stderr. Returns true when it matches.
inline bool check(const char* id, const char* what, double got, double want, double rel) {
  bool ok = std::isfinite(got) && std::fabs(got - want) <= rel * std::fabs(want);
  if (!ok) {
    std::fprintf(stderr, "CHECK FAILED %s %s: got %.9g, expected %.9g (±%g relative)\n", id, what, got, want, rel);
    g_failed = true;
  }
  return ok;
}
// The loss of the last step when a run takes the default number of steps, as libtorch computes it
// (bench_libtorch, the same data and SGD): a run whose optimizer does not update the parameters,
// or updates them wrongly, passes the first-step check and fails this one.
struct LastLoss {
  int steps;  // warm-up + timed, the defaults
  double loss;
};
inline constexpr LastLoss kLastLossW2{210, 2.178851}, kLastLossW3{63, 2.273099}, kLastLossW5{210, 4.155624};
inline bool check_last_loss(const char* id, int steps_run, double got, LastLoss want) {
  return steps_run != want.steps || check(id, "last-step loss", got, want.loss, 1e-4);
}
inline void fail_run(const char* id, const std::string& why) {
  std::fprintf(stderr, "RUN FAILED %s: %s\n", id, why.c_str());
  g_failed = true;
}

inline std::map<std::string, std::string> parse_kv(const std::string& line) {
  std::map<std::string, std::string> kv;
  std::istringstream is(line);
  std::string tok;
  while (is >> tok) {
    auto p = tok.find('=');
    if (p != std::string::npos) kv[tok.substr(0, p)] = tok.substr(p + 1);
  }
  return kv;
}
inline double kv_num(const std::map<std::string, std::string>& kv, const char* key) {
  auto it = kv.find(key);
  return it == kv.end() ? NAN : std::strtod(it->second.c_str(), nullptr);
}

// ---- W4: one repetition per fresh child process ----------------------------------------------------
// The child prints "W4CHILD fwd_ms=.. bwd_ms=.. free_ms=.. total_ms=.. hwm_base_mb=.. peak_rss_mb=..
// y=.. grad_w=.." (see w4_child_line). The parent runs `reps` children with `child_args` (argv[1..]),
// detects crashes (signal or non-zero exit), checks y and w.grad, and prints the W4 line.
inline void print_w4_child(double fwd, double bwd, double fre, long hwm0_kb, long rss0_kb, long rss_fwd_kb,
                           double y, double gw) {
  long hwm = proc_status_kb("VmHWM"), rss_end = proc_status_kb("VmRSS");
  std::printf(
      "W4CHILD fwd_ms=%.3f bwd_ms=%.3f free_ms=%.3f total_ms=%.3f rss_base_mb=%.1f hwm_base_mb=%.1f "
      "rss_after_fwd_mb=%.1f peak_rss_mb=%.1f rss_end_mb=%.1f y=%.9g grad_w=%.9g\n",
      fwd, bwd, fre, fwd + bwd + fre, rss0_kb / 1024.0, hwm0_kb / 1024.0, rss_fwd_kb / 1024.0, hwm / 1024.0,
      rss_end / 1024.0, y, gw);
  std::fflush(stdout);
}

inline void run_w4_parent(const char* id, const char* name, int threads, int reps, bool do_backward,
                          const std::vector<std::string>& child_args) {
  std::vector<double> f, b, fr, t, peak, delta;
  int crashed = 0;
  std::string cause = "none";
  double y = NAN, gw = NAN;
  for (int r = 0; r < reps; ++r) {
    int fds[2];
    if (pipe(fds) != 0) { fail_run(id, "pipe failed"); return; }
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
    posix_spawn_file_actions_addclose(&fa, fds[0]);
    std::vector<const char*> argv = {"bench_w4_child"};
    for (auto& a : child_args) argv.push_back(a.c_str());
    argv.push_back(nullptr);
    pid_t pid;
    int rc = posix_spawn(&pid, "/proc/self/exe", &fa, nullptr, const_cast<char* const*>(argv.data()), environ);
    posix_spawn_file_actions_destroy(&fa);
    close(fds[1]);
    if (rc != 0) { close(fds[0]); fail_run(id, std::string("posix_spawn: ") + strerror(rc)); return; }
    std::string out;
    char buf[4096];
    ssize_t n;
    while ((n = read(fds[0], buf, sizeof buf)) > 0) out.append(buf, size_t(n));
    close(fds[0]);
    int status = 0;
    struct rusage ru {};
    wait4(pid, &status, 0, &ru);
    bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0 && out.find("W4CHILD") != std::string::npos;
    if (!ok) {
      crashed = 1;
      cause = WIFSIGNALED(status) ? std::string("signal_") + strsignal(WTERMSIG(status))
                                  : "exit_" + std::to_string(WEXITSTATUS(status));
      for (auto& c : cause) if (c == ' ') c = '_';
      std::printf("%srep rep=%d crashed=1 cause=%s child_maxrss_mb=%.1f\n", id, r, cause.c_str(), ru.ru_maxrss / 1024.0);
      continue;
    }
    std::string line = out.substr(out.find("W4CHILD"));
    line = line.substr(0, line.find('\n'));
    auto kv = parse_kv(line);
    f.push_back(kv_num(kv, "fwd_ms"));
    b.push_back(kv_num(kv, "bwd_ms"));
    fr.push_back(kv_num(kv, "free_ms"));
    t.push_back(kv_num(kv, "total_ms"));
    peak.push_back(kv_num(kv, "peak_rss_mb"));
    delta.push_back(kv_num(kv, "peak_rss_mb") - kv_num(kv, "hwm_base_mb"));
    y = kv_num(kv, "y");
    gw = kv_num(kv, "grad_w");
    std::printf("%srep rep=%d %s child_maxrss_mb=%.1f child_user_s=%.2f child_sys_s=%.2f child_minflt=%ld\n", id, r,
                line.substr(8).c_str(), ru.ru_maxrss / 1024.0, ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6,
                ru.ru_stime.tv_sec + ru.ru_stime.tv_usec * 1e-6, long(ru.ru_minflt));
  }
  bool ok = !crashed && !t.empty() && check(id, "y", y, 1.0, 0.0);
  if (ok && do_backward) ok = check(id, "w.grad", gw, 9995.0, 2e-3);
  if (crashed) fail_run(id, "a child crashed: " + cause);
  Stats F = stats(f), B = stats(b), FR = stats(fr), T = stats(t), D = stats(delta);
  double pmax = peak.empty() ? 0 : *std::max_element(peak.begin(), peak.end());
  std::printf(
      "%s %s threads=%d ops=1000000 reps=%zu fwd_ms_median=%.1f fwd_ms_min=%.1f bwd_ms_median=%.1f bwd_ms_min=%.1f "
      "free_ms_median=%.1f free_ms_min=%.1f total_ms_median=%.1f total_ms_min=%.1f peak_rss_mb_max=%.1f "
      "peak_rss_delta_mb_median=%.1f bytes_per_op=%.0f crashed=%d cause=%s y=%.9g grad_w=%.9g check=%s\n",
      id, name, threads, t.size(), F.median, F.min, B.median, B.min, FR.median, FR.min, T.median, T.min, pmax,
      D.median, D.median * 1048576.0 / 1e6, crashed, cause.c_str(), y, gw, ok ? "ok" : "FAIL");
  std::fflush(stdout);
}

// ---- command line ------------------------------------------------------------------------------------
struct Options {
  int threads = 1;
  int blas_threads = -1;  // libtorch only: -1 = same as threads, 0 = leave OpenBLAS alone
  std::vector<std::string> only;
  int w1_reps = 20, w1_warm = 3;
  int w2_steps = 200, w2_warm = 10;
  int w3_steps = 60, w3_warm = 3;  // 60 (WORKLOADS.md: >= 20): ~11 s at 1 thread, as long as bench_gemm's W3 bound
  int w5_steps = 200, w5_warm = 10;
  int w4_reps = 3;
  bool w4_nobwd = false;
  bool w5_whole = false;   // tapegrad W5: one graph over the whole batch, not backward_sharded
  bool sgd_after = false;  // tapegrad W2/W3: SGD as a pass after backward() instead of in backward
  bool info = false;
  int w4_child = -1;  // internal: 1 = child with backward, 0 = without
  int main_cpu = -1;  // tapegrad only: the CPU the main thread is pinned to (helpers stay free)
  bool alternate_threads = false;  // tapegrad only: W1 and W5 switch between 1 and 2 threads
  std::string lane = "measure";     // tapegrad only: whether a backward takes the helpers' lane
  std::string cut = "measure";      // tapegrad only: whether a small product is cut between the threads
  std::string far = "measure";      // tapegrad only: whether the helpers count as far (detail::helpers_far)
  bool selected(const std::string& w) const {
    return only.empty() || std::find(only.begin(), only.end(), w) != only.end();
  }
  // Arguments a W4 child needs to set up the same threads.
  std::vector<std::string> child_args(bool do_backward) const {
    std::vector<std::string> a = {"--w4-child", do_backward ? "1" : "0", "--threads", std::to_string(threads),
                                  "--blas-threads", std::to_string(blas_threads)};
    if (main_cpu >= 0) a.insert(a.end(), {"--main-cpu", std::to_string(main_cpu)});
    return a;
  }
};

inline void usage(const char* prog) {
  std::fprintf(stderr,
               "%s [--threads N] [--blas-threads K] [--only W1,W2,W3,W4,W5] [--w1-reps R] [--w2-steps S] "
               "[--w3-steps S] [--w5-steps S] [--w4-reps R] [--w4-nobwd] [--sgd-after-backward] [--info] "
               "[--main-cpu C] [--alternate-threads] [--lane measure|always|never] [--cut measure|always|never] [--far measure|yes|no]\n",
               prog);
}

// Lets the calling thread run on every online CPU (cpu < 0) or pins it to `cpu`, or exits with the
// reason. Threads it starts later, and processes it spawns, inherit that.
inline void pin_this_thread(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (cpu >= 0) CPU_SET(cpu, &set);
  for (long c = 0, n = sysconf(_SC_NPROCESSORS_ONLN); cpu < 0 && c < n; ++c) CPU_SET(c, &set);
  if (int rc = pthread_setaffinity_np(pthread_self(), sizeof set, &set); rc != 0) {
    std::fprintf(stderr, "--main-cpu %d: pthread_setaffinity_np: %s\n", cpu, strerror(rc));
    std::exit(2);
  }
}

inline Options parse_args(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) { usage(argv[0]); std::exit(2); }
      return argv[++i];
    };
    if (a == "--threads") o.threads = std::stoi(next());
    else if (a == "--blas-threads") o.blas_threads = std::stoi(next());
    else if (a == "--only") {
      std::istringstream is(next());
      std::string w;
      while (std::getline(is, w, ',')) o.only.push_back(w);
    } else if (a == "--w1-reps") o.w1_reps = std::stoi(next());
    else if (a == "--w2-steps") o.w2_steps = std::stoi(next());
    else if (a == "--w3-steps") o.w3_steps = std::stoi(next());
    else if (a == "--w5-steps") o.w5_steps = std::stoi(next());
    else if (a == "--w4-reps") o.w4_reps = std::stoi(next());
    else if (a == "--w4-nobwd") o.w4_nobwd = true;
    else if (a == "--sgd-after-backward") o.sgd_after = true;
    else if (a == "--w5-whole") o.w5_whole = true;
    else if (a == "--w4-child") o.w4_child = std::stoi(next());
    else if (a == "--info") o.info = true;
    else if (a == "--main-cpu") o.main_cpu = std::stoi(next());
    else if (a == "--alternate-threads") o.alternate_threads = true;
    else if (a == "--lane") o.lane = next();
    else if (a == "--cut") o.cut = next();
    else if (a == "--far") o.far = next();
    else { usage(argv[0]); std::exit(2); }
  }
  auto is_policy = [](const std::string& v) { return v == "measure" || v == "always" || v == "never"; };
  const bool far_ok = o.far == "measure" || o.far == "yes" || o.far == "no";
  if (o.threads < 1 || !is_policy(o.lane) || !is_policy(o.cut) || !far_ok) { usage(argv[0]); std::exit(2); }
  if (o.blas_threads < 0) o.blas_threads = o.threads;
  return o;
}

}  // namespace bench

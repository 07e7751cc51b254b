#pragma once
// Shared by the test files: gradcheck with a readable failure, and value comparison.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <string>
#include <tapegrad/tapegrad.hpp>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

namespace tg = tapegrad;

// Set by scripts/ci-sanitize and scripts/ci-tsan: memory figures then include the sanitizer's own.
inline bool under_sanitizer() { return std::getenv("TAPEGRAD_SANITIZER") != nullptr; }

// Resident memory of this process in kB (VmRSS from /proc/self/status), 0 if unavailable.
inline long resident_kb() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("VmRSS:", 0) == 0) return std::strtol(line.c_str() + 6, nullptr, 10);
  return 0;
}

// For a case that measures the whole process, such as its resident memory, which what earlier
// cases in one process left behind would disturb (ctest runs each case in a process of its own,
// but the binary may be run as one): whether this is the fresh process status_in_fresh_process
// started.
inline bool in_fresh_process() { return std::getenv("TAPEGRAD_ALONE") != nullptr; }

// Runs the test cases named `name` (doctest's --test-case filter) in a fresh process of this
// binary, with TAPEGRAD_ALONE set there, which prints its own failures; returns its exit status
// (0: they passed; 128 + n: killed by signal n; -1: it could not be started).
inline int status_in_fresh_process(const char* name) {
  // Everything the child needs is made before fork: it only execs.
  const std::string filter = std::string("--test-case=") + name;
  std::vector<std::string> env_strings = {"TAPEGRAD_ALONE=1"};
  for (char** e = environ; *e; ++e) env_strings.emplace_back(*e);
  std::vector<char*> envp;
  for (std::string& e : env_strings) envp.push_back(e.data());
  envp.push_back(nullptr);
  std::fflush(nullptr);
  const pid_t pid = fork();
  if (pid == 0) {
    execle("/proc/self/exe", "tapegrad_tests", filter.c_str(), "--no-intro=true", "--no-version=true",
           static_cast<char*>(nullptr), envp.data());
    _exit(127);
  }
  int status = 0;
  if (pid < 0 || waitpid(pid, &status, 0) != pid) return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// A float64 leaf with reproducible values in [lo, hi).
inline tg::Tensor leaf64(const tg::Shape& shape, uint64_t seed, double lo = -1.0, double hi = 1.0) {
  tg::Generator gen(seed);
  tg::Tensor t = tg::rand(shape, tg::kFloat64, &gen);
  std::vector<double> v = t.to_vector();
  for (double& x : v) x = lo + (hi - lo) * x;
  return tg::from_vector(v, shape, tg::dtype(tg::kFloat64).requires_grad());
}

// For a test's scope: whether backward at threads >= 2 takes the helpers' lane (by default as
// measured on its thread, engine/autograd.cpp; tests that count its tasks want it always).
struct LanePolicyGuard {
  explicit LanePolicyGuard(tg::detail::LanePolicy p) { tg::detail::set_lane_policy(p); }
  ~LanePolicyGuard() { tg::detail::set_lane_policy(tg::detail::LanePolicy::measure); }
  LanePolicyGuard(const LanePolicyGuard&) = delete;
  LanePolicyGuard& operator=(const LanePolicyGuard&) = delete;
};

// For a test's scope: whether the helpers count as far from the calling thread (1), near (0), or
// as measured (-1, the default; detail::helpers_far). Far, the lane's and the cut's timings are
// skipped; tests of those timings fix it at near, so that they run on any machine.
struct HelpersFarGuard {
  explicit HelpersFarGuard(int far) { tg::detail::set_helpers_far(far); }
  ~HelpersFarGuard() { tg::detail::set_helpers_far(-1); }
  HelpersFarGuard(const HelpersFarGuard&) = delete;
  HelpersFarGuard& operator=(const HelpersFarGuard&) = delete;
};

#define CHECK_GRADCHECK(f, inputs)                          \
  do {                                                      \
    auto gc_result_ = tg::gradcheck((f), (inputs));         \
    INFO(gc_result_.report);                                \
    CHECK(gc_result_.ok);                                   \
  } while (0)

inline void check_values(const tg::Tensor& t, const std::vector<double>& expected, double tol = 1e-6) {
  std::vector<double> v = t.to_vector();
  REQUIRE(v.size() == expected.size());
  for (size_t i = 0; i < v.size(); ++i) {
    INFO("element " << i);
    CHECK(v[i] == doctest::Approx(expected[i]).epsilon(tol));
  }
}

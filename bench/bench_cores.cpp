// bench_cores: what it costs two CPUs to share memory, the price of any work a helper thread takes
// from the main thread (engine/parallel.hpp's lane). Prints one line:
//   CORES cpus=A,B round_trip_ns=<median> rewrite_ns_per_line=<median> own_rewrite_ns_per_line=<median>
// round_trip: one cache line passed from A to B and back (a helper told of a task, and the owner of
// its end). rewrite: A writes 1 MiB that B has just read, as the next forward writes the buffers a
// helper read in the backward; own_rewrite: the same after A itself read it. Medians of 9 trials.
// A VM's vCPUs may sit near each other or far apart, and the host moves them within minutes: on
// the Zen 5 VM of 6 Dec 2026 the round trip read ~180 ns at times (rewriting lines the other CPU
// had read then cost what rewriting one's own did, ~5-7 ns) and 550-720 ns at others (2-5 ns more
// per line). W5's lane paid in the first case (t2/t1 0.64-0.71) and not in the second (~1.0):
// bench/HISTORY.md (runs J and L). scripts/bench runs this right before and
// after each round's W5 pairs.
//
// Usage: bench_cores [A B]   (default 0 1)
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

#include "common.hpp"

namespace {
using clk = std::chrono::steady_clock;
using bench::pin_this_thread;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

alignas(64) std::atomic<long> g_flag{0};

double round_trip_ns(int b) {  // from the calling thread, pinned to A
  constexpr long kTrips = 20000;
  g_flag.store(0);
  std::thread other([&] {
    pin_this_thread(b);
    for (long i = 1; i <= kTrips; ++i) {
      while (g_flag.load(std::memory_order_acquire) != 2 * i - 1) {
      }
      g_flag.store(2 * i, std::memory_order_release);
    }
  });
  auto t0 = clk::now();
  for (long i = 1; i <= kTrips; ++i) {
    g_flag.store(2 * i - 1, std::memory_order_release);
    while (g_flag.load(std::memory_order_acquire) != 2 * i) {
    }
  }
  double ns = std::chrono::duration<double, std::nano>(clk::now() - t0).count() / kTrips;
  other.join();
  return ns;
}

float read_all(const std::vector<float>& buf) {
  float s = 0;
  for (size_t i = 0; i < buf.size(); i += 16) s += buf[i];  // one load per 64-byte line
  return s;
}

// ns per line for the calling thread (on A) to write `buf` after `reader_cpu` read it.
double rewrite_ns_per_line(std::vector<float>& buf, int reader_cpu, int a, float& sink) {
  if (reader_cpu == a) sink += read_all(buf);
  else {
    std::thread r([&] {
      pin_this_thread(reader_cpu);
      sink += read_all(buf);
    });
    r.join();
  }
  auto t0 = clk::now();
  for (size_t i = 0; i < buf.size(); ++i) buf[i] = float(i) + sink;
  double ns = std::chrono::duration<double, std::nano>(clk::now() - t0).count();
  return ns / double(buf.size() / 16);
}
}  // namespace

int main(int argc, char** argv) {
  int a = 0, b = 1;
  if (argc == 3) a = std::atoi(argv[1]), b = std::atoi(argv[2]);
  else if (argc != 1) {
    std::fprintf(stderr, "usage: bench_cores [A B]\n");
    return 2;
  }
  const long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  if (a < 0 || b < 0 || a >= cpus || b >= cpus || a == b) {
    std::fprintf(stderr, "bench_cores: CPUs %d and %d: need two different CPUs of 0..%ld\n", a, b, cpus - 1);
    return 2;
  }
  pin_this_thread(a);
  std::vector<float> buf(size_t(1) << 18, 1.0f);  // 1 MiB
  float sink = 0;
  std::vector<double> trip, rewrite, own;
  for (int k = 0; k < 9; ++k) {
    trip.push_back(round_trip_ns(b));
    rewrite.push_back(rewrite_ns_per_line(buf, b, a, sink));
    own.push_back(rewrite_ns_per_line(buf, a, a, sink));
  }
  volatile float keep = sink;  // the reads and writes must happen
  (void)keep;
  std::printf("CORES cpus=%d,%d round_trip_ns=%.0f rewrite_ns_per_line=%.2f own_rewrite_ns_per_line=%.2f\n", a, b,
              median(trip), median(rewrite), median(own));
  return 0;
}

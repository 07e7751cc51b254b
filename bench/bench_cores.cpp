// bench_cores: what it costs two CPUs to share memory, the price of any work a helper thread takes
// from the main thread (engine/parallel.hpp's lane). Prints one line:
//   CORES cpus=A,B round_trip_ns=<median> rewrite_ns_per_line=<median> own_rewrite_ns_per_line=<median>
// round_trip: one cache line passed from A to B and back (a helper told of a task, and the owner of
// its end). rewrite: A writes 1 MiB that B has just read, as the next forward writes the buffers a
// helper read in the backward; own_rewrite: the same after A itself read it. Medians of 9 trials.
// A VM's vCPUs may sit on one core complex or on two dies: on the Zen 5 VM of 6 Dec 2026 the round
// trip was 563-576 ns all afternoon (cores sharing an L3 take ~50-100), and rewriting lines the
// other CPU had read cost 8.8-10.2 ns each against 5.0-5.7. That did not tell when W5's lane paid:
// in run I it did in round 1 and not in rounds 2-4, while these figures stayed the same.
//
// Usage: bench_cores [A B]   (default 0 1)
#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

namespace {
using clk = std::chrono::steady_clock;

void pin(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  if (int rc = pthread_setaffinity_np(pthread_self(), sizeof set, &set); rc != 0) {
    std::fprintf(stderr, "bench_cores: cannot pin to CPU %d (rc %d)\n", cpu, rc);
    std::exit(2);
  }
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

alignas(64) std::atomic<long> g_flag{0};

double round_trip_ns(int b) {  // from the calling thread, pinned to A
  constexpr long kTrips = 20000;
  g_flag.store(0);
  std::thread other([&] {
    pin(b);
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
      pin(reader_cpu);
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
  pin(a);
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

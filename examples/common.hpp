#pragma once
// Small helpers shared by the example programs: command-line flags, a wall clock, a progress bar
// drawn only on a terminal, accuracy from logits, and the final machine-readable RESULT line.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <nn/nn.hpp>
#include <tapegrad/tapegrad.hpp>

namespace examples {

using tapegrad::Tensor;

// --name value flags; --help prints the defaults.
class Args {
 public:
  Args(int argc, char** argv, std::map<std::string, std::string> defaults, const char* usage)
      : values_(std::move(defaults)) {
    for (int i = 1; i < argc; ++i) {
      std::string a = argv[i];
      if (a == "--help" || a == "-h") {
        std::printf("%s\noptions (defaults):\n", usage);
        for (auto& [k, v] : values_) std::printf("  --%s %s\n", k.c_str(), v.c_str());
        std::exit(0);
      }
      if (a.rfind("--", 0) != 0 || i + 1 >= argc || !values_.count(a.substr(2))) {
        std::fprintf(stderr, "unknown or incomplete option '%s' (try --help)\n", a.c_str());
        std::exit(2);
      }
      values_[a.substr(2)] = argv[++i];
    }
  }
  std::string str(const std::string& k) const { return values_.at(k); }
  long num(const std::string& k) const { return std::stol(values_.at(k)); }
  double real(const std::string& k) const { return std::stod(values_.at(k)); }

 private:
  std::map<std::string, std::string> values_;
};

class Clock {
 public:
  double seconds() const { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count(); }
  void reset() { t0_ = std::chrono::steady_clock::now(); }

 private:
  std::chrono::steady_clock::time_point t0_ = std::chrono::steady_clock::now();
};

inline bool stdout_is_terminal() { return ::isatty(STDOUT_FILENO) == 1; }

// A one-line bar redrawn in place, only when stdout is a terminal (logs stay clean).
class Progress {
 public:
  explicit Progress(size_t total) : total_(total), live_(stdout_is_terminal()) {}
  void update(size_t done, const std::string& info = "") {
    if (!live_ || total_ == 0) return;
    const int width = 30;
    int filled = static_cast<int>(width * double(done) / double(total_));
    std::printf("\r  [%s%s] %3d%% %s", std::string(filled, '#').c_str(), std::string(width - filled, '.').c_str(),
                static_cast<int>(100.0 * double(done) / double(total_)), info.c_str());
    std::fflush(stdout);
  }
  void clear() {
    if (!live_) return;
    std::printf("\r%s\r", std::string(100, ' ').c_str());
    std::fflush(stdout);
  }

 private:
  size_t total_;
  bool live_;
};

// The predicted class of each row of logits [B,C] (float32), and how many match the labels.
inline std::vector<int64_t> predict(const Tensor& logits) {
  size_t B = logits.shape()[0], C = logits.shape()[1];
  std::vector<double> v = logits.to_vector();
  std::vector<int64_t> out(B);
  for (size_t i = 0; i < B; ++i) {
    size_t best = 0;
    for (size_t c = 1; c < C; ++c)
      if (v[i * C + c] > v[i * C + best]) best = c;
    out[i] = static_cast<int64_t>(best);
  }
  return out;
}

inline double accuracy(const std::vector<int64_t>& pred, const std::vector<int64_t>& labels) {
  size_t ok = 0;
  for (size_t i = 0; i < pred.size(); ++i) ok += pred[i] == labels[i];
  return pred.empty() ? 0.0 : double(ok) / double(pred.size());
}

// The last line of every example: RESULT example=<name> key=value ...
inline void print_result(const std::string& name, const std::vector<std::pair<std::string, std::string>>& kv) {
  std::printf("RESULT example=%s", name.c_str());
  for (auto& [k, v] : kv) std::printf(" %s=%s", k.c_str(), v.c_str());
  std::printf("\n");
  std::fflush(stdout);
}

inline std::string fixed(double v, int digits = 4) {
  std::ostringstream os;
  os.setf(std::ios::fixed);
  os.precision(digits);
  os << v;
  return os.str();
}

// Rows `idx` of a float matrix and the matching labels, as a batch.
inline Tensor rows(const Tensor& X, const std::vector<int64_t>& idx) {
  return tapegrad::index_select(X, 0, tapegrad::from_indices(idx, tapegrad::Shape{idx.size()}));
}

}  // namespace examples

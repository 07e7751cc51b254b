// libFuzzer harness: bytes -> a program of tensor factories, ops, in-place writes and backward
// calls, with arbitrary shapes, dims, indices and values (NaN, ±Inf, huge, denormal, empty
// tensors, zero-size dims, negative dims, int64 where floats are expected, mixed dtypes).
// The library may only throw tapegrad::Error. Anything else — another exception, a crash, a
// sanitizer report, a hang — is a finding. Built and run by tests/fuzz/run.
#include <fuzzer/FuzzedDataProvider.h>

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdint>
#include <limits>
#include <new>
#include <vector>

#include <tapegrad/tapegrad.hpp>

using namespace tapegrad;

namespace {

constexpr size_t kPool = 8;

// Finding F5 (regression test in tests/test_reliability.cpp): extents whose product overflows
// (zeros({1 << 62}, kFloat32): numel·4 wraps to 0) allocate a tiny buffer and write past it. While
// that is not fixed, overflow-sized extents are not generated, so fuzzing finds other things;
// the probe runs in a child process at start-up.
// Finding F6: factories with dtype int64 convert any double (1e308, NaN, ±Inf) with a plain cast
// (undefined behaviour; UBSan: float-cast-overflow in write_at). While not fixed, values given to
// int64 factories are kept in range.
bool f5_fixed = false, f6_fixed = false;

// Runs f in a child process: true when it returns or throws tapegrad::Error, without a crash or
// a sanitizer report.
bool clean_in_child(void (*f)()) {
  pid_t pid = fork();
  if (pid == 0) {
    int fd = open("/dev/null", O_WRONLY);
    if (fd >= 0) dup2(fd, 2);
    try {
      f();
    } catch (const Error&) {
    } catch (...) {
      _exit(1);
    }
    _exit(0);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}
void f5_probe() {
  try {
    zeros(Shape{size_t(1) << 62}, kFloat32);
  } catch (const Error&) {
    zeros(Shape{size_t(1) << 32, size_t(1) << 32}, kFloat64);
    return;
  }
  _exit(1);  // no error: the overflowing shape was accepted
}
void f6_probe() {
  full({2}, 1e308, kInt64);
  full({2}, std::numeric_limits<double>::quiet_NaN(), kInt64);
  from_vector({-1e300}, {1}, kInt64);
}
constexpr size_t kMaxNumel = 1 << 14;  // keeps one input cheap; shapes beyond it are built only as factories' requests
constexpr size_t kMaxPair = 1 << 22;

struct Program {
  FuzzedDataProvider& in;
  std::vector<Tensor> pool;

  double value() {
    static const double special[] = {0.0, -0.0, 1.0, -1.0, 0.5, 1e-310, 1e308, -1e308, 1e30,
                                     std::numeric_limits<double>::quiet_NaN(),
                                     std::numeric_limits<double>::infinity(),
                                     -std::numeric_limits<double>::infinity(), 9.3e18, -9.3e18, 3.0};
    if (in.ConsumeBool()) return special[in.ConsumeIntegralInRange<size_t>(0, std::size(special) - 1)];
    return in.ConsumeFloatingPointInRange<double>(-4.0, 4.0);
  }
  int64_t dim_arg() {  // a dim or index: mostly small, sometimes far out of range
    if (in.ConsumeIntegralInRange<int>(0, 9) == 0) return in.ConsumeIntegral<int64_t>();
    return in.ConsumeIntegralInRange<int64_t>(-7, 7);
  }
  size_t extent() {
    int c = in.ConsumeIntegralInRange<int>(0, 31);
    // overflow bait: alone its bytes overflow size_t (an honest huge request would only test the machine)
    if (c == 0 && f5_fixed) return in.ConsumeBool() ? (size_t(1) << 62) : std::numeric_limits<size_t>::max();
    return static_cast<size_t>(c % 5);  // 0..4, zero-size dims included
  }
  Shape shape() {
    Shape s;
    size_t rank = in.ConsumeIntegralInRange<size_t>(0, 7);  // 7: one past the maximum
    for (size_t i = 0; i < rank; ++i) s.push_back(extent());
    return s;
  }
  std::vector<int64_t> int_list() {
    std::vector<int64_t> v;
    size_t n = in.ConsumeIntegralInRange<size_t>(0, 7);
    for (size_t i = 0; i < n; ++i) v.push_back(in.ConsumeBool() ? in.ConsumeIntegralInRange<int64_t>(-1, 5) : dim_arg());
    return v;
  }
  Dtype dtype() {
    switch (in.ConsumeIntegralInRange<int>(0, 2)) {
      case 0: return kFloat32;
      case 1: return kFloat64;
      default: return kInt64;
    }
  }
  static bool too_big(const Tensor& a, const Tensor& b) {
    size_t na = a.defined() ? a.numel() : 0, nb = b.defined() ? b.numel() : 0;
    return std::max<size_t>(na, 1) * std::max<size_t>(nb, 1) > kMaxPair;
  }
  Tensor& pick() { return pool[in.ConsumeIntegralInRange<size_t>(0, pool.size() - 1)]; }
  // Results past kMaxNumel are not kept: repeated cat or broadcasting would otherwise double the
  // pool's tensors until the fuzzer's memory limit (found by a 25-minute run), testing only the
  // machine. An op whose operands' sizes multiply past kMaxPair (a broadcast outer product) is
  // not run for the same reason.
  void put(Tensor t) {
    if (!t.defined() || t.numel() > kMaxNumel) return;
    pool[in.ConsumeIntegralInRange<size_t>(0, pool.size() - 1)] = std::move(t);
  }

  Tensor make() {
    Shape s = shape();
    bool overflows = false;  // the element count, or its bytes, past size_t: must be an Error
    size_t n = 1;
    for (size_t e : s) overflows |= __builtin_mul_overflow(n, e, &n);
    overflows |= __builtin_mul_overflow(n, size_t(8), &n);
    if (overflows) return zeros(s, dtype());
    if (s.numel() > kMaxNumel) return Tensor();  // merely big: an honest request, not tried
    Dtype d = dtype();
    auto value = [this, d] {
      double v = this->value();
      return !f6_fixed && d == kInt64 && !(std::fabs(v) < 9e18) ? 1.0 : v;
    };
    Tensor t;
    switch (in.ConsumeIntegralInRange<int>(0, 5)) {
      case 0: t = full(s, value(), d); break;
      case 1: {
        double a = value(), b = value(), step = value();
        // counts past 1e4 are honest big requests, except those whose bytes overflow (F5)
        double count = std::fabs((b - a) / step);
        if (!(count < 1e4) && (!f5_fixed || count < 2.4e18)) step = b - a;
        t = arange(a, b, step, d);
        break;
      }
      case 2: t = randint(in.ConsumeIntegral<int64_t>(), in.ConsumeIntegral<int64_t>(), s); break;
      case 3: t = scalar_tensor(value(), d); break;
      case 4: {
        std::vector<double> v(s.numel());
        for (double& x : v) x = value();
        t = from_vector(v, s, d);
        break;
      }
      default: {
        std::vector<int64_t> v(s.numel());
        for (int64_t& x : v) x = dim_arg();
        t = from_indices(v, s);
      }
    }
    if (in.ConsumeBool()) t.requires_grad_(true);
    return t;
  }

  Tensor op(int code, const Tensor& a, const Tensor& b) {
    switch (code) {
      case 0: return add(a, b);
      case 1: return sub(a, b);
      case 2: return mul(a, b);
      case 3: return div(a, b);
      case 4: return neg(a);
      case 5: return a * value();
      case 6: return value() / a;
      case 7: return exp(a);
      case 8: return log(a);
      case 9: return sqrt(a);
      case 10: return pow(a, value());
      case 11: return pow(a, b);
      case 12: return abs(a);
      case 13: return tanh(a);
      case 14: return sigmoid(a);
      case 15: return relu(a);
      case 16: return leaky_relu(a, value());
      case 17: return gelu(a);
      case 18: return clamp(a, value(), value());
      case 19: return sum(a);
      case 20: return sum(a, dim_arg(), in.ConsumeBool());
      case 21: return sum(a, int_list(), in.ConsumeBool());
      case 22: return mean(a);
      case 23: return mean(a, int_list(), in.ConsumeBool());
      case 24: return max(a);
      case 25: return max(a, dim_arg(), in.ConsumeBool());
      case 26: return min(a, dim_arg(), in.ConsumeBool());
      case 27: return argmax(a, dim_arg(), in.ConsumeBool());
      case 28: return argmin(a, dim_arg(), in.ConsumeBool());
      case 29: return reshape(a, int_list());
      case 30: return flatten(a, dim_arg(), dim_arg());
      case 31: return squeeze(a);
      case 32: return squeeze(a, dim_arg());
      case 33: return unsqueeze(a, dim_arg());
      case 34: return transpose(a, dim_arg(), dim_arg());
      case 35: return permute(a, int_list());
      case 36: return narrow(a, dim_arg(), dim_arg(), dim_arg());
      case 37: return slice(a, dim_arg(), dim_arg(), dim_arg(), dim_arg());
      case 38: return select(a, dim_arg(), dim_arg());
      case 39: return cat({a, b}, dim_arg());
      case 40: return stack({a, b}, dim_arg());
      case 41: return index_select(a, dim_arg(), b);
      case 42: return clone(a);
      case 43: return expand(a, shape());
      case 44: return sum_to(a, shape());
      case 45: return matmul(a, b);
      case 46: return mm(a, b, in.ConsumeBool(), in.ConsumeBool());
      case 47: return linear(a, b, in.ConsumeBool() ? pick() : Tensor());
      case 48: return softmax(a, dim_arg());
      case 49: return log_softmax(a, dim_arg());
      case 50: return cross_entropy(a, b);
      case 51: return nll_loss(a, b, static_cast<Reduction>(in.ConsumeIntegralInRange<int>(0, 2)));
      case 52: return mse_loss(a, b);
      case 53: return binary_cross_entropy_with_logits(a, b);
      case 54: return cat({a, b, pick()}, dim_arg());
      default: return a.detach();
    }
  }

  void step() {
    switch (in.ConsumeIntegralInRange<int>(0, 15)) {
      case 0: case 1: put(make()); return;
      case 2: {  // backward, with or without a gradient
        Tensor& r = pick();
        Tensor g = in.ConsumeBool() ? pick() : Tensor();
        r.backward(g, in.ConsumeBool());
        return;
      }
      case 3: {  // functional grad
        Tensor& y = pick();
        Tensor& x = pick();
        auto g = grad({y}, {x}, {}, in.ConsumeBool(), in.ConsumeBool(), in.ConsumeBool());
        put(g[0]);
        return;
      }
      case 4: {  // an in-place write (what optimizers do), then the graph may be stale
        Tensor& t = pick();
        if (t.defined() && t.dtype() == kFloat64 && t.numel() > 0) {
          t.data_ptr<double>()[0] = value();
          t.bump_version();
        }
        return;
      }
      case 5: {
        Tensor& t = pick();
        if (in.ConsumeBool()) t.zero_grad();
        else t.retain_grad();
        put(t.grad());
        return;
      }
      case 6: pick().requires_grad_(in.ConsumeBool()); return;
      case 7: {
        NoGradGuard no_grad;
        int code = in.ConsumeIntegralInRange<int>(0, 55);
        Tensor& a = pick();
        Tensor& b = pick();
        if (!too_big(a, b)) put(op(code, a, b));
        return;
      }
      case 8: (void)pick().item(); return;
      default: {
        int code = in.ConsumeIntegralInRange<int>(0, 55);
        Tensor& a = pick();
        Tensor& b = pick();
        if (!too_big(a, b)) put(op(code, a, b));
      }
    }
  }
};

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  f5_fixed = clean_in_child(f5_probe);
  f6_fixed = clean_in_child(f6_probe);
  if (!f5_fixed) std::fprintf(stderr, "fuzz_ops: finding F5 not fixed yet: overflow-sized extents are not generated\n");
  if (!f6_fixed) std::fprintf(stderr, "fuzz_ops: finding F6 not fixed yet: int64 factories get in-range values only\n");
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  Program p{in, std::vector<Tensor>(kPool)};
  p.pool[0] = tensor({{1.0, 2.0, 3.0}, {4.0, 5.0, 6.0}}, dtype(kFloat64).requires_grad());
  p.pool[1] = tensor({0.5, -0.5, 2.0}, dtype(kFloat32).requires_grad());
  p.pool[2] = from_indices({0, 2}, {2});
  p.pool[3] = zeros({0, 3}, kFloat64);
  while (in.remaining_bytes() > 0) {
    try {
      p.step();
    } catch (const Error&) {
      // the one exception the library may throw
    } catch (const std::bad_alloc&) {
      // an honest request for more memory than there is (shapes with huge extents)
    }
  }
  return 0;
}

// Matrix products through BLAS gemm. Transposes are never materialised: gemm reads an operand
// transposed in place when told to, so the backward of a product is two more products.
#include <cblas.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <map>

#include "../engine/blas.hpp"
#include "../engine/parallel.hpp"
#include "kernel.hpp"
#include "sgemm.hpp"

namespace tapegrad {
using namespace kernel;

namespace {

// Who runs a product: BLAS, or one of tapegrad's float32 kernels (ops/sgemm.cpp), sgemm for small
// products or sgemm_large for large ones where OpenBLAS's kernels are narrower than the build's.
// Decided for the whole product, so every block of it at n threads runs on the same kernel.
enum class By { blas, sgemm, sgemm_large };

template <class T>
By kernel_for(size_t M, size_t N, size_t K) {
  if constexpr (std::is_same_v<T, float>) {
    if (kernel::sgemm_takes(M, N, K)) return By::sgemm;
    if (kernel::sgemm_large_takes(M, N, K, detail::blas_float_lanes())) return By::sgemm_large;
  }
  return By::blas;
}

// C[M,N] = alpha·op(A)·op(B) + beta·C, row-major, where A/B are stored [rows, cols] as given and
// lda/ldb/ldc are their row strides (so that a block of rows or columns is a gemm of its own).
template <class T>
void gemm_block(By by, const T* A, const T* B, T* C, size_t M, size_t N, size_t K, size_t lda, size_t ldb,
                size_t ldc, bool ta, bool tb, T beta, T alpha) {
  if constexpr (std::is_same_v<T, float>) {
    if (by == By::sgemm) return kernel::sgemm(A, B, C, M, N, K, lda, ldb, ldc, ta, tb, alpha, beta);
    if (by == By::sgemm_large) return kernel::sgemm_large(A, B, C, M, N, K, lda, ldb, ldc, ta, tb, alpha, beta);
  }
  auto opA = ta ? CblasTrans : CblasNoTrans, opB = tb ? CblasTrans : CblasNoTrans;
  auto m = static_cast<int>(M), n = static_cast<int>(N), k = static_cast<int>(K);
  auto a = static_cast<int>(lda), b = static_cast<int>(ldb), c = static_cast<int>(ldc);
  if constexpr (std::is_same_v<T, float>)
    cblas_sgemm(CblasRowMajor, opA, opB, m, n, k, alpha, A, a, B, b, beta, C, c);
  else
    cblas_dgemm(CblasRowMajor, opA, opB, m, n, k, alpha, A, a, B, b, beta, C, c);
}

// Products of fewer multiply-adds run whole on the calling thread: handing half of one to a
// helper costs about half a microsecond, and these take two or three on one AVX2 core.
constexpr double kSplitProduct = 1e5;
// Blocks are whole multiples of this many rows (or columns), so the kernels' register tiles stay full.
constexpr size_t kBlockQuantum = 16;

// Whether cutting a small product pays depends on how far apart the cores are. On the Zen 4 VM
// of 4 Dec 2026 W5's products ran about 25 % faster cut in two; on the Zen 5 VM of 6 Dec, whose
// two vCPUs are ~210 ns apart (a cache line's round trip 420 ns), a [32,128]·[128,128] product
// whose A the caller had just written took 6.8 µs whole and 17.7 cut: the helper pulls its
// operands from the caller's cache and the caller pulls the helper's half of C back, and W5's
// step took 3.9 ms at 2 threads against 2.0 at 1. So calls of each shape that would be cut on
// tapegrad's own kernel are timed: a run of them whole, then a run cut, each after one untimed
// call that puts the data where that way wants it (calls cut and whole in turn would both pay for
// moving C between the cores). A timed cut call ends when the caller has read C back, which the
// next op would pay for otherwise, and counts only if a helper ran a part: a helper asleep wakes
// slowly on that VM, the caller meanwhile runs every part, and such calls timed as fast as whole
// ones. The shape is cut when that was clearly faster (a wrong cut costs up to 2.6×, a wrong whole
// at most the cut's gain), or whole if the helpers never took part or the first cut calls were
// clearly slower (kCutQuickTrials, kCutClearlyLoses), for its next 4096 calls; then it is timed
// again (after up to 8 × 4096 calls while the timings agree: detail::Hold), since what pays
// changes as the host moves and loads its vCPUs. On that VM, within the same hour, W5's products
// took 1.6-1.8× whole's time cut, then 0.75×; and later a W5 step at one thread took 3.6-3.9 ms
// on CPU 0 against 2.2-3.0 on CPU 1, where cutting paid for a caller on CPU 0 (its helper on the
// faster CPU 1) and not for one on CPU 1. Per thread, and not in the shape's first calls, which
// are cut as before: a first training step faults in its buffers' pages, and on that VM a fault
// took ~10 µs, more than a product. With the helpers far from the caller (detail::helpers_far)
// products run whole, untimed, from the thread's first (t_far_left, below): far apart, W5's 64
// first calls of each shape, cut, made all its later steps at 2 threads ~0.5 % slower (whole,
// 0.9941 and 0.9951 of their time in two batches of sets: 7 Dec 2026, run R in bench/).
// On that kernel a block's values are the whole's bit for bit, so the choice moves only the
// time. Products on BLAS are cut by size alone: a block there may round apart from the whole, and
// a value should not depend on a timing.
constexpr double kCutUnmeasured = 1e7;  // multiply-adds from which a product is cut unmeasured: at
                                        // ~100 per ns, moving even 1 MB between the cores costs less
constexpr unsigned kCutWarmCalls = 64;  // calls before the timing starts (W5: one step's)
constexpr unsigned kCutTrials = 5;      // timed calls of each way; their medians decide
constexpr unsigned kCutTries = 4 * kCutTrials;  // cut calls that may go without a helper's part
constexpr float kCutMustWin = 0.9f;     // cut when its median is below this share of whole's
constexpr unsigned kCutQuickTrials = 2;   // whole, without more cut calls, when the first ones
constexpr float kCutClearlyLoses = 1.5f;  // all took over this many times whole's median (vCPUs
                                          // far apart: 2.6×; near, 0.6-0.75×)
constexpr size_t kMaxCutShapes = 1024;  // shapes remembered per thread; beyond, products are cut
std::atomic<detail::ProductCut> g_product_cut{detail::ProductCut::measure};

constexpr unsigned kCutKept = 4096;  // calls a decision holds before the shape is timed again
struct CutTrials {
  unsigned calls = 0;      // calls of this shape so far (since the decision, once decided)
  unsigned tries = 0;      // cut calls timed, with or without a helper
  unsigned n[2] = {0, 0};  // calls that count: [0] whole, [1] cut with a helper's part
  float us[2][kCutTrials];
  bool decided = false, cut_pays = false;
  unsigned kept = kCutKept;  // calls the decision holds
  detail::Hold hold;         // kept across timings

  void decide(bool cut) {
    decided = true;
    cut_pays = cut;
    calls = 0;
    kept = hold.after(cut, kCutKept);
  }
  // Counts a call of a decided shape; false when the decision has run its course and the shape
  // is to be timed again, without the warm-up calls.
  bool keep_decision() {
    if (++calls <= kept) return true;
    CutTrials again;
    again.hold = hold;
    again.calls = kCutWarmCalls;  // the next call is the untimed first one
    *this = again;
    return false;
  }
};
thread_local std::map<std::array<size_t, 6>, CutTrials> t_cut_trials;

// The trials of a shape: the map's entry, found first in a small table of recent shapes by a hash
// of the shape (map entries never move), since W5 looks up 384 products of 6 shapes a step.
CutTrials* trials_of(const std::array<size_t, 6>& shape) {
  struct Recent {
    std::array<size_t, 6> shape;
    CutTrials* trials = nullptr;
  };
  thread_local Recent recent[16];
  uint64_t h = 0;
  for (size_t v : shape) h = (h ^ v) * 0x9E3779B97F4A7C15ull;
  Recent& r = recent[h >> 60];
  if (r.trials && r.shape == shape) return r.trials;
  auto it = t_cut_trials.find(shape);
  if (it == t_cut_trials.end()) {
    if (t_cut_trials.size() >= kMaxCutShapes) return nullptr;
    it = t_cut_trials.emplace(shape, CutTrials{}).first;
  }
  r = {shape, &it->second};
  return r.trials;
}

float median_of(float* v, size_t n) {
  std::nth_element(v, v + n / 2, v + n);
  return v[n / 2];
}

// Takes every cache line of [p, p + bytes) to this core for writing (rewrites a byte of each
// with its own value): a timing then includes moving them here, as reading C and later reusing
// its memory would. A read alone leaves the other core a copy, whose invalidation comes later.
void pull(void* p, size_t bytes) {
  auto* c = static_cast<volatile unsigned char*>(p);
  for (size_t i = 0; i < bytes; i += 64) c[i] = c[i];
}

// Products this thread runs whole before it asks again whether its helpers are far: kCutKept once
// they were found far (detail::helpers_far), none while near; the thread's first product asks.
// So far apart every product runs whole, untimed, its shape neither looked up nor remembered, as
// at 1 thread. When each shape kept its own far answer, W5's step at 2 threads took 1.0061 of its
// time at 1 (148 sets of runs, 2 threads faster in 50), and 0.9997 (75 of 148) in the same sets
// this way (7 Dec 2026, run U in bench/).
thread_local unsigned t_far_left = 1;

// Runs a product whole() or cut() (which returns the parts helpers ran), as measured for its shape
// (above); its output is C_bytes at C.
template <class Whole, class Cut>
void whole_or_cut(const std::array<size_t, 6>& shape, Whole whole, Cut cut, void* C, size_t C_bytes) {
  if (detail::in_part()) return whole();  // the threads are busy with the job this product is part of
  const detail::ProductCut policy = g_product_cut.load(std::memory_order_relaxed);
  if (policy != detail::ProductCut::measure) return policy == detail::ProductCut::always ? (void)cut() : whole();
  if (t_far_left > 0) {
    if (--t_far_left > 0) return whole();
    if (detail::helpers_far()) return (void)(t_far_left = kCutKept), whole();
  }
  CutTrials* trials = trials_of(shape);
  if (!trials) return (void)cut();  // more shapes than remembered
  CutTrials& t = *trials;
  if (t.decided && t.keep_decision()) return t.cut_pays ? (void)cut() : whole();
  // Far now (the host moved the vCPUs apart): whole; near again, the shape's timing goes on where it
  // stopped.
  if ((t.calls == 0 || t.calls == kCutWarmCalls) && detail::helpers_far()) return (void)(t_far_left = kCutKept), whole();
  if (++t.calls <= kCutWarmCalls) return (void)cut();
  const unsigned way = t.n[0] < kCutTrials ? 0 : 1;
  const bool first = t.calls == kCutWarmCalls + 1 || (way == 1 && t.n[1] == 0 && t.tries == 0);
  const auto start = std::chrono::steady_clock::now();
  int helped = 0;
  if (way == 1) {
    helped = cut();
    pull(C, C_bytes);
  } else {
    whole();
  }
  const float us = std::chrono::duration<float, std::micro>(std::chrono::steady_clock::now() - start).count();
  if (way == 1) ++t.tries;
  if (first || (way == 1 && helped == 0)) {
    if (t.tries > kCutTries) t.decide(false);  // the helpers did not take part: cutting gains nothing
    return;
  }
  t.us[way][t.n[way]++] = us;
  if (way == 0 || t.n[1] < kCutQuickTrials) return;
  const float whole_us = median_of(t.us[0], kCutTrials);
  if (t.n[1] == kCutQuickTrials && *std::min_element(t.us[1], t.us[1] + kCutQuickTrials) > kCutClearlyLoses * whole_us)
    return t.decide(false);
  if (t.n[1] == kCutTrials) t.decide(median_of(t.us[1], kCutTrials) < kCutMustWin * whole_us);
}

// C = alpha·op(A)·op(B) + beta·C. At n threads (set_num_threads) a product is cut into up to n
// blocks of C's rows, or of its columns when C is wider than tall, one single-threaded gemm_block
// each, run side by side (detail::run_parts); on tapegrad's own kernel only when that was measured
// to pay (whole_or_cut). The blocks depend on the thread count alone, not on whether the helpers
// were free, so a result is the same at that count every time; on tapegrad's own kernel it is also
// that of one thread bit for bit, while OpenBLAS's kernels may sum a block in another order than
// the whole, by a few ulps (tests/test_linalg.cpp).
// Alone (a task on the sweep's lane, on a helper) the blocks run one after another, or whole on
// tapegrad's own kernel, whose blocks are the whole's bit for bit: the same values as the call
// would give on the sweep's thread.
template <class T>
void gemm(const T* A, const T* B, T* C, size_t M, size_t N, size_t K, bool ta, bool tb, T beta, T alpha = T(1),
          bool alone = false) {
  if (M == 0 || N == 0) return;
  if (K == 0) {  // empty sum: C = beta·C
    for (size_t i = 0; i < M * N; ++i) C[i] = beta == T(0) ? T(0) : beta * C[i];
    return;
  }
  const size_t lda = ta ? M : K, ldb = tb ? K : N;
  const By by = kernel_for<T>(M, N, K);
  if (by == By::blas) detail::warn_if_blas_fallback();
  const bool by_rows = M >= N;
  const size_t cut = by_rows ? M : N;  // the dimension cut into blocks
  size_t parts = double(M) * double(N) * double(K) < kSplitProduct ? 1 : size_t(detail::intra_op_threads());
  const size_t quanta = cut / kBlockQuantum, per_part = parts > 1 && quanta > 1 ? (quanta + parts - 1) / parts : 0;
  auto whole = [&] { gemm_block<T>(by, A, B, C, M, N, K, lda, ldb, N, ta, tb, beta, alpha); };
  if (per_part == 0) return whole();
  parts = (quanta + per_part - 1) / per_part;  // blocks of per_part quanta; the last takes the rest
  const size_t step = per_part * kBlockQuantum;
  auto block = [&](int k) {
    const size_t lo = size_t(k) * step, len = size_t(k) + 1 == parts ? cut - lo : step;
    if (by_rows)  // rows lo.. of C are rows lo.. of op(A)
      gemm_block<T>(by, ta ? A + lo : A + lo * lda, B, C + lo * N, len, N, K, lda, ldb, N, ta, tb, beta, alpha);
    else  // columns lo.. of C are columns lo.. of op(B)
      gemm_block<T>(by, A, tb ? B + lo * ldb : B + lo, C + lo, M, len, K, lda, ldb, N, ta, tb, beta, alpha);
  };
  if (alone) {
    if (by != By::blas) return whole();
    for (size_t k = 0; k < parts; ++k) block(int(k));
    return;
  }
  auto in_blocks = [&] { return detail::run_parts(int(parts), block); };
  if (by == By::blas || double(M) * double(N) * double(K) >= kCutUnmeasured) return (void)in_blocks();
  whole_or_cut({M, N, K, size_t(ta), size_t(tb), parts}, whole, in_blocks, C, M * N * sizeof(T));
}

std::string op_str(const Shape& s, bool t) { return s.str() + (t ? "ᵀ" : ""); }

// Input i's gradient is op(A)·op(B). It is added like any gradient, by a gemm that writes it or,
// when input i already has a pending gradient of this sweep's own, adds into that with beta = 1
// (Backward::add_into: W5's weights take 64 contributions each). When a graph of the backward is
// being built, it is an mm, recorded. And when input i is a parameter updated in backward
// (register_step_in_backward: plain SGD) and this is its only use, the update is folded into the
// product: p ← (1 − lr·wd)·p − lr·op(A)·op(B) is one gemm with alpha = −lr, beta = 1 − lr·wd, and
// the gradient is never stored. That runs once the node's backward has returned, since the node's
// other gradients may read p's old value. Otherwise, at threads >= 2, a product into a leaf of
// 1e5 to 1e7 multiply-adds runs on the sweep's lane, on a helper, while the sweep goes on
// (Backward::add_into_later): smaller ones are not worth a post, larger ones are cut in blocks
// between the threads anyway. W5 at 2 threads gives its helper half its backward's products this
// way when the sweep's trials find that it pays (engine/autograd.cpp). On the Zen 5 VM of 6 Dec
// 2026 that followed where the host put the two vCPUs (bench/bench_cores, run J): near (a cache
// line's round trip ~180 ns) the step took 0.66-0.71 of its time at 1 thread; far (550-720 ns)
// the helper's reads cost the next forward what the backward gained, and the trials left it.
void add_product(Backward& g, size_t i, const Tensor& A, const Tensor& B, bool ta, bool tb, const char* rule) {
  if (!g.wants(i)) return;
  if (g.create_graph()) {
    g.add(i, mm(A, B, ta, tb), rule);
    return;
  }
  const Tensor& p = g.input(i);
  size_t M = ta ? A.shape()[1] : A.shape()[0], K = ta ? A.shape()[0] : A.shape()[1];
  size_t N = tb ? B.shape()[0] : B.shape()[1];
  if (p.shape() != Shape{M, N} || p.dtype() != A.dtype() || A.dtype() != B.dtype())
    fail(g.op(), ": backward's product ", op_str(A.shape(), ta), "·", op_str(B.shape(), tb),
         " does not fit the input of shape ", p.shape());
  const StepInBackward* step = g.fusable_step(i);
  const double macs = double(M) * double(N) * double(K);
  if (!step && macs >= kSplitProduct && macs < kCutUnmeasured) {
    // A and B keep the operands' buffers until the product has run; it reads them through a and b.
    g.add_into_later(i, [A, B, a = A.impl()->data, b = B.impl()->data, dt = A.dtype(), M, N, K, ta, tb](
                            void* dst, bool accumulate, bool later) {
      dispatch("matmul", dt, [&]<class T>() {
        gemm<T>(static_cast<const T*>(a), static_cast<const T*>(b), static_cast<T*>(dst), M, N, K, ta, tb,
                T(accumulate ? 1 : 0), T(1), /*alone=*/later);
      });
    }, rule);
    return;
  }
  if (!step) {
    g.add_into(i, [&](Tensor& dst, bool accumulate) {
      dispatch("matmul", dst.dtype(), [&]<class T>() {
        gemm<T>(A.data_ptr<T>(), B.data_ptr<T>(), dst.data_ptr<T>(), M, N, K, ta, tb, T(accumulate ? 1 : 0));
      });
    }, rule);
    return;
  }
  double lr = step->lr, keep = 1 - step->lr * step->weight_decay;
  g.apply_step(i, [A, B, p, M, N, K, ta, tb, lr, keep] {
    dispatch("step_in_backward", p.dtype(), [&]<class T>() {
      gemm<T>(A.data_ptr<T>(), B.data_ptr<T>(), p.data_ptr<T>(), M, N, K, ta, tb, T(keep), T(-lr));
    });
  });
}

}  // namespace

void detail::set_product_cut(ProductCut policy) { g_product_cut.store(policy); }
size_t detail::cut_shapes() { return t_cut_trials.size(); }

// mm: C = op(A)·op(B)
//   dA = dC·op(B)ᵀ   (or op(B)·dCᵀ when A was read transposed)
//   dB = op(A)ᵀ·dC   (or dCᵀ·op(A) when B was read transposed)
// Each is itself an mm with flags, so the backward is differentiable and copies nothing.
Tensor mm(const Tensor& a, const Tensor& b, bool ta, bool tb, CallSite site) {
  const SiteScope in(site);
  check_same_dtype("matmul", a, b);
  if (a.dim() != 2 || b.dim() != 2)
    fail("matmul: mm needs 2-D operands, got ", a.shape(), " and ", b.shape());
  size_t M = ta ? a.shape()[1] : a.shape()[0], K = ta ? a.shape()[0] : a.shape()[1];
  size_t Kb = tb ? b.shape()[1] : b.shape()[0], N = tb ? b.shape()[0] : b.shape()[1];
  if (K != Kb)
    fail("matmul: shapes ", op_str(a.shape(), ta), " and ", op_str(b.shape(), tb), " do not align (", K, " vs ", Kb, ")");
  Tensor out = empty_out(a.dtype(), Shape{M, N});
  dispatch("matmul", a.dtype(), [&]<class T>() {
    gemm<T>(a.data_ptr<T>(), b.data_ptr<T>(), out.data_ptr<T>(), M, N, K, ta, tb, T(0));
  });
  return record("matmul", out, {a, b}, [ta, tb](Backward& g) {
    const Tensor &A = g.input(0), &B = g.input(1), &dC = g.dout();
    if (ta) add_product(g, 0, B, dC, tb, true, tb ? "dA += Bᵀ·doutᵀ" : "dA += B·doutᵀ");
    else add_product(g, 0, dC, B, false, !tb, tb ? "dA += dout·B" : "dA += dout·Bᵀ");
    if (tb) add_product(g, 1, dC, A, true, ta, ta ? "dB += doutᵀ·Aᵀ" : "dB += doutᵀ·A");
    else add_product(g, 1, A, dC, !ta, false, ta ? "dB += A·dout" : "dB += Aᵀ·dout");
  }, "A B");
}

// bmm: C[b] = A[b]·B[b] for 3-D operands      dA[b] = dC[b]·B[b]ᵀ      dB[b] = A[b]ᵀ·dC[b]
static Tensor bmm(const Tensor& a, const Tensor& b, bool ta, bool tb) {
  size_t batch = a.shape()[0];
  if (b.shape()[0] != batch) fail("matmul: batch sizes of ", a.shape(), " and ", b.shape(), " differ");
  size_t ar = a.shape()[1], ac = a.shape()[2], br = b.shape()[1], bc = b.shape()[2];
  size_t M = ta ? ac : ar, K = ta ? ar : ac, Kb = tb ? bc : br, N = tb ? br : bc;
  if (K != Kb) fail("matmul: shapes ", a.shape(), " and ", b.shape(), " do not align (", K, " vs ", Kb, ")");
  Tensor out = empty_out(a.dtype(), Shape{batch, M, N});
  dispatch("matmul", a.dtype(), [&]<class T>() {
    for (size_t i = 0; i < batch; ++i)
      gemm<T>(a.data_ptr<T>() + i * ar * ac, b.data_ptr<T>() + i * br * bc, out.data_ptr<T>() + i * M * N,
              M, N, K, ta, tb, T(0));
  });
  return record("bmm", out, {a, b}, [ta, tb](Backward& g) {
    const Tensor &A = g.input(0), &B = g.input(1), &dC = g.dout();
    if (g.wants(0)) g.add(0, ta ? bmm(B, dC, tb, true) : bmm(dC, B, false, !tb));
    if (g.wants(1)) g.add(1, tb ? bmm(dC, A, true, ta) : bmm(A, dC, !ta, false));
  });
}

Tensor matmul(const Tensor& a, const Tensor& b, CallSite site) {
  const SiteScope in(site);
  check_same_dtype("matmul", a, b);
  if (a.dim() == 2 && b.dim() == 2) return mm(a, b);
  if (a.dim() == 3 && b.dim() == 3) return bmm(a, b, false, false);
  if (a.dim() == 3 && b.dim() == 2) {  // [B,M,K]·[K,N]: one gemm over the B·M rows
    const Shape& s = a.shape();
    if (s[2] != b.shape()[0]) fail("matmul: shapes ", s, " and ", b.shape(), " do not align (", s[2], " vs ", b.shape()[0], ")");
    Tensor rows = reshape(a, {static_cast<int64_t>(s[0] * s[1]), static_cast<int64_t>(s[2])});
    return reshape(mm(rows, b), {static_cast<int64_t>(s[0]), static_cast<int64_t>(s[1]),
                                 static_cast<int64_t>(b.shape()[1])});
  }
  fail("matmul: supports 2-D·2-D, 3-D·3-D and 3-D·2-D operands, got ", a.shape(), " and ", b.shape());
}

// linear: y = x·W + b     x:[B,K] W:[K,N] b:[N] y:[B,N]
Tensor linear(const Tensor& x, const Tensor& W, const Tensor& b, CallSite site) {
  const SiteScope in(site);
  check_same_dtype("linear", x, W);
  if (b.defined()) check_same_dtype("linear", x, b);
  if (W.dim() != 2 || x.dim() < 1 || (b.defined() && (b.dim() != 1 || b.shape()[0] != W.shape()[1])) ||
      x.shape().back() != W.shape()[0])
    fail("linear: shapes x ", x.shape(), ", W ", W.shape(), ", b ", b.defined() ? b.shape().str() : "none",
         " do not fit y = x·W + b (need x [B,K], W [K,N], b [N])");
  if (x.dim() != 2) {  // [...,K]: fold the leading dims into the batch
    Shape lead = x.shape();
    lead.erase(lead.rank() - 1);
    auto rows = static_cast<int64_t>(lead.numel());  // explicit: -1 cannot be inferred for empty x
    Tensor y = linear(reshape(x, {rows, static_cast<int64_t>(x.shape().back())}), W, b);
    std::vector<int64_t> ys(lead.begin(), lead.end());
    ys.push_back(static_cast<int64_t>(W.shape()[1]));
    return reshape(y, ys);
  }
  size_t B = x.shape()[0], K = x.shape()[1], N = W.shape()[1];
  Tensor out = empty_out(x.dtype(), Shape{B, N});
  dispatch("linear", x.dtype(), [&]<class T>() {
    T* y = out.data_ptr<T>();
    if (b.defined()) {  // start from the bias rows, then gemm adds x·W (beta = 1)
      const T* bias = b.data_ptr<T>();
      write_out(y, B * N, [&](size_t begin, size_t end, T* dst) {
        for (size_t i = begin; i < end;) {  // element i is bias[i mod N]: copy runs of a row
          size_t j = i % N, len = std::min(N - j, end - i);
          std::copy(bias + j, bias + j + len, dst + (i - begin));
          i += len;
        }
      });
    }
    gemm<T>(x.data_ptr<T>(), W.data_ptr<T>(), y, B, N, K, false, false, b.defined() ? T(1) : T(0));
  });
  auto backward = [](Backward& g) {
    const Tensor &x = g.input(0), &W = g.input(1), &dout = g.dout();
    // db += Σ_batch dout     [N] += Σ_B [B,N]
    if (g.n_inputs() == 3 && g.wants(2)) g.add(2, sum(dout, 0), "db += Σ_batch dout");
    // dW += xᵀ·dout          [K,N] += [K,B]·[B,N]   (or the SGD step folded in: add_product)
    add_product(g, 1, x, dout, /*transpose_a=*/true, false, "dW += xᵀ·dout");
    // dx += dout·Wᵀ          [B,K] += [B,N]·[N,K]
    add_product(g, 0, dout, W, false, /*transpose_b=*/true, "dx += dout·Wᵀ");
  };
  return b.defined() ? record("linear", out, {x, W, b}, backward, "x W b")
                     : record("linear", out, {x, W}, backward, "x W");
}

}  // namespace tapegrad

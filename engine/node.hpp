#pragma once
// Node: what an op leaves on the tape. It holds its inputs (which are also the values its
// backward may read), their versions when saved, a creation sequence number (creation order is a
// topological order), and the op's backward. `record` is how every op in ops/ makes one.
#include <atomic>
#include <functional>
#include <memory>
#include <utility>

#include "callsite.hpp"
#include "parallel.hpp"
#include "tensor.hpp"

namespace tapegrad {

// ---- grad mode (thread-local) ----------------------------------------------------------------
struct GradMode {
  static bool is_enabled();
  static void set_enabled(bool on);
};
// While alive, ops record nothing on this thread (parameter updates, evaluation).
class NoGradGuard {
 public:
  NoGradGuard() : prev_(GradMode::is_enabled()) { GradMode::set_enabled(false); }
  ~NoGradGuard() { GradMode::set_enabled(prev_); }
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool prev_;
};
// The opposite: records even inside a NoGradGuard (used by create_graph backward).
class EnableGradGuard {
 public:
  EnableGradGuard() : prev_(GradMode::is_enabled()) { GradMode::set_enabled(true); }
  ~EnableGradGuard() { GradMode::set_enabled(prev_); }
  EnableGradGuard(const EnableGradGuard&) = delete;
  EnableGradGuard& operator=(const EnableGradGuard&) = delete;

 private:
  bool prev_;
};

// ---- anomaly mode (thread-local) ------------------------------------------------------------------
// While alive, every op checks its output, and every backward the gradients it produces, for NaN
// or Inf, and throws an Error naming the op, its input shapes, its sequence number and the call
// site that made it (engine/callsite.hpp).
class DetectAnomalyGuard {
 public:
  DetectAnomalyGuard();
  ~DetectAnomalyGuard();
  DetectAnomalyGuard(const DetectAnomalyGuard&) = delete;
  DetectAnomalyGuard& operator=(const DetectAnomalyGuard&) = delete;
  static bool is_enabled();

 private:
  bool prev_;
};

// ---- hooks -------------------------------------------------------------------------------------------
using GradHook = std::function<Tensor(const Tensor&)>;  // may return a replacement, or undefined to keep
using PostAccumulateHook = std::function<void(const Tensor&)>;  // sees the leaf after .grad() is updated

// Optimizer in backward (plain SGD): p ← (1 − lr·weight_decay)·p − lr·∂/∂p, applied by the sweep.
struct StepInBackward {
  double lr = 0, weight_decay = 0;
};

// Rarely used per-tensor state, allocated on first use.
struct TensorExtras {
  std::vector<std::pair<uint64_t, GradHook>> hooks;
  std::vector<std::pair<uint64_t, PostAccumulateHook>> post_hooks;
  uint64_t step_id = 0;
  std::shared_ptr<const StepInBackward> step;
};

namespace detail {
TensorExtras* find_extras(const TensorImpl* t);  // null unless the tensor has some
void drop_extras(TensorImpl* t);
}  // namespace detail

// Returned by register_hook; remove() unregisters (safe to call twice).
class HookHandle {
 public:
  HookHandle() = default;
  HookHandle(Tensor t, uint64_t id) : t_(std::move(t)), id_(id) {}
  void remove();

 private:
  Tensor t_;
  uint64_t id_ = 0;
};
// Runs during the sweep with this tensor's full gradient (all consumers summed), before it flows
// to the tensor's inputs (non-leaf) or into .grad() (leaf).
HookHandle register_hook(const Tensor& t, GradHook hook);
// Runs after a leaf's .grad() has been accumulated.
HookHandle register_post_accumulate_grad_hook(const Tensor& leaf, PostAccumulateHook hook);
// Optimizer in backward: while registered, backward() applies `*rule` to this leaf as soon as its
// gradient is complete, instead of accumulating the gradient into .grad() (which is left as it
// was). When the leaf's only use in the graph is a matrix product (linear's W, matmul), the op
// folds the update into the gemm that would have computed the gradient (alpha = −lr,
// beta = 1 − lr·wd), so the gradient is never stored: one pass over the parameter and its
// gradient less per step. The rule is read at each backward, so its owner may change lr.
// grad() never steps. optim::SGD with in_backward = true registers its parameters this way.
HookHandle register_step_in_backward(const Tensor& leaf, std::shared_ptr<const StepInBackward> rule);

// ---- explain mode ------------------------------------------------------------------------------------
// While alive, each backward sweep on this thread records what it does: for every node, the op
// and each rule applied with concrete shapes ("linear: dW += xᵀ·dout   [3,2] += [3,4]ᵀ·[4,2]"), and
// every fan-out contribution (+=) into a tensor that several consumers share.
struct ExplainNode {
  uint64_t id = 0;  // creation sequence number (leaves: a running id)
  std::string op;   // "" for a leaf
  Shape shape;
  double grad_norm = 0;            // ‖gradient‖ of this tensor in the sweep
  std::vector<uint64_t> inputs;    // ids of the inputs that received gradient
};
class ExplainGuard {
 public:
  ExplainGuard();
  ~ExplainGuard();
  ExplainGuard(const ExplainGuard&) = delete;
  ExplainGuard& operator=(const ExplainGuard&) = delete;
  const std::vector<std::string>& lines() const { return lines_; }
  std::string text() const;  // the lines, one per row
  // Graphviz DOT of the swept graph: ops, shapes, gradient norms.
  std::string dot() const;
  static ExplainGuard* current();

  // used by the sweep
  void add_line(std::string line) { lines_.push_back(std::move(line)); }
  ExplainNode& node_for(const TensorImpl* t, const char* op);
  std::vector<ExplainNode> nodes;

 private:
  std::vector<std::string> lines_;
  std::vector<std::pair<const TensorImpl*, size_t>> index_;
  uint64_t next_leaf_id_ = 0;
  ExplainGuard* prev_;
};

struct Edge {
  Tensor input;
  uint32_t version = 0;  // input's version when it was saved; checked before backward uses it
};

class Backward;
namespace detail {
struct LaneUse;  // the sweep's hold on the helpers' lane (engine/autograd.cpp)
}

struct Node {
  const char* name = "";
  const char* input_names = nullptr;  // e.g. "x W b": used by explain mode to name shapes
  uint64_t seq = 0;
  Edge* inputs = nullptr;  // points at inline_ for up to two inputs
  uint32_t n_inputs = 0;
  uint32_t out_version = 0;  // the output's version when made; checked when a backward reads it

  Node() = default;
  static void* operator new(size_t bytes);
  static void operator delete(void* p, size_t bytes);
  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;
  virtual ~Node();
  virtual void backward(Backward& g) = 0;
  void set_inputs(const Tensor* first, size_t n);

 private:
  Edge inline_[2];
};

template <class F>
struct LambdaNode final : Node {
  explicit LambdaNode(F f) : fn(std::move(f)) {}
  void backward(Backward& g) override { fn(g); }
  F fn;
};

// What a backward sees: the incoming gradient, its own output, its saved inputs; `add` sums a
// gradient into input i (shape and dtype must match that input exactly — reduce broadcasts
// first with sum_to).
class Backward {
 public:
  // Leaves whose gradient the sweep may hand to an op as an SGD step (see fusable_step).
  struct StepUse {
    TensorImpl* leaf;
    uint32_t uses;  // edges into the leaf from the graph being swept
    std::shared_ptr<const StepInBackward> rule;
  };
  Backward(Node& node, const Tensor& out, const Tensor& dout, bool create_graph,
           const std::vector<StepUse>* steps = nullptr, detail::LaneUse* lane = nullptr)
      : node_(node), out_(out), dout_(dout), create_graph_(create_graph), steps_(steps), lane_(lane) {}
  const Tensor& dout() const { return dout_; }
  const Tensor& out() const;  // this node's output value (checked against in-place changes)
  const Tensor& input(size_t i) const { return node_.inputs[i].input; }
  size_t n_inputs() const { return node_.n_inputs; }
  bool wants(size_t i) const { return node_.inputs[i].input.requires_grad(); }
  bool create_graph() const { return create_graph_; }
  const char* op() const { return node_.name; }
  void add(size_t i, const Tensor& grad);
  // The same, with the rule in math for explain mode, e.g. add(1, dW, "dW += xᵀ·dout").
  void add(size_t i, const Tensor& grad, const char* rule);
  // The same for a gradient that a kernel writes itself: write(dst, accumulate) stores the
  // contribution into dst, a tensor of input i's shape and dtype (accumulate = false: dst holds
  // garbage), or adds it to what dst holds (true). When input i already has a pending gradient
  // that this sweep alone holds, dst is that buffer, so a product does its `dW += xᵀ·dout` as one
  // gemm with beta = 1 and the summand is never stored. Otherwise it writes a new tensor that goes
  // through add(): always so when the backward builds a graph (create_graph) or explain or anomaly
  // mode must see each contribution.
  template <class F>
  void add_into(size_t i, F&& write, const char* rule = nullptr) {
    if (!wants(i)) return;
    if (Tensor dst = pending_to_add_into(i); dst.defined()) {
      write(dst, true);
      return;
    }
    Tensor grad = fresh_like_input(i);
    write(grad, false);
    add(i, grad, rule);
  }

  // The same, but write(dst, accumulate, later), where dst is the data of a contiguous tensor of
  // input i's shape and dtype, may run later (later = true), on a helper, while the sweep goes on:
  // when input i is a leaf, whose gradient nothing reads before the sweep's end, and the sweep
  // holds the helpers' lane (at threads >= 2; detail::Lane). Contributions to a leaf still add up
  // in the order the sweep makes them, so the gradient is the one add_into gives. write must hold
  // what it reads (tensors by value) and must not throw. It should read their data through raw
  // pointers taken when it was made: a tensor's handle shares a cache line with the reference
  // count this thread keeps changing, and each read from the helper's core would pull it across.
  template <class F>
  void add_into_later(size_t i, F&& write, const char* rule = nullptr) {
    if (!wants(i)) return;
    Tensor dst;
    bool accumulate = false;
    if (detail::Lane* lane = lane_target(i, dst, accumulate)) {
      void* data = dst.impl()->data;
      lane->post([w = std::decay_t<F>(std::forward<F>(write)), dst = std::move(dst), data, accumulate]() mutable {
        w(data, accumulate, true);
      });
      return;
    }
    add_into(i, [&](Tensor& d, bool acc) { write(d.impl()->data, acc, false); }, rule);
  }

  // Optimizer in backward: non-null when input i is a leaf with register_step_in_backward, this is
  // its only use in the graph, and nothing needs to see its gradient (no hooks, explain or anomaly
  // mode, create_graph). The op may then, instead of add(i, grad), call apply_step(i, update) with
  // an update doing p ← (1 − lr·wd)·p − lr·grad itself. Updates run after this backward returns
  // (its other gradients may still read p's old value); the sweep then bumps p's version.
  const StepInBackward* fusable_step(size_t i) const;
  void apply_step(size_t i, std::function<void()> update);
  void run_steps();  // called by the sweep

 private:
  Tensor pending_to_add_into(size_t i) const;  // undefined unless add_into may add in place
  Tensor fresh_like_input(size_t i) const;     // uninitialised, input i's shape and dtype
  // The lane, and the buffer a task adds into (accumulate) or writes, when add_into_later may post.
  detail::Lane* lane_target(size_t i, Tensor& dst, bool& accumulate) const;
  Node& node_;
  const Tensor& out_;
  const Tensor& dout_;
  bool create_graph_;
  const std::vector<StepUse>* steps_;
  detail::LaneUse* lane_;
  std::vector<std::pair<TensorImpl*, std::function<void()>>> updates_;
};

// Adds `grad` into the pending gradient of `t` during a sweep: in place when the buffer is ours
// alone, otherwise (or when building a graph of the backward) by making a new sum.
void accumulate_grad(const char* op, TensorImpl* t, const Tensor& grad, bool create_graph);

namespace detail {
void check_anomaly(const char* op, const Tensor& out, const Tensor* inputs, size_t n);
void check_anomaly_grad(const Node& node, size_t i, const Tensor& grad);
// Under anomaly mode, each node keeps the call site it was made at (CallSite::current()) in a
// side table, for the backward's error; ~Node forgets it.
void remember_site(const Node* node);
void forget_site(const Node* node);
extern std::atomic<size_t> remembered_sites;
// Marks the node whose backward is running (anomaly messages name it).
struct BackwardScope {
  explicit BackwardScope(const Node* n);
  ~BackwardScope();
  const Node* prev_;
};
void explain_add(const Node& node, size_t i, const char* rule, const Tensor& grad, const Tensor& dout,
                 const Tensor& out);
void explain_visit(const TensorImpl* t, const Tensor& dout);
void explain_fan_out(const TensorImpl* t, const char* op, const Tensor& grad);
uint64_t next_seq();
// Steps an op folded into its own kernel on this thread (Backward::apply_step), for tests.
uint64_t folded_steps();
// Contributions a kernel added straight into a pending gradient on this thread (Backward::add_into).
uint64_t added_in_place();
// Whether a backward at threads >= 2 takes the helpers' lane: as measured on its thread (the
// default; engine/autograd.cpp), or always, or never (for tests and benchmarks).
enum class LanePolicy { measure, always, never };
void set_lane_policy(LanePolicy policy);
bool any_requires_grad(const Tensor* first, size_t n);
void attach(const Tensor& out, Node* node, const char* name, const Tensor* first, size_t n);
}  // namespace detail

// Records `out` as made by op `name` from `inputs`, with `backward` as its gradient rule, when
// grad mode is on and an input requires grad. Returns `out` either way.
// `input_names` ("x W b") names the inputs in explain mode; by default "x" or "a b".
template <class F>
Tensor record(const char* name, Tensor out, std::initializer_list<Tensor> inputs, F&& backward,
              const char* input_names = nullptr) {
  const bool anomaly = DetectAnomalyGuard::is_enabled();
  if (anomaly) detail::check_anomaly(name, out, inputs.begin(), inputs.size());
  if (!GradMode::is_enabled() || !detail::any_requires_grad(inputs.begin(), inputs.size())) return out;
  auto* node = new LambdaNode<std::decay_t<F>>(std::forward<F>(backward));
  node->input_names = input_names;
  detail::attach(out, node, name, inputs.begin(), inputs.size());
  if (anomaly) detail::remember_site(node);
  return out;
}
// The same with a runtime-sized input list (cat, stack).
template <class F>
Tensor record(const char* name, Tensor out, const std::vector<Tensor>& inputs, F&& backward) {
  const bool anomaly = DetectAnomalyGuard::is_enabled();
  if (anomaly) detail::check_anomaly(name, out, inputs.data(), inputs.size());
  if (!GradMode::is_enabled() || !detail::any_requires_grad(inputs.data(), inputs.size())) return out;
  auto* node = new LambdaNode<std::decay_t<F>>(std::forward<F>(backward));
  detail::attach(out, node, name, inputs.data(), inputs.size());
  if (anomaly) detail::remember_site(node);
  return out;
}

// ---- the sweep ---------------------------------------------------------------------------------
// backward(): accumulates d(roots)/d(leaf) into every reachable leaf's .grad().
void backward(const std::vector<Tensor>& roots, const std::vector<Tensor>& grad_roots = {},
              bool retain_graph = false, bool create_graph = false);
// grad(): returns d(outputs)/d(inputs) without touching any .grad(). An input that the outputs
// do not depend on gets an undefined tensor, or an error unless allow_unused.
std::vector<Tensor> grad(const std::vector<Tensor>& outputs, const std::vector<Tensor>& inputs,
                         const std::vector<Tensor>& grad_outputs = {}, bool retain_graph = false,
                         bool create_graph = false, bool allow_unused = false);

// ---- data parallelism over a batch -------------------------------------------------------------
// A training step's loss that is a sum over the rows of a batch of n (a mean is a sum of each row's
// term / n), rows independent until the loss, can be split: backward_sharded cuts [0, n) into one
// shard of consecutive rows per intra-op thread (set_num_threads; never more than n) and runs
//   loss = loss_of(params_k, begin, end)
// for each shard on its own thread, each recording a graph of its own, then that graph's backward
// there. params_k are params again, as leaves that share their storage: the loss function must use
// them, not params, and read only its rows [begin, end) of the batch; it returns its share of the
// loss (a one-element tensor), so that the shares sum to the loss. Each parameter then gets the
// sum of the shards' gradients (in shard order, so the same values each time at a given thread
// count) as backward() would give it: its hooks see it, then it goes into .grad() or into the
// step registered in backward (optim::SGD with in_backward), then the post-accumulate hooks run.
// Returns the loss's value (the shares' sum; no graph).
// With one shard (1 thread; inside a shard, a sweep, DetectAnomalyGuard or ExplainGuard) it is
// loss_of(params, 0, n) and backward(), the shard's thread being the caller's.
// Why: the ops of a small batch are too small to cut between threads on CPUs far apart (W5 at 2
// threads, bench/README.md), but two halves of the batch share only the parameters and their
// gradients. Errors: a leaf the loss depends on that is not one of params_k (shards may share no
// tensor that requires grad), or anything a shard throws, is thrown here once every shard has
// ended (the lowest shard's error), before any parameter or gradient is touched. The loss function
// must not call set_num_threads. A thread keeps its last shard's gradients until its next shard,
// so that they go back to its own memory pool.
using ShardLoss = std::function<Tensor(const std::vector<Tensor>& params, int64_t begin, int64_t end)>;
Tensor backward_sharded(const std::vector<Tensor>& params, int64_t n, const ShardLoss& loss_of);

}  // namespace tapegrad

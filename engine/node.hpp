#pragma once
// Node: what an op leaves on the tape. It holds its inputs (which are also the values its
// backward may read), their versions when saved, a creation sequence number (creation order is a
// topological order), and the op's backward. `record` is how every op in ops/ makes one.
#include <functional>
#include <utility>

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

// Rarely used per-tensor state, allocated on first use.
struct TensorExtras {
  // Hooks see (and may replace) the gradient of this tensor before it flows on.
  std::vector<std::function<Tensor(const Tensor&)>> hooks;
};

struct Edge {
  Tensor input;
  uint32_t version = 0;  // input's version when it was saved; checked before backward uses it
};

class Backward;

struct Node {
  const char* name = "";
  uint64_t seq = 0;
  Edge* inputs = nullptr;  // points at inline_ for up to two inputs
  uint32_t n_inputs = 0;

  Node() = default;
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
  Backward(Node& node, const Tensor& out, const Tensor& dout, bool create_graph)
      : node_(node), out_(out), dout_(dout), create_graph_(create_graph) {}
  const Tensor& dout() const { return dout_; }
  const Tensor& out() const { return out_; }
  const Tensor& input(size_t i) const { return node_.inputs[i].input; }
  size_t n_inputs() const { return node_.n_inputs; }
  bool wants(size_t i) const { return node_.inputs[i].input.requires_grad(); }
  bool create_graph() const { return create_graph_; }
  const char* op() const { return node_.name; }
  void add(size_t i, const Tensor& grad);

 private:
  Node& node_;
  const Tensor& out_;
  const Tensor& dout_;
  bool create_graph_;
};

// Adds `grad` into the pending gradient of `t` during a sweep: in place when the buffer is ours
// alone, otherwise (or when building a graph of the backward) by making a new sum.
void accumulate_grad(const char* op, TensorImpl* t, const Tensor& grad, bool create_graph);

namespace detail {
uint64_t next_seq();
bool any_requires_grad(const Tensor* first, size_t n);
void attach(const Tensor& out, Node* node, const char* name, const Tensor* first, size_t n);
}  // namespace detail

// Records `out` as made by op `name` from `inputs`, with `backward` as its gradient rule, when
// grad mode is on and an input requires grad. Returns `out` either way.
template <class F>
Tensor record(const char* name, Tensor out, std::initializer_list<Tensor> inputs, F&& backward) {
  if (!GradMode::is_enabled() || !detail::any_requires_grad(inputs.begin(), inputs.size())) return out;
  detail::attach(out, new LambdaNode<std::decay_t<F>>(std::forward<F>(backward)), name,
                 inputs.begin(), inputs.size());
  return out;
}
// The same with a runtime-sized input list (cat, stack).
template <class F>
Tensor record(const char* name, Tensor out, const std::vector<Tensor>& inputs, F&& backward) {
  if (!GradMode::is_enabled() || !detail::any_requires_grad(inputs.data(), inputs.size())) return out;
  detail::attach(out, new LambdaNode<std::decay_t<F>>(std::forward<F>(backward)), name,
                 inputs.data(), inputs.size());
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

}  // namespace tapegrad

// The tape and the reverse sweep.
//
// Recording: every op that has an input requiring grad attaches a Node to its output, holding
// the inputs and a creation sequence number. Creation order is a topological order, so the
// sweep needs no recursive search: it collects the nodes reachable from the roots (with an
// explicit stack), sorts them by sequence number, newest first, and calls each backward once,
// after all of its consumers have added (+=) their contributions to its gradient.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <exception>
#include <optional>

#include "dispatch.hpp"
#include "node.hpp"
#include "pool.hpp"

namespace tapegrad {

// ---- grad mode -----------------------------------------------------------------------------------
namespace {
thread_local bool grad_enabled = true;
// The last sequence number this thread gave (attach).
thread_local uint64_t t_seq = 0;
}  // namespace
bool GradMode::is_enabled() { return grad_enabled; }
void GradMode::set_enabled(bool on) { grad_enabled = on; }

// ---- nodes ---------------------------------------------------------------------------------------
void* Node::operator new(size_t bytes) { return detail::pool_alloc(bytes); }
void Node::operator delete(void* p, size_t bytes) { detail::pool_free(p, bytes); }

Node::~Node() {
  if (inputs != inline_) delete[] inputs;
  if (detail::remembered_sites.load(std::memory_order_relaxed) != 0) detail::forget_site(this);
}

void Node::set_inputs(const Tensor* first, size_t n) {
  inputs = n <= 2 ? inline_ : new Edge[n];
  n_inputs = static_cast<uint32_t>(n);
  for (size_t i = 0; i < n; ++i) inputs[i] = Edge{first[i], first[i].impl()->owner()->version};
}

namespace detail {
uint64_t next_seq() { return t_seq + 1; }

bool any_requires_grad(const Tensor* first, size_t n) {
  for (size_t i = 0; i < n; ++i)
    if (first[i].requires_grad()) return true;
  return false;
}

// A node's number is above its inputs' and above the last one this thread gave (a Lamport clock),
// so numbers are a topological order without a counter shared by all threads: two threads
// recording at once (backward_sharded) would pass its cache line back and forth at every op,
// ~0.5 µs a time with the vCPUs far apart (a first version of W5's sharded step at 2 threads, 7 Dec
// 2026: 1.40-1.42 ms a step with the shared counter, 1.32-1.39 without).
void attach(const Tensor& out, Node* node, const char* name, const Tensor* first, size_t n) {
  node->name = name;
  uint64_t seq = t_seq;
  for (size_t i = 0; i < n; ++i)
    if (const Node* in = first[i].impl()->node) seq = std::max(seq, in->seq);
  node->seq = t_seq = seq + 1;
  node->set_inputs(first, n);
  TensorImpl* p = out.impl();
  node->out_version = p->owner()->version;
  delete p->node;
  p->node = node;
  p->set(TensorImpl::kRequiresGrad, true);
  p->set(TensorImpl::kNonLeaf, true);
}
}  // namespace detail

// ---- the helpers' lane ---------------------------------------------------------------------------
// At threads >= 2 a sweep may hold the lane (engine/parallel.hpp), and products that add into a
// leaf's gradient then run there, on a helper, while the sweep goes on (Backward::add_into_later):
// W5's weights take 128 such products a step, half of its backward's multiply-adds, and nothing
// reads a leaf's gradient before the sweep's last loop. Anything else that would touch such a
// leaf's pending gradient first waits for the lane (drain_lane), as does that loop.
struct detail::LaneUse {
  Lane* lane = nullptr;
  std::vector<TensorImpl*> leaves;  // flagged kOnLane
  bool nested = false;              // inside another sweep on this thread (which never takes the lane)

  explicit LaneUse(bool wanted);
  ~LaneUse();
  LaneUse(const LaneUse&) = delete;
  LaneUse& operator=(const LaneUse&) = delete;
  void drain() {
    if (!lane) return;
    lane->drain();
    for (TensorImpl* t : leaves) t->set(TensorImpl::kOnLane, false);
    leaves.clear();
  }
};

namespace {
thread_local detail::LaneUse* t_lane_use = nullptr;  // the lane this thread's sweep holds

void drain_lane() {
  if (t_lane_use) t_lane_use->drain();
}

// Whether the lane pays is measured, per thread, as whether cutting a product pays is
// (ops/linalg.cpp), but over a whole training step: what the lane costs comes partly after the
// sweep. The helper's reads leave the operands' cache lines on its core, and the next forward,
// writing into those buffers again, must take each line back. On the Zen 5 VM of 6 Dec 2026 that
// made W5's forward at 2 threads 1.08 ms against 0.78 at 1, at times, and its step 1.04-1.07×
// its time at 1 thread, its backward faster or not; at other times, minutes apart, the forward
// took 0.60 and the step 0.68×. So trials time the period from the start of one backward on this
// thread to the start of the next (a training loop's step), in runs of two backwards with the
// lane and two without; only a run's second period counts, the first may still pay for the
// other way. After kTrials periods each way, the lane is taken for the next kKept backwards if
// its median period was at most kMustWin of the other's; then the trials start again, since what
// pays changes as the host moves its vCPUs (near or far apart: bench/bench_cores), after up to
// 8 × kKept backwards while they keep finding the same (detail::Hold). With the helpers far from
// this thread the trials are skipped and the lane left for kKept backwards (detail::helpers_far).
// The gradients are the same either way, bit for bit.
std::atomic<detail::LanePolicy> g_lane_policy{detail::LanePolicy::measure};

struct LaneTrials {
  static constexpr unsigned kTrials = 5, kKept = 512;
  static constexpr float kMustWin = 0.97f;
  std::chrono::steady_clock::time_point start{};  // of the last backward
  unsigned calls = 0;                            // backwards since the trials or the decision began
  int way = -1, way_before = -1;                  // of the last backward and the one before (1: lane)
  float us[2][kTrials];
  unsigned n[2] = {0, 0};
  bool decided = false, pays = false;
  unsigned kept = kKept;  // backwards the decision holds
  detail::Hold hold;      // kept across the trials

  bool take_lane() {
    const auto now = std::chrono::steady_clock::now();
    if (decided) {
      if (++calls <= kept) return pays;
      LaneTrials again;
      again.hold = hold;
      *this = again;
    }
    if (calls == 0 && detail::helpers_far()) {  // the trials would only cost (detail::helpers_far)
      decided = true;
      pays = false;
      calls = 1;
      kept = kKept;
      return false;
    }
    if (way >= 0 && way == way_before && n[way] < kTrials) {
      const float period = std::chrono::duration<float, std::micro>(now - start).count();
      if (period < 1e6f) us[way][n[way]++] = period;  // not across a pause of the program
    }
    if (n[0] == kTrials && n[1] == kTrials) {
      auto median = [](float* v) {
        std::nth_element(v, v + kTrials / 2, v + kTrials);
        return v[kTrials / 2];
      };
      pays = median(us[1]) <= kMustWin * median(us[0]);
      decided = true;
      calls = 1;
      kept = hold.after(pays, kKept);
      return pays;
    }
    way_before = way;
    way = (calls++ / 2) % 2 == 0 ? 1 : 0;  // lane, lane, none, none, lane, ...
    start = now;
    return way == 1;
  }
};
thread_local LaneTrials t_lane_trials;

thread_local bool t_in_sweep = false;

// Whether this sweep (wanted: no graph of the backward built, no anomaly or explain mode) takes
// the lane. A sweep nested in another (a backward in a hook) never does, nor is it timed.
bool take_lane(bool wanted) {
  if (!wanted || t_in_sweep || detail::in_part() || detail::intra_op_threads() < 2) return false;
  switch (g_lane_policy.load(std::memory_order_relaxed)) {
    case detail::LanePolicy::always: return true;
    case detail::LanePolicy::never: return false;
    case detail::LanePolicy::measure: break;
  }
  return t_lane_trials.take_lane();
}
}  // namespace

void detail::set_lane_policy(LanePolicy policy) { g_lane_policy.store(policy); }

// A sweep nested in another runs its products inline, and drains the outer sweep's lane when it
// touches one of its leaves.
detail::LaneUse::LaneUse(bool wanted) : nested(t_in_sweep) {
  lane = take_lane(wanted) ? Lane::acquire() : nullptr;
  t_in_sweep = true;
  if (lane) t_lane_use = this;
}

detail::LaneUse::~LaneUse() {
  t_in_sweep = nested;
  if (!lane) return;
  drain();
  lane->release();
  t_lane_use = nullptr;
}

// ---- accumulation --------------------------------------------------------------------------------
// out = a + b for same-shape tensors; recorded (dout flows to both) when building a graph of the
// backward itself, so that gradients of gradients see every contribution.
static Tensor sum_of(const Tensor& a, const Tensor& b) {
  Tensor out(TensorImpl::create(a.dtype(), a.shape()));
  dispatch("accumulate", a.dtype(), [&]<class T>() {
    const T* x = a.data_ptr<T>();
    const T* y = b.data_ptr<T>();
    T* o = out.data_ptr<T>();
    for (size_t i = 0, n = a.numel(); i < n; ++i) o[i] = x[i] + y[i];
  });
  return record("accumulate", out, {a, b}, [](Backward& g) {
    g.add(0, g.dout());  // d(a+b)/da = 1
    g.add(1, g.dout());  // d(a+b)/db = 1
  });
}

static void add_in_place(TensorImpl* acc, const Tensor& g) {
  dispatch("accumulate", acc->dtype, [&]<class T>() {
    T* a = static_cast<T*>(acc->data);
    const T* b = g.data_ptr<T>();
    for (size_t i = 0, n = acc->numel(); i < n; ++i) a[i] += b[i];
  });
}

static void check_grad_matches(const char* op, const TensorImpl* t, const Tensor& grad) {
  if (!grad.defined()) fail(op, ": backward produced an undefined gradient");
  if (grad.shape() != t->shape || grad.dtype() != t->dtype)
    fail(op, ": backward produced a gradient of shape ", grad.shape(), " ", grad.dtype(),
         " for an input of shape ", t->shape, " ", t->dtype);
}

// A pending gradient may be added into in place when no graph of the backward is being built and
// the sweep alone holds its buffer (the first contribution is stored as given, so it may be shared).
static bool pending_is_ours(const TensorImpl* t, bool create_graph) {
  return !create_graph && t->pending && t->pending->unique();
}

void accumulate_grad(const char* op, TensorImpl* t, const Tensor& grad, bool create_graph) {
  check_grad_matches(op, t, grad);
  if (t->has(TensorImpl::kOnLane)) drain_lane();
  if (t->pending && ExplainGuard::current()) detail::explain_fan_out(t, op, grad);
  if (!t->pending) {
    t->pending = grad.ref();  // the first contribution is stored, not added to zeros
  } else if (pending_is_ours(t, create_graph) && !grad.requires_grad()) {
    add_in_place(t->pending.get(), grad);
  } else {
    t->pending = sum_of(Tensor(t->pending), grad).ref();
  }
}

const Tensor& Backward::out() const {
  uint32_t now = out_.impl()->owner()->version;
  if (now != node_.out_version)
    fail("backward: the output of ", node_.name, " (shape ", out_.shape(),
         ") was modified in place after it was computed (version ", node_.out_version, ", now ", now,
         "), but its backward needs it; clone it before modifying");
  return out_;
}

void Backward::add(size_t i, const Tensor& grad) { add(i, grad, nullptr); }

namespace {
thread_local uint64_t added_in_place_count = 0;
}
uint64_t detail::added_in_place() { return added_in_place_count; }

Tensor Backward::pending_to_add_into(size_t i) const {
  TensorImpl* t = input(i).impl();
  if (t->has(TensorImpl::kOnLane)) drain_lane();
  if (!pending_is_ours(t, create_graph_) || DetectAnomalyGuard::is_enabled() || ExplainGuard::current())
    return Tensor();  // explain and anomaly mode see each contribution through add()
  ++added_in_place_count;
  return Tensor(t->pending);
}

Tensor Backward::fresh_like_input(size_t i) const {
  const Tensor& in = input(i);
  return Tensor(TensorImpl::create(in.dtype(), in.shape()));
}

detail::Lane* Backward::lane_target(size_t i, Tensor& dst, bool& accumulate) const {
  if (!lane_ || create_graph_ || DetectAnomalyGuard::is_enabled() || ExplainGuard::current()) return nullptr;
  TensorImpl* t = input(i).impl();
  if (t->has(TensorImpl::kNonLeaf)) return nullptr;
  if (t->has(TensorImpl::kOnLane)) {  // the lane's earlier tasks write it first
    accumulate = true;
  } else {
    if (t->pending && !pending_is_ours(t, false)) return nullptr;
    accumulate = bool(t->pending);
    if (!t->pending) t->pending = TensorImpl::create(t->dtype, t->shape);
    t->set(TensorImpl::kOnLane, true);
    lane_->leaves.push_back(t);
  }
  dst = Tensor(t->pending);
  return lane_->lane;
}

const StepInBackward* Backward::fusable_step(size_t i) const {
  if (!steps_ || steps_->empty() || create_graph_ || DetectAnomalyGuard::is_enabled() || ExplainGuard::current())
    return nullptr;
  TensorImpl* p = input(i).impl();
  for (const StepUse& s : *steps_) {
    if (s.leaf != p) continue;
    if (s.uses != 1 || p->pending) return nullptr;  // the gradient is a sum: let the sweep add it up
    const TensorExtras* e = detail::find_extras(p);
    if (!e || !e->hooks.empty() || !e->post_hooks.empty()) return nullptr;  // they must see the gradient
    return s.rule.get();
  }
  return nullptr;
}

void Backward::apply_step(size_t i, std::function<void()> update) {
  updates_.emplace_back(input(i).impl(), std::move(update));
}

namespace {
thread_local uint64_t folded_step_count = 0;
}
uint64_t detail::folded_steps() { return folded_step_count; }

void Backward::run_steps() {
  for (auto& [leaf, update] : updates_) {
    update();
    ++leaf->owner()->version;  // graphs that saved the old value must not use it
    ++folded_step_count;
  }
  updates_.clear();
}

// The optimizer-in-backward step for a leaf whose gradient the sweep has summed.
static void step_leaf(TensorImpl* leaf, const Tensor& g, const StepInBackward& rule) {
  check_grad_matches("backward", leaf, g);
  dispatch("step_in_backward", leaf->dtype, [&]<class T>() {
    T* w = static_cast<T*>(leaf->data);
    const T* d = g.data_ptr<T>();
    const T lr = static_cast<T>(rule.lr), keep = static_cast<T>(1 - rule.lr * rule.weight_decay);
    for (size_t i = 0, n = leaf->numel(); i < n; ++i) w[i] = keep * w[i] - lr * d[i];
  });
  ++leaf->owner()->version;
}

void Backward::add(size_t i, const Tensor& grad, const char* rule) {
  const Tensor& in = input(i);
  if (!in.requires_grad()) return;
  if (DetectAnomalyGuard::is_enabled()) detail::check_anomaly_grad(node_, i, grad);
  if (ExplainGuard::current()) detail::explain_add(node_, i, rule, grad, dout_, out_);
  accumulate_grad(node_.name, in.impl(), grad, create_graph_);
}

// A leaf's .grad() accumulates across backward() calls. It never aliases another buffer, so the
// next call may add into it in place.
static void accumulate_into_leaf(TensorImpl* leaf, const Tensor& g, bool create_graph) {
  if (!leaf->grad) {
    if (g.impl()->unique() || create_graph) {
      leaf->grad = g.ref();
    } else {
      Ref<TensorImpl> copy = TensorImpl::create(g.dtype(), g.shape());
      std::copy_n(static_cast<const char*>(g.impl()->data), g.impl()->nbytes(), static_cast<char*>(copy->data));
      leaf->grad = std::move(copy);
    }
  } else if (create_graph || leaf->grad->has(TensorImpl::kRequiresGrad) || leaf->grad->base) {
    leaf->grad = sum_of(Tensor(leaf->grad), g).ref();
  } else {
    check_grad_matches("backward", leaf->grad.get(), g);
    add_in_place(leaf->grad.get(), g);
  }
}

// Where a leaf's summed gradient goes, after its hooks have seen it: into the step registered
// in backward (register_step_in_backward), else into .grad(); then its post-accumulate hooks.
static void finish_leaf(TensorImpl* p, const Tensor& dout, const StepInBackward* step, bool create_graph) {
  if (step) step_leaf(p, dout, *step);
  else accumulate_into_leaf(p, dout, create_graph);
  if (TensorExtras* extras = detail::find_extras(p))
    for (auto& [id, hook] : extras->post_hooks) hook(Tensor(Ref<TensorImpl>::share(p)));
}

// Lets p's hooks read or replace dout (in place: no reference taken when there are none).
static void run_hooks(TensorImpl* p, Tensor& dout) {
  if (ExplainGuard::current()) detail::explain_visit(p, dout);
  TensorExtras* extras = detail::find_extras(p);
  if (!extras) return;
  for (auto& [id, hook] : extras->hooks) {
    Tensor replaced = hook(dout);
    if (replaced.defined()) {
      check_grad_matches("hook", p, replaced);
      dout = replaced;
    }
  }
}

// ---- the sweep -----------------------------------------------------------------------------------
namespace {

// Marks what a sweep has visited. Drawn from one counter for all threads, so that a sweep never
// takes another thread's mark for its own (backward_sharded checks that its shards share nothing).
std::atomic<uint32_t> g_sweep_epochs{0};
thread_local uint32_t sweep_epoch = 0;

// A vector whose storage passes from one sweep to the next on this thread (up to kKeep entries,
// 1 MiB of pointers), for the sweep's list of nodes and its stack (one spare per element type).
// Those are as long as the graph; with fresh storage each time, malloc handed buffers this big
// back to the kernel after every backward, and W1 paid ~91 page faults a repetition (~6 µs each
// on the Zen 5 VM of 6 Dec 2026). A nested sweep (a backward in a hook) finds no spare and starts
// empty.
template <class T>
struct ScratchVector : std::vector<T> {
  static constexpr size_t kKeep = size_t(1) << 17;
  static thread_local std::vector<T> spare;
  ScratchVector() { this->swap(spare); }
  ~ScratchVector() {
    if (this->capacity() > kKeep) return;
    this->clear();
    this->swap(spare);
  }
  ScratchVector(const ScratchVector&) = delete;
  ScratchVector& operator=(const ScratchVector&) = delete;
};
template <class T>
thread_local std::vector<T> ScratchVector<T>::spare;

struct Sweep {
  ScratchVector<Ref<TensorImpl>> nodes;  // non-leaves to visit, newest first after sorting
  std::vector<Ref<TensorImpl>> leaves;  // usually few (the parameters)
  std::vector<Backward::StepUse> steps;  // leaves updated in backward (register_step_in_backward)
  // functional grad(): which tensors to capture, and what was captured
  const std::vector<Tensor>* capture_inputs = nullptr;
  std::vector<Tensor> captured;
  // backward_sharded: the only leaves that may require grad (a shard must share none with another).
  const std::vector<Tensor>* only_leaves = nullptr;

  int capture_index(TensorImpl* p) const {
    if (!capture_inputs) return -1;
    for (size_t i = 0; i < capture_inputs->size(); ++i)
      if ((*capture_inputs)[i].impl() == p) return static_cast<int>(i);
    return -1;
  }

  void visit(TensorImpl* p, ScratchVector<TensorImpl*>& stack) {
    if (only_leaves && !p->has(TensorImpl::kNonLeaf) &&
        std::none_of(only_leaves->begin(), only_leaves->end(), [p](const Tensor& t) { return t.impl() == p; }))
      fail("backward_sharded: the loss depends on a leaf of shape ", p->shape,
           " that requires grad and is not one of the shard's params; pass every parameter the loss uses "
           "in params, and use the copies the loss function is given");
    if (p->visit == sweep_epoch) return;
    p->visit = sweep_epoch;
    if (p->has(TensorImpl::kNonLeaf)) {
      if (!p->node)
        fail("backward: trying to backward through a graph a second time (or after its saved values "
             "were freed); pass retain_graph=true to the first backward() if you need to");
      nodes.push_back(Ref<TensorImpl>::share(p));
      stack.push_back(p);
    } else {
      leaves.push_back(Ref<TensorImpl>::share(p));
      if (!capture_inputs)
        if (const TensorExtras* e = detail::find_extras(p); e && e->step) steps.push_back({p, 0, e->step});
    }
  }

  Backward::StepUse* step_of(TensorImpl* p) {
    for (auto& s : steps)
      if (s.leaf == p) return &s;
    return nullptr;
  }

  // Everything that can fail on bad state is checked here, before any gradient is computed.
  void collect(const std::vector<Tensor>& roots) {
    if ((sweep_epoch = g_sweep_epochs.fetch_add(1, std::memory_order_relaxed) + 1) == 0)
      sweep_epoch = g_sweep_epochs.fetch_add(1, std::memory_order_relaxed) + 1;
    ScratchVector<TensorImpl*> stack;
    for (const Tensor& r : roots) visit(r.impl(), stack);
    while (!stack.empty()) {
      Node* node = stack.back()->node;
      stack.pop_back();
      for (uint32_t i = 0; i < node->n_inputs; ++i) {
        const Edge& e = node->inputs[i];
        TensorImpl* q = e.input.impl();
        if (q->owner()->version != e.version)
          fail("backward: an input of ", node->name, " (shape ", q->shape,
               ") was modified in place after it was saved for backward (version ", e.version,
               " saved, now ", q->owner()->version, "); clone it before modifying, or modify it after backward()");
        if (!q->has(TensorImpl::kRequiresGrad)) continue;
        visit(q, stack);
        if (!steps.empty())
          if (Backward::StepUse* s = step_of(q)) ++s->uses;
      }
    }
    auto newest_first = [](const Ref<TensorImpl>& a, const Ref<TensorImpl>& b) { return a->node->seq > b->node->seq; };
    // A chain is found newest first already: check in O(n) before sorting.
    if (!std::is_sorted(nodes.begin(), nodes.end(), newest_first)) std::sort(nodes.begin(), nodes.end(), newest_first);
  }

  void clear_pending() {
    for (auto& p : nodes)
      if (p) p->pending.reset();
    for (auto& p : leaves) p->pending.reset();
  }

  void run(bool retain_graph, bool create_graph) {
    detail::LaneUse lane(!create_graph && !DetectAnomalyGuard::is_enabled() && !ExplainGuard::current());
    detail::LaneUse* on_lane = lane.lane ? &lane : nullptr;
    for (auto& ref : nodes) {
      // The sweep's reference becomes the handle a backward sees as its output: reference counts
      // are atomic, and W1's sweep spent most of its own time on them (Zen 5 VM, 6 Dec 2026).
      const Tensor out(std::move(ref));
      TensorImpl* p = out.impl();
      Tensor dout(std::move(p->pending));
      if (dout.defined()) {
        run_hooks(p, dout);
        int ci = capture_index(p);
        if (ci >= 0) captured[ci] = dout;
        if (!capture_inputs && p->has(TensorImpl::kRetainGrad)) accumulate_into_leaf(p, dout, create_graph);
        Backward g(*p->node, out, dout, create_graph, &steps, on_lane);
        if (DetectAnomalyGuard::is_enabled()) {
          detail::BackwardScope scope(p->node);
          p->node->backward(g);
        } else {
          p->node->backward(g);
        }
        g.run_steps();
      }
      if (!retain_graph) {  // free what the forward saved, as soon as it is no longer needed
        delete p->node;
        p->node = nullptr;
        p->set(TensorImpl::kReleased, true);
      }
    }
    lane.drain();  // the leaves' gradients are complete
    for (auto& ref : leaves) {
      TensorImpl* p = ref.get();
      Tensor dout(std::move(p->pending));
      if (!dout.defined()) continue;
      run_hooks(p, dout);
      int ci = capture_index(p);
      if (ci >= 0) captured[ci] = dout;
      else if (!capture_inputs) {
        Backward::StepUse* s = steps.empty() ? nullptr : step_of(p);
        finish_leaf(p, dout, s ? s->rule.get() : nullptr, create_graph);
      }
    }
  }
};

// Checks the roots and their gradients; seed_pending applies them once collect has succeeded.
void check_roots(const std::vector<Tensor>& roots, const std::vector<Tensor>& grad_roots, const char* fn) {
  if (roots.empty()) fail(fn, ": no tensors to differentiate");
  if (!grad_roots.empty() && grad_roots.size() != roots.size())
    fail(fn, ": ", roots.size(), " outputs but ", grad_roots.size(), " gradients");
  for (size_t i = 0; i < roots.size(); ++i) {
    const Tensor& r = roots[i];
    if (!r.requires_grad())
      fail(fn, ": tensor of shape ", r.shape(),
           " does not require grad and has no grad_fn (set requires_grad on a leaf it depends on, "
           "and do not compute it under NoGradGuard)");
    Tensor g = i < grad_roots.size() ? grad_roots[i] : Tensor();
    if (!g.defined()) {
      if (r.numel() != 1)
        fail(fn, ": output of shape ", r.shape(),
             " is not a single element; pass a gradient of that shape (e.g. ones_like(out))");
    } else if (g.shape() != r.shape() || g.dtype() != r.dtype()) {
      fail(fn, ": gradient of shape ", g.shape(), " ", g.dtype(), " given for an output of shape ",
           r.shape(), " ", r.dtype());
    }
  }
}

void seed_pending(const std::vector<Tensor>& roots, const std::vector<Tensor>& grad_roots) {
  for (size_t i = 0; i < roots.size(); ++i) {
    Tensor g = i < grad_roots.size() && grad_roots[i].defined() ? grad_roots[i] : ones_like(roots[i]);
    accumulate_grad("backward", roots[i].impl(), g, false);
  }
}

void sweep(Sweep& s, const std::vector<Tensor>& roots, const std::vector<Tensor>& grad_roots,
           bool retain_graph, bool create_graph, const char* fn) {
  check_roots(roots, grad_roots, fn);
  s.collect(roots);
  seed_pending(roots, grad_roots);
  std::optional<NoGradGuard> no_grad;
  std::optional<EnableGradGuard> with_grad;
  if (create_graph) with_grad.emplace();
  else no_grad.emplace();
  try {
    s.run(retain_graph || create_graph, create_graph);
  } catch (...) {
    s.clear_pending();
    throw;
  }
}

}  // namespace

void backward(const std::vector<Tensor>& roots, const std::vector<Tensor>& grad_roots, bool retain_graph,
              bool create_graph) {
  Sweep s;
  sweep(s, roots, grad_roots, retain_graph, create_graph, "backward");
}

std::vector<Tensor> grad(const std::vector<Tensor>& outputs, const std::vector<Tensor>& inputs,
                         const std::vector<Tensor>& grad_outputs, bool retain_graph, bool create_graph,
                         bool allow_unused) {
  for (const Tensor& x : inputs)
    if (!x.requires_grad()) fail("grad: an input of shape ", x.shape(), " does not require grad");
  Sweep s;
  s.capture_inputs = &inputs;
  s.captured.resize(inputs.size());
  sweep(s, outputs, grad_outputs, retain_graph, create_graph, "grad");
  for (size_t i = 0; i < inputs.size(); ++i)
    if (!s.captured[i].defined() && !allow_unused)
      fail("grad: input ", i, " (shape ", inputs[i].shape(),
           ") was not used to compute the outputs; pass allow_unused=true to get an undefined tensor");
  return s.captured;
}

// ---- data parallelism ----------------------------------------------------------------------------
namespace {
// What a shard leaves behind: its loss's value, its gradients, or the error it threw.
struct ShardResult {
  double loss = 0;
  Shape shape;
  Dtype dtype = kFloat32;
  std::vector<Tensor> grads;
  std::exception_ptr error;
};

// The gradients of this thread's last shard, dropped when it runs its next: so each buffer goes
// back to the pool of the thread that made it. Dropped by the caller instead, they went into its
// cache and a helper took new buffers every time: W5's step at 2 threads took 1.59-1.60 ms against
// 1.40-1.42 (7 Dec 2026, vCPUs far apart).
struct ShardKeep {
  uint64_t call = 0;
  std::vector<Tensor> grads;
};
thread_local ShardKeep t_shard_keep;
std::atomic<uint64_t> g_sharded_calls{0};
}  // namespace

Tensor backward_sharded(const std::vector<Tensor>& params, int64_t n, const ShardLoss& loss_of) {
  const char* fn = "backward_sharded";
  if (n < 1) fail(fn, ": need a batch of at least 1 row, got ", n);
  if (!loss_of) fail(fn, ": no loss function given");
  if (!GradMode::is_enabled()) fail(fn, ": called under NoGradGuard, so the loss would record no graph");
  for (size_t i = 0; i < params.size(); ++i) {
    const Tensor& p = params[i];
    if (!p.defined()) fail(fn, ": params[", i, "] is undefined");
    if (!p.is_leaf() || !p.requires_grad())
      fail(fn, ": params[", i, "] (shape ", p.shape(), ") must be a leaf that requires grad");
    for (size_t j = 0; j < i; ++j)
      if (params[j].impl() == p.impl()) fail(fn, ": params[", j, "] and params[", i, "] are the same tensor");
  }
  // One shard where a second thread would not run: at 1 thread, inside a shard or a sweep, and
  // in the per-thread debugging modes, which must see the whole graph.
  const int64_t shards = t_in_sweep || detail::in_part() || DetectAnomalyGuard::is_enabled() || ExplainGuard::current()
                             ? 1
                             : std::min<int64_t>(n, detail::intra_op_threads());
  if (shards == 1) {  // backward() itself, on the params
    Tensor loss = loss_of(params, 0, n);
    Sweep s;
    s.only_leaves = &params;
    sweep(s, {loss}, {}, false, false, fn);
    return loss.detach();
  }

  const uint64_t call = g_sharded_calls.fetch_add(1, std::memory_order_relaxed) + 1;
  std::vector<ShardResult> out(static_cast<size_t>(shards));
  detail::run_parts(int(shards), [&](int k) {
    if (t_shard_keep.call != call) {
      t_shard_keep.grads.clear();
      t_shard_keep.call = call;
    }
    ShardResult& r = out[size_t(k)];
    try {
      std::vector<Tensor> mine;  // the params again, as leaves of this shard's graph alone
      mine.reserve(params.size());
      for (const Tensor& p : params) mine.push_back(p.detach().requires_grad_(true));
      Tensor loss = loss_of(mine, n * k / shards, n * (k + 1) / shards);
      Sweep s;
      s.only_leaves = &mine;
      s.capture_inputs = &mine;
      s.captured.resize(mine.size());
      sweep(s, {loss}, {}, false, false, fn);
      r.loss = loss.item();
      r.shape = loss.shape();
      r.dtype = loss.dtype();
      r.grads = std::move(s.captured);
      t_shard_keep.grads.insert(t_shard_keep.grads.end(), r.grads.begin(), r.grads.end());
    } catch (...) {
      r.error = std::current_exception();
    }
  });
  for (const ShardResult& r : out)
    if (r.error) std::rethrow_exception(r.error);  // the first shard's error; nothing applied yet

  // dparam = Σ_k dparam_k, in shard order, into a buffer of the caller's; then as backward() would.
  NoGradGuard no_grad;
  for (size_t i = 0; i < params.size(); ++i) {
    TensorImpl* p = params[i].impl();
    Tensor dout;
    for (const ShardResult& r : out) {
      const Tensor& g = r.grads[i];
      if (!g.defined()) continue;
      check_grad_matches(fn, p, g);
      if (!dout.defined()) {
        dout = Tensor(TensorImpl::create(g.dtype(), g.shape()));
        std::copy_n(static_cast<const char*>(g.impl()->data), g.impl()->nbytes(), static_cast<char*>(dout.impl()->data));
      } else {
        add_in_place(dout.impl(), g);
      }
    }
    if (!dout.defined()) continue;  // not used by the loss
    run_hooks(p, dout);
    const TensorExtras* extras = detail::find_extras(p);
    finish_leaf(p, dout, extras ? extras->step.get() : nullptr, false);
  }
  double total = 0;
  for (const ShardResult& r : out) total += r.loss;
  Tensor loss(TensorImpl::create(out[0].dtype, out[0].shape));
  dispatch(fn, loss.dtype(), [&]<class T>() { *loss.data_ptr<T>() = static_cast<T>(total); });
  return loss;
}

}  // namespace tapegrad

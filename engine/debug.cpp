// Seeing and checking the sweep: anomaly mode, hooks, explain mode.
#include <cmath>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <sstream>

#include "dispatch.hpp"
#include "node.hpp"

namespace tapegrad {

// ---- anomaly mode ----------------------------------------------------------------------------------
namespace {
thread_local bool anomaly_enabled = false;
thread_local ExplainGuard* explain_current = nullptr;
thread_local const Node* backward_running = nullptr;  // the node whose backward is running

bool all_finite(const Tensor& t) {
  if (t.dtype() == kInt64) return true;
  return dispatch("anomaly", t.dtype(), [&]<class T>() {
    const T* p = t.data_ptr<T>();
    for (size_t i = 0, n = t.numel(); i < n; ++i)
      if (!std::isfinite(p[i])) return false;
    return true;
  });
}

double norm_of(const Tensor& t) {
  double s = 0;
  for (double v : t.to_vector()) s += v * v;
  return std::sqrt(s);
}
}  // namespace

DetectAnomalyGuard::DetectAnomalyGuard() : prev_(anomaly_enabled) { anomaly_enabled = true; }
DetectAnomalyGuard::~DetectAnomalyGuard() { anomaly_enabled = prev_; }
bool DetectAnomalyGuard::is_enabled() { return anomaly_enabled; }

namespace detail {
const uint64_t kLeafIds = 1000000000000ull;  // leaves' ids in explain records start here

BackwardScope::BackwardScope(const Node* n) : prev_(backward_running) { backward_running = n; }
BackwardScope::~BackwardScope() { backward_running = prev_; }

std::atomic<size_t> remembered_sites{0};
namespace {
std::mutex sites_mutex;
std::unordered_map<const Node*, CallSite> sites;
}  // namespace

void remember_site(const Node* node) {
  CallSite site = CallSite::current();
  if (!site.known()) return;
  std::lock_guard<std::mutex> lock(sites_mutex);
  if (sites.insert_or_assign(node, site).second) remembered_sites.fetch_add(1, std::memory_order_relaxed);
}
void forget_site(const Node* node) {
  std::lock_guard<std::mutex> lock(sites_mutex);
  if (sites.erase(node)) remembered_sites.fetch_sub(1, std::memory_order_relaxed);
}
static CallSite site_of(const Node* node) {
  std::lock_guard<std::mutex> lock(sites_mutex);
  auto it = sites.find(node);
  return it == sites.end() ? CallSite::unknown() : it->second;
}
static void put_site(std::ostream& os, const char* verb, const CallSite& site) {
  if (site.known()) os << ", " << verb << " at " << site.file() << ":" << site.line() << " in " << site.function();
}

void check_anomaly(const char* op, const Tensor& out, const Tensor* inputs, size_t n) {
  if (all_finite(out)) return;
  std::ostringstream os;
  os << "anomaly: " << op << " produced NaN or Inf in its output " << out.shape() << " from inputs";
  for (size_t i = 0; i < n; ++i) os << (i ? ", " : " ") << inputs[i].shape();
  os << " (op number " << next_seq() << " on the tape";
  if (!backward_running) {
    put_site(os, "called", CallSite::current());
    os << ")";
  } else {  // the op was called by a backward rule: the useful site is where that node was made
    os << ") during the backward of " << backward_running->name << " (op number " << backward_running->seq;
    put_site(os, "created", site_of(backward_running));
    os << ")";
  }
  throw Error(os.str());
}

void check_anomaly_grad(const Node& node, size_t i, const Tensor& grad) {
  if (all_finite(grad)) return;
  std::ostringstream os;
  os << "anomaly: backward of " << node.name << " (op number " << node.seq << ", inputs";
  for (size_t k = 0; k < node.n_inputs; ++k) os << (k ? ", " : " ") << node.inputs[k].input.shape();
  put_site(os, "created", site_of(&node));
  os << ") produced NaN or Inf in the gradient of input " << i << " " << grad.shape();
  throw Error(os.str());
}
}  // namespace detail

// ---- hooks -------------------------------------------------------------------------------------------
namespace {
std::atomic<uint64_t> hook_ids{0};
// The side table of per-tensor extras (hooks): rarely used, so not worth a field in every tensor.
std::mutex extras_mutex;
std::unordered_map<const TensorImpl*, std::unique_ptr<TensorExtras>> extras_table;

TensorExtras& extras_of(const Tensor& t) {
  TensorImpl* p = t.impl();
  if (!p) fail("register_hook: undefined tensor");
  std::lock_guard<std::mutex> lock(extras_mutex);
  auto& e = extras_table[p];
  if (!e) e = std::make_unique<TensorExtras>();
  p->set(TensorImpl::kHasExtras, true);
  return *e;
}
template <class V>
void erase_id(V& v, uint64_t id) {
  for (auto it = v.begin(); it != v.end(); ++it)
    if (it->first == id) {
      v.erase(it);
      return;
    }
}
}  // namespace

HookHandle register_hook(const Tensor& t, GradHook hook) {
  if (!t.requires_grad()) fail("register_hook: tensor of shape ", t.shape(), " does not require grad");
  uint64_t id = ++hook_ids;
  extras_of(t).hooks.emplace_back(id, std::move(hook));
  return HookHandle(t, id);
}

HookHandle register_post_accumulate_grad_hook(const Tensor& leaf, PostAccumulateHook hook) {
  if (!leaf.requires_grad() || !leaf.is_leaf())
    fail("register_post_accumulate_grad_hook: needs a leaf that requires grad (shape ", leaf.shape(), ")");
  uint64_t id = ++hook_ids;
  extras_of(leaf).post_hooks.emplace_back(id, std::move(hook));
  return HookHandle(leaf, id);
}

HookHandle register_step_in_backward(const Tensor& leaf, std::shared_ptr<const StepInBackward> rule) {
  if (!leaf.defined() || !leaf.requires_grad() || !leaf.is_leaf())
    fail("register_step_in_backward: needs a leaf that requires grad",
         leaf.defined() ? " (shape " + leaf.shape().str() + ")" : std::string());
  if (!rule) fail("register_step_in_backward: no rule given");
  TensorExtras& e = extras_of(leaf);
  if (e.step)
    fail("register_step_in_backward: the leaf of shape ", leaf.shape(),
         " is already updated in backward by another rule (two optimizers over one parameter?)");
  e.step = std::move(rule);
  e.step_id = ++hook_ids;
  return HookHandle(leaf, e.step_id);
}

namespace detail {
TensorExtras* find_extras(const TensorImpl* t) {
  if (!t->has(TensorImpl::kHasExtras)) return nullptr;
  std::lock_guard<std::mutex> lock(extras_mutex);
  auto it = extras_table.find(t);
  return it == extras_table.end() ? nullptr : it->second.get();
}
void drop_extras(TensorImpl* t) {
  std::lock_guard<std::mutex> lock(extras_mutex);
  extras_table.erase(t);
  t->set(TensorImpl::kHasExtras, false);
}
}  // namespace detail

void HookHandle::remove() {
  if (!t_.defined()) return;
  if (TensorExtras* e = detail::find_extras(t_.impl())) {
    erase_id(e->hooks, id_);
    erase_id(e->post_hooks, id_);
    if (e->step_id == id_) {
      e->step.reset();
      e->step_id = 0;
    }
  }
  t_ = Tensor();
}

// ---- explain mode ------------------------------------------------------------------------------------
ExplainGuard::ExplainGuard() : prev_(explain_current) { explain_current = this; }
ExplainGuard::~ExplainGuard() { explain_current = prev_; }
ExplainGuard* ExplainGuard::current() { return explain_current; }

std::string ExplainGuard::text() const {
  std::string s;
  for (const auto& l : lines_) s += l + "\n";
  return s;
}

ExplainNode& ExplainGuard::node_for(const TensorImpl* t, const char* op) {
  for (auto& [p, i] : index_)
    if (p == t) return nodes[i];
  ExplainNode n;
  n.id = t->node ? t->node->seq : detail::kLeafIds + ++next_leaf_id_;
  n.op = op;
  n.shape = t->shape;
  index_.emplace_back(t, nodes.size());
  nodes.push_back(n);
  return nodes.back();
}

std::string ExplainGuard::dot() const {
  std::ostringstream os;
  os << "digraph backward {\n  rankdir=BT;\n  node [fontname=\"monospace\"];\n";
  for (const auto& n : nodes) {
    os << "  n" << n.id << " [shape=" << (n.op.empty() ? "box" : "ellipse") << ", label=\""
       << (n.op.empty() ? "leaf" : n.op) << "\\n" << n.shape << "\\n|grad|=" << n.grad_norm << "\"];\n";
    for (uint64_t in : n.inputs) os << "  n" << in << " -> n" << n.id << ";\n";
  }
  os << "}\n";
  return os.str();
}

namespace detail {

// "dW += xᵀ·dout" with x:[4,3], dout:[4,2] → "[3,2] += [3,4]·[4,2]": every symbol that names an
// input, its gradient, dout or y is replaced by its shape (transposed when followed by ᵀ).
std::string rule_shapes(const Node& node, size_t i, const char* rule, const Tensor& grad, const Tensor& dout,
                        const Tensor& out) {
  std::vector<std::string> names;
  std::istringstream ns(node.input_names ? node.input_names : (node.n_inputs == 1 ? "x" : "a b"));
  for (std::string w; ns >> w;) names.push_back(w);
  auto shape_of = [&](const std::string& tok, bool& found) -> Shape {
    found = true;
    if (tok == "dout" || tok == "dy") return dout.shape();
    if (tok == "y" || tok == "out") return out.shape();
    for (size_t k = 0; k < names.size() && k < node.n_inputs; ++k) {
      if (tok == names[k]) return node.inputs[k].input.shape();
      if (tok == "d" + names[k]) return k == i ? grad.shape() : node.inputs[k].input.shape();
    }
    found = false;
    return {};
  };
  static const std::string T = "ᵀ";
  std::string s(rule), res;
  for (size_t p = 0; p < s.size();) {
    if (std::isalpha(static_cast<unsigned char>(s[p])) || s[p] == '_') {
      size_t q = p;
      while (q < s.size() && (std::isalnum(static_cast<unsigned char>(s[q])) || s[q] == '_')) ++q;
      std::string tok = s.substr(p, q - p);
      bool found;
      Shape sh = shape_of(tok, found);
      if (found && s.compare(q, T.size(), T) == 0 && sh.rank() >= 2) {
        std::swap(sh[sh.rank() - 1], sh[sh.rank() - 2]);
        q += T.size();
      }
      res += found ? sh.str() : tok;
      p = q;
    } else {
      res += s[p++];
    }
  }
  return res;
}

void explain_add(const Node& node, size_t i, const char* rule, const Tensor& grad, const Tensor& dout,
                 const Tensor& out) {
  ExplainGuard* ex = explain_current;
  std::string line = std::string("  ") + node.name + ": ";
  line += rule ? std::string(rule) + "   " + rule_shapes(node, i, rule, grad, dout, out)
               : "d(input " + std::to_string(i) + ") += " + grad.shape().str();
  ex->add_line(line);
}

void explain_visit(const TensorImpl* t, const Tensor& dout) {
  ExplainGuard* ex = explain_current;
  double norm = norm_of(dout);
  uint64_t id = ex->node_for(t, t->node ? t->node->name : "").id;
  std::vector<uint64_t> inputs;  // node_for may grow ex->nodes: hold no reference across it
  if (t->node)
    for (uint32_t k = 0; k < t->node->n_inputs; ++k) {
      const TensorImpl* in = t->node->inputs[k].input.impl();
      if (in->has(TensorImpl::kRequiresGrad)) inputs.push_back(ex->node_for(in, in->node ? in->node->name : "").id);
    }
  ExplainNode& n = ex->node_for(t, "");
  n.grad_norm = norm;
  n.inputs = std::move(inputs);
  std::ostringstream os;
  if (t->node) os << "#" << id << " " << t->node->name;
  else os << "leaf #L" << id - kLeafIds;
  os << " " << t->shape << "   |dout| = " << norm;
  ex->add_line(os.str());
}

void explain_fan_out(const TensorImpl* t, const char* op, const Tensor& grad) {
  std::ostringstream os;
  os << "  fan-out: " << (t->node ? t->node->name : "leaf") << " " << t->shape << " already has a gradient; += "
     << grad.shape() << " from " << op;
  explain_current->add_line(os.str());
}

}  // namespace detail
}  // namespace tapegrad

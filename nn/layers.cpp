// The standard layers. Each forward is a few public ops; the tape records them, so backward
// needs no code here.
#include "layers.hpp"

#include <cmath>
#include <sstream>

#include <tapegrad/tapegrad.hpp>

namespace tapegrad::nn {

static std::string fmt(const char* name, std::initializer_list<std::pair<const char*, double>> kv) {
  std::ostringstream os;
  os << name << "(";
  bool first = true;
  for (auto& [k, v] : kv) {
    os << (first ? "" : ", ") << k << "=" << v;
    first = false;
  }
  os << ")";
  return os.str();
}

// ---- Linear ----------------------------------------------------------------------------------
Linear::Linear(size_t in, size_t out, bool bias, const Options& opt) : in_features(in), out_features(out) {
  if (in == 0 || out == 0) fail("Linear: sizes in=", in, ", out=", out, " must be positive");
  double k = 1.0 / std::sqrt(static_cast<double>(in));
  W = register_parameter("W", uniform(Shape{in, out}, -k, k, opt));
  if (bias) b = register_parameter("b", uniform(Shape{out}, -k, k, opt));
}

Tensor Linear::forward(const Tensor& x) { return linear(x, W, b); }

std::string Linear::name() const {
  return fmt("Linear", {{"in", double(in_features)}, {"out", double(out_features)}, {"bias", b.defined()}});
}

// ---- Sequential --------------------------------------------------------------------------------
Sequential::Sequential(std::initializer_list<std::shared_ptr<Module>> mods) {
  for (auto& m : mods) push_back(m);
}

void Sequential::push_back(std::shared_ptr<Module> m) {
  register_module(std::to_string(mods_.size()), m);
  mods_.push_back(std::move(m));
}

Tensor Sequential::forward(const Tensor& x) {
  Tensor h = x;
  for (auto& m : mods_) h = m->forward(h);
  return h;
}

// ---- activations -------------------------------------------------------------------------------
Tensor ReLU::forward(const Tensor& x) { return relu(x); }
Tensor Tanh::forward(const Tensor& x) { return tanh(x); }
Tensor Sigmoid::forward(const Tensor& x) { return sigmoid(x); }
Tensor GELU::forward(const Tensor& x) { return gelu(x); }

std::shared_ptr<Module> make_activation(Activation a) {
  switch (a) {
    case Activation::ReLU: return std::make_shared<ReLU>();
    case Activation::Tanh: return std::make_shared<Tanh>();
    case Activation::Sigmoid: return std::make_shared<Sigmoid>();
    case Activation::GELU: return std::make_shared<GELU>();
  }
  fail("make_activation: unknown activation");
}

// ---- Dropout -----------------------------------------------------------------------------------
Dropout::Dropout(double p_, Generator* gen) : p(p_), gen_(gen) {
  if (!(p >= 0.0 && p <= 1.0)) fail("Dropout: p=", p, " must be in [0, 1]");
}

// Dropout (train): y = x·m, m_i = 1/(1-p) with probability 1-p, else 0      dx = dy·m
Tensor Dropout::forward(const Tensor& x) {
  if (!is_training() || p == 0.0) return x;
  if (x.dtype() == kInt64) fail("Dropout: input ", x.shape(), " has dtype int64; float expected");
  Generator& gen = gen_ ? *gen_ : default_generator();
  std::uniform_real_distribution<double> u(0.0, 1.0);
  double keep = p >= 1.0 ? 0.0 : 1.0 / (1.0 - p);
  Tensor mask = empty(x.shape(), x.dtype());
  auto fill = [&](auto* m) {
    using T = std::remove_pointer_t<decltype(m)>;
    for (size_t i = 0; i < mask.numel(); ++i) m[i] = u(gen.engine()) < p ? T(0) : static_cast<T>(keep);
  };
  if (x.dtype() == kFloat32) fill(mask.data_ptr<float>());
  else fill(mask.data_ptr<double>());
  return x * mask;
}

std::string Dropout::name() const { return fmt("Dropout", {{"p", p}}); }

// ---- Embedding ---------------------------------------------------------------------------------
Embedding::Embedding(size_t num, size_t dim, const Options& opt) {
  if (num == 0 || dim == 0) fail("Embedding: sizes num=", num, ", dim=", dim, " must be positive");
  weight = register_parameter("weight", normal(Shape{num, dim}, 0.0, 1.0, opt));
}

Tensor Embedding::forward(const Tensor& indices) {
  if (indices.dtype() != kInt64)
    fail("Embedding: indices ", indices.shape(), " have dtype ", indices.dtype(), "; int64 expected");
  if (indices.dim() == 1) return index_select(weight, 0, indices);
  // Any shape: look up the flattened indices, then restore the shape with the row appended.
  std::vector<double> v = indices.to_vector();
  std::vector<int64_t> flat(v.begin(), v.end());
  Tensor rows = index_select(weight, 0, from_indices(flat, Shape{flat.size()}));
  std::vector<int64_t> shape(indices.shape().begin(), indices.shape().end());
  shape.push_back(static_cast<int64_t>(weight.shape()[1]));
  return reshape(rows, shape);
}

std::string Embedding::name() const {
  return fmt("Embedding", {{"num", double(weight.shape()[0])}, {"dim", double(weight.shape()[1])}});
}

// ---- LayerNorm ---------------------------------------------------------------------------------
LayerNorm::LayerNorm(size_t size_, double eps_, bool affine, const Options& opt) : size(size_), eps(eps_) {
  if (size == 0) fail("LayerNorm: size must be positive");
  if (affine) {
    weight = register_parameter("weight", ones(Shape{size}, opt.dtype));
    bias = register_parameter("bias", zeros(Shape{size}, opt.dtype));
  }
}

// LayerNorm: μ = mean(x), σ² = mean((x-μ)²) over the last dim, y = (x-μ)/√(σ²+eps)·w + b
Tensor LayerNorm::forward(const Tensor& x) {
  if (x.dim() == 0 || x.shape().back() != size)
    fail("LayerNorm: input ", x.shape(), " does not end in the normalised size ", size);
  Tensor xc = x - mean(x, -1, /*keepdim=*/true);
  Tensor var = mean(xc * xc, -1, /*keepdim=*/true);
  Tensor y = xc / sqrt(var + eps);
  if (weight.defined()) y = y * weight + bias;
  return y;
}

std::string LayerNorm::name() const { return fmt("LayerNorm", {{"size", double(size)}, {"eps", eps}}); }

// ---- RNNCell -----------------------------------------------------------------------------------
static void check_cell_input(const char* cell, const Tensor& x, size_t in, const Tensor& h, size_t H) {
  if (x.dim() != 2 || x.shape()[1] != in)
    fail(cell, ": input ", x.shape(), " should be [B,", in, "]");
  if (h.defined() && (h.dim() != 2 || h.shape()[0] != x.shape()[0] || h.shape()[1] != H))
    fail(cell, ": hidden state ", h.shape(), " should be [", x.shape()[0], ",", H, "] for input ", x.shape());
}

RNNCell::RNNCell(size_t in, size_t H, bool bias, const Options& opt) : input_size(in), hidden_size(H) {
  if (in == 0 || H == 0) fail("RNNCell: sizes input=", in, ", hidden=", H, " must be positive");
  double k = 1.0 / std::sqrt(static_cast<double>(H));
  W_ih = register_parameter("W_ih", uniform(Shape{in, H}, -k, k, opt));
  W_hh = register_parameter("W_hh", uniform(Shape{H, H}, -k, k, opt));
  if (bias) {
    b_ih = register_parameter("b_ih", uniform(Shape{H}, -k, k, opt));
    b_hh = register_parameter("b_hh", uniform(Shape{H}, -k, k, opt));
  }
}

// h' = tanh(x·W_ih + b_ih + h·W_hh + b_hh)
Tensor RNNCell::forward(const Tensor& x, const Tensor& h) {
  check_cell_input("RNNCell", x, input_size, h, hidden_size);
  Tensor pre = linear(x, W_ih, b_ih);
  if (h.defined()) pre = pre + linear(h, W_hh, b_hh);
  else if (b_hh.defined()) pre = pre + b_hh;
  return tanh(pre);
}

Tensor RNNCell::forward(const Tensor& x) { return forward(x, Tensor()); }

std::string RNNCell::name() const {
  return fmt("RNNCell", {{"input", double(input_size)}, {"hidden", double(hidden_size)}});
}

// ---- LSTMCell ----------------------------------------------------------------------------------
LSTMCell::LSTMCell(size_t in, size_t H, bool bias, const Options& opt) : input_size(in), hidden_size(H) {
  if (in == 0 || H == 0) fail("LSTMCell: sizes input=", in, ", hidden=", H, " must be positive");
  double k = 1.0 / std::sqrt(static_cast<double>(H));
  W_ih = register_parameter("W_ih", uniform(Shape{in, 4 * H}, -k, k, opt));
  W_hh = register_parameter("W_hh", uniform(Shape{H, 4 * H}, -k, k, opt));
  if (bias) {
    b_ih = register_parameter("b_ih", uniform(Shape{4 * H}, -k, k, opt));
    b_hh = register_parameter("b_hh", uniform(Shape{4 * H}, -k, k, opt));
  }
}

LSTMCell::State LSTMCell::zero_state(size_t batch) const {
  return {zeros(Shape{batch, hidden_size}, W_ih.dtype()), zeros(Shape{batch, hidden_size}, W_ih.dtype())};
}

// [i f g o] = x·W_ih + b_ih + h·W_hh + b_hh;  c' = σ(f)·c + σ(i)·tanh(g);  h' = σ(o)·tanh(c')
LSTMCell::State LSTMCell::forward(const Tensor& x, const State& s) {
  check_cell_input("LSTMCell", x, input_size, s.h, hidden_size);
  check_cell_input("LSTMCell", x, input_size, s.c, hidden_size);
  auto H = static_cast<int64_t>(hidden_size);
  Tensor gates = linear(x, W_ih, b_ih);  // [B,4H]
  if (s.h.defined()) gates = gates + linear(s.h, W_hh, b_hh);
  else if (b_hh.defined()) gates = gates + b_hh;
  Tensor i = sigmoid(narrow(gates, 1, 0, H));
  Tensor f = sigmoid(narrow(gates, 1, H, H));
  Tensor g = tanh(narrow(gates, 1, 2 * H, H));
  Tensor o = sigmoid(narrow(gates, 1, 3 * H, H));
  Tensor c = s.c.defined() ? f * s.c + i * g : i * g;
  return {o * tanh(c), c};
}

Tensor LSTMCell::forward(const Tensor& x) { return forward(x, State{}).h; }

std::string LSTMCell::name() const {
  return fmt("LSTMCell", {{"input", double(input_size)}, {"hidden", double(hidden_size)}});
}

// ---- MLP ---------------------------------------------------------------------------------------
MLP::MLP(const std::vector<size_t>& sizes, Activation act, const Options& opt, double dropout) {
  if (sizes.size() < 2) fail("MLP: needs at least an input and an output size, got ", sizes.size(), " sizes");
  layers = register_module("layers", std::make_shared<Sequential>());
  for (size_t i = 0; i + 1 < sizes.size(); ++i) {
    layers->push_back(std::make_shared<Linear>(sizes[i], sizes[i + 1], true, opt));
    if (i + 2 < sizes.size()) {
      layers->push_back(make_activation(act));
      if (dropout > 0) layers->push_back(std::make_shared<Dropout>(dropout, opt.gen));
    }
  }
}

}  // namespace tapegrad::nn

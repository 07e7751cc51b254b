#pragma once
// The standard layers, built from public ops only, so every gradient comes from the tape.
#include <functional>
#include <initializer_list>
#include <memory>
#include <utility>
#include <vector>

#include "module.hpp"

namespace tapegrad::nn {

// y = x·W + b with W: [in, out] as in the math. (libtorch's nn::Linear stores weight as
// [out, in] and computes x·weightᵀ; transpose when moving weights between the two.)
// PyTorch's default initialisation: W and b ~ U(-1/√in, 1/√in).
class Linear : public Module {
 public:
  Linear(size_t in, size_t out, bool bias = true, const Options& opt = {});
  Linear(size_t in, size_t out, const Options& opt) : Linear(in, out, true, opt) {}
  Tensor forward(const Tensor& x) override;  // x: [B,in] or [...,in]
  std::string name() const override;
  Tensor W, b;  // b undefined when bias = false
  size_t in_features, out_features;
};

// Runs its children in order.
class Sequential : public Module {
 public:
  Sequential() = default;
  Sequential(std::initializer_list<std::shared_ptr<Module>> mods);
  void push_back(std::shared_ptr<Module> m);  // registered as "0", "1", ...
  Tensor forward(const Tensor& x) override;
  std::string name() const override { return "Sequential"; }
  size_t size() const { return mods_.size(); }
  std::shared_ptr<Module> operator[](size_t i) const { return mods_.at(i); }

 private:
  std::vector<std::shared_ptr<Module>> mods_;
};

class ReLU : public Module {
 public:
  Tensor forward(const Tensor& x) override;
  std::string name() const override { return "ReLU"; }
};
class Tanh : public Module {
 public:
  Tensor forward(const Tensor& x) override;
  std::string name() const override { return "Tanh"; }
};
class Sigmoid : public Module {
 public:
  Tensor forward(const Tensor& x) override;
  std::string name() const override { return "Sigmoid"; }
};
class GELU : public Module {
 public:
  Tensor forward(const Tensor& x) override;
  std::string name() const override { return "GELU"; }
};

// Inverted dropout: in training each element is zeroed with probability p and the survivors
// are scaled by 1/(1-p), so eval (identity) needs no rescaling. The mask is a constant of the
// graph: the gradient is dout·mask.
class Dropout : public Module {
 public:
  explicit Dropout(double p = 0.5, Generator* gen = nullptr);
  Tensor forward(const Tensor& x) override;
  std::string name() const override;
  double p;

 private:
  Generator* gen_;
};

// A lookup table: forward(indices int64 [...]) -> [..., dim] by index_select on dim 0.
// Initialised N(0, 1) like PyTorch.
class Embedding : public Module {
 public:
  Embedding(size_t num_embeddings, size_t embedding_dim, const Options& opt = {});
  Tensor forward(const Tensor& indices) override;
  std::string name() const override;
  Tensor weight;  // [num, dim]
};

// Normalises over the last dim: y = (x - mean)/√(var + eps)·weight + bias, with the biased
// variance (as PyTorch). weight = 1, bias = 0 initially.
class LayerNorm : public Module {
 public:
  explicit LayerNorm(size_t size, double eps = 1e-5, bool affine = true, const Options& opt = {});
  LayerNorm(size_t size, const Options& opt) : LayerNorm(size, 1e-5, true, opt) {}
  Tensor forward(const Tensor& x) override;
  std::string name() const override;
  Tensor weight, bias;  // undefined when affine = false
  size_t size;
  double eps;
};

// Elman cell: h' = tanh(x·W_ih + b_ih + h·W_hh + b_hh). W_ih: [in, H], W_hh: [H, H].
// Init U(-1/√H, 1/√H) for all, as PyTorch.
class RNNCell : public Module {
 public:
  RNNCell(size_t input_size, size_t hidden_size, bool bias = true, const Options& opt = {});
  RNNCell(size_t input_size, size_t hidden_size, const Options& opt) : RNNCell(input_size, hidden_size, true, opt) {}
  Tensor forward(const Tensor& x, const Tensor& h);
  Tensor forward(const Tensor& x) override;  // h = 0
  std::string name() const override;
  Tensor W_ih, W_hh, b_ih, b_hh;
  size_t input_size, hidden_size;
};

// LSTM cell with PyTorch's gate order (input, forget, cell, output) along the 4H columns:
//   [i f g o] = x·W_ih + b_ih + h·W_hh + b_hh
//   c' = σ(f)·c + σ(i)·tanh(g)     h' = σ(o)·tanh(c')
class LSTMCell : public Module {
 public:
  struct State {
    Tensor h, c;
  };
  LSTMCell(size_t input_size, size_t hidden_size, bool bias = true, const Options& opt = {});
  LSTMCell(size_t input_size, size_t hidden_size, const Options& opt) : LSTMCell(input_size, hidden_size, true, opt) {}
  State forward(const Tensor& x, const State& state);
  Tensor forward(const Tensor& x) override;  // zero state; returns h'
  State zero_state(size_t batch) const;
  std::string name() const override;
  Tensor W_ih, W_hh, b_ih, b_hh;  // W_ih: [in, 4H], W_hh: [H, 4H], biases [4H]
  size_t input_size, hidden_size;
};

enum class Activation { ReLU, Tanh, Sigmoid, GELU };
std::shared_ptr<Module> make_activation(Activation a);

// Linear layers of the given sizes with an activation between them (none after the last):
// MLP({2, 64, 3}) = Linear(2,64), ReLU, Linear(64,3). Optional dropout after each activation.
// Parameters are named "layers.<i>.W" / "layers.<i>.b".
class MLP : public Module {
 public:
  MLP(const std::vector<size_t>& sizes, Activation act = Activation::ReLU, const Options& opt = {},
      double dropout = 0.0);
  Tensor forward(const Tensor& x) override { return layers->forward(x); }
  std::string name() const override { return "MLP"; }
  std::shared_ptr<Sequential> layers;
};

}  // namespace tapegrad::nn

#pragma once
// Custom differentiable functions, like torch::autograd::Function:
//
//   struct Cube : tapegrad::Function<Cube> {
//     static constexpr const char* name = "cube";
//     static Tensor forward(AutogradContext& ctx, const Tensor& x) {
//       ctx.save_for_backward({x});
//       return x * x * x;                      // runs without recording
//     }
//     static std::vector<Tensor> backward(AutogradContext& ctx, const Tensor& dout) {
//       const Tensor& x = ctx.saved()[0];
//       return {dout * 3.0 * x * x};           // one gradient per Tensor argument of forward
//     }
//   };
//   Tensor y = Cube::apply(x);
//
// forward runs under NoGradGuard; backward gets one incoming gradient and returns one gradient
// per Tensor argument (undefined where there is none). Written with tapegrad ops, the backward is
// itself differentiable (create_graph). Check it with gradcheck.
#include <memory>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include "node.hpp"

namespace tapegrad {

class AutogradContext {
 public:
  // Tensors the backward needs. Saving the output is allowed (it is not kept alive by itself).
  void save_for_backward(std::vector<Tensor> tensors) { saved_ = std::move(tensors); }
  const std::vector<Tensor>& saved() const { return saved_; }
  // The output is a constant (an index, a count): it will not require grad.
  void mark_non_differentiable() { non_differentiable_ = true; }
  bool needs_input_grad(size_t i) const { return i < needs_grad_.size() && needs_grad_[i]; }
  // Non-tensor values for backward (sizes, flags, scalars).
  std::unordered_map<std::string, double> saved_data;

 private:
  template <class D>
  friend struct Function;
  std::vector<Tensor> saved_;
  std::vector<bool> needs_grad_;
  std::vector<int> saved_output_;  // positions in saved_ that hold the output
  bool non_differentiable_ = false;
};

template <class Derived>
struct Function {
  template <class... Args>
  static Tensor apply(Args&&... args) {
    std::vector<Tensor> inputs;
    (collect(inputs, args), ...);
    auto ctx = std::make_shared<AutogradContext>();
    for (const Tensor& t : inputs) ctx->needs_grad_.push_back(t.defined() && t.requires_grad());
    Tensor out;
    {
      NoGradGuard no_grad;
      out = Derived::forward(*ctx, std::forward<Args>(args)...);
    }
    if (!out.defined()) fail(function_name(), ": forward returned an undefined tensor");
    if (ctx->non_differentiable_) return out;
    // The output must be a tensor of its own to carry the node (not an input returned as is).
    for (const Tensor& t : inputs)
      if (t.impl() == out.impl() || !out.is_leaf()) {
        out = out.detach();
        break;
      }
    // Saving the output in ctx would make it own itself: keep a marker, hand it back in backward.
    for (size_t i = 0; i < ctx->saved_.size(); ++i)
      if (ctx->saved_[i].impl() == out.impl()) {
        ctx->saved_output_.push_back(static_cast<int>(i));
        ctx->saved_[i] = Tensor();
      }
    return record(function_name(), out, inputs, [ctx](Backward& g) {
      for (int i : ctx->saved_output_) ctx->saved_[static_cast<size_t>(i)] = g.out();
      std::vector<Tensor> grads = Derived::backward(*ctx, g.dout());
      for (int i : ctx->saved_output_) ctx->saved_[static_cast<size_t>(i)] = Tensor();
      if (grads.size() != g.n_inputs())
        fail(function_name(), ": backward returned ", grads.size(), " gradients for ", g.n_inputs(), " tensor inputs");
      for (size_t i = 0; i < grads.size(); ++i)
        if (grads[i].defined() && g.wants(i)) g.add(i, grads[i]);
    });
  }

  static const char* function_name() {
    if constexpr (requires { Derived::name; }) return Derived::name;
    else return "custom_function";
  }

 private:
  template <class A>
  static void collect(std::vector<Tensor>& inputs, const A& a) {
    if constexpr (std::is_same_v<std::decay_t<A>, Tensor>) {
      if (!a.defined()) fail(function_name(), ": tensor argument ", inputs.size(), " is undefined");
      inputs.push_back(a);
    }
  }
};

}  // namespace tapegrad

#pragma once
// Every differentiable op. Each is defined in one .cpp of this folder with its forward and, right
// beside it, its backward and a one-line derivative comment. Errors name the op and the shapes.
#include <cstdint>
#include <vector>

#include "../engine/callsite.hpp"
#include "../engine/node.hpp"
#include "../engine/tensor.hpp"

namespace tapegrad {

// ---- broadcasting (broadcast.cpp) --------------------------------------------------------------
// NumPy rules: align trailing dims; each pair must be equal or one of them 1.
Shape broadcast_shapes(const char* op, const Shape& a, const Shape& b);
// The one place where a broadcast gradient is summed back to an input's shape.
Tensor sum_to(const Tensor& x, const Shape& shape, CallSite site = {});
// Materialises x broadcast to `shape` (backward: sum_to).
Tensor expand(const Tensor& x, const Shape& shape, CallSite site = {});

// ---- elementwise arithmetic (elementwise.cpp), full broadcasting ----------------------------------
Tensor add(const Tensor& a, const Tensor& b, CallSite site = {});
Tensor sub(const Tensor& a, const Tensor& b, CallSite site = {});
Tensor mul(const Tensor& a, const Tensor& b, CallSite site = {});
Tensor div(const Tensor& a, const Tensor& b, CallSite site = {});
Tensor neg(const Tensor& x, CallSite site = {});
// A scalar operand becomes a 0-d constant of x's dtype, once.
Tensor scalar_like(const Tensor& x, double value);

// Operators take their Tensor operand as an Operand, which carries the caller's source location
// into anomaly-mode errors (engine/callsite.hpp); it converts from a Tensor implicitly.
Tensor operator+(const Tensor& a, Operand b);
Tensor operator-(const Tensor& a, Operand b);
Tensor operator*(const Tensor& a, Operand b);
Tensor operator/(const Tensor& a, Operand b);
Tensor operator-(Operand x);
Tensor operator+(Operand a, double b);
Tensor operator-(Operand a, double b);
Tensor operator*(Operand a, double b);
Tensor operator/(Operand a, double b);
Tensor operator+(double a, Operand b);
Tensor operator-(double a, Operand b);
Tensor operator*(double a, Operand b);
Tensor operator/(double a, Operand b);

// ---- unary (unary.cpp) ---------------------------------------------------------------------------
Tensor exp(const Tensor& x, CallSite site = {});
Tensor log(const Tensor& x, CallSite site = {});
Tensor sqrt(const Tensor& x, CallSite site = {});
Tensor pow(const Tensor& x, double exponent, CallSite site = {});
Tensor pow(const Tensor& x, const Tensor& exponent, CallSite site = {});  // broadcasting; d/dexp = x^e · ln x (x > 0)
Tensor abs(const Tensor& x, CallSite site = {});                          // d|x|/dx = sign(x), 0 at 0
Tensor tanh(const Tensor& x, CallSite site = {});
Tensor sigmoid(const Tensor& x, CallSite site = {});
// Their derivative rules as ops, given the incoming gradient and the op's output y.
Tensor tanh_backward(const Tensor& dy, const Tensor& y, CallSite site = {});     // dy·(1 - y²)
Tensor sigmoid_backward(const Tensor& dy, const Tensor& y, CallSite site = {});  // dy·y·(1 - y)
Tensor relu_backward(const Tensor& dy, const Tensor& y, CallSite site = {});     // dy·[y > 0]
Tensor relu(const Tensor& x, CallSite site = {});  // derivative 0 at 0
Tensor leaky_relu(const Tensor& x, double negative_slope = 0.01, CallSite site = {});
Tensor gelu(const Tensor& x, CallSite site = {});  // exact: x·Φ(x)
// Bounds may be ±infinity; the gradient passes where lo <= x <= hi.
Tensor clamp(const Tensor& x, double lo, double hi, CallSite site = {});

// ---- reductions (reduce.cpp) ---------------------------------------------------------------------
Tensor sum(const Tensor& x, CallSite site = {});  // all elements -> 0-d
Tensor sum(const Tensor& x, int64_t dim, bool keepdim = false, CallSite site = {});
Tensor sum(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim = false, CallSite site = {});
Tensor mean(const Tensor& x, CallSite site = {});
Tensor mean(const Tensor& x, int64_t dim, bool keepdim = false, CallSite site = {});
Tensor mean(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim = false, CallSite site = {});
// max/min route the whole gradient to one arg-max/arg-min element: on ties, the first in
// row-major order.
Tensor max(const Tensor& x, CallSite site = {});
Tensor max(const Tensor& x, int64_t dim, bool keepdim = false, CallSite site = {});
Tensor min(const Tensor& x, CallSite site = {});
Tensor min(const Tensor& x, int64_t dim, bool keepdim = false, CallSite site = {});
Tensor argmax(const Tensor& x, int64_t dim, bool keepdim = false, CallSite site = {});  // int64, first on ties
Tensor argmin(const Tensor& x, int64_t dim, bool keepdim = false, CallSite site = {});

// ---- shape ops (shape.cpp) -------------------------------------------------------------------------
// reshape/view/flatten/squeeze/unsqueeze share data with x; one dim of reshape may be -1.
Tensor reshape(const Tensor& x, const std::vector<int64_t>& shape, CallSite site = {});
Tensor view(const Tensor& x, const std::vector<int64_t>& shape, CallSite site = {});
Tensor flatten(const Tensor& x, int64_t start_dim = 0, int64_t end_dim = -1, CallSite site = {});
Tensor squeeze(const Tensor& x, CallSite site = {});  // drops every dim of size 1
Tensor squeeze(const Tensor& x, int64_t dim, CallSite site = {});
Tensor unsqueeze(const Tensor& x, int64_t dim, CallSite site = {});
Tensor transpose(const Tensor& x, int64_t dim0, int64_t dim1, CallSite site = {});
Tensor permute(const Tensor& x, const std::vector<int64_t>& dims, CallSite site = {});
Tensor narrow(const Tensor& x, int64_t dim, int64_t start, int64_t length, CallSite site = {});
Tensor slice(const Tensor& x, int64_t dim, int64_t start, int64_t end, int64_t step = 1, CallSite site = {});
Tensor select(const Tensor& x, int64_t dim, int64_t index, CallSite site = {});  // drops dim
Tensor cat(const std::vector<Tensor>& xs, int64_t dim = 0, CallSite site = {});
Tensor stack(const std::vector<Tensor>& xs, int64_t dim = 0, CallSite site = {});
Tensor index_select(const Tensor& x, int64_t dim, const Tensor& index, CallSite site = {});  // index: int64, 1-D
Tensor clone(const Tensor& x, CallSite site = {});

// ---- linear algebra (linalg.cpp) ---------------------------------------------------------------------
// [M,K]·[K,N], batched [B,M,K]·[B,K,N], and [B,M,K]·[K,N]; BLAS gemm, transposes read in place.
Tensor matmul(const Tensor& a, const Tensor& b, CallSite site = {});
// op(a)·op(b) for 2-D operands, where op transposes when the flag is set (no copy is made).
Tensor mm(const Tensor& a, const Tensor& b, bool transpose_a = false, bool transpose_b = false, CallSite site = {});
// The affine layer y = x·W + b, fused. x: [B,K] (or [...,K]), W: [K,N], b: [N] or undefined.
// Note: W is [in, out] as in the math (libtorch's nn::Linear stores [out, in]).
Tensor linear(const Tensor& x, const Tensor& W, const Tensor& b = {}, CallSite site = {});

// ---- softmax and losses (loss.cpp) ---------------------------------------------------------------
enum class Reduction { Mean, Sum, None };
Tensor softmax(const Tensor& x, int64_t dim = -1, CallSite site = {});
Tensor log_softmax(const Tensor& x, int64_t dim = -1, CallSite site = {});
// logits [B,C], labels int64 [B] in [0,C).
Tensor cross_entropy(const Tensor& logits, const Tensor& labels, Reduction r = Reduction::Mean, CallSite site = {});
Tensor nll_loss(const Tensor& log_probs, const Tensor& labels, Reduction r = Reduction::Mean, CallSite site = {});
Tensor mse_loss(const Tensor& input, const Tensor& target, Reduction r = Reduction::Mean, CallSite site = {});
Tensor binary_cross_entropy_with_logits(const Tensor& logits, const Tensor& targets,
                                        Reduction r = Reduction::Mean, CallSite site = {});

}  // namespace tapegrad

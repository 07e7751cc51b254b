// affine_layer: the question this project started from, answered in code.
//
//   y = x·W + b        x: [B,K]   W: [K,N]   b: [N]   y: [B,N]
//
// Given dout = ∂L/∂y (same shape as y), the backward pass is
//   db = Σ_batch dout          [N]   = sum over the rows of dout   (b was broadcast over the batch)
//   dW = xᵀ·dout               [K,N] = [K,B]·[B,N]
//   dx = dout·Wᵀ               [B,K] = [B,N]·[N,K]
// The program prints every step with its shape, computes the three gradients by hand with plain
// loops, and compares them with what the engine's tape produced. Then a fan-out case: x feeds
// two layers, so its gradient is the SUM of two contributions; a backward that assigned (=)
// instead of accumulating (+=) would keep only the last one. That backward is also shown the way
// the engine explains it (ExplainGuard), and written as a Graphviz graph (affine_backward.dot,
// rendered to SVG when `dot` is installed).
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "common.hpp"

using namespace tapegrad;
using namespace examples;

namespace {

using Matrix = std::vector<std::vector<double>>;

Matrix to_matrix(const Tensor& t) {
  size_t R = t.dim() == 1 ? 1 : t.shape()[0], C = t.shape().back();
  std::vector<double> v = t.to_vector();
  Matrix m(R, std::vector<double>(C));
  for (size_t r = 0; r < R; ++r)
    for (size_t c = 0; c < C; ++c) m[r][c] = v[r * C + c];
  return m;
}

void show(const char* name, const Matrix& m, const std::string& shape) {
  std::printf("  %-6s %-7s", name, shape.c_str());
  for (size_t r = 0; r < m.size(); ++r) {
    if (r) std::printf("  %-6s %-7s", "", "");
    for (double v : m[r]) std::printf(" %8.4f", v);
    std::printf("\n");
  }
}
void show(const char* name, const Tensor& t) { show(name, to_matrix(t), t.shape().str()); }

double max_diff(const Matrix& a, const Matrix& b) {
  double d = 0;
  for (size_t r = 0; r < a.size(); ++r)
    for (size_t c = 0; c < a[r].size(); ++c) d = std::max(d, std::fabs(a[r][c] - b[r][c]));
  return d;
}

}  // namespace

int main() {
  Clock clock;
  const size_t B = 4, K = 3, N = 2;
  Generator gen(2024);
  auto leaf = [&](Shape s) { return nn::uniform(s, -1, 1, nn::Options(kFloat64).with_gen(&gen)).requires_grad_(true); };
  Tensor x = leaf({B, K}), W = leaf({K, N}), b = leaf({N});
  // A fixed upstream gradient: L = Σ y ⊙ G, so ∂L/∂y = G exactly.
  Tensor G = nn::uniform({B, N}, -1, 1, nn::Options(kFloat64).with_gen(&gen));

  std::printf("== forward: y = x·W + b ==\n");
  show("x", x);
  show("W", W);
  show("b", b);
  Tensor y = linear(x, W, b);  // the fused op: one gemm, bias rows first
  show("y", y);
  std::printf("  (x·W is [%zu,%zu]·[%zu,%zu] = [%zu,%zu]; b [%zu] is broadcast to every one of the %zu rows)\n\n", B, K,
              K, N, B, N, N, B);

  std::printf("== backward, given dout = dL/dy ==\n");
  Tensor L = sum(y * G);
  L.backward();
  Matrix dout = to_matrix(G), xm = to_matrix(x), Wm = to_matrix(W);
  show("dout", dout, "[4,2]");

  // db = Σ_batch dout: each b[n] was added to every row, so its gradient collects every row.
  Matrix db(1, std::vector<double>(N, 0));
  for (size_t i = 0; i < B; ++i)
    for (size_t n = 0; n < N; ++n) db[0][n] += dout[i][n];
  // dW = xᵀ·dout: W[k][n] met x[i][k] in every row i's y[i][n].
  Matrix dW(K, std::vector<double>(N, 0));
  for (size_t k = 0; k < K; ++k)
    for (size_t n = 0; n < N; ++n)
      for (size_t i = 0; i < B; ++i) dW[k][n] += xm[i][k] * dout[i][n];
  // dx = dout·Wᵀ: x[i][k] reached y[i][n] through W[k][n] for every n.
  Matrix dx(B, std::vector<double>(K, 0));
  for (size_t i = 0; i < B; ++i)
    for (size_t k = 0; k < K; ++k)
      for (size_t n = 0; n < N; ++n) dx[i][k] += dout[i][n] * Wm[k][n];

  std::printf("\n  db = Σ_batch dout       [2] = sum of the 4 rows of [4,2]\n");
  show("db", db, "[2]");
  show("engine", b.grad());
  std::printf("\n  dW = xᵀ·dout            [3,2] = [3,4]·[4,2]\n");
  show("dW", dW, "[3,2]");
  show("engine", W.grad());
  std::printf("\n  dx = dout·Wᵀ            [4,3] = [4,2]·[2,3]\n");
  show("dx", dx, "[4,3]");
  show("engine", x.grad());
  double err = std::max({max_diff(db, to_matrix(b.grad())), max_diff(dW, to_matrix(W.grad())), max_diff(dx, to_matrix(x.grad()))});
  std::printf("\n  largest |by hand - engine| = %.3g\n\n", err);

  std::printf("== fan-out: x feeds two layers, z = (x·W + b) + (x·V) ==\n");
  Tensor V = leaf({K, N});
  x.zero_grad();
  Tensor z = linear(x, W, b) + matmul(x, V);
  {
    // The engine's own account of this backward: each rule applied with its shapes, and the
    // fan-out += into x from its two consumers.
    ExplainGuard explain;
    sum(z * G).backward();
    std::printf("  the sweep, as the engine explains it:\n");
    for (const std::string& line : explain.lines()) std::printf("    %s\n", line.c_str());
    std::FILE* f = std::fopen("affine_backward.dot", "w");
    if (f) {
      std::fputs(explain.dot().c_str(), f);
      std::fclose(f);
      bool rendered = std::system("command -v dot >/dev/null 2>&1 && dot -Tsvg affine_backward.dot -o affine_backward.svg") == 0;
      std::printf("  graph written to affine_backward.dot%s\n\n",
                  rendered ? " and rendered to affine_backward.svg" : " (install graphviz to render it: dot -Tsvg)");
    }
  }
  Matrix Vm = to_matrix(V);
  Matrix via_W(B, std::vector<double>(K, 0)), via_V(B, std::vector<double>(K, 0));
  for (size_t i = 0; i < B; ++i)
    for (size_t k = 0; k < K; ++k)
      for (size_t n = 0; n < N; ++n) {
        via_W[i][k] += dout[i][n] * Wm[k][n];  // contribution through the first layer
        via_V[i][k] += dout[i][n] * Vm[k][n];  // contribution through the second
      }
  Matrix summed = via_W;
  for (size_t i = 0; i < B; ++i)
    for (size_t k = 0; k < K; ++k) summed[i][k] += via_V[i][k];
  show("dout·Wᵀ", via_W, "[4,3]");
  show("dout·Vᵀ", via_V, "[4,3]");
  show("sum", summed, "[4,3]");
  show("engine", x.grad());
  // A central finite difference on one element settles which is right.
  double eps = 1e-6, fd;
  {
    NoGradGuard no_grad;
    double* px = x.data_ptr<double>();
    auto f = [&] { return sum((linear(x, W, b) + matmul(x, V)) * G).item(); };
    double saved = px[0];
    px[0] = saved + eps;
    double up = f();
    px[0] = saved - eps;
    double down = f();
    px[0] = saved;
    fd = (up - down) / (2 * eps);
  }
  double engine00 = x.grad().to_vector()[0];
  std::printf("\n  dL/dx[0,0]: finite difference %.8f, engine %.8f, '=' would give %.8f (only the last path)\n", fd,
              engine00, via_V[0][0]);
  double fan_err = max_diff(summed, to_matrix(x.grad()));
  bool fanout_ok = fan_err < 1e-12 && std::fabs(fd - engine00) < 1e-6 && std::fabs(fd - via_V[0][0]) > 1e-3;
  std::printf("  => a value used twice must ACCUMULATE its gradients (+=): %s\n", fanout_ok ? "confirmed" : "NOT confirmed");

  print_result("affine_layer", {{"max_abs_diff", fixed(std::max(err, fan_err), 12)}, {"fanout_ok", fanout_ok ? "1" : "0"},
                                {"seconds", fixed(clock.seconds(), 3)}});
  return err < 1e-12 && fanout_ok ? 0 : 1;
}

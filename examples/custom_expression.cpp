// custom_expression: gradients of arbitrary user formulas, each printed beside a central
// finite-difference estimate, and the Rosenbrock function minimised by gradient descent.
//   1. Rosenbrock  f(x, y) = (1 - x)² + 100·(y - x²)²      minimum 0 at (1, 1)
//   2. Relativistic kinetic energy  E(m, v) = m·c²·(1/√(1 - v²/c²) - 1)
//      (∂E/∂v = m·v·γ³ and ∂E/∂m = c²·(γ - 1) in closed form, printed as a third column)
//   3. Lennard-Jones energy of three atoms  U = Σ_pairs 4ε((σ/r)¹² - (σ/r)⁶); forces = -∇U
#include <cmath>
#include <functional>

#include "common.hpp"

using namespace tapegrad;
using namespace examples;

namespace {

Tensor scalar(double v) { return from_vector({v}, Shape{1}, dtype(kFloat64).requires_grad()); }

// Central difference of f with respect to element k of leaf p, evaluated without recording.
double finite_diff(const std::function<Tensor()>& f, const Tensor& p, size_t k, double eps) {
  NoGradGuard no_grad;
  double* d = p.data_ptr<double>();
  double saved = d[k];
  d[k] = saved + eps;
  double up = f().item();
  d[k] = saved - eps;
  double down = f().item();
  d[k] = saved;
  return (up - down) / (2 * eps);
}

double worst_rel = 0;
void compare(const char* name, double engine, double fd, double closed = NAN) {
  double rel = std::fabs(engine - fd) / std::max(1.0, std::fabs(fd));
  worst_rel = std::max(worst_rel, rel);
  std::printf("  %-14s engine % .10e   finite diff % .10e   rel.err %.1e", name, engine, fd, rel);
  if (!std::isnan(closed)) std::printf("   closed form % .10e", closed);
  std::printf("\n");
}

}  // namespace

int main(int argc, char** argv) {
  Args args(argc, argv, {{"steps", "20000"}, {"lr", "0.0005"}, {"momentum", "0.9"}},
            "custom_expression: engine gradients of user formulas vs finite differences; Rosenbrock by gradient descent");
  set_num_threads(1);
  Clock clock;

  // ---- 1. Rosenbrock --------------------------------------------------------------------------
  Tensor x = scalar(-1.5), y = scalar(2.0);
  auto rosen = [&] {
    Tensor a = 1.0 - x, b = y - x * x;
    return sum(a * a + 100.0 * b * b);
  };
  std::printf("== Rosenbrock f(x,y) = (1-x)^2 + 100(y-x^2)^2 at (%.2f, %.2f) ==\n", -1.5, 2.0);
  rosen().backward();
  {
    double X = -1.5, Y = 2.0;
    compare("df/dx", x.grad().item(), finite_diff(rosen, x, 0, 1e-6), -2 * (1 - X) - 400 * X * (Y - X * X));
    compare("df/dy", y.grad().item(), finite_diff(rosen, y, 0, 1e-6), 200 * (Y - X * X));
  }
  long steps = args.num("steps");
  optim::SGD gd({x, y}, args.real("lr"), optim::SGDOptions{args.real("momentum"), 0, 0, false});
  std::printf("\ngradient descent (heavy-ball momentum %.2f, lr %g), %ld steps:\n", args.real("momentum"), args.real("lr"), steps);
  Progress bar{size_t(steps)};
  Clock gd_clock;
  double f = 0;
  for (long s = 1; s <= steps; ++s) {
    gd.zero_grad();
    Tensor loss = rosen();
    loss.backward();
    gd.step();
    f = loss.item();
    if (s == 1 || s % (steps / 10) == 0) {
      bar.clear();
      std::printf("  step %6ld  f %.6e  (x, y) = (%.6f, %.6f)  %.0f steps/s\n", s, f, x.item(), y.item(),
                  double(s) / gd_clock.seconds());
    }
    bar.update(size_t(s), "f " + fixed(f, 6));
  }
  bar.clear();
  {
    NoGradGuard no_grad;
    f = rosen().item();
  }
  std::printf("  reached (%.6f, %.6f), f = %.3e (minimum: (1, 1), f = 0)\n\n", x.item(), y.item(), f);

  // ---- 2. relativistic kinetic energy -------------------------------------------------------------
  const double c = 299792458.0;
  Tensor m = scalar(2.0), v = scalar(0.6 * c);
  auto energy = [&] { return sum(m * (c * c) * (1.0 / sqrt(1.0 - v * v / (c * c)) - 1.0)); };
  std::printf("== E(m, v) = m c^2 (1/sqrt(1 - v^2/c^2) - 1) at m = 2 kg, v = 0.6c: E = %.6e J ==\n", energy().item());
  energy().backward();
  {
    double gamma = 1 / std::sqrt(1 - 0.36);
    compare("dE/dv", v.grad().item(), finite_diff(energy, v, 0, 1.0), 2.0 * 0.6 * c * gamma * gamma * gamma);
    compare("dE/dm", m.grad().item(), finite_diff(energy, m, 0, 1e-6), c * c * (gamma - 1));
  }

  // ---- 3. Lennard-Jones cluster ------------------------------------------------------------------
  const double eps_lj = 1.0, sigma = 1.0;
  std::vector<Tensor> atoms = {from_vector({0.0, 0.0}, Shape{2}, dtype(kFloat64).requires_grad()),
                               from_vector({1.15, 0.1}, Shape{2}, dtype(kFloat64).requires_grad()),
                               from_vector({0.5, 1.02}, Shape{2}, dtype(kFloat64).requires_grad())};
  auto lj = [&] {
    Tensor U = zeros(Shape{}, kFloat64);
    for (size_t i = 0; i < atoms.size(); ++i)
      for (size_t j = i + 1; j < atoms.size(); ++j) {
        Tensor d = atoms[i] - atoms[j];
        Tensor r = sqrt(sum(d * d));
        Tensor s6 = pow(sigma / r, 6.0);
        U = U + 4.0 * eps_lj * (s6 * s6 - s6);
      }
    return U;
  };
  std::printf("\n== Lennard-Jones energy of 3 atoms: U = %.8f; force on each atom = -grad U ==\n", lj().item());
  lj().backward();
  for (size_t a = 0; a < atoms.size(); ++a) {
    std::vector<double> g = atoms[a].grad().to_vector();
    for (size_t k = 0; k < 2; ++k) {
      std::string name = "F" + std::to_string(a) + (k ? ".y" : ".x");
      compare(name.c_str(), -g[k], -finite_diff(lj, atoms[a], k, 1e-6));
    }
  }
  std::vector<double> net(2, 0);
  for (auto& a : atoms)
    for (size_t k = 0; k < 2; ++k) net[k] -= a.grad().to_vector()[k];
  std::printf("  net force (Newton's third law: should be 0): (%.2e, %.2e)\n", net[0], net[1]);

  bool ok = worst_rel < 1e-5 && f < 1e-6;
  std::printf("\nlargest relative difference engine vs finite difference: %.2e\n", worst_rel);
  print_result("custom_expression", {{"rosenbrock_x", fixed(x.item(), 6)}, {"rosenbrock_y", fixed(y.item(), 6)},
                                     {"rosenbrock_f", fixed(f, 10)}, {"max_rel_error", fixed(worst_rel, 10)},
                                     {"seconds", fixed(clock.seconds(), 2)}});
  return ok ? 0 : 1;
}

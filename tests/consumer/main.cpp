// Built against the installed package: d(sum(x·W))/dW with x = [1,2,3], W = ones[3,1] is xᵀ.
#include <iostream>
#include <tapegrad/tapegrad.hpp>

int main() {
  using namespace tapegrad;
  Tensor x = tensor({{1, 2, 3}});
  Tensor W = ones({3, 1}, requires_grad());
  sum(matmul(x, W)).backward();
  auto g = W.grad().to_vector();
  std::cout << "dW = " << g[0] + g[1] + g[2] << "\n";  // 1 + 2 + 3
}

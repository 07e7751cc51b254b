// Built against the installed package: d(sum(x·W))/dW with x = [1,2,3], W = ones[3,1] is xᵀ;
// then one SGD step of an installed nn::Linear, to check the nn/optim headers install too.
#include <iostream>
#include <tapegrad/tapegrad.hpp>

int main() {
  using namespace tapegrad;
  Tensor x = tensor({{1, 2, 3}});
  Tensor W = ones({3, 1}, requires_grad());
  sum(matmul(x, W)).backward();
  auto g = W.grad().to_vector();
  std::cout << "dW = " << g[0] + g[1] + g[2] << "\n";  // 1 + 2 + 3

  auto layer = std::make_shared<nn::Linear>(3, 1);
  optim::SGD sgd(layer->parameters(), 0.01);  // small enough: |x|² + 1 = 15
  double before = mean(layer->forward(x) * layer->forward(x)).item();
  sgd.zero_grad();
  mean(layer->forward(x) * layer->forward(x)).backward();
  sgd.step();
  double after = mean(layer->forward(x) * layer->forward(x)).item();
  std::cout << (after < before ? "sgd ok" : "sgd did not descend") << "\n";
}

// digits: the UCI handwritten digits (1,797 8×8 images, 10 classes) classified by an MLP.
// Data: sklearn/datasets/data/digits.csv (64 pixel values 0..16, then the label, per row), which
// scripts/fetch_digits extracts from Debian's python3-sklearn package into data/.
// Seeded 80/20 split, Adam with a cosine schedule, then the confusion matrix on the test set and
// the trained model saved as .npz (reloaded and re-evaluated to prove the file).
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <numeric>

#include "common.hpp"

using namespace tapegrad;
using namespace examples;

namespace {

struct Dataset {
  std::vector<double> pixels;  // [N,64], scaled to [0,1]
  std::vector<int64_t> labels;
};

Dataset load_csv(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw Error("digits: cannot open '" + path + "' (run scripts/fetch_digits, or pass --data PATH)");
  Dataset d;
  std::string line;
  size_t row = 0;
  while (std::getline(in, line)) {
    ++row;
    if (line.empty()) continue;
    std::vector<double> v;
    std::stringstream ss(line);
    std::string cell;
    while (std::getline(ss, cell, ',')) v.push_back(std::stod(cell));
    if (v.size() != 65) throw Error("digits: row " + std::to_string(row) + " of '" + path + "' has " +
                                    std::to_string(v.size()) + " values, expected 65 (64 pixels + label)");
    for (int j = 0; j < 64; ++j) d.pixels.push_back(v[j] / 16.0);
    double label = v[64];
    if (label < 0 || label > 9 || label != std::floor(label))
      throw Error("digits: row " + std::to_string(row) + " has label " + std::to_string(label));
    d.labels.push_back(static_cast<int64_t>(label));
  }
  return d;
}

std::string default_data_path() {
  for (const std::string& p : std::vector<std::string>{"data/digits.csv", "../data/digits.csv", std::string(TAPEGRAD_SOURCE_DIR) + "/data/digits.csv"})
    if (std::filesystem::exists(p)) return p;
  return std::string(TAPEGRAD_SOURCE_DIR) + "/data/digits.csv";
}

// Rows `idx` of the dataset as tensors.
std::pair<Tensor, Tensor> subset(const Dataset& d, const std::vector<size_t>& idx) {
  std::vector<double> x;
  std::vector<int64_t> y;
  for (size_t i : idx) {
    x.insert(x.end(), d.pixels.begin() + long(i * 64), d.pixels.begin() + long(i * 64 + 64));
    y.push_back(d.labels[i]);
  }
  return {from_vector(x, Shape{idx.size(), 64}), from_indices(y, Shape{idx.size()})};
}

std::vector<int64_t> labels_of(const Tensor& y) {
  std::vector<double> v = y.to_vector();
  return {v.begin(), v.end()};
}

}  // namespace

int main(int argc, char** argv) {
  Args args(argc, argv,
            {{"data", ""}, {"epochs", "40"}, {"batch", "32"}, {"lr", "0.002"}, {"hidden", "128"}, {"seed", "42"},
             {"dropout", "0.1"}, {"out", "digits_model.npz"}},
            "digits: an MLP on the UCI handwritten digits (sklearn's digits.csv); seeded 80/20 split");
  set_num_threads(1);
  Clock clock;
  std::string path = args.str("data").empty() ? default_data_path() : args.str("data");
  Dataset data;
  try {
    data = load_csv(path);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 2;
  }
  const size_t N = data.labels.size();
  auto seed = static_cast<uint64_t>(args.num("seed"));

  // Seeded 80/20 split.
  std::vector<size_t> order(N);
  std::iota(order.begin(), order.end(), 0);
  std::mt19937_64 split_rng(seed);
  std::shuffle(order.begin(), order.end(), split_rng);
  size_t n_test = N / 5, n_train = N - n_test;
  std::vector<size_t> train_idx(order.begin(), order.begin() + long(n_train)), test_idx(order.begin() + long(n_train), order.end());
  auto [Xtr, ytr] = subset(data, train_idx);
  auto [Xte, yte] = subset(data, test_idx);
  std::vector<int64_t> ytr_v = labels_of(ytr), yte_v = labels_of(yte);
  std::printf("digits: %zu images from %s: %zu train, %zu test (seed %lu)\n", N, path.c_str(), n_train, n_test,
              (unsigned long)seed);

  Generator gen(seed);
  size_t H = static_cast<size_t>(args.num("hidden"));
  nn::MLP model({64, H, H, 10}, nn::Activation::ReLU, nn::Options(kFloat32).with_gen(&gen), args.real("dropout"));
  std::printf("model (%zu parameters):\n%s", model.num_parameters(), model.str().c_str());
  optim::Adam opt(model.parameters(), args.real("lr"));
  long epochs = args.num("epochs");
  optim::CosineAnnealingLR schedule(opt, epochs);
  const size_t B = static_cast<size_t>(args.num("batch"));

  auto evaluate = [&](nn::Module& m, const Tensor& X) {
    NoGradGuard no_grad;
    m.eval();
    auto p = predict(m(X));
    m.train();
    return p;
  };

  std::mt19937_64 batch_rng(seed + 1);
  std::vector<int64_t> perm(n_train);
  double test_acc = 0, train_acc = 0, epoch_loss = 0;
  Clock train_clock;
  size_t seen = 0;
  for (long e = 1; e <= epochs; ++e) {
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), batch_rng);
    Progress bar((n_train + B - 1) / B);
    double loss_sum = 0;
    size_t correct = 0;
    for (size_t s = 0, k = 0; s < n_train; s += B, ++k) {
      std::vector<int64_t> idx(perm.begin() + long(s), perm.begin() + long(std::min(n_train, s + B)));
      Tensor xb = rows(Xtr, idx), yb = rows(ytr, idx);
      Tensor logits = model(xb);
      Tensor loss = cross_entropy(logits, yb);
      opt.zero_grad();
      loss.backward();
      opt.step();
      loss_sum += loss.item() * double(idx.size());
      auto pred = predict(logits);
      for (size_t i = 0; i < idx.size(); ++i) correct += pred[i] == ytr_v[size_t(idx[i])];
      seen += idx.size();
      bar.update(k + 1, "loss " + fixed(loss.item()));
    }
    bar.clear();
    schedule.step();
    epoch_loss = loss_sum / double(n_train);
    train_acc = double(correct) / double(n_train);
    test_acc = accuracy(evaluate(model, Xte), yte_v);
    std::printf("epoch %3ld  loss %.4f  train accuracy %.4f  test accuracy %.4f  lr %.5f  %.0f examples/s\n", e,
                epoch_loss, train_acc, test_acc, opt.lr(), double(seen) / train_clock.seconds());
  }

  // Confusion matrix on the test set: rows = true digit, columns = predicted digit.
  auto pred = evaluate(model, Xte);
  std::vector<std::vector<int>> cm(10, std::vector<int>(10, 0));
  for (size_t i = 0; i < pred.size(); ++i) ++cm[size_t(yte_v[i])][size_t(pred[i])];
  std::printf("\nconfusion matrix (test set; rows: true digit, columns: predicted)\n      ");
  for (int c = 0; c < 10; ++c) std::printf("%4d", c);
  std::printf("\n");
  for (int r = 0; r < 10; ++r) {
    std::printf("  %d : ", r);
    for (int c = 0; c < 10; ++c) std::printf("%4d", cm[r][c]);
    std::printf("\n");
  }

  // Save, reload into a fresh model, and check it predicts the same.
  std::string out = args.str("out");
  nn::save(model, out);
  nn::MLP reloaded({64, H, H, 10}, nn::Activation::ReLU, nn::Options(kFloat32), args.real("dropout"));
  nn::load(reloaded, out);
  double reloaded_acc = accuracy(evaluate(reloaded, Xte), yte_v);
  std::printf("\nsaved the model to %s; reloaded, it scores %.4f on the test set\n", out.c_str(), reloaded_acc);
  std::printf("final: test accuracy %.4f (%zu/%zu), train accuracy %.4f, loss %.4f\n", test_acc,
              size_t(test_acc * double(n_test) + 0.5), n_test, train_acc, epoch_loss);
  print_result("digits", {{"test_accuracy", fixed(test_acc)}, {"train_accuracy", fixed(train_acc)},
                          {"final_loss", fixed(epoch_loss)}, {"reloaded_accuracy", fixed(reloaded_acc)},
                          {"epochs", std::to_string(epochs)}, {"seconds", fixed(clock.seconds(), 2)}});
  return test_acc >= 0.96 && reloaded_acc == test_acc ? 0 : 1;
}

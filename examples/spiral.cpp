// spiral: three interleaved spiral arms (the CS231n toy problem) classified by a small MLP.
// Writes spiral_regions.svg (decision regions with the data) and spiral_loss.svg (loss curve).
#include <algorithm>
#include <cmath>
#include <fstream>

#include "common.hpp"

using namespace tapegrad;
using namespace examples;

namespace {

const char* kColors[3] = {"#1f77b4", "#d62728", "#2ca02c"};
const char* kLight[3] = {"#c6dbef", "#fcbba1", "#c7e9c0"};

struct Data {
  std::vector<double> xy;  // [N,2]
  std::vector<int64_t> label;
};

// Class k: radius r ∈ [0,1], angle 4k..4(k+1) plus Gaussian noise.
Data make_spiral(size_t per_class, double noise, Generator& gen) {
  Data d;
  std::normal_distribution<double> n01(0.0, 1.0);
  for (int64_t k = 0; k < 3; ++k)
    for (size_t i = 0; i < per_class; ++i) {
      double r = double(i) / double(per_class - 1);
      double t = 4.0 * double(k) + 4.0 * r + noise * n01(gen.engine());
      d.xy.push_back(r * std::sin(t));
      d.xy.push_back(r * std::cos(t));
      d.label.push_back(k);
    }
  return d;
}

void write_regions_svg(const std::string& path, nn::Module& model, const Data& d) {
  const int G = 150, S = 600;  // grid cells per side, picture size in pixels
  const double lo = -1.15, hi = 1.15;
  std::vector<double> grid;
  for (int r = 0; r < G; ++r)
    for (int c = 0; c < G; ++c) {
      grid.push_back(lo + (hi - lo) * (c + 0.5) / G);
      grid.push_back(hi - (hi - lo) * (r + 0.5) / G);
    }
  std::vector<int64_t> cls;
  {
    NoGradGuard no_grad;
    cls = predict(model(from_vector(grid, Shape{size_t(G * G), 2})));
  }
  std::ofstream svg(path);
  double cell = double(S) / G;
  svg << "<svg xmlns='http://www.w3.org/2000/svg' width='" << S << "' height='" << S + 30 << "' font-family='sans-serif'>\n";
  for (int r = 0; r < G; ++r)
    for (int c = 0; c < G;) {  // one rectangle per run of equal predictions along a row
      int end = c;
      while (end < G && cls[r * G + end] == cls[r * G + c]) ++end;
      svg << "<rect x='" << c * cell << "' y='" << r * cell << "' width='" << (end - c) * cell + 0.5 << "' height='"
          << cell + 0.5 << "' fill='" << kLight[cls[r * G + c]] << "'/>\n";
      c = end;
    }
  auto px = [&](double v) { return (v - lo) / (hi - lo) * S; };
  for (size_t i = 0; i < d.label.size(); ++i)
    svg << "<circle cx='" << px(d.xy[2 * i]) << "' cy='" << S - px(d.xy[2 * i + 1]) << "' r='3.5' fill='"
        << kColors[d.label[i]] << "' stroke='black' stroke-width='0.5'/>\n";
  svg << "<text x='8' y='" << S + 20 << "' font-size='14'>spiral: decision regions of the trained MLP and the "
      << d.label.size() << " training points</text>\n</svg>\n";
}

void write_loss_svg(const std::string& path, const std::vector<double>& loss) {
  const double W = 600, H = 300, L = 50, B = 30;
  double top = *std::max_element(loss.begin(), loss.end());
  std::ofstream svg(path);
  svg << "<svg xmlns='http://www.w3.org/2000/svg' width='" << W + 20 << "' height='" << H + 50 << "' font-family='sans-serif'>\n";
  svg << "<line x1='" << L << "' y1='" << H << "' x2='" << W << "' y2='" << H << "' stroke='black'/>\n";
  svg << "<line x1='" << L << "' y1='10' x2='" << L << "' y2='" << H << "' stroke='black'/>\n";
  svg << "<polyline fill='none' stroke='#1f77b4' stroke-width='1.5' points='";
  for (size_t i = 0; i < loss.size(); ++i)
    svg << L + (W - L) * double(i) / double(std::max<size_t>(loss.size() - 1, 1)) << ","
        << H - (H - 10) * loss[i] / top << " ";
  svg << "'/>\n";
  svg << "<text x='" << L - 5 << "' y='15' text-anchor='end' font-size='12'>" << fixed(top, 2) << "</text>\n";
  svg << "<text x='" << L - 5 << "' y='" << H << "' text-anchor='end' font-size='12'>0</text>\n";
  svg << "<text x='" << W << "' y='" << H + B - 10 << "' text-anchor='end' font-size='12'>" << loss.size() << " epochs</text>\n";
  svg << "<text x='" << L << "' y='" << H + B + 12 << "' font-size='14'>spiral: training loss (cross-entropy) per epoch</text>\n</svg>\n";
}

}  // namespace

int main(int argc, char** argv) {
  Args args(argc, argv, {{"epochs", "1000"}, {"lr", "0.01"}, {"hidden", "64"}, {"seed", "0"}, {"points", "100"},
                         {"out-dir", "."}},
            "spiral: a 3-class spiral classifier (MLP, Adam, full batch); writes spiral_regions.svg and spiral_loss.svg");
  set_num_threads(1);  // tiny matrices: threads only add overhead
  Clock clock;
  Generator gen(static_cast<uint64_t>(args.num("seed")));
  Data data = make_spiral(static_cast<size_t>(args.num("points")), 0.2, gen);
  size_t N = data.label.size();
  Tensor X = from_vector(data.xy, Shape{N, 2});
  Tensor y = from_indices(data.label, Shape{N});

  size_t H = static_cast<size_t>(args.num("hidden"));
  nn::MLP model({2, H, H, 3}, nn::Activation::ReLU, nn::Options(kFloat32).with_gen(&gen));
  optim::Adam opt(model.parameters(), args.real("lr"));
  std::printf("spiral: %zu points, 3 classes, model %s", N, model.str().c_str());

  long epochs = args.num("epochs");
  std::vector<double> losses;
  Progress bar(static_cast<size_t>(epochs));
  double acc = 0;
  Clock train_clock;
  for (long e = 1; e <= epochs; ++e) {
    Tensor logits = model(X);
    Tensor loss = cross_entropy(logits, y);
    opt.zero_grad();
    loss.backward();
    opt.step();
    losses.push_back(loss.item());
    if (e % 100 == 0 || e == epochs || e == 1) {
      acc = accuracy(predict(logits), data.label);
      bar.clear();
      std::printf("epoch %5ld  loss %.4f  train accuracy %.4f  %.0f examples/s\n", e, losses.back(), acc,
                  double(N) * double(e) / train_clock.seconds());
    }
    bar.update(static_cast<size_t>(e), "loss " + fixed(losses.back()));
  }
  bar.clear();
  {
    NoGradGuard no_grad;
    acc = accuracy(predict(model(X)), data.label);
  }
  std::string dir = args.str("out-dir");
  write_regions_svg(dir + "/spiral_regions.svg", model, data);
  write_loss_svg(dir + "/spiral_loss.svg", losses);
  std::printf("final: train accuracy %.4f, loss %.4f; wrote %s/spiral_regions.svg and %s/spiral_loss.svg\n", acc,
              losses.back(), dir.c_str(), dir.c_str());
  print_result("spiral", {{"train_accuracy", fixed(acc)}, {"final_loss", fixed(losses.back())},
                          {"epochs", std::to_string(epochs)}, {"seconds", fixed(clock.seconds(), 2)}});
  return acc >= 0.98 ? 0 : 1;
}

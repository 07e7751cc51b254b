// char_rnn: a character-level LSTM language model on a text every Debian machine has (the GPL-3
// licence), trained with truncated backpropagation through time over variable-length sequences:
// the text is cut into `batch` parallel streams; each step unrolls the LSTM over T characters
// (T drawn around --bptt, as in AWD-LSTM), backpropagates through those T steps only, and
// carries the state (detached) into the next piece. A sample of generated text is printed after
// every epoch.
#include <algorithm>
#include <cmath>
#include <fstream>
#include <iterator>
#include <set>

#include "common.hpp"

using namespace tapegrad;
using namespace examples;

namespace {

struct CharModel : nn::Module {
  std::shared_ptr<nn::Embedding> embed;
  std::shared_ptr<nn::LSTMCell> cell;
  std::shared_ptr<nn::Linear> head;
  CharModel(size_t vocab, size_t E, size_t H, Generator* gen) {
    nn::Options opt = nn::Options(kFloat32).with_gen(gen);
    embed = register_module("embed", std::make_shared<nn::Embedding>(vocab, E, opt));
    cell = register_module("cell", std::make_shared<nn::LSTMCell>(E, H, opt));
    head = register_module("head", std::make_shared<nn::Linear>(H, vocab, opt));
  }
  std::string name() const override { return "CharModel"; }
};

// Draws an index from softmax(logits / temperature).
size_t sample(const std::vector<double>& logits, double temperature, std::mt19937_64& rng) {
  double top = *std::max_element(logits.begin(), logits.end());
  std::vector<double> p(logits.size());
  for (size_t i = 0; i < p.size(); ++i) p[i] = std::exp((logits[i] - top) / temperature);
  std::discrete_distribution<size_t> pick(p.begin(), p.end());
  return pick(rng);
}

std::string generate(CharModel& m, const std::string& vocab, const std::vector<int64_t>& code, const std::string& prime,
                     size_t n, double temperature, std::mt19937_64& rng) {
  NoGradGuard no_grad;
  auto state = m.cell->zero_state(1);
  std::string out = prime;
  Tensor logits;
  auto feed = [&](char ch) {
    Tensor x = m.embed->forward(from_indices({code[static_cast<unsigned char>(ch)]}, Shape{1}));
    state = m.cell->forward(x, state);
    logits = m.head->forward(state.h);
  };
  for (char ch : prime) feed(ch);
  for (size_t i = 0; i < n; ++i) {
    char ch = vocab[sample(logits.to_vector(), temperature, rng)];
    out.push_back(ch);
    feed(ch);
  }
  return out;
}

std::string one_line(std::string s) {
  std::replace(s.begin(), s.end(), '\n', ' ');
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  Args args(argc, argv,
            {{"text", "/usr/share/common-licenses/GPL-3"}, {"epochs", "12"}, {"batch", "32"}, {"bptt", "32"},
             {"hidden", "192"}, {"embed", "32"}, {"lr", "0.004"}, {"clip", "5"}, {"seed", "1"}, {"sample", "160"},
             {"max-seconds", "100"}},
            "char_rnn: a character-level LSTM trained with truncated BPTT on a text file");
  set_num_threads(1);
  Clock clock;
  std::ifstream in(args.str("text"), std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "char_rnn: cannot open '%s' (pass --text PATH)\n", args.str("text").c_str());
    return 2;
  }
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::set<char> chars(text.begin(), text.end());
  std::string vocab(chars.begin(), chars.end());
  std::vector<int64_t> code(256, 0);
  for (size_t i = 0; i < vocab.size(); ++i) code[static_cast<unsigned char>(vocab[i])] = int64_t(i);
  const size_t V = vocab.size(), B = size_t(args.num("batch")), L = text.size() / B;  // L: stream length
  if (L < 4) {
    std::fprintf(stderr, "char_rnn: text too short\n");
    return 2;
  }
  // stream b covers text[b·L, (b+1)·L); column t of the batch is character t of each stream.
  auto column = [&](size_t t) {
    std::vector<int64_t> v(B);
    for (size_t b = 0; b < B; ++b) v[b] = code[static_cast<unsigned char>(text[b * L + t])];
    return v;
  };

  auto seed = static_cast<uint64_t>(args.num("seed"));
  Generator gen(seed);
  std::mt19937_64 rng(seed);
  CharModel model(V, size_t(args.num("embed")), size_t(args.num("hidden")), &gen);
  optim::Adam opt(model.parameters(), args.real("lr"));
  long epochs = args.num("epochs");
  optim::CosineAnnealingLR schedule(opt, epochs, args.real("lr") / 10);
  std::printf("char_rnn: %s, %zu characters, vocabulary %zu, %zu streams of %zu; model %zu parameters:\n%s",
              args.str("text").c_str(), text.size(), V, B, L, model.num_parameters(), model.str().c_str());

  const double bptt = double(args.num("bptt"));
  std::normal_distribution<double> jitter(0.0, 5.0);
  std::uniform_real_distribution<double> u01(0.0, 1.0);
  double first_loss = 0, last_loss = 0, last_acc = 0;
  size_t chars_seen = 0;
  Clock train_clock;
  long done_epochs = 0;
  for (long e = 1; e <= epochs; ++e) {
    auto state = model.cell->zero_state(B);
    Progress bar(L - 1);
    double loss_sum = 0;
    size_t n_sum = 0, correct = 0, pieces = 0, min_T = 1 << 30, max_T = 0;
    for (size_t pos = 0; pos + 1 < L;) {
      // Variable length: mostly around bptt, sometimes half of it (AWD-LSTM's scheme).
      double base = u01(rng) < 0.95 ? bptt : bptt / 2;
      size_t T = size_t(std::max(5.0, std::round(base + jitter(rng))));
      T = std::min(T, L - 1 - pos);
      std::vector<Tensor> hs;
      std::vector<int64_t> targets;
      for (size_t t = 0; t < T; ++t) {
        std::vector<int64_t> col = column(pos + t);
        Tensor x = model.embed->forward(from_indices(col, Shape{B}));
        state = model.cell->forward(x, state);
        hs.push_back(state.h);
        std::vector<int64_t> next = column(pos + t + 1);
        targets.insert(targets.end(), next.begin(), next.end());
      }
      Tensor logits = model.head->forward(cat(hs, 0));  // [T·B, V], time-major like targets
      Tensor loss = cross_entropy(logits, from_indices(targets, Shape{targets.size()}));
      opt.zero_grad();
      loss.backward();
      optim::clip_grad_norm(model.parameters(), args.real("clip"));
      opt.step();
      // Truncate: the next piece starts from this state's values, not its history.
      state = {state.h.detach(), state.c.detach()};
      auto pred = predict(logits);
      for (size_t i = 0; i < targets.size(); ++i) correct += pred[i] == targets[i];
      loss_sum += loss.item() * double(targets.size());
      n_sum += targets.size();
      pos += T;
      ++pieces;
      min_T = std::min(min_T, T), max_T = std::max(max_T, T);
      chars_seen += targets.size();
      bar.update(pos, "loss " + fixed(loss.item()));
    }
    bar.clear();
    schedule.step();
    last_loss = loss_sum / double(n_sum);
    last_acc = double(correct) / double(n_sum);
    if (e == 1) first_loss = last_loss;
    done_epochs = e;
    std::printf("epoch %2ld  loss %.4f nats/char (%.3f bits)  next-char accuracy %.4f  %zu pieces of %zu..%zu steps  "
                "%.0f chars/s\n",
                e, last_loss, last_loss / std::log(2.0), last_acc, pieces, min_T, max_T,
                double(chars_seen) / train_clock.seconds());
    std::printf("  sample: \"%s\"\n", one_line(generate(model, vocab, code, "The ", size_t(args.num("sample")), 0.7, rng)).c_str());
    if (clock.seconds() > args.real("max-seconds") && e < epochs) {
      std::printf("stopping early: the time budget of %.0f s is spent\n", args.real("max-seconds"));
      break;
    }
  }
  std::printf("final: loss %.4f nats/char after %ld epochs (first epoch %.4f; uniform guess %.4f)\n", last_loss,
              done_epochs, first_loss, std::log(double(V)));
  print_result("char_rnn", {{"first_epoch_loss", fixed(first_loss)}, {"final_loss", fixed(last_loss)},
                            {"final_accuracy", fixed(last_acc)}, {"epochs", std::to_string(done_epochs)},
                            {"seconds", fixed(clock.seconds(), 2)}});
  return last_loss < first_loss ? 0 : 1;
}

// serialize: .npy/.npz round trips, the zip structure, and failures that must leave the module as it was.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <unistd.h>

#include <nn/nn.hpp>
#include "helpers.hpp"

using namespace tapegrad;
namespace nn = tapegrad::nn;
namespace fs = std::filesystem;

namespace {

std::string tmp_path(const std::string& name) {
  fs::path dir = fs::temp_directory_path() / ("tapegrad_serialize_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  return (dir / name).string();
}

std::vector<std::vector<double>> snapshot(const nn::Module& m) {
  std::vector<std::vector<double>> v;
  for (auto& [n, p] : m.named_parameters()) v.push_back(p.to_vector());
  return v;
}

std::vector<char> bytes_of(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

}  // namespace

TEST_CASE("serialize: crc32 matches the standard check value") {
  CHECK(nn::crc32("123456789", 9) == 0xCBF43926u);
  CHECK(nn::crc32("", 0) == 0u);
}

TEST_CASE("serialize: .npy round trip keeps dtype, shape and values; the header is NumPy's") {
  std::string path = tmp_path("t.npy");
  Tensor t = tensor({{1.5, -2}, {3, 4.25}, {0, 1}}, kFloat64);
  nn::save_npy(t, path);
  auto b = bytes_of(path);
  std::string head(b.begin(), b.end() - 6 * 8);
  CHECK(head.substr(1, 5) == "NUMPY");
  CHECK(head.find("{'descr': '<f8', 'fortran_order': False, 'shape': (3, 2), }") != std::string::npos);
  CHECK(head.size() % 64 == 0);  // data starts at a multiple of 64 bytes, as NumPy writes it
  CHECK(head.back() == '\n');
  Tensor u = nn::load_npy(path);
  CHECK(u.dtype() == kFloat64);
  CHECK(u.shape() == Shape{3, 2});
  check_values(u, t.to_vector(), 1e-12);

  Tensor v = from_vector({1, 2, 3}, Shape{3}, kFloat32);
  nn::save_npy(v, path);
  CHECK(std::string(bytes_of(path).data(), 128).find("'shape': (3,)") != std::string::npos);
  Tensor i = from_indices({7, -1}, Shape{2});
  nn::save_npy(i, path);
  Tensor j = nn::load_npy(path);
  CHECK(j.dtype() == kInt64);
  check_values(j, {7, -1}, 1e-12);
  Tensor s = scalar_tensor(2.5, kFloat64);
  nn::save_npy(s, path);
  CHECK(nn::load_npy(path).shape() == Shape{});
}

TEST_CASE("serialize: a .npy header promising more data than the file holds is refused before allocating") {
  std::string path = tmp_path("huge.npy");
  std::string header = "{'descr': '<f8', 'fortran_order': False, 'shape': (4000000000, 4000000000), }";
  header.append(64 - (10 + header.size() + 1) % 64, ' ');
  header.push_back('\n');
  std::string file = std::string("\x93NUMPY\x01\x00", 8) + char(header.size() & 0xFF) + char(header.size() >> 8) + header + "12345678";
  std::ofstream(path, std::ios::binary).write(file.data(), static_cast<std::streamsize>(file.size()));
  CHECK_THROWS_WITH_AS(nn::load_npy(path), doctest::Contains("needs more"), Error);
  Tensor empty_rows = zeros(Shape{0, 3}, kFloat32);
  nn::save_npy(empty_rows, path);
  CHECK(nn::load_npy(path).shape() == Shape{0, 3});
}

TEST_CASE("serialize: save→load .npz round trip into a freshly initialised model") {
  std::string path = tmp_path("mlp.npz");
  Generator g1(1), g2(2);
  nn::MLP a({4, 8, 3}, nn::Activation::ReLU, nn::Options(kFloat32).with_gen(&g1));
  nn::MLP b({4, 8, 3}, nn::Activation::ReLU, nn::Options(kFloat32).with_gen(&g2));
  CHECK(snapshot(a) != snapshot(b));
  nn::save(a, path);
  nn::load(b, path);
  CHECK(snapshot(a) == snapshot(b));
  Tensor x = randn(Shape{2, 4});
  check_values(b(x), a(x).to_vector(), 1e-12);

  // The archive holds one stored entry per parameter, named by path, with valid CRCs.
  auto entries = nn::read_npz(path);
  REQUIRE(entries.size() == 4);
  CHECK(entries[0].first == "layers.0.W");
  CHECK(entries[3].first == "layers.2.b");
  auto raw = bytes_of(path);
  std::string s(raw.begin(), raw.end());
  CHECK(s.find("layers.0.W.npy") != std::string::npos);
  CHECK(s.substr(0, 4) == std::string("PK\x03\x04", 4));
}

TEST_CASE("serialize: load fails with a clear error and leaves the module unchanged") {
  std::string path = tmp_path("base.npz");
  Generator gen(5);
  nn::MLP saved({3, 5, 2}, nn::Activation::Tanh, nn::Options(kFloat32).with_gen(&gen));
  nn::save(saved, path);
  nn::MLP target({3, 5, 2}, nn::Activation::Tanh, nn::Options(kFloat32).with_gen(&gen));
  const auto before = snapshot(target);

  SUBCASE("wrong shape") {
    nn::MLP other({3, 6, 2});
    nn::save(other, path);
    CHECK_THROWS_WITH_AS(nn::load(target, path), doctest::Contains("'layers.0.W' has shape [3,6]"), Error);
  }
  SUBCASE("missing name") {
    auto entries = nn::read_npz(path);
    entries.pop_back();
    nn::write_npz(path, entries);
    CHECK_THROWS_WITH_AS(nn::load(target, path), doctest::Contains("no parameter 'layers.2.b'"), Error);
  }
  SUBCASE("extra / wrong name") {
    auto entries = nn::read_npz(path);
    entries[1].first = "layers.0.bias";
    nn::write_npz(path, entries);
    CHECK_THROWS_WITH_AS(nn::load(target, path), doctest::Contains("'layers.0.b'"), Error);
  }
  SUBCASE("wrong dtype") {
    nn::MLP wide({3, 5, 2}, nn::Activation::Tanh, kFloat64);
    nn::save(wide, path);
    CHECK_THROWS_WITH_AS(nn::load(target, path), doctest::Contains("dtype float64"), Error);
  }
  SUBCASE("truncated file, at every length") {
    auto full = bytes_of(path);
    for (size_t len : {size_t(0), size_t(10), full.size() / 3, full.size() / 2, full.size() - 30, full.size() - 1}) {
      {
        std::ofstream out(path, std::ios::binary | std::ios::trunc);
        out.write(full.data(), static_cast<std::streamsize>(len));
      }
      INFO("length " << len);
      CHECK_THROWS_AS(nn::load(target, path), Error);
    }
  }
  SUBCASE("corrupted byte (CRC)") {
    auto full = bytes_of(path);
    full[120] ^= 0x55;  // inside the first entry's data
    std::ofstream(path, std::ios::binary).write(full.data(), static_cast<std::streamsize>(full.size()));
    CHECK_THROWS_AS(nn::load(target, path), Error);
  }
  SUBCASE("missing file") {
    CHECK_THROWS_WITH_AS(nn::load(target, tmp_path("nope.npz")), doctest::Contains("cannot open"), Error);
  }
  CHECK(snapshot(target) == before);
}

#pragma once
// Shape and Dtype: the two facts every op checks before it computes anything.
#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <ostream>
#include <string>
#include <vector>

#include "error.hpp"

namespace tapegrad {

enum class Dtype : uint8_t { f32, f64, i64 };
inline constexpr Dtype kFloat32 = Dtype::f32;
inline constexpr Dtype kFloat64 = Dtype::f64;
inline constexpr Dtype kInt64 = Dtype::i64;  // indices and class labels; not differentiable

const char* dtype_name(Dtype d);
size_t dtype_size(Dtype d);
inline std::ostream& operator<<(std::ostream& os, Dtype d) { return os << dtype_name(d); }

// A fixed-capacity list of extents. Inline storage keeps a node small (no heap allocation per
// tensor), which is what lets a million-op chain fit in a few hundred bytes per op.
class Shape {
 public:
  static constexpr size_t kMaxRank = 6;

  Shape() = default;
  Shape(std::initializer_list<size_t> dims) : Shape(dims.begin(), dims.end()) {}
  explicit Shape(const std::vector<size_t>& dims) : Shape(dims.begin(), dims.end()) {}
  template <class It>
  Shape(It first, It last) {
    for (; first != last; ++first) push_back(static_cast<size_t>(*first));
  }

  size_t rank() const { return rank_; }
  size_t size() const { return rank_; }  // so Shape works as an xtensor shape container
  bool empty() const { return rank_ == 0; }
  size_t operator[](size_t i) const { return d_[i]; }
  size_t& operator[](size_t i) { return d_[i]; }
  const size_t* begin() const { return d_.data(); }
  const size_t* end() const { return d_.data() + rank_; }
  size_t* begin() { return d_.data(); }
  size_t* end() { return d_.data() + rank_; }
  size_t back() const { return d_[rank_ - 1]; }
  void push_back(size_t n) {
    if (rank_ == kMaxRank) fail("tensors have at most ", kMaxRank, " dimensions");
    d_[rank_++] = n;
  }
  void insert(size_t pos, size_t n);
  void erase(size_t pos);
  size_t numel() const {
    size_t n = 1;
    for (size_t i = 0; i < rank_; ++i) n *= d_[i];
    return n;
  }
  std::vector<size_t> vec() const { return {begin(), end()}; }
  std::string str() const;  // "[2,3]"

  friend bool operator==(const Shape& a, const Shape& b) {
    if (a.rank_ != b.rank_) return false;
    for (size_t i = 0; i < a.rank_; ++i)
      if (a.d_[i] != b.d_[i]) return false;
    return true;
  }
  friend std::ostream& operator<<(std::ostream& os, const Shape& s) { return os << s.str(); }

 private:
  std::array<size_t, kMaxRank> d_{};
  uint8_t rank_ = 0;
};

// Turns a possibly negative dim (-1 = last) into an index in [0, rank); names the op on error.
size_t normalize_dim(const char* op, int64_t dim, size_t rank);

}  // namespace tapegrad

#pragma once
// An intrusive reference-counted pointer: one word per handle, one allocation per object.
// T provides `std::atomic<uint32_t> refs` and `static void destroy(T*)`.
#include <atomic>
#include <cstdint>
#include <utility>

namespace tapegrad {

template <class T>
class Ref {
 public:
  Ref() = default;
  // Adopts a fresh object whose count is already 1.
  static Ref adopt(T* p) {
    Ref r;
    r.p_ = p;
    return r;
  }
  Ref(const Ref& o) : p_(o.p_) { retain(); }
  Ref(Ref&& o) noexcept : p_(std::exchange(o.p_, nullptr)) {}
  Ref& operator=(const Ref& o) {
    Ref(o).swap(*this);
    return *this;
  }
  Ref& operator=(Ref&& o) noexcept {
    Ref(std::move(o)).swap(*this);
    return *this;
  }
  ~Ref() { release(); }

  T* get() const { return p_; }
  T* operator->() const { return p_; }
  T& operator*() const { return *p_; }
  explicit operator bool() const { return p_ != nullptr; }
  void reset() { Ref().swap(*this); }
  void swap(Ref& o) noexcept { std::swap(p_, o.p_); }
  uint32_t use_count() const { return p_ ? p_->refs.load(std::memory_order_relaxed) : 0; }
  // Makes a new handle to an object already owned elsewhere.
  static Ref share(T* p) {
    Ref r;
    r.p_ = p;
    r.retain();
    return r;
  }
  friend bool operator==(const Ref& a, const Ref& b) { return a.p_ == b.p_; }

 private:
  void retain() {
    if (p_) p_->refs.fetch_add(1, std::memory_order_relaxed);
  }
  void release() {
    if (p_ && p_->refs.fetch_sub(1, std::memory_order_acq_rel) == 1) T::destroy(p_);
    p_ = nullptr;
  }
  T* p_ = nullptr;
};

}  // namespace tapegrad

#pragma once
// Where user code called an op, for anomaly-mode errors ("... created at train.cpp:42 in main").
//
// Every named op takes a last parameter `CallSite site = {}`. A default argument is evaluated at
// the caller, so std::source_location::current() inside it is the user's line. The op's body opens
// a `SiteScope` on it; while a scope is open on the thread, inner scopes (a composite op calling
// other ops, or an operator calling add) keep the outer site, so nodes made anywhere inside report
// the user's line rather than a line of the library. Operators cannot take an extra parameter;
// their Tensor operand is an `Operand`, converted implicitly at the caller with its location.
//
// Compilers without std::source_location (clang 14 with libstdc++ 12) get an empty site: the
// errors then give only the op's sequence number.
#include <version>
#if defined(__cpp_lib_source_location)
#include <source_location>
#endif

namespace tapegrad {

class Tensor;

class CallSite {
 public:
#if defined(__cpp_lib_source_location)
  CallSite(std::source_location loc = std::source_location::current()) noexcept
      : file_(loc.file_name()), function_(loc.function_name()), line_(loc.line()) {}
#else
  CallSite() noexcept = default;
#endif
  bool known() const { return line_ != 0; }
  const char* file() const { return file_; }
  const char* function() const { return function_; }
  unsigned line() const { return line_; }
  // The site of the outermost SiteScope open on this thread; unknown() when none is open.
  static CallSite current();
  static constexpr CallSite unknown() { return CallSite(Unknown{}); }

 private:
  struct Unknown {};
  constexpr explicit CallSite(Unknown) {}
  const char* file_ = nullptr;  // static strings: a CallSite may be kept for as long as wanted
  const char* function_ = nullptr;
  unsigned line_ = 0;
};

// While alive, CallSite::current() is `site`, unless an outer scope on this thread already set one.
class SiteScope {
 public:
  explicit SiteScope(const CallSite& site) noexcept {
    if (depth_++ == 0) current_ = site;
  }
  ~SiteScope() { --depth_; }
  SiteScope(const SiteScope&) = delete;
  SiteScope& operator=(const SiteScope&) = delete;

 private:
  friend class CallSite;
  static inline thread_local constinit unsigned depth_ = 0;
  static inline thread_local constinit CallSite current_ = CallSite::unknown();
};

inline CallSite CallSite::current() { return SiteScope::depth_ > 0 ? SiteScope::current_ : unknown(); }

// An operator's Tensor operand, carrying the operator's call site.
struct Operand {
  Operand(const Tensor& t, CallSite site = {}) noexcept : tensor(t), site(site) {}
  const Tensor& tensor;
  CallSite site;
};

}  // namespace tapegrad

#pragma once
// The one exception type tapegrad throws. Messages name the op and the shapes involved.
#include <sstream>
#include <stdexcept>
#include <string>

namespace tapegrad {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// fail("matmul: shapes ", a, " and ", b, " do not align") — streams every part into one message.
template <class... Parts>
[[noreturn]] void fail(const Parts&... parts) {
  std::ostringstream os;
  (os << ... << parts);
  throw Error(os.str());
}

}  // namespace tapegrad

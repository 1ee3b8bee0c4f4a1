// Errors in anvil.
//
// Expected failures (bad file, bad flag, peer gone, timeout) are thrown as anvil::Error,
// whose message always names the thing at fault: a file, a key, a tensor, a rank. Callers
// at process or service boundaries catch it and turn it into an exit code, an HTTP status,
// a caf::error or a grpc::Status. Broken invariants are not errors: ANVIL_CHECK aborts.
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace anvil {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

// Throws anvil::Error with a formatted message.
template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
  throw Error(fmt::format(format, std::forward<Args>(args)...));
}

namespace detail {
[[noreturn]] void check_failed(const char* file, int line, const char* condition,
                               const std::string& message);
}  // namespace detail

}  // namespace anvil

// Aborts the process with file:line, the condition and an optional formatted message.
// For invariants of anvil's own code only; never for user input.
#define ANVIL_CHECK(cond, ...)                                                                 \
  do {                                                                                         \
    if (!(cond)) [[unlikely]] {                                                                \
      ::anvil::detail::check_failed(__FILE__, __LINE__, #cond, ::fmt::format("" __VA_ARGS__)); \
    }                                                                                          \
  } while (0)

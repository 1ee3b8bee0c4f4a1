// The message of the anvil::Error that `f` throws, or "" when it throws none: unit tests
// check that bad input is refused with a message naming the file, key or field.
#pragma once

#include "backends/common/error.hpp"

#include <string>

namespace anvil::test_util {

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const anvil::Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace anvil::test_util

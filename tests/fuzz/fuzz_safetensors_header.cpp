// libFuzzer harness: arbitrary bytes as a .safetensors file image. The parser must either
// return a header whose every tensor lies inside the data section, or throw anvil::Error.
#include "backends/common/error.hpp"
#include "backends/models/safetensors_format.hpp"

#include <cstdint>
#include <cstdlib>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    auto h = anvil::models::parse_safetensors_header(data, size, "fuzz.safetensors");
    for (const auto& t : h.tensors) {
      if (t.end > size - h.data_offset || t.begin > t.end) std::abort();
    }
  } catch (const anvil::Error&) {
  }
  return 0;
}

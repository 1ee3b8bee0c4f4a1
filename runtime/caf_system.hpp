// CAF actor-system helpers. Floats never travel in CAF messages (the 0.17 serializer
// breaks on inf/NaN; see ../shared/reference/caf-0.17.md).
#pragma once

#include <cstdint>
#include <string>

namespace anvil::runtime {

// Spawns an echo actor in a fresh local actor system, sends it `text`, and returns its
// reply ("echo:" + text). Used by the link smoke test to prove CAF works beside LibTorch.
std::string caf_echo_roundtrip(const std::string& text);

}  // namespace anvil::runtime

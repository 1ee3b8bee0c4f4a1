// CRC-32C (Castagnoli), the checksum on every weight chunk and shared-memory tensor.
// Uses the SSE4.2 crc32 instruction when the CPU has it, a table otherwise; both give the
// same values (checked against the RFC 3720 test vectors in runtime_test).
#pragma once

#include <cstddef>
#include <cstdint>

namespace anvil::runtime {

// CRC-32C of `size` bytes at `data`, continuing from `crc` (0 for a fresh checksum).
uint32_t crc32c(const void* data, size_t size, uint32_t crc = 0);

}  // namespace anvil::runtime

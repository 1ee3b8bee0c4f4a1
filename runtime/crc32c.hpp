// CRC-32C (Castagnoli), the checksum on every weight chunk and shared-memory tensor.
// Uses the SSE4.2 crc32 instruction when the CPU has it (three interleaved streams joined
// with crc32c_combine on long buffers, so the instruction's latency is hidden), a table
// otherwise; all give the same values (RFC 3720 vectors and a bitwise oracle in runtime_test).
#pragma once

#include <cstddef>
#include <cstdint>

namespace anvil::runtime {

// CRC-32C of `size` bytes at `data`, continuing from `crc` (0 for a fresh checksum).
uint32_t crc32c(const void* data, size_t size, uint32_t crc = 0);

// Copies `size` bytes from `src` to `dst` and returns the CRC-32C of the copied bytes
// (continuing from `crc`): block by block, each block checksummed right after its copy
// while it is still in cache, so memory is streamed through once instead of twice.
uint32_t crc32c_copy(void* dst, const void* src, size_t size, uint32_t crc = 0);

// The CRC-32C of A followed by B, from crc(A), crc(B) and B's length (zlib's
// crc32_combine for the Castagnoli polynomial; O(log len_b), no data touched).
uint32_t crc32c_combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b);

}  // namespace anvil::runtime

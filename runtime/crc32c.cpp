#include "runtime/crc32c.hpp"

#include <array>
#include <cstring>

namespace anvil::runtime {
namespace {

constexpr uint32_t kPoly = 0x82F63B78u;  // reflected Castagnoli polynomial

constexpr std::array<uint32_t, 256> make_table() {
  std::array<uint32_t, 256> t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ kPoly : c >> 1;
    t[i] = c;
  }
  return t;
}
constexpr std::array<uint32_t, 256> kTable = make_table();

uint32_t crc_table(const uint8_t* p, size_t n, uint32_t c) {
  for (size_t i = 0; i < n; ++i) c = kTable[(c ^ p[i]) & 0xFF] ^ (c >> 8);
  return c;
}

// GF(2) polynomial arithmetic modulo the (reflected) Castagnoli polynomial, as zlib does
// it: a * b mod p, where bit 31 stands for x^0.
uint32_t multmodp(uint32_t a, uint32_t b) {
  uint32_t m = 1u << 31, p = 0;
  for (;;) {
    if (a & m) {
      p ^= b;
      if ((a & (m - 1)) == 0) break;
    }
    m >>= 1;
    b = (b & 1) ? (b >> 1) ^ kPoly : b >> 1;
  }
  return p;
}

// x^(2^k) mod p for k = 0..31.
std::array<uint32_t, 32> make_x2n() {
  std::array<uint32_t, 32> t{};
  uint32_t p = 1u << 30;  // x^1
  t[0] = p;
  for (int n = 1; n < 32; ++n) t[n] = p = multmodp(p, p);
  return t;
}
// Function-local, so a checksum taken during another file's static initialisation works.
const std::array<uint32_t, 32>& x2n() {
  static const std::array<uint32_t, 32> table = make_x2n();
  return table;
}

// x^(n * 2^k) mod p.
uint32_t x2nmodp(uint64_t n, unsigned k) {
  uint32_t p = 1u << 31;  // x^0
  while (n) {
    if (n & 1) p = multmodp(x2n()[k & 31], p);
    n >>= 1;
    ++k;
  }
  return p;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) uint32_t crc_hw(const uint8_t* p, size_t n, uint32_t c) {
  uint64_t c64 = c;
  while (n >= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    c64 = __builtin_ia32_crc32di(c64, v);
    p += 8;
    n -= 8;
  }
  c = static_cast<uint32_t>(c64);
  while (n-- > 0) c = __builtin_ia32_crc32qi(c, *p++);
  return c;
}
// Three streams of kLane bytes at a time, each its own dependency chain (the instruction
// has a latency of 3 cycles and a throughput of 1), joined with the combine shift of kLane
// bytes. `c` is the running (inverted) register, as in crc_hw.
constexpr size_t kLane = 8192;
uint32_t lane_shift() {
  static const uint32_t shift = x2nmodp(kLane, 3);
  return shift;
}

__attribute__((target("sse4.2"))) uint32_t crc_hw3(const uint8_t* p, size_t n, uint32_t c) {
  const uint32_t shift = n >= 3 * kLane ? lane_shift() : 0;
  while (n >= 3 * kLane) {
    uint64_t a = c, b = 0xFFFFFFFFu, d = 0xFFFFFFFFu;
    for (size_t i = 0; i < kLane; i += 8) {
      uint64_t va, vb, vd;
      std::memcpy(&va, p + i, 8);
      std::memcpy(&vb, p + kLane + i, 8);
      std::memcpy(&vd, p + 2 * kLane + i, 8);
      a = __builtin_ia32_crc32di(a, va);
      b = __builtin_ia32_crc32di(b, vb);
      d = __builtin_ia32_crc32di(d, vd);
    }
    // Final CRCs of the three lanes, joined: combine(combine(A, B), D).
    uint32_t crc = multmodp(shift, ~static_cast<uint32_t>(a)) ^ ~static_cast<uint32_t>(b);
    crc = multmodp(shift, crc) ^ ~static_cast<uint32_t>(d);
    c = ~crc;
    p += 3 * kLane;
    n -= 3 * kLane;
  }
  return crc_hw(p, n, c);
}
// __builtin_cpu_supports needs __builtin_cpu_init first when it may run before main.
bool have_sse42() {
  static const bool have = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("sse4.2") != 0;
  }();
  return have;
}
#endif

}  // namespace

uint32_t crc32c(const void* data, size_t size, uint32_t crc) {
  const auto* p = static_cast<const uint8_t*>(data);
  uint32_t c = ~crc;
#if defined(__x86_64__)
  if (have_sse42()) return ~crc_hw3(p, size, c);
#endif
  return ~crc_table(p, size, c);
}

uint32_t crc32c_copy(void* dst, const void* src, size_t size, uint32_t crc) {
  constexpr size_t kBlock = 3 * kLane;  // 24 KiB: one interleaved CRC block, L1/L2-sized
  auto* d = static_cast<uint8_t*>(dst);
  const auto* s = static_cast<const uint8_t*>(src);
  while (size > 0) {
    size_t n = size < kBlock ? size : kBlock;
    std::memcpy(d, s, n);
    crc = crc32c(d, n, crc);
    d += n;
    s += n;
    size -= n;
  }
  return crc;
}

uint32_t crc32c_combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b) {
  return multmodp(x2nmodp(len_b, 3), crc_a) ^ crc_b;
}

}  // namespace anvil::runtime

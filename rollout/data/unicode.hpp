// UTF-8 helpers and the GPT-2 byte-level alphabet used by byte-level BPE.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

namespace anvil::data {

// NFC normalisation through utf8proc. Invalid UTF-8 is returned unchanged (byte-level
// BPE handles raw bytes; normalisation only applies to valid text).
std::string nfc(std::string_view text);

// Appends the UTF-8 encoding of code point `cp`.
void append_utf8(std::string& out, uint32_t cp);

// Byte b -> the printable code point that represents it (GPT-2 bytes_to_unicode):
// printable bytes map to themselves, the others to 256 + n in byte order.
const std::array<uint32_t, 256>& byte_to_unicode();

// Byte-level encoding of raw bytes: each byte becomes its alphabet character (UTF-8).
std::string byte_level_encode(std::string_view bytes);

// Inverse of byte_level_encode; characters outside the alphabet are kept as UTF-8.
std::string byte_level_decode(std::string_view text);

}  // namespace anvil::data

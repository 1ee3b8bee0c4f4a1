// The safetensors file format without LibTorch: header parsing and validation, and a
// read-only memory map. Fuzzed (tests/fuzz) and built by clang there, so no torch here.
//
// Layout: 8-byte little-endian u64 N, N bytes of JSON header, then the data section.
// Offsets in the header are relative to the data section (byte 8 + N).
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace anvil::models {

enum class DType {
  BOOL,
  U8,
  I8,
  F8_E5M2,
  F8_E4M3,
  I16,
  U16,
  F16,
  BF16,
  I32,
  U32,
  F32,
  F64,
  I64,
  U64
};

// "F32" -> DType::F32 etc.; unknown names throw anvil::Error naming `context`.
DType dtype_from_string(std::string_view name, const std::string& context);
const char* dtype_name(DType dtype);
size_t dtype_size(DType dtype);

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets into the data section
  uint64_t end = 0;
  uint64_t numel() const;
  uint64_t nbytes() const { return end - begin; }
};

struct SafetensorsHeader {
  std::vector<TensorInfo> tensors;  // in data-section order (by begin offset, then name)
  std::map<std::string, std::string> metadata;
  uint64_t data_offset = 0;  // 8 + N
  const TensorInfo* find(std::string_view name) const;
};

constexpr uint64_t kMaxSafetensorsHeaderBytes = 100'000'000;

// Parses and validates the header of a whole file image `data` of `size` bytes: length
// bounds, well-formed JSON object, entry types, known dtypes, non-negative dims, offsets in
// bounds and non-overlapping, bytes == numel x dtype size, string-only __metadata__. Every
// violation throws anvil::Error naming `file` and the tensor or key.
SafetensorsHeader parse_safetensors_header(const uint8_t* data, size_t size,
                                           const std::string& file);

// The header bytes for `tensors` (offsets must already be set) and `metadata`: the
// 8-byte length followed by JSON padded with spaces to a multiple of 8.
std::string build_safetensors_header(const std::vector<TensorInfo>& tensors,
                                     const std::map<std::string, std::string>& metadata);

// A read-only memory map of a whole file. Move-only; unmapped on destruction.
class MappedFile {
 public:
  explicit MappedFile(const std::filesystem::path& path);  // throws anvil::Error
  ~MappedFile();
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace anvil::models

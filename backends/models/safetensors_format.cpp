#include "backends/models/safetensors_format.hpp"

#include "backends/common/error.hpp"

#include <fcntl.h>
#include <nlohmann/json.hpp>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>

namespace anvil::models {
namespace {

struct DTypeEntry {
  DType dtype;
  const char* name;
  size_t size;
};

constexpr std::array<DTypeEntry, 15> kDTypes = {{
    {DType::BOOL, "BOOL", 1},
    {DType::U8, "U8", 1},
    {DType::I8, "I8", 1},
    {DType::F8_E5M2, "F8_E5M2", 1},
    {DType::F8_E4M3, "F8_E4M3", 1},
    {DType::I16, "I16", 2},
    {DType::U16, "U16", 2},
    {DType::F16, "F16", 2},
    {DType::BF16, "BF16", 2},
    {DType::I32, "I32", 4},
    {DType::U32, "U32", 4},
    {DType::F32, "F32", 4},
    {DType::F64, "F64", 8},
    {DType::I64, "I64", 8},
    {DType::U64, "U64", 8},
}};

const DTypeEntry& entry(DType d) {
  for (const auto& e : kDTypes) {
    if (e.dtype == d) return e;
  }
  ANVIL_CHECK(false, "unknown DType {}", static_cast<int>(d));
  return kDTypes[0];
}

bool mul_overflows(uint64_t a, uint64_t b, uint64_t* out) {
  return __builtin_mul_overflow(a, b, out);
}

}  // namespace

DType dtype_from_string(std::string_view name, const std::string& context) {
  for (const auto& e : kDTypes) {
    if (name == e.name) return e.dtype;
  }
  fail("{}: unknown dtype '{}'", context, name);
}

const char* dtype_name(DType dtype) { return entry(dtype).name; }
size_t dtype_size(DType dtype) { return entry(dtype).size; }

uint64_t TensorInfo::numel() const {
  uint64_t n = 1;
  for (int64_t d : shape) n *= static_cast<uint64_t>(d);
  return n;
}

const TensorInfo* SafetensorsHeader::find(std::string_view name) const {
  for (const auto& t : tensors) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

SafetensorsHeader parse_safetensors_header(const uint8_t* data, size_t size,
                                           const std::string& file) {
  if (size < 8) fail("{}: not a safetensors file ({} bytes, need at least 8)", file, size);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | data[i];  // little-endian
  if (n > kMaxSafetensorsHeaderBytes) {
    fail("{}: header length {} exceeds the 100 MB limit", file, n);
  }
  if (n > size - 8)
    fail("{}: header length {} runs past the end of the file ({} bytes)", file, n, size);
  SafetensorsHeader h;
  h.data_offset = 8 + n;
  const uint64_t data_size = size - h.data_offset;
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(reinterpret_cast<const char*>(data) + 8,
                              reinterpret_cast<const char*>(data) + 8 + n);
  } catch (const nlohmann::json::exception& e) {
    fail("{}: header is not valid JSON: {}", file, e.what());
  }
  if (!j.is_object()) fail("{}: header must be a JSON object", file);
  for (const auto& [key, value] : j.items()) {
    if (key == "__metadata__") {
      if (!value.is_object()) fail("{}: __metadata__ must be an object", file);
      for (const auto& [mk, mv] : value.items()) {
        if (!mv.is_string()) fail("{}: __metadata__ key '{}' must map to a string", file, mk);
        h.metadata[mk] = mv.get<std::string>();
      }
      continue;
    }
    const std::string where = file + ": tensor '" + key + "'";
    if (!value.is_object()) fail("{} must be an object", where);
    if (!value.contains("dtype") || !value["dtype"].is_string())
      fail("{}: missing string 'dtype'", where);
    if (!value.contains("shape") || !value["shape"].is_array())
      fail("{}: missing list 'shape'", where);
    if (!value.contains("data_offsets") || !value["data_offsets"].is_array() ||
        value["data_offsets"].size() != 2) {
      fail("{}: 'data_offsets' must be [begin, end]", where);
    }
    TensorInfo t;
    t.name = key;
    t.dtype = dtype_from_string(value["dtype"].get<std::string>(), where);
    uint64_t numel = 1;
    uint64_t nonzero = 1;  // LibTorch sizes storage from this even when numel is 0
    for (const auto& d : value["shape"]) {
      if (!d.is_number_unsigned()) fail("{}: shape entries must be non-negative integers", where);
      uint64_t dim = d.get<uint64_t>();
      if (dim > static_cast<uint64_t>(INT64_MAX) || mul_overflows(numel, dim, &numel) ||
          mul_overflows(nonzero, std::max<uint64_t>(dim, 1), &nonzero) ||
          nonzero > static_cast<uint64_t>(INT64_MAX)) {
        fail("{}: shape overflows", where);
      }
      t.shape.push_back(static_cast<int64_t>(dim));
    }
    for (const auto& o : value["data_offsets"]) {
      if (!o.is_number_unsigned()) fail("{}: data_offsets must be non-negative integers", where);
    }
    t.begin = value["data_offsets"][0].get<uint64_t>();
    t.end = value["data_offsets"][1].get<uint64_t>();
    if (t.begin > t.end) fail("{}: data_offsets begin {} > end {}", where, t.begin, t.end);
    if (t.end > data_size) {
      fail("{}: data_offsets end {} is past the data section ({} bytes)", where, t.end, data_size);
    }
    uint64_t nbytes = 0;
    if (mul_overflows(numel, dtype_size(t.dtype), &nbytes) || nbytes != t.end - t.begin) {
      fail("{}: {} bytes for shape of {} elements of {} (expected {})", where, t.end - t.begin,
           numel, dtype_name(t.dtype), numel * dtype_size(t.dtype));
    }
    h.tensors.push_back(std::move(t));
  }
  // Data-section order (for our writer and transformers', the order tensors were saved
  // in); adjacent entries are then the only candidates for overlap.
  std::sort(h.tensors.begin(), h.tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
    if (a.begin != b.begin) return a.begin < b.begin;
    if (a.end != b.end) return a.end < b.end;
    return a.name < b.name;
  });
  for (size_t i = 1; i < h.tensors.size(); ++i) {
    if (h.tensors[i].begin < h.tensors[i - 1].end) {
      fail("{}: tensors '{}' and '{}' overlap", file, h.tensors[i - 1].name, h.tensors[i].name);
    }
  }
  return h;
}

std::string build_safetensors_header(const std::vector<TensorInfo>& tensors,
                                     const std::map<std::string, std::string>& metadata) {
  // Insertion order matters for readers that show it; nlohmann::ordered_json keeps it.
  nlohmann::ordered_json j = nlohmann::ordered_json::object();
  if (!metadata.empty()) j["__metadata__"] = metadata;
  for (const auto& t : tensors) {
    j[t.name] = {
        {"dtype", dtype_name(t.dtype)}, {"shape", t.shape}, {"data_offsets", {t.begin, t.end}}};
  }
  std::string body = j.dump();
  while (body.size() % 8 != 0) body.push_back(' ');
  std::string out(8, '\0');
  uint64_t n = body.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + body;
}

MappedFile::MappedFile(const std::filesystem::path& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail("{}: cannot open: {}", path.string(), std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    fail("{}: cannot stat: {}", path.string(), std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    fail("{}: not a regular file", path.string());
  }
  size_ = static_cast<size_t>(st.st_size);
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      int err = errno;
      ::close(fd);
      fail("{}: mmap failed: {}", path.string(), std::strerror(err));
    }
    data_ = static_cast<const uint8_t*>(p);
  }
  ::close(fd);
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(const_cast<uint8_t*>(data_), size_);
}

MappedFile::MappedFile(MappedFile&& o) noexcept
    : path_(std::move(o.path_)), data_(o.data_), size_(o.size_) {
  o.data_ = nullptr;
  o.size_ = 0;
}

MappedFile& MappedFile::operator=(MappedFile&& o) noexcept {
  if (this != &o) {
    if (data_ != nullptr) ::munmap(const_cast<uint8_t*>(data_), size_);
    path_ = std::move(o.path_);
    data_ = o.data_;
    size_ = o.size_;
    o.data_ = nullptr;
    o.size_ = 0;
  }
  return *this;
}

}  // namespace anvil::models

#include "runtime/metrics/tensorboard_sink.hpp"

#include "backends/common/error.hpp"
#include "runtime/crc32c.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <type_traits>

namespace anvil::metrics {
namespace {

// Protobuf wire format: varints, fixed 32/64-bit little-endian, length-delimited fields.
enum Wire : uint32_t { Varint = 0, Fixed64 = 1, Bytes = 2, Fixed32 = 5 };

void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}

void put_key(std::string& out, uint32_t field, Wire wire) { put_varint(out, (field << 3) | wire); }

template <typename T>
void put_le(std::string& out, T v) {
  static_assert(std::is_trivially_copyable_v<T>);
  char bytes[sizeof(T)];
  std::memcpy(bytes, &v, sizeof(T));  // x86-64 and aarch64 are little-endian
  out.append(bytes, sizeof(T));
}

void put_bytes(std::string& out, uint32_t field, const std::string& bytes) {
  put_key(out, field, Bytes);
  put_varint(out, bytes.size());
  out += bytes;
}

void put_double(std::string& out, uint32_t field, double v) {
  put_key(out, field, Fixed64);
  put_le(out, v);
}

std::string event_head(double wall_time, int64_t step) {
  std::string e;
  put_double(e, 1, wall_time);
  if (step != 0) {
    put_key(e, 2, Varint);
    put_varint(e, static_cast<uint64_t>(step));  // int64: two's complement as uint64
  }
  return e;
}

std::string text_value(const std::string& tag, const std::string& text) {
  std::string tensor;  // TensorProto{dtype: DT_STRING (7), tensor_shape: {}, string_val}
  put_key(tensor, 1, Varint);
  put_varint(tensor, 7);
  put_bytes(tensor, 2, "");
  put_bytes(tensor, 8, text);
  std::string plugin;  // PluginData{plugin_name: "text"}
  put_bytes(plugin, 1, "text");
  std::string metadata;  // SummaryMetadata{plugin_data}
  put_bytes(metadata, 1, plugin);
  std::string value;
  put_bytes(value, 1, tag);
  put_bytes(value, 8, tensor);
  put_bytes(value, 9, metadata);
  return value;
}

}  // namespace

uint32_t masked_crc32c(const void* data, size_t size) {
  uint32_t crc = runtime::crc32c(data, size);
  return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}

std::string tfrecord(const std::string& data) {
  std::string out;
  uint64_t length = data.size();
  put_le(out, length);
  put_le(out, masked_crc32c(out.data(), sizeof(length)));
  out += data;
  put_le(out, masked_crc32c(data.data(), data.size()));
  return out;
}

std::string encode_file_version_event(double wall_time) {
  std::string e = event_head(wall_time, 0);
  put_bytes(e, 3, "brain.Event:2");
  return e;
}

std::string encode_scalars_event(double wall_time, int64_t step, const Scalars& scalars) {
  std::string summary;
  for (const auto& [tag, v] : scalars) {
    std::string value;
    put_bytes(value, 1, tag);
    put_key(value, 2, Fixed32);
    put_le(value, static_cast<float>(v));
    put_bytes(summary, 1, value);
  }
  std::string e = event_head(wall_time, step);
  put_bytes(e, 5, summary);
  return e;
}

std::string encode_texts_event(double wall_time, int64_t step, const Texts& texts) {
  std::string summary;
  for (const auto& [tag, text] : texts) put_bytes(summary, 1, text_value(tag, text));
  std::string e = event_head(wall_time, step);
  put_bytes(e, 5, summary);
  return e;
}

TensorBoardSink::TensorBoardSink(const std::string& dir, double wall_time) {
  if (dir.empty()) fail("--use-tensorboard needs --tensorboard-dir");
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) fail("--tensorboard-dir {}: cannot create: {}", dir, ec.message());
  char host[256] = "localhost";
  ::gethostname(host, sizeof(host) - 1);
  static std::atomic<int> counter{0};
  path_ = (std::filesystem::path(dir) / fmt::format("events.out.tfevents.{}.{}.{}.{}",
                                                    static_cast<int64_t>(wall_time), host,
                                                    ::getpid(), counter++))
              .string();
  file_ = std::fopen(path_.c_str(), "wb");
  if (file_ == nullptr) {
    fail("--tensorboard-dir {}: cannot create {}: {}", dir, path_, std::strerror(errno));
  }
  append(encode_file_version_event(wall_time));
}

TensorBoardSink::~TensorBoardSink() { close(); }

void TensorBoardSink::append(const std::string& event) {
  if (file_ == nullptr) fail("--tensorboard-dir: {} written after close", path_);
  std::string record = tfrecord(event);
  if (std::fwrite(record.data(), 1, record.size(), file_) != record.size() ||
      std::fflush(file_) != 0) {
    fail("--tensorboard-dir: write to {} failed: {}", path_, std::strerror(errno));
  }
}

void TensorBoardSink::write(const Record& record) {
  if (!record.scalars.empty()) {
    append(encode_scalars_event(record.wall_time, record.step, record.scalars));
  }
  if (!record.texts.empty())
    append(encode_texts_event(record.wall_time, record.step, record.texts));
}

void TensorBoardSink::write_config(const Config& config, double wall_time) {
  // Markdown: TensorBoard's text plugin renders it; two trailing spaces break lines.
  std::string text;
  for (const auto& [key, value] : config) text += fmt::format("{}: {}  \n", key, value);
  append(encode_texts_event(wall_time, 0, {{"config", text}}));
}

void TensorBoardSink::close() {
  if (file_ != nullptr) {
    std::fclose(file_);
    file_ = nullptr;
  }
}

}  // namespace anvil::metrics

#include "runtime/metrics/jsonl_sink.hpp"

#include "backends/common/error.hpp"

#include <nlohmann/json.hpp>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>

namespace anvil::metrics {
namespace {

// Integral values as integers (as the controller's lines had them), non-finite as null.
nlohmann::json json_number(double v) {
  if (!std::isfinite(v)) return nullptr;
  if (v == std::trunc(v) && std::fabs(v) < 9007199254740992.0) return static_cast<int64_t>(v);
  return v;
}

}  // namespace

std::string format_jsonl_line(const Record& record) {
  nlohmann::json line = nlohmann::json::object();
  for (const auto& [name, v] : record.scalars) line[name] = json_number(v);
  for (const auto& [name, t] : record.texts) line[name] = t;
  line["step"] = record.step;
  return line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

JsonlSink::JsonlSink(const std::string& path) : path_(path) {
  std::error_code ec;
  auto parent = std::filesystem::path(path).parent_path();
  if (!parent.empty()) std::filesystem::create_directories(parent, ec);
  file_ = std::fopen(path.c_str(), "a");
  if (file_ == nullptr) {
    fail("--metrics-jsonl {}: cannot open for appending: {}", path, std::strerror(errno));
  }
}

JsonlSink::~JsonlSink() { close(); }

void JsonlSink::write(const Record& record) {
  if (file_ == nullptr) fail("--metrics-jsonl {}: written after close", path_);
  std::string line = format_jsonl_line(record) + "\n";
  if (std::fwrite(line.data(), 1, line.size(), file_) != line.size() || std::fflush(file_) != 0) {
    fail("--metrics-jsonl {}: write failed: {}", path_, std::strerror(errno));
  }
}

void JsonlSink::close() {
  if (file_ != nullptr) {
    std::fclose(file_);
    file_ = nullptr;
  }
}

}  // namespace anvil::metrics

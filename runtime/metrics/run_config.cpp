#include "runtime/metrics/run_config.hpp"

#include "backends/common/error.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstring>
#include <filesystem>

namespace anvil::metrics {
namespace {

bool plain_ok(const std::string& s) {
  if (s.empty()) return false;
  const std::string first_ok =
      "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_./+-";
  if (first_ok.find(s[0]) == std::string::npos) return false;
  if (s == "-" || s.rfind("- ", 0) == 0) return false;
  for (char c : s) {
    bool ok = std::isalnum(static_cast<unsigned char>(c)) || std::strchr("_./+-=@%", c) != nullptr;
    if (!ok) return false;
  }
  return true;
}

std::string yaml_scalar(const std::string& s) {
  if (plain_ok(s)) return s;
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\r':
        out += "\\r";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          out += fmt::format("\\x{:02x}", static_cast<unsigned char>(c));
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

}  // namespace

std::string config_yaml(const ResolvedConfig& config) {
  std::string out =
      "# The resolved configuration of this run (every flag's final value).\n"
      "# Repeat the run with: --config <this file>\n";
  for (const auto& [key, values] : config) {
    if (!plain_ok(key)) fail("config key '{}': not a flag name", key);
    out += key + ": ";
    if (values.size() == 1) {
      out += yaml_scalar(values[0]);
    } else {
      out += "[";
      for (size_t i = 0; i < values.size(); ++i) out += (i ? ", " : "") + yaml_scalar(values[i]);
      out += "]";
    }
    out += "\n";
  }
  return out;
}

void write_config_file(const std::string& path, const ResolvedConfig& config) {
  std::string text = config_yaml(config);
  std::filesystem::path p(path);
  std::error_code ec;
  if (p.has_parent_path()) std::filesystem::create_directories(p.parent_path(), ec);
  std::string tmp = fmt::format("{}.tmp.{}", path, ::getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail("config file {}: cannot create {}: {}", path, tmp, std::strerror(errno));
  size_t done = 0;
  while (done < text.size()) {
    ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int err = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      fail("config file {}: write failed: {}", path, std::strerror(err));
    }
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    fail("config file {}: fsync/close failed: {}", path, std::strerror(err));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    fail("config file {}: cannot rename {} over it: {}", path, tmp, std::strerror(err));
  }
}

Config display_config(const ResolvedConfig& config) {
  Config out;
  for (const auto& [key, values] : config) {
    std::string v;
    for (size_t i = 0; i < values.size(); ++i) v += (i ? ", " : "") + values[i];
    out[key] = values.size() == 1 ? v : "[" + v + "]";
  }
  return out;
}

}  // namespace anvil::metrics

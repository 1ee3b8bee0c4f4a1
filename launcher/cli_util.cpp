#include "launcher/cli_util.hpp"

#include "backends/common/error.hpp"
#include "backends/common/json_util.hpp"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/Context.h>

#include <sstream>

namespace anvil::launcher {

at::Device parse_device(const std::string& name) {
  at::Device device(at::kCPU);
  try {
    device = at::Device(name);
  } catch (const std::exception&) {
    fail("--device '{}' is not a device (cpu, cuda, cuda:N)", name);
  }
  if (device.is_cuda() && !at::hasCUDA()) fail("--device {}: no CUDA device available", name);
  if (!device.is_cpu() && !device.is_cuda())
    fail("--device {}: only cpu and cuda are supported", name);
  return device;
}

void set_threads(int threads) {
  if (threads < 0) fail("--threads must be >= 0, got {}", threads);
  if (threads > 0) at::set_num_threads(threads);
}

std::vector<JsonlLine> read_jsonl(const std::filesystem::path& path) {
  std::string text = read_text_file(path);
  std::vector<JsonlLine> lines;
  std::istringstream in(text);
  std::string line;
  size_t number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    lines.push_back({number, parse_json(line, path.string() + ":" + std::to_string(number))});
  }
  return lines;
}

}  // namespace anvil::launcher

// Helpers shared by subcommands: devices, threads, JSONL input with file:line errors.
#pragma once

#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <string>
#include <vector>

namespace anvil::launcher {

// "cpu" | "cuda" | "cuda:N". CUDA without a device is an anvil::Error.
at::Device parse_device(const std::string& name);

// Sets LibTorch's intra-op threads (0 = leave LibTorch's default).
void set_threads(int threads);

struct JsonlLine {
  size_t line_number;  // 1-based
  nlohmann::json value;
};

// Reads a JSONL file; blank lines are skipped; malformed JSON is an anvil::Error naming
// file:line.
std::vector<JsonlLine> read_jsonl(const std::filesystem::path& path);

}  // namespace anvil::launcher

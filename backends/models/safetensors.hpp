// HuggingFace safetensors checkpoints as LibTorch tensors: one file, a directory with
// model.safetensors, or a sharded directory with model.safetensors.index.json; and a
// writer that produces the same layouts. Files are little-endian, C order.
#pragma once

#include "backends/models/safetensors_format.hpp"

#include <ATen/core/Tensor.h>

#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace anvil::models {

// One memory-mapped .safetensors file with a validated header.
class SafetensorsFile {
 public:
  static std::shared_ptr<SafetensorsFile> open(const std::filesystem::path& path);
  const SafetensorsHeader& header() const { return header_; }
  const std::filesystem::path& path() const { return file_.path(); }
  // An owned CPU copy of tensor `name`; rows [row_begin, row_end) of dim 0 when given
  // (only those bytes are read). Errors name the file and tensor.
  at::Tensor load(const std::string& name) const;
  at::Tensor load_rows(const std::string& name, int64_t row_begin, int64_t row_end) const;

 private:
  explicit SafetensorsFile(MappedFile file);
  MappedFile file_;
  SafetensorsHeader header_;
};

// The tensors of a checkpoint directory (single or sharded) or of one file.
class CheckpointReader {
 public:
  // Validates the index (every shard exists and holds the tensors the index assigns it,
  // no tensor in two shards). Errors name the index file, shard and tensor.
  static CheckpointReader open(const std::filesystem::path& path);
  std::vector<std::string> names() const;  // sorted
  bool contains(const std::string& name) const { return where_.count(name) != 0; }
  const TensorInfo& info(const std::string& name) const;
  at::Tensor load(const std::string& name) const;
  at::Tensor load_rows(const std::string& name, int64_t row_begin, int64_t row_end) const;

 private:
  std::filesystem::path root_;
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::unordered_map<std::string, size_t> where_;  // tensor -> index into files_
};

// Writes tensors in HF layout: model.safetensors when everything fits in one shard, else
// model-0000K-of-0000N.safetensors + model.safetensors.index.json. Shards are written
// under temporary names, fsync'd and renamed; the index comes last. A writer destroyed
// before finish() (or a failing finish) leaves no files behind.
class CheckpointWriter {
 public:
  explicit CheckpointWriter(std::filesystem::path dir, uint64_t max_shard_bytes = 5ull << 30,
                            std::map<std::string, std::string> metadata = {{"format", "pt"}});
  ~CheckpointWriter();
  CheckpointWriter(const CheckpointWriter&) = delete;
  CheckpointWriter& operator=(const CheckpointWriter&) = delete;

  // Keeps a contiguous CPU copy of `tensor`. Duplicate names are an anvil::Error.
  void add(const std::string& name, const at::Tensor& tensor);
  void finish();

 private:
  std::filesystem::path dir_;
  uint64_t max_shard_bytes_;
  std::map<std::string, std::string> metadata_;
  std::vector<std::pair<std::string, at::Tensor>> tensors_;
  std::vector<std::filesystem::path> temporaries_;
  bool finished_ = false;
};

}  // namespace anvil::models

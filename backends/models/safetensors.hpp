// HuggingFace safetensors checkpoints as LibTorch tensors: one file, a directory with
// model.safetensors, or a sharded directory with model.safetensors.index.json; and a
// writer that produces the same layouts. Files are little-endian, C order.
//
// Threads: a SafetensorsFile / CheckpointReader is immutable after open(); its const
// methods may be called from any number of threads. A CheckpointWriter is single-threaded.
#pragma once

#include "backends/models/safetensors_format.hpp"

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace anvil::models {

// One memory-mapped .safetensors file with a validated header (see
// parse_safetensors_header). The mapping lives as long as the object.
class SafetensorsFile {
 public:
  // Maps and validates `path`. Throws anvil::Error naming the file (and tensor) when it
  // cannot be read or its header is invalid.
  static std::shared_ptr<SafetensorsFile> open(const std::filesystem::path& path);
  const SafetensorsHeader& header() const { return header_; }
  const std::filesystem::path& path() const { return file_.path(); }

  // An owned, contiguous CPU copy of tensor `name` with its stored dtype and shape.
  // Throws anvil::Error naming the file when there is no such tensor.
  at::Tensor load(const std::string& name) const;
  // Rows [row_begin, row_end) of dim 0 of tensor `name` (shape [row_end - row_begin, ...]);
  // only those bytes of the file are touched. Throws anvil::Error naming the file and tensor
  // for a scalar tensor or a range outside [0, shape[0]].
  at::Tensor load_rows(const std::string& name, int64_t row_begin, int64_t row_end) const;

 private:
  explicit SafetensorsFile(MappedFile file);
  MappedFile file_;
  SafetensorsHeader header_;
};

// The tensors of a checkpoint: a single .safetensors file, or a directory holding either
// model.safetensors.index.json (sharded; preferred when present) or model.safetensors.
class CheckpointReader {
 public:
  // Opens and validates every file up front: each shard named by the index exists and
  // holds the tensors the index assigns it, and no tensor is stored in two shards.
  // Throws anvil::Error naming the index file, shard and tensor.
  static CheckpointReader open(const std::filesystem::path& path);
  std::vector<std::string> names() const;  // sorted
  bool contains(const std::string& name) const { return where_.count(name) != 0; }
  // The header entry of `name`; throws anvil::Error naming the checkpoint if absent.
  const TensorInfo& info(const std::string& name) const;
  // As SafetensorsFile::load / load_rows, on the shard that holds `name`.
  at::Tensor load(const std::string& name) const;
  at::Tensor load_rows(const std::string& name, int64_t row_begin, int64_t row_end) const;

 private:
  std::filesystem::path root_;
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::unordered_map<std::string, size_t> where_;  // tensor -> index into files_
};

// Writes tensors in HF layout: model.safetensors when everything fits in one shard, else
// model-0000K-of-0000N.safetensors + model.safetensors.index.json ({"metadata":
// {"total_size": bytes}, "weight_map": {name: shard}}). Tensors are packed greedily in
// insertion order; a shard exceeds max_shard_bytes only when one tensor alone does.
//
// finish() writes every shard and the index under temporary names and fsyncs them before
// renaming any into place; only then are stale files of an earlier save in `dir` that
// follow the same naming (other shard counts, a stale index) removed. Other files in
// `dir` are never touched. When finish() throws, its temporaries (and any shard it had
// already renamed) are removed. A writer destroyed before finish() leaves no files.
class CheckpointWriter {
 public:
  // Throws anvil::Error when max_shard_bytes is 0. `metadata` becomes every shard's
  // "__metadata__" (transformers expects {"format": "pt"}).
  explicit CheckpointWriter(std::filesystem::path dir, uint64_t max_shard_bytes = 5ull << 30,
                            std::map<std::string, std::string> metadata = {{"format", "pt"}});
  ~CheckpointWriter();
  CheckpointWriter(const CheckpointWriter&) = delete;
  CheckpointWriter& operator=(const CheckpointWriter&) = delete;

  // Keeps a contiguous CPU copy of `tensor` (any device, any strides), so the caller may
  // modify or free it afterwards. Throws anvil::Error naming the tensor for a duplicate or
  // reserved name, an undefined or non-strided tensor, a dtype safetensors cannot store,
  // or a call after finish().
  void add(const std::string& name, const at::Tensor& tensor);
  // Writes the checkpoint (see the class comment). Throws anvil::Error naming the file at
  // fault. A second call after success does nothing.
  void finish();

 private:
  void write_all_files();
  void remove_temporaries() noexcept;

  std::filesystem::path dir_;
  uint64_t max_shard_bytes_;
  std::map<std::string, std::string> metadata_;
  std::vector<std::pair<std::string, at::Tensor>> tensors_;  // insertion order
  std::unordered_set<std::string> names_;
  std::vector<std::filesystem::path> temporaries_;  // written, not yet renamed
  std::vector<std::filesystem::path> published_;    // renamed by a finish() in progress
  bool finished_ = false;
};

// Writes an HF checkpoint whose tensors (names, dtypes, shapes) are known up front, one
// tensor at a time and in any order, holding no more than the tensor being written: the
// headers are written first, each tensor's bytes go straight to its offset. For exporting
// a model that only exists piece by piece (FSDP gathers one tensor at a time).
// Shards as CheckpointWriter does (same names, same index). `dir` must be empty or absent
// and should be a temporary directory: files are written under their final names, so the
// caller publishes the whole directory by renaming it after finish(), and removes it when
// anything failed.
class StreamingCheckpointWriter {
 public:
  StreamingCheckpointWriter(std::filesystem::path dir, std::vector<TensorInfo> layout,
                            uint64_t max_shard_bytes = 5ull << 30,
                            std::map<std::string, std::string> metadata = {{"format", "pt"}});
  ~StreamingCheckpointWriter();
  StreamingCheckpointWriter(const StreamingCheckpointWriter&) = delete;
  StreamingCheckpointWriter& operator=(const StreamingCheckpointWriter&) = delete;

  // Throws anvil::Error naming the tensor if it is unknown, written twice, or its dtype or
  // shape differs from the layout.
  void write(const std::string& name, const at::Tensor& tensor);
  // Throws naming the first tensor never written; fsyncs every file.
  void finish();

 private:
  struct Shard {
    std::filesystem::path path;
    int fd = -1;
    uint64_t data_offset = 0;
  };
  std::filesystem::path dir_;
  std::vector<TensorInfo> layout_;
  std::vector<size_t> shard_of_;  // per layout entry
  std::vector<bool> written_;
  std::vector<Shard> shards_;
  std::map<std::string, std::string> metadata_;
  bool finished_ = false;
};

}  // namespace anvil::models

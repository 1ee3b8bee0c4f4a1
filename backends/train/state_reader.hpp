// Reads the training state (fp32 master weights and AdamW moments) of any anvil checkpoint
// by region of the HF tensor, whatever layout wrote it, so a run can resume on another
// backend or mesh: a single rank, an FSDP group of another size, a Megatron group with
// other TP / PP / DP sizes (PyTorch DCP's idea: a checkpoint is a set of stored boxes of
// named tensors, and a load reads the boxes that overlap what it needs).
//
// Layouts (an iteration directory, see checkpoint.hpp):
//   single     optimizer.safetensors: <name>.exp_avg, <name>.exp_avg_sq, <name>.master
//              when the parameter was not fp32 (otherwise model/ holds the fp32 master)
//   fsdp       fsdp/rank_R-of-W.safetensors: rank R's rows [R * ceil(rows / W), ...) of
//              each tensor (<name>, .exp_avg, .exp_avg_sq; zero-padded to ceil(rows / W))
//   megatron   megatron/rank_R-of-W.safetensors: each stored tensor's box in the HF tensor,
//              in the file metadata "anvil.boxes" ({key: {"offset": [...], "size": [...]}};
//              the stored tensor may have more rows than its box: zero padding)
// trainer_state.json says which: "megatron" {tp, pp, dp} -> megatron, "world_size" ->
// fsdp, neither -> single.
//
// Threads: immutable after construction; const methods may run concurrently.
#pragma once

#include <ATen/core/Tensor.h>

#include <nlohmann/json_fwd.hpp>

#include <array>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace anvil::train {

// A region of a tensor: per dimension its offset and size.
struct Box {
  std::vector<int64_t> offset, size;
  static Box whole(const std::vector<int64_t>& shape);
  int64_t numel() const;
  nlohmann::json to_json() const;
  // Throws anvil::Error naming `where` for a malformed object.
  static Box from_json(const nlohmann::json& j, const std::string& where);
};

struct StateLayout {
  enum class Kind { kSingle, kFsdp, kMegatron };
  Kind kind = Kind::kSingle;
  int world_size = 1;
  int tp = 1, pp = 1, dp = 1;  // Megatron's mesh (1 x 1 x world for FSDP)
  // "one rank", "FSDP over 4 ranks", "Megatron TP=2 x PP=2 x DP=1 (4 ranks)".
  std::string describe() const;
  bool operator==(const StateLayout& o) const {
    return kind == o.kind && world_size == o.world_size && tp == o.tp && pp == o.pp && dp == o.dp;
  }
  bool operator!=(const StateLayout& o) const { return !(*this == o); }
};

// The metadata key a Megatron rank file keeps its boxes under.
inline constexpr const char* kBoxesMetadataKey = "anvil.boxes";

class StateReader {
 public:
  enum class Part { kMaster, kExpAvg, kExpAvgSq };

  // Opens iteration directory `dir` (trainer_state.json and every rank file the layout
  // names). Throws anvil::Error naming the file when one is missing or malformed.
  explicit StateReader(const std::filesystem::path& dir);
  ~StateReader();
  StateReader(StateReader&&) noexcept;
  StateReader& operator=(StateReader&&) noexcept;

  const StateLayout& layout() const;
  int64_t optimizer_steps() const;
  const nlohmann::json& trainer_state() const;  // trainer_state.json as read

  // fp32 CPU tensor of `region` (shape region.size) of HF tensor `name` of shape `full`.
  // Throws anvil::Error naming the checkpoint and tensor when the stored boxes disagree
  // with `full` or do not cover the region.
  at::Tensor read(const std::string& name, const std::vector<int64_t>& full, const Box& region,
                  Part part) const;
  // A shard's three parts (master, exp_avg, exp_avg_sq): fp32 tensors of `like`'s shape on
  // its device whose first box.size[0] rows are `box` of `name` and whose other rows (a
  // shard's padding) are zero; box.size[0] may be 0.
  std::array<at::Tensor, 3> read_shard(const std::string& name, const std::vector<int64_t>& full,
                                       const Box& box, const at::Tensor& like) const;
  // The generator state `key` ("__rng__.cpu", ...) world rank `rank` saved, if any.
  std::optional<at::Tensor> rng(int rank, const std::string& key) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace anvil::train

// Fully sharded data parallel (ZeRO-3) for the decoder family, on a dist::Communicator.
//
// Every parameter is sharded on dim 0 into W chunks of ceil(rows / W) rows (zero-padded),
// as FSDP2 does, so any world size works. A rank keeps only its fp32 shards (the
// optimizer's parameters, optionally on the CPU) and the AdamW state of those shards.
// Groups: one per decoder layer, plus a root group (embeddings, final norm, untied head).
//
// Compute: the model's parameter tensors keep their full shapes but own memory only while
// gathered. A layer's group is all-gathered (in the compute dtype) right before the layer
// runs and freed after it (--reshard-after-forward; otherwise kept until its backward),
// gathered again in backward, and its gradients are reduce-scattered in fp32 into the
// shards' gradients (summed over ranks, which is what the Trainer's step-level reducer
// weights need) as soon as the layer's backward is done. Memory is reallocated into the
// same storage, so autograd's saved references stay valid (FSDP2's storage resize). With
// gradient checkpointing the layer is recomputed in backward instead of keeping its graph.
// The root group stays gathered; its gradients are reduce-scattered before each step.
//
// Prefetch: while layer l runs forward, layer l + 1's all-gather is already in flight (in
// backward, layer l - 1's), as FSDP2's implicit prefetch does.
//
// Loading reads only this rank's rows of each tensor from the HF safetensors.
#pragma once

#include "backends/dist/communicator.hpp"
#include "backends/models/decoder.hpp"
#include "backends/train/trainer.hpp"

#include <ATen/core/Tensor.h>

#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

namespace anvil::fsdp {

struct FsdpOptions {
  bool reshard_after_forward = true;  // --reshard-after-forward
  bool cpu_offload = false;           // --fsdp-cpu-offload: shards and optimizer on the CPU
};

class FsdpModel {
 public:
  // Reads config.json and this rank's rows of every tensor of the HF checkpoint `dir`.
  FsdpModel(std::shared_ptr<dist::Communicator> comm, const std::filesystem::path& dir,
            at::ScalarType compute_dtype, const at::Device& device, FsdpOptions options);
  ~FsdpModel();
  FsdpModel(const FsdpModel&) = delete;
  FsdpModel& operator=(const FsdpModel&) = delete;

  models::DecoderModel& model();
  dist::Communicator& comm();

  // Hooks that make a Trainer train the shards (set options.schedule.dp_size/dp_rank to
  // the communicator's size/rank).
  train::TrainerHooks trainer_hooks();

  // Calls fn(name, full tensor) for every parameter in HF order, gathering one tensor at a
  // time in fp32 (every rank takes part; every rank receives the tensor).
  void for_each_full_tensor(const std::function<void(const std::string&, const at::Tensor&)>& fn);

  // Weight sync (--update-weight-buffer-size): the full tensors in HF order, in buckets of
  // at most `bucket_bytes` (at least one tensor each) as `dtype`, one all-gather per bucket
  // in which every rank contributes its shards; fn gets each bucket, on every rank.
  using NamedTensor = std::pair<std::string, at::Tensor>;
  void for_each_full_bucket(int64_t bucket_bytes, at::ScalarType dtype,
                            const std::function<void(const std::vector<NamedTensor>&)>& fn);

  // Sharded training checkpoint (every rank calls it): <save>/iter_NNNNNNN/ holds model/
  // (the full model as an HF directory, written by rank 0), fsdp/rank_R-of-W.safetensors
  // (each rank's fp32 shards, AdamW moments and RNG state) and trainer_state.json; written
  // under a temporary name and renamed by rank 0 after every rank has finished, then the
  // `latest_checkpointed_iteration.txt` pointer moves. `source`: the HF directory whose
  // tokenizer and generation files go into model/ (train::save_checkpoint's rule).
  void save_checkpoint(const std::filesystem::path& save, int64_t iteration,
                       const train::AdamW& optimizer, const nlohmann::json& state,
                       const std::filesystem::path& source = {});
  // Loads the latest (or the given) iteration into the shards and `optimizer`. The
  // checkpoint may come from any layout (an FSDP group of any size, a Megatron mesh, one
  // rank): each rank reads the rows of its new shard from the stored boxes that hold them
  // (train/state_reader.hpp); the RNG is restored only from the same world size. Returns
  // nullopt when there is none.
  std::optional<std::pair<int64_t, nlohmann::json>> load_checkpoint(
      const std::filesystem::path& load, train::AdamW& optimizer,
      std::optional<int64_t> iteration = std::nullopt);

  // --save-hf: every rank gathers, rank 0 streams each tensor (as `dtype`) into an HF
  // directory at `out` with memory bounded by the largest tensor, copies tokenizer and
  // generation files from `source`, and renames the finished directory into place.
  void export_hf(const std::filesystem::path& out, const std::filesystem::path& source,
                 at::ScalarType dtype, uint64_t max_shard_bytes = 5ull << 30);

  // Colocated mode: every gathered parameter freed and the shards (the optimizer's
  // parameters) moved to pinned host memory; onload() moves them back and gathers the root
  // group. The optimizer's own state is moved by AdamW::move_state_to. Not collective.
  void offload();
  void onload();

  // Bytes this rank holds for parameters (shards) and their gradients, for measurements.
  int64_t shard_bytes() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace anvil::fsdp

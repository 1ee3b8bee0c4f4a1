// Megatron-style tensor + data parallel training for the decoder family, on
// dist::Communicator sub-groups.
//
// Process mesh: world = TP x DP, tensor-parallel rank innermost (Megatron's order):
// rank = dp_rank * TP + tp_rank. One communicator per tensor-parallel group (the TP ranks
// of one DP replica) and one per data-parallel group (the ranks with the same tp_rank).
//
// Tensor parallel (Megatron-LM's layout): q/k/v, gate/up are column-parallel (each TP rank
// holds Nq/TP query heads, Nkv/TP key-value heads and I/TP MLP rows; GQA groups stay on
// one rank), o/down are row-parallel (their outputs are all-reduced over TP before the
// residual; their biases added once after the reduction). The embedding and LM head are
// vocab-parallel (rank r holds rows [r * ceil(V/TP), ...), the last rank fewer when TP
// does not divide V); log-probs and entropy are computed from each rank's logits slice and
// per-row statistics (max, sum of exp, target logit, E[z]) reduced over TP, so full-vocab
// logits never exist. Norm weights are replicated (q/k-norm gradients are all-reduced over
// TP since each rank only sees its own heads).
//
// Distributed optimizer: every TP-local parameter keeps an fp32 master shard of
// ceil(rows / DP) rows (zero-padded) and the AdamW state of that shard only; gradients are
// reduce-scattered over DP (fp32) into the shards, and after the step the shards are
// all-gathered over DP back into the compute parameters. Gradient clipping uses the norm
// of the whole model (replicated parameters counted once).
//
// Loading reads only this rank's TP slice of each tensor from the HF safetensors (rows
// for column/vocab-parallel tensors; row-parallel tensors are read whole and narrowed).
#pragma once

#include "backends/dist/communicator.hpp"
#include "backends/models/config.hpp"
#include "backends/models/decoder.hpp"
#include "backends/train/logprobs.hpp"
#include "backends/train/trainer.hpp"

#include <ATen/core/Tensor.h>

#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace anvil::megatron {

// The process mesh of one training group.
struct Mesh {
  std::shared_ptr<dist::Communicator> world;
  std::shared_ptr<dist::Communicator> tp;  // this rank's tensor-parallel group
  std::shared_ptr<dist::Communicator> dp;  // this rank's data-parallel group
  int tp_size = 1, dp_size = 1;
  int tp_rank = 0, dp_rank = 0;

  // Splits `world` into TP x DP (world size must be a multiple of tp_size; pipeline
  // parallelism is not implemented, so pp_size must be 1). Collective over `world`.
  static Mesh create(std::shared_ptr<dist::Communicator> world, int tp_size, int pp_size = 1);
};

// How a HF tensor is split over the tensor-parallel group.
enum class Split {
  kReplicated,  // every TP rank holds the whole tensor
  kColumn,      // dim 0 in TP equal parts (q/k/v, gate/up weights and biases)
  kRow,         // dim 1 in TP equal parts (o/down weights)
  kVocab,       // dim 0 in parts of ceil(V / TP) rows, the last one shorter (embed, head)
};

struct ShardSpec {
  std::string name;           // HF name
  std::vector<int64_t> full;  // HF shape
  Split split = Split::kReplicated;
  int64_t begin = 0, end = 0;        // this rank's range along the split dim
  std::vector<int64_t> local;        // this rank's shape
  bool reduce_grad_over_tp = false;  // q/k-norm: each rank's gradient covers its heads only
};

class MegatronModel {
 public:
  // Reads config.json and this rank's TP slice of every tensor of the HF checkpoint `dir`.
  // Throws anvil::Error when the heads, key-value heads or intermediate size do not divide
  // by the TP size (naming the config.json key).
  MegatronModel(Mesh mesh, const std::filesystem::path& dir, at::ScalarType compute_dtype,
                const at::Device& device);
  ~MegatronModel();
  MegatronModel(const MegatronModel&) = delete;
  MegatronModel& operator=(const MegatronModel&) = delete;

  const models::ModelConfig& config() const;
  const Mesh& mesh() const;
  const std::vector<ShardSpec>& shard_specs() const;
  // This rank's TP-local compute parameters, in HF (spec) order.
  std::vector<at::Tensor>& parameters();
  at::ScalarType dtype() const;
  at::Device device() const;

  // Gradient checkpointing recomputes each layer (with its TP collectives) in backward.
  void set_gradient_checkpointing(bool on);
  // --sequence-parallel (TP > 1): between the tensor-parallel regions (norms, residual
  // adds, embedding output) each TP rank holds only its block of ceil(T / TP) tokens; the
  // all-reduces become all-gather before and reduce-scatter after each region, and the
  // gradients of replicated parameters are summed over TP. Results equal TP without it.
  void set_sequence_parallel(bool on);
  bool sequence_parallel() const;

  // Final-norm hidden states [T, H] (the same on every TP rank). Collective over TP.
  at::Tensor forward_hidden(const models::PackedBatch& batch) const;
  // Vocab-parallel log-probs (and entropy) of `targets` for hidden rows [T, H], as
  // train::token_logprobs on the full head but from this rank's vocab slice; differentiable
  // through hidden and the head slice. Collective over TP.
  train::LogProbResult token_logprobs(const at::Tensor& hidden, const at::Tensor& targets,
                                      const train::LogProbOptions& options) const;

  // Full HF tensors in HF order as fp32, gathered over TP from this rank's compute
  // parameters (after each step every DP replica holds the all-gathered fp32 masters, in
  // the compute dtype), one at a time; every rank takes part and receives every tensor.
  void for_each_full_tensor(const std::function<void(const std::string&, const at::Tensor&)>& fn);
  // Weight sync: the same tensors as `dtype`, grouped in buckets of at most `bucket_bytes`
  // (at least one tensor each); fn gets each bucket, on every rank.
  using NamedTensor = std::pair<std::string, at::Tensor>;
  void for_each_full_bucket(int64_t bucket_bytes, at::ScalarType dtype,
                            const std::function<void(const std::vector<NamedTensor>&)>& fn);
  // --save-hf: every rank gathers, world rank 0 streams the tensors (as `dtype`) into an HF
  // directory at `out`, copies tokenizer/generation files from `source` and renames the
  // finished directory into place. Every rank learns whether it worked.
  void export_hf(const std::filesystem::path& out, const std::filesystem::path& source,
                 at::ScalarType dtype, uint64_t max_shard_bytes = 5ull << 30);

  struct Impl;
  Impl& impl() { return *impl_; }

 private:
  std::unique_ptr<Impl> impl_;
};

// Trains a MegatronModel with train::Trainer's semantics (old log-probs, advantages,
// build_schedule over the DP ranks, slime's losses, AdamW on the master shards).
// options.schedule.dp_size / dp_rank are set from the mesh.
class MegatronTrainer {
 public:
  MegatronTrainer(MegatronModel& model, train::TrainerOptions options);
  ~MegatronTrainer();

  // As train::Trainer::train_rollout: every rank passes the same samples; returns each
  // optimizer step's metrics (summed / max / min over the DP ranks).
  std::vector<train::Metrics> train_rollout(const std::vector<train::TrainSample>& samples,
                                            const std::vector<at::Tensor>& ref_logprobs = {});
  // Log-probs (and entropy) of the samples' response tokens, no gradients (collective).
  train::ResponseLogProbs response_logprobs(const std::vector<train::TrainSample>& samples,
                                            bool with_entropy = false);

  train::AdamW& optimizer();
  int64_t steps() const;
  // Bytes this rank holds in fp32 master shards and their gradients (for measurements).
  int64_t shard_bytes() const;

 private:
  struct State;
  std::unique_ptr<State> s_;
};

}  // namespace anvil::megatron

// Megatron-style tensor + pipeline + data parallel training for the decoder family, on
// dist::Communicator sub-groups.
//
// Process mesh: world = TP x DP x PP in Megatron's order (tensor-parallel rank innermost,
// pipeline rank outermost): rank = pp_rank * (DP * TP) + dp_rank * TP + tp_rank. One
// communicator per tensor-parallel group (the TP ranks of one stage of one DP replica), per
// data-parallel group (same stage and tp_rank) and per pipeline group (same dp_rank and
// tp_rank: the stages of one replica's TP slice).
//
// Pipeline parallel: the decoder layers are split into PP contiguous stages (the first
// L % PP stages one layer more); the first stage also holds the embedding, the last the
// final norm and LM head (with tied embeddings the last stage keeps a copy of the
// embedding as its head; the two copies' gradients are summed over the first/last
// "embedding group" before the optimizer, as Megatron does, so they stay equal). Training
// runs the 1F1B schedule over each step's micro-batches: stage s first runs PP - s - 1
// forwards, then alternates one forward and one backward, then drains the backwards.
// Activations ([T, H], or this TP rank's [ceil(T / TP), H] block under sequence
// parallelism) go to the next stage and their gradients back point to point; the loss and
// metrics exist on the last stage, which broadcasts the metrics over the pipeline.
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
// Loading reads only this rank's TP slice of its pipeline stage's tensors from the HF
// safetensors (rows for column/vocab-parallel tensors; row-parallel tensors are read whole
// and narrowed). Export and weight sync gather each tensor over TP on its stage and
// broadcast it over the pipeline group, so every rank sees every HF tensor in HF order.
#pragma once

#include "backends/dist/communicator.hpp"
#include "backends/models/config.hpp"
#include "backends/models/decoder.hpp"
#include "backends/train/logprobs.hpp"
#include "backends/train/trainer.hpp"

#include <ATen/core/Tensor.h>

#include <nlohmann/json_fwd.hpp>

#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace anvil::megatron {

// The process mesh of one training group.
struct Mesh {
  std::shared_ptr<dist::Communicator> world;
  std::shared_ptr<dist::Communicator> tp;  // this rank's tensor-parallel group
  std::shared_ptr<dist::Communicator> dp;  // this rank's data-parallel group
  std::shared_ptr<dist::Communicator> pp;  // this rank's pipeline group (rank = pp_rank)
  // The first and last stage of the pipeline group (tied embeddings); null on the middle
  // stages and when PP = 1.
  std::shared_ptr<dist::Communicator> embed;
  int tp_size = 1, dp_size = 1, pp_size = 1;
  int tp_rank = 0, dp_rank = 0, pp_rank = 0;

  bool first_stage() const { return pp_rank == 0; }
  bool last_stage() const { return pp_rank == pp_size - 1; }

  // Splits `world` into TP x DP x PP (the world size must be a multiple of tp_size *
  // pp_size). Collective over `world`.
  static Mesh create(std::shared_ptr<dist::Communicator> world, int tp_size, int pp_size = 1);
};

// The decoder layers [begin, end) of pipeline stage `stage` of `stages` (contiguous; the
// first `layers % stages` stages one layer more).
std::pair<int64_t, int64_t> stage_layers(int64_t layers, int stages, int stage);

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
  // The last pipeline stage's copy of a tied embedding (its LM head): not an HF tensor of
  // its own; its gradient is summed with the first stage's embedding gradient.
  bool tied_copy = false;
};

class MegatronModel {
 public:
  // Reads config.json and this rank's TP slice of every tensor of its pipeline stage from
  // the HF checkpoint `dir`. Throws anvil::Error when the heads, key-value heads or
  // intermediate size do not divide by the TP size, or there are fewer layers than stages
  // (naming the config.json key).
  MegatronModel(Mesh mesh, const std::filesystem::path& dir, at::ScalarType compute_dtype,
                const at::Device& device);
  ~MegatronModel();
  MegatronModel(const MegatronModel&) = delete;
  MegatronModel& operator=(const MegatronModel&) = delete;

  const models::ModelConfig& config() const;
  const Mesh& mesh() const;
  // This stage's tensors (HF order, the tied copy last).
  const std::vector<ShardSpec>& shard_specs() const;
  // This rank's TP-local compute parameters of its stage, in shard_specs() order.
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

  // Final-norm hidden states [T, H] (the same on every TP rank). Collective over TP; under
  // pipeline parallelism the stages pass the batch along without gradients and the last
  // stage broadcasts the result over the pipeline group (the trainer's 1F1B schedule is
  // what trains).
  at::Tensor forward_hidden(const models::PackedBatch& batch) const;
  // This pipeline stage's part of forward_hidden: the embedding (first stage) or `input`
  // (the previous stage's output, [activation_rows(T), H]), this stage's layers, and on the
  // last stage the final norm ([T, H]). Differentiable; collective over TP.
  at::Tensor stage_forward(const models::PackedBatch& batch, const at::Tensor& input) const;
  // Rows of the activation a stage passes on for a batch of `tokens` tokens.
  int64_t activation_rows(int64_t tokens) const;
  // Vocab-parallel log-probs (and entropy) of `targets` for hidden rows [T, H], as
  // train::token_logprobs on the full head but from this rank's vocab slice; differentiable
  // through hidden and the head slice. Collective over TP; last pipeline stage only.
  train::LogProbResult token_logprobs(const at::Tensor& hidden, const at::Tensor& targets,
                                      const train::LogProbOptions& options) const;

  // Full HF tensors in HF order as fp32, gathered over TP from the owning stage's compute
  // parameters (after each step every DP replica holds the all-gathered fp32 masters, in
  // the compute dtype) and broadcast over the pipeline group, one at a time; every rank
  // takes part and receives every tensor.
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
// build_schedule over the DP ranks, slime's losses, AdamW on the master shards), each
// step's micro-batches through the pipeline in the 1F1B schedule.
// options.schedule.dp_size / dp_rank are set from the mesh.
class MegatronTrainer {
 public:
  MegatronTrainer(MegatronModel& model, train::TrainerOptions options);
  ~MegatronTrainer();

  // As train::Trainer::train_rollout: every rank passes the same samples; returns each
  // optimizer step's metrics (summed / max / min over the DP ranks).
  std::vector<train::Metrics> train_rollout(const std::vector<train::TrainSample>& samples,
                                            const std::vector<at::Tensor>& ref_logprobs = {});
  // Log-probs (and entropy) of the samples' response tokens, no gradients (collective; the
  // last stage's results broadcast over the pipeline, so every rank returns them).
  train::ResponseLogProbs response_logprobs(const std::vector<train::TrainSample>& samples,
                                            bool with_entropy = false);

  // --save: DIR/iter_NNNNNNN/{megatron/rank_R-of-W.safetensors (this rank's fp32 master
  // shards, their AdamW moments, its RNG; each shard's box in its HF tensor in the file
  // metadata, see train/state_reader.hpp), model/ (the full HF model as `dtype`, tokenizer
  // files from `source`), trainer_state.json (iteration, optimizer steps, world size, the
  // TP/PP/DP sizes, `state`)}, written under a temporary name and renamed into place, then
  // latest_checkpointed_iteration.txt. Collective.
  void save_checkpoint(const std::filesystem::path& save, int64_t iteration,
                       const nlohmann::json& state, const std::filesystem::path& source,
                       at::ScalarType dtype);
  // --load: the latest (or the given) iteration into the master shards, AdamW state and
  // compute parameters; returns the iteration and its `state`, or nullopt when there is
  // none. Any layout loads: this mesh's own (bitwise, RNG included), another TP / PP / DP
  // mesh, an FSDP group or a single rank (each shard reads the stored boxes it overlaps;
  // the RNG is restored only from the same mesh).
  std::optional<std::pair<int64_t, nlohmann::json>> load_checkpoint(
      const std::filesystem::path& load, std::optional<int64_t> iteration = std::nullopt);

  // Colocated mode (--colocate, --offload-train): offload() frees this rank's compute
  // parameters and moves its fp32 master shards and AdamW moments to pinned host memory
  // (a plain copy when the model is on the CPU); onload() moves them back to the model's
  // device and rebuilds the compute parameters from the masters (an all-gather over DP, so
  // collective). The training state is unchanged bitwise; both are idempotent.
  void offload();
  void onload();

  train::AdamW& optimizer();
  int64_t steps() const;
  // Bytes this rank holds in fp32 master shards and their gradients (for measurements).
  int64_t shard_bytes() const;

 private:
  struct State;
  std::unique_ptr<State> s_;
};

}  // namespace anvil::megatron

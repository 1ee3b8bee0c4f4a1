// One training rank: turns a rollout (or an SFT batch) into optimizer steps.
//
// Flow per rollout, as slime's MegatronTrainRayActor.train:
//   1. old log-probs of every response token under the current weights (no gradients),
//      unless --use-rollout-logprobs; reference log-probs come from the caller (RefActor);
//   2. advantages and returns (compute_advantages);
//   3. build_schedule splits the samples into optimizer steps of --global-batch-size
//      rollouts and each step into packed micro-batches; gradients accumulate over the
//      micro-batches of a step (reducer weights make the sum exact), then one AdamW step.
// With several data-parallel ranks each rank runs its own micro-batches of a step; the
// ranks' gradients must be summed (not averaged) before the optimizer step, which is what
// the `before_optimizer_step` hook is for (the FSDP/Megatron-style backends set it).
#pragma once

#include "backends/models/decoder.hpp"
#include "backends/train/loss.hpp"
#include "backends/train/optimizer.hpp"
#include "backends/train/schedule.hpp"

#include <ATen/core/Tensor.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace anvil::train {

// A sample as the trainer sees it: prompt + response tokens.
struct TrainSample {
  std::vector<int64_t> tokens;
  int64_t response_length = 0;          // >= 1 and < tokens.size()
  std::vector<float> loss_mask;         // [response_length]; empty = all ones
  double reward = 0.0;                  // post-processed (post_process_rewards)
  std::vector<float> rollout_logprobs;  // [response_length] from the engine, or empty
  int64_t rollout_id = -1;              // samples sharing an id form one rollout; -1: own
  int64_t weight_version = 0;           // the policy version that sampled it
};

// Throws anvil::Error naming the sample index and field for any inconsistency.
void validate_samples(const std::vector<TrainSample>& samples, int64_t vocab_size);

struct TrainerOptions {
  LossOptions loss;
  AdvantageOptions advantage;
  ScheduleOptions schedule;
  OptimizerOptions optimizer;
  double temperature = 1.0;             // --rollout-temperature: log-probs of logits / T
  int64_t log_probs_chunk_size = 1024;  // --log-probs-chunk-size (rows of logits at once)
  bool gradient_checkpointing = false;  // --gradient-checkpointing
  int64_t dp_rank = 0;                  // which rank's micro-batches this trainer runs
  // The old log-probs (the PPO ratio's denominator) come from a forward pass over the
  // rollout before training. When the whole rollout trains in one optimizer step and no
  // advantage needs them first (--kl-coef 0), they equal the training forward's own
  // log-probs, so that pass is skipped and those are used detached (TRL does the same for
  // num_iterations = 1); the ratio is then exactly 1. true forces the separate pass.
  bool recompute_old_logprobs = false;
};

using Metrics = std::map<std::string, double>;

// Log-probs (and entropy) of each sample's response tokens under `model`, packed into
// micro-batches of at most `max_tokens` tokens (a longer sample runs alone). No gradients.
struct ResponseLogProbs {
  std::vector<at::Tensor> logprobs;  // [R_i] fp32, on the CPU
  std::vector<at::Tensor> entropy;   // [R_i] when requested
};
ResponseLogProbs response_logprobs(const models::DecoderModel& model,
                                   const std::vector<TrainSample>& samples, double temperature,
                                   int64_t chunk_tokens, int64_t max_tokens,
                                   bool with_entropy = false);

// How a sharded backend plugs into the Trainer (all optional).
struct TrainerHooks {
  // The tensors AdamW steps (with their .grad filled by before_optimizer_step), instead of
  // the model's parameters: e.g. fp32 shards.
  std::vector<at::Tensor> optimizer_params;
  std::function<double(double)> reduce_grad_norm_sq;  // see AdamW::set_grad_norm_reducer
  std::function<void(Metrics&)> reduce_metrics;       // combine a step's metrics over ranks
  std::function<void()> before_optimizer_step;        // e.g. reduce-scatter gradients
  std::function<void()> after_optimizer_step;         // e.g. refresh gathered parameters
  // out = every data-parallel rank's `in` (same numel) concatenated in rank order. When set
  // with dp_size > 1, each rank computes the old log-probs of its share of the samples
  // instead of all of them, and the shares are all-gathered.
  std::function<void(at::Tensor& out, const at::Tensor& in)> all_gather;
};

class Trainer {
 public:
  // `model` parameters become trainable (requires_grad) and are updated in place.
  Trainer(models::DecoderModel& model, TrainerOptions options, TrainerHooks hooks = {});

  // Trains on one rollout; returns the metrics of each optimizer step (slime's names:
  // loss, pg_loss, entropy_loss, pg_clipfrac, ppo_kl, kl_loss, tis*, ois,
  // train_rollout_logprob_abs_diff, ratio_max/min, grad_norm, lr, tokens, ...).
  // `ref_logprobs` ([R_i] per sample) is required by --use-kl-loss and --kl-coef.
  std::vector<Metrics> train_rollout(const std::vector<TrainSample>& samples,
                                     const std::vector<at::Tensor>& ref_logprobs = {});

  // The gradient pass of one step without the optimizer update: accumulates gradients of
  // the step's micro-batches for this rank. Per-sample tensors are indexed like `samples`.
  struct StepInputs {
    const std::vector<TrainSample>* samples = nullptr;
    std::vector<at::Tensor> advantages, old_logprobs, ref_logprobs, weights, loss_masks;
    std::vector<at::Tensor> rollout_logprobs;
    bool old_from_forward = false;  // old log-probs = the training forward's, detached
  };
  Metrics accumulate_step(const StepSchedule& step, const StepInputs& inputs);
  // Clips, updates, zeroes gradients; adds grad_norm and lr to `metrics`.
  void optimizer_step(Metrics& metrics);

  // Called between gradient accumulation and the update (gradient all-reduce).
  std::function<void()> before_optimizer_step;

  // Colocated offload of an unsharded model: the parameters (gradients dropped) and the
  // optimizer state move to `device` in place, pinned when leaving a CUDA device; tensor
  // identities stay, so training goes on after moving back. Sharded backends move their
  // shards themselves and call optimizer().move_state_to().
  void move_state_to(const at::Device& device);

  models::DecoderModel& model() { return model_; }
  AdamW& optimizer() { return *optimizer_; }
  const TrainerOptions& options() const { return options_; }
  int64_t steps() const { return optimizer_->steps(); }

 private:
  // Old log-probs over the data-parallel group (see TrainerHooks::all_gather).
  std::vector<at::Tensor> group_response_logprobs(const std::vector<TrainSample>& samples,
                                                  int64_t chunk, int64_t cap);

  models::DecoderModel& model_;
  TrainerOptions options_;
  TrainerHooks hooks_;
  std::unique_ptr<AdamW> optimizer_;
};

}  // namespace anvil::train

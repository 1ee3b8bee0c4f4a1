// Advantages and the losses of one training step, exactly as slime assembles them
// (slime/backends/megatron_utils/loss.py: compute_advantages_and_returns,
// policy_loss_function, value_loss_function, sft_loss_function).
//
// Per-token tensors of a micro-batch are concatenated over its samples' response tokens
// (R). Reductions use per-token weights fixed for the whole optimizer step (see
// reducer_weights), so the sum over micro-batches of each micro-batch's loss is the
// step's loss and accumulated gradients need no rescaling.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace anvil::train {

struct LossOptions {
  std::string loss_type = "policy_loss";     // --loss-type policy_loss | sft_loss | value_loss
  std::string advantage_estimator = "grpo";  // grpo|gspo|cispo|reinforce_plus_plus[_baseline]|ppo
  double eps_clip = 0.2;                     // --eps-clip
  double eps_clip_high = 0.2;                // --eps-clip-high (slime: defaults to --eps-clip)
  std::optional<double> eps_clip_c;          // --eps-clip-c (dual clip)
  double entropy_coef = 0.0;                 // --entropy-coef
  bool use_kl_loss = false;                  // --use-kl-loss
  double kl_loss_coef = 0.0;                 // --kl-loss-coef
  std::string kl_loss_type = "k1";           // --kl-loss-type
  bool use_unbiased_kl = false;              // --use-unbiased-kl
  bool use_tis = false;                      // --use-tis
  double tis_clip = 2.0;                     // --tis-clip
  double tis_clip_low = 0.0;                 // --tis-clip-low
  bool use_rollout_logprobs = false;         // --use-rollout-logprobs
  bool calculate_per_token_loss = false;     // --calculate-per-token-loss
  bool get_mismatch_metrics = false;         // --get-mismatch-metrics
  double value_clip = 0.2;                   // --value-clip
};
// Throws anvil::Error naming the flag for an unknown loss type, estimator, KL type, or
// inconsistent clip values.
void validate(const LossOptions& options);

// Reducer weights for a step: per-sample mean (default) gives token t of sample i the weight
// mask_t / (max(rollout_mask_sum_i, 1) * num_rollouts), where rollout_mask_sum_i is the
// unmasked-token total of sample i's rollout (its own sum when it is the rollout's only
// sample); --calculate-per-token-loss gives mask_t / sum_i max(mask_sum_i, 1).
// `loss_masks[i]` is sample i's [R_i] mask; returns one [R_i] fp32 tensor per sample.
std::vector<at::Tensor> reducer_weights(const std::vector<at::Tensor>& loss_masks,
                                        const std::vector<int64_t>& rollout_ids,
                                        int64_t num_rollouts, bool per_token);

// One micro-batch's per-token inputs, concatenated over its samples ([R] each).
struct LossInputs {
  at::Tensor logprobs;          // current policy, differentiable
  at::Tensor entropy;           // current policy entropy (differentiable when entropy_coef != 0)
  at::Tensor old_logprobs;      // policy before this rollout's steps; undefined: logprobs.detach()
  at::Tensor rollout_logprobs;  // the engine's, undefined when not recorded
  at::Tensor ref_logprobs;      // reference policy (needed by --use-kl-loss)
  at::Tensor advantages;
  at::Tensor loss_mask;                   // fp32 0/1
  at::Tensor weights;                     // reducer weights (reducer_weights, concatenated)
  std::vector<int64_t> response_lengths;  // per sample, summing to R
  // value_loss only:
  at::Tensor values, old_values, returns;
};

// Scalar loss plus named metrics (0-dim fp32 tensors, detached). Metrics are weighted sums,
// so summing a metric over the micro-batches of a step gives its step value; names ending
// in _max / _min are extremes over unmasked tokens and combine by max / min instead.
struct LossOutput {
  at::Tensor loss;
  std::vector<std::pair<std::string, at::Tensor>> metrics;
};
LossOutput compute_loss(const LossOptions& options, const LossInputs& inputs);

// ---- advantages (per rollout, before the optimizer steps) ----

struct AdvantageOptions {
  std::string estimator = "grpo";     // --advantage-estimator
  double kl_coef = 0.0;               // --kl-coef: KL as reward shaping
  std::string kl_loss_type = "k1";    // estimator of that KL (slime reuses --kl-loss-type)
  double gamma = 1.0, lambd = 1.0;    // --gamma --lambd
  bool normalize_advantages = false;  // --normalize-advantages (masked whitening)
};

// Per sample: `rewards[i]` the post-processed scalar reward (see post_process_rewards),
// `logprobs[i]` the policy's (or rollout's under --use-rollout-logprobs) [R_i] log-probs,
// `ref_logprobs[i]` the reference's (needed when kl_coef != 0), `values[i]` the critic's
// (ppo only), `loss_masks[i]` [R_i].
struct AdvantageInputs {
  std::vector<double> rewards;
  std::vector<at::Tensor> logprobs, ref_logprobs, values, loss_masks;
};
struct AdvantageResult {
  std::vector<at::Tensor> advantages, returns, kl;  // [R_i] fp32 each
};
AdvantageResult compute_advantages(const AdvantageOptions& options, const AdvantageInputs& in);

// slime's reward post-processing: for grpo/gspo/cispo/reinforce_plus_plus_baseline with
// rewards normalisation on, subtract the group mean over `group_size` consecutive samples
// and (grpo/gspo/cispo with std normalisation) divide by the unbiased group std + 1e-6;
// otherwise the raw rewards.
std::vector<double> post_process_rewards(const std::vector<double>& raw,
                                         const std::string& estimator, int64_t group_size,
                                         bool rewards_normalization, bool std_normalization);

}  // namespace anvil::train

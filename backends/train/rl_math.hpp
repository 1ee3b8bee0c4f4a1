// The per-token math of RL post-training, exactly as slime defines it
// (slime/utils/ppo_utils.py and the reward post-processing of its rollout manager).
// Pure functions over tensors; differentiable where a loss needs gradients.
// R = response tokens of one sample; N = samples; G = samples per prompt (group size).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string>
#include <vector>

namespace anvil::train {

// KL estimators between the current policy and a base (reference or old) policy, per
// token: k1 = log_ratio; k2 = log_ratio^2 / 2; k3 = exp(-log_ratio) - 1 + log_ratio;
// low_var_kl = k3 clamped to [-10, 10]. log_ratio = logp - logp_base, in fp32.
// `importance_ratio`, when given, multiplies the estimate (before the clamp).
at::Tensor approx_kl(const at::Tensor& logp, const at::Tensor& logp_base, const std::string& type,
                     const std::optional<at::Tensor>& importance_ratio = std::nullopt);

struct PolicyLossResult {
  at::Tensor loss;      // [R] per-token clipped policy-gradient loss
  at::Tensor clipfrac;  // [R] 1 where the clipped branch was taken
};

// PPO clipped surrogate with clip-higher and optional dual clip (eps_clip_c > 1).
// ppo_kl = old_logp - logp (ratio = exp(-ppo_kl)).
PolicyLossResult policy_loss(const at::Tensor& ppo_kl, const at::Tensor& advantages,
                             double eps_clip, double eps_clip_high,
                             std::optional<double> eps_clip_c = std::nullopt);

// Group normalisation of scalar rewards [N] in groups of G consecutive samples: subtract
// the group mean; with `divide_std` (GRPO/GSPO unless --disable-grpo-std-normalization)
// divide by (unbiased group std + 1e-6). N must be a multiple of G.
at::Tensor normalize_group_rewards(const at::Tensor& rewards, int64_t group_size, bool divide_std);

// REINFORCE++ returns for one sample: token rewards -kl_coef * kl, plus the scalar reward
// at the last unmasked token, discounted backwards with gamma. kl and loss_mask are [R].
at::Tensor reinforce_plus_plus_returns(double reward, const at::Tensor& kl,
                                       const at::Tensor& loss_mask, double kl_coef, double gamma);

// GAE (PPO) for one sample: values and token rewards [R] -> (advantages, returns).
std::pair<at::Tensor, at::Tensor> gae(const at::Tensor& values, const at::Tensor& rewards,
                                      double gamma, double lambd);

}  // namespace anvil::train

#include "backends/train/rl_math.hpp"

#include "backends/common/error.hpp"

#include <ATen/ATen.h>

namespace anvil::train {

at::Tensor approx_kl(const at::Tensor& logp, const at::Tensor& logp_base, const std::string& type,
                     const std::optional<at::Tensor>& importance_ratio) {
  at::Tensor log_ratio = logp.to(at::kFloat) - logp_base.to(at::kFloat);
  at::Tensor kl;
  if (type == "k1") {
    kl = log_ratio;
  } else if (type == "k2") {
    kl = log_ratio.pow(2) / 2.0;
  } else if (type == "k3" || type == "low_var_kl") {
    at::Tensor neg = -log_ratio;
    kl = neg.exp() - 1 - neg;
  } else {
    fail("--kl-loss-type '{}' is not supported (k1, k2, k3, low_var_kl)", type);
  }
  if (importance_ratio) kl = *importance_ratio * kl;
  if (type == "low_var_kl") kl = at::clamp(kl, -10, 10);
  return kl;
}

PolicyLossResult policy_loss(const at::Tensor& ppo_kl, const at::Tensor& advantages,
                             double eps_clip, double eps_clip_high,
                             std::optional<double> eps_clip_c) {
  at::Tensor ratio = (-ppo_kl).exp();
  at::Tensor loss1 = -ratio * advantages;
  at::Tensor loss2 = -ratio.clamp(1 - eps_clip, 1 + eps_clip_high) * advantages;
  at::Tensor clipped = at::maximum(loss1, loss2);
  PolicyLossResult r;
  r.clipfrac = at::gt(loss2, loss1).to(at::kFloat);
  if (eps_clip_c) {
    if (!(*eps_clip_c > 1.0))
      fail("--eps-clip-c must be > 1 for dual-clip PPO, got {}", *eps_clip_c);
    at::Tensor loss3 = -*eps_clip_c * advantages;
    r.loss = at::where(advantages < 0, at::minimum(loss3, clipped), clipped);
  } else {
    r.loss = clipped;
  }
  return r;
}

at::Tensor normalize_group_rewards(const at::Tensor& rewards, int64_t group_size, bool divide_std) {
  if (group_size <= 0 || rewards.numel() % group_size != 0) {
    fail("{} rewards do not split into groups of --n-samples-per-prompt {}", rewards.numel(),
         group_size);
  }
  at::Tensor g = rewards.to(at::kFloat).view({-1, group_size});  // [N/G, G]
  g = g - g.mean(-1, /*keepdim=*/true);
  if (divide_std) g = g / (g.std(-1, /*unbiased=*/true, /*keepdim=*/true) + 1e-6);
  return g.view({-1});
}

at::Tensor reinforce_plus_plus_returns(double reward, const at::Tensor& kl,
                                       const at::Tensor& loss_mask, double kl_coef, double gamma) {
  at::Tensor token_rewards = (-kl_coef * kl.to(at::kFloat)).contiguous();  // [R]
  at::Tensor idx = loss_mask.nonzero();
  if (idx.numel() == 0) fail("reinforce_plus_plus: a sample has no unmasked response token");
  int64_t last = idx[-1][0].item<int64_t>();
  token_rewards[last] += reward;
  at::Tensor returns = at::zeros_like(token_rewards);
  at::Tensor running = at::zeros({}, token_rewards.options());
  for (int64_t t = token_rewards.size(0) - 1; t >= 0; --t) {
    running = token_rewards[t] + gamma * running;
    returns[t] = running;
  }
  return returns;
}

std::pair<at::Tensor, at::Tensor> gae(const at::Tensor& values, const at::Tensor& rewards,
                                      double gamma, double lambd) {
  const int64_t R = values.size(0);
  if (rewards.size(0) != R) fail("gae: {} rewards for {} values", rewards.size(0), R);
  at::Tensor v = values.to(at::kDouble).to(at::kCPU), r = rewards.to(at::kDouble).to(at::kCPU);
  const double* vp = v.data_ptr<double>();
  const double* rp = r.data_ptr<double>();
  std::vector<double> adv(static_cast<size_t>(R));
  double last = 0.0;
  for (int64_t t = R - 1; t >= 0; --t) {
    double next = t < R - 1 ? vp[t + 1] : 0.0;
    double delta = rp[t] + gamma * next - vp[t];
    last = delta + gamma * lambd * last;
    adv[static_cast<size_t>(t)] = last;
  }
  at::Tensor advantages = at::tensor(adv, at::kDouble).to(values.options());
  return {advantages, advantages + values};
}

}  // namespace anvil::train

#include "backends/train/loss.hpp"

#include "backends/common/error.hpp"
#include "backends/train/rl_math.hpp"

#include <ATen/ATen.h>

#include <unordered_map>

namespace anvil::train {
namespace {

bool one_of(const std::string& v, std::initializer_list<const char*> options) {
  for (const char* o : options)
    if (v == o) return true;
  return false;
}

at::Tensor cat_or_empty(const std::vector<at::Tensor>& parts, const at::TensorOptions& opts) {
  if (parts.empty()) return at::empty({0}, opts);
  return parts.size() == 1 ? parts[0] : at::cat(parts, 0);
}

// Extremes over unmasked tokens (a metric combined by max/min, not summed).
at::Tensor masked_max(const at::Tensor& x, const at::Tensor& mask) {
  if (x.numel() == 0) return at::full({}, -INFINITY, x.options());
  return at::where(mask > 0, x, at::full({}, -INFINITY, x.options())).max();
}
at::Tensor masked_min(const at::Tensor& x, const at::Tensor& mask) {
  if (x.numel() == 0) return at::full({}, INFINITY, x.options());
  return at::where(mask > 0, x, at::full({}, INFINITY, x.options())).min();
}

}  // namespace

void validate(const LossOptions& o) {
  if (!one_of(o.loss_type, {"policy_loss", "sft_loss", "value_loss"}))
    fail("--loss-type '{}' is not supported (policy_loss, sft_loss, value_loss)", o.loss_type);
  if (!one_of(o.advantage_estimator, {"grpo", "gspo", "cispo", "reinforce_plus_plus",
                                      "reinforce_plus_plus_baseline", "ppo"}))
    fail(
        "--advantage-estimator '{}' is not supported (grpo, gspo, cispo, reinforce_plus_plus, "
        "reinforce_plus_plus_baseline, ppo)",
        o.advantage_estimator);
  if (!one_of(o.kl_loss_type, {"k1", "k2", "k3", "low_var_kl"}))
    fail("--kl-loss-type '{}' is not supported (k1, k2, k3, low_var_kl)", o.kl_loss_type);
  if (!(o.eps_clip >= 0)) fail("--eps-clip must be >= 0, got {}", o.eps_clip);
  if (!(o.eps_clip_high >= 0)) fail("--eps-clip-high must be >= 0, got {}", o.eps_clip_high);
  if (o.eps_clip_c && !(*o.eps_clip_c > 1.0))
    fail("--eps-clip-c must be > 1 for dual-clip PPO, got {}", *o.eps_clip_c);
  if (o.use_tis && !(o.tis_clip > o.tis_clip_low))
    fail("--tis-clip ({}) must exceed --tis-clip-low ({})", o.tis_clip, o.tis_clip_low);
  if (!(o.value_clip > 0)) fail("--value-clip must be > 0, got {}", o.value_clip);
}

std::vector<at::Tensor> reducer_weights(const std::vector<at::Tensor>& loss_masks,
                                        const std::vector<int64_t>& rollout_ids,
                                        int64_t num_rollouts, bool per_token) {
  if (!rollout_ids.empty() && rollout_ids.size() != loss_masks.size())
    fail("reducer_weights: {} rollout ids for {} samples", rollout_ids.size(), loss_masks.size());
  std::vector<double> sums;
  for (const at::Tensor& m : loss_masks) sums.push_back(m.to(at::kDouble).sum().item<double>());
  std::vector<at::Tensor> out;
  if (per_token) {
    double tokens = 0;
    for (double s : sums) tokens += std::max(s, 1.0);
    for (const at::Tensor& m : loss_masks) out.push_back(m.to(at::kFloat) / tokens);
    return out;
  }
  if (num_rollouts <= 0) fail("reducer_weights: {} rollouts", num_rollouts);
  std::unordered_map<int64_t, double> rollout_sum;
  for (size_t i = 0; i < sums.size(); ++i)
    rollout_sum[rollout_ids.empty() ? static_cast<int64_t>(i) : rollout_ids[i]] += sums[i];
  for (size_t i = 0; i < loss_masks.size(); ++i) {
    double denom =
        std::max(rollout_sum[rollout_ids.empty() ? static_cast<int64_t>(i) : rollout_ids[i]], 1.0);
    out.push_back(loss_masks[i].to(at::kFloat) / (denom * static_cast<double>(num_rollouts)));
  }
  return out;
}

LossOutput compute_loss(const LossOptions& o, const LossInputs& in) {
  const at::Tensor& w = in.weights;
  auto reduce = [&](const at::Tensor& x) { return (x * w).sum(); };
  LossOutput out;
  auto metric = [&](const char* name, const at::Tensor& v) {
    out.metrics.emplace_back(name, v.detach().to(at::kFloat));
  };

  if (o.loss_type == "sft_loss") {
    out.loss = -reduce(in.logprobs);
    metric("loss", out.loss);
    return out;
  }
  if (o.loss_type == "value_loss") {
    at::Tensor diff = in.values - in.old_values;
    at::Tensor clipped = in.old_values + diff.clamp(-o.value_clip, o.value_clip);
    at::Tensor loss = at::maximum((clipped - in.returns).pow(2), (in.values - in.returns).pow(2));
    out.loss = reduce(loss);
    metric("value_loss", out.loss);
    metric("value_clipfrac", reduce((diff.abs() > o.value_clip).to(at::kFloat)));
    return out;
  }
  const at::Tensor& logp = in.logprobs;
  at::Tensor old = o.use_rollout_logprobs ? in.rollout_logprobs : in.old_logprobs;
  if (o.use_rollout_logprobs && !old.defined())
    fail("--use-rollout-logprobs: the samples carry no rollout log-probs");
  if (!old.defined()) old = logp.detach();
  // TIS weights compare the trainer's pre-step log-probs with the engine's.
  at::Tensor train_for_tis = in.old_logprobs.defined() ? in.old_logprobs : logp.detach();

  at::Tensor ppo_kl;
  if (o.advantage_estimator == "gspo") {
    // Sequence-level ratio: each token carries its sample's masked mean of old - new.
    std::vector<at::Tensor> parts;
    int64_t off = 0;
    for (int64_t n : in.response_lengths) {
      at::Tensor m = in.loss_mask.narrow(0, off, n);
      at::Tensor kl =
          ((old.narrow(0, off, n) - logp.narrow(0, off, n)) * m).sum() / m.sum().clamp_min(1);
      parts.push_back(kl.expand({n}));
      off += n;
    }
    ppo_kl = cat_or_empty(parts, logp.options());
  } else {
    ppo_kl = old - logp;
  }

  at::Tensor pg_loss, pg_clipfrac;
  if (o.advantage_estimator == "cispo") {
    at::Tensor ratio = (-ppo_kl).exp();
    at::Tensor truncated = ratio.clamp(1.0 - o.eps_clip, 1.0 + o.eps_clip_high);
    pg_loss = -truncated.detach() * in.advantages * logp;
    pg_clipfrac = (truncated != ratio).to(at::kFloat);
  } else {
    PolicyLossResult r =
        policy_loss(ppo_kl, in.advantages, o.eps_clip, o.eps_clip_high, o.eps_clip_c);
    pg_loss = r.loss;
    pg_clipfrac = r.clipfrac;
  }

  at::Tensor ois;
  std::vector<std::pair<const char*, at::Tensor>> tis_metrics;
  if (o.use_tis || o.get_mismatch_metrics) {
    if (!in.rollout_logprobs.defined())
      fail("--use-tis / --get-mismatch-metrics: the samples carry no rollout log-probs");
    ois = (-ppo_kl).exp();
    at::Tensor tis = (train_for_tis - in.rollout_logprobs).exp();
    at::Tensor tis_weights = tis.clamp(o.tis_clip_low, o.tis_clip);
    tis_metrics = {{"tis", tis},
                   {"tis_clipfrac", (tis_weights != tis).to(at::kFloat)},
                   {"tis_abs", (tis - 1).abs()}};
    if (o.use_tis) pg_loss = pg_loss * tis_weights;
  }

  at::Tensor pg = reduce(pg_loss);
  at::Tensor entropy_loss = reduce(in.entropy);
  at::Tensor loss = pg - o.entropy_coef * entropy_loss;
  at::Tensor kl_loss;
  if (o.use_kl_loss) {
    if (!in.ref_logprobs.defined()) fail("--use-kl-loss: no reference log-probs for the samples");
    std::optional<at::Tensor> ratio;
    if (o.use_unbiased_kl) ratio = (logp - old).exp();
    kl_loss = reduce(approx_kl(logp, in.ref_logprobs, o.kl_loss_type, ratio));
    loss = loss + o.kl_loss_coef * kl_loss;
  }
  // Keep the graph connected when a micro-batch has no response token.
  if (logp.numel() == 0) loss = loss + 0 * logp.sum();
  out.loss = loss;

  metric("loss", loss);
  metric("pg_loss", pg);
  metric("entropy_loss", entropy_loss);
  metric("pg_clipfrac", reduce(pg_clipfrac));
  metric("ppo_kl", reduce(ppo_kl));
  if (o.use_kl_loss) metric("kl_loss", kl_loss);
  if (in.rollout_logprobs.defined()) {
    at::Tensor compare = o.use_rollout_logprobs ? logp : old;
    metric("train_rollout_logprob_abs_diff", reduce((compare - in.rollout_logprobs).abs()));
  }
  if (ois.defined()) {
    metric("ois", reduce(ois));
    for (auto& [name, v] : tis_metrics) metric(name, reduce(v));
  }
  at::Tensor ratio = (-ppo_kl).exp().detach();
  metric("ratio_max", masked_max(ratio, in.loss_mask));
  metric("ratio_min", masked_min(ratio, in.loss_mask));
  return out;
}

// ---------------------------------------------------------------------------------------

std::vector<double> post_process_rewards(const std::vector<double>& raw,
                                         const std::string& estimator, int64_t group_size,
                                         bool rewards_normalization, bool std_normalization) {
  const bool grouped = one_of(estimator, {"grpo", "gspo", "cispo", "reinforce_plus_plus_baseline"});
  if (!grouped || !rewards_normalization || raw.empty()) return raw;
  const bool divide = std_normalization && estimator != "reinforce_plus_plus_baseline";
  at::Tensor r = normalize_group_rewards(at::tensor(raw, at::kDouble), group_size, divide);
  r = r.to(at::kDouble).contiguous();
  return {r.data_ptr<double>(), r.data_ptr<double>() + r.numel()};
}

AdvantageResult compute_advantages(const AdvantageOptions& o, const AdvantageInputs& in) {
  const size_t n = in.rewards.size();
  if (in.loss_masks.size() != n)
    fail("advantages: {} loss masks for {} rewards", in.loss_masks.size(), n);
  AdvantageResult r;
  // Shape reference per sample: the log-probs, else the masks.
  auto shape_of = [&](size_t i) -> const at::Tensor& {
    return in.logprobs.size() == n ? in.logprobs[i] : in.loss_masks[i];
  };
  for (size_t i = 0; i < n; ++i) {
    if (o.kl_coef == 0 || in.logprobs.empty()) {
      r.kl.push_back(at::zeros(shape_of(i).sizes(), shape_of(i).options().dtype(at::kFloat)));
    } else {
      if (in.ref_logprobs.size() != n) fail("--kl-coef {}: no reference log-probs", o.kl_coef);
      r.kl.push_back(approx_kl(in.logprobs[i], in.ref_logprobs[i], o.kl_loss_type));
    }
  }
  const std::string& e = o.estimator;
  if (one_of(e, {"grpo", "gspo", "cispo"})) {
    for (size_t i = 0; i < n; ++i) r.returns.push_back(at::ones_like(r.kl[i]) * in.rewards[i]);
    r.advantages = r.returns;
  } else if (e == "reinforce_plus_plus") {
    for (size_t i = 0; i < n; ++i)
      r.returns.push_back(reinforce_plus_plus_returns(in.rewards[i], r.kl[i], in.loss_masks[i],
                                                      o.kl_coef, o.gamma));
    r.advantages = r.returns;
  } else if (e == "reinforce_plus_plus_baseline") {
    for (size_t i = 0; i < n; ++i)
      r.advantages.push_back(at::ones_like(r.kl[i]) * in.rewards[i] - o.kl_coef * r.kl[i]);
    r.returns = r.advantages;
  } else if (e == "ppo") {
    if (in.values.size() != n) fail("--advantage-estimator ppo needs critic values per sample");
    for (size_t i = 0; i < n; ++i) {
      at::Tensor token_rewards = (r.kl[i] * -o.kl_coef).contiguous();
      if (token_rewards.numel() > 0) token_rewards[-1] += in.rewards[i];
      auto [adv, ret] = gae(in.values[i], token_rewards, o.gamma, o.lambd);
      r.advantages.push_back(adv.to(at::kFloat));
      r.returns.push_back(ret.to(at::kFloat));
    }
  } else {
    fail("--advantage-estimator '{}' is not supported", e);
  }

  if (o.normalize_advantages && n > 0) {
    // Masked whitening over the whole rollout, Bessel-corrected, as distributed_masked_whiten.
    at::Tensor all = at::cat(r.advantages, 0);
    at::Tensor mask = at::cat(in.loss_masks, 0).to(all.options());
    double count = mask.sum().item<double>();
    if (count == 0) fail("--normalize-advantages: no unmasked response token in the rollout");
    at::Tensor mean = (all * mask).sum() / count;
    at::Tensor var = (all.pow(2) * mask).sum() / count - mean.pow(2);
    if (count >= 2) var = var * (count / (count - 1));
    at::Tensor white = (all - mean) * at::rsqrt(var + 1e-8);
    std::vector<int64_t> lens;
    for (const at::Tensor& a : r.advantages) lens.push_back(a.size(0));
    auto parts = white.split_with_sizes(lens, 0);
    r.advantages.assign(parts.begin(), parts.end());
  }
  return r;
}

}  // namespace anvil::train

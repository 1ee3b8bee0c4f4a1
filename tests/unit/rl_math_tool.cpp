// Test tool for backends/train/rl_math: reads JSONL requests, writes JSONL results with
// values and the gradients of sum(out * weights) (fp32), for the Python reference test.
#include "backends/common/error.hpp"
#include "backends/train/loss.hpp"
#include "backends/train/rl_math.hpp"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>
#include <torch/csrc/autograd/autograd.h>

#include <iostream>
#include <map>
#include <string>

using nlohmann::json;

namespace {
at::Tensor T(const json& j) { return at::tensor(j.get<std::vector<float>>(), at::kFloat); }
json J(const at::Tensor& t) {
  at::Tensor c = t.detach().to(at::kFloat).contiguous();
  return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
}
at::Tensor opt_T(const json& q, const char* key) {
  return q.contains(key) && !q[key].is_null() ? T(q[key]) : at::Tensor();
}
anvil::train::LossOptions loss_options(const json& o) {
  anvil::train::LossOptions l;
  l.loss_type = o.value("loss_type", l.loss_type);
  l.advantage_estimator = o.value("advantage_estimator", l.advantage_estimator);
  l.eps_clip = o.value("eps_clip", l.eps_clip);
  l.eps_clip_high = o.value("eps_clip_high", l.eps_clip_high);
  if (o.contains("eps_clip_c") && !o["eps_clip_c"].is_null())
    l.eps_clip_c = o["eps_clip_c"].get<double>();
  l.entropy_coef = o.value("entropy_coef", l.entropy_coef);
  l.use_kl_loss = o.value("use_kl_loss", l.use_kl_loss);
  l.kl_loss_coef = o.value("kl_loss_coef", l.kl_loss_coef);
  l.kl_loss_type = o.value("kl_loss_type", l.kl_loss_type);
  l.use_unbiased_kl = o.value("use_unbiased_kl", l.use_unbiased_kl);
  l.use_tis = o.value("use_tis", l.use_tis);
  l.tis_clip = o.value("tis_clip", l.tis_clip);
  l.tis_clip_low = o.value("tis_clip_low", l.tis_clip_low);
  l.use_rollout_logprobs = o.value("use_rollout_logprobs", l.use_rollout_logprobs);
  l.calculate_per_token_loss = o.value("calculate_per_token_loss", l.calculate_per_token_loss);
  l.get_mismatch_metrics = o.value("get_mismatch_metrics", l.get_mismatch_metrics);
  l.value_clip = o.value("value_clip", l.value_clip);
  return l;
}

// One optimizer step's loss over several micro-batches: returns the summed loss, the
// combined metrics and the gradients w.r.t. each sample's log-probs, entropy and values.
json step_loss(const json& q) {
  anvil::train::LossOptions o = loss_options(q["options"]);
  anvil::train::validate(o);
  const json& samples = q["samples"];
  std::vector<at::Tensor> lp, ent, val, masks;
  std::vector<int64_t> ids;
  for (const json& s : samples) {
    lp.push_back(T(s["logprobs"]).requires_grad_(true));
    ent.push_back(s.contains("entropy") ? T(s["entropy"]).requires_grad_(true)
                                        : at::zeros_like(lp.back()));
    val.push_back(s.contains("values") ? T(s["values"]).requires_grad_(true) : at::Tensor());
    masks.push_back(T(s["loss_mask"]));
    ids.push_back(s.value("rollout_id", static_cast<int64_t>(ids.size())));
  }
  auto weights =
      anvil::train::reducer_weights(masks, ids, q["num_rollouts"], o.calculate_per_token_loss);
  at::Tensor total = at::zeros({});
  std::map<std::string, double> metrics;
  for (const json& mb : q["micro_batches"]) {
    anvil::train::LossInputs in;
    std::vector<at::Tensor> parts[11];
    for (int64_t i : mb.get<std::vector<int64_t>>()) {
      const json& s = samples[static_cast<size_t>(i)];
      parts[0].push_back(lp[i]);
      parts[1].push_back(ent[i]);
      parts[2].push_back(opt_T(s, "old_logprobs"));
      parts[3].push_back(opt_T(s, "rollout_logprobs"));
      parts[4].push_back(opt_T(s, "ref_logprobs"));
      parts[5].push_back(opt_T(s, "advantages"));
      parts[6].push_back(masks[i]);
      parts[7].push_back(weights[i]);
      parts[8].push_back(val[i]);
      parts[9].push_back(opt_T(s, "old_values"));
      parts[10].push_back(opt_T(s, "returns"));
      in.response_lengths.push_back(lp[i].numel());
    }
    auto cat = [](const std::vector<at::Tensor>& v) {
      for (const auto& t : v)
        if (!t.defined()) return at::Tensor();
      return at::cat(v, 0);
    };
    in.logprobs = cat(parts[0]);
    in.entropy = cat(parts[1]);
    in.old_logprobs = cat(parts[2]);
    in.rollout_logprobs = cat(parts[3]);
    in.ref_logprobs = cat(parts[4]);
    in.advantages = cat(parts[5]);
    in.loss_mask = cat(parts[6]);
    in.weights = cat(parts[7]);
    in.values = cat(parts[8]);
    in.old_values = cat(parts[9]);
    in.returns = cat(parts[10]);
    auto out = anvil::train::compute_loss(o, in);
    total = total + out.loss;
    for (auto& [name, v] : out.metrics) {
      double x = v.item<double>();
      auto it = metrics.find(name);
      if (it == metrics.end())
        metrics[name] = x;
      else if (name.ends_with("_max"))
        it->second = std::max(it->second, x);
      else if (name.ends_with("_min"))
        it->second = std::min(it->second, x);
      else
        it->second += x;
    }
  }
  std::vector<at::Tensor> wrt;
  for (size_t i = 0; i < lp.size(); ++i) {
    wrt.push_back(lp[i]);
    wrt.push_back(ent[i]);
    if (val[i].defined()) wrt.push_back(val[i]);
  }
  auto g = torch::autograd::grad({total}, wrt, {}, false, false, /*allow_unused=*/true);
  json grads = json::array();
  size_t k = 0;
  for (size_t i = 0; i < lp.size(); ++i) {
    json gi;
    gi["logprobs"] = g[k].defined() ? J(g[k]) : J(at::zeros_like(lp[i]));
    ++k;
    gi["entropy"] = g[k].defined() ? J(g[k]) : J(at::zeros_like(lp[i]));
    ++k;
    if (val[i].defined()) {
      gi["values"] = g[k].defined() ? J(g[k]) : J(at::zeros_like(val[i]));
      ++k;
    }
    grads.push_back(gi);
  }
  return {{"loss", total.item<double>()}, {"metrics", metrics}, {"grads", grads}};
}

json advantages(const json& q) {
  anvil::train::AdvantageOptions o;
  const json& j = q["options"];
  o.estimator = j.value("estimator", o.estimator);
  o.kl_coef = j.value("kl_coef", o.kl_coef);
  o.kl_loss_type = j.value("kl_loss_type", o.kl_loss_type);
  o.gamma = j.value("gamma", o.gamma);
  o.lambd = j.value("lambd", o.lambd);
  o.normalize_advantages = j.value("normalize_advantages", o.normalize_advantages);
  std::vector<double> raw = q["raw_rewards"];
  anvil::train::AdvantageInputs in;
  in.rewards = anvil::train::post_process_rewards(raw, o.estimator, q["group_size"],
                                                  j.value("rewards_normalization", true),
                                                  j.value("grpo_std_normalization", true));
  for (const json& s : q["samples"]) {
    in.logprobs.push_back(T(s["logprobs"]));
    if (s.contains("ref_logprobs")) in.ref_logprobs.push_back(T(s["ref_logprobs"]));
    if (s.contains("values")) in.values.push_back(T(s["values"]));
    in.loss_masks.push_back(T(s["loss_mask"]));
  }
  auto r = anvil::train::compute_advantages(o, in);
  json adv = json::array(), ret = json::array();
  for (size_t i = 0; i < r.advantages.size(); ++i) {
    adv.push_back(J(r.advantages[i]));
    ret.push_back(J(r.returns[i]));
  }
  return {{"rewards", in.rewards}, {"advantages", adv}, {"returns", ret}};
}

at::Tensor grad_of(const at::Tensor& out, const at::Tensor& weights, const at::Tensor& input) {
  return torch::autograd::grad({(out * weights).sum()}, {input})[0];
}
}  // namespace

int main() {
  std::string line;
  while (std::getline(std::cin, line)) {
    json q = json::parse(line), r;
    const std::string op = q["op"];
    try {
      if (op == "step_loss") {
        r = step_loss(q);
      } else if (op == "advantages") {
        r = advantages(q);
      } else if (op == "policy_loss") {
        at::Tensor kl = T(q["ppo_kl"]).requires_grad_(true);
        std::optional<double> c;
        if (!q["eps_clip_c"].is_null()) c = q["eps_clip_c"].get<double>();
        auto res =
            anvil::train::policy_loss(kl, T(q["advantages"]), q["eps_clip"], q["eps_clip_high"], c);
        r = {{"loss", J(res.loss)},
             {"clipfrac", J(res.clipfrac)},
             {"grad", J(grad_of(res.loss, T(q["weights"]), kl))}};
      } else if (op == "kl") {
        at::Tensor lp = T(q["logp"]).requires_grad_(true);
        std::optional<at::Tensor> ir;
        if (!q["importance_ratio"].is_null()) ir = T(q["importance_ratio"]);
        at::Tensor kl = anvil::train::approx_kl(lp, T(q["logp_base"]), q["type"], ir);
        r = {{"kl", J(kl)}, {"grad", J(grad_of(kl, T(q["weights"]), lp))}};
      } else if (op == "group_norm") {
        r = {{"out", J(anvil::train::normalize_group_rewards(T(q["rewards"]), q["group_size"],
                                                             q["divide_std"]))}};
      } else if (op == "rpp") {
        r = {{"out", J(anvil::train::reinforce_plus_plus_returns(
                         q["reward"], T(q["kl"]), T(q["mask"]), q["kl_coef"], q["gamma"]))}};
      } else if (op == "gae") {
        auto [adv, ret] =
            anvil::train::gae(T(q["values"]), T(q["rewards"]), q["gamma"], q["lambd"]);
        r = {{"adv", J(adv)}, {"ret", J(ret)}};
      }
    } catch (const anvil::Error& e) {
      r = {{"error", e.what()}};
    }
    std::cout << r.dump() << "\n";
  }
  return 0;
}

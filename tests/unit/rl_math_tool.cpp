// Test tool for backends/train/rl_math: reads JSONL requests, writes JSONL results with
// values and the gradients of sum(out * weights) (fp32), for the Python reference test.
#include "backends/common/error.hpp"
#include "backends/train/rl_math.hpp"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>
#include <torch/csrc/autograd/autograd.h>

#include <iostream>
#include <string>

using nlohmann::json;

namespace {
at::Tensor T(const json& j) { return at::tensor(j.get<std::vector<float>>(), at::kFloat); }
json J(const at::Tensor& t) {
  at::Tensor c = t.detach().to(at::kFloat).contiguous();
  return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
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
      if (op == "policy_loss") {
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

#include "backends/train/optimizer.hpp"

#include "backends/common/error.hpp"

#include <ATen/ATen.h>

#include <cmath>

namespace anvil::train {

double scheduled_lr(const OptimizerOptions& o, int64_t num_steps) {
  const double init_lr = 0.0;
  if (o.lr_decay_style != "constant" && o.lr_decay_style != "linear" &&
      o.lr_decay_style != "cosine") {
    fail("--lr-decay-style '{}' is not supported (constant, linear, cosine)", o.lr_decay_style);
  }
  if (o.lr_warmup_iters > 0 && num_steps <= o.lr_warmup_iters) {
    return init_lr + (o.lr - init_lr) * static_cast<double>(num_steps) /
                         static_cast<double>(o.lr_warmup_iters);
  }
  if (o.lr_decay_style == "constant") return o.lr;
  if (o.lr_decay_iters <= o.lr_warmup_iters) {
    fail("--lr-decay-style {} needs --lr-decay-iters ({}) greater than --lr-warmup-iters ({})",
         o.lr_decay_style, o.lr_decay_iters, o.lr_warmup_iters);
  }
  if (num_steps > o.lr_decay_iters) return o.min_lr;
  const double ratio = static_cast<double>(num_steps - o.lr_warmup_iters) /
                       static_cast<double>(o.lr_decay_iters - o.lr_warmup_iters);
  const double coeff =
      o.lr_decay_style == "linear" ? 1.0 - ratio : 0.5 * (std::cos(M_PI * ratio) + 1.0);
  return o.min_lr + coeff * (o.lr - o.min_lr);
}

AdamW::AdamW(std::vector<at::Tensor> params, OptimizerOptions options)
    : params_(std::move(params)), options_(std::move(options)) {
  scheduled_lr(options_, 0);  // validates the schedule up front
  at::NoGradGuard no_grad;
  for (const at::Tensor& p : params_) {
    if (!p.is_floating_point())
      fail("AdamW: parameter of dtype {} is not floating point", c10::toString(p.scalar_type()));
    master_.push_back(p.scalar_type() == at::kFloat ? p : p.detach().to(at::kFloat).clone());
    exp_avg_.push_back(at::zeros(p.sizes(), p.options().dtype(at::kFloat)));
    exp_avg_sq_.push_back(at::zeros(p.sizes(), p.options().dtype(at::kFloat)));
  }
}

at::Tensor offload_copy(const at::Tensor& t, const at::Device& device) {
  if (!(device.is_cpu() && t.is_cuda())) return t.to(device);
  at::Tensor out = at::empty(t.sizes(), t.options().device(at::kCPU).pinned_memory(true));
  out.copy_(t);
  return out;
}

void AdamW::move_state_to(const at::Device& device) {
  at::NoGradGuard no_grad;
  for (size_t i = 0; i < params_.size(); ++i) {
    for (at::Tensor* t : {&master_[i], &exp_avg_[i], &exp_avg_sq_[i]}) {
      if (t->is_same(params_[i]) || t->device() == device) continue;
      t->set_data(offload_copy(*t, device));
    }
  }
}

void AdamW::load_state(int64_t steps, const std::vector<at::Tensor>& master,
                       const std::vector<at::Tensor>& exp_avg,
                       const std::vector<at::Tensor>& exp_avg_sq) {
  if (steps < 0) fail("optimizer state: step count {} is negative", steps);
  const size_t n = params_.size();
  if (master.size() != n || exp_avg.size() != n || exp_avg_sq.size() != n) {
    fail("optimizer state holds {}/{}/{} tensors for {} parameters", master.size(), exp_avg.size(),
         exp_avg_sq.size(), n);
  }
  at::NoGradGuard no_grad;
  for (size_t i = 0; i < n; ++i) {
    for (const at::Tensor* t : {&master[i], &exp_avg[i], &exp_avg_sq[i]}) {
      if (!t->defined() || t->sizes() != params_[i].sizes())
        fail("optimizer state: tensor {} has shape [{}], parameter has [{}]", i,
             t->defined() ? fmt::format("{}", fmt::join(t->sizes(), ", ")) : "undefined",
             fmt::join(params_[i].sizes(), ", "));
    }
    master_[i].copy_(master[i]);
    exp_avg_[i].copy_(exp_avg[i]);
    exp_avg_sq_[i].copy_(exp_avg_sq[i]);
    if (!master_[i].is_same(params_[i])) params_[i].copy_(master_[i]);
  }
  steps_ = steps;
}

void AdamW::zero_grad() {
  for (at::Tensor& p : params_) {
    if (p.grad().defined()) p.mutable_grad() = at::Tensor();
  }
}

StepStats AdamW::step() {
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> grads(params_.size());
  at::Tensor total = at::zeros({}, at::kDouble);
  for (size_t i = 0; i < params_.size(); ++i) {
    if (!params_[i].grad().defined()) continue;
    grads[i] = params_[i].grad().to(at::kFloat);
    total += grads[i].pow(2).sum().to(at::kCPU, at::kDouble);
  }
  double sq = total.item<double>();
  if (norm_reducer_) sq = norm_reducer_(sq);
  StepStats stats{std::sqrt(sq), scheduled_lr(options_, steps_)};
  if (!std::isfinite(stats.grad_norm)) {
    fail("AdamW: gradient norm is {} at step {}; update skipped", stats.grad_norm, steps_);
  }
  double clip = 1.0;
  if (options_.clip_grad > 0) clip = std::min(1.0, options_.clip_grad / (stats.grad_norm + 1e-6));
  const int64_t t = steps_ + 1;
  const double b1 = options_.adam_beta1, b2 = options_.adam_beta2;
  const double bias1 = 1.0 - std::pow(b1, static_cast<double>(t));
  const double bias2_sqrt = std::sqrt(1.0 - std::pow(b2, static_cast<double>(t)));
  for (size_t i = 0; i < params_.size(); ++i) {
    if (!grads[i].defined()) continue;
    at::Tensor g = clip < 1.0 ? grads[i] * clip : grads[i];
    at::Tensor& w = master_[i];
    if (options_.weight_decay != 0 && w.dim() >= 2) w.mul_(1.0 - stats.lr * options_.weight_decay);
    exp_avg_[i].lerp_(g, 1.0 - b1);
    exp_avg_sq_[i].mul_(b2).addcmul_(g, g, 1.0 - b2);
    at::Tensor denom = (exp_avg_sq_[i].sqrt() / bias2_sqrt).add_(options_.adam_eps);
    w.addcdiv_(exp_avg_[i], denom, -stats.lr / bias1);
    if (!w.is_same(params_[i])) params_[i].copy_(w);
  }
  ++steps_;
  return stats;
}

}  // namespace anvil::train

// AdamW with fp32 master weights, global grad-norm clipping, and Megatron's learning-rate
// schedule (the one slime uses), for parameters of any floating dtype.
//
// As Megatron's default parameter groups: weight decay applies to tensors of two or more
// dimensions only (not to biases or norm weights). When a parameter is not fp32 the
// optimizer keeps an fp32 master copy, steps it, and writes it back rounded.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace anvil::train {

struct OptimizerOptions {
  double lr = 1e-6;                         // --lr (peak)
  double min_lr = 0.0;                      // --min-lr
  std::string lr_decay_style = "constant";  // --lr-decay-style constant | linear | cosine
  int64_t lr_warmup_iters = 0;              // --lr-warmup-iters (warmup starts from 0)
  int64_t lr_decay_iters = 0;               // steps over which linear/cosine decay to min_lr
  double weight_decay = 0.0;                // --weight-decay
  double adam_beta1 = 0.9;
  double adam_beta2 = 0.999;
  double adam_eps = 1e-8;
  double clip_grad = 1.0;  // --clip-grad; <= 0 disables clipping
};

// Megatron's OptimizerParamScheduler.get_lr for `num_steps` completed optimizer steps.
// Throws anvil::Error for an unknown decay style or a decay without --lr-decay-iters.
double scheduled_lr(const OptimizerOptions& options, int64_t num_steps);

struct StepStats {
  double grad_norm;  // global L2 norm of the gradients before clipping
  double lr;         // learning rate used for this step
};

// `t` copied to `device` for colocated offload: into pinned host memory when it leaves a
// CUDA device (so onload copies run at full PCIe speed), a plain copy otherwise.
at::Tensor offload_copy(const at::Tensor& t, const at::Device& device);

class AdamW {
 public:
  // `params` are leaf tensors with requires_grad; the optimizer keeps handles to them.
  AdamW(std::vector<at::Tensor> params, OptimizerOptions options);

  // Clips gradients to clip_grad (global norm), applies one AdamW update, and advances the
  // schedule. Parameters without a gradient are skipped. Not thread-safe.
  StepStats step();
  void zero_grad();
  int64_t steps() const { return steps_; }
  // For sharded parameters: maps this rank's sum of squared gradients to the global sum
  // (an all-reduce), so clipping uses the norm of the whole model.
  void set_grad_norm_reducer(std::function<double(double)> reducer) {
    norm_reducer_ = std::move(reducer);
  }
  const std::vector<at::Tensor>& parameters() const { return params_; }
  const OptimizerOptions& options() const { return options_; }

  // State for checkpoints: fp32 master weights (the parameters themselves when fp32) and
  // the two moment estimates, in parameter order.
  const std::vector<at::Tensor>& master_weights() const { return master_; }
  const std::vector<at::Tensor>& exp_avg() const { return exp_avg_; }
  const std::vector<at::Tensor>& exp_avg_sq() const { return exp_avg_sq_; }
  // Moves the fp32 masters and moments to `device` in place (tensor identities stay; pinned
  // host memory when moving off a CUDA device), for colocated offload. Parameters are the
  // caller's to move.
  void move_state_to(const at::Device& device);

  // Restores a saved state (same shapes, copied in place; the parameters are set from the
  // masters). Throws anvil::Error naming the tensor on a count or shape mismatch.
  void load_state(int64_t steps, const std::vector<at::Tensor>& master,
                  const std::vector<at::Tensor>& exp_avg,
                  const std::vector<at::Tensor>& exp_avg_sq);

 private:
  std::vector<at::Tensor> params_;
  std::vector<at::Tensor> master_;  // fp32 copies (aliases of params_ when fp32)
  std::vector<at::Tensor> exp_avg_, exp_avg_sq_;
  OptimizerOptions options_;
  int64_t steps_ = 0;
  std::function<double(double)> norm_reducer_;
};

}  // namespace anvil::train

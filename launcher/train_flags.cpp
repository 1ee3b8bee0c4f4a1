#include "launcher/train_flags.hpp"

#include "backends/common/error.hpp"

#include <CLI/CLI.hpp>

namespace anvil::launcher {

void add_train_flags(CLI::App& cmd, train::TrainerOptions& o) {
  auto& opt = o.optimizer;
  cmd.add_option("--lr", opt.lr, "Peak learning rate")->capture_default_str();
  cmd.add_option("--min-lr", opt.min_lr, "Learning rate at the end of decay")
      ->capture_default_str();
  cmd.add_option("--lr-decay-style", opt.lr_decay_style, "constant | linear | cosine")
      ->capture_default_str();
  cmd.add_option("--lr-warmup-iters", opt.lr_warmup_iters, "Linear warm-up steps from 0")
      ->capture_default_str();
  cmd.add_option("--lr-decay-iters", opt.lr_decay_iters,
                 "Steps of linear/cosine decay (default: the run's steps)");
  cmd.add_option("--weight-decay", opt.weight_decay, "AdamW weight decay (matrices only)")
      ->capture_default_str();
  cmd.add_option("--adam-beta1", opt.adam_beta1)->capture_default_str();
  cmd.add_option("--adam-beta2", opt.adam_beta2)->capture_default_str();
  cmd.add_option("--adam-eps", opt.adam_eps)->capture_default_str();
  cmd.add_option("--clip-grad", opt.clip_grad, "Global gradient-norm clip (<= 0: off)")
      ->capture_default_str();

  auto& s = o.schedule;
  cmd.add_option("--global-batch-size", s.global_batch_size,
                 "Rollouts (samples) per optimizer step")
      ->capture_default_str();
  cmd.add_option("--micro-batch-size", s.micro_batch_size, "Samples per micro-batch (static)")
      ->capture_default_str();
  cmd.add_flag("--use-dynamic-batch-size", s.use_dynamic_batch_size,
               "Pack micro-batches by --max-tokens-per-gpu");
  cmd.add_option("--max-tokens-per-gpu", s.max_tokens_per_gpu, "Token cap of a micro-batch");

  auto& l = o.loss;
  cmd.add_option("--loss-type", l.loss_type, "policy_loss | sft_loss | value_loss")
      ->capture_default_str();
  cmd.add_option("--advantage-estimator", l.advantage_estimator,
                 "grpo | gspo | cispo | reinforce_plus_plus | reinforce_plus_plus_baseline | ppo")
      ->capture_default_str();
  cmd.add_option("--eps-clip", l.eps_clip)->capture_default_str();
  cmd.add_option("--eps-clip-high", l.eps_clip_high, "Upper clip (default: --eps-clip)");
  cmd.add_option_function<double>(
      "--eps-clip-c", [&l](const double& v) { l.eps_clip_c = v; }, "Dual-clip bound (> 1)");
  cmd.add_option("--entropy-coef", l.entropy_coef)->capture_default_str();
  cmd.add_flag("--use-kl-loss", l.use_kl_loss);
  cmd.add_option("--kl-loss-coef", l.kl_loss_coef)->capture_default_str();
  cmd.add_option("--kl-loss-type", l.kl_loss_type, "k1 | k2 | k3 | low_var_kl")
      ->capture_default_str();
  cmd.add_flag("--use-unbiased-kl", l.use_unbiased_kl);
  cmd.add_option("--kl-coef", o.advantage.kl_coef, "KL as reward shaping")->capture_default_str();
  cmd.add_flag("--use-tis", l.use_tis, "Truncated importance sampling vs rollout log-probs");
  cmd.add_option("--tis-clip", l.tis_clip)->capture_default_str();
  cmd.add_option("--tis-clip-low", l.tis_clip_low)->capture_default_str();
  cmd.add_flag("--use-rollout-logprobs", l.use_rollout_logprobs);
  cmd.add_flag("--get-mismatch-metrics", l.get_mismatch_metrics);
  cmd.add_flag("--calculate-per-token-loss", l.calculate_per_token_loss);
  cmd.add_option("--value-clip", l.value_clip)->capture_default_str();
  cmd.add_option("--gamma", o.advantage.gamma)->capture_default_str();
  cmd.add_option("--lambd", o.advantage.lambd)->capture_default_str();
  cmd.add_flag("--normalize-advantages", o.advantage.normalize_advantages);

  cmd.add_option("--rollout-temperature", o.temperature, "Log-probs of logits / T")
      ->capture_default_str();
  cmd.add_option("--log-probs-chunk-size", o.log_probs_chunk_size,
                 "Rows of logits materialised at once (-1: all)")
      ->capture_default_str();
  cmd.add_flag("--gradient-checkpointing", o.gradient_checkpointing,
               "Recompute each decoder layer in backward");
}

void finish_train_flags(CLI::App& cmd, train::TrainerOptions& o, int64_t train_iters) {
  if (cmd.count("--eps-clip-high") == 0) o.loss.eps_clip_high = o.loss.eps_clip;
  o.advantage.kl_loss_type = o.loss.kl_loss_type;
  o.advantage.estimator = o.loss.advantage_estimator;
  if (cmd.count("--lr-decay-iters") == 0) o.optimizer.lr_decay_iters = train_iters;
  if (o.optimizer.lr_decay_style != "constant" && o.optimizer.lr_decay_iters <= 0)
    fail("--lr-decay-style {} needs --lr-decay-iters (or a known number of steps)",
         o.optimizer.lr_decay_style);
  if (o.schedule.use_dynamic_batch_size && o.schedule.max_tokens_per_gpu <= 0)
    fail("--use-dynamic-batch-size needs --max-tokens-per-gpu");
  train::validate(o.loss);
  train::scheduled_lr(o.optimizer, 0);
}

}  // namespace anvil::launcher

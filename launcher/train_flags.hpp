// The training-engine flags (slime's names), registered on any subcommand that trains.
// Defaults live in train::TrainerOptions and its parts; this file only maps names to them.
#pragma once

#include "backends/train/trainer.hpp"

namespace CLI {
class App;
}

namespace anvil::launcher {

// Optimizer (--lr --min-lr --lr-decay-style --lr-warmup-iters --lr-decay-iters
// --weight-decay --adam-beta1 --adam-beta2 --adam-eps --clip-grad), batching
// (--global-batch-size --micro-batch-size --use-dynamic-batch-size --max-tokens-per-gpu),
// losses (--loss-type --advantage-estimator --eps-clip --eps-clip-high --eps-clip-c
// --entropy-coef --use-kl-loss --kl-loss-coef --kl-loss-type --use-unbiased-kl --kl-coef
// --use-tis --tis-clip --tis-clip-low --use-rollout-logprobs --get-mismatch-metrics
// --calculate-per-token-loss --value-clip --gamma --lambd --normalize-advantages
// --disable-grpo-std-normalization), --rollout-temperature, --log-probs-chunk-size,
// --gradient-checkpointing.
void add_train_flags(CLI::App& cmd, train::TrainerOptions& options);

// Settles flags that depend on each other once parsing is done (--eps-clip-high defaults
// to --eps-clip, --kl-loss-type also estimates --kl-coef's KL, --lr-decay-iters defaults
// to `train_iters`) and validates them; throws anvil::Error naming the flag.
void finish_train_flags(CLI::App& cmd, train::TrainerOptions& options, int64_t train_iters);

}  // namespace anvil::launcher

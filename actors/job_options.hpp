// What a job runs: the options every role process is started with. The launcher fills it
// from flags (launcher/job_flags.cpp: slime's names, one definition of each default) and
// forwards the same flags to every `anvil actor` it spawns.
#pragma once

#include "backends/train/trainer.hpp"
#include "rollout/data/prompt_source.hpp"
#include "rollout/eval/evaluate.hpp"
#include "rollout/reward/reward.hpp"
#include "runtime/placement.hpp"

#include <cstdint>
#include <string>

namespace anvil::actors {

struct RolloutOptions {
  int64_t rollout_batch_size = 4;    // --rollout-batch-size: prompts per rollout
  int64_t n_samples_per_prompt = 2;  // --n-samples-per-prompt
  int64_t max_response_len = 16;     // --rollout-max-response-len
  double top_p = 1.0;                // --rollout-top-p
  int64_t top_k = 0;                 // --rollout-top-k (0 = off)
  uint64_t sampling_seed = 0;        // --rollout-sampling-seed
  // Dynamic sampling (slime): rounds of --over-sampling-batch-size prompts (0: the rollout
  // batch) until --rollout-batch-size groups pass the filter; the one filter is
  // check_reward_nonzero_std (slime's full Python path is accepted too).
  int64_t over_sampling_batch_size = 0;  // --over-sampling-batch-size
  std::string dynamic_sampling_filter;   // --dynamic-sampling-filter-path
  // Path templates with {rollout_id} (and {engine} when there are several engines): each
  // engine writes the samples it sends (JSONL), or reads them instead of generating.
  std::string save_debug_rollout_data;  // --save-debug-rollout-data
  std::string load_debug_rollout_data;  // --load-debug-rollout-data
};

// Held-out evaluation in the loop (slime's flags): before training (unless
// --skip-eval-before-train) and after every --eval-interval rollouts and the last one, each
// rollout engine evaluates its share of --eval-prompt-data (rollout/eval) and the head
// combines the answers into eval/NAME/accuracy, pass@k, mean_reward, ... metrics.
struct EvalJobOptions {
  int64_t interval = 0;                  // --eval-interval (0 = off)
  std::vector<std::string> prompt_data;  // --eval-prompt-data PATH | NAME PATH
  bool skip_before_train = false;        // --skip-eval-before-train
  eval::EvalOptions options;             // --n-samples-per-eval-prompt, --eval-* (below)
  double temperature = -1;               // --eval-temperature (< 0: --rollout-temperature)
  int64_t max_response_len = 0;          // --eval-max-response-len (0: the rollout's)
  std::string name() const { return prompt_data.size() == 2 ? prompt_data[0] : "eval"; }
  std::string path() const { return prompt_data.empty() ? "" : prompt_data.back(); }
};

struct JobOptions {
  std::string model;              // --model: HF directory (policy, reference and engines)
  std::string dtype = "float32";  // --dtype
  std::string device = "cpu";     // --device: cpu | cuda | cuda:N, in every role process
  data::DataOptions data;
  train::TrainerOptions train;
  RolloutOptions rollout;
  EvalJobOptions eval;
  reward::RewardOptions reward;  // --rm-type --rm-url --reward-key
  runtime::PlacementRequest placement;
  std::string train_backend = "fsdp";  // --train-backend fsdp|megatron
  // --train-backend megatron (backends/megatron): the train group of W ranks is a TP x DP
  // mesh; pipeline parallelism is not implemented (pp must be 1).
  int tensor_model_parallel_size = 1;    // --tensor-model-parallel-size
  int pipeline_model_parallel_size = 1;  // --pipeline-model-parallel-size
  bool sequence_parallel = false;        // --sequence-parallel
  int64_t num_rollout = 1;               // --num-rollout
  // --update-weights-interval: with --async (anvil train-async), rollouts between weight
  // pushes to the engines (the synchronous loop pushes after every rollout).
  int64_t update_weights_interval = 1;
  std::string save;           // --save: checkpoint directory (train rank 0)
  int64_t save_interval = 0;  // --save-interval: rollouts between checkpoints
  std::string metrics_jsonl;  // --metrics-jsonl: per-step metrics (the head writes)
  // The head's other metrics sinks (runtime/metrics/metrics_hub.hpp MetricsOptions).
  bool use_tensorboard = false;                 // --use-tensorboard
  std::string tensorboard_dir;                  // --tensorboard-dir (with --use-tensorboard)
  int dashboard_port = -1;                      // --dashboard-port: -1 off, 0 any free port
  std::string dashboard_host = "127.0.0.1";     // --dashboard-host
  int64_t transfer_timeout_ms = 600000;         // --transfer-timeout-ms: gRPC deadline and waits
  bool disable_rewards_normalization = false;   // --disable-rewards-normalization
  bool disable_grpo_std_normalization = false;  // --disable-grpo-std-normalization
  // Train group of W > 1 ranks (FSDP over c10d): rank 0 hosts the rendezvous store here.
  std::string dist_master_addr = "127.0.0.1";  // --dist-master-addr
  int dist_master_port = 0;                    // --dist-master-port (0: anvil head picks one)
  bool reshard_after_forward = true;           // --reshard-after-forward / --no-reshard-...
  bool fsdp_cpu_offload = false;               // --fsdp-cpu-offload
  int64_t update_weight_buffer_size = int64_t{512} << 20;  // --update-weight-buffer-size

  // Resume (actors/resume_state.hpp). --load: continue from the checkpoint in this directory
  // (model, AdamW, LR step, RNG, the rollout engines' data cursors, the rollout id);
  // --ckpt-step: that iteration instead of the latest. --seed: LibTorch's RNG in the train
  // ranks (slime's default; a checkpoint keeps the RNG state).
  std::string load;
  int64_t ckpt_step = -1;
  bool finetune = false;  // --finetune: --load's weights only (Megatron's flag), rollout 0
  uint64_t seed = 1234;
  // --ref-load: the reference model (KL loss / KL reward shaping) from this HF directory or
  // checkpoint directory (its latest iteration's model/) instead of --model; e.g. RL after
  // SFT with the SFT weights as the KL anchor (seed 002).
  std::string ref_load;

  // slime's debug switches. --debug-rollout-only: only the rollout engines run (no train,
  // reference or weight-sync role); the weights never change, the samples go to
  // --save-debug-rollout-data and the metrics. --debug-train-only: no inference engine is
  // started; the rollout roles only read --load-debug-rollout-data (RL) and no weights are
  // pushed; in SFT mode it is what --loss-type sft_loss does anyway.
  bool debug_rollout_only = false;
  bool debug_train_only = false;
  // --disable-compute-advantages-and-returns: slime's SFT switch (the loss uses no
  // advantages); accepted with --loss-type sft_loss, where it holds anyway.
  bool disable_compute_advantages_and_returns = false;

  // The reference model is needed for the KL loss or KL reward shaping.
  bool use_ref() const { return train.loss.use_kl_loss || train.advantage.kl_coef != 0.0; }
};

}  // namespace anvil::actors

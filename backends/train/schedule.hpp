// How one rollout's samples become optimizer steps and micro-batches (slime's
// dp_schedule: pack first, distribute second). Torch-free.
//
// 1. Samples are grouped by rollout id (several samples of one agentic rollout stay in
//    one step); steps take `global_batch_size` rollouts each, in order. Trailing rollouts
//    that do not fill a step are dropped (and counted), as slime does.
// 2. Each step's samples are packed into micro-batches: first-fit by total tokens under
//    `max_tokens_per_gpu` (--use-dynamic-batch-size), or fixed runs of `micro_batch_size`.
//    A sample longer than the cap gets a micro-batch of its own.
// 3. The micro-batch count is raised to a multiple of `dp_size` by splitting the largest
//    multi-sample micro-batches into token-balanced halves (dynamic only; a static
//    schedule that does not divide is an error naming the flags).
// 4. Micro-batches go to ranks balanced by token count, the same number per rank:
//    largest first, each to the rank with the fewest tokens that still has room.
#pragma once

#include <cstdint>
#include <vector>

namespace anvil::train {

struct ScheduleOptions {
  int64_t global_batch_size = 1;  // --global-batch-size: rollouts per optimizer step
  bool use_dynamic_batch_size = false;
  int64_t max_tokens_per_gpu = 0;  // --max-tokens-per-gpu (dynamic)
  int64_t micro_batch_size = 1;    // --micro-batch-size (static)
  int64_t dp_size = 1;             // data-parallel ranks sharing a step
};

struct StepSchedule {
  int64_t num_rollouts = 0;      // rollouts in this step (the per-sample loss denominator)
  std::vector<int64_t> samples;  // every sample of the step, in rollout order
  // micro_batches[rank][k] = sample indices (into the rollout) of rank's k-th micro-batch.
  std::vector<std::vector<std::vector<int64_t>>> micro_batches;
};

struct Schedule {
  std::vector<StepSchedule> steps;
  int64_t dropped_samples = 0;  // samples of trailing rollouts that did not fill a step
};

// `total_lengths[i]` = prompt + response tokens of sample i; `rollout_ids[i]` its rollout
// (empty: every sample is its own rollout). Throws anvil::Error on bad options, fewer
// rollouts than one step, or a step that cannot give every rank a micro-batch.
Schedule build_schedule(const std::vector<int64_t>& total_lengths,
                        const std::vector<int64_t>& rollout_ids, const ScheduleOptions& options);

}  // namespace anvil::train

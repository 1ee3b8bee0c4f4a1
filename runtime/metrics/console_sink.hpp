// The console progress line: one line per step, in a fixed format so a person can follow a
// run and a script can grep it:
//
//   step 12 | rollout 3.21s train 1.05s sync 0.40s | reward 0.5320 | loss -0.01234 kl 0.0012
//     entropy 0.512 gnorm 0.84 lr 1.00e-06 | tok/s 1234 | +3 more
//
// (one line; wrapped here). Fields appear only when their key is in the record, in this
// order, each under the first of its accepted names that is present:
//   times    rollout  "time/rollout", "rollout_time"       seconds, %.2f
//            train    "time/train", "train_time"           seconds, %.2f
//            sync     "time/sync", "sync_time"             seconds, %.2f
//            total    "time/step", "step_time"             seconds, %.2f
//   reward   reward   "rollout/reward_mean", "reward_mean", "reward"   %.4f
//   train    loss     "train/loss", "sft/loss", "loss"     %.4g
//            kl       "train/kl_loss", "kl_loss"           %.3g
//            entropy  "train/entropy_loss", "entropy_loss" %.3g
//            gnorm    "train/grad_norm", "grad_norm"       %.3g
//            lr       "train/lr", "lr"                     %.2e
//   speed    tok/s    "perf/tokens_per_s", "tokens_per_s"  %.0f
//   eval     eval     "eval/accuracy", "eval/pass@1"       %.4f
// then "+N more" counting the record's other scalars (all of them are in the JSONL).
// Groups with no field present are left out; non-finite values print as nan/inf.
#pragma once

#include "runtime/metrics/metrics_hub.hpp"

#include <functional>
#include <string>

namespace anvil::metrics {

// The progress line of `record` (no trailing newline).
std::string format_console_line(const Record& record);

// Writes each record's progress line through `out` (default: stdout, flushed per line).
class ConsoleSink : public Sink {
 public:
  explicit ConsoleSink(std::function<void(const std::string&)> out = {});
  void write(const Record& record) override;

 private:
  std::function<void(const std::string&)> out_;
};

}  // namespace anvil::metrics

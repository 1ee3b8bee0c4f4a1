// Held-out evaluation of a policy: n samples per eval prompt from the rollout engine,
// scored by the reward (rollout/reward), summarised as accuracy, pass@k and mean reward.
// What `anvil eval` prints and what the RL loop runs every --eval-interval rollouts on
// --eval-prompt-data.
//
// A sample is *correct* when its scalar reward is >= EvalOptions::correct_threshold (1 by
// default: the rule-based rewards math / exact_match give 1 or 0). For a prompt with n
// samples of which c are correct, pass@k is the unbiased estimator of the Codex paper
// (Chen et al. 2021): 1 - C(n-c, k) / C(n, k), averaged over prompts; accuracy is the mean
// fraction of correct samples (pass@1).
//
// Sampling: sample i of eval prompt j (EvalPrompt::index) uses seed `seed + 1000003 * j + i` (the
// engine's stream for sample i of a request seeded s is s + i), so an evaluation is reproducible
// and independent of batching. Temperature 0 is greedy (all n samples are then equal).
#pragma once

#include "rollout/data/prompt_source.hpp"
#include "rollout/reward/reward.hpp"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace anvil::data {
class ChatTokenizer;
}
namespace anvil::engine {
class Engine;
}

namespace anvil::eval {

// One held-out prompt: its tokens and what the reward needs.
struct EvalPrompt {
  std::vector<int64_t> input_ids;  // [prompt tokens], non-empty
  std::string prompt_text;         // the text the ids encode (for the reward)
  nlohmann::json label;            // --label-key value (null without one)
  nlohmann::json metadata;         // object; "rm_type" overrides the reward type
  std::string where;               // "file:line", for messages
  // Its index in the whole eval set (the j of its seeds); -1: its position in the list
  // given to evaluate(). The RL loop splits the set over engines and keeps the global index,
  // so the samples do not depend on the engine count.
  int64_t index = -1;
};

struct EvalOptions {
  int64_t n_samples = 1;           // --n-samples-per-eval-prompt
  double temperature = 0.0;        // --eval-temperature (0 = greedy)
  double top_p = 1.0;              // --eval-top-p
  int64_t top_k = -1;              // --eval-top-k (<= 0 = off)
  int64_t max_response_len = 64;   // --eval-max-response-len (tokens)
  uint64_t seed = 0;               // --eval-seed
  double correct_threshold = 1.0;  // reward >= this counts as correct
  // k values of pass@k; empty = {1, n} (and the powers of two between). Each must be in
  // [1, n_samples].
  std::vector<int64_t> pass_k;
  int reward_threads = 2;     // threads computing rewards while generation continues
  bool keep_samples = false;  // fill EvalResult::samples
  // Throws anvil::Error naming the flag for an out-of-range value.
  void validate() const;
  // The k values reported: pass_k sorted and unique, or the default {1, 2, 4, ..., n}.
  std::vector<int64_t> pass_k_values() const;
};

struct EvalSample {
  int64_t prompt_index = 0, sample_index = 0;
  std::string response;
  double reward = 0;
  bool correct = false;
  bool truncated = false;  // hit max_response_len
  int64_t response_tokens = 0;
};

struct EvalResult {
  int64_t prompts = 0, samples = 0, correct = 0;
  double accuracy = 0;                  // correct / samples (= mean pass@1)
  double mean_reward = 0;               // over samples
  std::map<int64_t, double> pass_at_k;  // k -> mean over prompts
  double mean_response_tokens = 0;
  double truncated_fraction = 0;           // samples that hit max_response_len
  std::vector<EvalSample> samples_detail;  // when EvalOptions::keep_samples

  // {"prompts", "samples", "correct", "accuracy", "mean_reward", "pass@K"...,
  //  "mean_response_tokens", "truncated_fraction"} (samples_detail is not included).
  nlohmann::json to_json() const;
  // One line for the console: "accuracy 0.412 (103/250) pass@1 0.412 pass@4 0.61 ..."
  std::string summary() const;
};

// Unbiased pass@k for n samples with c correct: 1 - C(n-c, k) / C(n, k), computed as a
// product so it never overflows. Requires 0 <= c <= n and 1 <= k <= n (ANVIL_CHECK).
double pass_at_k(int64_t n, int64_t c, int64_t k);

// Generates options.n_samples samples for every prompt on `engine` (which it drives with
// generate(); the engine must not be shared with another caller meanwhile), scores them
// with `reward` and summarises. Throws anvil::Error on bad options, an empty prompt list,
// a prompt that does not fit the engine (naming prompt.where) or a failing reward.
EvalResult evaluate(engine::Engine& engine, const std::vector<EvalPrompt>& prompts,
                    const reward::RewardOptions& reward, const EvalOptions& options);

// Reads the eval set with the data pipeline in prompt mode (one epoch, in file order, the
// bad-row policy of `data`; shuffle and num_epoch are ignored), as the rollout reads
// training prompts. Throws anvil::Error naming the file when no valid prompt is left.
std::vector<EvalPrompt> load_eval_prompts(const data::DataOptions& data,
                                          const data::ChatTokenizer& chat);

}  // namespace anvil::eval

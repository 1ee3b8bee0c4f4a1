// Rewards for rollout samples (--rm-type, --rm-url, --reward-key, group rewards), as
// slime's rm_hub: a sample's metadata "rm_type" overrides --rm-type; a "boxed_" prefix
// (e.g. boxed_exact_match) scores the content of the response's last \boxed{} instead of
// the whole response.
//
//   math         1 if the last \boxed{} answer equals the label after normalisation
//                (math_answer.hpp), else 0
//   exact_match  1 if the response (whitespace-trimmed) equals the label, else 0
//   remote_rm    POST {"prompt", "response", "label"} as JSON to --rm-url; the reply's JSON
//                (a number or an object) is the reward. Retries with exponential backoff
//                (min(2^attempt, 30) s + jitter, scaled by backoff_scale) up to max_retries.
//
// A reward is JSON: a number, or an object from which --reward-key picks the number.
// RewardWorker runs rewards on its own threads, so they overlap generation: submit each
// sample as it finishes (GenerateRequest::on_finish) and collect the futures later.
#pragma once

#include <nlohmann/json.hpp>

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <future>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace anvil::reward {

struct RewardInput {
  std::string prompt;  // the prompt text as sent to the engine
  std::string response;
  nlohmann::json label;     // string (or anything JSON) from --label-key
  nlohmann::json metadata;  // object or null; "rm_type" overrides the configured type
};

struct RewardOptions {
  std::string rm_type;     // --rm-type
  std::string rm_url;      // --rm-url (remote_rm), http://host:port/path
  std::string reward_key;  // --reward-key: field of a dict reward
  int max_retries = 10;
  double timeout_s = 120;
  double backoff_scale = 1.0;  // multiplies the retry delays (tests use a small one)
  // Throws anvil::Error naming the flag (unknown type, remote_rm without a URL, ...).
  void validate() const;
};

// The reward of one sample (a JSON number or object). Throws anvil::Error naming the rm
// type or URL on failure (unknown type, remote RM unreachable after retries, bad reply).
nlohmann::json compute_reward(const RewardInput& sample, const RewardOptions& options);

// The scalar of a reward: the number itself, or reward[reward_key] for an object. Throws
// anvil::Error naming the key when it is missing or not a number.
double reward_value(const nlohmann::json& reward, const std::string& reward_key);

// --group-rm: scores the n samples of one prompt together (e.g. pairwise or
// rank-based rewards); returns one reward per sample, in order.
using GroupRewardFn = std::function<std::vector<nlohmann::json>(const std::vector<RewardInput>&)>;

// A pool of threads computing rewards. Thread-safe; the destructor finishes queued work.
class RewardWorker {
 public:
  RewardWorker(RewardOptions options, int threads);
  ~RewardWorker();
  RewardWorker(const RewardWorker&) = delete;
  RewardWorker& operator=(const RewardWorker&) = delete;

  // compute_reward() on a worker thread; the future holds the reward or the error.
  std::future<nlohmann::json> submit(RewardInput sample);
  // `group` (or, when empty, compute_reward per sample) over one prompt's samples.
  std::future<std::vector<nlohmann::json>> submit_group(std::vector<RewardInput> samples,
                                                        GroupRewardFn group = nullptr);

 private:
  void run();
  RewardOptions options_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> tasks_;
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace anvil::reward

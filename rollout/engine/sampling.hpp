// Sampling parameters and the per-token sampler of the rollout engine.
//
// V = vocab. The engine computes, for each sequence that samples this step, the scaled
// logits z = (hidden @ lm_head^T) in fp32 / temperature exactly as the trainer's
// token_logprobs() does (backends/train/logprobs.cpp), so the log-prob it reports for a
// token, z[y] - logsumexp(z), is the trainer's value for the same weights.
#pragma once

#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <vector>

namespace anvil::engine {

// SGLang's sampling_params (reference/sglang-api.md) and their meaning here.
struct SamplingParams {
  double temperature = 1.0;  // 0 = greedy (log-probs then under logits / 1)
  double top_p = 1.0;        // (0, 1]: keep the smallest set of tokens with mass >= top_p
  int64_t top_k = -1;        // <= 0 = off
  double min_p = 0.0;        // [0, 1]: drop tokens with p < min_p * max p
  int64_t max_new_tokens = 128;
  std::vector<int64_t> stop_token_ids;  // besides the model's EOS ids (unless ignore_eos)
  std::vector<std::string> stop;        // stop strings, matched on the decoded output
  bool ignore_eos = false;
  bool skip_special_tokens = true;  // for the returned text
  bool no_stop_trim = false;        // keep a matched stop string in the text
  // Seed of this request's random stream; sample i of n uses seed + i. Unset: drawn
  // from the engine's seed sequence.
  std::optional<uint64_t> seed;
  int64_t n = 1;  // samples of the prompt; the prompt is prefilled once and shared

  // Throws anvil::Error naming the field when a value is out of range.
  void validate() const;
};

// One uniform draw in [0, 1) with 53 random bits (the same stream on every platform).
double uniform01(std::mt19937_64& rng);

// Chooses a token from fp32 scaled logits `z` ([V], already divided by the temperature)
// with log-sum-exp `lse`: argmax when temperature == 0, else a draw from softmax(z)
// restricted by top_k, top_p and min_p (in that order), using one uniform01(rng) draw.
int64_t sample_token(const float* z, int64_t V, float lse, const SamplingParams& params,
                     std::mt19937_64& rng);

}  // namespace anvil::engine

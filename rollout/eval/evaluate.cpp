#include "rollout/eval/evaluate.hpp"

#include "backends/common/error.hpp"
#include "rollout/data/conversation.hpp"
#include "rollout/data/sample_loader.hpp"
#include "rollout/engine/engine.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <future>

namespace anvil::eval {

void EvalOptions::validate() const {
  if (n_samples < 1) fail("--n-samples-per-eval-prompt must be >= 1 (got {})", n_samples);
  if (max_response_len < 1) fail("--eval-max-response-len must be >= 1 (got {})", max_response_len);
  if (!(temperature >= 0)) fail("--eval-temperature must be >= 0 (got {})", temperature);
  if (!(top_p > 0 && top_p <= 1)) fail("--eval-top-p must be in (0, 1] (got {})", top_p);
  if (reward_threads < 1) fail("eval: reward_threads must be >= 1 (got {})", reward_threads);
  for (int64_t k : pass_k) {
    if (k < 1 || k > n_samples) {
      fail("--eval-pass-k {} is outside [1, --n-samples-per-eval-prompt {}]", k, n_samples);
    }
  }
}

double pass_at_k(int64_t n, int64_t c, int64_t k) {
  ANVIL_CHECK(n >= 1 && c >= 0 && c <= n && k >= 1 && k <= n, "n={} c={} k={}", n, c, k);
  if (n - c < k) return 1.0;
  // C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i)
  double fail_all = 1.0;
  for (int64_t i = n - c + 1; i <= n; ++i) {
    fail_all *= 1.0 - static_cast<double>(k) / static_cast<double>(i);
  }
  return 1.0 - fail_all;
}

nlohmann::json EvalResult::to_json() const {
  nlohmann::json j = {{"prompts", prompts},
                      {"samples", samples},
                      {"correct", correct},
                      {"accuracy", accuracy},
                      {"mean_reward", mean_reward},
                      {"mean_response_tokens", mean_response_tokens},
                      {"truncated_fraction", truncated_fraction}};
  for (const auto& [k, v] : pass_at_k) j["pass@" + std::to_string(k)] = v;
  return j;
}

std::string EvalResult::summary() const {
  std::string s = fmt::format("accuracy {:.4f} ({}/{})", accuracy, correct, samples);
  for (const auto& [k, v] : pass_at_k) s += fmt::format(" pass@{} {:.4f}", k, v);
  s += fmt::format(" mean_reward {:.4f} prompts {} response_tokens {:.1f} truncated {:.3f}",
                   mean_reward, prompts, mean_response_tokens, truncated_fraction);
  return s;
}

std::vector<int64_t> EvalOptions::pass_k_values() const {
  std::vector<int64_t> ks = pass_k;
  if (ks.empty()) {
    for (int64_t k = 1; k < n_samples; k *= 2) ks.push_back(k);
    ks.push_back(n_samples);
  }
  std::sort(ks.begin(), ks.end());
  ks.erase(std::unique(ks.begin(), ks.end()), ks.end());
  return ks;
}

EvalResult evaluate(engine::Engine& engine, const std::vector<EvalPrompt>& prompts,
                    const reward::RewardOptions& reward, const EvalOptions& options) {
  options.validate();
  reward.validate();
  if (prompts.empty()) fail("eval: no eval prompts");
  const int64_t n = options.n_samples;
  const std::vector<int64_t> ks = options.pass_k_values();

  const size_t P = prompts.size();
  reward::RewardWorker worker(reward, options.reward_threads);
  // Slot j * n + i: the reward of sample i of prompt j, started as soon as it finishes.
  std::vector<std::future<nlohmann::json>> rewards(P * static_cast<size_t>(n));
  std::vector<engine::GenerateRequest> requests;
  requests.reserve(P);
  for (size_t j = 0; j < P; ++j) {
    const EvalPrompt& p = prompts[j];
    if (p.input_ids.empty()) fail("eval: {}: the prompt encodes to no tokens", p.where);
    const int64_t need = static_cast<int64_t>(p.input_ids.size()) + options.max_response_len;
    if (need > engine.max_context()) {
      fail(
          "eval: {}: prompt ({} tokens) + --eval-max-response-len {} exceeds the engine's "
          "context of {} tokens",
          p.where, p.input_ids.size(), options.max_response_len, engine.max_context());
    }
    engine::GenerateRequest req;
    req.input_ids = p.input_ids;
    req.params.temperature = options.temperature;
    req.params.top_p = options.top_p;
    req.params.top_k = options.top_k > 0 ? options.top_k : -1;
    req.params.max_new_tokens = options.max_response_len;
    req.params.n = n;
    const uint64_t index = p.index >= 0 ? static_cast<uint64_t>(p.index) : static_cast<uint64_t>(j);
    req.params.seed = options.seed + 1000003ULL * index;
    req.rid = "eval/" + std::to_string(j);
    req.on_finish = [&worker, &rewards, &p, j, n](const engine::GenerateOutput& out) {
      reward::RewardInput in;
      in.prompt = p.prompt_text;
      in.response = out.text;
      in.label = p.label;
      in.metadata = p.metadata;
      rewards[j * static_cast<size_t>(n) + static_cast<size_t>(out.sample_index)] =
          worker.submit(std::move(in));
    };
    requests.push_back(std::move(req));
  }
  std::vector<engine::GenerateOutput> outputs = engine.generate(std::move(requests));
  ANVIL_CHECK(outputs.size() == rewards.size(), "{} outputs for {} samples", outputs.size(),
              rewards.size());

  EvalResult r;
  r.prompts = static_cast<int64_t>(P);
  r.samples = static_cast<int64_t>(outputs.size());
  double reward_sum = 0, tokens_sum = 0;
  int64_t truncated = 0;
  std::vector<double> pass_sum(ks.size(), 0.0);
  for (size_t j = 0; j < P; ++j) {
    int64_t c = 0;
    for (int64_t i = 0; i < n; ++i) {
      const size_t slot = j * static_cast<size_t>(n) + static_cast<size_t>(i);
      const engine::GenerateOutput& out = outputs[slot];
      if (out.finish == engine::FinishReason::kAbort) {
        fail("eval: {}: sample {} was aborted: {}", prompts[j].where, i, out.abort_message);
      }
      ANVIL_CHECK(rewards[slot].valid(), "no reward started for prompt {} sample {}", j, i);
      double value = 0;
      try {
        value = reward::reward_value(rewards[slot].get(), reward.reward_key);
      } catch (const Error& e) {
        fail("eval: {}: reward of sample {}: {}", prompts[j].where, i, e.what());
      }
      const bool ok = value >= options.correct_threshold;
      c += ok ? 1 : 0;
      reward_sum += value;
      tokens_sum += static_cast<double>(out.output_ids.size());
      const bool trunc = out.finish == engine::FinishReason::kLength;
      truncated += trunc ? 1 : 0;
      if (options.keep_samples) {
        r.samples_detail.push_back({static_cast<int64_t>(j), i, out.text, value, ok, trunc,
                                    static_cast<int64_t>(out.output_ids.size())});
      }
    }
    r.correct += c;
    for (size_t q = 0; q < ks.size(); ++q) pass_sum[q] += pass_at_k(n, c, ks[q]);
  }
  const double S = static_cast<double>(r.samples);
  r.accuracy = static_cast<double>(r.correct) / S;
  r.mean_reward = reward_sum / S;
  r.mean_response_tokens = tokens_sum / S;
  r.truncated_fraction = static_cast<double>(truncated) / S;
  for (size_t q = 0; q < ks.size(); ++q) r.pass_at_k[ks[q]] = pass_sum[q] / static_cast<double>(P);
  return r;
}

std::vector<EvalPrompt> load_eval_prompts(const data::DataOptions& data,
                                          const data::ChatTokenizer& chat) {
  data::DataOptions o = data;
  o.shuffle = false;
  o.num_epoch = 1;
  data::PromptSource source(o);
  data::SampleLoader loader(source, chat, data::LoaderMode::Prompt, o);
  std::vector<EvalPrompt> prompts;
  while (std::optional<data::TokenizedSample> s = loader.next()) {
    EvalPrompt p;
    p.input_ids.assign(s->encoded.ids.begin(), s->encoded.ids.end());
    p.prompt_text = s->encoded.text;
    p.label = nlohmann::json::parse(s->sample->label.dump());
    p.metadata = nlohmann::json::parse(s->sample->metadata.dump());
    p.where = fmt::format("{}:{}", s->sample->file, s->sample->line);
    prompts.push_back(std::move(p));
  }
  if (prompts.empty()) {
    std::string files;
    for (const std::string& f : data.prompt_data) files += (files.empty() ? "" : " ") + f;
    fail("eval: --prompt-data {}: no valid eval prompt", files);
  }
  return prompts;
}

}  // namespace anvil::eval

// rollout/eval: the unbiased pass@k estimator against exact binomials, and evaluate() on a
// tiny random model against the engine's own outputs for the same seeds: rewards land on
// the right samples, counts and pass@k follow, bad input is named.
//
// Exactness: pass@k is compared with an exact rational computation within 1e-12 (the
// product form accumulates a few ulps); counts and accuracies are exact.
#include "backends/common/error.hpp"
#include "backends/models/decoder.hpp"
#include "backends/models/weights.hpp"
#include "rollout/data/bpe_trainer.hpp"
#include "rollout/data/tokenizer.hpp"
#include "rollout/engine/engine.hpp"
#include "rollout/eval/evaluate.hpp"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>

using anvil::eval::EvalOptions;
using anvil::eval::EvalPrompt;
using anvil::eval::EvalResult;
using anvil::eval::evaluate;
using anvil::eval::pass_at_k;

namespace {

double binom(int64_t n, int64_t k) {
  if (k < 0 || k > n) return 0;
  double r = 1;
  for (int64_t i = 1; i <= k; ++i) r = r * static_cast<double>(n - k + i) / static_cast<double>(i);
  return r;
}

TEST(PassAtK, MatchesBinomialDefinition) {
  for (int64_t n = 1; n <= 12; ++n) {
    for (int64_t c = 0; c <= n; ++c) {
      for (int64_t k = 1; k <= n; ++k) {
        const double expected = 1.0 - binom(n - c, k) / binom(n, k);
        EXPECT_NEAR(pass_at_k(n, c, k), expected, 1e-12) << n << " " << c << " " << k;
      }
    }
  }
  EXPECT_DOUBLE_EQ(pass_at_k(10, 0, 5), 0.0);
  EXPECT_DOUBLE_EQ(pass_at_k(10, 10, 1), 1.0);
  EXPECT_DOUBLE_EQ(pass_at_k(4, 1, 1), 0.25);
  EXPECT_DOUBLE_EQ(pass_at_k(4, 1, 4), 1.0);
  EXPECT_NEAR(pass_at_k(4, 1, 2), 0.5, 1e-15);  // 1 - C(3,2)/C(4,2) = 1 - 3/6
}

struct Fixture {
  std::shared_ptr<anvil::models::DecoderModel> model;
  std::shared_ptr<const anvil::data::Tokenizer> tok;
};

Fixture make_fixture() {
  anvil::data::BpeTrainOptions bpe;
  bpe.vocab_size = 300;
  bpe.special_tokens = {"<|endoftext|>", "<|im_end|>"};
  nlohmann::json tj = anvil::data::train_byte_level_bpe(anvil::data::builtin_corpus(), bpe);
  auto tok = std::make_shared<const anvil::data::Tokenizer>(
      anvil::data::Tokenizer::from_json(tj, "eval-test tokenizer"));
  nlohmann::json cj = {{"architectures", {"Qwen3ForCausalLM"}},
                       {"vocab_size", 302},  // 300 BPE tokens + 2 specials
                       {"hidden_size", 32},
                       {"intermediate_size", 64},
                       {"num_hidden_layers", 2},
                       {"num_attention_heads", 4},
                       {"num_key_value_heads", 2},
                       {"head_dim", 8},
                       {"max_position_embeddings", 128},
                       {"tie_word_embeddings", true}};
  auto config = anvil::models::ModelConfig::from_json(cj, "eval-test");
  auto m = std::make_shared<anvil::models::DecoderModel>(config, at::TensorOptions());
  m->parameters() = anvil::models::init_parameters(m->config(), m->specs(), 11, {});
  return {m, tok};
}

std::unique_ptr<anvil::engine::Engine> make_engine(const Fixture& f) {
  anvil::engine::EngineOptions o;
  o.background = false;
  o.kv_cache_tokens = 8192;
  o.block_size = 8;
  o.eos_token_ids = {300};  // <|endoftext|>
  return std::make_unique<anvil::engine::Engine>(f.model, o, f.tok);
}

std::vector<EvalPrompt> make_prompts(const Fixture& f, int count) {
  std::vector<EvalPrompt> ps;
  for (int j = 0; j < count; ++j) {
    EvalPrompt p;
    p.prompt_text = "What is " + std::to_string(10 + j) + " + " + std::to_string(3 * j) + "?";
    std::vector<int32_t> ids = f.tok->encode(p.prompt_text);
    p.input_ids.assign(ids.begin(), ids.end());
    p.label = "";
    p.metadata = nlohmann::json::object();
    p.where = "test:" + std::to_string(j + 1);
    ps.push_back(std::move(p));
  }
  return ps;
}

// The engine's outputs for the seeds evaluate() documents: sample i of prompt j uses
// seed + 1000003 j + i.
std::vector<std::vector<std::string>> reference_texts(const Fixture& f,
                                                      const std::vector<EvalPrompt>& ps,
                                                      const EvalOptions& o) {
  auto eng = make_engine(f);
  std::vector<std::vector<std::string>> texts;
  for (size_t j = 0; j < ps.size(); ++j) {
    anvil::engine::GenerateRequest r;
    r.input_ids = ps[j].input_ids;
    r.params.temperature = o.temperature;
    r.params.max_new_tokens = o.max_response_len;
    r.params.n = o.n_samples;
    r.params.seed = o.seed + 1000003ULL * j;
    std::vector<std::string> t;
    for (const auto& out : eng->generate({r})) t.push_back(out.text);
    texts.push_back(t);
  }
  return texts;
}

anvil::reward::RewardOptions exact_match() {
  anvil::reward::RewardOptions r;
  r.rm_type = "exact_match";
  return r;
}

TEST(Evaluate, GreedyLabelsFromEngineGiveExactAccuracy) {
  Fixture f = make_fixture();
  std::vector<EvalPrompt> ps = make_prompts(f, 6);
  EvalOptions o;
  o.n_samples = 3;
  o.temperature = 0;
  o.max_response_len = 6;
  auto ref = reference_texts(f, ps, o);
  // Prompts 0, 2, 4 are labelled with the model's greedy answer, the others with a
  // string it cannot produce in 6 tokens.
  for (size_t j = 0; j < ps.size(); ++j) {
    ps[j].label = j % 2 == 0 ? ref[j][0] : std::string("no such answer at all, not in 6 tokens");
  }
  auto eng = make_engine(f);
  EvalResult r = evaluate(*eng, ps, exact_match(), o);
  EXPECT_EQ(r.prompts, 6);
  EXPECT_EQ(r.samples, 18);
  EXPECT_EQ(r.correct, 9);
  EXPECT_DOUBLE_EQ(r.accuracy, 0.5);
  EXPECT_DOUBLE_EQ(r.mean_reward, 0.5);
  ASSERT_EQ(r.pass_at_k.size(), 3u);  // k = 1, 2, 3
  EXPECT_DOUBLE_EQ(r.pass_at_k.at(1), 0.5);
  EXPECT_DOUBLE_EQ(r.pass_at_k.at(3), 0.5);
  nlohmann::json j = r.to_json();
  EXPECT_EQ(j["correct"], 9);
  EXPECT_TRUE(j.contains("pass@2"));
}

TEST(Evaluate, SampledRewardsLandOnTheirSamples) {
  Fixture f = make_fixture();
  std::vector<EvalPrompt> ps = make_prompts(f, 5);
  EvalOptions o;
  o.n_samples = 4;
  o.temperature = 1.0;
  o.max_response_len = 3;
  o.seed = 77;
  o.keep_samples = true;
  o.pass_k = {1, 2, 4};
  auto ref = reference_texts(f, ps, o);
  // Label prompt j with its sample (j % 4): correct are exactly the samples equal to it.
  std::vector<int64_t> c(ps.size(), 0);
  int64_t total = 0;
  for (size_t j = 0; j < ps.size(); ++j) {
    ps[j].label = ref[j][j % 4];
    for (const auto& t : ref[j]) {
      auto trim = [](std::string s) {
        s.erase(0, s.find_first_not_of(" \t\r\n"));
        s.erase(s.find_last_not_of(" \t\r\n") + 1);
        return s;
      };
      c[j] += trim(t) == trim(ref[j][j % 4]) ? 1 : 0;
    }
    total += c[j];
  }
  auto eng = make_engine(f);
  EvalResult r = evaluate(*eng, ps, exact_match(), o);
  EXPECT_EQ(r.correct, total);
  EXPECT_GE(r.correct, 5);
  double p2 = 0;
  for (size_t j = 0; j < ps.size(); ++j) p2 += pass_at_k(4, c[j], 2);
  EXPECT_NEAR(r.pass_at_k.at(2), p2 / 5.0, 1e-12);
  EXPECT_DOUBLE_EQ(r.pass_at_k.at(4), 1.0);  // every prompt has its labelled sample
  ASSERT_EQ(r.samples_detail.size(), 20u);
  for (const auto& s : r.samples_detail) {
    EXPECT_EQ(s.response, ref[s.prompt_index][s.sample_index]);
  }
  // Reproducible: the same call gives the same result.
  EvalResult again = evaluate(*eng, ps, exact_match(), o);
  EXPECT_EQ(again.to_json(), r.to_json());
}

TEST(Evaluate, BadInputIsNamed) {
  Fixture f = make_fixture();
  auto eng = make_engine(f);
  std::vector<EvalPrompt> ps = make_prompts(f, 2);
  EvalOptions o;
  o.n_samples = 0;
  try {
    evaluate(*eng, ps, exact_match(), o);
    FAIL();
  } catch (const anvil::Error& e) {
    EXPECT_NE(std::string(e.what()).find("--n-samples-per-eval-prompt"), std::string::npos);
  }
  o.n_samples = 2;
  o.pass_k = {3};
  EXPECT_THROW(evaluate(*eng, ps, exact_match(), o), anvil::Error);
  o.pass_k = {};
  o.max_response_len = 1000;  // beyond max_position_embeddings 128
  try {
    evaluate(*eng, ps, exact_match(), o);
    FAIL();
  } catch (const anvil::Error& e) {
    EXPECT_NE(std::string(e.what()).find("test:1"), std::string::npos) << e.what();
  }
  o.max_response_len = 4;
  EXPECT_THROW(evaluate(*eng, {}, exact_match(), o), anvil::Error);
  anvil::reward::RewardOptions bad;
  bad.rm_type = "no_such_reward";
  EXPECT_THROW(evaluate(*eng, ps, bad, o), anvil::Error);
}

}  // namespace

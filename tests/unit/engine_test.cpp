// The rollout engine on tiny random models: the paged KV pool, the sampler, and the
// engine's scheduling against plain full-sequence forwards (no cache), the trainer's
// log-probs, batch composition, weight updates and control operations.
//
// Tolerances: greedy tokens are compared exactly; log-probs against the trainer's
// token_logprobs within 1e-6 (fp32; the two runs differ only in how the KV of earlier
// tokens was computed: incrementally over the pool vs one packed forward).
#include "backends/common/error.hpp"
#include "backends/models/decoder.hpp"
#include "backends/models/weights.hpp"
#include "backends/train/logprobs.hpp"
#include "rollout/engine/engine.hpp"
#include "rollout/engine/kv_pool.hpp"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <map>

using anvil::engine::Engine;
using anvil::engine::EngineOptions;
using anvil::engine::FinishReason;
using anvil::engine::GenerateOutput;
using anvil::engine::GenerateRequest;
using anvil::engine::KVPool;
using anvil::engine::KVPoolShape;
using anvil::engine::SamplingParams;
using anvil::models::DecoderModel;
using anvil::models::ModelConfig;

namespace {

constexpr int64_t kVocab = 64;

ModelConfig tiny_config() {
  nlohmann::json j = {{"architectures", {"Qwen3ForCausalLM"}},
                      {"vocab_size", kVocab},
                      {"hidden_size", 32},
                      {"intermediate_size", 64},
                      {"num_hidden_layers", 2},
                      {"num_attention_heads", 4},
                      {"num_key_value_heads", 2},
                      {"head_dim", 8},
                      {"max_position_embeddings", 256},
                      {"tie_word_embeddings", false}};
  return ModelConfig::from_json(j, "engine-test");
}

std::shared_ptr<DecoderModel> tiny_model(uint64_t seed = 3) {
  auto m = std::make_shared<DecoderModel>(tiny_config(), at::TensorOptions());
  m->parameters() = anvil::models::init_parameters(m->config(), m->specs(), seed, {});
  return m;
}

EngineOptions manual(int64_t kv_tokens = 4096, int64_t block = 4, int64_t budget = 512) {
  EngineOptions o;
  o.background = false;
  o.kv_cache_tokens = kv_tokens;
  o.block_size = block;
  o.max_batch_tokens = budget;
  o.eos_token_ids = {kVocab + 1};  // never sampled: runs end by length unless a test stops
  return o;
}

std::vector<int64_t> prompt(int64_t n, uint64_t seed) {
  std::vector<int64_t> p;
  uint64_t x = seed * 2654435761ULL + 1;
  for (int64_t i = 0; i < n; ++i) {
    x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    p.push_back(static_cast<int64_t>((x >> 33) % kVocab));
  }
  return p;
}

GenerateRequest req(std::vector<int64_t> ids, double temperature, int64_t max_new,
                    std::optional<uint64_t> seed = std::nullopt, std::string rid = "") {
  GenerateRequest r;
  r.input_ids = std::move(ids);
  r.params.temperature = temperature;
  r.params.max_new_tokens = max_new;
  r.params.seed = seed;
  r.rid = std::move(rid);
  return r;
}

// Greedy continuation by full forwards without any cache (the reference).
std::vector<int64_t> greedy_reference(const DecoderModel& m, std::vector<int64_t> ids, int n) {
  at::NoGradGuard g;
  std::vector<int64_t> out;
  for (int i = 0; i < n; ++i) {
    at::Tensor logits = m.forward(anvil::models::PackedBatch::pack({ids}, at::kCPU));
    int64_t y = logits[-1].argmax().item<int64_t>();
    out.push_back(y);
    ids.push_back(y);
  }
  return out;
}

// The trainer's log-probs of `output` after `input` (one packed forward + token_logprobs).
std::vector<float> trainer_logprobs(const DecoderModel& m, const std::vector<int64_t>& input,
                                    const std::vector<int64_t>& output, double temperature) {
  at::NoGradGuard g;
  std::vector<int64_t> seq = input;
  seq.insert(seq.end(), output.begin(), output.end());
  at::Tensor hidden = m.forward_hidden(anvil::models::PackedBatch::pack({seq}, at::kCPU));
  auto index = anvil::train::next_token_index({seq});
  anvil::train::LogProbOptions o;
  o.temperature = temperature;
  at::Tensor lp = anvil::train::token_logprobs(hidden.index_select(0, index.rows),
                                               m.lm_head_weight(), index.targets, o)
                      .logprobs;
  std::vector<float> all(lp.data_ptr<float>(), lp.data_ptr<float>() + lp.numel());
  return {all.end() - static_cast<int64_t>(output.size()), all.end()};
}

double max_diff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double d = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    d = std::max(d, std::abs(static_cast<double>(a[i]) - b[i]));
  }
  return d;
}

}  // namespace

// ---------------------------------------------------------------------------------------
// KV pool

TEST(KVPool, ReserveForkCopyOnWriteAndRelease) {
  KVPool pool(KVPoolShape{1, 1, 2, 4, 6}, at::TensorOptions());
  EXPECT_EQ(pool.available_blocks(), 6);
  ASSERT_TRUE(pool.reserve(1, 6));  // 2 blocks
  EXPECT_EQ(pool.available_blocks(), 4);
  at::Tensor k = at::arange(12, at::kFloat).view({1, 6, 2});
  auto [K, V] = pool.append(0, 1, k, k + 100);
  pool.commit(1, 6);
  EXPECT_TRUE(at::equal(K, k));
  pool.fork(1, 2);  // shares both blocks
  EXPECT_EQ(pool.available_blocks(), 4);
  // Writing position 6 of slot 2 lands in the shared partial block: it is copied.
  ASSERT_TRUE(pool.reserve(2, 7));
  EXPECT_EQ(pool.available_blocks(), 3);
  at::Tensor extra = at::full({1, 1, 2}, -1.0f);
  auto [K2, V2] = pool.append(0, 2, extra, extra);
  pool.commit(2, 1);
  EXPECT_TRUE(at::equal(K2.narrow(1, 0, 6), k));
  EXPECT_TRUE(at::equal(K2.narrow(1, 6, 1), extra));
  // Slot 1 now owns its partial block alone: it writes in place, no copy.
  ASSERT_TRUE(pool.reserve(1, 7));
  EXPECT_EQ(pool.available_blocks(), 3);
  auto [K1, V1] = pool.append(0, 1, extra + 5, extra);
  pool.commit(1, 1);
  EXPECT_TRUE(at::equal(K1.narrow(1, 0, 6), k));
  EXPECT_EQ(K1[0][6][0].item<float>(), 4.0f);
  // More than is left fails and changes nothing.
  EXPECT_FALSE(pool.reserve(3, 20));
  EXPECT_EQ(pool.available_blocks(), 3);
  EXPECT_FALSE(pool.has_slot(3));
  pool.release(1);
  EXPECT_EQ(pool.available_blocks(), 4);  // the first block is still held by slot 2
  pool.release(2);
  EXPECT_EQ(pool.available_blocks(), 6);
}

TEST(KVPool, PrefixCacheAttachPublishEvictFlush) {
  KVPool pool(KVPoolShape{1, 1, 2, 4, 4}, at::TensorOptions());
  std::vector<int64_t> toks = {1, 2, 3, 4, 5, 6, 7, 8, 9};
  ASSERT_TRUE(pool.reserve(1, 9));
  at::Tensor k = at::arange(18, at::kFloat).view({1, 9, 2});
  pool.append(0, 1, k, k);
  pool.commit(1, 9);
  pool.publish(1, toks);
  EXPECT_EQ(pool.cached_blocks(), 2);
  pool.release(1);
  EXPECT_EQ(pool.available_blocks(), 4);  // cached blocks are evictable
  // Same 9-token prompt: both full blocks attach (one token left to compute).
  EXPECT_EQ(pool.attach_prefix(2, toks), 8);
  auto [K, V] = (pool.reserve(2, 9), pool.append(0, 2, k.narrow(1, 8, 1), k.narrow(1, 8, 1)));
  EXPECT_TRUE(at::equal(K, k));
  pool.release(2);
  // A prompt that diverges in the second block attaches only the first.
  std::vector<int64_t> other = {1, 2, 3, 4, 5, 6, 0, 8, 9};
  EXPECT_EQ(pool.attach_prefix(3, other), 4);
  pool.release(3);
  // An 8-token prompt keeps its last token uncached.
  EXPECT_EQ(pool.attach_prefix(4, std::span(toks).first(8)), 4);
  pool.release(4);
  // Eviction when the pool needs the blocks.
  ASSERT_TRUE(pool.reserve(5, 16));
  EXPECT_EQ(pool.cached_blocks(), 0);
  pool.release(5);
  ASSERT_TRUE(pool.reserve(6, 9));
  pool.append(0, 6, k, k);
  pool.commit(6, 9);
  pool.publish(6, toks);
  pool.flush_prefix_cache();
  EXPECT_EQ(pool.cached_blocks(), 0);
  pool.release(6);
  EXPECT_EQ(pool.available_blocks(), 4);
  EXPECT_EQ(pool.attach_prefix(7, toks), 0);
}

// ---------------------------------------------------------------------------------------
// Sampler

TEST(Sampler, GreedyFiltersAndDistribution) {
  std::vector<float> z = {0.1f, 2.0f, 1.5f, -1.0f};
  at::Tensor zt = at::tensor(z);
  const float lse = at::logsumexp(zt, 0).item<float>();
  std::mt19937_64 rng(1);
  SamplingParams p;
  p.temperature = 0;
  EXPECT_EQ(anvil::engine::sample_token(z.data(), 4, lse, p, rng), 1);
  p.temperature = 1;
  p.top_k = 1;
  for (int i = 0; i < 20; ++i) EXPECT_EQ(anvil::engine::sample_token(z.data(), 4, lse, p, rng), 1);
  p.top_k = -1;
  p.top_p = 0.1;
  for (int i = 0; i < 20; ++i) EXPECT_EQ(anvil::engine::sample_token(z.data(), 4, lse, p, rng), 1);
  p.top_p = 1;
  p.min_p = 0.5;  // p1 = e^2 / Z, p2 = e^1.5 / Z = 0.61 p1: kept; p0, p3 dropped
  std::map<int64_t, int> seen;
  for (int i = 0; i < 400; ++i) ++seen[anvil::engine::sample_token(z.data(), 4, lse, p, rng)];
  EXPECT_EQ(seen.count(0) + seen.count(3), 0u);
  EXPECT_GT(seen[2], 100);
  // Unfiltered: frequencies follow softmax(z) (4000 draws; 4 sigma bounds).
  p.min_p = 0;
  at::Tensor probs = at::softmax(zt, 0);
  std::vector<int> counts(4, 0);
  const int N = 4000;
  for (int i = 0; i < N; ++i) ++counts[anvil::engine::sample_token(z.data(), 4, lse, p, rng)];
  for (int t = 0; t < 4; ++t) {
    double q = probs[t].item<double>();
    EXPECT_NEAR(counts[t] / double(N), q, 4 * std::sqrt(q * (1 - q) / N)) << "token " << t;
  }
  SamplingParams bad;
  bad.top_p = 0;
  EXPECT_THROW(bad.validate(), anvil::Error);
}

// ---------------------------------------------------------------------------------------
// Engine

TEST(Engine, GreedyMatchesFullForwardsAcrossChunkingAndBlockSizes) {
  auto model = tiny_model();
  std::vector<std::vector<int64_t>> prompts = {prompt(5, 1), prompt(23, 2), prompt(40, 3)};
  std::vector<std::vector<int64_t>> ref;
  for (const auto& p : prompts) ref.push_back(greedy_reference(*model, p, 20));
  for (auto [block, budget] : std::vector<std::pair<int64_t, int64_t>>{{4, 512}, {16, 7}, {1, 3}}) {
    Engine engine(model, manual(4096, block, budget));
    std::vector<GenerateRequest> reqs;
    for (const auto& p : prompts) reqs.push_back(req(p, 0, 20));
    auto out = engine.generate(reqs);
    for (size_t i = 0; i < prompts.size(); ++i) {
      EXPECT_EQ(out[i].output_ids, ref[i]) << "block " << block << " budget " << budget;
      EXPECT_EQ(out[i].finish, FinishReason::kLength);
      EXPECT_EQ(out[i].weight_version, "default");
    }
  }
}

TEST(Engine, SampledLogprobsEqualTrainerLogprobs) {
  auto model = tiny_model();
  Engine engine(model, manual());
  std::vector<GenerateRequest> reqs;
  for (int i = 0; i < 4; ++i) reqs.push_back(req(prompt(6 + 7 * i, 10 + i), 0.7, 24, 100 + i));
  auto out = engine.generate(reqs);
  double worst = 0;
  for (const auto& o : out) {
    ASSERT_EQ(o.output_ids.size(), 24u);
    worst = std::max(worst, max_diff(o.output_logprobs,
                                     trainer_logprobs(*model, o.input_ids, o.output_ids, 0.7)));
  }
  std::printf("engine vs trainer log-probs at T=0.7: max |diff| = %.3g\n", worst);
  EXPECT_LE(worst, 1e-6);
}

TEST(Engine, BatchInvariance) {
  auto model = tiny_model();
  auto target = req(prompt(17, 7), 0, 24);
  auto sampled = req(prompt(9, 8), 0.8, 24, 42);
  GenerateOutput alone, alone_sampled;
  {
    Engine engine(model, manual());
    alone = engine.generate({target})[0];
    alone_sampled = engine.generate({sampled})[0];
  }
  // Same requests joining a busy batch at different steps, with chunked prefill.
  Engine engine(model, manual(4096, 4, 11));
  std::vector<std::future<GenerateOutput>> others;
  for (int i = 0; i < 3; ++i) {
    auto f = engine.submit(req(prompt(30 + i, 20 + i), 0.9, 40, i));
    others.push_back(std::move(f[0]));
  }
  for (int i = 0; i < 5; ++i) engine.step();
  auto f1 = engine.submit(target);
  engine.step();
  engine.step();
  auto f2 = engine.submit(sampled);
  while (engine.step()) {
  }
  GenerateOutput busy = f1[0].get(), busy_sampled = f2[0].get();
  EXPECT_EQ(busy.output_ids, alone.output_ids);
  EXPECT_EQ(busy_sampled.output_ids, alone_sampled.output_ids);
  double d = std::max(max_diff(busy.output_logprobs, alone.output_logprobs),
                      max_diff(busy_sampled.output_logprobs, alone_sampled.output_logprobs));
  std::printf("batch invariance: max |log-prob diff| = %.3g\n", d);
  EXPECT_LE(d, 1e-6);
}

TEST(Engine, NSamplesSharePrefillAndMatchSeparateRequests) {
  auto model = tiny_model();
  auto p = prompt(21, 5);
  auto r = req(p, 1.0, 12, 7);
  r.params.n = 4;
  Engine engine(model, manual());
  auto out = engine.generate({r});
  ASSERT_EQ(out.size(), 4u);
  auto st = engine.stats();
  // The prompt is prefilled once: 21 prompt tokens, then decode steps only.
  EXPECT_EQ(st.prefill_tokens, 21);
  EXPECT_EQ(st.decode_tokens, 4 * 11);
  Engine separate(model, manual());
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(out[i].sample_index, i);
    EXPECT_EQ(out[i].cached_tokens, i == 0 ? 0 : 21);
    auto alone = separate.generate({req(p, 1.0, 12, 7 + i)})[0];
    EXPECT_EQ(out[i].output_ids, alone.output_ids) << "sample " << i;
    EXPECT_LE(max_diff(out[i].output_logprobs, alone.output_logprobs), 1e-6);
  }
  EXPECT_NE(out[0].output_ids, out[1].output_ids);
}

TEST(Engine, PreemptionUnderASmallPoolKeepsResults) {
  auto model = tiny_model();
  std::vector<GenerateRequest> reqs;
  for (int i = 0; i < 6; ++i) reqs.push_back(req(prompt(10 + i, 30 + i), 0.9, 30, 300 + i));
  Engine big(model, manual());
  auto ref = big.generate(reqs);
  Engine small(model, manual(/*kv_tokens=*/64, /*block=*/4));  // 16 blocks; each needs 10-12
  auto out = small.generate(reqs);
  EXPECT_GT(small.stats().preemptions, 0);
  for (size_t i = 0; i < reqs.size(); ++i) {
    EXPECT_EQ(out[i].output_ids, ref[i].output_ids) << i;
    EXPECT_LE(max_diff(out[i].output_logprobs, ref[i].output_logprobs), 1e-6);
  }
  EXPECT_EQ(small.stats().available_blocks, 16);
}

TEST(Engine, PrefixCacheReuseAndFlush) {
  auto model = tiny_model();
  Engine engine(model, manual());
  auto p = prompt(19, 9);
  auto first = engine.generate({req(p, 0, 8)})[0];
  auto second = engine.generate({req(p, 0, 8)})[0];
  EXPECT_EQ(first.cached_tokens, 0);
  EXPECT_EQ(second.cached_tokens, 16);
  EXPECT_EQ(second.output_ids, first.output_ids);
  EXPECT_LE(max_diff(second.output_logprobs, first.output_logprobs), 1e-6);
  EXPECT_GT(engine.stats().cached_blocks, 0);
  EXPECT_TRUE(engine.flush_cache());
  EXPECT_EQ(engine.stats().cached_blocks, 0);
  EXPECT_EQ(engine.generate({req(p, 0, 8)})[0].cached_tokens, 0);
}

TEST(Engine, WeightUpdateByNameEqualsRestartFromUpdatedWeights) {
  auto model = tiny_model(3);
  auto updated = tiny_model(5);
  std::vector<GenerateRequest> reqs = {req(prompt(12, 1), 0, 16), req(prompt(20, 2), 0.7, 16, 9)};
  Engine fresh(updated, manual());
  auto ref = fresh.generate(reqs);

  Engine engine(model, manual());
  // Requests in flight when the update lands are re-queued and finish on the new weights.
  auto f0 = engine.submit(reqs[0]);
  auto f1 = engine.submit(reqs[1]);
  for (int i = 0; i < 4; ++i) engine.step();
  std::vector<std::pair<std::string, at::Tensor>> named;
  for (size_t i = 0; i < updated->specs().size(); ++i) {
    named.emplace_back(updated->specs()[i].name, updated->parameters()[i]);
  }
  engine.update_weights(named, "v2");
  while (engine.step()) {
  }
  std::vector<GenerateOutput> out = {f0[0].get(), f1[0].get()};
  for (size_t i = 0; i < reqs.size(); ++i) {
    EXPECT_EQ(out[i].output_ids, ref[i].output_ids) << i;
    EXPECT_LE(max_diff(out[i].output_logprobs, ref[i].output_logprobs), 1e-6);
    EXPECT_EQ(out[i].weight_version, "v2");
  }
  EXPECT_EQ(engine.weight_version(), "v2");

  // Bad updates name the tensor and change nothing.
  EXPECT_THROW(
      {
        try {
          engine.update_weights({{"model.nope.weight", at::zeros({1})}}, "v3");
        } catch (const anvil::Error& e) {
          EXPECT_NE(std::string(e.what()).find("model.nope.weight"), std::string::npos);
          throw;
        }
      },
      anvil::Error);
  EXPECT_THROW(engine.update_weights({{"model.norm.weight", at::zeros({3})}}, "v3"), anvil::Error);
  EXPECT_EQ(engine.weight_version(), "v2");
}

TEST(Engine, AbortPauseStopTokensAndReleaseMemory) {
  auto model = tiny_model();
  Engine engine(model, manual());
  // Abort: partial output, finish reason abort.
  auto f = engine.submit(req(prompt(8, 1), 0, 50, std::nullopt, "job-1"));
  for (int i = 0; i < 4; ++i) engine.step();
  engine.abort("job-1");
  GenerateOutput aborted = f[0].get();
  EXPECT_EQ(aborted.finish, FinishReason::kAbort);
  EXPECT_EQ(aborted.output_ids.size(), 4u);  // one token per step (the first after prefill)
  EXPECT_FALSE(engine.step());

  // Stop token: greedy stops at the first occurrence of a chosen id, which is kept.
  auto full = engine.generate({req(prompt(8, 2), 0, 20)})[0];
  auto stop_req = req(prompt(8, 2), 0, 20);
  stop_req.params.stop_token_ids = {full.output_ids[5]};
  auto stopped = engine.generate({stop_req})[0];
  EXPECT_EQ(stopped.finish, FinishReason::kStop);
  ASSERT_TRUE(stopped.matched_token.has_value());
  EXPECT_EQ(*stopped.matched_token, full.output_ids[5]);
  auto first = std::find(full.output_ids.begin(), full.output_ids.end(), full.output_ids[5]);
  EXPECT_EQ(stopped.output_ids, std::vector<int64_t>(full.output_ids.begin(), first + 1));

  // Pause keeps state; release/resume of the KV cache recomputes and keeps results.
  auto g = engine.submit(req(prompt(8, 2), 0, 20));
  engine.step();
  engine.pause();
  engine.step();
  EXPECT_TRUE(engine.stats().paused);
  engine.continue_generation();
  engine.step();
  engine.release_memory(true, true);
  EXPECT_TRUE(engine.stats().kv_released);
  EXPECT_TRUE(engine.step());  // nothing runs while released
  EXPECT_THROW(engine.generate({req(prompt(4, 1), 0, 2)}), anvil::Error);
  engine.resume_memory(true, true);
  while (engine.step()) {
  }
  EXPECT_EQ(g[0].get().output_ids, full.output_ids);
}

TEST(Engine, BadRequestsAreErrorsNamingTheField) {
  auto model = tiny_model();
  Engine engine(model, manual(64, 4));
  auto expect_error = [&](GenerateRequest r, const std::string& needle) {
    try {
      engine.submit(std::move(r));
      ADD_FAILURE() << "no error for " << needle;
    } catch (const anvil::Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error(req({}, 0, 4), "input_ids");
  expect_error(req({1, kVocab}, 0, 4), "input_ids[1]");
  expect_error(req(prompt(70, 1), 0, 4), "KV cache");
  Engine roomy(model, manual());
  try {
    roomy.submit(req(prompt(256, 1), 0, 4));
    ADD_FAILURE();
  } catch (const anvil::Error& e) {
    EXPECT_NE(std::string(e.what()).find("context window"), std::string::npos);
  }
  auto r = req({1, 2}, -1, 4);
  expect_error(r, "temperature");
  auto zero = roomy.generate({req({1, 2}, 0, 0)})[0];
  EXPECT_TRUE(zero.output_ids.empty());
  EXPECT_EQ(zero.finish, FinishReason::kLength);
}

TEST(Engine, BackgroundThreadServesConcurrentSubmitters) {
  auto model = tiny_model();
  EngineOptions o = manual();
  o.background = true;
  Engine engine(model, o);
  std::vector<std::thread> threads;
  std::vector<GenerateOutput> outs(4);
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&, i] { outs[i] = engine.generate({req(prompt(9, i), 0, 10)})[0]; });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < 4; ++i)
    EXPECT_EQ(outs[i].output_ids, greedy_reference(*model, prompt(9, i), 10));
}

// ---------------------------------------------------------------------------------------
// Batched attention over the pool (KVPool::attend) against the per-sequence path

namespace {

// One forward of `chunks` (slot -> new tokens) through `cache`; logits [T, V].
at::Tensor cached_forward(const DecoderModel& m, anvil::models::KVStore& cache,
                          const std::vector<std::pair<int64_t, std::vector<int64_t>>>& chunks) {
  anvil::models::PackedBatch b;
  std::vector<int64_t> tokens, positions;
  for (const auto& [slot, ids] : chunks) {
    const int64_t past = cache.length(slot);
    for (size_t i = 0; i < ids.size(); ++i) {
      tokens.push_back(ids[i]);
      positions.push_back(past + static_cast<int64_t>(i));
    }
    b.seq_lens.push_back(static_cast<int64_t>(ids.size()));
    b.cache_slots.push_back(slot);
  }
  b.tokens = at::tensor(tokens, at::kLong);
  b.positions = at::tensor(positions, at::kLong);
  return m.forward(b, &cache);
}

}  // namespace

// Sequences of different lengths go through prefill chunks, a mixed step (chunks + decodes)
// and decode-only steps (one padded batched call with a mask) in the paged pool; every
// row's logits must equal the contiguous KVCache's per-sequence append() path within 1e-5
// (fp32; only the summation order of the attention differs).
TEST(KVPool, BatchedAttentionEqualsPerSequencePath) {
  at::NoGradGuard g;
  auto model = tiny_model();
  const ModelConfig& c = model->config();
  KVPool pool(KVPoolShape{c.num_hidden_layers, c.num_key_value_heads, c.head_dim, 4, 64},
              at::TensorOptions());
  anvil::models::KVCache ref(c.num_hidden_layers);
  std::vector<std::vector<std::pair<int64_t, std::vector<int64_t>>>> steps = {
      {{0, prompt(3, 1)}, {1, prompt(9, 2)}},             // prefill chunks only
      {{2, prompt(6, 3)}, {0, {5}}, {1, {7}}},            // one chunk + two decodes
      {{0, {1}}, {1, {2}}, {2, {3}}},                     // decode only, lengths differ
      {{1, prompt(5, 4)}, {2, {9}}},                      // a second chunk on a cache
      {{2, {11}}, {1, {12}}, {0, {13}}},                  // decode, other order
      {{3, prompt(1, 5)}, {0, {4}}, {1, {6}}, {2, {8}}},  // a one-token prompt decodes
  };
  double worst = 0;
  for (size_t s = 0; s < steps.size(); ++s) {
    for (const auto& [slot, ids] : steps[s]) {
      ASSERT_TRUE(pool.reserve(slot, pool.length(slot) + static_cast<int64_t>(ids.size())));
    }
    at::Tensor a = cached_forward(*model, pool, steps[s]);
    at::Tensor b = cached_forward(*model, ref, steps[s]);
    ASSERT_EQ(a.sizes(), b.sizes());
    const double d = (a - b).abs().max().item<double>();
    EXPECT_LE(d, 1e-5) << "step " << s;
    worst = std::max(worst, d);
  }
  std::printf("paged batched attention vs per-sequence: max |logit diff| = %.3g\n", worst);
}

// ---------------------------------------------------------------------------------------
// Top log-probs and streaming events

TEST(Engine, TopLogprobsEqualADirectSoftmax) {
  at::NoGradGuard g;
  auto model = tiny_model();
  Engine engine(model, manual());
  const double temperature = 0.7;
  auto r = req(prompt(11, 4), temperature, 6, 9);
  r.top_logprobs_num = 5;
  GenerateOutput out = engine.generate({r})[0];
  ASSERT_EQ(out.output_top_logprobs.size(), out.output_ids.size());
  std::vector<int64_t> seq = out.input_ids;
  seq.insert(seq.end(), out.output_ids.begin(), out.output_ids.end());
  at::Tensor logits = model->forward(anvil::models::PackedBatch::pack({seq}, at::kCPU));
  at::Tensor lp = at::log_softmax(logits.to(at::kDouble) / temperature, -1);  // [T, V]
  double worst = 0;
  for (size_t i = 0; i < out.output_ids.size(); ++i) {
    at::Tensor row = lp[static_cast<int64_t>(out.input_ids.size() + i) - 1];
    auto [values, ids] = at::topk(row, 5);
    const auto& top = out.output_top_logprobs[i];
    ASSERT_EQ(top.size(), 5u);
    for (int64_t k = 0; k < 5; ++k) {
      EXPECT_EQ(top[static_cast<size_t>(k)].first, ids[k].item<int64_t>()) << "token " << i;
      worst =
          std::max(worst, std::abs(top[static_cast<size_t>(k)].second - values[k].item<double>()));
      if (k > 0)
        EXPECT_GE(top[static_cast<size_t>(k) - 1].second, top[static_cast<size_t>(k)].second);
    }
    // The sampled token's log-prob is the same number in both lists when it is in the top.
    for (const auto& [id, value] : top) {
      if (id == out.output_ids[i]) EXPECT_EQ(value, out.output_logprobs[i]);
    }
  }
  std::printf("top log-probs vs direct log_softmax: max |diff| = %.3g\n", worst);
  EXPECT_LE(worst, 1e-5);
  // k larger than the vocabulary is clamped; k = 0 gives none; negative is refused.
  r.top_logprobs_num = kVocab + 10;
  EXPECT_EQ(engine.generate({r})[0].output_top_logprobs.at(0).size(), static_cast<size_t>(kVocab));
  r.top_logprobs_num = 0;
  EXPECT_TRUE(engine.generate({r})[0].output_top_logprobs.empty());
  r.top_logprobs_num = -1;
  try {
    engine.submit(r);
    FAIL() << "negative top_logprobs_num accepted";
  } catch (const anvil::Error& e) {
    EXPECT_NE(std::string(e.what()).find("top_logprobs_num"), std::string::npos) << e.what();
  }
}

TEST(Engine, OnTokenEventsGrowToTheFinalOutput) {
  auto model = tiny_model();
  Engine engine(model, manual(4096, 4, 16));
  auto r = req(prompt(20, 6), 0.9, 12, 5);
  r.params.n = 2;
  r.top_logprobs_num = 2;
  std::map<int64_t, std::vector<std::vector<int64_t>>> events;  // sample -> outputs so far
  std::map<int64_t, size_t> at_finish;                          // events seen when on_finish ran
  r.on_token = [&](const anvil::engine::TokenEvent& e) {
    ASSERT_EQ(e.output_logprobs.size(), e.output_ids.size());
    ASSERT_EQ(e.output_top_logprobs.size(), e.output_ids.size());
    events[e.sample_index].emplace_back(e.output_ids.begin(), e.output_ids.end());
  };
  r.on_finish = [&](const GenerateOutput& o) {
    at_finish[o.sample_index] = events[o.sample_index].size();
  };
  auto outs = engine.generate({r});
  ASSERT_EQ(outs.size(), 2u);
  for (const auto& o : outs) {
    const auto& ev = events[o.sample_index];
    ASSERT_EQ(ev.size(), 12u);  // one event per token
    for (size_t i = 0; i < ev.size(); ++i) {
      ASSERT_EQ(ev[i].size(), i + 1);
      EXPECT_TRUE(std::equal(ev[i].begin(), ev[i].end(), o.output_ids.begin()));
    }
    EXPECT_EQ(at_finish[o.sample_index], 12u);  // the last event precedes on_finish
  }
  EXPECT_NE(outs[0].output_ids, outs[1].output_ids);
}

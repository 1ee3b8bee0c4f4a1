// Rewards: math answer extraction/normalisation, exact match, --reward-key, remote_rm
// against a real HTTP server (cpp-httplib, in process) including retries, and the worker
// pool running rewards concurrently with generation.
#include "backends/common/error.hpp"
#include "backends/models/decoder.hpp"
#include "backends/models/weights.hpp"
#include "rollout/engine/engine.hpp"
#include "rollout/reward/math_answer.hpp"
#include "rollout/reward/reward.hpp"

#include <gtest/gtest.h>
#include <httplib.h>

#include <atomic>
#include <thread>

using anvil::reward::compute_reward;
using anvil::reward::last_boxed;
using anvil::reward::math_answers_equal;
using anvil::reward::math_reward;
using anvil::reward::reward_value;
using anvil::reward::RewardInput;
using anvil::reward::RewardOptions;
using anvil::reward::RewardWorker;
using nlohmann::json;

TEST(MathAnswer, LastBoxedWithNestedBraces) {
  EXPECT_EQ(last_boxed("so \\boxed{1} then \\boxed{\\frac{1}{2}} done"), "\\frac{1}{2}");
  EXPECT_EQ(last_boxed("\\fbox{7}"), "7");
  EXPECT_EQ(last_boxed("$\\boxed 42$"), "42");
  EXPECT_FALSE(last_boxed("no answer").has_value());
  EXPECT_FALSE(last_boxed("\\boxed{unbalanced").has_value());
}

TEST(MathAnswer, NormalisationAndEquality) {
  struct Case {
    const char *given, *truth;
    bool equal;
  };
  const Case cases[] = {
      {"\\frac12", "\\frac{1}{2}", true},
      {"0.5", "\\frac{1}{2}", true},
      {"1/2", "\\dfrac{1}{2}", true},
      {"\\left( 3, 4 \\right)", "(3,4)", true},
      {"10\\%", "10", true},
      {"x = 5", "5", true},
      {"90^\\circ", "90", true},
      {"\\$18.90", "18.90", true},
      {"1,234", "1234", true},
      {"5.0", "5", true},
      {"\\text{Monday}", "Monday", true},
      {"12 \\text{ cm}", "12", true},
      {"\\sqrt2", "\\sqrt{2}", true},
      {".5", "0.5", true},
      {"6", "5", false},
      {"\\frac{2}{4}", "\\frac{1}{2}", true},  // numerically equal
      {"x+1", "1+x", false},                   // no symbolic algebra
      {"", "5", false},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(math_answers_equal(c.given, c.truth), c.equal) << c.given << " vs " << c.truth;
  }
  EXPECT_EQ(math_reward("The answer is \\boxed{\\frac{3}{4}}.", "0.75"), 1.0);
  EXPECT_EQ(math_reward("The answer is \\boxed{4}.", "\\boxed{4}"), 1.0);
  EXPECT_EQ(math_reward("The answer is 4.", "4"), 0.0);  // no boxed answer
  EXPECT_EQ(math_reward("\\boxed{4}", ""), 0.0);
}

// Exact rational evaluation: equal values in different forms match, near misses that a
// floating-point tolerance would accept do not, and anything non-arithmetic falls back to
// string comparison.
TEST(MathAnswer, ExactRationalEquivalence) {
  struct Case {
    const char *given, *truth;
    bool equal;
  };
  const Case cases[] = {
      {"\\frac{1}{2}+\\frac{1}{4}", "0.75", true},
      {"3/4", "0.75", true},
      {"\\frac{6}{8}", "\\frac{3}{4}", true},
      {"2(3+4)", "14", true},
      {"2 \\cdot 3 - 1", "5", true},
      {"2 \\times 3", "6", true},
      {"12 \\div 4", "3", true},
      {"2^{10}", "1024", true},
      {"2^-2", "\\frac{1}{4}", true},
      {"-2^2", "-4", true},  // the power binds tighter than the minus
      {"(-2)^2", "4", true},
      {"-\\frac{1}{3}", "\\frac{-1}{3}", true},
      {"0.333333333333", "\\frac{1}{3}", false},  // exact: not a third
      {"1.0000000001", "1", false},               // within 1e-6 but not equal
      {"\\frac{1}{3}+\\frac{1}{3}", "\\frac{2}{3}", true},
      {"1/0", "1/0", true},                           // same string
      {"1/0", "2/0", false},                          // undefined values never match
      {"(1/2, 0.25)", "(0.5, \\frac{1}{4})", true},   // tuples element by element
      {"(1/2, 0.25)", "[0.5, \\frac{1}{4}]", false},  // brackets must agree
      {"(1, 2, 3)", "(1, 2)", false},
      {"[0, 1/2)", "[0, 0.5)", true},
      {"1,234,567", "1234567", true},
      {"2\\sqrt{2}", "\\sqrt{8}", false},                         // radicals: no symbolic algebra
      {"99999999999999999999*99999999999999999999", "1", false},  // overflow: no match
  };
  for (const Case& c : cases) {
    EXPECT_EQ(math_answers_equal(c.given, c.truth), c.equal) << c.given << " vs " << c.truth;
  }
}

TEST(Reward, TypesMetadataOverrideBoxedPrefixAndRewardKey) {
  RewardOptions o;
  o.rm_type = "exact_match";
  EXPECT_EQ(compute_reward({"p", "  Paris \n", "Paris", nullptr}, o), 1.0);
  EXPECT_EQ(compute_reward({"p", "Lyon", "Paris", nullptr}, o), 0.0);
  o.rm_type = "boxed_exact_match";
  EXPECT_EQ(compute_reward({"p", "it is \\boxed{Paris}", "Paris", nullptr}, o), 1.0);
  // metadata rm_type wins over --rm-type.
  EXPECT_EQ(compute_reward({"p", "\\boxed{2}", "2.0", json{{"rm_type", "math"}}}, o), 1.0);
  o.rm_type = "nonsense";
  EXPECT_THROW(o.validate(), anvil::Error);
  EXPECT_THROW(compute_reward({"p", "r", "l", nullptr}, o), anvil::Error);
  o.rm_type = "remote_rm";
  EXPECT_THROW(o.validate(), anvil::Error);  // no --rm-url
  EXPECT_EQ(reward_value(json(0.25), ""), 0.25);
  EXPECT_EQ(reward_value(json{{"acc", 1}, {"score", 0.5}}, "score"), 0.5);
  try {
    reward_value(json{{"acc", 1}}, "score");
    ADD_FAILURE();
  } catch (const anvil::Error& e) {
    EXPECT_NE(std::string(e.what()).find("--reward-key 'score'"), std::string::npos);
  }
  EXPECT_THROW(reward_value(json{{"acc", 1}}, ""), anvil::Error);
}

namespace {

// A real reward-model HTTP server on a free port; fails the first `failures` requests.
struct RewardServer {
  httplib::Server http;
  std::thread thread;
  int port = 0;
  std::atomic<int> calls{0};
  int failures = 0;
  json last;
  std::mutex mu;

  RewardServer() {
    http.Post("/reward", [this](const httplib::Request& req, httplib::Response& res) {
      if (calls++ < failures) {
        res.status = 503;
        return;
      }
      json body = json::parse(req.body);
      {
        std::lock_guard lock(mu);
        last = body;
      }
      json reply = {{"score", static_cast<double>(body["response"].get<std::string>().size())},
                    {"label_seen", body["label"]}};
      res.set_content(reply.dump(), "application/json");
    });
    port = http.bind_to_any_port("127.0.0.1");
    thread = std::thread([this] { http.listen_after_bind(); });
    while (!http.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ~RewardServer() {
    http.stop();
    thread.join();
  }
};

}  // namespace

TEST(Reward, RemoteRmPostsSlimesPayloadAndRetries) {
  RewardServer server;
  server.failures = 2;
  RewardOptions o;
  o.rm_type = "remote_rm";
  o.rm_url = fmt::format("http://127.0.0.1:{}/reward", server.port);
  o.backoff_scale = 0.01;
  o.reward_key = "score";
  o.validate();
  json r = compute_reward({"What?", "four", json{{"answer", 4}}, nullptr}, o);
  EXPECT_EQ(server.calls.load(), 3);  // two 503s, then success
  EXPECT_EQ(reward_value(r, o.reward_key), 4.0);
  EXPECT_EQ(server.last,
            (json{{"prompt", "What?"}, {"response", "four"}, {"label", {{"answer", 4}}}}));
  // Unreachable after max_retries: an error naming the URL.
  o.rm_url = "http://127.0.0.1:1/reward";
  o.max_retries = 2;
  try {
    compute_reward({"p", "r", "l", nullptr}, o);
    ADD_FAILURE();
  } catch (const anvil::Error& e) {
    EXPECT_NE(std::string(e.what()).find("127.0.0.1:1/reward"), std::string::npos);
  }
}

TEST(Reward, WorkerScoresWhileTheEngineGenerates) {
  // A tiny model; each sample's reward is submitted from on_finish as it completes.
  nlohmann::json j = {{"architectures", {"Qwen3ForCausalLM"}},
                      {"vocab_size", 32},
                      {"hidden_size", 32},
                      {"intermediate_size", 64},
                      {"num_hidden_layers", 1},
                      {"num_attention_heads", 2},
                      {"num_key_value_heads", 1},
                      {"head_dim", 16},
                      {"max_position_embeddings", 256}};
  auto model = std::make_shared<anvil::models::DecoderModel>(
      anvil::models::ModelConfig::from_json(j, "reward-test"), at::TensorOptions());
  model->parameters() = anvil::models::init_parameters(model->config(), model->specs(), 1, {});
  anvil::engine::EngineOptions eo;
  eo.background = false;
  eo.kv_cache_tokens = 2048;
  eo.eos_token_ids = {99};
  anvil::engine::Engine engine(model, eo);

  RewardOptions ro;
  ro.rm_type = "exact_match";
  RewardWorker worker(ro, 2);
  std::mutex mu;
  std::vector<std::future<json>> rewards;
  std::vector<int64_t> finished_at_step;
  int64_t step = 0;
  std::vector<std::future<anvil::engine::GenerateOutput>> outs;
  for (int i = 0; i < 4; ++i) {
    anvil::engine::GenerateRequest r;
    r.input_ids = {1, 2, 3};
    r.params.temperature = 0;
    r.params.max_new_tokens = 2 + 6 * i;  // finish at different steps
    r.on_finish = [&](const anvil::engine::GenerateOutput& o) {
      std::lock_guard lock(mu);
      finished_at_step.push_back(step);
      rewards.push_back(worker.submit({"p", std::to_string(o.output_ids.size()),
                                       std::to_string(o.output_ids.size()), nullptr}));
    };
    for (auto& f : engine.submit(r)) outs.push_back(std::move(f));
  }
  // The first reward is done while later samples are still generating.
  bool first_ready_midway = false;
  while (engine.step()) {
    ++step;
    std::lock_guard lock(mu);
    if (!rewards.empty() &&
        rewards[0].wait_for(std::chrono::seconds(5)) == std::future_status::ready &&
        engine.stats().running > 0) {
      first_ready_midway = true;
    }
  }
  EXPECT_TRUE(first_ready_midway);
  ASSERT_EQ(rewards.size(), 4u);
  for (auto& r : rewards) EXPECT_EQ(r.get(), 1.0);
  EXPECT_LT(finished_at_step.front(), finished_at_step.back());
  // Group rewards: a hook over the samples of one prompt.
  auto g = worker.submit_group({{"p", "a", "a", nullptr}, {"p", "bb", "a", nullptr}},
                               [](const std::vector<RewardInput>& s) {
                                 std::vector<json> out;
                                 for (const auto& x : s) out.push_back(x.response.size() * 1.0);
                                 return out;
                               });
  EXPECT_EQ(g.get(), (std::vector<json>{1.0, 2.0}));
  EXPECT_EQ(worker.submit_group({{"p", "a", "a", nullptr}, {"p", "b", "a", nullptr}}).get(),
            (std::vector<json>{1.0, 0.0}));
}

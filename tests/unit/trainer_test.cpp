// The training engine end to end on tiny models: scheduling, fused chunked log-probs,
// packing invariance, gradient checkpointing, the Trainer's RL and SFT steps, checkpoints
// with bitwise resume, and HF export.
#include "backends/common/error.hpp"
#include "backends/models/decoder.hpp"
#include "backends/models/weights.hpp"
#include "backends/train/checkpoint.hpp"
#include "backends/train/logprobs.hpp"
#include "backends/train/schedule.hpp"
#include "backends/train/trainer.hpp"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/autograd.h>

#include <filesystem>
#include <fstream>
#include <numeric>
#include <random>
#include <set>

namespace fs = std::filesystem;
using namespace anvil::train;
using anvil::models::DecoderModel;
using anvil::models::ModelConfig;

namespace {

ModelConfig tiny_config(bool tied = true) {
  nlohmann::json j = {{"architectures", {"Qwen3ForCausalLM"}},
                      {"vocab_size", 48},
                      {"hidden_size", 32},
                      {"intermediate_size", 64},
                      {"num_hidden_layers", 2},
                      {"num_attention_heads", 4},
                      {"num_key_value_heads", 2},
                      {"head_dim", 8},
                      {"max_position_embeddings", 128},
                      {"tie_word_embeddings", tied}};
  return ModelConfig::from_json(j, "trainer-test");
}

std::unique_ptr<DecoderModel> tiny_model(uint64_t seed = 3, bool tied = true) {
  auto m = std::make_unique<DecoderModel>(tiny_config(tied), at::TensorOptions());
  m->parameters() =
      anvil::models::init_parameters(m->config(), m->specs(), seed, at::TensorOptions());
  return m;
}

std::vector<TrainSample> random_samples(int n, uint64_t seed, int vocab = 48) {
  std::mt19937_64 rng(seed);
  std::vector<TrainSample> out;
  for (int i = 0; i < n; ++i) {
    TrainSample s;
    int prompt = 2 + static_cast<int>(rng() % 5), resp = 1 + static_cast<int>(rng() % 7);
    for (int t = 0; t < prompt + resp; ++t) s.tokens.push_back(static_cast<int64_t>(rng() % vocab));
    s.response_length = resp;
    for (int t = 0; t < resp; ++t) s.loss_mask.push_back(t == 0 || rng() % 4 != 0 ? 1.0f : 0.0f);
    s.reward = static_cast<double>(rng() % 3) - 1.0;
    for (int t = 0; t < resp; ++t)
      s.rollout_logprobs.push_back(-0.1f - static_cast<float>(rng() % 100) / 25.0f);
    out.push_back(std::move(s));
  }
  return out;
}

std::vector<at::Tensor> grads_of(DecoderModel& m) {
  std::vector<at::Tensor> g;
  for (auto& p : m.parameters())
    g.push_back(p.grad().defined() ? p.grad().clone() : at::zeros_like(p));
  return g;
}

double max_rel_diff(const std::vector<at::Tensor>& a, const std::vector<at::Tensor>& b) {
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    double scale = std::max(1e-3, b[i].abs().max().item<double>());
    worst = std::max(worst, (a[i] - b[i]).abs().max().item<double>() / scale);
  }
  return worst;
}

}  // namespace

// ---- schedule ----

TEST(Schedule, StaticMicroBatchesAndSteps) {
  ScheduleOptions o;
  o.global_batch_size = 4;
  o.micro_batch_size = 2;
  Schedule s = build_schedule({5, 6, 7, 8, 9, 10, 11, 12, 13}, {}, o);
  ASSERT_EQ(s.steps.size(), 2u);
  EXPECT_EQ(s.dropped_samples, 1);
  EXPECT_EQ(s.steps[0].micro_batches[0], (std::vector<std::vector<int64_t>>{{0, 1}, {2, 3}}));
  EXPECT_EQ(s.steps[1].samples, (std::vector<int64_t>{4, 5, 6, 7}));
}

TEST(Schedule, DynamicFirstFitRespectsCapAndKeepsRolloutsTogether) {
  ScheduleOptions o;
  o.global_batch_size = 2;
  o.use_dynamic_batch_size = true;
  o.max_tokens_per_gpu = 20;
  std::vector<int64_t> len = {8, 9, 30, 5, 4, 6};
  std::vector<int64_t> rid = {0, 0, 1, 1, 2, 2};  // rollout 0 = samples 0,1; ...
  Schedule s = build_schedule(len, rid, o);
  ASSERT_EQ(s.steps.size(), 1u);
  EXPECT_EQ(s.dropped_samples, 2);
  EXPECT_EQ(s.steps[0].samples, (std::vector<int64_t>{0, 1, 2, 3}));
  std::vector<int64_t> seen;
  for (auto& mb : s.steps[0].micro_batches[0]) {
    int64_t tokens = 0;
    for (int64_t i : mb) tokens += len[static_cast<size_t>(i)], seen.push_back(i);
    if (mb.size() > 1) EXPECT_LE(tokens, 20);  // the 30-token sample runs alone
  }
  std::sort(seen.begin(), seen.end());
  EXPECT_EQ(seen, s.steps[0].samples);
}

TEST(Schedule, DataParallelRanksGetEqualCountsBalancedByTokens) {
  ScheduleOptions o;
  o.global_batch_size = 8;
  o.use_dynamic_batch_size = true;
  o.max_tokens_per_gpu = 1000;  // everything fits one bin: must be split for 4 ranks
  o.dp_size = 4;
  std::vector<int64_t> len = {100, 90, 80, 70, 60, 50, 40, 30};
  Schedule s = build_schedule(len, {}, o);
  ASSERT_EQ(s.steps[0].micro_batches.size(), 4u);
  size_t k = s.steps[0].micro_batches[0].size();
  std::vector<int64_t> seen, load;
  for (auto& rank : s.steps[0].micro_batches) {
    EXPECT_EQ(rank.size(), k);
    int64_t t = 0;
    for (auto& mb : rank)
      for (int64_t i : mb) t += len[static_cast<size_t>(i)], seen.push_back(i);
    load.push_back(t);
  }
  std::sort(seen.begin(), seen.end());
  EXPECT_EQ(seen, (std::vector<int64_t>{0, 1, 2, 3, 4, 5, 6, 7}));
  EXPECT_LE(
      *std::max_element(load.begin(), load.end()) - *std::min_element(load.begin(), load.end()),
      60);
}

TEST(Schedule, BadOptionsAreNamed) {
  ScheduleOptions o;
  o.global_batch_size = 0;
  EXPECT_THROW(
      {
        try {
          build_schedule({3}, {}, o);
        } catch (const anvil::Error& e) {
          EXPECT_NE(std::string(e.what()).find("--global-batch-size"), std::string::npos);
          throw;
        }
      },
      anvil::Error);
  o.global_batch_size = 4;
  EXPECT_THROW(build_schedule({3, 4}, {}, o), anvil::Error);  // fewer rollouts than a step
  o.global_batch_size = 3;
  o.dp_size = 2;
  o.micro_batch_size = 1;
  EXPECT_THROW(build_schedule({3, 4, 5}, {}, o), anvil::Error);  // 3 mbs for 2 ranks (static)
  o.use_dynamic_batch_size = true;
  EXPECT_THROW(build_schedule({3, 4, 5}, {}, o), anvil::Error);  // no --max-tokens-per-gpu
}

// ---- fused chunked log-probs ----

TEST(ChunkedLogProbs, MatchesDirectAutogradIncludingEntropyAndTemperature) {
  at::manual_seed(1);
  for (double temperature : {1.0, 0.7}) {
    for (int64_t chunk : {1, 5, 64}) {
      // Logits of a few units, as a model's; fp32 inside, so compare to an fp64 reference.
      at::Tensor h = (at::randn({13, 16}, at::kDouble) * 0.5).requires_grad_(true);
      at::Tensor w = (at::randn({40, 16}, at::kDouble) * 0.5).requires_grad_(true);
      at::Tensor y = at::randint(0, 40, {13}, at::kLong);
      at::Tensor gl = at::randn({13}, at::kDouble), ge = at::randn({13}, at::kDouble);
      auto r = token_logprobs(h, w, y, {temperature, chunk, true});
      auto g1 = torch::autograd::grad(
          {(r.logprobs * gl.to(at::kFloat)).sum() + (r.entropy * ge.to(at::kFloat)).sum()}, {h, w});
      at::Tensor z = at::linear(h, w) / temperature;
      at::Tensor lsm = at::log_softmax(z, -1);
      at::Tensor lp = lsm.gather(1, y.unsqueeze(1)).squeeze(1);
      at::Tensor ent = -(lsm.exp() * lsm).sum(-1);
      EXPECT_TRUE(at::allclose(r.logprobs.to(at::kDouble), lp, 1e-6, 1e-6));
      EXPECT_TRUE(at::allclose(r.entropy.to(at::kDouble), ent, 1e-6, 1e-6));
      auto g2 = torch::autograd::grad({(lp * gl).sum() + (ent * ge).sum()}, {h, w});
      EXPECT_TRUE(at::allclose(g1[0], g2[0], 1e-5, 1e-6)) << "chunk " << chunk;
      EXPECT_TRUE(at::allclose(g1[1], g2[1], 1e-5, 1e-6)) << "chunk " << chunk;
    }
  }
}

// ---- packing, checkpointing ----

// Packed micro-batches give the same gradients as one sequence at a time (fp32, 1e-6).
TEST(Trainer, PackedMicroBatchesMatchOneSequenceAtATime) {
  auto samples = random_samples(6, 11);
  std::vector<std::vector<at::Tensor>> grads;
  for (bool packed : {false, true}) {
    auto model = tiny_model();
    TrainerOptions o;
    o.schedule.global_batch_size = 6;
    o.schedule.use_dynamic_batch_size = packed;
    o.schedule.max_tokens_per_gpu = 1000;
    o.schedule.micro_batch_size = 1;
    o.loss.entropy_coef = 0.01;
    o.loss.use_tis = true;
    o.log_probs_chunk_size = packed ? 7 : 1024;
    Trainer t(*model, o);
    Trainer::StepInputs in;
    in.samples = &samples;
    std::vector<at::Tensor> masks;
    for (auto& s : samples) {
      masks.push_back(at::tensor(s.loss_mask, at::kFloat));
      in.advantages.push_back(at::full({s.response_length}, s.reward, at::kFloat));
      in.old_logprobs.push_back(at::tensor(s.rollout_logprobs, at::kFloat) * 0.9);
      in.rollout_logprobs.push_back(at::tensor(s.rollout_logprobs, at::kFloat));
    }
    in.loss_masks = masks;
    in.weights = reducer_weights(masks, {}, 6, false);
    Schedule sch = build_schedule({8, 9, 10, 11, 7, 6}, {}, o.schedule);
    ASSERT_EQ(sch.steps[0].micro_batches[0].size(), packed ? 1u : 6u);
    t.accumulate_step(sch.steps[0], in);
    grads.push_back(grads_of(*model));
  }
  EXPECT_LT(max_rel_diff(grads[1], grads[0]), 1e-6);
}

TEST(Trainer, GradientCheckpointingGivesIdenticalGradients) {
  auto samples = random_samples(4, 5);
  std::vector<std::vector<at::Tensor>> grads;
  for (bool ckpt : {false, true}) {
    auto model = tiny_model(9, /*tied=*/false);
    TrainerOptions o;
    o.schedule.global_batch_size = 4;
    o.schedule.micro_batch_size = 2;
    o.gradient_checkpointing = ckpt;
    o.optimizer.lr = 0;  // keep weights: compare the gradients of one step
    Trainer t(*model, o);
    Trainer::StepInputs in;
    in.samples = &samples;
    for (auto& s : samples) {
      in.loss_masks.push_back(at::tensor(s.loss_mask, at::kFloat));
      in.advantages.push_back(at::full({s.response_length}, s.reward, at::kFloat));
    }
    in.weights = reducer_weights(in.loss_masks, {}, 4, false);
    Schedule sch = build_schedule({8, 9, 10, 11}, {}, o.schedule);
    t.accumulate_step(sch.steps[0], in);
    grads.push_back(grads_of(*model));
  }
  for (size_t i = 0; i < grads[0].size(); ++i)
    EXPECT_TRUE(at::allclose(grads[1][i], grads[0][i], 1e-6, 1e-7)) << i;
}

// The recorded graph really is per-layer checkpointed: a CheckpointedLayer node per layer
// and none of the layers' internal nodes (which are what hold activations).
TEST(Trainer, GradientCheckpointingRecordsOneNodePerLayer) {
  auto count_nodes = [](const at::Tensor& out, int& checkpointed) {
    std::vector<torch::autograd::Node*> stack{out.grad_fn().get()};
    std::set<torch::autograd::Node*> seen;
    while (!stack.empty()) {
      auto* n = stack.back();
      stack.pop_back();
      if (n == nullptr || !seen.insert(n).second) continue;
      if (n->name().find("CheckpointedLayer") != std::string::npos) ++checkpointed;
      for (const auto& e : n->next_edges()) stack.push_back(e.function.get());
    }
    return seen.size();
  };
  auto model = tiny_model();
  for (auto& p : model->parameters()) p.requires_grad_(true);
  auto batch = anvil::models::PackedBatch::pack({{1, 2, 3, 4}, {5, 6, 7}}, at::kCPU);
  int plain_ckpt = 0, ckpt = 0;
  size_t plain = count_nodes(model->forward_hidden(batch), plain_ckpt);
  model->set_gradient_checkpointing(true);
  size_t with = count_nodes(model->forward_hidden(batch), ckpt);
  EXPECT_EQ(plain_ckpt, 0);
  EXPECT_EQ(ckpt, model->config().num_hidden_layers);
  EXPECT_LT(with * 3, plain);
}

// ---- RL and SFT steps ----

TEST(Trainer, PolicyStepRaisesLogProbOfRewardedResponse) {
  auto model = tiny_model();
  std::vector<TrainSample> samples = random_samples(4, 21);
  for (int i = 0; i < 4; ++i) {
    samples[i].reward = i == 0 ? 1.0 : -1.0 / 3.0;
    samples[i].rollout_logprobs.clear();
  }
  TrainerOptions o;
  o.schedule.global_batch_size = 4;
  o.optimizer.lr = 1e-2;
  o.optimizer.clip_grad = 0;
  Trainer t(*model, o);
  auto before = response_logprobs(*model, samples, 1.0, 64, 1 << 20).logprobs;
  auto metrics = t.train_rollout(samples);
  ASSERT_EQ(metrics.size(), 1u);
  EXPECT_NEAR(metrics[0].at("ppo_kl"), 0.0, 1e-6);  // first step is on-policy
  EXPECT_GT(metrics[0].at("grad_norm"), 0.0);
  EXPECT_EQ(metrics[0].at("lr"), 1e-2);
  auto after = response_logprobs(*model, samples, 1.0, 64, 1 << 20).logprobs;
  at::Tensor m0 = at::tensor(samples[0].loss_mask, at::kFloat);
  EXPECT_GT(((after[0] - before[0]) * m0).sum().item<double>(), 0.0);
}

// One optimizer step per rollout: the training forward's own log-probs stand in for the
// old ones (no separate pass), which gives the same update as recomputing them; with two
// steps per rollout, or --kl-coef, the separate pass still runs (the second step's old
// log-probs are not the current weights').
TEST(Trainer, OneStepRolloutReusesTheTrainingForwardAsOldLogProbs) {
  std::vector<TrainSample> samples = random_samples(8, 5);
  for (auto& s : samples) s.rollout_logprobs.clear();
  auto train = [&](int64_t global_batch, bool recompute, double kl_coef) {
    auto model = tiny_model(11);
    TrainerOptions o;
    o.schedule.global_batch_size = global_batch;
    o.schedule.micro_batch_size = 3;  // several micro-batches of one step
    o.optimizer.lr = 1e-3;            // Adam's first step is ~lr * sign(g): keeps rounding small
    o.loss.eps_clip = o.loss.eps_clip_high = 0.01;  // a ratio off 1 would be clipped visibly
    o.advantage.kl_coef = kl_coef;
    o.recompute_old_logprobs = recompute;
    Trainer t(*model, o);
    std::vector<at::Tensor> ref;
    if (kl_coef != 0)
      for (const auto& s : samples) ref.push_back(at::zeros({s.response_length}));
    auto metrics = t.train_rollout(samples, ref);
    return std::make_pair(metrics, model->parameters());
  };
  auto [fused_m, fused_w] = train(8, false, 0);
  auto [sep_m, sep_w] = train(8, true, 0);
  ASSERT_EQ(fused_m.size(), 1u);
  EXPECT_EQ(fused_m[0].at("ratio_max"), 1.0);  // the same tensor, detached: exactly 1
  EXPECT_EQ(fused_m[0].at("ratio_min"), 1.0);
  EXPECT_NEAR(sep_m[0].at("ratio_max"), 1.0, 1e-5);
  EXPECT_NEAR(fused_m[0].at("loss"), sep_m[0].at("loss"), 1e-6);
  for (size_t i = 0; i < fused_w.size(); ++i)
    EXPECT_LT((fused_w[i] - sep_w[i]).abs().max().item<double>(), 1e-6) << i;
  // Two steps per rollout: the second step's ratio moves off 1 either way.
  auto [two_m, two_w] = train(4, false, 0);
  ASSERT_EQ(two_m.size(), 2u);
  EXPECT_NE(two_m[1].at("ratio_max"), 1.0);
  auto [kl_m, kl_w] = train(8, false, 0.1);  // shaping rewards needs them first: it still trains
  EXPECT_NEAR(kl_m[0].at("ratio_max"), 1.0, 1e-5);
}

TEST(Trainer, SftMemorisesSmallDataset) {
  auto model = tiny_model(4);
  std::vector<std::vector<int64_t>> data = {{10, 5, 9, 13, 17, 21, 25, 2},
                                            {11, 6, 7, 8, 30, 31, 2},
                                            {12, 33, 12, 12, 4, 19, 20, 21, 2},
                                            {14, 3, 3, 3, 39, 2}};
  std::vector<TrainSample> samples;
  for (auto& d : data) {
    TrainSample s;
    s.tokens = d;
    s.response_length = static_cast<int64_t>(d.size()) - 1;
    samples.push_back(s);
  }
  TrainerOptions o;
  o.loss.loss_type = "sft_loss";
  o.loss.calculate_per_token_loss = true;
  o.schedule.global_batch_size = 4;
  o.schedule.micro_batch_size = 2;
  o.optimizer.lr = 1e-2;
  Trainer t(*model, o);
  double loss = 1e9;
  for (int i = 0; i < 300 && loss >= 0.05; ++i) loss = t.train_rollout(samples)[0].at("loss");
  EXPECT_LT(loss, 0.05);
}

TEST(Trainer, BadSamplesAreNamed) {
  auto model = tiny_model();
  TrainerOptions o;
  o.schedule.global_batch_size = 1;
  Trainer t(*model, o);
  auto s = random_samples(1, 1);
  s[0].response_length = static_cast<int64_t>(s[0].tokens.size());
  try {
    t.train_rollout(s);
    FAIL();
  } catch (const anvil::Error& e) {
    EXPECT_NE(std::string(e.what()).find("sample 0: response_length"), std::string::npos);
  }
  s = random_samples(1, 1);
  s[0].tokens[0] = 999;
  EXPECT_THROW(t.train_rollout(s), anvil::Error);
  s = random_samples(1, 1);
  s[0].loss_mask.push_back(1);
  EXPECT_THROW(t.train_rollout(s), anvil::Error);
  o.loss.use_kl_loss = true;
  Trainer t2(*model, o);
  EXPECT_THROW(t2.train_rollout(random_samples(1, 1)), anvil::Error);  // no ref log-probs
}

// ---- checkpoints ----

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("anvil-ckpt-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

TrainerOptions resume_options() {
  TrainerOptions o;
  o.schedule.global_batch_size = 2;
  o.schedule.micro_batch_size = 1;
  o.optimizer.lr = 3e-3;
  o.optimizer.lr_warmup_iters = 2;
  o.optimizer.lr_decay_style = "cosine";
  o.optimizer.lr_decay_iters = 10;
  o.optimizer.weight_decay = 0.1;
  o.loss.entropy_coef = 0.01;
  return o;
}

// N steps, save, resume in a fresh model+optimizer, M more == N+M straight, bitwise (CPU fp32).
TEST_F(CheckpointTest, ResumeIsBitwiseIdentical) {
  auto rollouts = std::vector<std::vector<TrainSample>>{random_samples(4, 1), random_samples(4, 2),
                                                        random_samples(4, 3), random_samples(4, 4)};
  auto straight = tiny_model();
  Trainer a(*straight, resume_options());
  for (auto& r : rollouts) a.train_rollout(r);

  auto first = tiny_model();
  Trainer b(*first, resume_options());
  b.train_rollout(rollouts[0]);
  b.train_rollout(rollouts[1]);
  save_checkpoint(dir_, 2, *first, b.optimizer(), {{"rollout_id", 2}});

  auto resumed = tiny_model(77);  // different initial weights: everything must come from disk
  Trainer c(*resumed, resume_options());
  auto loaded = load_checkpoint(dir_, *resumed, c.optimizer());
  ASSERT_TRUE(loaded);
  EXPECT_EQ(loaded->iteration, 2);
  EXPECT_EQ(loaded->state.at("rollout_id"), 2);
  EXPECT_EQ(c.steps(), 4);
  c.train_rollout(rollouts[2]);
  c.train_rollout(rollouts[3]);
  for (size_t i = 0; i < straight->parameters().size(); ++i)
    EXPECT_TRUE(at::equal(straight->parameters()[i], resumed->parameters()[i]))
        << straight->specs()[i].name;
}

TEST_F(CheckpointTest, LatestPointerAndPartialCheckpoints) {
  auto model = tiny_model();
  Trainer t(*model, resume_options());
  EXPECT_FALSE(load_checkpoint(dir_, *model, t.optimizer()));  // nothing saved yet
  save_checkpoint(dir_, 1, *model, t.optimizer(), {});
  save_checkpoint(dir_, 5, *model, t.optimizer(), {});
  EXPECT_EQ(load_checkpoint(dir_, *model, t.optimizer())->iteration, 5);
  EXPECT_EQ(load_checkpoint(dir_, *model, t.optimizer(), 1)->iteration, 1);
  // A leftover temporary directory is never mistaken for a checkpoint.
  fs::create_directories(dir_ / "iter_0000009.tmp.1");
  EXPECT_EQ(load_checkpoint(dir_, *model, t.optimizer())->iteration, 5);
  // A damaged one is an error naming what is missing.
  fs::remove(iteration_dir(dir_, 5) / "optimizer.safetensors");
  try {
    load_checkpoint(dir_, *model, t.optimizer());
    FAIL();
  } catch (const anvil::Error& e) {
    EXPECT_NE(std::string(e.what()).find("optimizer.safetensors is missing"), std::string::npos);
  }
  std::ofstream(dir_ / "latest_checkpointed_iteration.txt") << "five";
  EXPECT_THROW(load_checkpoint(dir_, *model, t.optimizer()), anvil::Error);
  // A checkpoint of another model shape is rejected, naming the tensor.
  save_checkpoint(dir_, 6, *model, t.optimizer(), {});
  auto other = std::make_unique<DecoderModel>(tiny_config(false), at::TensorOptions());
  other->parameters() = anvil::models::init_parameters(other->config(), other->specs(), 1, {});
  Trainer t2(*other, resume_options());
  EXPECT_THROW(load_checkpoint(dir_, *other, t2.optimizer()), anvil::Error);
}

TEST_F(CheckpointTest, Bf16ParametersKeepFp32Masters) {
  auto model =
      std::make_unique<DecoderModel>(tiny_config(), at::TensorOptions().dtype(at::kBFloat16));
  model->parameters() = anvil::models::init_parameters(model->config(), model->specs(), 3,
                                                       at::TensorOptions().dtype(at::kBFloat16));
  Trainer t(*model, resume_options());
  t.train_rollout(random_samples(2, 8));
  save_checkpoint(dir_, 1, *model, t.optimizer(), {});
  auto again =
      std::make_unique<DecoderModel>(tiny_config(), at::TensorOptions().dtype(at::kBFloat16));
  again->parameters() = anvil::models::init_parameters(again->config(), again->specs(), 5,
                                                       at::TensorOptions().dtype(at::kBFloat16));
  Trainer t2(*again, resume_options());
  load_checkpoint(dir_, *again, t2.optimizer());
  for (size_t i = 0; i < model->parameters().size(); ++i) {
    EXPECT_TRUE(at::equal(t.optimizer().master_weights()[i], t2.optimizer().master_weights()[i]));
    EXPECT_TRUE(at::equal(model->parameters()[i], again->parameters()[i]));
  }
}

TEST_F(CheckpointTest, ExportHfIsLoadableAndCopiesTokenizerFiles) {
  auto model = tiny_model();
  fs::create_directories(dir_ / "src");
  std::ofstream(dir_ / "src" / "tokenizer.json") << "{}";
  export_hf(dir_ / "hf", *model, dir_ / "src", at::kFloat);
  EXPECT_TRUE(fs::exists(dir_ / "hf" / "tokenizer.json"));
  auto loaded = DecoderModel::from_pretrained(dir_ / "hf", at::kFloat, at::kCPU);
  for (size_t i = 0; i < model->parameters().size(); ++i)
    EXPECT_TRUE(at::equal(model->parameters()[i], loaded->parameters()[i]));
  EXPECT_FALSE(fs::exists(fs::path(dir_ / "hf").concat(".tmp." + std::to_string(::getpid()))));
}

// ---- CUDA (skipped without a device) ----

TEST(CudaTrainer, Fp32GradientsMatchCpu) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  auto samples = random_samples(6, 31);
  std::vector<std::vector<at::Tensor>> grads;
  for (const char* dev : {"cpu", "cuda"}) {
    auto model = tiny_model();
    for (auto& p : model->parameters()) p = p.to(at::Device(dev));
    auto cuda_model =
        std::make_unique<DecoderModel>(model->config(), at::TensorOptions().device(dev));
    cuda_model->parameters() = model->parameters();
    TrainerOptions o;
    o.schedule.global_batch_size = 6;
    o.schedule.use_dynamic_batch_size = true;
    o.schedule.max_tokens_per_gpu = 24;
    o.loss.entropy_coef = 0.01;
    o.log_probs_chunk_size = 5;
    o.gradient_checkpointing = std::string(dev) == "cuda";
    Trainer t(*cuda_model, o);
    Trainer::StepInputs in;
    in.samples = &samples;
    for (auto& s : samples) {
      in.loss_masks.push_back(at::tensor(s.loss_mask, at::kFloat));
      in.advantages.push_back(at::full({s.response_length}, s.reward, at::kFloat));
      in.old_logprobs.push_back(at::tensor(s.rollout_logprobs, at::kFloat));
    }
    in.weights = reducer_weights(in.loss_masks, {}, 6, false);
    std::vector<int64_t> lengths;
    for (auto& s : samples) lengths.push_back(static_cast<int64_t>(s.tokens.size()));
    t.accumulate_step(build_schedule(lengths, {}, o.schedule).steps[0], in);
    auto g = grads_of(*cuda_model);
    for (auto& x : g) x = x.cpu();
    grads.push_back(g);
  }
  EXPECT_LT(max_rel_diff(grads[1], grads[0]), 1e-4);
}

TEST(CudaTrainer, Bf16SftLearnsAndCheckpointsRoundTrip) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  auto opts = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
  auto model = std::make_unique<DecoderModel>(tiny_config(), opts);
  model->parameters() = anvil::models::init_parameters(model->config(), model->specs(), 3, opts);
  std::vector<TrainSample> samples;
  for (auto& d :
       std::vector<std::vector<int64_t>>{{10, 5, 9, 13, 17, 21, 25, 2}, {11, 6, 7, 8, 30, 31, 2}}) {
    TrainSample s;
    s.tokens = d;
    s.response_length = static_cast<int64_t>(d.size()) - 1;
    samples.push_back(s);
  }
  TrainerOptions o;
  o.loss.loss_type = "sft_loss";
  o.schedule.global_batch_size = 2;
  o.optimizer.lr = 1e-2;
  Trainer t(*model, o);
  double first = t.train_rollout(samples)[0].at("loss"), last = first;
  for (int i = 0; i < 40; ++i) last = t.train_rollout(samples)[0].at("loss");
  EXPECT_LT(last, first * 0.5);
  fs::path dir = fs::temp_directory_path() / ("anvil-cuda-ckpt-" + std::to_string(::getpid()));
  save_checkpoint(dir, 41, *model, t.optimizer(), {});
  auto again = std::make_unique<DecoderModel>(tiny_config(), opts);
  again->parameters() = anvil::models::init_parameters(again->config(), again->specs(), 9, opts);
  Trainer t2(*again, o);
  load_checkpoint(dir, *again, t2.optimizer());
  for (size_t i = 0; i < model->parameters().size(); ++i) {
    EXPECT_TRUE(at::equal(model->parameters()[i], again->parameters()[i]));
    EXPECT_TRUE(at::equal(t.optimizer().master_weights()[i], t2.optimizer().master_weights()[i]));
  }
  fs::remove_all(dir);
}

TEST(CudaTrainer, OffloadAndOnloadKeepTrainingBitwise) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  auto opts = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
  auto samples = random_samples(4, 17);
  TrainerOptions o;
  o.loss.loss_type = "sft_loss";
  o.schedule.global_batch_size = 4;
  o.optimizer.lr = 1e-3;
  std::vector<std::vector<at::Tensor>> finals;
  for (bool offload : {false, true}) {
    auto model = std::make_unique<DecoderModel>(tiny_config(), opts);
    model->parameters() = anvil::models::init_parameters(model->config(), model->specs(), 5, opts);
    Trainer t(*model, o);
    for (int i = 0; i < 2; ++i) t.train_rollout(samples);
    if (offload) {
      t.move_state_to(at::kCPU);
      for (auto& p : model->parameters()) {
        EXPECT_TRUE(p.is_cpu() && p.is_pinned());
      }
      for (auto& m : t.optimizer().master_weights()) EXPECT_TRUE(m.is_cpu());
      for (auto& m : t.optimizer().exp_avg_sq()) EXPECT_TRUE(m.is_cpu() && m.is_pinned());
      t.move_state_to(at::Device(at::kCUDA));
    }
    for (int i = 0; i < 2; ++i) t.train_rollout(samples);
    std::vector<at::Tensor> w;
    for (auto& p : model->parameters()) w.push_back(p.cpu());
    finals.push_back(w);
  }
  for (size_t i = 0; i < finals[0].size(); ++i) EXPECT_TRUE(at::equal(finals[0][i], finals[1][i]));
}

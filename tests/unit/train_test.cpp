// Unit tests for backends/train: the optimizer against LibTorch's own AdamW, Megatron's
// LR schedule, and SFT memorising a small dataset end to end.
#include "backends/common/error.hpp"
#include "backends/models/decoder.hpp"
#include "backends/train/logprobs.hpp"
#include "backends/train/optimizer.hpp"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/optim/adamw.h>

using namespace anvil::train;

TEST(LrSchedule, MegatronWarmupAndDecay) {
  OptimizerOptions o;
  o.lr = 1e-3;
  o.min_lr = 1e-4;
  o.lr_warmup_iters = 10;
  o.lr_decay_iters = 110;
  o.lr_decay_style = "cosine";
  EXPECT_DOUBLE_EQ(scheduled_lr(o, 0), 0.0);  // Megatron: the first warmup step uses init_lr
  EXPECT_DOUBLE_EQ(scheduled_lr(o, 5), 5e-4);
  EXPECT_DOUBLE_EQ(scheduled_lr(o, 10), 1e-3);
  EXPECT_NEAR(scheduled_lr(o, 60), 1e-4 + 0.5 * (1e-3 - 1e-4), 1e-15);
  EXPECT_DOUBLE_EQ(scheduled_lr(o, 111), 1e-4);
  o.lr_decay_style = "linear";
  EXPECT_NEAR(scheduled_lr(o, 35), 1e-4 + 0.75 * (1e-3 - 1e-4), 1e-15);
  o.lr_decay_style = "step";
  EXPECT_THROW(scheduled_lr(o, 20), anvil::Error);
}

// Same gradients, same hyper-parameters: anvil's AdamW equals torch::optim::AdamW (with
// Megatron's grouping: no weight decay on 1-D tensors) within fp32 rounding.
TEST(AdamW, MatchesLibTorchAdamW) {
  at::manual_seed(0);
  at::Tensor w = at::randn({8, 4}).requires_grad_(true), b = at::randn({8}).requires_grad_(true);
  at::Tensor w2 = w.detach().clone().requires_grad_(true);
  at::Tensor b2 = b.detach().clone().requires_grad_(true);
  OptimizerOptions o;
  o.lr = 1e-2;
  o.weight_decay = 0.1;
  o.adam_beta2 = 0.95;
  o.clip_grad = 0;  // torch's optimizer does not clip
  AdamW ours({w, b}, o);
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(
      std::vector<at::Tensor>{w2},
      std::make_unique<torch::optim::AdamWOptions>(
          torch::optim::AdamWOptions(1e-2).betas({0.9, 0.95}).eps(1e-8).weight_decay(0.1)));
  groups.emplace_back(
      std::vector<at::Tensor>{b2},
      std::make_unique<torch::optim::AdamWOptions>(
          torch::optim::AdamWOptions(1e-2).betas({0.9, 0.95}).eps(1e-8).weight_decay(0.0)));
  torch::optim::AdamW theirs(std::move(groups));
  for (int step = 0; step < 6; ++step) {
    at::Tensor x = at::randn({3, 4});
    for (auto [ww, bb] : {std::pair{w, b}, std::pair{w2, b2}}) {
      at::Tensor loss = (at::linear(x, ww, bb).tanh() * at::arange(8).to(at::kFloat)).sum();
      loss.backward();
    }
    ours.step();
    theirs.step();
    ours.zero_grad();
    theirs.zero_grad();
  }
  EXPECT_LT((w - w2).abs().max().item<float>(), 1e-6);
  EXPECT_LT((b - b2).abs().max().item<float>(), 1e-6);
}

TEST(AdamW, ClipsToGlobalNormAndKeepsFp32MastersForBf16) {
  at::Tensor p = at::ones({4, 4}, at::kBFloat16).requires_grad_(true);
  OptimizerOptions o;
  o.lr = 1e-4;
  o.clip_grad = 1.0;
  AdamW opt({p}, o);
  (p.to(at::kFloat) * 10).sum().backward();  // grad 10 everywhere: norm 40
  StepStats s = opt.step();
  EXPECT_NEAR(s.grad_norm, 40.0, 1e-9);
  EXPECT_EQ(p.scalar_type(), at::kBFloat16);
  // Adam's first step moves every weight by ~lr: 1 - 1e-4 rounds to 1.0 in bf16, so only
  // the fp32 master keeps the update; ten steps later it shows.
  for (int i = 0; i < 200; ++i) {
    opt.zero_grad();
    (p.to(at::kFloat) * 10).sum().backward();
    opt.step();
  }
  EXPECT_LT(p.to(at::kFloat).max().item<float>(), 1.0f);
}

// A tiny model memorises four short sequences with SFT (mean token NLL below 0.05).
TEST(Sft, TinyModelMemorisesSmallDataset) {
  using namespace anvil::models;
  at::manual_seed(0);
  nlohmann::json j = {{"architectures", {"Qwen3ForCausalLM"}},
                      {"vocab_size", 40},
                      {"hidden_size", 32},
                      {"intermediate_size", 64},
                      {"num_hidden_layers", 2},
                      {"num_attention_heads", 4},
                      {"num_key_value_heads", 2},
                      {"head_dim", 8},
                      {"max_position_embeddings", 64},
                      {"tie_word_embeddings", true}};
  ModelConfig c = ModelConfig::from_json(j, "sft-test");
  DecoderModel model(c, at::TensorOptions());
  model.parameters() = init_parameters(c, model.specs(), 3, at::TensorOptions());
  for (auto& p : model.parameters()) p.requires_grad_(true);
  // Distinct first tokens: each continuation is determined, so the NLL can reach ~0.
  std::vector<std::vector<int64_t>> data = {{10, 5, 9, 13, 17, 21, 25, 2},
                                            {11, 6, 7, 8, 30, 31, 2},
                                            {12, 33, 12, 12, 4, 19, 20, 21, 2},
                                            {14, 3, 3, 3, 39, 2}};
  PackedBatch batch = PackedBatch::pack(data, at::kCPU);
  NextTokenIndex next = next_token_index(data);
  OptimizerOptions o;
  o.lr = 1e-2;
  AdamW opt(model.parameters(), o);
  double loss_value = 1e9;
  for (int step = 0; step < 300 && loss_value >= 0.05; ++step) {
    at::Tensor hidden = model.forward_hidden(batch).index_select(0, next.rows);
    at::Tensor nll =
        -token_logprobs(hidden, model.lm_head_weight(), next.targets, {}).logprobs.mean();
    loss_value = nll.item<double>();
    nll.backward();
    opt.step();
    opt.zero_grad();
  }
  EXPECT_LT(loss_value, 0.05);
}

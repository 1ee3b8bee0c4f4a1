// Unit tests for backends/models: config.json parsing, safetensors validation and
// writing, and decoder invariants (packing, KV cache).
#include "backends/common/error.hpp"
#include "backends/models/config.hpp"
#include "backends/models/decoder.hpp"
#include "backends/models/safetensors.hpp"
#include "tests/unit/error_of.hpp"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

namespace fs = std::filesystem;
using anvil::Error;
using namespace anvil::models;
using anvil::test_util::error_of;
using nlohmann::json;

namespace {

// Runs `fn` and returns the anvil::Error message ("" if nothing was thrown).
fs::path temp_dir(const std::string& name) {
  fs::path d =
      fs::temp_directory_path() / ("anvil_models_test_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

json tiny_config() {
  return {{"architectures", {"Qwen3ForCausalLM"}},
          {"vocab_size", 50},
          {"hidden_size", 16},
          {"intermediate_size", 24},
          {"num_hidden_layers", 2},
          {"num_attention_heads", 4},
          {"num_key_value_heads", 2},
          {"head_dim", 8},
          {"max_position_embeddings", 64},
          {"tie_word_embeddings", true}};
}

void write_bytes(const fs::path& p, const std::string& bytes) {
  std::ofstream(p, std::ios::binary) << bytes;
}

std::string with_header(const std::string& header_json, size_t data_bytes) {
  std::string out(8, '\0');
  uint64_t n = header_json.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + header_json + std::string(data_bytes, '\0');
}

}  // namespace

TEST(Config, DefaultsAndDerivedFields) {
  ModelConfig c = ModelConfig::from_json(tiny_config(), "config.json");
  EXPECT_EQ(c.arch, Arch::kQwen3);
  EXPECT_TRUE(c.qk_norm);
  EXPECT_EQ(c.num_kv_groups(), 2);
  EXPECT_EQ(c.rope.type, "default");
  EXPECT_DOUBLE_EQ(c.rope.theta, 10000.0);
  // to_json round-trips through from_json.
  ModelConfig again = ModelConfig::from_json(c.to_json(), "again");
  EXPECT_EQ(again.to_json(), c.to_json());
}

TEST(Config, LegacyRopeScalingWins) {
  json j = tiny_config();
  j["rope_theta"] = 500000.0;
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 4.0}};
  ModelConfig c = ModelConfig::from_json(j, "config.json");
  EXPECT_EQ(c.rope.type, "linear");
  EXPECT_DOUBLE_EQ(c.rope.factor, 4.0);
  EXPECT_DOUBLE_EQ(c.rope.theta, 500000.0);
}

TEST(Config, ErrorsNameFileAndKey) {
  auto err = [](json j) { return error_of([&] { ModelConfig::from_json(j, "m/config.json"); }); };
  struct Case {
    const char* key;
    json value;
    const char* needle;
  };
  std::vector<Case> cases = {
      {"architectures", json::array({"MistralForCausalLM"}), "MistralForCausalLM"},
      {"hidden_size", "big", "hidden_size"},
      {"num_key_value_heads", 3, "num_key_value_heads"},
      {"hidden_act", "gelu", "hidden_act"},
      {"rope_parameters", {{"rope_type", "longrope"}}, "longrope"},
      {"rope_parameters", {{"rope_type", "linear"}}, "factor"},
      {"use_sliding_window", true, "use_sliding_window"},
      {"vocab_size", -5, "vocab_size"},
      {"head_dim", 7, "head_dim"},
  };
  for (const Case& c : cases) {
    json j = tiny_config();
    j[c.key] = c.value;
    std::string msg = err(j);
    EXPECT_NE(msg.find("m/config.json"), std::string::npos) << c.key << ": " << msg;
    EXPECT_NE(msg.find(c.needle), std::string::npos) << c.key << ": " << msg;
  }
}

TEST(Safetensors, WriterRoundTripEveryDtypeAndSharding) {
  fs::path d = temp_dir("roundtrip");
  std::vector<std::pair<std::string, at::Tensor>> tensors = {
      {"f32", at::randn({3, 5})},
      {"bf16", at::randn({4, 2}).to(at::kBFloat16)},
      {"f16", at::randn({7}).to(at::kHalf)},
      {"i64", at::arange(6, at::kLong).reshape({2, 3})},
      {"i8", at::arange(-4, 4, at::kChar)},
      {"u8", at::arange(5, at::kByte)},
      {"bool", at::tensor({1, 0, 1}, at::kByte).to(at::kBool)},
      {"f64", at::randn({2, 2}, at::kDouble)},
      {"f8", at::randn({4}).to(at::ScalarType::Float8_e4m3fn)},
      {"empty", at::empty({0, 3})},
  };
  {
    CheckpointWriter w(d, /*max_shard_bytes=*/40);
    for (auto& [n, t] : tensors) w.add(n, t);
    w.finish();
  }
  EXPECT_TRUE(fs::exists(d / "model.safetensors.index.json"));
  EXPECT_FALSE(fs::exists(d / "model.safetensors"));
  CheckpointReader r = CheckpointReader::open(d);
  EXPECT_EQ(r.names().size(), tensors.size());
  for (auto& [n, t] : tensors) {
    at::Tensor back = r.load(n);
    EXPECT_EQ(back.scalar_type(), t.scalar_type()) << n;
    EXPECT_TRUE(back.view(at::kByte).equal(t.contiguous().view(at::kByte))) << n;
  }
  EXPECT_TRUE(r.load_rows("i64", 1, 2).equal(at::tensor({3, 4, 5}, at::kLong).reshape({1, 3})));
  // Saving again with one shard removes the stale shards and index.
  {
    CheckpointWriter w(d);
    w.add("only", at::ones({2}));
    w.finish();
  }
  EXPECT_TRUE(fs::exists(d / "model.safetensors"));
  EXPECT_FALSE(fs::exists(d / "model.safetensors.index.json"));
  EXPECT_EQ(std::distance(fs::directory_iterator(d), fs::directory_iterator()), 1);
  fs::remove_all(d);
}

TEST(Safetensors, WriterWithoutFinishLeavesNothing) {
  fs::path d = temp_dir("nofinish");
  {
    CheckpointWriter w(d);
    w.add("a", at::ones({2}));
    EXPECT_NE(error_of([&] { w.add("a", at::ones({2})); }).find("added twice"), std::string::npos);
  }
  EXPECT_EQ(std::distance(fs::directory_iterator(d), fs::directory_iterator()), 0);
  fs::remove_all(d);
}

TEST(Safetensors, HeaderValidationNamesFileAndTensor) {
  fs::path d = temp_dir("bad");
  struct Case {
    std::string bytes;
    const char* needle;
  };
  std::string big(8, '\0');
  big[4] = 0x10;  // header length ~ 68 GB
  std::vector<Case> cases = {
      {"abc", "at least 8"},
      {big, "100 MB"},
      {with_header("{\"a\": {", 0), "not valid JSON"},
      {with_header("[1, 2]", 0), "JSON object"},
      {with_header(R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})", 4),
       "past the data"},
      {with_header(R"({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}})", 8), "'w'"},
      {with_header(R"({"w": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]}})", 8), "Q4"},
      {with_header(R"({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}})", 8),
       "non-negative"},
      {with_header(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                       "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
                   12),
       "overlap"},
      {with_header(R"({"__metadata__": {"k": 1}})", 0), "__metadata__"},
      {with_header(R"({"w": {"dtype": "F32", "shape": [2]}})", 8), "data_offsets"},
  };
  int i = 0;
  for (const Case& c : cases) {
    fs::path f = d / ("case" + std::to_string(i++) + ".safetensors");
    write_bytes(f, c.bytes);
    std::string msg = error_of([&] { CheckpointReader::open(f); });
    EXPECT_NE(msg.find(f.string()), std::string::npos) << msg;
    EXPECT_NE(msg.find(c.needle), std::string::npos) << c.needle << " not in: " << msg;
  }
  // A sharded index naming a missing shard.
  fs::path s = d / "sharded";
  fs::create_directories(s);
  std::ofstream(s / "model.safetensors.index.json")
      << R"({"metadata": {}, "weight_map": {"w": "model-00001-of-00002.safetensors"}})";
  std::string msg = error_of([&] { CheckpointReader::open(s); });
  EXPECT_NE(msg.find("model-00001-of-00002.safetensors"), std::string::npos) << msg;
  EXPECT_NE(msg.find("index.json"), std::string::npos) << msg;
  fs::remove_all(d);
}

class DecoderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    at::manual_seed(0);
    ModelConfig c = ModelConfig::from_json(tiny_config(), "tiny");
    model_ = std::make_unique<DecoderModel>(c, at::TensorOptions().dtype(at::kFloat));
    model_->parameters() = init_parameters(c, model_->specs(), 1, at::TensorOptions());
  }
  std::unique_ptr<DecoderModel> model_;
};

// Packing several sequences in one row gives each the logits it gets alone. Exact
// equality is not guaranteed (matmul blocking depends on T), so 1e-5.
TEST_F(DecoderTest, PackedEqualsOneAtATime) {
  std::vector<std::vector<int64_t>> seqs = {{1, 2, 3}, {4, 5, 6, 7, 8, 9, 10}, {11}};
  at::NoGradGuard g;
  at::Tensor packed = model_->forward(PackedBatch::pack(seqs, at::kCPU));
  int64_t offset = 0;
  for (const auto& s : seqs) {
    at::Tensor alone = model_->forward(PackedBatch::pack({s}, at::kCPU));
    at::Tensor part = packed.narrow(0, offset, static_cast<int64_t>(s.size()));
    EXPECT_LT((alone - part).abs().max().item<float>(), 1e-5);
    offset += static_cast<int64_t>(s.size());
  }
}

// Lengths 3, 7, 1 run as one padded attention call (3 x 7 <= 2 x 11 tokens); lengths
// 1, 1, 1, 9 would more than double the tokens padded and run one call per sequence. Both
// agree with each sequence alone, and so do the gradients through the padded call.
TEST_F(DecoderTest, PaddedAndPerSequenceAttentionEqualOneAtATime) {
  for (at::Tensor& p : model_->parameters()) p.requires_grad_(true);
  for (const auto& seqs : std::vector<std::vector<std::vector<int64_t>>>{
           {{1, 2, 3}, {4, 5, 6, 7, 8, 9, 10}, {11}},
           {{1}, {2}, {3}, {4, 5, 6, 7, 8, 9, 10, 11, 12}}}) {
    at::Tensor packed = model_->forward(PackedBatch::pack(seqs, at::kCPU));
    packed.pow(2).sum().backward();
    std::vector<at::Tensor> packed_grads;
    for (at::Tensor& p : model_->parameters()) {
      packed_grads.push_back(p.grad().clone());
      p.mutable_grad() = at::Tensor();
    }
    int64_t offset = 0;
    at::Tensor total;
    for (const auto& s : seqs) {
      at::Tensor alone = model_->forward(PackedBatch::pack({s}, at::kCPU));
      const int64_t n = static_cast<int64_t>(s.size());
      EXPECT_LT((alone - packed.narrow(0, offset, n)).abs().max().item<float>(), 1e-5);
      total = total.defined() ? total + alone.pow(2).sum() : alone.pow(2).sum();
      offset += n;
    }
    total.backward();
    for (size_t i = 0; i < packed_grads.size(); ++i) {
      at::Tensor& p = model_->parameters()[i];
      const double scale = std::max(1.0, p.grad().abs().max().item<double>());
      EXPECT_LT((p.grad() - packed_grads[i]).abs().max().item<double>() / scale, 1e-4) << i;
      p.mutable_grad() = at::Tensor();
    }
  }
}

// Equal-length sequences take the batched attention path; it must agree with the loop.
TEST_F(DecoderTest, EqualLengthBatchedPathEqualsOneAtATime) {
  std::vector<std::vector<int64_t>> seqs = {{1, 2, 3, 4}, {5, 6, 7, 8}, {9, 10, 11, 12}};
  at::NoGradGuard g;
  at::Tensor packed = model_->forward(PackedBatch::pack(seqs, at::kCPU));
  for (size_t i = 0; i < seqs.size(); ++i) {
    at::Tensor alone = model_->forward(PackedBatch::pack({seqs[i]}, at::kCPU));
    EXPECT_LT((alone - packed.narrow(0, 4 * static_cast<int64_t>(i), 4)).abs().max().item<float>(),
              1e-5);
  }
}

// Decoding token by token through the KV cache reproduces the full forward.
TEST_F(DecoderTest, KVCacheMatchesFullForward) {
  std::vector<int64_t> seq = {3, 1, 4, 1, 5, 9, 2, 6};
  at::NoGradGuard g;
  at::Tensor full = model_->forward(PackedBatch::pack({seq}, at::kCPU));
  KVCache cache(model_->config().num_hidden_layers);
  // Prefill 5 tokens, then 3 single steps.
  PackedBatch pre = PackedBatch::pack({{seq.begin(), seq.begin() + 5}}, at::kCPU);
  pre.cache_slots = {7};
  std::vector<at::Tensor> rows = {model_->forward(pre, &cache)};
  for (int64_t i = 5; i < 8; ++i) {
    PackedBatch step;
    step.tokens = at::tensor({seq[i]}, at::kLong);
    step.positions = at::tensor({i}, at::kLong);
    step.seq_lens = {1};
    step.cache_slots = {7};
    rows.push_back(model_->forward(step, &cache));
  }
  EXPECT_EQ(cache.length(7), 8);
  EXPECT_LT((at::cat(rows, 0) - full).abs().max().item<float>(), 1e-5);
}

TEST_F(DecoderTest, OutOfRangeTokenIsAnError) {
  at::NoGradGuard g;
  std::string msg = error_of([&] { model_->forward(PackedBatch::pack({{1, 50}}, at::kCPU)); });
  EXPECT_NE(msg.find("out of range"), std::string::npos) << msg;
}

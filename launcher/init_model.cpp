#include "launcher/init_model.hpp"

#include "backends/common/error.hpp"
#include "backends/common/json_util.hpp"
#include "backends/common/log.hpp"
#include "backends/models/weights.hpp"
#include "rollout/data/bpe_trainer.hpp"

#include <ATen/ATen.h>
#include <unistd.h>

namespace anvil::models {
namespace {

using nlohmann::json;

constexpr int kBuiltinBpeVocab = 512;

struct Preset {
  int64_t hidden, intermediate, layers, heads, kv_heads, head_dim, vocab, max_pos;
  double theta;
  bool tie;
};

// vocab 0 = the tokenizer's size. head_dim 0 = hidden / heads.
const std::vector<std::pair<std::string, Preset>>& presets() {
  static const std::vector<std::pair<std::string, Preset>> kPresets = {
      {"tiny", {64, 176, 2, 4, 2, 32, 0, 2048, 10000.0, true}},
      {"small", {256, 704, 4, 8, 4, 32, 0, 4096, 10000.0, true}},
      {"qwen3-0.6b", {1024, 3072, 28, 16, 8, 128, 151936, 40960, 1000000.0, true}},
      {"qwen3-1.7b", {2048, 6144, 28, 16, 8, 128, 151936, 40960, 1000000.0, true}},
  };
  return kPresets;
}

}  // namespace

std::vector<std::string> model_presets() {
  std::vector<std::string> names;
  for (const auto& [name, _] : presets()) names.push_back(name);
  return names;
}

const std::vector<std::string>& builtin_special_tokens() {
  static const std::vector<std::string> kTokens = {"<|endoftext|>", "<|im_start|>", "<|im_end|>",
                                                   "<think>",       "</think>",     "<tool_call>",
                                                   "</tool_call>"};
  return kTokens;
}

const std::string& builtin_chat_template() {
  // ChatML as Qwen uses it; enable_thinking=false adds an empty think block.
  static const std::string kTemplate =
      "{%- for message in messages %}"
      "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
      "{%- endfor %}"
      "{%- if add_generation_prompt %}"
      "{{- '<|im_start|>assistant\\n' }}"
      "{%- if enable_thinking is defined and enable_thinking is false %}"
      "{{- '<think>\\n\\n</think>\\n\\n' }}"
      "{%- endif %}"
      "{%- endif %}";
  return kTemplate;
}

ModelConfig preset_config(Arch arch, const std::string& preset, int64_t tokenizer_vocab,
                          const std::string& dtype, const json& overrides) {
  const Preset* p = nullptr;
  for (const auto& [name, value] : presets()) {
    if (name == preset) p = &value;
  }
  if (p == nullptr) {
    fail("unknown preset '{}' (available: {})", preset, fmt::join(model_presets(), ", "));
  }
  if (dtype != "float32" && dtype != "bfloat16" && dtype != "float16") {
    fail("--dtype '{}' is not supported (float32, bfloat16, float16)", dtype);
  }
  ModelConfig c;
  c.arch = arch;
  c.vocab_size = p->vocab != 0 ? std::max(p->vocab, tokenizer_vocab) : tokenizer_vocab;
  c.hidden_size = p->hidden;
  c.intermediate_size = p->intermediate;
  c.num_hidden_layers = p->layers;
  c.num_attention_heads = p->heads;
  c.num_key_value_heads = p->kv_heads;
  c.head_dim = arch == Arch::kQwen3 ? p->head_dim : p->hidden / p->heads;
  c.max_position_embeddings = p->max_pos;
  c.rope.theta = p->theta;
  c.tie_word_embeddings = p->tie && arch == Arch::kQwen3;
  c.qkv_bias = arch == Arch::kQwen2;
  c.qk_norm = arch == Arch::kQwen3;
  c.dtype = dtype;
  json j = c.to_json();
  if (!overrides.is_null()) {
    if (!overrides.is_object()) fail("--override must be a JSON object");
    j.merge_patch(overrides);
  }
  return ModelConfig::from_json(j, "init-model config (preset '" + preset + "')");
}

void init_model(const InitModelOptions& o) {
  namespace fs = std::filesystem;
  if (o.out.empty()) fail("init-model: --out is required");
  if (fs::exists(o.out) && !o.force) {
    fail("{}: already exists (pass --force to replace it)", o.out.string());
  }

  // Tokenizer: byte-level BPE trained on the built-in corpus, specials after the vocab.
  data::BpeTrainOptions bpe;
  bpe.vocab_size = kBuiltinBpeVocab;
  bpe.special_tokens = builtin_special_tokens();
  json tokenizer = data::train_byte_level_bpe(data::builtin_corpus(), bpe);
  std::map<std::string, int64_t> special_ids;
  int64_t tokenizer_vocab = 0;
  for (const auto& [token, id] : tokenizer["model"]["vocab"].items()) {
    tokenizer_vocab = std::max<int64_t>(tokenizer_vocab, id.get<int64_t>() + 1);
  }
  json added_decoder = json::object();
  for (const json& t : tokenizer["added_tokens"]) {
    int64_t id = t["id"].get<int64_t>();
    special_ids[t["content"].get<std::string>()] = id;
    tokenizer_vocab = std::max(tokenizer_vocab, id + 1);
    added_decoder[std::to_string(id)] = {
        {"content", t["content"]},         {"lstrip", t["lstrip"]},
        {"normalized", t["normalized"]},   {"rstrip", t["rstrip"]},
        {"single_word", t["single_word"]}, {"special", t["special"]}};
  }
  const int64_t eos = special_ids.at("<|im_end|>");
  const int64_t pad = special_ids.at("<|endoftext|>");

  ModelConfig config = preset_config(o.arch, o.preset, tokenizer_vocab, o.dtype, o.overrides);
  if (config.vocab_size < tokenizer_vocab) {
    fail("init-model: vocab_size {} is smaller than the tokenizer's {} tokens", config.vocab_size,
         tokenizer_vocab);
  }
  if (config.eos_token_ids.empty()) config.eos_token_ids = {eos};
  if (!config.pad_token_id) config.pad_token_id = pad;

  json tokenizer_config = {
      {"add_bos_token", false},
      {"add_prefix_space", false},
      {"added_tokens_decoder", added_decoder},
      {"bos_token", nullptr},
      {"chat_template", builtin_chat_template()},
      {"clean_up_tokenization_spaces", false},
      {"eos_token", "<|im_end|>"},
      {"errors", "replace"},
      {"model_max_length", config.max_position_embeddings},
      {"pad_token", "<|endoftext|>"},
      {"split_special_tokens", false},
      {"tokenizer_class", "PreTrainedTokenizerFast"},
      {"unk_token", nullptr},
  };
  json generation_config = {
      {"eos_token_id", json::array({eos, pad})},
      {"pad_token_id", pad},
      {"transformers_version", "5.23.0"},
  };

  // Write everything under a temporary sibling name, then rename into place.
  fs::path out = fs::absolute(o.out);
  fs::create_directories(out.parent_path());
  fs::path tmp = out;
  tmp += ".tmp." + std::to_string(::getpid());
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  try {
    auto options = at::TensorOptions().dtype(at::kFloat);
    std::vector<ParamSpec> specs = parameter_specs(config);
    std::vector<at::Tensor> params = init_parameters(config, specs, o.seed, options);
    save_parameters(tmp, specs, params, parse_dtype_name(config.dtype), o.max_shard_bytes);
    write_json_file_atomic(tmp / "config.json", config.to_json());
    write_json_file_atomic(tmp / "tokenizer.json", tokenizer);
    write_json_file_atomic(tmp / "tokenizer_config.json", tokenizer_config);
    write_json_file_atomic(tmp / "generation_config.json", generation_config);
    if (fs::exists(out)) {
      fs::path old = out;
      old += ".old." + std::to_string(::getpid());
      fs::rename(out, old);
      fs::rename(tmp, out);
      fs::remove_all(old);
    } else {
      fs::rename(tmp, out);
    }
  } catch (...) {
    std::error_code ignored;
    fs::remove_all(tmp, ignored);
    throw;
  }
  log::get("models")->info("wrote {} {} model ({} layers, hidden {}, vocab {}) to {}",
                           arch_name(o.arch), o.preset, config.num_hidden_layers,
                           config.hidden_size, config.vocab_size, out.string());
}

}  // namespace anvil::models

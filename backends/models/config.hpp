// HuggingFace config.json for the decoder family anvil implements:
// LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM.
//
// Missing keys take the defaults of the transformers config class of that architecture
// (transformers 5.x). Keys anvil cannot honour (another activation, sliding-window
// attention, partial rotary, an unknown rope type) are errors that name the file and key,
// never silently ignored.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace anvil::models {

enum class Arch { kLlama, kQwen2, kQwen3 };

// "llama" | "qwen2" | "qwen3" -> Arch; throws anvil::Error for anything else.
Arch arch_from_name(const std::string& name);
const char* arch_name(Arch arch);

// Rotary position embedding parameters, normalised from either the transformers v5
// `rope_parameters` dict or the legacy `rope_theta` + `rope_scaling` keys.
struct RopeConfig {
  std::string type = "default";  // default | linear | dynamic | yarn | llama3
  double theta = 10000.0;
  double factor = 1.0;
  // yarn
  std::optional<double> attention_factor;
  std::optional<double> mscale;
  std::optional<double> mscale_all_dim;
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  bool truncate = true;
  // yarn, llama3
  int64_t original_max_position_embeddings = 0;
  // llama3
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
};

struct ModelConfig {
  Arch arch = Arch::kQwen3;
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  int64_t head_dim = 0;
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  bool tie_word_embeddings = false;
  bool qkv_bias = false;  // q/k/v projections (Qwen2 always; Llama/Qwen3: attention_bias)
  bool o_bias = false;    // o_proj (Llama/Qwen3: attention_bias)
  bool mlp_bias = false;  // gate/up/down (Llama: mlp_bias)
  bool qk_norm = false;   // Qwen3 per-head RMSNorm on q and k before RoPE
  double initializer_range = 0.02;
  RopeConfig rope;
  std::string dtype = "float32";  // the checkpoint's stored dtype ("dtype"/"torch_dtype")
  std::optional<int64_t> bos_token_id;
  std::vector<int64_t> eos_token_ids;
  std::optional<int64_t> pad_token_id;

  // Parses a config.json object. `source` names it in errors (usually the file path).
  static ModelConfig from_json(const nlohmann::json& j, const std::string& source);
  // Reads <dir>/config.json (or a path to a config.json file).
  static ModelConfig load(const std::filesystem::path& path);
  // The config.json transformers writes for this model (rope in `rope_parameters`).
  nlohmann::json to_json() const;

  int64_t num_kv_groups() const { return num_attention_heads / num_key_value_heads; }
};

}  // namespace anvil::models

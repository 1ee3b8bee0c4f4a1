// `anvil init-model`: a randomly initialised model written as a complete HuggingFace
// directory (config.json, model.safetensors, tokenizer.json, tokenizer_config.json with a
// chat template, generation_config.json) that transformers loads as it is.
#pragma once

#include "backends/models/config.hpp"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace anvil::models {  // launcher-level: composes models and data

struct InitModelOptions {
  Arch arch = Arch::kQwen3;
  std::string preset = "tiny";  // see model_presets()
  std::filesystem::path out;
  uint64_t seed = 0;
  std::string dtype = "float32";  // stored dtype: float32 | bfloat16 | float16
  nlohmann::json overrides = nlohmann::json::object();  // merged into config.json
  bool force = false;                                   // replace an existing directory
  uint64_t max_shard_bytes = 5ull << 30;
};

// Names of the presets, e.g. tiny, small, qwen3-0.6b, qwen3-1.7b.
std::vector<std::string> model_presets();

// The config.json a preset produces for `arch` and a tokenizer of `vocab_size` tokens,
// with `overrides` merged in (a JSON merge patch) and validated.
ModelConfig preset_config(Arch arch, const std::string& preset, int64_t tokenizer_vocab,
                          const std::string& dtype, const nlohmann::json& overrides);

// Builds the tokenizer files and the random weights and writes them to options.out.
// The directory appears whole or not at all (written under a temporary name, renamed).
void init_model(const InitModelOptions& options);

// The built-in tokenizer's special tokens, in id order after the BPE vocabulary.
const std::vector<std::string>& builtin_special_tokens();

// The ChatML (Qwen3-style) chat template written to tokenizer_config.json.
const std::string& builtin_chat_template();

}  // namespace anvil::models

// A small deterministic byte-level BPE trainer, so `anvil init-model` can write a real
// tokenizer.json with no downloads. Same pre-tokenisation as Qwen2/3 (NFC + Split regex +
// ByteLevel); the output loads in HF `tokenizers` and transformers.
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace anvil::data {

struct BpeTrainOptions {
  int vocab_size = 512;                     // BPE vocabulary (>= 256), specials excluded
  std::vector<std::string> special_tokens;  // appended as added tokens after the vocab
};

// Trains merges on `corpus` by pair frequency (ties broken by the pair's strings) and
// returns a complete tokenizer.json object.
nlohmann::json train_byte_level_bpe(const std::vector<std::string>& corpus,
                                    const BpeTrainOptions& options);

// A few KB of built-in English, code and arithmetic text.
std::vector<std::string> builtin_corpus();

// The Qwen2/3 pre-tokenizer regex.
const std::string& qwen2_pretokenizer_regex();

}  // namespace anvil::data

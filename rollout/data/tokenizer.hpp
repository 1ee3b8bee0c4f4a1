// HuggingFace tokenizer.json for byte-level BPE (Qwen2/Qwen3, Llama-3, GPT-2 style).
//
// Pipeline, as the `tokenizers` library runs it: split out added tokens (leftmost-longest,
// with lstrip/rstrip/single_word), NFC-normalise the rest (when configured), pre-tokenise
// with the Split regex (PCRE2, Unicode properties) and map bytes to the byte-level
// alphabet, then apply BPE merges by rank. Decoding maps the alphabet back to bytes and
// replaces invalid UTF-8 like Rust's from_utf8_lossy. A Tokenizer is immutable after
// loading; encode/decode are thread-safe.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace anvil::data {

class Tokenizer {
 public:
  // Loads tokenizer.json (or a directory containing one). Unsupported components are an
  // anvil::Error naming the file and the JSON key.
  static Tokenizer from_file(const std::filesystem::path& path);
  static Tokenizer from_json(const nlohmann::json& j, const std::string& source);

  // Token ids of `text`; with add_special_tokens the post-processor's template tokens
  // (e.g. a BOS) are added.
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = false) const;
  // Text of `ids`; an id outside the vocabulary is an anvil::Error.
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens = false) const;

  int32_t vocab_size() const;  // max id + 1
  std::optional<int32_t> token_to_id(std::string_view token) const;
  std::string id_to_token(int32_t id) const;
  bool is_special(int32_t id) const;

  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

 private:
  struct Impl;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Splits `text` with a PCRE2 pattern (UTF, Unicode properties) keeping matches and the
// gaps between them (the Split pre-tokenizer's Isolated behaviour). Patterns are compiled
// once and cached; a bad pattern is an anvil::Error.
std::vector<std::string> split_isolated(const std::string& pattern, std::string_view text);

}  // namespace anvil::data

#include "rollout/data/bpe_trainer.hpp"

#include "backends/common/error.hpp"
#include "rollout/data/tokenizer.hpp"
#include "rollout/data/unicode.hpp"

#include <map>
#include <unordered_map>

namespace anvil::data {
namespace {

using nlohmann::json;

// Splits a byte-level string into its alphabet characters (each 1-2 UTF-8 bytes).
std::vector<std::string> chars_of(const std::string& s) {
  std::vector<std::string> out;
  size_t i = 0;
  while (i < s.size()) {
    size_t n = (static_cast<unsigned char>(s[i]) < 0x80) ? 1 : 2;
    out.push_back(s.substr(i, n));
    i += n;
  }
  return out;
}

}  // namespace

const std::string& qwen2_pretokenizer_regex() {
  static const std::string kRegex =
      R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
  return kRegex;
}

json train_byte_level_bpe(const std::vector<std::string>& corpus, const BpeTrainOptions& o) {
  if (o.vocab_size < 256) fail("BPE vocab_size must be >= 256, got {}", o.vocab_size);
  // Word frequencies over byte-level pre-tokens.
  std::map<std::string, int64_t> counts;
  for (const std::string& line : corpus) {
    for (const std::string& piece : split_isolated(qwen2_pretokenizer_regex(), nfc(line))) {
      ++counts[byte_level_encode(piece)];
    }
  }
  std::vector<std::pair<std::vector<std::string>, int64_t>> words;
  for (const auto& [w, c] : counts) words.emplace_back(chars_of(w), c);

  json vocab = json::object();
  std::vector<std::string> tokens;
  for (int b = 0; b < 256; ++b) {
    std::string ch;
    append_utf8(ch, byte_to_unicode()[b]);
    vocab[ch] = b;
    tokens.push_back(ch);
  }
  json merges = json::array();
  while (static_cast<int>(tokens.size()) < o.vocab_size) {
    std::map<std::pair<std::string, std::string>, int64_t> pairs;  // ordered: deterministic ties
    for (const auto& [w, c] : words) {
      for (size_t i = 0; i + 1 < w.size(); ++i) pairs[{w[i], w[i + 1]}] += c;
    }
    const std::pair<std::string, std::string>* best = nullptr;
    int64_t best_count = 1;  // a pair must occur at least twice
    for (const auto& [p, c] : pairs) {
      if (c > best_count) {
        best = &p;
        best_count = c;
      }
    }
    if (best == nullptr) break;
    const auto [a, b] = *best;
    const std::string merged = a + b;
    merges.push_back({a, b});
    vocab[merged] = static_cast<int>(tokens.size());
    tokens.push_back(merged);
    for (auto& [w, c] : words) {
      std::vector<std::string> next;
      for (size_t i = 0; i < w.size(); ++i) {
        if (i + 1 < w.size() && w[i] == a && w[i + 1] == b) {
          next.push_back(merged);
          ++i;
        } else {
          next.push_back(w[i]);
        }
      }
      w.swap(next);
    }
  }

  json added = json::array();
  int id = static_cast<int>(tokens.size());
  for (const std::string& s : o.special_tokens) {
    added.push_back({{"id", id++},
                     {"content", s},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", true}});
  }
  json byte_level = {{"type", "ByteLevel"},
                     {"add_prefix_space", false},
                     {"trim_offsets", false},
                     {"use_regex", false}};
  return {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", added},
      {"normalizer", {{"type", "NFC"}}},
      {"pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers",
         {{{"type", "Split"},
           {"pattern", {{"Regex", qwen2_pretokenizer_regex()}}},
           {"behavior", "Isolated"},
           {"invert", false}},
          byte_level}}}},
      {"post_processor", byte_level},
      {"decoder", byte_level},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", nullptr},
        {"continuing_subword_prefix", nullptr},
        {"end_of_word_suffix", nullptr},
        {"fuse_unk", false},
        {"byte_fallback", false},
        {"ignore_merges", false},
        {"vocab", vocab},
        {"merges", merges}}},
  };
}

std::vector<std::string> builtin_corpus() {
  std::vector<std::string> lines = {
      "The quick brown fox jumps over the lazy dog.",
      "Reinforcement learning from verifiable rewards trains a policy to solve problems.",
      "The model generates several answers for each prompt, and a reward function scores them.",
      "Group relative policy optimisation compares each answer with the others in its group.",
      "A tokenizer turns text into integers, and a decoder turns the integers back into text.",
      "def add(a, b):\n    return a + b\n",
      "for i in range(10):\n    print(i * i)\n",
      "int main() { return 0; }",
      "What is 12 + 35? The answer is 47.",
      "What is 48 - 19? The answer is 29.",
      "Compute 7 * 8. The result is 56.",
      "Question: what is the sum of 123 and 456? Answer: 579",
      "Please answer the question. Think step by step, then give the final answer.",
      "Hello, world! How are you today? I am fine, thank you.",
      "The weights are saved in safetensors files with a JSON index.",
      "Training, evaluation and generation share one implementation of the model.",
      "User: hello\nAssistant: Hi! How can I help you?\n",
      "system user assistant tool the answer is question think final result",
  };
  // Arithmetic lines the demo task uses, so digits and operators get frequent merges.
  for (int a = 0; a < 40; ++a) {
    int x = (a * 37 + 11) % 100, y = (a * 53 + 7) % 100;
    lines.push_back("What is " + std::to_string(x) + " + " + std::to_string(y) +
                    "? Answer: " + std::to_string(x + y));
  }
  return lines;
}

}  // namespace anvil::data

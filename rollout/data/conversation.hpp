// Conversations to token ids and loss masks, with the model's own chat template.
//
// A ChatTokenizer holds a model's tokenizer.json, the `chat_template` of its
// tokenizer_config.json (rendered by anvil_jinja with the context transformers'
// apply_chat_template gives: messages, tools, documents=None, add_generation_prompt, the
// special tokens bos_token/eos_token/... and extra keyword arguments such as
// enable_thinking) and its end-of-turn token ids (tokenizer_config's eos_token plus
// generation_config.json's eos_token_id).
//
// Loss masks, exact at token level (encode_conversation). The ids are always the
// tokenisation of the full rendering, exactly what apply_chat_template(tokenize=True) gives.
// The mask comes from rendering prefixes of the conversation (slime's
// MultiTurnLossMaskGenerator and verl do the same) and cutting the full text where they end:
//   F(k) = render(messages[:k]),  G(k) = render(messages[:k], add_generation_prompt=True)
//   for each assistant message k:  H(k)   - (previous cut)    mask 0 (other turns, header)
//                                  F(k+1) - H(k)              mask 1 (content + end of turn)
// where H(k) is the longest common prefix of G(k) and F(k+1): G(k) itself for most templates,
// the bare header for those whose generation prompt holds text the rendered turn lacks
// (Qwen3 with enable_thinking=false adds an empty think block to the prompt only).
//   the rest of the full rendering (later turns, a generation prompt)        mask 0
// Cuts are made only around assistant turns, so templates that group other messages (e.g.
// consecutive tool results in one user turn) need no cut between them. Within an assistant
// piece, tokens after its last end-of-turn token (the "\n" ChatML puts after <|im_end|>) are
// masked 0: the model never generates them, generation stops at the end-of-turn token.
// Two checks make the mask exact or an error, never approximate: each rendering must be a
// prefix of the next one and of the full rendering (a template that rewrites earlier turns
// once later ones exist, e.g. Qwen3's dropping of past reasoning, fails here), and the
// concatenated tokenisations of the pieces must equal the tokenisation of the full text
// token for token (a token straddling a cut fails here).
// Both failures are anvil::Error naming the renderings (message counts) involved.
//
// Thread-safety: const methods may run on many threads at once.
#pragma once

#include "rollout/data/tokenizer.hpp"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace anvil::jinja {
class Template;
}

namespace anvil::data {

struct Encoded {
  std::string text;                // what was tokenised (the full rendering)
  std::vector<int32_t> ids;        // [T]
  std::vector<uint8_t> loss_mask;  // [T], 1 = trained token
};

class ChatTokenizer {
 public:
  // Loads tokenizer.json, tokenizer_config.json (chat_template: a string, or a list of
  // {name, template} from which "default" is taken; special tokens) and, when present,
  // generation_config.json (eos_token_id) from a model directory. A missing chat_template
  // is allowed (has_chat_template() is false); anything malformed is an anvil::Error naming
  // the file and key.
  static ChatTokenizer from_model_dir(const std::filesystem::path& dir);

  // chat_template may be empty (no template). special_tokens maps names (bos_token, ...)
  // to their text; end_of_turn_ids are the ids that end an assistant turn.
  ChatTokenizer(Tokenizer tokenizer, const std::string& chat_template,
                nlohmann::ordered_json special_tokens, std::vector<int32_t> end_of_turn_ids,
                std::string source);
  ~ChatTokenizer();
  ChatTokenizer(ChatTokenizer&&) noexcept;
  ChatTokenizer& operator=(ChatTokenizer&&) noexcept;

  // Extra template variables (e.g. {"enable_thinking": false}); they override special tokens.
  void set_template_kwargs(nlohmann::ordered_json kwargs);

  bool has_chat_template() const { return template_ != nullptr; }
  const Tokenizer& tokenizer() const { return tokenizer_; }
  const std::vector<int32_t>& end_of_turn_ids() const { return end_of_turn_ids_; }

  // The chat template applied to `messages` (an OpenAI messages list) and `tools` (null or a
  // list). Throws anvil::Error when there is no template or it fails.
  std::string render(const nlohmann::ordered_json& messages, const nlohmann::ordered_json& tools,
                     bool add_generation_prompt) const;

  // Full rendering, its ids and the loss mask described above. With add_generation_prompt
  // the generation prompt is appended (mask 0).
  Encoded encode_conversation(const nlohmann::ordered_json& messages,
                              const nlohmann::ordered_json& tools,
                              bool add_generation_prompt = false) const;

  // A prompt for generation (all mask 0). `input` is a string or a messages list; with
  // apply_chat_template the template renders it with add_generation_prompt (a string becomes
  // one user message), without it a string is tokenised as it is and a messages list is an
  // error.
  Encoded encode_prompt(const nlohmann::ordered_json& input, const nlohmann::ordered_json& tools,
                        bool apply_chat_template) const;

  // A plain prompt/response pair without a template: ids = encode(prompt) + encode(response)
  // + [eos] (when the tokenizer config names an eos_token), mask 0 on the prompt and 1 on the
  // response and eos.
  Encoded encode_pair(const std::string& prompt, const std::string& response) const;

 private:
  std::string render_prefix(const nlohmann::ordered_json& messages, size_t count,
                            const nlohmann::ordered_json& tools, bool add_generation_prompt) const;

  Tokenizer tokenizer_;
  std::unique_ptr<jinja::Template> template_;
  nlohmann::ordered_json context_;  // special tokens + kwargs
  std::vector<int32_t> end_of_turn_ids_;
  std::optional<int32_t> eos_id_;
  std::string source_;
};

}  // namespace anvil::data

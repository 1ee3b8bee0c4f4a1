#include "rollout/data/conversation.hpp"

#include "backends/common/error.hpp"
#include "backends/common/json_util.hpp"
#include "rollout/data/jinja/jinja.hpp"

#include <algorithm>

namespace anvil::data {

using ojson = nlohmann::ordered_json;
namespace fs = std::filesystem;

namespace {

// The special-token names transformers puts into the template context.
constexpr const char* kSpecialTokenKeys[] = {"bos_token", "eos_token", "unk_token", "sep_token",
                                             "pad_token", "cls_token", "mask_token"};

// tokenizer_config.json writes a special token as "text" or {"content": "text", ...}.
std::optional<std::string> token_text(const nlohmann::json& v, const std::string& file,
                                      const std::string& key) {
  if (v.is_null()) return std::nullopt;
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) {
    return v["content"].get<std::string>();
  }
  fail("{}: key '{}' must be a string or an object with a string 'content'", file, key);
}

}  // namespace

ChatTokenizer::~ChatTokenizer() = default;
ChatTokenizer::ChatTokenizer(ChatTokenizer&&) noexcept = default;
ChatTokenizer& ChatTokenizer::operator=(ChatTokenizer&&) noexcept = default;

ChatTokenizer ChatTokenizer::from_model_dir(const fs::path& dir) {
  if (!fs::is_directory(dir)) fail("{}: model directory does not exist", dir.string());
  Tokenizer tok = Tokenizer::from_file(dir / "tokenizer.json");
  const fs::path config_path = dir / "tokenizer_config.json";
  const std::string cfile = config_path.string();
  nlohmann::json config =
      fs::exists(config_path) ? read_json_file(config_path) : nlohmann::json::object();
  if (!config.is_object()) fail("{}: expected a JSON object", cfile);
  std::string chat_template;
  if (auto it = config.find("chat_template"); it != config.end() && !it->is_null()) {
    if (it->is_string()) {
      chat_template = it->get<std::string>();
    } else if (it->is_array()) {
      bool found = false;
      for (const auto& t : *it) {
        if (!t.is_object() || !t.contains("name") || !t.contains("template") ||
            !t["name"].is_string() || !t["template"].is_string()) {
          fail("{}: key 'chat_template' entries must be {{\"name\": str, \"template\": str}}",
               cfile);
        }
        if (t["name"] == "default") {
          chat_template = t["template"].get<std::string>();
          found = true;
        }
      }
      if (!found) fail("{}: key 'chat_template' has no template named 'default'", cfile);
    } else {
      fail("{}: key 'chat_template' must be a string or a list of named templates", cfile);
    }
  }
  ojson special = ojson::object();
  std::vector<int32_t> eot;
  for (const char* key : kSpecialTokenKeys) {
    if (auto it = config.find(key); it != config.end()) {
      if (auto text = token_text(*it, cfile, key)) special[key] = *text;
    }
  }
  if (special.contains("eos_token")) {
    auto id = tok.token_to_id(special["eos_token"].get<std::string>());
    if (!id) {
      fail("{}: key 'eos_token' ('{}') is not a token of {}", cfile,
           special["eos_token"].get<std::string>(), (dir / "tokenizer.json").string());
    }
    eot.push_back(*id);
  }
  const fs::path gen_path = dir / "generation_config.json";
  if (fs::exists(gen_path)) {
    nlohmann::json gen = read_json_file(gen_path);
    if (auto it = gen.find("eos_token_id"); gen.is_object() && it != gen.end() && !it->is_null()) {
      auto add = [&](const nlohmann::json& v) {
        if (!v.is_number_integer() || v.get<int64_t>() < 0 ||
            v.get<int64_t>() >= tok.vocab_size()) {
          fail("{}: key 'eos_token_id' must hold token ids below {}", gen_path.string(),
               tok.vocab_size());
        }
        eot.push_back(v.get<int32_t>());
      };
      if (it->is_array()) {
        for (const auto& v : *it) add(v);
      } else {
        add(*it);
      }
    }
  }
  std::sort(eot.begin(), eot.end());
  eot.erase(std::unique(eot.begin(), eot.end()), eot.end());
  return ChatTokenizer(std::move(tok), chat_template, std::move(special), std::move(eot), cfile);
}

ChatTokenizer::ChatTokenizer(Tokenizer tokenizer, const std::string& chat_template,
                             ojson special_tokens, std::vector<int32_t> end_of_turn_ids,
                             std::string source)
    : tokenizer_(std::move(tokenizer)),
      context_(std::move(special_tokens)),
      end_of_turn_ids_(std::move(end_of_turn_ids)),
      source_(std::move(source)) {
  if (!context_.is_object()) context_ = ojson::object();
  if (!chat_template.empty()) {
    template_ = std::make_unique<jinja::Template>(
        jinja::Template::parse(chat_template, source_ + ": chat_template"));
  }
  if (context_.contains("eos_token"))
    eos_id_ = tokenizer_.token_to_id(context_["eos_token"].get<std::string>());
}

void ChatTokenizer::set_template_kwargs(ojson kwargs) {
  if (!kwargs.is_object()) fail("chat template keyword arguments must be a JSON object");
  for (auto& [k, v] : kwargs.items()) context_[k] = v;
}

std::string ChatTokenizer::render(const ojson& messages, const ojson& tools,
                                  bool add_generation_prompt) const {
  return render_prefix(messages, messages.size(), tools, add_generation_prompt);
}

std::string ChatTokenizer::render_prefix(const ojson& messages, size_t count, const ojson& tools,
                                         bool add_generation_prompt) const {
  if (!template_) fail("{}: the model has no chat_template", source_);
  ojson ctx = context_;
  ojson msgs = ojson::array();
  for (size_t i = 0; i < count; ++i) msgs.push_back(messages[i]);
  ctx["messages"] = std::move(msgs);
  ctx["tools"] = tools;
  ctx["documents"] = nullptr;
  ctx["add_generation_prompt"] = add_generation_prompt;
  return template_->render(ctx);
}

namespace {

// The first byte where `a` and `b` differ, for error messages.
size_t mismatch_at(const std::string& a, const std::string& b) {
  size_t n = std::min(a.size(), b.size()), i = 0;
  while (i < n && a[i] == b[i]) ++i;
  return i;
}

std::string excerpt(const std::string& s, size_t at) {
  std::string e = s.substr(at, 40);
  std::string out;
  for (char c : e) out += c == '\n' ? std::string("\\n") : std::string(1, c);
  return out;
}

}  // namespace

Encoded ChatTokenizer::encode_conversation(const ojson& messages, const ojson& tools,
                                           bool add_generation_prompt) const {
  if (!messages.is_array() || messages.empty())
    fail("conversation must be a non-empty messages list");
  struct Piece {
    size_t begin, end;  // byte range of the full rendering
    bool trained;
  };
  std::vector<Piece> pieces;
  // Cuts are needed only around assistant turns, so runs of other messages (e.g. several
  // tool results that a template groups into one turn) are never rendered on their own.
  std::string prev;  // the rendering up to the last cut
  std::string prev_name = "nothing";
  auto name_of = [](size_t count, bool agp) {
    return fmt::format("messages[:{}]{}", count, agp ? " with add_generation_prompt" : "");
  };
  auto render_at = [&](size_t count, bool agp) {
    try {
      return render_prefix(messages, count, tools, agp);
    } catch (const Error& e) {
      fail("rendering {}: {}", name_of(count, agp), e.what());
    }
  };
  auto extend = [&](const std::string& next, size_t count, bool agp, bool trained) {
    if (next.compare(0, prev.size(), prev) != 0) {
      size_t at = mismatch_at(prev, next);
      fail(
          "chat template is not prefix-stable: rendering {} is not a prefix of rendering {} "
          "(they differ at byte {}: '{}' vs '{}'); the template renders earlier turns "
          "differently once later messages follow, so no exact loss mask exists",
          prev_name, name_of(count, agp), at, excerpt(prev, at), excerpt(next, at));
    }
    if (next.size() > prev.size()) pieces.push_back({prev.size(), next.size(), trained});
    prev = next;
    prev_name = name_of(count, agp);
  };
  for (size_t i = 0; i < messages.size(); ++i) {
    if (!messages[i].is_object() || messages[i].value("role", "") != "assistant") continue;
    std::string header = render_at(i, true);
    std::string turn = render_at(i + 1, false);
    // The trained part starts where the generation prompt and the rendered turn part. That is
    // the end of the generation prompt, except for templates whose generation prompt holds
    // text the rendered turn lacks (Qwen3 with enable_thinking=false adds an empty think
    // block): there the turn's header is their common prefix.
    header.resize(mismatch_at(header, turn));
    extend(header, i, true, false);
    extend(turn, i + 1, false, true);
  }
  std::string full = render_at(messages.size(), add_generation_prompt);
  extend(full, messages.size(), add_generation_prompt, false);

  Encoded out;
  out.text = std::move(full);
  out.ids = tokenizer_.encode(out.text);
  std::vector<int32_t> joined;
  joined.reserve(out.ids.size());
  out.loss_mask.reserve(out.ids.size());
  for (const Piece& p : pieces) {
    auto ids = tokenizer_.encode(std::string_view(out.text).substr(p.begin, p.end - p.begin));
    size_t trained_end = 0;  // tokens [0, trained_end) of this piece are trained
    if (p.trained) {
      trained_end = ids.size();
      for (size_t t = ids.size(); t > 0; --t) {
        if (std::binary_search(end_of_turn_ids_.begin(), end_of_turn_ids_.end(), ids[t - 1])) {
          trained_end = t;
          break;
        }
      }
    }
    for (size_t t = 0; t < ids.size(); ++t) out.loss_mask.push_back(t < trained_end ? 1 : 0);
    joined.insert(joined.end(), ids.begin(), ids.end());
  }
  if (joined != out.ids) {
    size_t t = 0;
    while (t < joined.size() && t < out.ids.size() && joined[t] == out.ids[t]) ++t;
    fail(
        "loss mask is not token-exact: tokenising the conversation turn by turn differs from "
        "tokenising the full rendering at token {} (a token spans a turn boundary)",
        t);
  }
  return out;
}

Encoded ChatTokenizer::encode_prompt(const ojson& input, const ojson& tools,
                                     bool apply_chat_template) const {
  Encoded out;
  if (apply_chat_template) {
    if (input.is_string()) {
      ojson msgs = ojson::array({ojson{{"role", "user"}, {"content", input}}});
      out.text = render(msgs, tools, true);
    } else {
      out.text = render(input, tools, true);
    }
  } else {
    if (!input.is_string()) {
      fail("a messages list needs the chat template (--apply-chat-template) to become a prompt");
    }
    out.text = input.get<std::string>();
  }
  out.ids = tokenizer_.encode(out.text);
  out.loss_mask.assign(out.ids.size(), 0);
  return out;
}

Encoded ChatTokenizer::encode_pair(const std::string& prompt, const std::string& response) const {
  Encoded out;
  out.text = prompt + response;
  out.ids = tokenizer_.encode(prompt);
  out.loss_mask.assign(out.ids.size(), 0);
  auto r = tokenizer_.encode(response);
  out.ids.insert(out.ids.end(), r.begin(), r.end());
  if (eos_id_) {
    out.ids.push_back(*eos_id_);
    out.text += context_["eos_token"].get<std::string>();
  }
  out.loss_mask.resize(out.ids.size(), 1);
  return out;
}

}  // namespace anvil::data

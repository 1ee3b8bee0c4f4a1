#include "rollout/data/sample_loader.hpp"

#include "backends/common/error.hpp"

namespace anvil::data {

using ojson = nlohmann::ordered_json;

SampleLoader::SampleLoader(PromptSource& source, const ChatTokenizer& chat, LoaderMode mode,
                           const DataOptions& options)
    : source_(source), chat_(chat), mode_(mode), options_(options) {
  if (options_.max_length < 0) fail("--max-length must be >= 0, got {}", options_.max_length);
  for (const auto& c : source_.cursor().sources)
    bad_.emplace(c.name, BadRows(c.name, options_.strict));
}

Encoded SampleLoader::encode(const Sample& s) const {
  if (mode_ == LoaderMode::Prompt) {
    return chat_.encode_prompt(s.input, s.tools, options_.apply_chat_template);
  }
  if (s.input.is_array()) return chat_.encode_conversation(s.input, s.tools, false);
  if (s.label.is_null()) {
    fail("key '{}': an SFT sample needs a messages list, or a string and a --label-key",
         options_.keys.input);
  }
  if (!s.label.is_string()) fail("key '{}': an SFT response must be a string", options_.keys.label);
  if (chat_.has_chat_template()) {
    ojson msgs = ojson::array({ojson{{"role", "user"}, {"content", s.input}},
                               ojson{{"role", "assistant"}, {"content", s.label}}});
    return chat_.encode_conversation(msgs, s.tools, false);
  }
  return chat_.encode_pair(s.input.get<std::string>(), s.label.get<std::string>());
}

std::optional<TokenizedSample> SampleLoader::next() {
  while (true) {
    auto sample = source_.next();
    if (!sample) return std::nullopt;
    const Sample& s = **sample;
    std::string reason, what;
    TokenizedSample out;
    try {
      out.encoded = encode(s);
      if (options_.max_length > 0 &&
          out.encoded.ids.size() > static_cast<size_t>(options_.max_length)) {
        reason = "too_long";
        what = fmt::format("{} tokens, longer than --max-length {}", out.encoded.ids.size(),
                           options_.max_length);
      }
    } catch (const Error& e) {
      reason = "template_error";
      what = e.what();
    }
    if (!reason.empty()) {
      bad_.at(s.source).report(s.file, s.line, reason == "too_long" ? "" : options_.keys.input,
                               reason, what);
      source_.note_skipped(s);
      continue;
    }
    out.sample = std::move(*sample);
    out.cursor = source_.cursor();
    return out;
  }
}

std::map<std::string, double> data_metrics(const DataCursor& cursor, uint64_t epoch_size,
                                           std::optional<size_t> prefetch_queue_depth) {
  std::map<std::string, double> m;
  m["data/epoch"] = static_cast<double>(cursor.epoch) +
                    (epoch_size > 0 ? static_cast<double>(cursor.offset) / epoch_size : 0.0);
  for (const auto& c : cursor.sources) {
    m["data/" + c.name + "/samples"] = static_cast<double>(c.consumed);
    m["data/" + c.name + "/skipped"] = static_cast<double>(c.skipped);
    m["data/" + c.name + "/bad_rows"] = static_cast<double>(c.bad_rows);
  }
  if (prefetch_queue_depth)
    m["data/prefetch_queue_depth"] = static_cast<double>(*prefetch_queue_depth);
  return m;
}

}  // namespace anvil::data

#include "rollout/server/api.hpp"

#include "backends/common/error.hpp"
#include "rollout/data/conversation.hpp"
#include "rollout/data/tokenizer.hpp"

#include <ATen/ATen.h>

#include <chrono>
#include <cstring>
#include <limits>
#include <random>
#include <set>

namespace anvil::server {

using nlohmann::json;

namespace {

[[noreturn]] void bad(const std::string& message) { throw BadRequest(message); }

const json* opt(const json& obj, const char* key) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

double number(const json& v, const std::string& name) {
  if (!v.is_number()) bad(name + " must be a number, got " + std::string(v.type_name()));
  return v.get<double>();
}

int64_t integer(const json& v, const std::string& name) {
  if (v.is_number_integer()) return v.get<int64_t>();
  if (v.is_number_float()) {
    double d = v.get<double>();
    if (d == static_cast<double>(static_cast<int64_t>(d))) return static_cast<int64_t>(d);
  }
  bad(name + " must be an integer, got " + (v.is_number() ? v.dump() : std::string(v.type_name())));
}

bool boolean(const json& v, const std::string& name) {
  if (!v.is_boolean()) bad(name + " must be a boolean, got " + std::string(v.type_name()));
  return v.get<bool>();
}

std::string string(const json& v, const std::string& name) {
  if (!v.is_string()) bad(name + " must be a string, got " + std::string(v.type_name()));
  return v.get<std::string>();
}

std::vector<int64_t> int_list(const json& v, const std::string& name) {
  if (!v.is_array()) bad(name + " must be a list of integers");
  std::vector<int64_t> out;
  for (size_t i = 0; i < v.size(); ++i) {
    if (!v[i].is_number_integer()) {
      bad(name + "[" + std::to_string(i) + "] must be an integer, got " +
          std::string(v[i].type_name()));
    }
    out.push_back(v[i].get<int64_t>());
  }
  return out;
}

std::vector<std::string> stop_list(const json& v, const std::string& name) {
  if (v.is_string()) return {v.get<std::string>()};
  if (!v.is_array()) bad(name + " must be a string or a list of strings");
  std::vector<std::string> out;
  for (size_t i = 0; i < v.size(); ++i)
    out.push_back(string(v[i], name + "[" + std::to_string(i) + "]"));
  return out;
}

std::string random_id() {
  static thread_local std::mt19937_64 rng(std::random_device{}());
  return fmt::format("{:016x}{:016x}", rng(), rng());
}

int64_t now_seconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Checks and moves an engine-level validation error into a BadRequest.
void validate(const engine::SamplingParams& p, const std::string& where) {
  try {
    p.validate();
  } catch (const Error& e) {
    bad(where + ": " + e.what());
  }
}

std::vector<int64_t> encode(const data::ChatTokenizer& tok, const std::string& text, bool special) {
  std::vector<int32_t> ids = tok.tokenizer().encode(text, special);
  return {ids.begin(), ids.end()};
}

std::string token_text(const data::ChatTokenizer& tok, int64_t id) {
  std::vector<int32_t> one{static_cast<int32_t>(id)};
  return tok.tokenizer().decode(one, false);
}

// Sampling keys of OpenAI requests shared by both endpoints (SGLang's extensions too).
void openai_sampling(const json& body, engine::SamplingParams& p, const std::string& max_key) {
  if (auto* v = opt(body, max_key.c_str())) p.max_new_tokens = integer(*v, max_key);
  if (auto* v = opt(body, "temperature")) p.temperature = number(*v, "temperature");
  if (auto* v = opt(body, "top_p")) p.top_p = number(*v, "top_p");
  if (auto* v = opt(body, "top_k")) p.top_k = integer(*v, "top_k");
  if (auto* v = opt(body, "min_p")) p.min_p = number(*v, "min_p");
  if (auto* v = opt(body, "n")) p.n = integer(*v, "n");
  if (auto* v = opt(body, "seed")) p.seed = static_cast<uint64_t>(integer(*v, "seed"));
  if (auto* v = opt(body, "stop")) p.stop = stop_list(*v, "stop");
  if (auto* v = opt(body, "stop_token_ids")) p.stop_token_ids = int_list(*v, "stop_token_ids");
  if (auto* v = opt(body, "ignore_eos")) p.ignore_eos = boolean(*v, "ignore_eos");
  if (auto* v = opt(body, "skip_special_tokens")) {
    p.skip_special_tokens = boolean(*v, "skip_special_tokens");
  }
  if (auto* v = opt(body, "no_stop_trim")) p.no_stop_trim = boolean(*v, "no_stop_trim");
  for (const char* k : {"frequency_penalty", "presence_penalty"}) {
    if (auto* v = opt(body, k); v != nullptr && number(*v, k) != 0) {
      bad(std::string(k) + " is not supported (only 0)");
    }
  }
  validate(p, "request");
}

// stream and stream_options of the OpenAI endpoints.
void openai_stream(const json& body, OpenAICall& call) {
  if (auto* v = opt(body, "stream")) call.stream = boolean(*v, "stream");
  if (auto* v = opt(body, "stream_options")) {
    if (!v->is_object()) bad("stream_options must be an object");
    if (auto* u = opt(*v, "include_usage")) {
      call.include_usage = boolean(*u, "stream_options.include_usage");
    }
  }
}

int8_t base64_value(char c) {
  if (c >= 'A' && c <= 'Z') return static_cast<int8_t>(c - 'A');
  if (c >= 'a' && c <= 'z') return static_cast<int8_t>(c - 'a' + 26);
  if (c >= '0' && c <= '9') return static_cast<int8_t>(c - '0' + 52);
  if (c == '+' || c == '-') return 62;
  if (c == '/' || c == '_') return 63;
  return -1;
}

std::string base64_decode(const std::string& in, const std::string& name) {
  std::string out;
  out.reserve(in.size() * 3 / 4);
  uint32_t acc = 0;
  int bits = 0;
  for (char c : in) {
    if (c == '=' || c == '\n' || c == '\r') continue;
    const int8_t v = base64_value(c);
    if (v < 0) bad(name + " is not base64");
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((acc >> bits) & 0xff));
    }
  }
  return out;
}

}  // namespace

json error_body(const std::string& message, int status) {
  return {{"error",
           {{"message", message},
            {"type", status == 404   ? "NotFoundError"
                     : status >= 500 ? "InternalServerError"
                                     : "BadRequestError"},
            {"code", status}}}};
}

engine::SamplingParams parse_sampling_params(const json& j, const std::string& where) {
  engine::SamplingParams p;
  if (j.is_null()) return p;
  if (!j.is_object()) bad(where + " must be an object");
  for (const auto& [key, v] : j.items()) {
    const std::string name = where + "." + key;
    if (v.is_null()) continue;
    if (key == "temperature") {
      p.temperature = number(v, name);
    } else if (key == "top_p") {
      p.top_p = number(v, name);
    } else if (key == "top_k") {
      p.top_k = integer(v, name);
    } else if (key == "min_p") {
      p.min_p = number(v, name);
    } else if (key == "max_new_tokens") {
      p.max_new_tokens = integer(v, name);
    } else if (key == "stop") {
      p.stop = stop_list(v, name);
    } else if (key == "stop_token_ids") {
      p.stop_token_ids = int_list(v, name);
    } else if (key == "ignore_eos") {
      p.ignore_eos = boolean(v, name);
    } else if (key == "skip_special_tokens") {
      p.skip_special_tokens = boolean(v, name);
    } else if (key == "no_stop_trim") {
      p.no_stop_trim = boolean(v, name);
    } else if (key == "sampling_seed" || key == "seed") {
      p.seed = static_cast<uint64_t>(integer(v, name));
    } else if (key == "n") {
      p.n = integer(v, name);
    } else if (key == "frequency_penalty" || key == "presence_penalty") {
      if (number(v, name) != 0) bad(name + " is not supported (only 0)");
    } else if (key == "repetition_penalty") {
      if (number(v, name) != 1) bad(name + " is not supported (only 1)");
    } else if (key == "min_new_tokens") {
      if (integer(v, name) != 0) bad(name + " is not supported (only 0)");
    } else if (key == "spaces_between_special_tokens" || key == "stream_interval") {
      // accepted, no effect on anvil's output
    } else if (key == "regex" || key == "json_schema" || key == "ebnf" || key == "structural_tag" ||
               key == "logit_bias" || key == "custom_params") {
      bad(name + " is not supported");
    } else {
      bad("unknown sampling parameter " + name);
    }
  }
  validate(p, where);
  return p;
}

GenerateCall parse_generate(const json& body, const data::ChatTokenizer& tok) {
  if (!body.is_object()) bad("the request body must be a JSON object");
  const json* text = opt(body, "text");
  const json* ids = opt(body, "input_ids");
  if ((text == nullptr) == (ids == nullptr)) {
    bad("exactly one of text and input_ids must be given");
  }
  GenerateCall call;
  if (auto* v = opt(body, "stream")) call.stream = boolean(*v, "stream");
  if (auto* v = opt(body, "logprob_start_len")) integer(*v, "logprob_start_len");

  std::vector<std::vector<int64_t>> prompts;
  if (text != nullptr) {
    if (text->is_string()) {
      prompts.push_back(encode(tok, text->get<std::string>(), true));
    } else if (text->is_array()) {
      call.batch = true;
      if (text->empty()) bad("text: the batch is empty");
      for (size_t i = 0; i < text->size(); ++i) {
        prompts.push_back(encode(tok, string((*text)[i], "text[" + std::to_string(i) + "]"), true));
      }
    } else {
      bad("text must be a string or a list of strings");
    }
  } else {
    if (!ids->is_array()) bad("input_ids must be a list of integers or a list of lists");
    if (!ids->empty() && ids->at(0).is_array()) {
      call.batch = true;
      for (size_t i = 0; i < ids->size(); ++i) {
        prompts.push_back(int_list((*ids)[i], "input_ids[" + std::to_string(i) + "]"));
      }
    } else {
      prompts.push_back(int_list(*ids, "input_ids"));
    }
    if (prompts.empty()) bad("input_ids: the batch is empty");
  }
  const size_t n = prompts.size();

  auto per_item = [&](const char* key, auto parse_one, auto fallback) {
    using T = decltype(fallback);
    std::vector<T> out(n, fallback);
    const json* v = opt(body, key);
    if (v == nullptr) return out;
    if (v->is_array() && call.batch) {
      if (v->size() != n) {
        bad(fmt::format("{} has {} entries for {} inputs", key, v->size(), n));
      }
      for (size_t i = 0; i < n; ++i) out[i] = parse_one((*v)[i], fmt::format("{}[{}]", key, i));
    } else {
      T one = parse_one(*v, key);
      std::fill(out.begin(), out.end(), one);
    }
    return out;
  };
  auto params = per_item(
      "sampling_params",
      [](const json& j, const std::string& name) { return parse_sampling_params(j, name); },
      engine::SamplingParams{});
  std::vector<bool> return_logprob = per_item(
      "return_logprob", [](const json& j, const std::string& name) { return boolean(j, name); },
      false);
  std::vector<bool> return_text = per_item(
      "return_text_in_logprobs",
      [](const json& j, const std::string& name) { return boolean(j, name); }, false);
  std::vector<int64_t> top = per_item(
      "top_logprobs_num",
      [](const json& j, const std::string& name) {
        int64_t k = integer(j, name);
        if (k < 0) bad(name + " must be >= 0");
        return k;
      },
      int64_t{0});
  std::vector<std::string> rids = per_item(
      "rid", [](const json& j, const std::string& name) { return string(j, name); }, std::string());
  for (size_t i = 0; i < n; ++i) {
    engine::GenerateRequest r;
    r.input_ids = std::move(prompts[i]);
    r.params = params[i];
    r.rid = rids[i].empty() ? random_id() : rids[i];
    r.top_logprobs_num = return_logprob[i] ? top[i] : 0;
    call.logprobs.push_back({return_logprob[i], return_text[i], r.top_logprobs_num});
    call.requests.push_back(std::move(r));
  }
  // n > 1 samples of a single input come back as a list, as SGLang's parallel sampling.
  if (!call.batch && call.requests[0].params.n > 1) call.batch = true;
  return call;
}

json generate_result(const engine::GenerateOutput& out, const LogprobOptions& lp,
                     const data::ChatTokenizer& tok, bool final) {
  json finish = nullptr;
  if (final) {
    finish = {{"type", engine::finish_reason_name(out.finish)}};
    if (out.matched_token) finish["matched"] = *out.matched_token;
    if (out.matched_stop) finish["matched"] = *out.matched_stop;
    if (out.finish == engine::FinishReason::kLength) {
      finish["length"] = out.output_ids.size();
    }
    if (out.finish == engine::FinishReason::kAbort) finish["message"] = out.abort_message;
  }
  auto text_of = [&](int64_t id) -> json {
    if (!lp.return_text) return nullptr;
    return token_text(tok, id);
  };
  json meta = {{"id", out.rid},
               {"finish_reason", finish},
               {"prompt_tokens", out.input_ids.size()},
               {"completion_tokens", out.output_ids.size()},
               {"cached_tokens", out.cached_tokens},
               {"weight_version", out.weight_version}};
  if (lp.return_logprob) {
    json lps = json::array();
    for (size_t i = 0; i < out.output_ids.size(); ++i) {
      lps.push_back({out.output_logprobs[i], out.output_ids[i], text_of(out.output_ids[i])});
    }
    meta["output_token_logprobs"] = std::move(lps);
    meta["input_token_logprobs"] = json::array();
    if (lp.top > 0) {
      json tops = json::array();
      for (const auto& alternatives : out.output_top_logprobs) {
        json one = json::array();
        for (const auto& [id, value] : alternatives) one.push_back({value, id, text_of(id)});
        tops.push_back(std::move(one));
      }
      meta["output_top_logprobs"] = std::move(tops);
      meta["input_top_logprobs"] = json::array();
    }
  }
  return {{"text", out.text}, {"output_ids", out.output_ids}, {"meta_info", std::move(meta)}};
}

OpenAICall parse_completions(const json& body, const data::ChatTokenizer& tok) {
  if (!body.is_object()) bad("the request body must be a JSON object");
  OpenAICall call;
  if (auto* v = opt(body, "model")) call.model = string(*v, "model");
  if (auto* v = opt(body, "echo"); v != nullptr && boolean(*v, "echo")) {
    bad("echo is not supported");
  }
  if (auto* v = opt(body, "best_of"); v != nullptr && integer(*v, "best_of") > 1) {
    bad("best_of is not supported");
  }
  engine::SamplingParams p;
  p.max_new_tokens = 16;  // OpenAI's default
  openai_sampling(body, p, "max_tokens");
  openai_stream(body, call);
  if (auto* v = opt(body, "logprobs")) {
    call.logprobs = integer(*v, "logprobs");
    if (call.logprobs < 0 || call.logprobs > 20) bad("logprobs must be in [0, 20]");
  }
  const json* prompt = opt(body, "prompt");
  if (prompt == nullptr) bad("prompt is required");
  std::vector<std::vector<int64_t>> prompts;
  if (prompt->is_string()) {
    prompts.push_back(encode(tok, prompt->get<std::string>(), true));
  } else if (prompt->is_array() && !prompt->empty() && prompt->at(0).is_number_integer()) {
    prompts.push_back(int_list(*prompt, "prompt"));
  } else if (prompt->is_array() && !prompt->empty()) {
    for (size_t i = 0; i < prompt->size(); ++i) {
      const json& item = (*prompt)[i];
      const std::string name = "prompt[" + std::to_string(i) + "]";
      if (item.is_string()) {
        prompts.push_back(encode(tok, item.get<std::string>(), true));
      } else {
        prompts.push_back(int_list(item, name));
      }
    }
  } else {
    bad("prompt must be a string, a list of strings, a list of token ids or a list of lists");
  }
  for (auto& ids : prompts) {
    engine::GenerateRequest r;
    r.input_ids = std::move(ids);
    r.params = p;
    r.rid = random_id();
    r.top_logprobs_num = std::max<int64_t>(call.logprobs, 0);
    call.requests.push_back(std::move(r));
  }
  return call;
}

OpenAICall parse_chat_completions(const json& body, const data::ChatTokenizer& tok) {
  if (!body.is_object()) bad("the request body must be a JSON object");
  OpenAICall call;
  if (auto* v = opt(body, "model")) call.model = string(*v, "model");
  const json* messages = opt(body, "messages");
  if (messages == nullptr || !messages->is_array() || messages->empty()) {
    bad("messages must be a non-empty list");
  }
  for (size_t i = 0; i < messages->size(); ++i) {
    const json& m = (*messages)[i];
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string()) {
      bad("messages[" + std::to_string(i) + "] must be an object with a string role");
    }
  }
  if (opt(body, "chat_template_kwargs") != nullptr) {
    bad("chat_template_kwargs is not supported per request");
  }
  engine::SamplingParams p;
  p.max_new_tokens = std::numeric_limits<int32_t>::max();  // up to the context window
  if (auto* v = opt(body, "max_tokens")) p.max_new_tokens = integer(*v, "max_tokens");
  openai_sampling(body, p, "max_completion_tokens");
  openai_stream(body, call);
  if (auto* v = opt(body, "logprobs"); v != nullptr && boolean(*v, "logprobs")) call.logprobs = 0;
  if (auto* v = opt(body, "top_logprobs")) {
    const int64_t k = integer(*v, "top_logprobs");
    if (k < 0 || k > 20) bad("top_logprobs must be in [0, 20]");
    if (k > 0 && call.logprobs < 0) bad("top_logprobs requires logprobs: true");
    if (call.logprobs >= 0) call.logprobs = k;
  }
  if (!tok.has_chat_template()) bad("the served model has no chat_template");
  json tools = body.contains("tools") ? body["tools"] : json();
  std::string text;
  try {
    text = tok.render(nlohmann::ordered_json(*messages), nlohmann::ordered_json(tools), true);
  } catch (const Error& e) {
    bad(std::string("messages: ") + e.what());
  }
  engine::GenerateRequest r;
  r.input_ids = encode(tok, text, false);
  r.params = p;
  r.rid = random_id();
  r.top_logprobs_num = std::max<int64_t>(call.logprobs, 0);
  call.requests.push_back(std::move(r));
  return call;
}

json completions_response(const OpenAICall& call, const std::vector<engine::GenerateOutput>& outs,
                          const data::ChatTokenizer& tok, bool chat) {
  json choices = json::array();
  int64_t prompt_tokens = 0, completion_tokens = 0;
  size_t index = 0;
  for (const auto& o : outs) {
    completion_tokens += static_cast<int64_t>(o.output_ids.size());
    if (o.sample_index == 0) prompt_tokens += static_cast<int64_t>(o.input_ids.size());
    json logprobs = openai_logprobs(call, o, tok, chat, 0, o.output_ids.size(), 0);
    json choice = {{"index", index++},
                   {"logprobs", logprobs},
                   {"finish_reason", engine::finish_reason_name(o.finish)}};
    if (o.matched_stop) choice["matched_stop"] = *o.matched_stop;
    if (o.matched_token) choice["matched_stop"] = *o.matched_token;
    if (chat) {
      choice["message"] = {{"role", "assistant"}, {"content", o.text}};
    } else {
      choice["text"] = o.text;
    }
    choices.push_back(std::move(choice));
  }
  return {{"id", (chat ? "chatcmpl-" : "cmpl-") + random_id()},
          {"object", chat ? "chat.completion" : "text_completion"},
          {"created", now_seconds()},
          {"model", call.model},
          {"choices", choices},
          {"usage",
           {{"prompt_tokens", prompt_tokens},
            {"completion_tokens", completion_tokens},
            {"total_tokens", prompt_tokens + completion_tokens}}}};
}

json openai_logprobs(const OpenAICall& call, const engine::GenerateOutput& o,
                     const data::ChatTokenizer& tok, bool chat, size_t from, size_t to,
                     size_t text_offset) {
  if (call.logprobs < 0) return nullptr;
  auto bytes_of = [](const std::string& t) {
    json b = json::array();
    for (unsigned char c : t) b.push_back(static_cast<int>(c));
    return b;
  };
  const bool with_top = call.logprobs > 0 && o.output_top_logprobs.size() >= to;
  if (chat) {
    json content = json::array();
    for (size_t i = from; i < to; ++i) {
      const std::string t = token_text(tok, o.output_ids[i]);
      json top = json::array();
      if (with_top) {
        for (const auto& [id, value] : o.output_top_logprobs[i]) {
          const std::string a = token_text(tok, id);
          top.push_back({{"token", a}, {"logprob", value}, {"bytes", bytes_of(a)}});
        }
      }
      content.push_back({{"token", t},
                         {"logprob", o.output_logprobs[i]},
                         {"bytes", bytes_of(t)},
                         {"top_logprobs", std::move(top)}});
    }
    return {{"content", std::move(content)}};
  }
  json tokens = json::array(), values = json::array(), offsets = json::array();
  json tops = with_top ? json::array() : json(nullptr);
  size_t offset = text_offset;
  for (size_t i = from; i < to; ++i) {
    std::string t = token_text(tok, o.output_ids[i]);
    tokens.push_back(t);
    values.push_back(o.output_logprobs[i]);
    offsets.push_back(offset);
    offset += t.size();
    if (with_top) {
      json alternatives = json::object();
      for (const auto& [id, value] : o.output_top_logprobs[i]) {
        alternatives[token_text(tok, id)] = value;
      }
      tops.push_back(std::move(alternatives));
    }
  }
  return {{"tokens", std::move(tokens)},
          {"token_logprobs", std::move(values)},
          {"top_logprobs", std::move(tops)},
          {"text_offset", std::move(offsets)}};
}

std::vector<std::pair<std::string, at::Tensor>> parse_named_tensors(const json& body) {
  if (!body.is_object()) bad("the request body must be a JSON object");
  const json* items = opt(body, "serialized_named_tensors");
  if (items == nullptr) bad("serialized_named_tensors is required");
  std::vector<const json*> lists;
  if (items->is_array() && !items->empty() && items->at(0).is_array()) {
    for (const auto& l : *items) lists.push_back(&l);  // one list per tensor-parallel rank
  } else {
    lists.push_back(items);
  }
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (size_t li = 0; li < lists.size(); ++li) {
    const json& list = *lists[li];
    if (!list.is_array()) {
      bad("serialized_named_tensors must be a list of {name, dtype, shape, data} objects (a "
          "string is SGLang's pickled CUDA IPC form, which only a Python SGLang can read)");
    }
    for (size_t i = 0; i < list.size(); ++i) {
      const std::string where = lists.size() > 1
                                    ? fmt::format("serialized_named_tensors[{}][{}]", li, i)
                                    : fmt::format("serialized_named_tensors[{}]", i);
      const json& t = list[i];
      if (t.is_string()) {
        bad(where +
            " is a string: SGLang's pickled CUDA IPC form, which only a Python SGLang "
            "can read; send {name, dtype, shape, data (base64)} objects");
      }
      if (!t.is_object()) bad(where + " must be an object with name, dtype, shape, data");
      const json* name = opt(t, "name");
      const json* dtype = opt(t, "dtype");
      const json* shape = opt(t, "shape");
      const json* data = opt(t, "data");
      if (name == nullptr || dtype == nullptr || shape == nullptr || data == nullptr) {
        bad(where + " needs name, dtype, shape and data");
      }
      const std::string n = string(*name, where + ".name");
      const std::string d = string(*dtype, where + ".dtype");
      at::ScalarType type;
      if (d == "float32") {
        type = at::kFloat;
      } else if (d == "bfloat16") {
        type = at::kBFloat16;
      } else if (d == "float16") {
        type = at::kHalf;
      } else {
        bad(where + ".dtype must be float32, bfloat16 or float16, got " + d);
      }
      std::vector<int64_t> dims = int_list(*shape, where + ".shape");
      int64_t numel = 1;
      for (int64_t x : dims) {
        if (x < 0) bad(where + ".shape has a negative dimension");
        numel *= x;
      }
      std::string bytes = base64_decode(string(*data, where + ".data"), where + ".data");
      const int64_t want = numel * static_cast<int64_t>(c10::elementSize(type));
      if (static_cast<int64_t>(bytes.size()) != want) {
        bad(fmt::format("{}.data holds {} bytes; shape and dtype need {}", where, bytes.size(),
                        want));
      }
      at::Tensor tensor = at::empty(dims, at::TensorOptions().dtype(type));
      std::memcpy(tensor.data_ptr(), bytes.data(), bytes.size());
      out.emplace_back(n, std::move(tensor));
    }
  }
  return out;
}

}  // namespace anvil::server

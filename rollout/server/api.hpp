// Request parsing and response formatting for anvil serve: SGLang's native API
// (/generate, reference/sglang-api.md) and the OpenAI-compatible completions endpoints.
// Pure functions over JSON and engine types, so the HTTP layer (http_server.hpp) only routes.
//
// Rules (as SGLang): unknown top-level fields are ignored; an unknown key inside
// sampling_params is an error (SGLang's SamplingParams(**params) raises); every wrong type
// or range is a BadRequest naming the field.
#pragma once

#include "rollout/engine/engine.hpp"

#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

#include <stdexcept>
#include <string>
#include <vector>

namespace anvil::data {
class ChatTokenizer;
}

namespace anvil::server {

// A client error: becomes HTTP 400 (or `status`) with {"error": {"message", "type", "code"}}.
class BadRequest : public std::runtime_error {
 public:
  explicit BadRequest(const std::string& message, int status = 400)
      : std::runtime_error(message), status_(status) {}
  int status() const { return status_; }

 private:
  int status_;
};

nlohmann::json error_body(const std::string& message, int status);

// SGLang sampling_params -> SamplingParams (defaults: SGLang's, max_new_tokens 128).
engine::SamplingParams parse_sampling_params(const nlohmann::json& j, const std::string& where);

// A parsed /generate body: one engine request per input; `batch` when the body held lists
// (the response is then a list), `return_logprob` per input.
struct LogprobOptions {
  bool return_logprob = false;
  bool return_text = false;  // return_text_in_logprobs: token text as the third item
  int64_t top = 0;           // top_logprobs_num
};
struct GenerateCall {
  std::vector<engine::GenerateRequest> requests;
  std::vector<LogprobOptions> logprobs;  // per input
  bool batch = false;
  bool stream = false;  // "stream": true: SSE events (see http_server.hpp)
};
GenerateCall parse_generate(const nlohmann::json& body, const data::ChatTokenizer& tok);

// One SGLang /generate result object (text, output_ids, meta_info{...}).
// For a stream chunk, `out` holds the output so far and finish_reason is null until the
// sample ends (`final`).
nlohmann::json generate_result(const engine::GenerateOutput& out, const LogprobOptions& lp,
                               const data::ChatTokenizer& tok, bool final = true);

// OpenAI /v1/completions and /v1/chat/completions.
struct OpenAICall {
  std::vector<engine::GenerateRequest> requests;  // one per prompt; params.n samples each
  int64_t logprobs = -1;  // completions: `logprobs` (top-k); chat: `top_logprobs` if logprobs
  std::string model;
  bool stream = false;         // SSE chunks (see http_server.hpp)
  bool include_usage = false;  // stream_options.include_usage: a last chunk with usage
};
OpenAICall parse_completions(const nlohmann::json& body, const data::ChatTokenizer& tok);
OpenAICall parse_chat_completions(const nlohmann::json& body, const data::ChatTokenizer& tok);
nlohmann::json completions_response(const OpenAICall& call,
                                    const std::vector<engine::GenerateOutput>& outs,
                                    const data::ChatTokenizer& tok, bool chat);
// The `logprobs` object of one OpenAI choice for output tokens [from, to) of `out`.
nlohmann::json openai_logprobs(const OpenAICall& call, const engine::GenerateOutput& out,
                               const data::ChatTokenizer& tok, bool chat, size_t from, size_t to,
                               size_t text_offset);

// /update_weights_from_tensor: {"serialized_named_tensors": [ITEM, ...] | ITEM, flush_cache?,
// weight_version?} where ITEM is a JSON list of {"name", "dtype" (float32|bfloat16|float16),
// "shape", "data" (base64 of the little-endian bytes)}.
// SGLang's form (Python pickles of CUDA IPC handles) cannot be produced outside Python and
// is refused with a 400 naming it. Returns CPU tensors by HF name.
std::vector<std::pair<std::string, at::Tensor>> parse_named_tensors(const nlohmann::json& body);

}  // namespace anvil::server

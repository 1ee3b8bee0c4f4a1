// Request parsing and response formatting for anvil serve: SGLang's native API
// (/generate, reference/sglang-api.md) and the OpenAI-compatible completions endpoints.
// Pure functions over JSON and engine types, so the HTTP layer (http_server.hpp) only routes.
//
// Rules (as SGLang): unknown top-level fields are ignored; an unknown key inside
// sampling_params is an error (SGLang's SamplingParams(**params) raises); every wrong type
// or range is a BadRequest naming the field.
#pragma once

#include "rollout/engine/engine.hpp"

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
struct GenerateCall {
  std::vector<engine::GenerateRequest> requests;
  std::vector<bool> return_logprob;
  bool batch = false;
};
GenerateCall parse_generate(const nlohmann::json& body, const data::ChatTokenizer& tok);

// One SGLang /generate result object (text, output_ids, meta_info{...}).
nlohmann::json generate_result(const engine::GenerateOutput& out, bool return_logprob,
                               const data::ChatTokenizer& tok);

// OpenAI /v1/completions and /v1/chat/completions.
struct OpenAICall {
  std::vector<engine::GenerateRequest> requests;  // one per prompt; params.n samples each
  int64_t logprobs = -1;                          // completions: `logprobs`; chat: 0 if set
  std::string model;
};
OpenAICall parse_completions(const nlohmann::json& body, const data::ChatTokenizer& tok);
OpenAICall parse_chat_completions(const nlohmann::json& body, const data::ChatTokenizer& tok);
nlohmann::json completions_response(const OpenAICall& call,
                                    const std::vector<engine::GenerateOutput>& outs,
                                    const data::ChatTokenizer& tok, bool chat);

}  // namespace anvil::server

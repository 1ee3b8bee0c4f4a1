// anvil serve's HTTP server: SGLang's native endpoints and the OpenAI-compatible ones over
// one rollout Engine (reference/sglang-api.md).
//
//   POST /generate                     text|input_ids, single or batch -> result(s)
//   GET  /health, /health_generate     liveness; a one-token generation
//   GET|POST /flush_cache              empties the prefix cache (400 while requests run)
//   GET  /get_weight_version           {"weight_version"}
//   GET  /get_model_info, /v1/models
//   POST /update_weights_from_disk     {model_path, weight_version?}
//   POST /pause_generation, /continue_generation, /abort_request {rid | abort_all}
//   POST /release_memory_occupation, /resume_memory_occupation  {tags: [weights, kv_cache]}
//   POST /v1/completions, /v1/chat/completions
//
// Every failure answers JSON {"error": {"message", "type", "code"}}: 400 for a malformed
// body, wrong types, unknown sampling parameters or a prompt too long; 404 for an unknown
// path; 503 when the engine cannot generate. A handler never takes the server down.
// Requests are served concurrently (a thread pool of `threads`); each blocks on its own
// engine futures, so concurrent clients share the engine's continuous batch.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>

namespace anvil::engine {
class Engine;
}
namespace anvil::data {
class ChatTokenizer;
}

namespace anvil::server {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 30000;  // 0 = any free port (see HttpServer::port())
  int threads = 256;
  std::filesystem::path model_path;
  std::string served_model_name;
};

class HttpServer {
 public:
  HttpServer(std::shared_ptr<engine::Engine> engine, std::shared_ptr<const data::ChatTokenizer> tok,
             ServerOptions options);
  ~HttpServer();
  // Binds host:port; throws anvil::Error naming the address when it cannot.
  void bind();
  int port() const;
  // Serves until stop() (from another thread or a signal handler thread).
  void serve();
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace anvil::server

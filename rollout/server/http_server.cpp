#include "rollout/server/http_server.hpp"

#include "backends/common/error.hpp"
#include "backends/common/log.hpp"
#include "rollout/data/conversation.hpp"
#include "rollout/engine/engine.hpp"
#include "rollout/server/api.hpp"

#include <httplib.h>
#include <nlohmann/json.hpp>

#include <chrono>

namespace anvil::server {

using nlohmann::json;

struct HttpServer::Impl {
  std::shared_ptr<engine::Engine> engine;
  std::shared_ptr<const data::ChatTokenizer> tok;
  ServerOptions options;
  httplib::Server http;
  int port = -1;

  void routes();
  static json body_of(const httplib::Request& req, bool allow_empty);
  std::vector<engine::GenerateOutput> run(std::vector<engine::GenerateRequest> requests);
};

namespace {

void reply(httplib::Response& res, const json& body, int status = 200) {
  res.status = status;
  res.set_content(body.dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
}

void reply_error(httplib::Response& res, const std::string& message, int status) {
  reply(res, error_body(message, status), status);
}

// Runs a handler, turning failures into JSON errors.
template <typename F>
httplib::Server::Handler guarded(F f) {
  return [f](const httplib::Request& req, httplib::Response& res) {
    try {
      f(req, res);
    } catch (const BadRequest& e) {
      reply_error(res, e.what(), e.status());
    } catch (const Error& e) {
      reply_error(res, e.what(), 400);
    } catch (const std::exception& e) {
      log::get("server")->error("{} {}: {}", req.method, req.path, e.what());
      reply_error(res, std::string("internal error: ") + e.what(), 500);
    }
  };
}

}  // namespace

json HttpServer::Impl::body_of(const httplib::Request& req, bool allow_empty) {
  if (req.body.empty()) {
    if (allow_empty) return json::object();
    throw BadRequest("the request body is empty; expected a JSON object");
  }
  json j = json::parse(req.body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) throw BadRequest("the request body is not valid JSON");
  if (!j.is_object()) throw BadRequest("the request body must be a JSON object");
  return j;
}

std::vector<engine::GenerateOutput> HttpServer::Impl::run(
    std::vector<engine::GenerateRequest> requests) {
  std::vector<std::future<engine::GenerateOutput>> futures;
  std::vector<std::string> submitted;
  try {
    for (auto& r : requests) {
      std::string rid = r.rid;
      for (auto& f : engine->submit(std::move(r))) futures.push_back(std::move(f));
      submitted.push_back(rid);
    }
  } catch (const Error& e) {
    for (const auto& rid : submitted) engine->abort(rid);
    throw BadRequest(e.what());
  }
  std::vector<engine::GenerateOutput> out;
  for (auto& f : futures) out.push_back(f.get());
  return out;
}

void HttpServer::Impl::routes() {
  auto generate = [this](const httplib::Request& req, httplib::Response& res) {
    GenerateCall call = parse_generate(body_of(req, false), *tok);
    std::vector<int64_t> samples;
    for (const auto& r : call.requests) samples.push_back(r.params.n);
    auto outs = run(call.requests);
    json results = json::array();
    size_t k = 0;
    for (size_t i = 0; i < call.requests.size(); ++i) {
      for (int64_t s = 0; s < samples[i]; ++s, ++k) {
        results.push_back(generate_result(outs[k], call.return_logprob[i], *tok));
      }
    }
    reply(res, call.batch ? results : results[0]);
  };
  http.Post("/generate", guarded(generate));

  auto health = [](const httplib::Request&, httplib::Response& res) {
    res.status = 200;
    res.set_content("", "text/plain");
  };
  http.Get("/health", guarded(health));
  auto health_generate = [this](const httplib::Request&, httplib::Response& res) {
    engine::GenerateRequest r;
    r.input_ids = {0};
    r.params.temperature = 0;
    r.params.max_new_tokens = 1;
    r.rid = "health_generate";
    auto f = engine->submit(r);
    if (f[0].wait_for(std::chrono::seconds(20)) != std::future_status::ready) {
      engine->abort(r.rid);
      reply_error(res, "generation did not complete in 20 s (paused or released?)", 503);
      return;
    }
    auto out = f[0].get();
    if (out.finish == engine::FinishReason::kAbort) {
      reply_error(res, "generation aborted: " + out.abort_message, 503);
      return;
    }
    res.status = 200;
    res.set_content("", "text/plain");
  };
  http.Get("/health_generate", guarded(health_generate));

  auto flush = [this](const httplib::Request&, httplib::Response& res) {
    if (engine->flush_cache()) {
      res.status = 200;
      res.set_content("Cache flushed.\n", "text/plain");
    } else {
      reply_error(res, "cache not flushed: requests are running", 400);
    }
  };
  http.Get("/flush_cache", guarded(flush));
  http.Post("/flush_cache", guarded(flush));

  auto version = [this](const httplib::Request&, httplib::Response& res) {
    reply(res, {{"weight_version", engine->weight_version()}});
  };
  http.Get("/get_weight_version", guarded(version));
  http.Post("/get_weight_version", guarded(version));

  auto model_info = [this](const httplib::Request&, httplib::Response& res) {
    reply(res, {{"model_path", options.model_path.string()},
                {"tokenizer_path", options.model_path.string()},
                {"is_generation", true},
                {"weight_version", engine->weight_version()}});
  };
  http.Get("/get_model_info", guarded(model_info));
  http.Get("/v1/models", guarded([this](const httplib::Request&, httplib::Response& res) {
             reply(res, {{"object", "list"},
                         {"data",
                          {{{"id", options.served_model_name},
                            {"object", "model"},
                            {"owned_by", "anvil"},
                            {"max_model_len", engine->max_context()}}}}});
           }));

  http.Post("/update_weights_from_disk",
            guarded([this](const httplib::Request& req, httplib::Response& res) {
              json b = body_of(req, false);
              if (!b.contains("model_path") || !b["model_path"].is_string()) {
                throw BadRequest("model_path must be a string");
              }
              std::optional<std::string> v;
              if (b.contains("weight_version") && !b["weight_version"].is_null()) {
                if (!b["weight_version"].is_string()) {
                  throw BadRequest("weight_version must be a string");
                }
                v = b["weight_version"].get<std::string>();
              }
              try {
                engine->update_weights_from_disk(b["model_path"].get<std::string>(), v);
              } catch (const Error& e) {
                json body = error_body(e.what(), 400);
                body["success"] = false;
                body["message"] = e.what();
                reply(res, body, 400);
                return;
              }
              reply(res, {{"success", true},
                          {"message", "Succeeded to update model weights."},
                          {"num_paused_requests", 0}});
            }));

  http.Post("/pause_generation",
            guarded([this](const httplib::Request& req, httplib::Response& res) {
              json b = body_of(req, true);
              std::string mode = "abort";
              if (b.contains("mode") && !b["mode"].is_null()) {
                if (!b["mode"].is_string()) throw BadRequest("mode must be a string");
                mode = b["mode"].get<std::string>();
              }
              if (mode != "abort" && mode != "in_place" && mode != "retract") {
                throw BadRequest("mode must be abort, in_place or retract, got " + mode);
              }
              engine->pause();
              if (mode == "abort") engine->abort_all("aborted by pause_generation");
              reply(res, {{"message", "Generation paused."}});
            }));
  http.Post("/continue_generation",
            guarded([this](const httplib::Request&, httplib::Response& res) {
              engine->continue_generation();
              reply(res, {{"message", "Generation continued."}});
            }));
  http.Post(
      "/abort_request", guarded([this](const httplib::Request& req, httplib::Response& res) {
        json b = body_of(req, false);
        if (b.contains("abort_all") && b["abort_all"].is_boolean() && b["abort_all"].get<bool>()) {
          engine->abort_all("aborted by abort_request");
        } else if (b.contains("rid") && b["rid"].is_string()) {
          engine->abort(b["rid"].get<std::string>());
        } else {
          throw BadRequest("give rid (a string) or abort_all: true");
        }
        reply(res, {{"success", true}});
      }));

  auto memory = [this](bool release) {
    return [this, release](const httplib::Request& req, httplib::Response& res) {
      json b = body_of(req, true);
      bool weights = true, kv = true;
      if (b.contains("tags") && !b["tags"].is_null()) {
        if (!b["tags"].is_array()) throw BadRequest("tags must be a list of strings");
        weights = kv = false;
        for (const auto& t : b["tags"]) {
          if (!t.is_string()) throw BadRequest("tags must be a list of strings");
          const std::string tag = t.get<std::string>();
          if (tag == "weights") {
            weights = true;
          } else if (tag == "kv_cache") {
            kv = true;
          } else if (tag != "cuda_graph") {
            throw BadRequest("unknown memory tag '" + tag + "' (weights, kv_cache, cuda_graph)");
          }
        }
      }
      if (release) {
        engine->release_memory(weights, kv);
      } else {
        engine->resume_memory(weights, kv);
      }
      reply(res, {{"success", true}});
    };
  };
  http.Post("/release_memory_occupation", guarded(memory(true)));
  http.Post("/resume_memory_occupation", guarded(memory(false)));

  auto openai = [this](bool chat) {
    return [this, chat](const httplib::Request& req, httplib::Response& res) {
      json b = body_of(req, false);
      OpenAICall call = chat ? parse_chat_completions(b, *tok) : parse_completions(b, *tok);
      if (call.model.empty()) call.model = options.served_model_name;
      auto outs = run(call.requests);
      reply(res, completions_response(call, outs, *tok, chat));
    };
  };
  http.Post("/v1/completions", guarded(openai(false)));
  http.Post("/v1/chat/completions", guarded(openai(true)));

  http.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (res.body.empty()) {
      reply_error(res,
                  res.status == 404 ? "no route " + req.method + " " + req.path
                                    : "HTTP " + std::to_string(res.status),
                  res.status);
    }
  });
  http.set_exception_handler(
      [](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
        std::string what = "unknown error";
        try {
          std::rethrow_exception(ep);
        } catch (const std::exception& e) {
          what = e.what();
        } catch (...) {
        }
        reply_error(res, "internal error: " + what, 500);
      });
}

HttpServer::HttpServer(std::shared_ptr<engine::Engine> engine,
                       std::shared_ptr<const data::ChatTokenizer> tok, ServerOptions options)
    : impl_(std::make_unique<Impl>()) {
  impl_->engine = std::move(engine);
  impl_->tok = std::move(tok);
  impl_->options = std::move(options);
  if (impl_->options.served_model_name.empty()) {
    impl_->options.served_model_name = impl_->options.model_path.filename().string();
  }
  const int threads = std::max(1, impl_->options.threads);
  impl_->http.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  impl_->http.set_payload_max_length(256u << 20);
  impl_->routes();
}

HttpServer::~HttpServer() { stop(); }

void HttpServer::bind() {
  const auto& o = impl_->options;
  if (o.port == 0) {
    impl_->port = impl_->http.bind_to_any_port(o.host);
  } else if (impl_->http.bind_to_port(o.host, o.port)) {
    impl_->port = o.port;
  }
  if (impl_->port <= 0) fail("serve: cannot listen on {}:{}", o.host, o.port);
}

int HttpServer::port() const { return impl_->port; }

void HttpServer::serve() {
  log::get("server")->info("serving on http://{}:{}", impl_->options.host, impl_->port);
  impl_->http.listen_after_bind();
}

void HttpServer::stop() {
  if (impl_->http.is_running()) impl_->http.stop();
}

}  // namespace anvil::server

#include "rollout/server/http_server.hpp"

#include "backends/common/error.hpp"
#include "backends/common/log.hpp"
#include "rollout/data/conversation.hpp"
#include "rollout/engine/engine.hpp"
#include "rollout/server/api.hpp"

#include <httplib.h>
#include <nlohmann/json.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>

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
  // Submits `requests` with streaming callbacks and answers with an SSE stream; `format`
  // turns one event into the JSON of a `data:` line (null = nothing to send now).
  struct Stream;
  struct StreamEvent {
    size_t index = 0;  // sample, over all requests in order
    engine::GenerateOutput out;
    bool final = false;
  };
  using StreamFormat = std::function<json(const StreamEvent&)>;
  void stream(std::vector<engine::GenerateRequest> requests, StreamFormat format,
              std::function<std::vector<json>()> trailer, httplib::Response& res);
  void stream_openai(OpenAICall call, bool chat, httplib::Response& res);
};

// Events of one streamed call, from the engine thread to the HTTP thread.
struct HttpServer::Impl::Stream {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<StreamEvent> events;
  size_t open = 0;  // samples not finished
  std::vector<std::string> rids;
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

void HttpServer::Impl::stream(std::vector<engine::GenerateRequest> requests, StreamFormat format,
                              std::function<std::vector<json>()> trailer, httplib::Response& res) {
  auto st = std::make_shared<Stream>();
  size_t base = 0;
  for (auto& r : requests) {
    const size_t first = base;
    std::vector<int64_t> prompt = r.input_ids;
    const std::string rid = r.rid;
    r.on_token = [st, first, prompt, rid](const engine::TokenEvent& e) {
      StreamEvent ev;
      ev.index = first + static_cast<size_t>(e.sample_index);
      ev.out.rid = rid;
      ev.out.sample_index = e.sample_index;
      ev.out.input_ids = prompt;
      ev.out.output_ids.assign(e.output_ids.begin(), e.output_ids.end());
      ev.out.output_logprobs.assign(e.output_logprobs.begin(), e.output_logprobs.end());
      ev.out.output_top_logprobs.assign(e.output_top_logprobs.begin(), e.output_top_logprobs.end());
      {
        std::lock_guard lock(st->mu);
        st->events.push_back(std::move(ev));
      }
      st->cv.notify_all();
    };
    r.on_finish = [st, first](const engine::GenerateOutput& out) {
      {
        std::lock_guard lock(st->mu);
        st->events.push_back({first + static_cast<size_t>(out.sample_index), out, true});
      }
      st->cv.notify_all();
    };
    base += static_cast<size_t>(r.params.n);
  }
  st->open = base;
  // Submit everything before answering, so a bad request is still a plain 400.
  std::vector<std::future<engine::GenerateOutput>> futures;
  try {
    for (auto& r : requests) {
      st->rids.push_back(r.rid);
      for (auto& f : engine->submit(r)) futures.push_back(std::move(f));
    }
  } catch (const Error& e) {
    for (const auto& rid : st->rids) engine->abort(rid);
    throw BadRequest(e.what());
  }
  auto eng = engine;
  auto tokenizer = tok;
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider(
      "text/event-stream",
      [st, eng, tokenizer, format, trailer](size_t, httplib::DataSink& sink) {
        auto send = [&](const std::string& payload) {
          const std::string line = "data: " + payload + "\n\n";
          return sink.write(line.data(), line.size());
        };
        std::deque<StreamEvent> batch;
        bool all_done = false;
        {
          std::unique_lock lock(st->mu);
          st->cv.wait_for(lock, std::chrono::milliseconds(500),
                          [&] { return !st->events.empty(); });
          batch.swap(st->events);
        }
        for (StreamEvent& ev : batch) {
          if (!ev.final) {
            // Text so far, decoded here rather than on the engine's thread.
            std::vector<int32_t> ids(ev.out.output_ids.begin(), ev.out.output_ids.end());
            ev.out.text = tokenizer->tokenizer().decode(ids, true);
          } else {
            all_done = --st->open == 0;
          }
          json j = format(ev);
          if (!j.is_null() && !send(j.dump(-1, ' ', false, json::error_handler_t::replace))) {
            for (const auto& rid : st->rids) eng->abort(rid);  // the client went away
            return false;
          }
        }
        if (all_done) {
          for (const json& j : trailer()) send(j.dump());
          send("[DONE]");
          sink.done();
        } else if (batch.empty() && !sink.is_writable()) {
          for (const auto& rid : st->rids) eng->abort(rid);
          return false;
        }
        return true;
      },
      [st, eng](bool success) {
        if (!success) {
          for (const auto& rid : st->rids) eng->abort(rid);
        }
      });
}

// OpenAI streaming: each chunk carries the new text (delta) and the new tokens' logprobs
// of one choice; text ending in an incomplete UTF-8 character is held back until it
// completes. A stop string is trimmed only from what was not sent yet. If a weight update
// re-queues a sample (engine.hpp), its deltas start again from the beginning.
void HttpServer::Impl::stream_openai(OpenAICall call, bool chat, httplib::Response& res) {
  struct Sent {
    size_t chars = 0, tokens = 0;
    bool role = false;
  };
  size_t total = 0;
  for (const auto& r : call.requests) total += static_cast<size_t>(r.params.n);
  auto sent = std::make_shared<std::vector<Sent>>(total);
  auto usage = std::make_shared<std::pair<int64_t, int64_t>>(0, 0);  // prompt, completion
  static std::atomic<uint64_t> counter{0};
  const std::string id =
      fmt::format("{}{:x}{:08x}", chat ? "chatcmpl-" : "cmpl-",
                  std::chrono::steady_clock::now().time_since_epoch().count(), ++counter);
  const int64_t created = std::chrono::duration_cast<std::chrono::seconds>(
                              std::chrono::system_clock::now().time_since_epoch())
                              .count();
  auto tokenizer = tok;
  auto shared_call = std::make_shared<OpenAICall>(call);
  shared_call->requests.clear();
  auto chunk = [id, created, shared_call, chat](json choices) {
    return json{{"id", id},
                {"object", chat ? "chat.completion.chunk" : "text_completion"},
                {"created", created},
                {"model", shared_call->model},
                {"choices", std::move(choices)}};
  };
  auto format = [sent, usage, tokenizer, shared_call, chat, chunk](const StreamEvent& ev) -> json {
    Sent& s = (*sent)[ev.index];
    const engine::GenerateOutput& o = ev.out;
    if (o.output_ids.size() < s.tokens) s = Sent{0, 0, s.role};  // restarted
    const std::string& text = o.text;
    const bool incomplete =
        text.size() >= 3 && text.compare(text.size() - 3, 3, "\xEF\xBF\xBD") == 0;
    if (!ev.final && incomplete) return nullptr;
    std::string delta = text.size() > s.chars ? text.substr(s.chars) : std::string();
    json logprobs =
        openai_logprobs(*shared_call, o, *tokenizer, chat, s.tokens, o.output_ids.size(), s.chars);
    s.chars = std::max(s.chars, text.size());
    s.tokens = o.output_ids.size();
    json choice = {
        {"index", ev.index},
        {"logprobs", std::move(logprobs)},
        {"finish_reason", ev.final ? json(engine::finish_reason_name(o.finish)) : json(nullptr)}};
    if (chat) {
      json d = {{"content", delta}};
      if (!s.role) d["role"] = "assistant";
      s.role = true;
      choice["delta"] = std::move(d);
    } else {
      choice["text"] = delta;
    }
    if (ev.final) {
      usage->second += static_cast<int64_t>(o.output_ids.size());
      if (o.sample_index == 0) usage->first += static_cast<int64_t>(o.input_ids.size());
    }
    return chunk(json::array({std::move(choice)}));
  };
  const bool include_usage = call.include_usage;
  auto trailer = [usage, include_usage, chunk]() {
    std::vector<json> out;
    if (include_usage) {
      json j = chunk(json::array());
      j["usage"] = {{"prompt_tokens", usage->first},
                    {"completion_tokens", usage->second},
                    {"total_tokens", usage->first + usage->second}};
      out.push_back(std::move(j));
    }
    return out;
  };
  stream(std::move(call.requests), format, trailer, res);
}

void HttpServer::Impl::routes() {
  auto generate = [this](const httplib::Request& req, httplib::Response& res) {
    GenerateCall call = parse_generate(body_of(req, false), *tok);
    if (call.stream) {
      // Each event is the sample's result so far (cumulative text and ids, SGLang's
      // default); finish_reason is null until its last event. Batches carry "index".
      std::vector<LogprobOptions> per_sample;
      for (size_t i = 0; i < call.requests.size(); ++i) {
        for (int64_t s = 0; s < call.requests[i].params.n; ++s) {
          per_sample.push_back(call.logprobs[i]);
        }
      }
      const bool batch = call.batch;
      auto tokenizer = tok;
      stream(
          std::move(call.requests),
          [per_sample, batch, tokenizer](const StreamEvent& ev) {
            json j = generate_result(ev.out, per_sample[ev.index], *tokenizer, ev.final);
            if (batch) j["index"] = ev.index;
            return j;
          },
          [] { return std::vector<json>{}; }, res);
      return;
    }
    std::vector<int64_t> samples;
    for (const auto& r : call.requests) samples.push_back(r.params.n);
    auto outs = run(call.requests);
    json results = json::array();
    size_t k = 0;
    for (size_t i = 0; i < call.requests.size(); ++i) {
      for (int64_t s = 0; s < samples[i]; ++s, ++k) {
        results.push_back(generate_result(outs[k], call.logprobs[i], *tok));
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

  // Weights pushed in the request body (CPU-friendly stand-in for SGLang's CUDA IPC form).
  http.Post("/update_weights_from_tensor",
            guarded([this](const httplib::Request& req, httplib::Response& res) {
              json b = body_of(req, false);
              std::optional<std::string> v;
              if (b.contains("weight_version") && !b["weight_version"].is_null()) {
                if (!b["weight_version"].is_string()) {
                  throw BadRequest("weight_version must be a string");
                }
                v = b["weight_version"].get<std::string>();
              }
              if (b.contains("flush_cache") && !b["flush_cache"].is_null() &&
                  !b["flush_cache"].is_boolean()) {
                throw BadRequest("flush_cache must be a boolean");
              }
              auto named = parse_named_tensors(b);
              try {
                engine->update_weights(named, v);  // also flushes the prefix cache
              } catch (const Error& e) {
                json body = error_body(e.what(), 400);
                body["success"] = false;
                body["message"] = e.what();
                reply(res, body, 400);
                return;
              }
              reply(res, {{"success", true},
                          {"message", fmt::format("Updated {} tensors.", named.size())}});
            }));
  // SGLang's NCCL weight broadcast group: the request is checked, then refused with 501
  // because this server has no NCCL group support (the rollout engine takes weights by
  // name, from disk or through anvil's own weight-sync role).
  auto nccl = [](const char* endpoint, std::vector<std::pair<const char*, const char*>> fields) {
    return [endpoint, fields](const httplib::Request& req, httplib::Response& res) {
      json b = body_of(req, false);
      for (const auto& [key, type] : fields) {
        if (!b.contains(key)) throw BadRequest(std::string(key) + " is required");
        const json& v = b[key];
        const std::string t = type;
        const bool ok = (t == "string" && v.is_string()) ||
                        (t == "integer" && v.is_number_integer()) || (t == "list" && v.is_array());
        if (!ok) throw BadRequest(std::string(key) + " must be a " + t);
      }
      json body = error_body(
          std::string(endpoint) +
              " is not supported: anvil serve has no NCCL weight-update group (this build "
#if defined(ANVIL_WITH_CUDA)
              "has CUDA, but the SGLang NCCL group protocol is not implemented"
#else
              "has no CUDA/NCCL"
#endif
              "); use /update_weights_from_disk or /update_weights_from_tensor",
          501);
      body["success"] = false;
      body["message"] = body["error"]["message"];
      reply(res, body, 501);
    };
  };
  http.Post("/init_weights_update_group",
            guarded(nccl("init_weights_update_group", {{"master_address", "string"},
                                                       {"master_port", "integer"},
                                                       {"rank_offset", "integer"},
                                                       {"world_size", "integer"},
                                                       {"group_name", "string"}})));
  http.Post("/update_weights_from_distributed",
            guarded(nccl("update_weights_from_distributed",
                         {{"names", "list"}, {"dtypes", "list"}, {"shapes", "list"}})));
  http.Post("/destroy_weights_update_group",
            guarded(nccl("destroy_weights_update_group", {{"group_name", "string"}})));

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
      if (call.stream) {
        stream_openai(std::move(call), chat, res);
        return;
      }
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

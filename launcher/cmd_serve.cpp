// anvil serve --model DIR [--host 127.0.0.1 --port 30000 ...]
//
// The rollout engine behind SGLang's HTTP API and the OpenAI-compatible endpoints
// (rollout/server/http_server.hpp). Flags keep SGLang's names where the concept is the
// same (--mem-fraction-static, --page-size, --chunked-prefill-size,
// --max-running-requests, --disable-radix-cache, --random-seed). Stops on SIGINT/SIGTERM.
#include "backends/common/error.hpp"
#include "backends/models/decoder.hpp"
#include "launcher/cli_util.hpp"
#include "launcher/commands.hpp"
#include "rollout/data/conversation.hpp"
#include "rollout/engine/engine.hpp"
#include "rollout/server/http_server.hpp"

#include <CLI/CLI.hpp>

#include <csignal>
#include <thread>

namespace anvil::launcher {
namespace {

struct ServeArgs {
  std::string model, dtype = "float32", device = "cpu";
  server::ServerOptions server;
  engine::EngineOptions engine;
  int threads = 0;
  bool disable_radix_cache = false;
};

void run_serve(ServeArgs a) {
  // SIGINT/SIGTERM are blocked before any thread starts (threads inherit the mask) and
  // waited for on a thread of their own, which stops the server.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  set_threads(a.threads);
  std::filesystem::path dir(a.model);
  std::shared_ptr<models::DecoderModel> model = models::DecoderModel::from_pretrained(
      dir, models::parse_dtype_name(a.dtype), parse_device(a.device));
  auto chat = std::make_shared<data::ChatTokenizer>(data::ChatTokenizer::from_model_dir(dir));
  std::shared_ptr<const data::Tokenizer> tok(chat, &chat->tokenizer());
  a.engine.eos_token_ids = engine::model_eos_token_ids(dir, model->config());
  a.engine.prefix_cache = !a.disable_radix_cache;
  a.engine.background = true;
  auto eng = std::make_shared<engine::Engine>(model, a.engine, tok);
  a.server.model_path = dir;
  server::HttpServer http(eng, chat, a.server);
  http.bind();

  std::thread waiter([&] {
    int sig = 0;
    sigwait(&set, &sig);
    http.stop();
  });
  std::printf("anvil serve: listening on http://%s:%d\n", a.server.host.c_str(), http.port());
  std::fflush(stdout);
  http.serve();
  if (waiter.joinable()) {
    pthread_kill(waiter.native_handle(), SIGTERM);
    waiter.join();
  }
  eng->abort_all("server shutting down");
}

}  // namespace

void register_serve(CLI::App& app, int& exit_code) {
  auto* cmd = app.add_subcommand("serve", "Serve a model over SGLang- and OpenAI-compatible HTTP");
  auto a = std::make_shared<ServeArgs>();
  cmd->add_option("--model,--model-path", a->model, "HuggingFace model directory")->required();
  cmd->add_option("--host", a->server.host)->capture_default_str();
  cmd->add_option("--port", a->server.port, "0 = any free port")->capture_default_str();
  cmd->add_option("--dtype", a->dtype, "float32 | bfloat16 | float16")->capture_default_str();
  cmd->add_option("--device", a->device, "cpu | cuda | cuda:N")->capture_default_str();
  cmd->add_option("--threads", a->threads, "LibTorch threads (0 = default)")->capture_default_str();
  cmd->add_option("--http-threads", a->server.threads, "concurrent HTTP requests")
      ->capture_default_str();
  cmd->add_option("--served-model-name", a->server.served_model_name);
  cmd->add_option("--kv-cache-tokens", a->engine.kv_cache_tokens,
                  "KV cache capacity in tokens (0 = --mem-fraction-static of memory)")
      ->capture_default_str();
  cmd->add_option("--mem-fraction-static,--mem-fraction", a->engine.mem_fraction,
                  "share of host memory for the KV cache when --kv-cache-tokens is 0")
      ->capture_default_str();
  cmd->add_option("--page-size,--block-size", a->engine.block_size, "tokens per KV block")
      ->capture_default_str();
  cmd->add_option("--chunked-prefill-size,--max-batch-tokens", a->engine.max_batch_tokens,
                  "tokens per engine step (decode + prefill chunks)")
      ->capture_default_str();
  cmd->add_option("--max-running-requests", a->engine.max_running)->capture_default_str();
  cmd->add_flag("--disable-radix-cache", a->disable_radix_cache, "no prefix cache");
  cmd->add_option("--weight-version", a->engine.weight_version)->capture_default_str();
  cmd->add_option("--random-seed,--seed", a->engine.seed)->capture_default_str();
  cmd->callback([a, &exit_code] {
    run_serve(*a);
    exit_code = 0;
  });
}

}  // namespace anvil::launcher

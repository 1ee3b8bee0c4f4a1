// anvil generate --model DIR --prompt TEXT [--max-new-tokens N --temperature T --seed S]
//
// A simple single-prompt generation loop on the shared decoder with a KV cache; the
// rollout-engine issue replaces its insides with the continuous-batching engine. Prints
// the completion, or with --json {"prompt_ids", "output_ids", "logprobs", "text",
// "finish_reason"}; log-probs are under logits / temperature (greedy: temperature 1).
#include "backends/common/error.hpp"
#include "backends/common/json_util.hpp"
#include "backends/models/decoder.hpp"
#include "launcher/cli_util.hpp"
#include "launcher/commands.hpp"
#include "rollout/data/tokenizer.hpp"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <CLI/CLI.hpp>

#include <cstdio>
#include <set>

namespace anvil::launcher {
namespace {

struct GenerateArgs {
  std::string model, prompt, dtype = "float32", device = "cpu";
  int64_t max_new_tokens = 32;
  double temperature = 1.0, top_p = 1.0;
  int64_t top_k = 0;
  uint64_t seed = 0;
  int threads = 0;
  bool json = false, ignore_eos = false;
};

std::set<int64_t> stop_ids(const std::filesystem::path& dir, const models::ModelConfig& config) {
  std::set<int64_t> ids(config.eos_token_ids.begin(), config.eos_token_ids.end());
  std::filesystem::path gen = dir / "generation_config.json";
  if (std::filesystem::exists(gen)) {
    auto j = read_json_file(gen);
    if (j.contains("eos_token_id")) {
      const auto& e = j["eos_token_id"];
      if (e.is_number_integer()) ids.insert(e.get<int64_t>());
      if (e.is_array()) {
        for (const auto& x : e) {
          if (x.is_number_integer()) ids.insert(x.get<int64_t>());
        }
      }
    }
  }
  return ids;
}

void run_generate(const GenerateArgs& a) {
  if (a.temperature < 0) fail("--temperature must be >= 0, got {}", a.temperature);
  if (!(a.top_p > 0 && a.top_p <= 1)) fail("--top-p must be in (0, 1], got {}", a.top_p);
  if (a.top_k < 0) fail("--top-k must be >= 0, got {}", a.top_k);
  if (a.max_new_tokens < 0) fail("--max-new-tokens must be >= 0");
  set_threads(a.threads);
  at::Device device = parse_device(a.device);
  std::filesystem::path dir(a.model);
  auto model =
      models::DecoderModel::from_pretrained(dir, models::parse_dtype_name(a.dtype), device);
  auto tokenizer = data::Tokenizer::from_file(dir / "tokenizer.json");
  std::vector<int32_t> prompt32 = tokenizer.encode(a.prompt);
  if (prompt32.empty()) fail("--prompt encodes to no tokens");
  std::vector<int64_t> prompt(prompt32.begin(), prompt32.end());
  if (static_cast<int64_t>(prompt.size()) + a.max_new_tokens >
      model->config().max_position_embeddings) {
    fail("prompt ({} tokens) + --max-new-tokens exceeds max_position_embeddings {}", prompt.size(),
         model->config().max_position_embeddings);
  }
  std::set<int64_t> stops = stop_ids(dir, model->config());
  at::Generator gen = at::detail::createCPUGenerator(a.seed);
  at::NoGradGuard no_grad;
  models::KVCache cache(model->config().num_hidden_layers);

  std::vector<int64_t> output;
  std::vector<double> logprobs;
  std::string finish = "length";
  std::vector<int64_t> step = prompt;
  int64_t position = 0;
  for (int64_t i = 0; i < a.max_new_tokens; ++i) {
    models::PackedBatch batch;
    batch.tokens = at::tensor(step, at::kLong).to(device);
    batch.positions =
        at::arange(position, position + static_cast<int64_t>(step.size()), at::kLong).to(device);
    batch.seq_lens = {static_cast<int64_t>(step.size())};
    batch.cache_slots = {0};
    at::Tensor hidden = model->forward_hidden(batch, &cache);
    position += static_cast<int64_t>(step.size());
    at::Tensor logits =
        model->logits(hidden.narrow(0, hidden.size(0) - 1, 1)).squeeze(0).to(at::kCPU, at::kFloat);
    int64_t next;
    at::Tensor logp;
    if (a.temperature == 0) {
      next = logits.argmax().item<int64_t>();
      logp = at::log_softmax(logits, -1);
    } else {
      logp = at::log_softmax(logits / a.temperature, -1);
      at::Tensor probs = logp.exp();
      if (a.top_k > 0 && a.top_k < probs.size(0)) {
        auto kth = std::get<0>(probs.topk(a.top_k)).min();
        probs = at::where(probs < kth, at::zeros_like(probs), probs);
      }
      if (a.top_p < 1.0) {
        auto [sorted, order] = probs.sort(-1, /*descending=*/true);
        at::Tensor before = sorted.cumsum(-1) - sorted;  // mass strictly before each token
        sorted = at::where(before >= a.top_p * sorted.sum(), at::zeros_like(sorted), sorted);
        probs = at::zeros_like(probs).scatter(0, order, sorted);
      }
      next = at::multinomial(probs, 1, false, gen).item<int64_t>();
    }
    output.push_back(next);
    logprobs.push_back(logp[next].item<double>());
    if (!a.ignore_eos && stops.count(next) != 0) {
      finish = "stop";
      break;
    }
    step = {next};
  }
  std::vector<int32_t> out32(output.begin(), output.end());
  std::string text = tokenizer.decode(out32, /*skip_special_tokens=*/true);
  if (a.json) {
    nlohmann::json j = {{"prompt_ids", prompt},
                        {"output_ids", output},
                        {"logprobs", logprobs},
                        {"text", text},
                        {"finish_reason", finish}};
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("%s\n", text.c_str());
  }
}

}  // namespace

void register_generate(CLI::App& app, int& exit_code) {
  auto* cmd = app.add_subcommand("generate", "Generate a completion for one prompt");
  auto a = std::make_shared<GenerateArgs>();
  cmd->add_option("--model", a->model, "HuggingFace model directory")->required();
  cmd->add_option("--prompt", a->prompt, "Prompt text")->required();
  cmd->add_option("--max-new-tokens", a->max_new_tokens)->capture_default_str();
  cmd->add_option("--temperature", a->temperature, "0 = greedy")->capture_default_str();
  cmd->add_option("--top-p", a->top_p)->capture_default_str();
  cmd->add_option("--top-k", a->top_k, "0 = off")->capture_default_str();
  cmd->add_option("--seed", a->seed)->capture_default_str();
  cmd->add_option("--dtype", a->dtype, "float32 | bfloat16 | float16")->capture_default_str();
  cmd->add_option("--device", a->device, "cpu | cuda | cuda:N")->capture_default_str();
  cmd->add_option("--threads", a->threads, "LibTorch threads (0 = default)")->capture_default_str();
  cmd->add_flag("--json", a->json, "Print ids, log-probs and finish reason as JSON");
  cmd->add_flag("--ignore-eos", a->ignore_eos, "Do not stop at end-of-sequence tokens");
  cmd->callback([a, &exit_code] {
    run_generate(*a);
    exit_code = 0;
  });
}

}  // namespace anvil::launcher

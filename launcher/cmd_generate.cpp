// anvil generate --model DIR --prompt TEXT [--max-new-tokens N --temperature T --seed S]
//
// One prompt through the rollout engine (rollout/engine): paged KV cache, the engine's
// sampler, log-probs under logits / temperature (greedy: temperature 1). Prints the
// completion, or with --json {"prompt_ids", "output_ids", "logprobs", "text",
// "finish_reason", "weight_version"}; with --n > 1, --json prints one line per sample.
#include "backends/common/error.hpp"
#include "backends/models/decoder.hpp"
#include "launcher/cli_util.hpp"
#include "launcher/commands.hpp"
#include "rollout/data/tokenizer.hpp"
#include "rollout/engine/engine.hpp"

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <cstdio>

namespace anvil::launcher {
namespace {

struct GenerateArgs {
  std::string model, prompt, dtype = "float32", device = "cpu";
  engine::SamplingParams params;
  uint64_t seed = 0;
  int threads = 0;
  bool json = false;
};

void run_generate(const GenerateArgs& a) {
  set_threads(a.threads);
  at::Device device = parse_device(a.device);
  std::filesystem::path dir(a.model);
  std::shared_ptr<models::DecoderModel> model =
      models::DecoderModel::from_pretrained(dir, models::parse_dtype_name(a.dtype), device);
  auto tokenizer =
      std::make_shared<const data::Tokenizer>(data::Tokenizer::from_file(dir / "tokenizer.json"));
  std::vector<int32_t> prompt32 = tokenizer->encode(a.prompt);
  if (prompt32.empty()) fail("--prompt encodes to no tokens");

  engine::EngineOptions options;
  options.background = false;
  options.eos_token_ids = engine::model_eos_token_ids(dir, model->config());
  // Room for this one request (plus a block per extra sample).
  options.kv_cache_tokens =
      static_cast<int64_t>(prompt32.size()) + a.params.n * (a.params.max_new_tokens + 32);
  engine::Engine eng(model, options, tokenizer);

  engine::GenerateRequest req;
  req.input_ids.assign(prompt32.begin(), prompt32.end());
  req.params = a.params;
  req.params.seed = a.seed;
  if (static_cast<int64_t>(req.input_ids.size()) + a.params.max_new_tokens >
      model->config().max_position_embeddings) {
    fail("prompt ({} tokens) + --max-new-tokens exceeds max_position_embeddings {}",
         req.input_ids.size(), model->config().max_position_embeddings);
  }
  for (const engine::GenerateOutput& out : eng.generate({req})) {
    if (a.json) {
      nlohmann::json j = {{"prompt_ids", out.input_ids},
                          {"output_ids", out.output_ids},
                          {"logprobs", out.output_logprobs},
                          {"text", out.text},
                          {"finish_reason", engine::finish_reason_name(out.finish)},
                          {"weight_version", out.weight_version}};
      std::printf("%s\n", j.dump().c_str());
    } else {
      std::printf("%s\n", out.text.c_str());
    }
  }
}

}  // namespace

void register_generate(CLI::App& app, int& exit_code) {
  auto* cmd = app.add_subcommand("generate", "Generate completions for one prompt");
  auto a = std::make_shared<GenerateArgs>();
  a->params.max_new_tokens = 32;
  cmd->add_option("--model", a->model, "HuggingFace model directory")->required();
  cmd->add_option("--prompt", a->prompt, "Prompt text")->required();
  cmd->add_option("--max-new-tokens", a->params.max_new_tokens)->capture_default_str();
  cmd->add_option("--temperature", a->params.temperature, "0 = greedy")->capture_default_str();
  cmd->add_option("--top-p", a->params.top_p)->capture_default_str();
  cmd->add_option("--top-k", a->params.top_k, "<= 0 = off")->capture_default_str();
  cmd->add_option("--min-p", a->params.min_p)->capture_default_str();
  cmd->add_option("--n", a->params.n, "Samples of the prompt (prefilled once)")
      ->capture_default_str();
  cmd->add_option("--stop", a->params.stop, "Stop string (repeatable)");
  cmd->add_option("--seed", a->seed, "Sample i uses seed + i")->capture_default_str();
  cmd->add_option("--dtype", a->dtype, "float32 | bfloat16 | float16")->capture_default_str();
  cmd->add_option("--device", a->device, "cpu | cuda | cuda:N")->capture_default_str();
  cmd->add_option("--threads", a->threads, "LibTorch threads (0 = default)")->capture_default_str();
  cmd->add_flag("--json", a->json, "Print ids, log-probs and finish reason as JSON");
  cmd->add_flag("--ignore-eos", a->params.ignore_eos, "Do not stop at end-of-sequence tokens");
  cmd->callback([a, &exit_code] {
    a->params.validate();
    run_generate(*a);
    exit_code = 0;
  });
}

}  // namespace anvil::launcher

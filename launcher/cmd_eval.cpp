// anvil eval --model DIR --prompt-data eval.jsonl --rm-type T [--label-key label]
//            [--n-samples-per-eval-prompt K] [--eval-temperature T] [--eval-max-response-len N]
//            [--output result.json] [--dump-samples samples.jsonl] [data flags]
//
// Held-out evaluation (rollout/eval): K samples per prompt through the rollout engine,
// rewards by --rm-type, printed as one "eval: accuracy ... pass@k ..." line and optionally
// written as JSON. --label-key defaults to "label" here (an eval set without labels cannot
// be scored by a rule-based reward).
#include "backends/common/error.hpp"
#include "backends/common/json_util.hpp"
#include "backends/models/decoder.hpp"
#include "launcher/cli_util.hpp"
#include "launcher/commands.hpp"
#include "launcher/data_flags.hpp"
#include "rollout/data/conversation.hpp"
#include "rollout/engine/engine.hpp"
#include "rollout/eval/evaluate.hpp"

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <fstream>

namespace anvil::launcher {
namespace {

struct EvalArgs {
  std::string model, output, dump_samples, dtype = "float32", device = "cpu";
  data::DataOptions data;
  reward::RewardOptions reward;
  eval::EvalOptions eval;
  int threads = 0;
  int64_t kv_cache_tokens = 0;
};

void run_eval(EvalArgs a) {
  set_threads(a.threads);
  if (a.data.keys.label.empty()) a.data.keys.label = "label";
  a.eval.keep_samples = !a.dump_samples.empty();
  a.eval.validate();
  a.reward.validate();
  const std::filesystem::path dir(a.model);
  std::shared_ptr<models::DecoderModel> model = models::DecoderModel::from_pretrained(
      dir, models::parse_dtype_name(a.dtype), parse_device(a.device));
  const data::ChatTokenizer chat = data::ChatTokenizer::from_model_dir(dir);
  std::vector<eval::EvalPrompt> prompts = eval::load_eval_prompts(a.data, chat);

  engine::EngineOptions options;
  options.background = false;
  options.eos_token_ids = engine::model_eos_token_ids(dir, model->config());
  if (a.kv_cache_tokens > 0) {
    options.kv_cache_tokens = a.kv_cache_tokens;
  } else {
    // Room for every sample at once (the engine preempts when it runs out anyway).
    int64_t need = 0;
    for (const auto& p : prompts) {
      need += static_cast<int64_t>(p.input_ids.size()) +
              a.eval.n_samples * (a.eval.max_response_len + options.block_size);
    }
    options.kv_cache_tokens = std::min<int64_t>(need, 1 << 20);
  }
  engine::Engine eng(
      model, options,
      std::make_shared<const data::Tokenizer>(data::Tokenizer::from_file(dir / "tokenizer.json")));
  const eval::EvalResult r = eval::evaluate(eng, prompts, a.reward, a.eval);
  std::printf("eval: %s\n", r.summary().c_str());
  std::fflush(stdout);
  if (!a.output.empty()) {
    nlohmann::json j = r.to_json();
    j["model"] = a.model;
    j["prompt_data"] = a.data.prompt_data;
    j["rm_type"] = a.reward.rm_type;
    j["n_samples_per_eval_prompt"] = a.eval.n_samples;
    j["eval_temperature"] = a.eval.temperature;
    j["eval_max_response_len"] = a.eval.max_response_len;
    write_json_file_atomic(a.output, j);
  }
  if (!a.dump_samples.empty()) {
    std::string tmp = a.dump_samples + ".tmp";
    {
      std::ofstream f(tmp, std::ios::trunc);
      if (!f) fail("--dump-samples {}: cannot open for writing", a.dump_samples);
      for (const eval::EvalSample& s : r.samples_detail) {
        const auto& p = prompts[static_cast<size_t>(s.prompt_index)];
        nlohmann::json j = {{"where", p.where},         {"sample", s.sample_index},
                            {"label", p.label},         {"response", s.response},
                            {"reward", s.reward},       {"correct", s.correct},
                            {"truncated", s.truncated}, {"response_tokens", s.response_tokens}};
        f << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << '\n';
      }
      if (!f.flush()) fail("--dump-samples {}: write failed", a.dump_samples);
    }
    std::filesystem::rename(tmp, a.dump_samples);
  }
}

}  // namespace

void register_eval(CLI::App& app, int& exit_code) {
  auto* cmd = app.add_subcommand("eval", "Held-out accuracy / pass@k of a model on a prompt set");
  auto a = std::make_shared<EvalArgs>();
  cmd->add_option("--model", a->model, "HuggingFace model directory")->required();
  cmd->add_option("--rm-type", a->reward.rm_type, "Reward (rollout/reward): math, exact_match, ...")
      ->required();
  cmd->add_option("--rm-url", a->reward.rm_url, "Remote reward model URL (--rm-type remote_rm)");
  cmd->add_option("--reward-key", a->reward.reward_key, "Field of a dict reward");
  cmd->add_option("--n-samples-per-eval-prompt", a->eval.n_samples, "Samples per eval prompt (n)")
      ->capture_default_str();
  cmd->add_option("--eval-temperature", a->eval.temperature, "0 = greedy")->capture_default_str();
  cmd->add_option("--eval-top-p", a->eval.top_p)->capture_default_str();
  cmd->add_option("--eval-top-k", a->eval.top_k, "<= 0 = off")->capture_default_str();
  cmd->add_option("--eval-max-response-len", a->eval.max_response_len, "Response token limit")
      ->capture_default_str();
  cmd->add_option("--eval-seed", a->eval.seed, "Sample i of prompt j uses seed + 1000003 j + i")
      ->capture_default_str();
  cmd->add_option("--eval-pass-k", a->eval.pass_k, "k values of pass@k (default 1, 2, 4, ..., n)");
  cmd->add_option("--eval-correct-threshold", a->eval.correct_threshold,
                  "A sample with reward >= this is correct")
      ->capture_default_str();
  cmd->add_option("--output", a->output, "Write the result as JSON");
  cmd->add_option("--dump-samples", a->dump_samples, "Write every sample as JSONL");
  cmd->add_option("--dtype", a->dtype, "float32 | bfloat16 | float16")->capture_default_str();
  cmd->add_option("--device", a->device, "cpu | cuda | cuda:N")->capture_default_str();
  cmd->add_option("--threads", a->threads, "LibTorch threads (0 = default)")->capture_default_str();
  cmd->add_option("--kv-cache-tokens", a->kv_cache_tokens, "KV cache size (0 = fit every sample)")
      ->capture_default_str();
  add_data_flags(*cmd, a->data);
  cmd->callback([a, &exit_code] {
    run_eval(*a);
    exit_code = 0;
  });
}

}  // namespace anvil::launcher

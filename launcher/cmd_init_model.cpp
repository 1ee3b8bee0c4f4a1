// anvil init-model --arch {llama,qwen2,qwen3} --preset {tiny,...} --out DIR [--seed N]
#include "backends/common/error.hpp"
#include "backends/common/json_util.hpp"
#include "launcher/commands.hpp"
#include "launcher/init_model.hpp"

#include <CLI/CLI.hpp>

namespace anvil::launcher {

void register_init_model(CLI::App& app, int& exit_code) {
  auto* cmd = app.add_subcommand(
      "init-model", "Write a randomly initialised model as a complete HuggingFace directory");
  struct Args {
    std::string arch = "qwen3";
    std::string preset = "tiny";
    std::string out;
    uint64_t seed = 0;
    std::string dtype = "float32";
    std::string overrides;
    bool force = false;
    double max_shard_mb = 5 * 1024.0;
  };
  auto args = std::make_shared<Args>();
  cmd->add_option("--arch", args->arch, "llama | qwen2 | qwen3")->capture_default_str();
  cmd->add_option("--preset", args->preset,
                  "tiny | small | qwen3-0.6b | qwen3-1.7b (shapes; vocab from the tokenizer "
                  "for tiny/small)")
      ->capture_default_str();
  cmd->add_option("--out", args->out, "Output directory")->required();
  cmd->add_option("--seed", args->seed, "Random seed")->capture_default_str();
  cmd->add_option("--dtype", args->dtype, "Stored dtype: float32 | bfloat16 | float16")
      ->capture_default_str();
  cmd->add_option("--override", args->overrides,
                  "JSON object merged into config.json, e.g. '{\"attention_bias\": true}'");
  cmd->add_option("--max-shard-mb", args->max_shard_mb, "Shard safetensors above this size")
      ->capture_default_str();
  cmd->add_flag("--force", args->force, "Replace an existing output directory");
  cmd->callback([args, &exit_code] {
    models::InitModelOptions o;
    o.arch = models::arch_from_name(args->arch);
    o.preset = args->preset;
    o.out = args->out;
    o.seed = args->seed;
    o.dtype = args->dtype;
    o.force = args->force;
    if (!(args->max_shard_mb > 0)) fail("--max-shard-mb must be positive");
    o.max_shard_bytes = static_cast<uint64_t>(args->max_shard_mb * 1024 * 1024);
    if (!args->overrides.empty()) o.overrides = parse_json(args->overrides, "--override");
    models::init_model(o);
    exit_code = 0;
  });
}

}  // namespace anvil::launcher

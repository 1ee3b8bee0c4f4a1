#include "launcher/data_flags.hpp"

#include <CLI/CLI.hpp>

namespace anvil::launcher {

void add_data_flags(CLI::App& cmd, data::DataOptions& o) {
  cmd.add_option("--prompt-data", o.prompt_data,
                 "Dataset(s): PATH, or NAME PATH pairs (JSONL or Parquet)")
      ->expected(1, -1);
  cmd.add_option("--input-key", o.keys.input, "Row key of the prompt: a string or a messages list")
      ->capture_default_str();
  cmd.add_option("--label-key", o.keys.label, "Row key of the label (reward) or SFT response");
  cmd.add_option("--metadata-key", o.keys.metadata, "Row key of a metadata object");
  cmd.add_option("--tool-key", o.keys.tool, "Row key of the tool schemas (a list, or JSON text)");
  cmd.add_flag("--rollout-shuffle", o.shuffle, "Shuffle the samples of every epoch");
  cmd.add_option("--rollout-seed", o.seed, "Seed of the shuffle (epoch e uses seed + e)")
      ->capture_default_str();
  cmd.add_option("--num-epoch", o.num_epoch, "Passes over the data")->capture_default_str();
  cmd.add_option("--max-length", o.max_length,
                 "Longest sample in tokens; longer ones are bad rows (0 = no limit)")
      ->capture_default_str();
  cmd.add_flag("--strict-data", o.strict, "Fail on the first bad row instead of skipping it");
  cmd.add_flag("--apply-chat-template", o.apply_chat_template,
               "Render prompts with the model's chat template (prompt mode)");
  cmd.add_option("--prefetch-depth", o.prefetch,
                 "Samples tokenised ahead by the prefetch thread (0 = none)")
      ->capture_default_str();
}

}  // namespace anvil::launcher

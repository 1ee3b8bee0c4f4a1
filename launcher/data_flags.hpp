// The data-pipeline flags (slime's names), registered on any subcommand that reads datasets.
// Defaults and help live here and in data::DataOptions, nowhere else.
#pragma once

#include "rollout/data/prompt_source.hpp"

namespace CLI {
class App;
}

namespace anvil::launcher {

// Adds --prompt-data, --input-key, --label-key, --metadata-key, --tool-key,
// --rollout-shuffle, --rollout-seed, --num-epoch, --max-length, --strict-data,
// --apply-chat-template and --prefetch-depth to `cmd`, writing into `options`.
void add_data_flags(CLI::App& cmd, data::DataOptions& options);

}  // namespace anvil::launcher

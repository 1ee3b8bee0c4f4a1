// The flags of an RL job run by `anvil head` and its role processes (slime's names): the
// model, data and training flags, rollout sampling and the cluster topology. The head
// takes them from --config JOB.yaml and its command line (the command line wins) and
// forwards the same list to every `anvil actor`, which parses it again.
#pragma once

#include "actors/job_options.hpp"

#include <string>
#include <vector>

namespace CLI {
class App;
}

namespace anvil::launcher {

// Registers every job flag on `cmd`, writing into `job`.
void add_job_flags(CLI::App& cmd, actors::JobOptions& job);

// Parses `args` (flags only) as job flags into `job` and settles the dependent training
// flags. Throws anvil::Error naming `where` ("the command line", the YAML file) and the
// flag for anything unknown or invalid.
void parse_job_args(const std::vector<std::string>& args, actors::JobOptions& job,
                    const std::string& where);

// The flags a YAML job file stands for: each key (`lr`, `--lr` or `use_kl_loss`) becomes
// `--key`, with its value; `true` is a bare flag, `false` is dropped, a list repeats its
// values. Keys in `skip` (flags already on the command line) are left out. Throws
// anvil::Error naming the file and key for anything that is not a map of scalars/lists.
std::vector<std::string> yaml_job_args(const std::string& path,
                                       const std::vector<std::string>& skip);

// The job token: from `token_file` when it exists, else ANVIL_JOB_TOKEN, else (when
// `create` is set) a fresh random one, written to `token_file` (mode 0600) when given.
std::string load_job_token(const std::string& token_file, bool create);

}  // namespace anvil::launcher

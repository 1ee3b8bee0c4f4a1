// The flags of an RL job run by `anvil head` and its role processes (slime's names): the
// model, data and training flags, rollout sampling and the cluster topology. The head
// takes them from --config JOB.yaml and its command line (the command line wins) and
// forwards the same list to every `anvil actor`, which parses it again.
#pragma once

#include "actors/job_options.hpp"
#include "runtime/metrics/run_config.hpp"

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
// `--key`, with its value; `true`/`false` become `--key=true`/`--key=false`, a list repeats
// its values. Keys in `skip` (flags already on the command line) are left out. Throws
// anvil::Error naming the file and key for a key that is no job flag, two keys naming the
// same flag (`lr` and `--lr`), or anything that is not a map of scalars/lists.
std::vector<std::string> yaml_job_args(const std::string& path,
                                       const std::vector<std::string>& skip);

// Every job flag's final value after `args` (YAML flags then the command line, as given to
// parse_job_args): flags given take their last value as given, the rest their settled
// value (the default, or the one derived from other flags, e.g. --eps-clip-high from
// --eps-clip); options never given that have no default (--model, --rm-url) are left out.
// Keys are the flags' long names without dashes; `--config` with the saved file repeats
// the job.
// Throws anvil::Error naming `where` when `args` do not parse.
metrics::ResolvedConfig resolved_job_config(const std::vector<std::string>& args,
                                            const std::string& where);

// Writes resolved_job_config(args) atomically as config.yaml beside the run: in --save when
// given, else beside --metrics-jsonl, else in --tensorboard-dir. Returns the path written,
// or "" when the job names none of these. Throws anvil::Error naming the file.
std::string save_resolved_job_config(const std::vector<std::string>& args,
                                     const actors::JobOptions& job, const std::string& where);

// The job token: from `token_file` when it exists, else ANVIL_JOB_TOKEN, else (when
// `create` is set) a fresh random one, written to `token_file` (mode 0600) when given.
std::string load_job_token(const std::string& token_file, bool create);

}  // namespace anvil::launcher

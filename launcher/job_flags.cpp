#include "launcher/job_flags.hpp"

#include "backends/common/error.hpp"
#include "launcher/data_flags.hpp"
#include "launcher/train_flags.hpp"

#include <CLI/CLI.hpp>
#include <fcntl.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>

namespace anvil::launcher {

void add_job_flags(CLI::App& cmd, actors::JobOptions& job) {
  cmd.add_option("--model", job.model, "HuggingFace model directory (policy, ref, engines)");
  cmd.add_option("--dtype", job.dtype, "float32 | bfloat16 | float16")->capture_default_str();
  cmd.add_option("--device", job.device,
                 "cpu | cuda | cuda:N for every role (a role's CUDA devices are those its worker "
                 "gives it)")
      ->capture_default_str();
  add_data_flags(cmd, job.data);
  add_train_flags(cmd, job.train);
  auto& r = job.rollout;
  cmd.add_option("--rollout-batch-size", r.rollout_batch_size, "Prompts per rollout")
      ->capture_default_str();
  cmd.add_option("--n-samples-per-prompt", r.n_samples_per_prompt, "Samples per prompt (group)")
      ->capture_default_str();
  cmd.add_option("--rollout-max-response-len", r.max_response_len, "Response token limit")
      ->capture_default_str();
  cmd.add_option("--rollout-top-p", r.top_p)->capture_default_str();
  cmd.add_option("--rollout-top-k", r.top_k, "0 = off")->capture_default_str();
  cmd.add_option("--rollout-sampling-seed", r.sampling_seed)->capture_default_str();
  cmd.add_option("--over-sampling-batch-size", r.over_sampling_batch_size,
                 "Prompts per generation round with dynamic sampling (0 = --rollout-batch-size)")
      ->capture_default_str();
  cmd.add_option("--dynamic-sampling-filter-path", r.dynamic_sampling_filter,
                 "Group filter: check_reward_nonzero_std (drops groups whose rewards are equal)");
  cmd.add_option("--save-debug-rollout-data", r.save_debug_rollout_data,
                 "Write each rollout's samples here (template: {rollout_id}, {engine})");
  auto& ev = job.eval;
  cmd.add_option("--eval-interval", ev.interval,
                 "Evaluate on --eval-prompt-data every this many rollouts (0 = never)")
      ->capture_default_str();
  cmd.add_option("--eval-prompt-data", ev.prompt_data, "Held-out prompts: PATH or NAME PATH")
      ->expected(1, 2);
  cmd.add_flag("--skip-eval-before-train", ev.skip_before_train,
               "No evaluation before the first rollout");
  cmd.add_option("--n-samples-per-eval-prompt", ev.options.n_samples, "Samples per eval prompt")
      ->capture_default_str();
  cmd.add_option("--eval-temperature", ev.temperature,
                 "Sampling temperature of eval (< 0: --rollout-temperature; 0 = greedy)")
      ->capture_default_str();
  cmd.add_option("--eval-top-p", ev.options.top_p)->capture_default_str();
  cmd.add_option("--eval-top-k", ev.options.top_k, "<= 0 = off")->capture_default_str();
  cmd.add_option("--eval-max-response-len", ev.max_response_len,
                 "Eval response token limit (0: --rollout-max-response-len)")
      ->capture_default_str();
  cmd.add_option("--eval-seed", ev.options.seed,
                 "Sample i of eval prompt j uses seed + 1000003 j + i")
      ->capture_default_str();
  cmd.add_option("--load-debug-rollout-data", r.load_debug_rollout_data,
                 "Read each rollout's samples from here instead of generating");
  cmd.add_option("--rm-type", job.reward.rm_type, "Rule-based reward (rollout/reward)");
  cmd.add_option("--rm-url", job.reward.rm_url, "Remote reward model URL (--rm-type remote_rm)");
  cmd.add_option("--reward-key", job.reward.reward_key, "Field of a dict reward");
  auto& p = job.placement;
  cmd.add_option("--actor-num-nodes", p.actor_num_nodes, "Nodes of the train group")
      ->capture_default_str();
  cmd.add_option("--actor-num-gpus-per-node", p.actor_num_gpus_per_node,
                 "Train ranks per node (GPUs, or CPU device slots)")
      ->capture_default_str();
  cmd.add_option("--rollout-num-gpus", p.rollout_num_gpus, "Devices for all rollout engines")
      ->capture_default_str();
  cmd.add_option("--rollout-num-gpus-per-engine", p.rollout_num_gpus_per_engine)
      ->capture_default_str();
  cmd.add_flag("--colocate", p.colocate, "Train and rollout share the devices");
  cmd.add_option("--train-backend", job.train_backend, "fsdp | megatron")
      ->check(CLI::IsMember({"fsdp", "megatron"}))
      ->capture_default_str();
  cmd.add_option("--tensor-model-parallel-size", job.tensor_model_parallel_size,
                 "Megatron backend: tensor-parallel ranks (the train group is TP x DP)")
      ->capture_default_str();
  cmd.add_option("--pipeline-model-parallel-size", job.pipeline_model_parallel_size,
                 "Megatron backend: pipeline stages (the train group is TP x DP x PP; "
                 "1F1B schedule over each step's micro-batches)")
      ->capture_default_str();
  cmd.add_flag("--sequence-parallel", job.sequence_parallel,
               "Megatron backend: split tokens over TP between the tensor-parallel regions");
  cmd.add_option("--num-rollout", job.num_rollout, "Rollouts (RL steps) to run")
      ->capture_default_str();
  cmd.add_option("--save", job.save, "Checkpoint directory (written by train rank 0)");
  cmd.add_option("--save-interval", job.save_interval,
                 "Rollouts between checkpoints (0: only at the end when --save is given)")
      ->capture_default_str();
  cmd.add_option("--load", job.load,
                 "Resume from the latest checkpoint in this directory (written by --save)");
  cmd.add_option("--ckpt-step", job.ckpt_step,
                 "With --load: the iteration to resume from instead of the latest");
  cmd.add_flag("--finetune", job.finetune,
               "With --load: start from the checkpoint's weights only (a fresh optimizer, RNG, "
               "data order and rollout 0), e.g. RL from an SFT checkpoint");
  cmd.add_option("--ref-load", job.ref_load,
                 "Reference model (KL): an HF directory or a --save checkpoint directory "
                 "(default: --model)");
  cmd.add_flag("--debug-rollout-only", job.debug_rollout_only,
               "Only the rollout engines run: no training, reference or weight sync");
  cmd.add_flag("--debug-train-only", job.debug_train_only,
               "No inference engine: train on --load-debug-rollout-data (RL) or the dataset (SFT)");
  cmd.add_flag("--disable-compute-advantages-and-returns",
               job.disable_compute_advantages_and_returns,
               "slime's SFT switch: no advantages (only with --loss-type sft_loss)");
  cmd.add_option("--seed", job.seed,
                 "LibTorch RNG seed of the train ranks (a checkpoint keeps "
                 "the RNG state, so --load continues it)")
      ->capture_default_str();
  cmd.add_option("--metrics-jsonl", job.metrics_jsonl, "Per-step training metrics (JSONL)");
  cmd.add_option("--update-weights-interval", job.update_weights_interval,
                 "With --async: rollouts between weight pushes to the engines")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd.add_flag("--use-tensorboard", job.use_tensorboard,
               "Write TensorBoard event files (under --tensorboard-dir)");
  cmd.add_option("--tensorboard-dir", job.tensorboard_dir, "Directory of the TensorBoard files");
  cmd.add_option("--dashboard-port", job.dashboard_port,
                 "Serve the live metrics dashboard on this port (-1: off, 0: any free port)")
      ->check(CLI::Range(-1, 65535))
      ->capture_default_str();
  cmd.add_option("--dashboard-host", job.dashboard_host,
                 "Address the dashboard binds (0.0.0.0 exposes it to the network)")
      ->capture_default_str();
  cmd.add_option("--transfer-timeout-ms", job.transfer_timeout_ms,
                 "Deadline of each gRPC transfer and wait for a rollout")
      ->capture_default_str();
  cmd.add_flag("--disable-rewards-normalization", job.disable_rewards_normalization);
  cmd.add_flag("--disable-grpo-std-normalization", job.disable_grpo_std_normalization);
  cmd.add_option("--dist-master-addr", job.dist_master_addr,
                 "Address of train rank 0's rendezvous store (train groups of W > 1 ranks)")
      ->capture_default_str();
  cmd.add_option("--dist-master-port", job.dist_master_port,
                 "Port of that store (0: anvil head picks a free one)")
      ->capture_default_str();
  cmd.add_flag("--reshard-after-forward,!--no-reshard-after-forward", job.reshard_after_forward,
               "FSDP: free each layer's gathered weights after its forward")
      ->default_str(job.reshard_after_forward ? "true" : "false");  // flags capture no default
  cmd.add_flag("--fsdp-cpu-offload", job.fsdp_cpu_offload,
               "FSDP: keep shards and the optimizer step on the CPU");
  cmd.add_option("--update-weight-buffer-size", job.update_weight_buffer_size,
                 "Bytes of full tensors gathered at once for a weight sync (FSDP)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
}

namespace {

// Evaluation in the loop: resolves the defaults that follow the rollout flags.
void check_eval_flags(actors::JobOptions& job, const std::string& where) {
  auto& ev = job.eval;
  if (ev.interval < 0) fail("{}: --eval-interval must be >= 0", where);
  if (ev.interval > 0 && ev.prompt_data.empty()) {
    fail("{}: --eval-interval {} needs --eval-prompt-data", where, ev.interval);
  }
  if (ev.interval == 0 && !ev.prompt_data.empty()) {
    fail("{}: --eval-prompt-data is set but --eval-interval is not", where);
  }
  if (ev.interval > 0 && job.train.loss.loss_type == "sft_loss") {
    fail("{}: --eval-interval needs rollout engines; SFT mode (--loss-type sft_loss) has none",
         where);
  }
  ev.options.temperature = ev.temperature >= 0 ? ev.temperature : job.train.temperature;
  ev.options.max_response_len =
      ev.max_response_len > 0 ? ev.max_response_len : job.rollout.max_response_len;
  ev.options.keep_samples = true;  // the head combines per-prompt counts across engines
  try {
    ev.options.validate();
  } catch (const std::exception& e) {
    fail("{}: {}", where, e.what());
  }
}

// --train-backend megatron: the mesh's sizes and what the backend cannot do yet.
void check_megatron_flags(actors::JobOptions& job, const std::string& where) {
  const int64_t world =
      static_cast<int64_t>(job.placement.actor_num_nodes) * job.placement.actor_num_gpus_per_node;
  const int tp = job.tensor_model_parallel_size, pp = job.pipeline_model_parallel_size;
  if (job.train_backend != "megatron") {
    if (tp != 1 || pp != 1 || job.sequence_parallel) {
      fail(
          "{}: --tensor-model-parallel-size / --pipeline-model-parallel-size / "
          "--sequence-parallel need --train-backend megatron",
          where);
    }
    return;
  }
  if (tp < 1) fail("{}: --tensor-model-parallel-size must be >= 1, got {}", where, tp);
  if (pp < 1) fail("{}: --pipeline-model-parallel-size must be >= 1, got {}", where, pp);
  if (pp > 1 && world % (static_cast<int64_t>(tp) * pp) != 0) {
    fail(
        "{}: --tensor-model-parallel-size {} x --pipeline-model-parallel-size {} = {} does not "
        "divide the {} train ranks (--actor-num-nodes x --actor-num-gpus-per-node)",
        where, tp, pp, static_cast<int64_t>(tp) * pp, world);
  }
  if (world % tp != 0) {
    fail(
        "{}: --tensor-model-parallel-size {} does not divide the {} train ranks "
        "(--actor-num-nodes x --actor-num-gpus-per-node)",
        where, tp, world);
  }
  if (job.sequence_parallel && tp == 1) {
    fail("{}: --sequence-parallel needs --tensor-model-parallel-size > 1", where);
  }
}

// slime's debug switches, --ref-load and --disable-compute-advantages-and-returns: what
// cannot work together is refused naming the flags.
void check_debug_flags(actors::JobOptions& job, const std::string& where) {
  const bool sft = job.train.loss.loss_type == "sft_loss";
  if (job.disable_compute_advantages_and_returns && !sft) {
    fail(
        "{}: --disable-compute-advantages-and-returns needs --loss-type sft_loss (a policy "
        "loss without advantages has no gradient)",
        where);
  }
  if (job.debug_rollout_only && job.debug_train_only) {
    fail("{}: --debug-rollout-only and --debug-train-only exclude each other", where);
  }
  if (job.debug_rollout_only) {
    if (sft)
      fail("{}: --debug-rollout-only: SFT mode (--loss-type sft_loss) has no rollout", where);
    if (!job.save.empty()) {
      fail("{}: --debug-rollout-only trains nothing, so --save {} has nothing to checkpoint", where,
           job.save);
    }
    if (!job.load.empty()) fail("{}: --debug-rollout-only with --load is not supported", where);
    if (!job.rollout.load_debug_rollout_data.empty()) {
      fail("{}: --debug-rollout-only with --load-debug-rollout-data: nothing would run", where);
    }
    if (job.placement.colocate) {
      fail("{}: --debug-rollout-only with --colocate: there is no training to share with", where);
    }
  }
  if (job.debug_train_only && !sft) {
    if (job.rollout.load_debug_rollout_data.empty()) {
      fail(
          "{}: --debug-train-only without an inference engine needs --load-debug-rollout-data "
          "(the samples to train on)",
          where);
    }
    if (job.eval.interval > 0) {
      fail("{}: --debug-train-only starts no inference engine, so --eval-interval cannot run",
           where);
    }
    if (job.placement.colocate) {
      fail("{}: --debug-train-only with --colocate: there is no engine to share with", where);
    }
  }
  if (!job.ref_load.empty() && !job.use_ref()) {
    fail("{}: --ref-load {}: no reference model is used without --use-kl-loss or --kl-coef", where,
         job.ref_load);
  }
}

// Dynamic sampling and debug rollout data (slime's flags): settings that cannot work are
// refused before any process starts.
void check_rollout_flags(actors::JobOptions& job, const std::string& where) {
  auto& r = job.rollout;
  const int64_t per_engine = std::max<int64_t>(job.placement.rollout_num_gpus_per_engine, 1);
  const int64_t engines = std::max<int64_t>(job.placement.rollout_num_gpus / per_engine, 1);
  constexpr const char* kFilter = "check_reward_nonzero_std";
  auto& f = r.dynamic_sampling_filter;
  if (!f.empty()) {
    const std::string suffix = std::string(".") + kFilter;
    const bool slime_path =
        f.size() > suffix.size() && f.compare(f.size() - suffix.size(), suffix.size(), suffix) == 0;
    if (f != kFilter && !slime_path) {
      fail(
          "{}: --dynamic-sampling-filter-path {}: unknown filter (anvil has {}, which drops "
          "groups whose rewards are all equal)",
          where, f, kFilter);
    }
    f = kFilter;
    if (r.n_samples_per_prompt < 2) {
      fail(
          "{}: --dynamic-sampling-filter-path needs --n-samples-per-prompt >= 2 (a group of "
          "one sample has no reward spread)",
          where);
    }
  }
  if (r.over_sampling_batch_size < 0) fail("{}: --over-sampling-batch-size must be >= 0", where);
  if (r.over_sampling_batch_size > 0) {
    if (f.empty()) {
      fail(
          "{}: --over-sampling-batch-size {} without --dynamic-sampling-filter-path: the extra "
          "groups would be generated and thrown away",
          where, r.over_sampling_batch_size);
    }
    if (r.over_sampling_batch_size < r.rollout_batch_size) {
      fail("{}: --over-sampling-batch-size {} is below --rollout-batch-size {}", where,
           r.over_sampling_batch_size, r.rollout_batch_size);
    }
    if (r.over_sampling_batch_size % engines != 0) {
      fail("{}: --over-sampling-batch-size {} is not a multiple of the {} rollout engines", where,
           r.over_sampling_batch_size, engines);
    }
  }
  for (auto [flag, value] : {std::pair<const char*, const std::string*>{"--save-debug-rollout-data",
                                                                        &r.save_debug_rollout_data},
                             {"--load-debug-rollout-data", &r.load_debug_rollout_data}}) {
    if (value->empty()) continue;
    if (value->find("{rollout_id}") == std::string::npos && job.num_rollout > 1) {
      fail("{}: {} {}: the path needs {{rollout_id}} (the job has {} rollouts)", where, flag,
           *value, job.num_rollout);
    }
    if (engines > 1 && value->find("{engine}") == std::string::npos) {
      fail("{}: {} {}: the path needs {{engine}} (there are {} rollout engines)", where, flag,
           *value, engines);
    }
  }
}

// Registers the job flags on `app`, parses `args` into `job`, settles the dependent flags
// and rejects invalid and contradictory settings.
void parse_into(CLI::App& app, const std::vector<std::string>& args, actors::JobOptions& job,
                const std::string& where) {
  add_job_flags(app, job);
  std::vector<std::string> reversed(args.rbegin(), args.rend());
  try {
    app.parse(reversed);
  } catch (const CLI::ParseError& e) {
    fail("{}: {}", where, e.what());
  }
  job.placement.use_ref = job.use_ref();
  int64_t per_rollout = job.rollout.rollout_batch_size * job.rollout.n_samples_per_prompt;
  int64_t gbs = std::max<int64_t>(job.train.schedule.global_batch_size, 1);
  finish_train_flags(app, job.train, std::max<int64_t>(job.num_rollout * per_rollout / gbs, 1));
  if (job.num_rollout < 0) fail("{}: --num-rollout must be >= 0", where);
  if (job.save_interval < 0) fail("{}: --save-interval must be >= 0", where);
  // Contradictory settings.
  if (job.save_interval > 0 && job.save.empty()) {
    fail("{}: --save-interval {} needs --save (a checkpoint directory)", where, job.save_interval);
  }
  if (job.finetune && job.load.empty()) {
    fail("{}: --finetune needs --load (the checkpoint whose weights to start from)", where);
  }
  if (job.ckpt_step >= 0 && job.load.empty()) {
    fail("{}: --ckpt-step {} needs --load (a checkpoint directory)", where, job.ckpt_step);
  }
  if (job.use_tensorboard && job.tensorboard_dir.empty()) {
    fail("{}: --use-tensorboard needs --tensorboard-dir", where);
  }
  if (!job.use_tensorboard && !job.tensorboard_dir.empty()) {
    fail("{}: --tensorboard-dir {} is set but --use-tensorboard is not", where,
         job.tensorboard_dir);
  }
  check_rollout_flags(job, where);
  check_eval_flags(job, where);
  check_debug_flags(job, where);
  check_megatron_flags(job, where);
}

}  // namespace

void parse_job_args(const std::vector<std::string>& args, actors::JobOptions& job,
                    const std::string& where) {
  CLI::App app{"job flags"};
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  parse_into(app, args, job, where);
}

std::vector<std::string> yaml_job_args(const std::string& path,
                                       const std::vector<std::string>& skip) {
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const std::exception& e) {
    fail("config {}: {}", path, e.what());
  }
  if (root.IsNull()) return {};
  if (!root.IsMap()) fail("config {}: the top level must be a map of flag names to values", path);
  // Every key must name a job flag, once.
  CLI::App known{"job flags"};
  actors::JobOptions defaults;
  add_job_flags(known, defaults);
  std::map<std::string, std::string> seen;  // flag -> the key that named it
  std::vector<std::string> args;
  for (const auto& kv : root) {
    const std::string given = kv.first.as<std::string>();
    std::string key = given;
    while (!key.empty() && key[0] == '-') key.erase(0, 1);
    std::replace(key.begin(), key.end(), '_', '-');
    std::string flag = "--" + key;
    if (key.empty() || known.get_option_no_throw(flag) == nullptr) {
      fail("config {}: unknown key '{}' (there is no job flag {})", path, given, flag);
    }
    if (auto [it, fresh] = seen.emplace(flag, given); !fresh) {
      fail("config {}: keys '{}' and '{}' both set {}", path, it->second, given, flag);
    }
    if (std::find(skip.begin(), skip.end(), flag) != skip.end()) continue;
    const YAML::Node& v = kv.second;
    if (v.IsScalar()) {
      std::string s = v.as<std::string>();
      // Booleans as --flag=true/false: a false flag whose default is true (and a saved
      // config.yaml's every flag) keeps its value.
      if (s == "true" || s == "True") {
        args.push_back(flag + "=true");
      } else if (s == "false" || s == "False") {
        args.push_back(flag + "=false");
      } else {
        args.push_back(flag);
        args.push_back(s);
      }
    } else if (v.IsSequence()) {
      args.push_back(flag);
      for (const auto& item : v) {
        if (!item.IsScalar()) fail("config {}: key '{}': list items must be scalars", path, key);
        args.push_back(item.as<std::string>());
      }
    } else {
      fail("config {}: key '{}': value must be a scalar or a list", path, key);
    }
  }
  return args;
}

namespace {

// A captured default of a list option ("[a,b]") as its items.
std::vector<std::string> default_values(const std::string& text) {
  if (text.size() < 2 || text.front() != '[' || text.back() != ']') return {text};
  std::vector<std::string> items;
  std::string inner = text.substr(1, text.size() - 2);
  size_t start = 0;
  while (!inner.empty()) {
    size_t comma = inner.find(',', start);
    items.push_back(inner.substr(start, comma - start));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return items;
}

}  // namespace

metrics::ResolvedConfig resolved_job_config(const std::vector<std::string>& args,
                                            const std::string& where) {
  CLI::App app{"job flags"};
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  actors::JobOptions job;
  parse_into(app, args, job, where);
  // The flags registered again on the settled options: each one's captured default is then
  // its final value, derived ones included (--eps-clip-high from --eps-clip, ...).
  CLI::App settled{"job flags"};
  settled.option_defaults()->always_capture_default();
  actors::JobOptions final_job = job;
  add_job_flags(settled, final_job);
  metrics::ResolvedConfig out;
  for (const CLI::Option* o : app.get_options()) {
    if (o->get_lnames().empty() || o->get_lnames()[0] == "help") continue;
    const CLI::Option* final_opt = settled.get_option_no_throw("--" + o->get_lnames()[0]);
    std::vector<std::string> values;
    if (o->count() > 0) {
      values = o->reduced_results();  // as given: no digits lost to formatting
    } else if (final_opt != nullptr && !final_opt->get_default_str().empty()) {
      values = default_values(final_opt->get_default_str());
    } else if (o->get_expected_min() == 0) {
      values = {"false"};  // a flag not given (those defaulting to true set default_str)
    } else {
      continue;  // never given and no default (e.g. --model, --eps-clip-c): stays unset
    }
    out[o->get_lnames()[0]] = values;
  }
  return out;
}

std::string save_resolved_job_config(const std::vector<std::string>& args,
                                     const actors::JobOptions& job, const std::string& where) {
  namespace fs = std::filesystem;
  std::string dir = job.save;
  if (dir.empty() && !job.metrics_jsonl.empty()) {
    dir = fs::absolute(job.metrics_jsonl).parent_path().string();
  }
  if (dir.empty() && job.use_tensorboard) dir = job.tensorboard_dir;
  if (dir.empty()) return "";
  std::string path = (fs::path(dir) / "config.yaml").string();
  metrics::write_config_file(path, resolved_job_config(args, where));
  return path;
}

std::string load_job_token(const std::string& token_file, bool create) {
  if (!token_file.empty() && std::filesystem::exists(token_file)) {
    std::ifstream in(token_file);
    std::string token;
    std::getline(in, token);
    if (token.empty()) fail("--token-file {}: empty", token_file);
    return token;
  }
  if (const char* env = std::getenv("ANVIL_JOB_TOKEN"); env != nullptr && *env != '\0') {
    return env;
  }
  if (!create) fail("no job token: give --token-file FILE or set ANVIL_JOB_TOKEN");
  std::random_device rd;
  std::string token;
  const char* hex = "0123456789abcdef";
  for (int i = 0; i < 32; ++i) token += hex[rd() % 16];
  if (!token_file.empty()) {
    int fd = ::open(token_file.c_str(), O_WRONLY | O_CREAT | O_EXCL, 0600);
    if (fd < 0) fail("--token-file {}: cannot create", token_file);
    std::string line = token + "\n";
    bool ok = ::write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size());
    ::close(fd);
    if (!ok) fail("--token-file {}: write failed", token_file);
  }
  return token;
}

}  // namespace anvil::launcher

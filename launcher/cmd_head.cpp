// anvil head [--config JOB.yaml] [--listen HOST:PORT] [--workers N] [--token-file F]
//            [--port-file F] [--report F] [--in-process] [--request-timeout-ms MS]
//            [--tls-cert F --tls-key F --tls-ca F] [job flags...]
//
// The controller of one job (actors/controller.cpp). Every flag it does not know itself
// is a job flag (launcher/job_flags.hpp): checked here, then forwarded to every role.
#include "actors/cluster.hpp"
#include "actors/job_options.hpp"
#include "actors/role.hpp"
#include "backends/common/error.hpp"
#include "launcher/commands.hpp"
#include "launcher/job_flags.hpp"
#include "runtime/tls.hpp"

#include <CLI/CLI.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

namespace anvil::launcher {
namespace {

struct HeadArgs {
  std::string config, listen = "127.0.0.1:0", token_file, tls_cert, tls_key, tls_ca;
  actors::HeadOptions head;
};

void split_host_port(const std::string& text, const char* flag, std::string& host, int& port) {
  auto colon = text.rfind(':');
  if (colon == std::string::npos || colon == 0) fail("{} must be HOST:PORT, got '{}'", flag, text);
  host = text.substr(0, colon);
  try {
    size_t used = 0;
    port = std::stoi(text.substr(colon + 1), &used);
    if (used != text.size() - colon - 1 || port < 0 || port > 65535) throw std::out_of_range("");
  } catch (const std::exception&) {
    fail("{}: bad port in '{}'", flag, text);
  }
}

// A TCP port nobody listens on at the moment (the kernel's choice for port 0).
int free_local_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) fail("cannot create a socket to find a free port: {}", std::strerror(errno));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    int err = errno;
    ::close(fd);
    fail("cannot find a free port: {}", std::strerror(err));
  }
  ::close(fd);
  return ntohs(addr.sin_port);
}

int run_head_cmd(HeadArgs& a, const std::vector<std::string>& extras) {
  split_host_port(a.listen, "--listen", a.head.listen_host, a.head.port);
  std::vector<std::string> flags;
  for (const auto& e : extras) {
    if (e.rfind("--", 0) == 0) flags.push_back(e.substr(0, e.find('=')));
  }
  std::vector<std::string> args;
  if (!a.config.empty()) args = yaml_job_args(a.config, flags);
  args.insert(args.end(), extras.begin(), extras.end());
  auto job = std::make_shared<actors::JobOptions>();
  parse_job_args(args, *job, a.config.empty() ? "job flags" : "job flags (" + a.config + ")");
  // Every flag's final value beside the run (--save, else beside --metrics-jsonl, else in
  // --tensorboard-dir): `--config` with that config.yaml repeats the job
  // (saved before the head picks a free --dist-master-port, so a rerun picks again).
  save_resolved_job_config(args, *job, "job flags");
  // A train group of several ranks meets at a c10d store that train rank 0 hosts; unless
  // told, pick a port that is free here now (rank 0 runs on this machine in the local and
  // in-process modes; on a cluster pass --dist-master-addr/--dist-master-port).
  const int train_world = job->placement.actor_num_nodes * job->placement.actor_num_gpus_per_node;
  if (train_world > 1 && job->dist_master_port == 0) {
    job->dist_master_port = free_local_port();
    args.push_back("--dist-master-port=" + std::to_string(job->dist_master_port));
  }
  a.head.job_args = args;
  a.head.placement = job->placement;
  a.head.num_rollout = job->num_rollout;
  a.head.save_dir = job->save.empty() ? "" : std::filesystem::absolute(job->save).string();
  a.head.save_interval = job->save_interval;
  a.head.metrics_jsonl = job->metrics_jsonl;
  if (a.head.async && job->placement.colocate) {
    fail(
        "--async (anvil train-async) and --colocate cannot be combined: one-step-off generation "
        "overlaps training, colocated roles take turns on one device");
  }
  if (job->update_weights_interval != 1 && !a.head.async) {
    fail("--update-weights-interval {} needs --async (the synchronous loop pushes every rollout)",
         job->update_weights_interval);
  }
  a.head.update_weights_interval = job->update_weights_interval;
  a.head.sft = job->train.loss.loss_type == "sft_loss";
  a.head.debug_rollout_only = job->debug_rollout_only;
  a.head.debug_train_only = job->debug_train_only;
  if (a.head.async && (job->debug_rollout_only || job->debug_train_only)) {
    fail("--async (anvil train-async) with --debug-{}-only: there is nothing to overlap",
         job->debug_rollout_only ? "rollout" : "train");
  }
  a.head.eval_interval = job->eval.interval;
  a.head.eval_before_train = job->eval.interval > 0 && !job->eval.skip_before_train;
  a.head.eval_name = job->eval.name();
  if (job->eval.interval > 0) a.head.eval_pass_k = job->eval.options.pass_k_values();
  if (a.head.sft && (a.head.async || job->placement.colocate)) {
    fail("--loss-type sft_loss trains without rollouts: --async and --colocate do not apply");
  }
  a.head.metrics.jsonl_path = job->metrics_jsonl;
  a.head.metrics.use_tensorboard = job->use_tensorboard;
  a.head.metrics.tensorboard_dir = job->tensorboard_dir;
  a.head.metrics.dashboard_port = job->dashboard_port;
  a.head.metrics.dashboard_host = job->dashboard_host;
  std::filesystem::path model_dir(job->model);
  if (model_dir.filename().empty()) model_dir = model_dir.parent_path();  // "dir/"
  a.head.metrics.run_name = "anvil " + model_dir.filename().string() +
                            (job->train.loss.loss_type == "sft_loss" ? " (SFT)" : "");
  a.head.config = metrics::display_config(resolved_job_config(args, "job flags"));
  a.head.token = load_job_token(a.token_file, /*create=*/true);
  runtime::set_process_tls(runtime::load_tls(a.tls_cert, a.tls_key, a.tls_ca));
  if (a.head.workers < 1 && !a.head.in_process) fail("--workers must be >= 1");
  std::string token = a.head.token;
  a.head.make_role = [job, token](const std::string& role, int rank) {
    actors::RoleContext ctx;
    ctx.role = role;
    ctx.rank = rank;
    ctx.node_id = "in-process";
    ctx.token = token;
    return std::shared_ptr<actors::Role>(actors::make_role(ctx, *job));
  };
  return actors::run_head(a.head);
}

}  // namespace

CLI::App* add_head_command(CLI::App& app, int& exit_code, const std::string& name,
                           const std::string& description, HeadCommandMode mode) {
  auto* cmd = app.add_subcommand(name, description);
  auto a = std::make_shared<HeadArgs>();
  const bool train = mode != HeadCommandMode::Head;
  cmd->allow_extras();
  cmd->add_option("--config", a->config, "Job YAML: flag names to values (flags override)");
  cmd->add_option("--listen", a->listen, "HOST:PORT for workers and roles (port 0: any)")
      ->capture_default_str();
  auto* workers =
      cmd->add_option("--workers", a->head.workers,
                      train ? "Run as a cluster head waiting for this many `anvil worker`s "
                              "(default: every role in this process)"
                            : "Worker daemons to wait for");
  if (!train) workers->capture_default_str();
  cmd->add_option("--token-file", a->token_file,
                  "Job token file (created with a random token when missing)");
  cmd->add_option("--port-file", a->head.port_file, "Write the bound port here");
  cmd->add_option("--report", a->head.report_file, "Write a JSON summary of the run here");
  if (!train) {
    cmd->add_flag("--in-process", a->head.in_process, "Run every role on threads of this process");
  }
  if (mode == HeadCommandMode::Train) {
    cmd->add_flag("--async", a->head.async,
                  "One-step-off pipeline: generate rollout k+1 while rollout k trains "
                  "(`anvil train-async`)");
  } else {
    a->head.async = mode == HeadCommandMode::TrainAsync;
    if (mode == HeadCommandMode::Head) {
      cmd->add_flag("--async", a->head.async, "One-step-off pipeline (see anvil train-async)");
    }
  }
  cmd->add_option("--tls-cert", a->tls_cert,
                  "PEM certificate: TLS on every link (with the key, CA)");
  cmd->add_option("--tls-key", a->tls_key, "PEM private key of --tls-cert");
  cmd->add_option("--tls-ca", a->tls_ca, "PEM CA that peers' certificates must be signed by");
  cmd->add_option("--heartbeat-ms", a->head.heartbeat_ms)->capture_default_str();
  cmd->add_option("--heartbeat-timeout-ms", a->head.heartbeat_timeout_ms,
                  "A peer silent this long is reported as hung")
      ->capture_default_str();
  cmd->add_option("--register-timeout-ms", a->head.register_timeout_ms)->capture_default_str();
  cmd->add_option("--request-timeout-ms", a->head.request_timeout_ms,
                  "A role that does not answer an operation this long is reported as hung")
      ->capture_default_str();
  cmd->callback([a, cmd, workers, train, &exit_code] {
    // `anvil train`: every role in this process unless --workers asks for a cluster.
    if (train) a->head.in_process = workers->count() == 0;
    exit_code = run_head_cmd(*a, cmd->remaining());
  });
  return cmd;
}

void register_head(CLI::App& app, int& exit_code) {
  add_head_command(app, exit_code, "head", "Run the controller of an RL job (waits for workers)",
                   HeadCommandMode::Head);
}

}  // namespace anvil::launcher

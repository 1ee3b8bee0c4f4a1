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
  a.head.job_args = args;
  a.head.placement = job->placement;
  a.head.num_rollout = job->num_rollout;
  a.head.save_dir = job->save.empty() ? "" : std::filesystem::absolute(job->save).string();
  a.head.save_interval = job->save_interval;
  a.head.metrics_jsonl = job->metrics_jsonl;
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

void register_head(CLI::App& app, int& exit_code) {
  auto* cmd = app.add_subcommand("head", "Run the controller of an RL job (waits for workers)");
  auto a = std::make_shared<HeadArgs>();
  cmd->allow_extras();
  cmd->add_option("--config", a->config, "Job YAML: flag names to values (flags override)");
  cmd->add_option("--listen", a->listen, "HOST:PORT for workers and roles (port 0: any)")
      ->capture_default_str();
  cmd->add_option("--workers", a->head.workers, "Worker daemons to wait for")
      ->capture_default_str();
  cmd->add_option("--token-file", a->token_file,
                  "Job token file (created with a random token when missing)");
  cmd->add_option("--port-file", a->head.port_file, "Write the bound port here");
  cmd->add_option("--report", a->head.report_file, "Write a JSON summary of the run here");
  cmd->add_flag("--in-process", a->head.in_process, "Run every role on threads of this process");
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
  cmd->callback([a, cmd, &exit_code] { exit_code = run_head_cmd(*a, cmd->remaining()); });
}

}  // namespace anvil::launcher

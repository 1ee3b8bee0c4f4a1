// anvil actor --role train|ref|rollout|weight-sync --rank K --head HOST:PORT --node-id ID
//             [--bind-host ADDR] [--tls-cert F --tls-key F --tls-ca F] [job flags...]
//
// One role process, normally spawned by `anvil worker` (which passes the job token in
// ANVIL_JOB_TOKEN and the job flags the head forwarded).
#include "actors/cluster.hpp"
#include "actors/job_options.hpp"
#include "actors/role.hpp"
#include "backends/common/error.hpp"
#include "launcher/commands.hpp"
#include "launcher/job_flags.hpp"
#include "runtime/tls.hpp"

#include <CLI/CLI.hpp>

namespace anvil::launcher {
namespace {

struct ActorArgs {
  std::string head, token_file, bind_host = "127.0.0.1", tls_cert, tls_key, tls_ca;
  actors::RoleProcessOptions role;
};

int run_actor_cmd(ActorArgs& a, const std::vector<std::string>& job_args) {
  actors::check_role_name(a.role.role);
  auto colon = a.head.rfind(':');
  if (colon == std::string::npos || colon == 0) fail("--head must be HOST:PORT, got '{}'", a.head);
  a.role.head_host = a.head.substr(0, colon);
  try {
    a.role.head_port = std::stoi(a.head.substr(colon + 1));
  } catch (const std::exception&) {
    fail("--head: bad port in '{}'", a.head);
  }
  if (a.role.rank < 0) fail("--rank must be >= 0, got {}", a.role.rank);
  a.role.token = load_job_token(a.token_file, /*create=*/false);
  runtime::set_process_tls(runtime::load_tls(a.tls_cert, a.tls_key, a.tls_ca));
  actors::JobOptions job;
  parse_job_args(job_args, job, "job flags");
  actors::RoleContext ctx;
  ctx.role = a.role.role;
  ctx.rank = a.role.rank;
  ctx.node_id = a.role.node_id;
  ctx.token = a.role.token;
  ctx.bind_host = a.bind_host;
  std::shared_ptr<actors::Role> role(actors::make_role(ctx, job));
  return actors::run_role_process(a.role, std::move(role));
}

}  // namespace

void register_actor(CLI::App& app, int& exit_code) {
  auto* cmd = app.add_subcommand("actor", "Run one role process (spawned by anvil worker)");
  auto a = std::make_shared<ActorArgs>();
  cmd->allow_extras();
  cmd->add_option("--role", a->role.role, "train | ref | rollout | weight-sync")->required();
  cmd->add_option("--rank", a->role.rank, "Rank within the role")->capture_default_str();
  cmd->add_option("--head", a->head, "The head's HOST:PORT")->required();
  cmd->add_option("--node-id", a->role.node_id, "The node this process runs on")->required();
  cmd->add_option("--token-file", a->token_file, "Job token file (or set ANVIL_JOB_TOKEN)");
  cmd->add_option("--heartbeat-ms", a->role.heartbeat_ms)->capture_default_str();
  cmd->add_option("--bind-host", a->bind_host, "Address the role's gRPC receivers bind to")
      ->capture_default_str();
  cmd->add_option("--tls-cert", a->tls_cert, "PEM certificate (TLS on every link)");
  cmd->add_option("--tls-key", a->tls_key, "PEM private key of --tls-cert");
  cmd->add_option("--tls-ca", a->tls_ca, "PEM CA that peers' certificates must be signed by");
  cmd->callback([a, cmd, &exit_code] { exit_code = run_actor_cmd(*a, cmd->remaining()); });
}

}  // namespace anvil::launcher

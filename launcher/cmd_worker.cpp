// anvil worker --head HOST:PORT [--devices N] [--node-id ID] [--log-dir DIR] [--token-file F]
//              [--bind-host ADDR] [--tls-cert F --tls-key F --tls-ca F]
//
// The per-node daemon (actors/worker.cpp): registers this node's resources with the
// head, spawns `anvil actor` processes on request and supervises them.
#include "actors/cluster.hpp"
#include "runtime/tls.hpp"
#include "backends/common/error.hpp"
#include "launcher/commands.hpp"
#include "launcher/job_flags.hpp"

#include <ATen/Context.h>
#include <CLI/CLI.hpp>

#include <filesystem>

namespace anvil::launcher {
namespace {

struct WorkerArgs {
  std::string head, token_file, tls_cert, tls_key, tls_ca;
  actors::WorkerOptions worker;
};

int run_worker_cmd(WorkerArgs& a) {
  auto colon = a.head.rfind(':');
  if (colon == std::string::npos || colon == 0) fail("--head must be HOST:PORT, got '{}'", a.head);
  a.worker.head_host = a.head.substr(0, colon);
  try {
    a.worker.head_port = std::stoi(a.head.substr(colon + 1));
  } catch (const std::exception&) {
    fail("--head: bad port in '{}'", a.head);
  }
  if (a.worker.head_port <= 0 || a.worker.head_port > 65535)
    fail("--head: bad port in '{}'", a.head);
  if (a.worker.devices == -1) {
    // Auto: the CUDA devices this process sees (CUDA_VISIBLE_DEVICES applies), else one
    // CPU device slot.
    size_t gpus = 0;
#ifdef ANVIL_WITH_CUDA
    gpus = at::hasCUDA() ? at::getNumGPUs() : 0;
#endif
    a.worker.devices = gpus > 0 ? static_cast<int>(gpus) : 1;
    a.worker.device_kind = gpus > 0 ? "cuda" : "cpu";
  } else if (a.worker.devices < 0) {
    fail("--devices must be >= 0 (or -1: detect), got {}", a.worker.devices);
  }
  a.worker.token = load_job_token(a.token_file, /*create=*/false);
  if (a.worker.bind_host.empty() || a.worker.bind_host == "0.0.0.0" || a.worker.bind_host == "::")
    fail("--bind-host must be an address of this node that other nodes reach, got '{}'",
         a.worker.bind_host);
  runtime::set_process_tls(runtime::load_tls(a.tls_cert, a.tls_key, a.tls_ca));
  if (runtime::process_tls().enabled()) {
    // Role processes get the same files, wherever their working directory is.
    a.worker.tls_cert = std::filesystem::absolute(a.tls_cert).string();
    a.worker.tls_key = std::filesystem::absolute(a.tls_key).string();
    a.worker.tls_ca = std::filesystem::absolute(a.tls_ca).string();
  }
  return actors::run_worker(a.worker);
}

}  // namespace

void register_worker(CLI::App& app, int& exit_code) {
  auto* cmd = app.add_subcommand("worker", "Run a node daemon that spawns role processes");
  auto a = std::make_shared<WorkerArgs>();
  cmd->add_option("--head", a->head, "The head's HOST:PORT")->required();
  cmd->add_option("--token-file", a->token_file, "Job token file (or set ANVIL_JOB_TOKEN)");
  cmd->add_option("--devices", a->worker.devices,
                  "Device bundles this node offers (GPUs, or CPU device slots); -1: the CUDA "
                  "devices visible, else 1")
      ->capture_default_str();
  cmd->add_option("--node-id", a->worker.node_id, "Node name (default hostname/pid)");
  cmd->add_option("--log-dir", a->worker.log_dir, "Where role process logs go");
  cmd->add_option("--connect-timeout-ms", a->worker.connect_timeout_ms)->capture_default_str();
  cmd->add_option("--heartbeat-ms", a->worker.heartbeat_ms)->capture_default_str();
  cmd->add_option("--bind-host", a->worker.bind_host,
                  "This node's address for the data plane (role processes bind and advertise it)")
      ->capture_default_str();
  cmd->add_option("--tls-cert", a->tls_cert,
                  "PEM certificate: TLS on every link (with the key, CA)");
  cmd->add_option("--tls-key", a->tls_key, "PEM private key of --tls-cert");
  cmd->add_option("--tls-ca", a->tls_ca, "PEM CA that peers' certificates must be signed by");
  cmd->callback([a, &exit_code] { exit_code = run_worker_cmd(*a); });
}

}  // namespace anvil::launcher

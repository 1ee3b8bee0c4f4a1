// Entry points of the three kinds of anvil processes. Neither CAF nor LibTorch appears
// here: the launcher (LibTorch side) builds the options and the role objects, the actors
// library (CAF side) runs them.
//
// Each returns the process exit code: 0 when the job (or this process's part) finished
// cleanly, 1 when it failed; the reason has been logged and, for the head, written to
// the report file. None of them throws for a peer's misbehaviour.
#pragma once

#include "runtime/metrics/metrics_hub.hpp"
#include "runtime/placement.hpp"

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace anvil::actors {

class Role;

struct HeadOptions {
  std::string listen_host = "127.0.0.1";  // --listen HOST:PORT (port 0: ephemeral)
  int port = 0;
  std::string port_file;             // --port-file: the bound port is written here (atomically)
  std::string token;                 // the job token
  std::string report_file;           // --report: JSON summary of the run (or its failure)
  int workers = 1;                   // --workers: worker daemons to wait for
  bool in_process = false;           // --in-process: every role on threads of this process
  int heartbeat_ms = 500;            // --heartbeat-ms
  int heartbeat_timeout_ms = 3000;   // --heartbeat-timeout-ms: a silent peer is reported
  int register_timeout_ms = 120000;  // --register-timeout-ms: workers + roles to show up
  // --request-timeout-ms: a role that does not answer an operation (init, generate, train,
  // a weight sync, ...) within this long is reported as hung, even while its front still
  // answers heartbeats (a compute thread stuck in a call).
  int64_t request_timeout_ms = 3600000;
  runtime::PlacementRequest placement;
  int64_t num_rollout = 1;
  std::string save_dir;       // --save: train rank 0 checkpoints here ...
  int64_t save_interval = 0;  // --save-interval: ... every this many rollouts (and at the end)
  std::string metrics_jsonl;  // --metrics-jsonl: one line per optimizer step
  // The controller's metrics hub (runtime/metrics): console line, --metrics-jsonl,
  // TensorBoard, dashboard; `config` (every job flag's final value) is logged at start.
  metrics::MetricsOptions metrics;
  metrics::Config config;
  // --async (anvil train-async): one-step-off pipeline; rollout k+1 is generated while
  // rollout k trains; weights go to the engines every --update-weights-interval rollouts.
  bool async = false;
  // --loss-type sft_loss: SFT in the loop. Only the train ranks are placed (no rollout,
  // reference or weight-sync role); each step the train ranks read --global-batch-size
  // samples of the dataset (token-exact SFT loss masks) and train on them.
  bool sft = false;
  int64_t update_weights_interval = 1;
  // --debug-rollout-only: only the rollout engines are placed and no weights move;
  // --debug-train-only: no weight-sync role, no weight push (the engines only read
  // --load-debug-rollout-data).
  bool debug_rollout_only = false;
  bool debug_train_only = false;
  // --eval-interval N (0 = off): the rollout engines evaluate before the first rollout
  // (unless --skip-eval-before-train), after every N-th and after the last; metrics
  // eval/<eval_name>/... (eval_name: the NAME of --eval-prompt-data NAME PATH, else "eval").
  int64_t eval_interval = 0;
  bool eval_before_train = false;
  std::string eval_name = "eval";
  std::vector<int64_t> eval_pass_k;   // k values of pass@k (from --n-samples-per-eval-prompt)
  std::vector<std::string> job_args;  // the job flags, forwarded to every role process
  // --in-process: creates the compute object of a role (nullptr for weight-sync).
  std::function<std::shared_ptr<Role>(const std::string& role, int rank)> make_role;
};

int run_head(const HeadOptions& options);

struct WorkerOptions {
  std::string head_host = "127.0.0.1";
  int head_port = 0;
  std::string token;
  std::string node_id;  // default: hostname/pid
  int devices = -1;     // --devices: bundles offered (GPUs; CPU device slots without GPUs)
  std::string device_kind = "given";  // "cuda" / "cpu" when detected, "given" for --devices
  std::string log_dir;    // role process logs (role-rank.log); default: the system temp dir
  std::string anvil_exe;  // the `anvil` binary to spawn roles with (default /proc/self/exe)
  int connect_timeout_ms = 30000;
  int heartbeat_ms = 500;
  // --bind-host: the address of this node that its role processes bind their gRPC
  // receivers to and tell their peers (another node must be able to reach it).
  std::string bind_host = "127.0.0.1";
  // --tls-cert/--tls-key/--tls-ca (absolute paths), forwarded to every role process.
  std::string tls_cert, tls_key, tls_ca;
};

int run_worker(const WorkerOptions& options);

struct RoleProcessOptions {
  std::string role;
  int rank = 0;
  std::string head_host = "127.0.0.1";
  int head_port = 0;
  std::string token;
  std::string node_id;
  int heartbeat_ms = 500;
};

// Connects to the head, registers and serves `role` (nullptr for weight-sync) until told
// to stop or until the head goes away.
int run_role_process(const RoleProcessOptions& options, std::shared_ptr<Role> role);

}  // namespace anvil::actors

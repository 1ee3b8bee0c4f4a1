// `anvil worker`: the per-node daemon. Registers the node with the head, spawns role
// processes on request, reports their deaths, and takes them all down when the head
// stops the job or disappears.
#include "actors/cluster.hpp"
#include "actors/protocol.hpp"
#include "actors/role_actor.hpp"
#include "runtime/process.hpp"
#include "runtime/shared_memory.hpp"

#include <caf/io/all.hpp>
#include <nlohmann/json.hpp>
#include "backends/common/log.hpp"

#include <spdlog/spdlog.h>
#include <sched.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <thread>

namespace anvil::actors {

namespace {
std::shared_ptr<spdlog::logger> L() { return anvil::log::get("worker"); }
}  // namespace
namespace {

std::string hostname() {
  char buf[256] = {0};
  if (::gethostname(buf, sizeof(buf) - 1) != 0) return "localhost";
  return buf;
}

// Cores this process may run on (its affinity mask, which containers narrow), else the
// machine's.
unsigned usable_cores() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (::sched_getaffinity(0, sizeof(set), &set) == 0) return CPU_COUNT(&set);
  return std::thread::hardware_concurrency();
}

std::string self_exe() {
  std::error_code ec;
  auto p = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? "anvil" : p.string();
}

struct WorkerShared {
  WorkerOptions options;
  caf::actor head;
  std::unique_ptr<runtime::Supervisor> supervisor;
  std::atomic<int> exit_code{0};
};

worker_actor::behavior_type worker_daemon(worker_actor::pointer self,
                                          std::shared_ptr<WorkerShared> w) {
  self->monitor(w->head);
  self->set_down_handler([=](caf::down_msg& d) {
    if (d.source == w->head.address()) {
      L()->error("worker {}: lost the head ({}); terminating its role processes",
                 w->options.node_id, self->system().render(d.reason));
      w->exit_code = 1;
      w->supervisor->terminate_all(2000);
      self->quit();
    }
  });
  return {
      [=](ping_atom, uint64_t nonce) { return nonce; },
      [=](spawn_role_atom, const std::string& role, int32_t rank, const std::string& devices,
          const std::string& job_args_json) -> caf::result<uint64_t> {
        try {
          auto args = nlohmann::json::parse(job_args_json);
          runtime::SpawnSpec spec;
          spec.argv = {w->options.anvil_exe,
                       "actor",
                       "--role",
                       role,
                       "--rank",
                       std::to_string(rank),
                       "--head",
                       w->options.head_host + ":" + std::to_string(w->options.head_port),
                       "--node-id",
                       w->options.node_id};
          for (const auto& a : args) spec.argv.push_back(a.get<std::string>());
          spec.argv.insert(spec.argv.end(), {"--bind-host", w->options.bind_host});
          if (!w->options.tls_cert.empty()) {
            spec.argv.insert(spec.argv.end(), {"--tls-cert", w->options.tls_cert, "--tls-key",
                                               w->options.tls_key, "--tls-ca", w->options.tls_ca});
          }
          spec.env = {{"ANVIL_JOB_TOKEN", w->options.token},
                      {"CUDA_VISIBLE_DEVICES", devices},
                      {"ANVIL_DEVICES", devices},
                      {"OMP_NUM_THREADS", "1"}};
          spec.log_path = (std::filesystem::path(w->options.log_dir) /
                           (role + "-" + std::to_string(rank) + ".log"))
                              .string();
          spec.label = role + ":" + std::to_string(rank);
          pid_t pid = w->supervisor->spawn(spec);
          L()->info("worker {}: spawned role {} rank {} as pid {} (devices '{}', log {})",
                    w->options.node_id, role, rank, pid, devices, spec.log_path);
          return static_cast<uint64_t>(pid);
        } catch (const std::exception& e) {
          return caf::make_error(caf::sec::runtime_error,
                                 "worker " + w->options.node_id + ": cannot spawn role " + role +
                                     " rank " + std::to_string(rank) + ": " + e.what());
        }
      },
      [=](stop_atom) {
        L()->info("worker {}: stopping {} role processes", w->options.node_id,
                  w->supervisor->running());
        w->supervisor->terminate_all(5000);
        self->quit();
      },
  };
}

}  // namespace

int run_worker(const WorkerOptions& in) {
  auto w = std::make_shared<WorkerShared>();
  w->options = in;
  if (w->options.node_id.empty())
    w->options.node_id = hostname() + "/" + std::to_string(::getpid());
  if (w->options.log_dir.empty())
    w->options.log_dir = std::filesystem::temp_directory_path().string();
  if (w->options.anvil_exe.empty()) w->options.anvil_exe = self_exe();
  if (w->options.devices < 0) {
    L()->error("worker: --devices must be >= 0");
    return 1;
  }
  caf::actor_system_config cfg;
  configure_caf(cfg, in.token, in.heartbeat_ms, 4 * in.heartbeat_ms + 2000);
  caf::actor_system sys{cfg};
  const std::string head_addr = in.head_host + ":" + std::to_string(in.head_port);
  auto deadline =
      std::chrono::steady_clock::now() + std::chrono::milliseconds(in.connect_timeout_ms);
  for (;;) {
    auto head = connect_actor(sys, in.head_host, static_cast<uint16_t>(in.head_port));
    if (head) {
      w->head = *head;
      break;
    }
    if (head.error() == caf::sec::incompatible_application_ids ||
        head.error() == caf::sec::disconnect_during_handshake) {
      // A wrong token or refused certificates do not get better by retrying.
      L()->error("worker: cannot connect to the head at {}: {}", head_addr,
                 describe_connect_error(sys, head.error()));
      return 1;
    }
    if (std::chrono::steady_clock::now() > deadline) {
      L()->error("worker: cannot reach the head at {} within {} ms: {}", head_addr,
                 in.connect_timeout_ms, describe_connect_error(sys, head.error()));
      return 1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  w->supervisor = std::make_unique<runtime::Supervisor>([w](const runtime::ChildExit& e) {
    auto colon = e.label.find(':');
    std::string role = e.label.substr(0, colon);
    int32_t rank = colon == std::string::npos ? 0 : std::stoi(e.label.substr(colon + 1));
    if (!e.requested && (e.signal != 0 || e.exit_code != 0)) {
      L()->error("worker {}: role {} rank {} (pid {}) {}", w->options.node_id, role, rank, e.pid,
                 e.describe());
    }
    runtime::remove_shared_memory_of(e.pid);
    caf::anon_send(w->head, child_exit_atom::value, role, rank, w->options.node_id,
                   static_cast<uint64_t>(e.pid), e.describe(), e.requested);
  });
  worker_actor worker = sys.spawn<caf::detached>(worker_daemon, w);
  const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  const uint64_t memory_bytes = static_cast<uint64_t>(::sysconf(_SC_PHYS_PAGES)) * page;
  nlohmann::json node = {
      {"node_id", w->options.node_id},
      {"hostname", hostname()},
      {"devices", w->options.devices},
      {"bind_host", w->options.bind_host},
      {"tls", !w->options.tls_cert.empty()},
      {"device_kind", w->options.device_kind},
      {"cores", usable_cores()},
      {"memory_bytes", memory_bytes},
      {"memory_available_bytes", static_cast<uint64_t>(::sysconf(_SC_AVPHYS_PAGES)) * page},
      {"pid", ::getpid()}};
  {
    caf::scoped_actor self{sys};
    bool ok = false;
    self->request(w->head, std::chrono::seconds(30), reg_worker_atom::value, in.token, node.dump(),
                  worker)
        .receive([&](const std::string&) { ok = true; },
                 [&](caf::error& e) {
                   L()->error("worker {}: the head at {} refused registration: {}",
                              w->options.node_id, head_addr, error_text(sys, e));
                 });
    if (!ok) {
      self->send_exit(worker, caf::exit_reason::user_shutdown);
      return 1;
    }
    L()->info(
        "worker {}: registered with the head at {} ({} devices ({}), {} cores, {} MiB memory)",
        w->options.node_id, head_addr, w->options.devices, w->options.device_kind,
        node["cores"].get<unsigned>(), memory_bytes >> 20);
    self->wait_for(worker);
  }
  w->supervisor.reset();
  return w->exit_code.load();
}

}  // namespace anvil::actors

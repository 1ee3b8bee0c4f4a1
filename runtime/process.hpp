// Child processes of a worker: spawn (fork/exec), supervise (exit codes, signals) and
// terminate, with no orphans.
//
// Each child gets its own process group (so a signal reaches its whole subtree) and
// PR_SET_PDEATHSIG(SIGKILL) (so it dies with the process that spawned it, even when that
// one is killed with -9). The Supervisor reaps its children on a thread and reports each
// exit once, with a message naming the child's label.
#pragma once

#include <sys/types.h>

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace anvil::runtime {

struct SpawnSpec {
  std::vector<std::string> argv;                         // argv[0] is the executable path
  std::vector<std::pair<std::string, std::string>> env;  // added to (or replacing) the environment
  std::string log_path;  // stdout and stderr go here (appended); empty: inherited
  std::string label;     // for messages, e.g. "role train rank 0"
};

struct ChildExit {
  pid_t pid = 0;
  std::string label;
  int exit_code = -1;      // when it exited
  int signal = 0;          // when a signal killed it
  bool requested = false;  // terminate_all() asked for it
  // "exited with status 3" / "killed by signal 9 (Killed)".
  std::string describe() const;
};

// Fork/execs `spec` in a new process group with PR_SET_PDEATHSIG(SIGKILL). The exec
// happens in the child; if it fails the child exits with status 127 after writing the
// reason to its log. Throws anvil::Error when fork fails.
pid_t spawn_process(const SpawnSpec& spec);

// Text of a waitpid() status: "exited with status N" or "killed by signal N (NAME)".
std::string describe_wait_status(int status);

class Supervisor {
 public:
  // `on_exit` runs on the supervisor's thread for every child that ends.
  explicit Supervisor(std::function<void(const ChildExit&)> on_exit);
  // Terminates every child that is still running (terminate_all with 2 s grace).
  ~Supervisor();
  Supervisor(const Supervisor&) = delete;
  Supervisor& operator=(const Supervisor&) = delete;

  pid_t spawn(const SpawnSpec& spec);
  // SIGTERM to every child's process group, SIGKILL to those still alive after
  // `grace_ms`; returns when all have been reaped.
  void terminate_all(int grace_ms);
  size_t running() const;

 private:
  void reap_loop();
  std::function<void(const ChildExit&)> on_exit_;
  mutable std::mutex mutex_;
  std::map<pid_t, std::string> children_;  // pid -> label
  std::map<pid_t, bool> requested_;
  bool stopping_ = false;
  std::thread reaper_;
};

}  // namespace anvil::runtime

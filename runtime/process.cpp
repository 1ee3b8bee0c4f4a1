#include "runtime/process.hpp"

#include "backends/common/error.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace anvil::runtime {

std::string describe_wait_status(int status) {
  if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    int sig = WTERMSIG(status);
    const char* name = ::strsignal(sig);
    return "killed by signal " + std::to_string(sig) + " (" + (name ? name : "?") + ")";
  }
  return "ended with wait status " + std::to_string(status);
}

std::string ChildExit::describe() const {
  if (signal != 0) {
    const char* name = ::strsignal(signal);
    return "killed by signal " + std::to_string(signal) + " (" + (name ? name : "?") + ")";
  }
  return "exited with status " + std::to_string(exit_code);
}

pid_t spawn_process(const SpawnSpec& spec) {
  if (spec.argv.empty()) fail("spawn {}: empty argv", spec.label);
  // Everything the child needs is prepared before fork (no allocation after it).
  std::vector<char*> argv;
  for (const auto& a : spec.argv) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  std::vector<std::string> env_strings;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string kv(*e);
    bool replaced = false;
    for (const auto& [k, v] : spec.env) {
      if (kv.compare(0, k.size() + 1, k + "=") == 0) replaced = true;
    }
    if (!replaced) env_strings.push_back(std::move(kv));
  }
  for (const auto& [k, v] : spec.env) env_strings.push_back(k + "=" + v);
  std::vector<char*> envp;
  for (auto& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);
  pid_t parent = ::getpid();

  pid_t pid = ::fork();
  if (pid < 0) fail("spawn {}: fork: {}", spec.label, std::strerror(errno));
  if (pid == 0) {
    ::setpgid(0, 0);
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(126);  // the parent died before prctl
    // Default signal dispositions and an empty mask for the new program.
    sigset_t all;
    sigemptyset(&all);
    ::sigprocmask(SIG_SETMASK, &all, nullptr);
    if (!spec.log_path.empty()) {
      int fd = ::open(spec.log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
      if (fd >= 0) {
        ::dup2(fd, 1);
        ::dup2(fd, 2);
      }
    }
    ::execve(argv[0], argv.data(), envp.data());
    const char* why = std::strerror(errno);
    (void)!::write(2, "anvil: exec failed: ", 20);
    (void)!::write(2, argv[0], std::strlen(argv[0]));
    (void)!::write(2, ": ", 2);
    (void)!::write(2, why, std::strlen(why));
    (void)!::write(2, "\n", 1);
    ::_exit(127);
  }
  // Also set the group from the parent side, so a signal sent right after spawn reaches it.
  ::setpgid(pid, pid);
  return pid;
}

Supervisor::Supervisor(std::function<void(const ChildExit&)> on_exit)
    : on_exit_(std::move(on_exit)), reaper_([this] { reap_loop(); }) {}

Supervisor::~Supervisor() {
  terminate_all(2000);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  reaper_.join();
}

pid_t Supervisor::spawn(const SpawnSpec& spec) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (stopping_) fail("spawn {}: supervisor is stopping", spec.label);
  pid_t pid = spawn_process(spec);
  children_[pid] = spec.label;
  return pid;
}

size_t Supervisor::running() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return children_.size();
}

void Supervisor::terminate_all(int grace_ms) {
  std::vector<pid_t> pids;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (const auto& [pid, label] : children_) {
      pids.push_back(pid);
      requested_[pid] = true;
    }
  }
  for (pid_t pid : pids) {
    ::kill(-pid, SIGTERM);
    ::kill(-pid, SIGCONT);  // a stopped child must run to see SIGTERM
  }
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(grace_ms);
  while (running() > 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (const auto& [pid, label] : children_) ::kill(-pid, SIGKILL);
  }
  while (running() > 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
}

void Supervisor::reap_loop() {
  for (;;) {
    std::vector<ChildExit> exits;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (auto it = children_.begin(); it != children_.end();) {
        int status = 0;
        pid_t r = ::waitpid(it->first, &status, WNOHANG);
        if (r == it->first || (r < 0 && errno == ECHILD)) {
          ChildExit e;
          e.pid = it->first;
          e.label = it->second;
          if (r == it->first && WIFSIGNALED(status)) {
            e.signal = WTERMSIG(status);
          } else if (r == it->first && WIFEXITED(status)) {
            e.exit_code = WEXITSTATUS(status);
          }
          e.requested = requested_.count(it->first) != 0;
          requested_.erase(it->first);
          // Whatever the child left in its group goes with it.
          ::kill(-it->first, SIGKILL);
          exits.push_back(std::move(e));
          it = children_.erase(it);
        } else {
          ++it;
        }
      }
      if (stopping_ && children_.empty()) return;
    }
    for (const auto& e : exits) on_exit_(e);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

}  // namespace anvil::runtime

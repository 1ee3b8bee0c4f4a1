// `anvil head`: the controller. Waits for the workers, places the roles (slime's
// placement group), has the workers spawn them, drives the RL loop over the role actors,
// and watches everything: CAF monitors (a dead process is seen within milliseconds),
// application heartbeats (a stopped or hung one within --heartbeat-timeout-ms), and the
// workers' reports of their children's exit status. The first failure stops the job:
// every role and worker is told to stop, the reason names node, role and rank, and the
// head exits with status 1.
#include "actors/cluster.hpp"
#include "actors/protocol.hpp"
#include "actors/resume_state.hpp"
#include "actors/role_actor.hpp"
#include "rollout/eval/evaluate.hpp"
#include "runtime/metrics/metrics_hub.hpp"
#include "runtime/shared_memory.hpp"

#include <caf/io/all.hpp>
#include <nlohmann/json.hpp>
#include "backends/common/log.hpp"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>

namespace anvil::actors {

namespace {
std::shared_ptr<spdlog::logger> L() { return anvil::log::get("head"); }

// Seconds on the monotonic clock (durations in the metrics).
double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
}  // namespace
namespace {

using timeout_atom = caf::atom_constant<caf::atom("regtimeout")>;
using finish_atom = caf::atom_constant<caf::atom("finish")>;
using deferred_fail_atom = caf::atom_constant<caf::atom("deferfail")>;

struct WorkerEntry {
  worker_actor handle;
  std::string hostname;
  int devices = 0;
  nlohmann::json info;
  bool down = false;
};

struct RoleEntry {
  runtime::RolePlacement placement;
  role_actor front;
  uint64_t pid = 0;
  nlohmann::json info;  // init's reply
  bool down = false;
  std::string exit_description;  // from the worker, when it reported one
};

struct HeadState {
  HeadOptions options;
  std::map<std::string, WorkerEntry> workers;  // by node id
  std::map<std::string, RoleEntry> roles;      // by "role:rank"
  std::vector<std::string> role_order;
  enum class Phase { Workers, Roles, Running, Stopping } phase = Phase::Workers;
  uint64_t nonce = 0;
  int64_t rollout = 0;
  nlohmann::json report = {{"ok", false}, {"rollouts", nlohmann::json::array()}};
  std::shared_ptr<std::atomic<int>> exit_code;
  bool failed = false;
  // --async: the generations started (rollout id -> its state); at most two live at once.
  struct Generation {
    nlohmann::json report;
    int pending = 0;
    bool done = false;
    std::function<void()> waiter;  // runs once the generation is done
  };
  std::map<uint64_t, std::shared_ptr<Generation>> generations;
  // Where the per-step metrics go (console, --metrics-jsonl, TensorBoard, dashboard).
  std::shared_ptr<metrics::MetricsHub> hub;
  int64_t metrics_step = 0;  // the hub's step when the train role does not report one
};

std::string key(const std::string& role, int rank) { return role + ":" + std::to_string(rank); }

std::string describe_role(const RoleEntry& r) {
  std::string s = "role " + r.placement.role + " rank " + std::to_string(r.placement.rank);
  if (r.pid != 0) s += " (pid " + std::to_string(r.pid) + ")";
  return s + " on node " + r.placement.node_id;
}

// Never throws (it runs inside the controller's handlers): a file that cannot be written
// is logged, naming it.
void write_file_atomically(const std::string& path, const std::string& text) {
  if (path.empty()) return;
  std::string tmp = path + ".tmp" + std::to_string(::getpid());
  std::error_code ec;
  const auto parent = std::filesystem::path(path).parent_path();
  if (!parent.empty()) std::filesystem::create_directories(parent, ec);
  {
    std::ofstream out(tmp);
    out << text << "\n";
    if (!out) {
      L()->error("cannot write {}", tmp);
      return;
    }
  }
  std::filesystem::rename(tmp, path, ec);
  if (ec) L()->error("cannot rename {} to {}: {}", tmp, path, ec.message());
}

class Controller {
 public:
  Controller(caf::event_based_actor* self, HeadState* st) : self_(self), st_(st) {}

  caf::behavior make_behavior();

 private:
  void fail(const std::string& message);
  void finish_ok();
  void stop_everything();
  void maybe_quit();
  void on_down(const caf::down_msg& d);
  void heartbeat();
  void place_and_spawn();
  void place_in_process();
  void start_job();
  void run_rollout();
  void next_rollout() {
    if (st_->options.sft) {
      run_sft_step();
    } else if (st_->options.async) {
      run_async_rollout();
    } else {
      run_rollout();
    }
  }
  void run_sft_step();
  // SFT mode places the train ranks only; --debug-rollout-only the rollout engines only;
  // --debug-train-only (RL) no weight-sync role (no engine holds weights to update).
  void keep_sft_roles(std::vector<runtime::RolePlacement>& placement) {
    const auto& o = st_->options;
    std::erase_if(placement, [&o](const runtime::RolePlacement& p) {
      if (o.sft) return p.role != "train";
      if (o.debug_rollout_only) return p.role != "rollout";
      if (o.debug_train_only) return p.role == "weight-sync";
      return false;
    });
  }
  // Whether trained weights go to the engines after each rollout.
  bool pushes_weights() const {
    return !st_->options.debug_rollout_only && !st_->options.debug_train_only;
  }
  void run_async_rollout();
  void start_generation(uint64_t k);
  void when_generated(uint64_t k, std::function<void()> then);
  void finish_rollout(nlohmann::json rollout_report);
  void sync_weights(uint64_t version, nlohmann::json rollout_report);
  void save_then_continue();
  // --eval-interval: every rollout engine evaluates its share of the held-out prompts; the
  // combined result is logged (eval/NAME/...) and kept in the report, then `then` runs.
  void run_eval(std::function<void()> then);
  bool eval_due() const {
    const auto& o = st_->options;
    return o.eval_interval > 0 &&
           (st_->rollout % o.eval_interval == 0 || st_->rollout == o.num_rollout);
  }
  void log_metrics(const nlohmann::json& rollout_report);
  std::vector<RoleEntry*> roles_of(const std::string& role);
  std::string endpoint(const std::string& role, int rank) {
    return st_->roles[key(role, rank)].info.value("endpoint", "");
  }
  void ask_all(const std::vector<RoleEntry*>& targets, std::function<caf::message(RoleEntry&)> msg,
               std::function<void(std::vector<nlohmann::json>)> done);

  caf::event_based_actor* self_;
  HeadState* st_;
};

std::vector<RoleEntry*> Controller::roles_of(const std::string& role) {
  std::vector<RoleEntry*> out;
  for (const auto& k : st_->role_order) {
    auto& r = st_->roles[k];
    if (r.placement.role == role) out.push_back(&r);
  }
  return out;
}

void Controller::fail(const std::string& message) {
  if (st_->failed || st_->phase == HeadState::Phase::Stopping) return;
  st_->failed = true;
  *st_->exit_code = 1;
  L()->error("{}", message);
  st_->report["ok"] = false;
  st_->report["error"] = message;
  write_file_atomically(st_->options.report_file, st_->report.dump(2));
  if (st_->hub) st_->hub->set_status("failed", message);
  stop_everything();
}

void Controller::finish_ok() {
  st_->report["ok"] = true;
  write_file_atomically(st_->options.report_file, st_->report.dump(2));
  L()->info("job finished: {} rollouts", st_->rollout);
  if (st_->hub) st_->hub->set_status("finished", std::to_string(st_->rollout) + " rollouts");
  stop_everything();
}

void Controller::stop_everything() {
  st_->phase = HeadState::Phase::Stopping;
  for (auto& [k, r] : st_->roles) {
    if (r.front && !r.down) self_->send(r.front, stop_atom::value);
  }
  for (auto& [id, w] : st_->workers) {
    if (!w.down) self_->send(w.handle, stop_atom::value);
  }
  // Workers take their roles down (SIGTERM, then SIGKILL); give them that long.
  self_->delayed_send(self_, std::chrono::seconds(8), finish_atom::value);
  maybe_quit();
}

void Controller::maybe_quit() {
  if (st_->phase != HeadState::Phase::Stopping) return;
  for (auto& [id, w] : st_->workers) {
    if (!w.down) return;
  }
  if (st_->options.in_process) {
    for (auto& [k, r] : st_->roles) {
      if (r.front && !r.down) return;
    }
  }
  self_->quit();
}

void Controller::on_down(const caf::down_msg& d) {
  for (auto& [id, w] : st_->workers) {
    if (w.handle.address() == d.source && !w.down) {
      w.down = true;
      if (st_->phase != HeadState::Phase::Stopping) {
        fail("worker on node " + id + " (host " + w.hostname +
             ") is unreachable: its process died or its connection dropped (" +
             self_->system().render(d.reason) + ")");
      }
      maybe_quit();
      return;
    }
  }
  for (auto& [k, r] : st_->roles) {
    if (r.front && r.front.address() == d.source && !r.down) {
      r.down = true;
      if (st_->phase != HeadState::Phase::Stopping) {
        // The worker's report of the exit status usually follows within milliseconds;
        // wait briefly for it so the message can say how the process ended.
        self_->delayed_send(self_, std::chrono::milliseconds(200), report_atom::value, k);
      }
      maybe_quit();
      return;
    }
  }
}

void Controller::heartbeat() {
  if (st_->phase == HeadState::Phase::Stopping) return;
  uint64_t nonce = ++st_->nonce;
  auto timeout = std::chrono::milliseconds(st_->options.heartbeat_timeout_ms);
  auto ms = std::to_string(st_->options.heartbeat_timeout_ms);
  for (auto& [id, w] : st_->workers) {
    if (w.down) continue;
    std::string node = id;
    self_->request(w.handle, timeout, ping_atom::value, nonce)
        .then([](uint64_t) {},
              [=, this](caf::error& e) {
                fail("worker on node " + node + " did not answer a heartbeat within " + ms +
                     " ms (stopped or hung?): " + error_text(self_->system(), e));
              });
  }
  for (auto& [k, r] : st_->roles) {
    if (!r.front || r.down) continue;
    std::string what = describe_role(r);
    self_->request(r.front, timeout, ping_atom::value, nonce)
        .then([](uint64_t) {},
              [=, this](caf::error& e) {
                fail(what + " did not answer a heartbeat within " + ms +
                     " ms (stopped or hung?): " + error_text(self_->system(), e));
              });
  }
  self_->delayed_send(self_, std::chrono::milliseconds(st_->options.heartbeat_ms),
                      heartbeat_atom::value);
}

void Controller::place_and_spawn() {
  std::vector<runtime::NodeResources> nodes;
  for (auto& [id, w] : st_->workers) nodes.push_back({id, w.hostname, w.devices});
  std::vector<runtime::RolePlacement> placement;
  try {
    placement = runtime::place_roles(nodes, st_->options.placement);
  } catch (const std::exception& e) {
    fail(std::string("placement: ") + e.what());
    return;
  }
  keep_sft_roles(placement);
  st_->phase = HeadState::Phase::Roles;
  nlohmann::json args = st_->options.job_args;
  for (const auto& p : placement) {
    std::string k = key(p.role, p.rank);
    st_->role_order.push_back(k);
    st_->roles[k].placement = p;
    std::string devices;
    for (int d : p.devices) devices += (devices.empty() ? "" : ",") + std::to_string(d);
    st_->report["placement"].push_back(
        {{"role", p.role}, {"rank", p.rank}, {"node_id", p.node_id}, {"devices", p.devices}});
    L()->info("placing role {} rank {} on node {} (devices '{}')", p.role, p.rank, p.node_id,
              devices);
    self_
        ->request(st_->workers[p.node_id].handle, std::chrono::seconds(30), spawn_role_atom::value,
                  p.role, static_cast<int32_t>(p.rank), devices, args.dump())
        .then(
            [=, this](uint64_t pid) {
              auto& r = st_->roles[k];
              if (r.pid == 0) r.pid = pid;
            },
            [=, this](caf::error& e) { fail(error_text(self_->system(), e)); });
  }
}

void Controller::place_in_process() {
  runtime::NodeResources local{"in-process", "localhost", 1 << 20};
  std::vector<runtime::RolePlacement> placement;
  try {
    placement = runtime::place_roles({local}, st_->options.placement);
  } catch (const std::exception& e) {
    fail(std::string("placement: ") + e.what());
    return;
  }
  keep_sft_roles(placement);
  for (const auto& p : placement) {
    std::string k = key(p.role, p.rank);
    st_->role_order.push_back(k);
    auto& r = st_->roles[k];
    r.placement = p;
    r.pid = static_cast<uint64_t>(::getpid());
    std::shared_ptr<Role> role;
    try {
      role = st_->options.make_role(p.role, p.rank);
    } catch (const std::exception& e) {
      fail("role " + p.role + " rank " + std::to_string(p.rank) + ": " + e.what());
      return;
    }
    r.front = spawn_role_actor(self_->system(), p.role, p.rank, role, st_->options.token);
    self_->monitor(r.front);
    st_->report["placement"].push_back(
        {{"role", p.role}, {"rank", p.rank}, {"node_id", p.node_id}, {"devices", p.devices}});
  }
  start_job();
}

void Controller::ask_all(const std::vector<RoleEntry*>& targets,
                         std::function<caf::message(RoleEntry&)> msg,
                         std::function<void(std::vector<nlohmann::json>)> done) {
  auto replies = std::make_shared<std::vector<nlohmann::json>>(targets.size());
  auto pending = std::make_shared<size_t>(targets.size());
  if (targets.empty()) {
    done({});
    return;
  }
  for (size_t i = 0; i < targets.size(); ++i) {
    RoleEntry* r = targets[i];
    std::string what = describe_role(*r);
    caf::message m = msg(*r);
    std::string op = m.size() > 0 && m.match_element<caf::atom_value>(0)
                         ? caf::to_string(m.get_as<caf::atom_value>(0))
                         : "?";
    int64_t timeout_ms = st_->options.request_timeout_ms;
    // The messages come from role_message(), checked against role_actor at compile time.
    self_->request(caf::actor_cast<caf::actor>(r->front), std::chrono::milliseconds(timeout_ms), m)
        .then(
            [=, this](const std::string& reply) {
              if (st_->failed) return;
              try {
                (*replies)[i] = nlohmann::json::parse(reply);
              } catch (const std::exception& e) {
                fail(what + " sent a malformed reply: " + e.what());
                return;
              }
              if (--*pending == 0) done(std::move(*replies));
            },
            [=, this](caf::error& e) {
              if (e == caf::sec::request_timeout) {
                fail(what + " did not answer '" + op + "' within " + std::to_string(timeout_ms) +
                     " ms (hung? --request-timeout-ms)");
                return;
              }
              // Often the consequence of a peer dying (a push to a killed engine): give the
              // report of the death itself a moment to arrive and name the real culprit.
              self_->delayed_send(self_, std::chrono::milliseconds(600), deferred_fail_atom::value,
                                  error_text(self_->system(), e) + " [" + what + "]");
            });
  }
}

void Controller::start_job() {
  st_->phase = HeadState::Phase::Running;
  std::vector<RoleEntry*> all;
  for (const auto& k : st_->role_order) all.push_back(&st_->roles[k]);
  ask_all(
      all, [](RoleEntry&) { return role_message(init_atom::value); },
      [=, this](std::vector<nlohmann::json> infos) {
        for (size_t i = 0; i < all.size(); ++i) all[i]->info = infos[i];
        L()->info("{} roles initialised", all.size());
        try {  // --load: the roles loaded iteration N; rollout N comes next
          st_->rollout = resumed_rollout(infos);
        } catch (const std::exception& e) {
          fail(e.what());
          return;
        }
        if (st_->rollout > 0) L()->info("resuming at rollout {} (--load)", st_->rollout);
        if (st_->options.eval_before_train && st_->rollout == 0) {
          run_eval([this] { next_rollout(); });
        } else {
          next_rollout();
        }
      });
}

void Controller::run_rollout() {
  if (st_->rollout >= st_->options.num_rollout) {
    finish_ok();
    return;
  }
  uint64_t k = static_cast<uint64_t>(st_->rollout);
  if (st_->hub) {
    st_->hub->set_status("running", "rollout " + std::to_string(k) + " of " +
                                        std::to_string(st_->options.num_rollout));
  }
  auto engines = roles_of("rollout");
  auto trains = roles_of("train");
  auto refs = roles_of("ref");
  uint64_t parts = engines.size();
  nlohmann::json train_targets = {{"targets", nlohmann::json::array()}};
  for (auto* t : trains) train_targets["targets"].push_back(t->info.value("endpoint", ""));
  nlohmann::json gen_targets = train_targets;
  if (!refs.empty()) {
    gen_targets = {{"targets", {refs[0]->info.value("endpoint", "")}}};
  }
  const bool colocate = st_->options.placement.colocate;
  const double t_start = now_s();
  auto report = std::make_shared<nlohmann::json>(
      nlohmann::json{{"rollout", k}, {"time", {{"start", t_start}}}});
  auto pending = std::make_shared<int>(refs.empty() ? 2 : 3);
  auto step_done = [=, this]() {
    if (--*pending > 0) return;
    if (pushes_weights()) {
      sync_weights(k + 1, *report);
    } else {
      finish_rollout(*report);
    }
  };
  // Training waits for its data in the train role's receiver, so it is asked at once,
  // except in colocated mode: there it runs once the engines have given the device back.
  auto start_train = [=, this]() {
    ask_all(
        trains, [=, this](RoleEntry&) { return role_message(train_atom::value, k * parts, parts); },
        [=, this](std::vector<nlohmann::json> replies) {
          (*report)["train"] = replies;
          step_done();
        });
  };
  auto start_generate = [=, this]() {
    const double t_gen = now_s();
    ask_all(
        engines,
        [=, this](RoleEntry& r) {
          return role_message(generate_atom::value, k * parts + r.placement.rank,
                              gen_targets.dump());
        },
        [=, this](std::vector<nlohmann::json> replies) {
          (*report)["generate"] = replies;
          (*report)["time"]["rollout"] = now_s() - t_gen;
          if (!colocate) {
            step_done();
            return;
          }
          // Colocated: the engines give their memory (weights, KV cache) to training, and
          // the train ranks take theirs back.
          ask_all(
              roles_of("rollout"), [](RoleEntry&) { return role_message(offload_atom::value); },
              [=, this](std::vector<nlohmann::json> offloaded) {
                (*report)["offload"] = offloaded;
                ask_all(
                    roles_of("train"), [](RoleEntry&) { return role_message(onload_atom::value); },
                    [=, this](std::vector<nlohmann::json> onloaded) {
                      (*report)["train_onload"] = onloaded;
                      start_train();
                      step_done();
                    });
              });
        });
  };
  if (colocate) {
    // The train ranks' state leaves the device while the engines generate.
    ask_all(
        trains, [](RoleEntry&) { return role_message(offload_atom::value); },
        [=, this](std::vector<nlohmann::json> offloaded) {
          (*report)["train_offload"] = offloaded;
          start_generate();
        });
  } else {
    start_generate();
    start_train();
  }
  if (!refs.empty()) {
    // The ref role takes each engine's part in turn and forwards it with ref log-probs.
    auto next_part = std::make_shared<std::function<void(uint64_t)>>();
    *next_part = [=, this](uint64_t e) {
      if (e == parts) {
        step_done();
        return;
      }
      ask_all(
          refs,
          [=, this](RoleEntry&) {
            return role_message(compute_ref_atom::value, k * parts + e, train_targets.dump());
          },
          [=, this](std::vector<nlohmann::json> replies) {
            (*report)["ref"].push_back(replies[0]);
            (*next_part)(e + 1);
          });
    };
    (*next_part)(0);
  }
}

void Controller::sync_weights(uint64_t version, nlohmann::json rollout_report) {
  if (st_->options.placement.colocate && !rollout_report.contains("onload")) {
    ask_all(
        roles_of("rollout"), [](RoleEntry&) { return role_message(onload_atom::value); },
        [=, this](std::vector<nlohmann::json> onloaded) mutable {
          rollout_report["onload"] = onloaded;
          sync_weights(version, rollout_report);
        });
    return;
  }
  auto syncs = roles_of("weight-sync");
  auto trains = roles_of("train");
  auto engines = roles_of("rollout");
  if (syncs.empty() || trains.empty()) {
    fail("no weight-sync or train role to move weight version " + std::to_string(version));
    return;
  }
  const std::string& train_node = trains[0]->placement.node_id;
  nlohmann::json plan = {{"targets", nlohmann::json::array()}};
  std::vector<weight_holder_actor> engine_handles;
  for (auto* e : engines) {
    plan["targets"].push_back({{"endpoint", e->info.value("endpoint", "")},
                               {"shared_memory", e->placement.node_id == train_node}});
    engine_handles.push_back(e->front);
  }
  weight_source_actor train0 = trains[0]->front;
  const double t_sync = now_s();
  // A sharded train group gathers each tensor collectively: ranks 1.. take part in the push
  // that the weight-sync actor asks of rank 0 (they send nothing themselves).
  std::vector<RoleEntry*> helpers(trains.begin() + 1, trains.end());
  ask_all(
      helpers,
      [=](RoleEntry&) {
        return caf::make_message(push_weights_atom::value, version,
                                 std::string(R"({"targets": []})"));
      },
      [](std::vector<nlohmann::json>) {});
  ask_all(
      {syncs[0]},
      [=, this](RoleEntry&) {
        return role_message(sync_weights_atom::value, version, train0, engine_handles, plan.dump());
      },
      [=, this](std::vector<nlohmann::json> replies) mutable {
        rollout_report["sync"] = replies[0];
        rollout_report["time"]["sync"] = now_s() - t_sync;
        L()->info(
            "rollout {} trained; weight version {} (checksum {}) now on {} "
            "engines",
            st_->rollout, version, replies[0].value("checksum", 0u), replies[0]["engines"].size());
        finish_rollout(std::move(rollout_report));
      });
}

void Controller::finish_rollout(nlohmann::json rollout_report) {
  rollout_report["time"]["step"] = now_s() - rollout_report["time"].value("start", now_s());
  rollout_report["time"].erase("start");
  log_metrics(rollout_report);
  if (st_->failed) return;
  st_->report["rollouts"].push_back(rollout_report);
  ++st_->rollout;
  const auto& o = st_->options;
  bool last = st_->rollout == o.num_rollout;
  auto go_on = [this, last] {
    const auto& o = st_->options;
    if (!o.save_dir.empty() &&
        ((o.save_interval > 0 && st_->rollout % o.save_interval == 0) || last)) {
      save_then_continue();
    } else {
      next_rollout();
    }
  };
  if (eval_due()) {
    run_eval(go_on);
  } else {
    go_on();
  }
}

void Controller::run_eval(std::function<void()> then) {
  const double t0 = now_s();
  const int64_t at = st_->rollout;
  ask_all(
      roles_of("rollout"), [](RoleEntry&) { return role_message(eval_atom::value); },
      [=, this](std::vector<nlohmann::json> replies) {
        double prompts = 0, samples = 0, correct = 0, reward_sum = 0, tokens = 0, truncated = 0;
        std::vector<std::pair<int64_t, int64_t>> counts;
        for (const auto& r : replies) {
          prompts += r.value("prompts", 0.0);
          samples += r.value("samples", 0.0);
          correct += r.value("correct", 0.0);
          reward_sum += r.value("reward_sum", 0.0);
          tokens += r.value("response_tokens", 0.0);
          truncated += r.value("truncated", 0.0);
          for (const auto& c : r.value("counts", nlohmann::json::array()))
            counts.emplace_back(c[0].get<int64_t>(), c[1].get<int64_t>());
        }
        if (samples == 0) {
          fail("eval: no engine evaluated a prompt (--eval-prompt-data is empty?)");
          return;
        }
        const std::string p = "eval/" + st_->options.eval_name + "/";
        metrics::Scalars m = {{p + "accuracy", correct / samples},
                              {p + "mean_reward", reward_sum / samples},
                              {p + "mean_response_tokens", tokens / samples},
                              {p + "truncated_fraction", truncated / samples},
                              {p + "prompts", prompts},
                              {p + "samples", samples},
                              {"rollout", static_cast<double>(at)},
                              {"time/eval", now_s() - t0}};
        for (int64_t k : st_->options.eval_pass_k) {
          double sum = 0;
          for (const auto& [n, c] : counts) sum += eval::pass_at_k(n, c, k);
          m[p + "pass@" + std::to_string(k)] = sum / static_cast<double>(counts.size());
        }
        nlohmann::json entry = {{"rollout", at}, {"engines", replies}};
        for (const auto& [k, v] : m) entry["metrics"][k] = v;
        st_->report["evals"].push_back(entry);
        L()->info("eval at rollout {}: accuracy {:.4f} ({}/{}) on {} prompts, mean reward {:.4f}",
                  at, correct / samples, static_cast<int64_t>(correct),
                  static_cast<int64_t>(samples), static_cast<int64_t>(prompts),
                  reward_sum / samples);
        if (st_->hub) {
          try {
            st_->hub->log(std::max<int64_t>(st_->metrics_step - 1, 0), m);
          } catch (const std::exception& e) {
            fail(std::string("metrics: ") + e.what());
            return;
          }
        }
        then();
      });
}

// --async (slime's train_async.py, one step off): rollout k+1 is generated while rollout k
// trains, so its samples come from weight version k (one behind the trainer; the train
// role reports the staleness, the loss's TIS/mismatch metrics use the samples' rollout
// log-probs). Weights go to the engines every --update-weights-interval rollouts, after
// the generation in flight has finished (never in the middle of one).
void Controller::run_async_rollout() {
  if (st_->rollout >= st_->options.num_rollout) {
    finish_ok();
    return;
  }
  const uint64_t k = static_cast<uint64_t>(st_->rollout);
  if (st_->hub) {
    st_->hub->set_status("running", "rollout " + std::to_string(k) + " of " +
                                        std::to_string(st_->options.num_rollout) + " (async)");
  }
  if (st_->generations.count(k) == 0) start_generation(k);
  const double t_wait = now_s();
  when_generated(k, [=, this]() {
    const double t_train = now_s();
    const uint64_t num = static_cast<uint64_t>(st_->options.num_rollout);
    if (k + 1 < num && st_->generations.count(k + 1) == 0) start_generation(k + 1);
    const uint64_t parts = roles_of("rollout").size();
    ask_all(
        roles_of("train"),
        [=](RoleEntry&) { return role_message(train_atom::value, k * parts, parts); },
        [=, this](std::vector<nlohmann::json> replies) {
          nlohmann::json report = st_->generations[k]->report;
          st_->generations.erase(k);
          report["train"] = replies;
          report["time"]["start"] = t_wait;
          report["time"]["wait_rollout"] = t_train - t_wait;
          const int64_t interval = std::max<int64_t>(1, st_->options.update_weights_interval);
          const bool push = (k + 1) % static_cast<uint64_t>(interval) == 0 || k + 1 == num;
          if (!push) {
            L()->info(
                "rollout {} trained (weights stay on the engines: "
                "--update-weights-interval {})",
                k, interval);
            finish_rollout(std::move(report));
            return;
          }
          if (st_->generations.count(k + 1) != 0) {
            when_generated(k + 1, [=, this]() { sync_weights(k + 1, report); });
          } else {
            sync_weights(k + 1, report);
          }
        });
  });
}

// SFT in the loop: one optimizer step per "rollout" on --global-batch-size samples that the
// train ranks read from the dataset themselves (parts = 0); no weights go anywhere.
void Controller::run_sft_step() {
  if (st_->rollout >= st_->options.num_rollout) {
    finish_ok();
    return;
  }
  const uint64_t k = static_cast<uint64_t>(st_->rollout);
  if (st_->hub) {
    st_->hub->set_status("running", "SFT step " + std::to_string(k) + " of " +
                                        std::to_string(st_->options.num_rollout));
  }
  const double t0 = now_s();
  ask_all(
      roles_of("train"),
      [=](RoleEntry&) { return role_message(train_atom::value, k, uint64_t{0}); },
      [=, this](std::vector<nlohmann::json> replies) {
        nlohmann::json report = {{"rollout", k}, {"train", replies}, {"time", {{"start", t0}}}};
        L()->info("SFT step {} trained ({} samples, loss {})", k, replies[0].value("samples", 0),
                  replies[0]["steps"].empty() ? 0.0 : replies[0]["steps"][0].value("loss", 0.0));
        finish_rollout(std::move(report));
      });
}

void Controller::start_generation(uint64_t k) {
  auto g = std::make_shared<HeadState::Generation>();
  st_->generations[k] = g;
  auto engines = roles_of("rollout");
  auto trains = roles_of("train");
  auto refs = roles_of("ref");
  const uint64_t parts = engines.size();
  nlohmann::json train_targets = {{"targets", nlohmann::json::array()}};
  for (auto* t : trains) train_targets["targets"].push_back(t->info.value("endpoint", ""));
  nlohmann::json gen_targets = train_targets;
  if (!refs.empty()) gen_targets = {{"targets", {refs[0]->info.value("endpoint", "")}}};
  g->report = {{"rollout", k}, {"time", nlohmann::json::object()}};
  g->pending = refs.empty() ? 1 : 2;
  auto part_done = [g]() {
    if (--g->pending > 0) return;
    g->done = true;
    if (g->waiter) {
      auto w = std::move(g->waiter);
      g->waiter = nullptr;
      w();
    }
  };
  const double t_gen = now_s();
  ask_all(
      engines,
      [=](RoleEntry& r) {
        return role_message(generate_atom::value, k * parts + r.placement.rank, gen_targets.dump());
      },
      [=](std::vector<nlohmann::json> replies) {
        g->report["generate"] = replies;
        g->report["time"]["rollout"] = now_s() - t_gen;
        part_done();
      });
  if (!refs.empty()) {
    auto next_part = std::make_shared<std::function<void(uint64_t)>>();
    *next_part = [=, this](uint64_t e) {
      if (e == parts) {
        part_done();
        return;
      }
      ask_all(
          refs,
          [=](RoleEntry&) {
            return role_message(compute_ref_atom::value, k * parts + e, train_targets.dump());
          },
          [=, keep = next_part](std::vector<nlohmann::json> replies) {
            g->report["ref"].push_back(replies[0]);
            (*keep)(e + 1);
          });
    };
    (*next_part)(0);
  }
}

void Controller::when_generated(uint64_t k, std::function<void()> then) {
  auto g = st_->generations.at(k);
  if (g->done) {
    then();
  } else {
    g->waiter = std::move(then);
  }
}

void Controller::save_then_continue() {
  // The rollout engines' state for the next rollout (data cursors, prompt indices) first;
  // the train ranks store it in their checkpoint, whose step directory is complete before
  // `latest` moves (actors/resume_state.hpp). Every train rank writes its part (a sharded
  // group's checkpoint is collective).
  SaveRequest req;
  req.dir = st_->options.save_dir;
  req.iteration = st_->rollout;
  ask_all(
      roles_of("rollout"),
      [=](RoleEntry&) { return role_message(save_atom::value, save_request_text(req)); },
      [=, this](std::vector<nlohmann::json> engine_states) mutable {
        req.state["rollout_engines"] = engine_states;
        ask_all(
            roles_of("train"),
            [=](RoleEntry&) { return role_message(save_atom::value, save_request_text(req)); },
            [=, this](std::vector<nlohmann::json> replies) {
              L()->info("checkpoint {} written under {}", replies[0].value("iteration", 0),
                        st_->options.save_dir);
              st_->report["checkpoints"].push_back(replies[0]);
              next_rollout();
            });
      });
}

// One record per optimizer step of the rollout (train rank 0's metrics: a sharded group
// all-reduces them) with the rollout's times, reward and throughput. The step is the
// train ranks' optimizer step count, so a resumed job continues the numbering.
void Controller::log_metrics(const nlohmann::json& rollout_report) {
  if (!st_->hub) return;
  const auto trains = rollout_report.value("train", nlohmann::json::array());
  // --debug-rollout-only: no train rank reports; one record per rollout from the engines.
  const nlohmann::json t = trains.empty() ? nlohmann::json::object() : trains[0];
  if (trains.empty() && !rollout_report.contains("generate")) return;
  const auto steps = t.value("steps", nlohmann::json::array());
  const auto& time = rollout_report["time"];
  double reward_sum = 0, samples = 0, response_tokens = 0;
  for (const auto& g : rollout_report.value("generate", nlohmann::json::array())) {
    reward_sum += g.value("reward_sum", 0.0);
    samples += g.value("samples", 0.0);
    response_tokens += g.value("response_tokens", 0.0);
  }
  metrics::Scalars common = {
      {"rollout", static_cast<double>(rollout_report.value("rollout", 0))},
      {"weight_version", trains.empty() ? rollout_report["generate"][0].value("weight_version", 0.0)
                                        : t.value("weight_version", 0.0)},
      {"rank", t.value("rank", 0.0)},
      {"rollout/samples", samples},
      {"rollout/response_tokens", response_tokens},
  };
  if (samples > 0) common["rollout/reward_mean"] = reward_sum / samples;
  for (const char* k : {"rollout", "train", "sync", "step", "wait_rollout"}) {
    if (time.contains(k)) common[std::string("time/") + k] = time[k].get<double>();
  }
  if (t.contains("seconds")) common["time/train"] = t["seconds"].get<double>();
  if (time.contains("rollout") && time["rollout"].get<double>() > 0) {
    common["perf/tokens_per_s"] = response_tokens / time["rollout"].get<double>();
  }
  if (time.contains("step") && time["step"].get<double>() > 0) {
    common["perf/step_samples_per_s"] = samples / time["step"].get<double>();
  }
  for (const char* k : {"staleness_mean", "staleness_max"}) {
    if (t.contains(k)) common[std::string("async/") + k] = t[k].get<double>();
  }
  int64_t first = st_->metrics_step;
  if (t.contains("optimizer_steps")) {
    first = t["optimizer_steps"].get<int64_t>() - static_cast<int64_t>(steps.size());
  }
  try {
    if (trains.empty()) {
      st_->hub->log(first, common);
      st_->metrics_step = first + 1;
      return;
    }
    for (size_t i = 0; i < steps.size(); ++i) {
      metrics::Scalars scalars = common;
      for (const auto& [name, v] : steps[i].items()) {
        if (v.is_number()) scalars[name] = v.get<double>();
      }
      st_->hub->log(first + static_cast<int64_t>(i), scalars);
    }
  } catch (const std::exception& e) {
    fail(std::string("metrics: ") + e.what());
    return;
  }
  st_->metrics_step = first + static_cast<int64_t>(steps.size());
}

caf::behavior Controller::make_behavior() {
  self_->set_down_handler([this](caf::down_msg& d) { on_down(d); });
  self_->set_exit_handler([this](caf::exit_msg& m) {
    if (m.reason != caf::exit_reason::normal) self_->quit(m.reason);
  });
  self_->delayed_send(self_, std::chrono::milliseconds(st_->options.register_timeout_ms),
                      timeout_atom::value);
  self_->send(self_, heartbeat_atom::value);
  if (st_->options.in_process) self_->send(self_, init_atom::value);
  return {
      [this](init_atom) { place_in_process(); },
      [this](heartbeat_atom) { heartbeat(); },
      [this](deferred_fail_atom, const std::string& message) { fail(message); },
      [this](finish_atom) {
        for (auto& [id, w] : st_->workers) {
          if (!w.down) L()->warn("worker {} did not stop in time", id);
        }
        self_->quit();
      },
      [this](timeout_atom) {
        if (st_->phase == HeadState::Phase::Workers) {
          fail("waited " + std::to_string(st_->options.register_timeout_ms) + " ms for " +
               std::to_string(st_->options.workers) + " workers, " +
               std::to_string(st_->workers.size()) + " registered");
        } else if (st_->phase == HeadState::Phase::Roles) {
          std::string missing;
          for (auto& [k, r] : st_->roles) {
            if (!r.front) missing += (missing.empty() ? "" : ", ") + describe_role(r);
          }
          fail("roles did not register within " + std::to_string(st_->options.register_timeout_ms) +
               " ms: " + missing);
        }
      },
      [this](report_atom, const std::string& k) {
        auto& r = st_->roles[k];
        if (!r.exit_description.empty()) {
          fail(describe_role(r) + " " + r.exit_description);
        } else {
          fail(describe_role(r) + " is unreachable: its connection to the head was lost");
        }
      },
      [this](reg_worker_atom, const std::string& token, const std::string& node_json,
             worker_actor worker) -> caf::result<std::string> {
        if (token != st_->options.token) {
          L()->warn("refused a worker with a wrong job token");
          return caf::make_error(caf::sec::runtime_error, "wrong job token");
        }
        if (st_->phase != HeadState::Phase::Workers) {
          return caf::make_error(
              caf::sec::runtime_error,
              "the job already has its " + std::to_string(st_->workers.size()) + " workers");
        }
        nlohmann::json node;
        try {
          node = nlohmann::json::parse(node_json);
        } catch (const std::exception& e) {
          return caf::make_error(caf::sec::runtime_error,
                                 std::string("malformed node description: ") + e.what());
        }
        std::string id = node.value("node_id", "");
        int devices = node.value("devices", -1);
        if (id.empty() || devices < 0 || st_->workers.count(id) != 0) {
          return caf::make_error(caf::sec::runtime_error,
                                 "node description needs a new node_id and devices >= 0");
        }
        st_->workers[id] = {worker, node.value("hostname", ""), devices, node, false};
        self_->monitor(worker);
        L()->info("worker {} registered ({} devices, {}/{} workers)", id, devices,
                  st_->workers.size(), st_->options.workers);
        if (static_cast<int>(st_->workers.size()) == st_->options.workers) place_and_spawn();
        return std::string("ok");
      },
      [this](reg_role_atom, const std::string& token, const std::string& role, int32_t rank,
             const std::string& node_id, uint64_t pid,
             role_actor front) -> caf::result<std::string> {
        if (token != st_->options.token) {
          L()->warn("refused a role with a wrong job token");
          return caf::make_error(caf::sec::runtime_error, "wrong job token");
        }
        std::string k = key(role, rank);
        auto it = st_->roles.find(k);
        if (it == st_->roles.end() || it->second.front || it->second.placement.node_id != node_id) {
          return caf::make_error(caf::sec::runtime_error, "role " + role + " rank " +
                                                              std::to_string(rank) + " on node " +
                                                              node_id + " was not expected");
        }
        it->second.front = front;
        it->second.pid = pid;
        self_->monitor(front);
        bool all = true;
        for (auto& [kk, r] : st_->roles) all = all && static_cast<bool>(r.front);
        if (all && st_->phase == HeadState::Phase::Roles) start_job();
        return std::string("ok");
      },
      [this](child_exit_atom, const std::string& role, int32_t rank, const std::string& node_id,
             uint64_t pid, const std::string& description, bool requested) {
        auto it = st_->roles.find(key(role, rank));
        if (it == st_->roles.end()) return;
        it->second.exit_description = description;
        if (it->second.pid == 0) it->second.pid = pid;
        if (!requested && st_->phase != HeadState::Phase::Stopping) {
          fail(describe_role(it->second) + " " + description);
        }
        (void)node_id;
      },
  };
}

}  // namespace

int run_head(const HeadOptions& options) {
  caf::actor_system_config cfg;
  configure_caf(cfg, options.token, options.heartbeat_ms, 4 * options.heartbeat_ms + 2000);
  caf::actor_system sys{cfg};
  auto exit_code = std::make_shared<std::atomic<int>>(0);
  auto state = std::make_shared<HeadState>();
  state->options = options;
  state->exit_code = exit_code;
  try {
    state->hub = std::make_shared<metrics::MetricsHub>(options.metrics);
    state->hub->log_config(options.config);
    state->hub->set_status("starting", "waiting for the roles");
  } catch (const std::exception& e) {
    L()->error("{}", e.what());
    return 1;
  }
  if (state->hub->dashboard_port() >= 0) {
    L()->info("dashboard on http://{}:{}/", options.metrics.dashboard_host,
              state->hub->dashboard_port());
  }
  auto controller = sys.spawn([state](caf::event_based_actor* self) {
    auto c = std::make_shared<Controller>(self, state.get());
    self->attach_functor([c, state] {});
    return c->make_behavior();
  });
  if (!options.in_process) {
    // Over TLS when --tls-cert/--tls-key/--tls-ca are given (actors/role_actor.hpp).
    auto port = publish_actor(controller, static_cast<uint16_t>(options.port), options.listen_host);
    if (!port) {
      L()->error("cannot listen on {}:{}: {}", options.listen_host, options.port,
                 sys.render(port.error()));
      caf::anon_send_exit(controller, caf::exit_reason::user_shutdown);
      return 1;
    }
    L()->info("listening on {}:{}, waiting for {} workers", options.listen_host, *port,
              options.workers);
    write_file_atomically(options.port_file, std::to_string(*port));
  }
  sys.await_all_actors_done();
  state->hub->close();
  // --in-process: the roles ran here; whatever shared memory they still name goes now.
  if (options.in_process) runtime::remove_shared_memory_of(::getpid());
  return exit_code->load();
}

}  // namespace anvil::actors

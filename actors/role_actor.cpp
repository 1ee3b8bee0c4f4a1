#include "actors/role_actor.hpp"
#include "backends/common/omp_pool.hpp"

#include "actors/cluster.hpp"
#include "actors/role.hpp"
#include "runtime/tls.hpp"

#include <caf/io/all.hpp>
#ifdef ANVIL_WITH_CAF_OPENSSL
#include <caf/openssl/all.hpp>
#endif
#include <nlohmann/json.hpp>
#include "backends/common/log.hpp"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cstdlib>
#include <functional>

namespace anvil::actors {

namespace {
std::shared_ptr<spdlog::logger> L() { return anvil::log::get("actor"); }
}  // namespace

namespace {

uint64_t fnv1a(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

caf::error role_error(const std::string& text) {
  return caf::make_error(caf::sec::runtime_error, text);
}

// Runs `f` and turns an exception into an error naming the role. Afterwards the role's
// compute thread hands back its OpenMP workers: the next request may be another role's
// (backends/common/omp_pool.hpp).
caf::result<std::string> guarded(const std::string& label, const std::function<std::string()>& f) {
  struct Release {
    ~Release() { release_omp_pool(); }
  } release;
  try {
    return f();
  } catch (const std::exception& e) {
    L()->error("{}: {}", label, e.what());
    return role_error(label + ": " + e.what());
  }
}

role_compute_actor::behavior_type compute_actor(role_compute_actor::pointer self,
                                                std::shared_ptr<Role> role, std::string label) {
  auto need = [label, role](const char* op) {
    if (!role) throw std::runtime_error(std::string("does not handle '") + op + "'");
    return role.get();
  };
  return {
      [=](init_atom) {
        return guarded(label, [&] {
          if (!role) return nlohmann::json{{"role", "weight-sync"}, {"endpoint", ""}}.dump();
          return role->init();
        });
      },
      [=](generate_atom, uint64_t id, const std::string& targets) {
        return guarded(label, [&] { return need("generate")->generate(id, targets); });
      },
      [=](eval_atom) { return guarded(label, [&] { return need("eval")->eval(); }); },
      [=](compute_ref_atom, uint64_t id, const std::string& targets) {
        return guarded(label, [&] { return need("compute-ref")->compute_ref(id, targets); });
      },
      [=](train_atom, uint64_t first, uint64_t parts) {
        return guarded(label, [&] { return need("train")->train(first, parts); });
      },
      [=](push_weights_atom, uint64_t version, const std::string& targets) {
        return guarded(label,
                       [&] { return need("update-weights")->push_weights(version, targets); });
      },
      [=](version_atom) { return guarded(label, [&] { return need("version")->version(); }); },
      [=](save_atom, const std::string& dir) {
        return guarded(label, [&] { return need("save")->save(dir); });
      },
      [=](offload_atom) { return guarded(label, [&] { return need("offload")->offload(); }); },
      [=](onload_atom) { return guarded(label, [&] { return need("onload")->onload(); }); },
      // weight-sync: train rank 0 pushes `version` to every engine (shared memory on its own
      // node, gRPC chunks elsewhere); then each engine is asked which version and checksum
      // it holds, and both must equal what train rank 0 pushed.
      [=](sync_weights_atom, uint64_t version, weight_source_actor train0,
          std::vector<weight_holder_actor> engines,
          const std::string& plan) -> caf::result<std::string> {
        if (role) return role_error(label + ": does not handle 'sync-weights'");
        auto rp = self->make_response_promise<std::string>();
        self->request(train0, caf::infinite, push_weights_atom::value, version, plan)
            .then(
                [=](const std::string& pushed) mutable {
                  auto report = std::make_shared<nlohmann::json>(nlohmann::json::parse(pushed));
                  (*report)["engines"] = nlohmann::json::array();
                  auto ask = std::make_shared<std::function<void(size_t)>>();
                  *ask = [=](size_t i) mutable {
                    if (i == engines.size()) {
                      rp.deliver(report->dump());
                      return;
                    }
                    self->request(engines[i], std::chrono::seconds(60), version_atom::value)
                        .then(
                            [=](const std::string& held) mutable {
                              auto h = nlohmann::json::parse(held);
                              (*report)["engines"].push_back(h);
                              if (h["weight_version"] != (*report)["weight_version"] ||
                                  h["checksum"] != (*report)["checksum"]) {
                                rp.deliver(role_error(
                                    label + ": rollout engine " + std::to_string(i) +
                                    " holds weight version " + h["weight_version"].dump() +
                                    " with checksum " + h["checksum"].dump() +
                                    ", train rank 0 pushed version " +
                                    (*report)["weight_version"].dump() + " with checksum " +
                                    (*report)["checksum"].dump()));
                                return;
                              }
                              (*ask)(i + 1);
                            },
                            [=](caf::error& e) mutable {
                              rp.deliver(
                                  role_error(label + ": rollout engine " + std::to_string(i) +
                                             " version query: " + error_text(self->system(), e)));
                            });
                  };
                  (*ask)(0);
                },
                [=](caf::error& e) mutable {
                  rp.deliver(role_error(label + ": train rank 0 push of version " +
                                        std::to_string(version) + ": " +
                                        error_text(self->system(), e)));
                });
        return rp;
      },
  };
}

role_actor::behavior_type front_actor(role_actor::pointer self, role_compute_actor compute,
                                      std::shared_ptr<Role> role) {
  self->link_to(compute);
  return {
      [=](ping_atom, uint64_t nonce) { return nonce; },
      [=](init_atom a) { return self->delegate(compute, a); },
      [=](generate_atom a, uint64_t id, const std::string& t) {
        return self->delegate(compute, a, id, t);
      },
      [=](compute_ref_atom a, uint64_t id, const std::string& t) {
        return self->delegate(compute, a, id, t);
      },
      [=](train_atom a, uint64_t first, uint64_t parts) {
        return self->delegate(compute, a, first, parts);
      },
      [=](push_weights_atom a, uint64_t v, const std::string& t) {
        return self->delegate(compute, a, v, t);
      },
      [=](version_atom a) { return self->delegate(compute, a); },
      [=](save_atom a, const std::string& dir) { return self->delegate(compute, a, dir); },
      [=](offload_atom a) { return self->delegate(compute, a); },
      [=](onload_atom a) { return self->delegate(compute, a); },
      [=](eval_atom a) { return self->delegate(compute, a); },
      [=](sync_weights_atom a, uint64_t v, weight_source_actor train0,
          std::vector<weight_holder_actor> engines,
          const std::string& plan) { return self->delegate(compute, a, v, train0, engines, plan); },
      [=](stop_atom) {
        if (role) role->cancel();  // a compute thread blocked on data ends now
        self->send_exit(compute, caf::exit_reason::user_shutdown);
        self->quit();
      },
  };
}

}  // namespace

void configure_caf(caf::actor_system_config& cfg, const std::string& token, int heartbeat_ms,
                   int timeout_ms) {
  cfg.load<caf::io::middleman>();
  char id[64];
  std::snprintf(id, sizeof(id), "anvil-job-%016llx",
                static_cast<unsigned long long>(fnv1a("anvil:" + token)));
  cfg.set("middleman.app-identifiers", std::vector<std::string>{id});
  cfg.set("middleman.heartbeat-interval", caf::timespan{std::chrono::milliseconds(heartbeat_ms)});
  cfg.set("middleman.connection-timeout", caf::timespan{std::chrono::milliseconds(timeout_ms)});
  cfg.set("logger.verbosity", caf::atom("quiet"));
  // CAF's default work-stealing scheduler keeps max(cores, 4) workers polling: an idle
  // worker sleeps 50 us at a time for its first 500 polls after every message, ~10k
  // wakeups a second in a running job. Each one preempts a compute thread, and an
  // OpenMP team waits at its next barrier for the preempted member: on two cores the
  // in-process RL step ran 1.7x slower with two intra-op threads than with one. Our
  // event-based actors only route control messages (compute runs in detached actors),
  // so a shared queue whose workers block on a condition variable costs nothing: no
  // polling, ~tens of microseconds of extra latency per message.
  cfg.set("scheduler.policy", caf::atom("sharing"));
  cfg.set("scheduler.max-threads", size_t{2});
  const runtime::TlsConfig& tls = runtime::process_tls();
  if (tls.enabled()) {
#ifdef ANVIL_WITH_CAF_OPENSSL
    // Every CAF link authenticates both ends: each presents its certificate and must
    // see one signed by the CA.
    cfg.load<caf::openssl::manager>();
    cfg.openssl_certificate = tls.cert_file;
    cfg.openssl_key = tls.key_file;
    cfg.openssl_cafile = tls.ca_file;
#else
    throw std::runtime_error(
        "--tls-cert: this anvil was built without CAF's OpenSSL module (libcaf_openssl)");
#endif
  }
  // Typed handles inside messages must be known by name on every node.
  cfg.add_message_type<role_actor>("anvil::role_actor");
  cfg.add_message_type<worker_actor>("anvil::worker_actor");
  cfg.add_message_type<weight_source_actor>("anvil::weight_source_actor");
  cfg.add_message_type<std::vector<weight_holder_actor>>("anvil::weight_holder_actors");
}

caf::expected<uint16_t> publish_actor(const caf::actor& whom, uint16_t port,
                                      const std::string& host) {
#ifdef ANVIL_WITH_CAF_OPENSSL
  if (runtime::process_tls().enabled())
    return caf::openssl::publish(whom, port, host.c_str(), /*reuse=*/false);
#endif
  return whom.home_system().middleman().publish(whom, port, host.c_str(), /*reuse_addr=*/false);
}

caf::expected<caf::actor> connect_actor(caf::actor_system& sys, const std::string& host,
                                        uint16_t port) {
#ifdef ANVIL_WITH_CAF_OPENSSL
  if (runtime::process_tls().enabled()) return caf::openssl::remote_actor(sys, host, port);
#endif
  return sys.middleman().remote_actor(host, port);
}

std::string describe_connect_error(caf::actor_system& sys, const caf::error& err) {
  if (err == caf::sec::incompatible_application_ids) {
    return "the handshake was refused: wrong job token";
  }
  if (err == caf::sec::disconnect_during_handshake) {
    if (runtime::process_tls().enabled()) {
      return "the TLS handshake failed: its certificate is not signed by our --tls-ca " +
             runtime::process_tls().ca_file + " or ours not by its CA, or it does not use TLS (" +
             sys.render(err) + ")";
    }
    return "the connection was dropped during the handshake: does it use TLS? (then pass "
           "--tls-cert, --tls-key and --tls-ca here too) (" +
           sys.render(err) + ")";
  }
  return sys.render(err);
}

std::string error_text(caf::actor_system& sys, const caf::error& err) {
  const caf::message& ctx = err.context();
  if (ctx.size() >= 1 && ctx.match_element<std::string>(ctx.size() - 1)) {
    return ctx.get_as<std::string>(ctx.size() - 1);
  }
  if (err == caf::sec::request_timeout) return "request timed out";
  return sys.render(err);
}

role_actor spawn_role_actor(caf::actor_system& sys, const std::string& role_name, int rank,
                            std::shared_ptr<Role> role, const std::string&) {
  std::string label = "role " + role_name + " rank " + std::to_string(rank);
  auto compute = sys.spawn<caf::detached>(compute_actor, role, label);
  return sys.spawn(front_actor, compute, role);
}

int run_role_process(const RoleProcessOptions& o, std::shared_ptr<Role> role) {
  caf::actor_system_config cfg;
  configure_caf(cfg, o.token, o.heartbeat_ms, 4 * o.heartbeat_ms + 2000);
  caf::actor_system sys{cfg};
  std::string label = "role " + o.role + " rank " + std::to_string(o.rank);
  auto head = connect_actor(sys, o.head_host, static_cast<uint16_t>(o.head_port));
  if (!head) {
    L()->error("{}: cannot reach the head at {}:{}: {}", label, o.head_host, o.head_port,
               describe_connect_error(sys, head.error()));
    return 1;
  }
  role_actor front = spawn_role_actor(sys, o.role, o.rank, std::move(role), o.token);
  int code = 0;
  {
    caf::scoped_actor self{sys};
    bool registered = false;
    self->request(*head, std::chrono::seconds(30), reg_role_atom::value, o.token, o.role,
                  static_cast<int32_t>(o.rank), o.node_id, static_cast<uint64_t>(::getpid()), front)
        .receive([&](const std::string&) { registered = true; },
                 [&](caf::error& e) {
                   L()->error("{}: the head refused registration: {}", label, error_text(sys, e));
                 });
    if (!registered) {
      self->send(front, stop_atom::value);
      return 1;
    }
    self->monitor(*head);
    self->monitor(front);
    bool done = false;
    while (!done) {
      self->receive([&](caf::down_msg& d) {
        if (d.source == head->address()) {
          // The compute actor may be blocked in a long call; nothing here is worth waiting for.
          L()->error("{}: lost the head ({}); exiting", label, sys.render(d.reason));
          L()->flush();
          std::_Exit(1);
        }
        done = true;
      });
    }
  }
  return code;
}

}  // namespace anvil::actors

// The control-plane protocol between head, workers and role processes (CAF 0.17).
//
// Only strings, integers, atoms and actor handles travel here; anything structured is
// JSON text and no message carries a float (the 0.17 serializer breaks on inf/NaN; see
// ../shared/reference/caf-0.17.md). Bulk data goes over gRPC (runtime/data_plane.hpp).
//
// Who sends what (-> request, => reply):
//   worker -> head   (reg_worker, token, node_json, worker)        => head_json | error
//   role   -> head   (reg_role, token, role, rank, node_id, pid, role_front)  => "ok" | error
//   head   -> worker (spawn_role, role, rank, devices_csv, job_args_json)     => pid (uint64)
//   worker -> head   (child_exit, role, rank, node_id, pid, description, requested)  [async]
//   head   -> any    (ping, nonce)                                  => nonce
//   head   -> worker (stop)                                         [async: terminate roles, quit]
// Workers and roles are typed actors (worker_actor, role_actor below): a message a role
// does not declare is a compile error at the sender, and a remote peer that sends one
// gets unexpected_message. The head stays dynamically typed (it also takes its own timer
// messages) and is reached with remote_actor<caf::actor>.
// A role front answers ping itself (so a long train step never looks like a hang) and
// delegates the rest to the role's detached compute actor.
#pragma once

#include <caf/all.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace anvil::actors {

using reg_worker_atom = caf::atom_constant<caf::atom("regworker")>;
using reg_role_atom = caf::atom_constant<caf::atom("regrole")>;
using spawn_role_atom = caf::atom_constant<caf::atom("spawnrole")>;
using child_exit_atom = caf::atom_constant<caf::atom("childexit")>;
using ping_atom = caf::atom_constant<caf::atom("ping")>;
using stop_atom = caf::atom_constant<caf::atom("stop")>;

using init_atom = caf::atom_constant<caf::atom("init")>;
using generate_atom = caf::atom_constant<caf::atom("generate")>;
using compute_ref_atom = caf::atom_constant<caf::atom("computeref")>;
using train_atom = caf::atom_constant<caf::atom("train")>;
using push_weights_atom = caf::atom_constant<caf::atom("pushweight")>;
using version_atom = caf::atom_constant<caf::atom("version")>;
using save_atom = caf::atom_constant<caf::atom("save")>;
using offload_atom = caf::atom_constant<caf::atom("offload")>;
using onload_atom = caf::atom_constant<caf::atom("onload")>;
using sync_weights_atom = caf::atom_constant<caf::atom("syncweight")>;
using eval_atom = caf::atom_constant<caf::atom("eval")>;

// Internal timers of the head.
using heartbeat_atom = caf::atom_constant<caf::atom("heartbeat")>;
using report_atom = caf::atom_constant<caf::atom("report")>;

// What a train rank offers the weight-sync role: push version `v` to the engines of a plan.
using weight_source_actor =
    caf::typed_actor<caf::replies_to<push_weights_atom, uint64_t, std::string>::with<std::string>>;
// What a rollout engine offers the weight-sync role: the version and checksum it holds.
using weight_holder_actor = caf::typed_actor<caf::replies_to<version_atom>::with<std::string>>;

// The operations of a role (the compute actor implements exactly these). Each replies a
// JSON string, or an error naming the role; a role asked for an operation it does not do
// (a rollout engine asked to train) answers an error saying so.
//   (init)                               load the model, start the gRPC receivers
//   (generate, rollout_id, targets_json)  rollout: generate and push a rollout
//   (compute_ref, rollout_id, targets_json)  ref: add reference log-probs, push on
//   (train, first_id, parts)             train: one RL step over the received parts
//   (push_weights, version, plan_json)   train: update-weights, send a version to engines
//   (version)                            {"weight_version", "checksum"}
//   (save, dir)  (offload)  (onload)
//   (eval)                               rollout: held-out evaluation of the weights held
//   (sync_weights, version, train0, engines, plan_json)  weight-sync: move and verify
using role_compute_actor = caf::typed_actor<
    caf::replies_to<init_atom>::with<std::string>,
    caf::replies_to<generate_atom, uint64_t, std::string>::with<std::string>,
    caf::replies_to<compute_ref_atom, uint64_t, std::string>::with<std::string>,
    caf::replies_to<train_atom, uint64_t, uint64_t>::with<std::string>,
    caf::replies_to<push_weights_atom, uint64_t, std::string>::with<std::string>,
    caf::replies_to<version_atom>::with<std::string>,
    caf::replies_to<save_atom, std::string>::with<std::string>,
    caf::replies_to<offload_atom>::with<std::string>,
    caf::replies_to<onload_atom>::with<std::string>, caf::replies_to<eval_atom>::with<std::string>,
    caf::replies_to<sync_weights_atom, uint64_t, weight_source_actor,
                    std::vector<weight_holder_actor>, std::string>::with<std::string>>;

// A role as the head sees it (its front actor): the operations, heartbeats and shutdown.
using role_actor = role_compute_actor::extend<caf::replies_to<ping_atom, uint64_t>::with<uint64_t>,
                                              caf::reacts_to<stop_atom>>;

// A worker daemon as the head sees it.
using worker_actor = caf::typed_actor<caf::replies_to<ping_atom, uint64_t>::with<uint64_t>,
                                      caf::replies_to<spawn_role_atom, std::string, int32_t,
                                                      std::string, std::string>::with<uint64_t>,
                                      caf::reacts_to<stop_atom>>;

// A message for a role, checked at compile time against role_actor (the head keeps
// requests of different operations in one list, so it sends caf::message values).
template <class... Ts>
caf::message role_message(Ts&&... xs) {
  static_assert(caf::response_type<role_actor::signatures,
                                   typename caf::detail::strip_and_convert<Ts>::type...>::valid,
                "not an operation of role_actor (actors/protocol.hpp)");
  return caf::make_message(std::forward<Ts>(xs)...);
}

// CAF settings every anvil process uses: middleman heartbeats every `heartbeat_ms`, a
// connection dropped after `timeout_ms` without traffic, and an application identifier
// derived from the job token, so the BASP handshake itself refuses a peer of another job
// (the token is presented again, and checked, in every registration message). Registers
// the typed handles above so they can travel between processes.
void configure_caf(caf::actor_system_config& cfg, const std::string& token, int heartbeat_ms,
                   int timeout_ms);

}  // namespace anvil::actors

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
// The role interface (what a role front answers; each => a JSON string, or an error):
//   (init)  (generate, rollout_id, targets_json)  (compute_ref, rollout_id, targets_json)
//   (train, rollout_id)  (push_weights, version, targets_json)  (version)  (save, dir)
//   (offload)  (onload)  (sync_weights, version, train0, engines_json)  (stop) [async]
// A role front answers ping itself (so a long train step never looks like a hang) and
// delegates the rest to the role's detached compute actor.
#pragma once

#include <caf/all.hpp>

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

// Internal timers of the head.
using heartbeat_atom = caf::atom_constant<caf::atom("heartbeat")>;
using report_atom = caf::atom_constant<caf::atom("report")>;

// CAF settings every anvil process uses: middleman heartbeats every `heartbeat_ms`, a
// connection dropped after `timeout_ms` without traffic, and an application identifier
// derived from the job token, so the BASP handshake itself refuses a peer of another job
// (the token is presented again, and checked, in every registration message).
void configure_caf(caf::actor_system_config& cfg, const std::string& token, int heartbeat_ms,
                   int timeout_ms);

}  // namespace anvil::actors

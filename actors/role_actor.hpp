// The CAF side of a role: a front actor (answers heartbeats, delegates the rest) and a
// detached compute actor that owns the Role object and calls it. Used by role processes
// and by the head's --in-process mode alike.
#pragma once

#include "actors/protocol.hpp"

#include <memory>
#include <string>

namespace anvil::actors {

class Role;

// Spawns the pair for `role_name` rank `rank`; `role` is nullptr for weight-sync. The
// front quits (and takes the compute actor with it) on `stop`.
role_actor spawn_role_actor(caf::actor_system& sys, const std::string& role_name, int rank,
                            std::shared_ptr<Role> role, const std::string& token);

// Publishes `whom` on `host`:`port` (0: ephemeral) and returns the bound port; over TLS
// (CAF's OpenSSL module, peers must present a certificate signed by --tls-ca) when
// runtime::process_tls() is set, which configure_caf() then has set up.
caf::expected<uint16_t> publish_actor(const caf::actor& whom, uint16_t port,
                                      const std::string& host);
// Connects to the actor published at `host`:`port`, over TLS likewise.
caf::expected<caf::actor> connect_actor(caf::actor_system& sys, const std::string& host,
                                        uint16_t port);

// Why connect_actor() failed, in words: a wrong job token, TLS refused (certificates not
// signed by the CA the other side trusts, or only one side using TLS), or CAF's text.
std::string describe_connect_error(caf::actor_system& sys, const caf::error& err);

// The text of an error a role or peer returned: the message it carries, else CAF's own
// rendering.
std::string error_text(caf::actor_system& sys, const caf::error& err);

}  // namespace anvil::actors

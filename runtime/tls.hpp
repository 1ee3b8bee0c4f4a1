// TLS settings of an anvil process (--tls-cert, --tls-key, --tls-ca). When set, the gRPC
// data plane (runtime/grpc_util.hpp) and the CAF links (actors/role_actor.hpp) use TLS
// with mutual authentication: each side presents the certificate and must present one
// signed by the CA. Without them everything is plaintext, as before. The settings are
// process-wide: the launcher sets them once, before any channel or server exists.
#pragma once

#include <string>

namespace anvil::runtime {

struct TlsConfig {
  std::string cert_file, key_file, ca_file;  // paths, as given
  std::string cert_pem, key_pem, ca_pem;     // their contents
  bool enabled() const { return !cert_file.empty(); }
};

// Reads and checks the three PEM files: all three or none are given; each must be a
// readable PEM file of the right kind, the key must belong to the certificate, and the
// certificate must verify against the CA. Throws anvil::Error naming the flag and file.
TlsConfig load_tls(const std::string& cert_file, const std::string& key_file,
                   const std::string& ca_file);

// The process-wide settings (default: disabled).
void set_process_tls(const TlsConfig& config);
const TlsConfig& process_tls();

}  // namespace anvil::runtime

// A minimal gRPC Health service (anvil.proto.Health) on a loopback port, used by the link
// smoke test and, later, by workers to answer liveness probes. Protobuf types stay out of
// this header so that LibTorch translation units can include it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

namespace anvil::runtime {

class HealthServer {
 public:
  // Starts serving on `host`:0 (an ephemeral port). `node` is echoed in replies; calls
  // whose token differs from `token` are refused with PERMISSION_DENIED.
  HealthServer(const std::string& host, const std::string& node, const std::string& token);
  ~HealthServer();
  HealthServer(const HealthServer&) = delete;
  HealthServer& operator=(const HealthServer&) = delete;

  int port() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Calls Health.Check on `target` ("host:port") with a deadline. Returns the node name on
// success; throws anvil::Error naming the target and the gRPC status otherwise.
std::string check_health(const std::string& target, const std::string& token, uint64_t nonce,
                         int deadline_ms);

}  // namespace anvil::runtime

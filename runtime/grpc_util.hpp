// gRPC helpers shared by every anvil service and client: the job token in call metadata,
// message-size limits, channels and server builders with those settings. Includes gRPC:
// only runtime/ translation units (which do not use the LibTorch PCH) include it.
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>
#include <string_view>

namespace anvil::runtime {

// Metadata key that carries the job token on every call.
inline constexpr const char* kTokenMetadataKey = "x-anvil-token";

// Largest single protobuf message a server or client accepts (bigger ones are refused
// with RESOURCE_EXHAUSTED by gRPC itself). Senders chunk below it.
inline constexpr int kDefaultMaxMessageBytes = 64 << 20;

// PERMISSION_DENIED unless the call's metadata carries `token`; the message names the
// method. Constant-time comparison.
grpc::Status check_token(const grpc::ServerContext& context, const std::string& token,
                         std::string_view method);

// Adds `token` to the call's metadata and sets a deadline `deadline_ms` from now.
void prepare_call(grpc::ClientContext& context, const std::string& token, int64_t deadline_ms);

// A channel to `target` ("host:port"; mutual TLS when runtime::process_tls() is set, else
// plaintext) with the size limit and keepalive pings
// (so a peer that stops answering fails the call instead of hanging it).
std::shared_ptr<grpc::Channel> make_channel(const std::string& target,
                                            int max_message_bytes = kDefaultMaxMessageBytes);

// Starts `service` on `host`:0 (an ephemeral port), or `host`:`port` (mutual TLS when
// runtime::process_tls() is set). Sets the receive size limit. Throws anvil::Error naming the
// address when it cannot listen.
std::unique_ptr<grpc::Server> start_server(const std::string& host, int port,
                                           grpc::Service* service, int* bound_port,
                                           int max_message_bytes = kDefaultMaxMessageBytes);

// "UNAVAILABLE: connection refused" style text for errors.
std::string describe(const grpc::Status& status);

}  // namespace anvil::runtime

#include "runtime/grpc_health.hpp"

#include "backends/common/error.hpp"
#include "proto/anvil.grpc.pb.h"

#include <grpcpp/grpcpp.h>

#include <chrono>

namespace anvil::runtime {
namespace {

class HealthService final : public proto::Health::Service {
 public:
  HealthService(std::string node, std::string token)
      : node_(std::move(node)), token_(std::move(token)) {}

  grpc::Status Check(grpc::ServerContext*, const proto::Ping* request,
                     proto::Pong* reply) override {
    if (request->token() != token_) {
      return {grpc::StatusCode::PERMISSION_DENIED, "Health.Check: wrong job token"};
    }
    reply->set_nonce(request->nonce());
    reply->set_node(node_);
    return grpc::Status::OK;
  }

 private:
  std::string node_;
  std::string token_;
};

}  // namespace

struct HealthServer::Impl {
  HealthService service;
  std::unique_ptr<grpc::Server> server;
  int port = 0;
  Impl(std::string node, std::string token) : service(std::move(node), std::move(token)) {}
};

HealthServer::HealthServer(const std::string& host, const std::string& node,
                           const std::string& token)
    : impl_(std::make_unique<Impl>(node, token)) {
  grpc::ServerBuilder builder;
  builder.AddListeningPort(host + ":0", grpc::InsecureServerCredentials(), &impl_->port);
  builder.RegisterService(&impl_->service);
  impl_->server = builder.BuildAndStart();
  if (!impl_->server || impl_->port == 0) fail("gRPC health server: cannot listen on {}:0", host);
}

HealthServer::~HealthServer() {
  impl_->server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
}

int HealthServer::port() const { return impl_->port; }

std::string check_health(const std::string& target, const std::string& token, uint64_t nonce,
                         int deadline_ms) {
  auto channel = grpc::CreateChannel(target, grpc::InsecureChannelCredentials());
  auto stub = proto::Health::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(deadline_ms));
  proto::Ping ping;
  ping.set_token(token);
  ping.set_nonce(nonce);
  proto::Pong pong;
  grpc::Status status = stub->Check(&context, ping, &pong);
  if (!status.ok()) {
    fail("Health.Check on {}: {} ({})", target, status.error_message(),
         static_cast<int>(status.error_code()));
  }
  if (pong.nonce() != nonce) fail("Health.Check on {}: nonce mismatch", target);
  return pong.node();
}

}  // namespace anvil::runtime

#include "runtime/metrics/dashboard.hpp"

#include "backends/common/error.hpp"
#include "backends/common/log.hpp"

#include <httplib.h>

#include <atomic>
#include <charconv>
#include <chrono>

namespace anvil::metrics {

struct DashboardServer::Impl {
  httplib::Server server;
  std::atomic<bool> listen_returned{false};
};

DashboardServer::DashboardServer(const MetricsStore& store, const std::string& host, int port,
                                 const std::string& title, std::function<double()> clock)
    : impl_(std::make_unique<Impl>()) {
  auto& s = impl_->server;
  s.new_task_queue = [] { return new httplib::ThreadPool(2); };
  // SO_REUSEADDR only: httplib's default adds SO_REUSEPORT, which would let a second job
  // bind the same port and silently take half the requests.
  s.set_socket_options([](socket_t sock) {
    int yes = 1;
    ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  std::string page = dashboard_page(title);
  s.Get("/", [page](const httplib::Request&, httplib::Response& res) {
    res.set_content(page, "text/html; charset=utf-8");
  });
  s.Get("/api/metrics", [&store, clock](const httplib::Request& req, httplib::Response& res) {
    size_t since = 0;
    if (req.has_param("since")) {
      std::string v = req.get_param_value("since");
      auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), since);
      if (ec != std::errc() || end != v.data() + v.size()) {
        res.status = 400;
        res.set_content("since: not a record count: '" + v + "'", "text/plain");
        return;
      }
    }
    res.set_header("Cache-Control", "no-store");
    res.set_content(store.json_since(since, clock()), "application/json");
  });
  if (port == 0) {
    port_ = s.bind_to_any_port(host);
  } else if (port > 0 && port < 65536 && s.bind_to_port(host, port)) {
    port_ = port;
  }
  if (port_ <= 0) {
    fail("--dashboard-port {}: cannot listen on {}:{} (in use, or a bad address/port)", port, host,
         port);
  }
  thread_ = std::thread([this] {
    impl_->server.listen_after_bind();
    impl_->listen_returned = true;
  });
  log::get("metrics")->info("dashboard at http://{}:{}/", host, port_);
}

DashboardServer::~DashboardServer() {
  // stop() only reaches a server that is already in its accept loop.
  while (!impl_->server.is_running() && !impl_->listen_returned) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  impl_->server.stop();
  if (thread_.joinable()) thread_.join();
}

}  // namespace anvil::metrics

// The live dashboard: an HTTP server (cpp-httplib) over a MetricsStore.
//   GET /                      an HTML page with inline JS and CSS (nothing fetched from
//                              elsewhere) that polls /api/metrics every second and draws one
//                              SVG line plot per metric, the latest texts, the job status and
//                              the config.
//   GET /api/metrics?since=N   JSON of the records after the first N (MetricsStore::
//                              json_since); without `since`, everything. A bad N is a 400.
// The page's plots are <svg class="plot" data-metric="NAME" data-points="COUNT"> elements
// (COUNT: the series' finite points) holding one <polyline> of those points, thinned
// evenly to at most 1000 (the last one always kept), so a test (or a script) can read
// them from the DOM.
#pragma once

#include "runtime/metrics/metrics_store.hpp"

#include <functional>
#include <memory>
#include <string>
#include <thread>

namespace anvil::metrics {

// The page served at "/" (dashboard_page.cpp). `title` is HTML-escaped into it.
std::string dashboard_page(const std::string& title);

class DashboardServer {
 public:
  // Binds host:port (0: a free port) and serves on a thread of its own (plus a pool of two
  // for requests). `store` must outlive the server; `clock` gives the "now" in the status.
  // Throws anvil::Error naming --dashboard-port when it cannot bind.
  DashboardServer(const MetricsStore& store, const std::string& host, int port,
                  const std::string& title, std::function<double()> clock);
  // Stops the server and joins its threads.
  ~DashboardServer();
  DashboardServer(const DashboardServer&) = delete;
  DashboardServer& operator=(const DashboardServer&) = delete;

  int port() const { return port_; }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int port_ = -1;
  std::thread thread_;
};

}  // namespace anvil::metrics

#include "runtime/metrics/metrics_hub.hpp"

#include "backends/common/error.hpp"
#include "runtime/metrics/console_sink.hpp"
#include "runtime/metrics/dashboard.hpp"
#include "runtime/metrics/jsonl_sink.hpp"
#include "runtime/metrics/tensorboard_sink.hpp"

#include <chrono>

namespace anvil::metrics {

MetricsHub::MetricsHub(const MetricsOptions& options, std::function<double()> clock)
    : clock_(std::move(clock)) {
  if (!clock_) {
    clock_ = [] {
      return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch())
          .count();
    };
  }
  if (options.console) sinks_.push_back(std::make_unique<ConsoleSink>());
  if (!options.jsonl_path.empty())
    sinks_.push_back(std::make_unique<JsonlSink>(options.jsonl_path));
  if (options.use_tensorboard) {
    sinks_.push_back(std::make_unique<TensorBoardSink>(options.tensorboard_dir, clock_()));
  }
  if (options.dashboard_port >= 0) {
    dashboard_ = std::make_unique<DashboardServer>(
        store_, options.dashboard_host, options.dashboard_port, options.run_name, clock_);
  } else if (options.dashboard_port < -1) {
    fail("--dashboard-port must be -1 (off), 0 (any free port) or a port, got {}",
         options.dashboard_port);
  }
  store_.set_status("starting", "", clock_());
}

MetricsHub::~MetricsHub() {
  try {
    close();
  } catch (const std::exception&) {
    // Closing only flushes files; nothing more to report from a destructor.
  }
}

void MetricsHub::log(int64_t step, const Scalars& scalars, const Texts& texts) {
  std::lock_guard<std::mutex> lock(mu_);
  if (closed_) fail("metrics: log(step {}) after close", step);
  const Record r{step, clock_(), scalars, texts};
  store_.append(r);
  for (auto& s : sinks_) s->write(r);
}

void MetricsHub::log_config(const Config& config) {
  std::lock_guard<std::mutex> lock(mu_);
  if (closed_) fail("metrics: log_config after close");
  store_.set_config(config);
  double now = clock_();
  for (auto& s : sinks_) s->write_config(config, now);
}

void MetricsHub::set_status(const std::string& state, const std::string& detail) {
  std::lock_guard<std::mutex> lock(mu_);
  store_.set_status(state, detail, clock_());
}

void MetricsHub::add_sink(std::unique_ptr<Sink> sink) {
  std::lock_guard<std::mutex> lock(mu_);
  if (closed_) fail("metrics: add_sink after close");
  sinks_.push_back(std::move(sink));
}

int MetricsHub::dashboard_port() const {
  std::lock_guard<std::mutex> lock(mu_);
  return dashboard_ ? dashboard_->port() : -1;
}

void MetricsHub::close() {
  std::unique_ptr<DashboardServer> dashboard;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) return;
    closed_ = true;
    for (auto& s : sinks_) s->close();
    dashboard = std::move(dashboard_);
  }
  dashboard.reset();  // joins the server thread outside the lock
}

}  // namespace anvil::metrics

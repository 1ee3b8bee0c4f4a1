// MetricsHub: where a job's metrics go. The controller (or an SFT loop) calls log() once
// per training step with that step's scalars; the hub stamps the wall time and hands the
// record to every sink it was opened with:
//   - console:     one compact progress line per step (console_sink.hpp gives the format);
//   - JSONL:       one JSON object per step appended to --metrics-jsonl, flushed per line;
//   - TensorBoard: an events.out.tfevents.* file under --tensorboard-dir
//                  (--use-tensorboard), one scalar summary per key;
//   - dashboard:   an HTTP server (--dashboard-port) with a live HTML page of one plot per
//                  metric, polling /api/metrics (dashboard.hpp).
// Records are also kept in memory (MetricsStore) for the dashboard.
//
// Threads: every public method may be called from any thread; calls are serialised, so
// sinks see records in the order log() was called. The dashboard answers HTTP requests
// on threads of its own and reads the store under its lock.
#pragma once

#include "runtime/metrics/metrics_store.hpp"

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace anvil::metrics {

class DashboardServer;

// A destination of records. Implementations are called under the hub's lock, in log order.
class Sink {
 public:
  virtual ~Sink() = default;
  // One step's record. Throws anvil::Error naming the file when it cannot be written.
  virtual void write(const Record& record) = 0;
  // The job's resolved configuration (flag name -> value), logged once at start.
  virtual void write_config(const Config& /*config*/, double /*wall_time*/) {}
  // Flushes and releases files. Called once by MetricsHub::close(); write() is not called
  // afterwards.
  virtual void close() {}
};

// Which sinks a hub opens. Defaults: console only.
struct MetricsOptions {
  bool console = true;                       // progress line per step on stdout
  std::string jsonl_path;                    // --metrics-jsonl; empty: none
  bool use_tensorboard = false;              // --use-tensorboard
  std::string tensorboard_dir;               // --tensorboard-dir (required with use_tensorboard)
  int dashboard_port = -1;                   // --dashboard-port; -1: no dashboard, 0: any free port
  std::string dashboard_host = "127.0.0.1";  // --dashboard-host; 0.0.0.0 to expose it
  std::string run_name = "anvil";            // title of the dashboard page
};

class MetricsHub {
 public:
  // Opens every sink `options` asks for (creating the JSONL file's and the TensorBoard
  // directory's parents) and starts the dashboard. `clock` returns seconds since the Unix
  // epoch (default: the system clock); tests inject a fixed one. Throws anvil::Error naming
  // the flag and the file, directory or port that could not be opened.
  explicit MetricsHub(const MetricsOptions& options, std::function<double()> clock = {});
  // Closes the sinks and stops the dashboard (close()).
  ~MetricsHub();
  MetricsHub(const MetricsHub&) = delete;
  MetricsHub& operator=(const MetricsHub&) = delete;

  // Logs one step: `scalars` (metric name -> value; NaN and infinities are passed on as
  // they are: JSON null, TensorBoard's float) and optional `texts` (name -> string,
  // e.g. a sample response). Names are free-form; "group/name" groups them in TensorBoard.
  // Steps need not be contiguous but should not decrease. Throws anvil::Error when a sink
  // cannot write (the record is still kept for the dashboard).
  void log(int64_t step, const Scalars& scalars, const Texts& texts = {});

  // Logs the resolved configuration (every flag's final value) to the sinks that show it:
  // the dashboard's status panel, a TensorBoard text summary "config". Call once at start.
  void log_config(const Config& config);

  // Sets the job status shown on the dashboard, e.g. ("running", "rollout 3 of 10"),
  // ("finished", ""), ("failed", "train rank 1 exited with 9").
  void set_status(const std::string& state, const std::string& detail = "");

  // Adds a sink of the caller's (e.g. a test's, or a second file).
  void add_sink(std::unique_ptr<Sink> sink);

  // The dashboard's bound TCP port (the kernel's choice when options asked for 0), or -1.
  int dashboard_port() const;

  // The in-memory history (what the dashboard serves).
  const MetricsStore& store() const { return store_; }

  // Flushes and closes every sink and stops the dashboard; log() afterwards throws.
  // Idempotent.
  void close();

 private:
  std::function<double()> clock_;
  mutable std::mutex mu_;
  bool closed_ = false;
  std::vector<std::unique_ptr<Sink>> sinks_;
  MetricsStore store_;
  std::unique_ptr<DashboardServer> dashboard_;
};

}  // namespace anvil::metrics

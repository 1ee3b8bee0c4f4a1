// Records of a job's metrics and the in-memory history the dashboard serves.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace anvil::metrics {

using Scalars = std::map<std::string, double>;      // metric name -> value
using Texts = std::map<std::string, std::string>;   // name -> text
using Config = std::map<std::string, std::string>;  // flag name (no dashes) -> final value

// One logged step.
struct Record {
  int64_t step = 0;
  double wall_time = 0;  // seconds since the Unix epoch
  Scalars scalars;
  Texts texts;
};

// Every record logged so far, the job status and the config. Thread-safe: append() from the
// logging thread, the JSON views from the dashboard's threads.
class MetricsStore {
 public:
  void append(Record record);
  void set_status(const std::string& state, const std::string& detail, double wall_time);
  void set_config(const Config& config);

  // Records appended so far.
  size_t size() const;

  // The dashboard's /api/metrics answer for a client that has seen the first `since`
  // records (0: everything):
  //   {"next": N,                         // records so far; pass as `since` next time
  //    "status": {"state", "detail", "step", "records", "started", "updated", "now"},
  //    "series": {"name": [[step, value], ...], ...},   // points of records since..N-1;
  //                                                      // non-finite values as null
  //    "texts":  {"name": [step, "text"], ...},          // latest text of each name
  //    "config": {...}}                                  // only when since == 0
  // `since` beyond the end gives empty series. `now` is the caller's clock.
  std::string json_since(size_t since, double now) const;

 private:
  mutable std::mutex mu_;
  std::vector<Record> records_;
  Config config_;
  std::string state_ = "starting";
  std::string detail_;
  double started_ = 0;
  double updated_ = 0;
};

}  // namespace anvil::metrics

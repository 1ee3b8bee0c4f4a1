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

// The history of a job's scalars (every point of every series), the latest text of each
// name, the job status and the config. Points are kept compactly (24 bytes each: a run of
// 100k steps x 50 metrics holds ~120 MB); texts only their latest value. Thread-safe:
// append() from the logging thread, the JSON views from the dashboard's threads.
class MetricsStore {
 public:
  void append(const Record& record);
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
  //    "texts":  {"name": [step, "text"], ...},          // latest text of each name, if
  //                                                      // logged in records since..N-1
  //    "config": {...}}                                  // only when since == 0
  // `since` beyond the end gives empty series. `now` is the caller's clock.
  std::string json_since(size_t since, double now) const;

 private:
  struct Point {
    uint64_t record;  // index of the record it came from
    int64_t step;
    double value;
  };
  struct Text {
    uint64_t record;
    int64_t step;
    std::string text;
  };
  mutable std::mutex mu_;
  uint64_t records_ = 0;
  int64_t last_step_ = 0;
  std::map<std::string, std::vector<Point>> series_;
  std::map<std::string, Text> texts_;
  Config config_;
  std::string state_ = "starting";
  std::string detail_;
  double started_ = 0;
  double updated_ = 0;
};

}  // namespace anvil::metrics

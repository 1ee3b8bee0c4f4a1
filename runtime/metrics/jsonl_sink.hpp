// metrics.jsonl: one JSON object per step, appended and flushed line by line so a reader
// (or a crash) never sees half a record. The line has the same shape as the controller's
// earlier per-step lines: every scalar under its own name, integral values written as JSON
// integers (e.g. "rollout": 3, not 3.0), non-finite ones as null, every text as a string,
// and "step": the step. Keys are sorted (nlohmann::json's order).
#pragma once

#include "runtime/metrics/metrics_hub.hpp"

#include <cstdio>
#include <string>

namespace anvil::metrics {

// The JSONL line of `record` (no trailing newline).
std::string format_jsonl_line(const Record& record);

class JsonlSink : public Sink {
 public:
  // Opens `path` for appending, creating its parent directories. Throws anvil::Error naming
  // --metrics-jsonl and the path when it cannot.
  explicit JsonlSink(const std::string& path);
  ~JsonlSink() override;
  void write(const Record& record) override;
  void close() override;

 private:
  std::string path_;
  std::FILE* file_ = nullptr;
};

}  // namespace anvil::metrics

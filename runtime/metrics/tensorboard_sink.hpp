// TensorBoard event files, written without TensorFlow or protobuf.
//
// A file is a sequence of TFRecords:
//   uint64 length (little-endian) | uint32 masked_crc32c(length bytes) |
//   data[length]                  | uint32 masked_crc32c(data)
// with masked_crc32c(x) = rotate_right(crc32c(x), 15) + 0xa282ead8. Each data is a
// serialized tensorflow.Event (tensorboard/compat/proto/event.proto), encoded by hand:
//   Event   { double wall_time = 1; int64 step = 2; string file_version = 3;
//             Summary summary = 5; }
//   Summary { repeated Value value = 1; }
//   Value   { string tag = 1; float simple_value = 2; TensorProto tensor = 8;
//             SummaryMetadata metadata = 9; }
// The first record is Event{wall_time, file_version: "brain.Event:2"}; then one Event per
// step with a simple_value per scalar, and a text summary (plugin "text", a DT_STRING
// scalar tensor) per text. The file is flushed after every step.
#pragma once

#include "runtime/metrics/metrics_hub.hpp"

#include <cstdint>
#include <cstdio>
#include <string>

namespace anvil::metrics {

// TFRecord's masked CRC-32C of `size` bytes.
uint32_t masked_crc32c(const void* data, size_t size);

// `data` framed as one TFRecord.
std::string tfrecord(const std::string& data);

// Serialized Events.
std::string encode_file_version_event(double wall_time);
std::string encode_scalars_event(double wall_time, int64_t step, const Scalars& scalars);
std::string encode_texts_event(double wall_time, int64_t step, const Texts& texts);

class TensorBoardSink : public Sink {
 public:
  // Creates `dir` and a new events.out.tfevents.<seconds>.<host>.<pid>.<n> file in it, and
  // writes the file-version record. Throws anvil::Error naming --tensorboard-dir and the
  // path when it cannot.
  TensorBoardSink(const std::string& dir, double wall_time);
  ~TensorBoardSink() override;
  void write(const Record& record) override;
  // The config as one text summary "config" (a "key: value" line per flag) at step 0.
  void write_config(const Config& config, double wall_time) override;
  void close() override;

  // The event file's path.
  const std::string& path() const { return path_; }

 private:
  void append(const std::string& event);
  std::string path_;
  std::FILE* file_ = nullptr;
};

}  // namespace anvil::metrics

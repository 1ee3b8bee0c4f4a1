// The gRPC data plane: weight versions (train rank -> rollout engine) and rollout samples
// (engine -> ref -> train ranks). Protobuf and gRPC stay out of this header so that actor
// code compiled with LibTorch can include it.
//
// Contracts common to both directions:
//   - every call carries the job token; a wrong or missing token is refused before any
//     payload is read (PERMISSION_DENIED);
//   - messages above the size limit are refused by gRPC (RESOURCE_EXHAUSTED); senders cut
//     their data into parts well below it;
//   - every call has a deadline; HTTP/2 flow control blocks a sender whose receiver is
//     slow, so memory in flight stays bounded;
//   - a receiver validates everything it is sent and answers a clear status naming the
//     tensor / sample and field; nothing a peer sends can crash it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace anvil::runtime {

// ---- weights ---------------------------------------------------------------------------

// Bytes per element of a safetensors dtype string (F32, BF16, ...); 0 when unknown.
size_t dtype_element_size(const std::string& dtype);

// A tensor as the sender holds it: borrowed bytes that must stay valid during the push.
struct TensorView {
  std::string name;  // HF name
  std::string dtype;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;
  size_t bytes = 0;
};

struct ReceivedTensor {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
  uint32_t crc32c = 0;  // of the whole tensor
};

// One complete, verified weight version.
struct WeightVersion {
  uint64_t version = 0;
  std::vector<ReceivedTensor> tensors;  // in the order they were sent
  uint64_t bytes = 0;
  uint64_t chunks = 0;
  bool via_shared_memory = false;
};

struct WeightPushOptions {
  size_t chunk_bytes = 4u << 20;  // data bytes per gRPC message
  int64_t deadline_ms = 600000;
  // Same node: put the whole version in one POSIX shared-memory object and send only the
  // chunk headers over gRPC; the receiver maps it, checks the CRCs and copies.
  bool shared_memory = false;
};

struct WeightPushResult {
  uint64_t version = 0;
  uint64_t chunks = 0;
  uint64_t bytes = 0;
  uint64_t tensors = 0;
};

// Pushes weight versions to the WeightTransfer service at one `target`, keeping the
// channel and (with shared memory) the segment from one version to the next, so a steady
// stream of versions of the same shapes touches no fresh memory. push() streams `tensors`
// as `version` and waits for the acknowledgement; it throws anvil::Error naming the target
// and the receiver's status when the push fails or another version is acknowledged. One
// thread at a time; the segment is unlinked when the pusher is destroyed.
class WeightPusher {
 public:
  WeightPusher(std::string target, std::string token);
  ~WeightPusher();
  WeightPusher(const WeightPusher&) = delete;
  WeightPusher& operator=(const WeightPusher&) = delete;

  WeightPushResult push(uint64_t version, const std::vector<TensorView>& tensors,
                        const WeightPushOptions& options = {});

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// One push through a fresh WeightPusher.
WeightPushResult push_weights(const std::string& target, const std::string& token, uint64_t version,
                              const std::vector<TensorView>& tensors,
                              const WeightPushOptions& options = {});

// Serves WeightTransfer. Each push is verified (CRC of every chunk, tensors covered
// exactly once and in order, dtype * shape == total_bytes, the version totals on the last
// chunk, at most `max_version_bytes`), then handed to `apply` on a gRPC thread; an
// anvil::Error thrown by `apply` fails the push with FAILED_PRECONDITION and its message.
// `apply` must copy what it keeps: the receiver reuses the version's buffers for the next
// one (a staging copy of the model stays allocated between versions). Versions must
// increase. Thread-safe; pushes are applied one at a time.
class WeightReceiver {
 public:
  struct Options {
    std::string host = "127.0.0.1";
    int port = 0;  // 0 = ephemeral
    uint64_t max_version_bytes = uint64_t{64} << 30;
    int max_message_bytes = 64 << 20;
  };
  WeightReceiver(std::string token, Options options,
                 std::function<void(const WeightVersion&)> apply);
  ~WeightReceiver();
  WeightReceiver(const WeightReceiver&) = delete;
  WeightReceiver& operator=(const WeightReceiver&) = delete;

  int port() const;
  uint64_t version() const;  // the last applied version (0 before any)

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// ---- rollout samples -------------------------------------------------------------------

struct WireSample {
  std::vector<int64_t> tokens;  // prompt then response
  int64_t response_length = 0;
  std::vector<float> loss_mask;  // [response_length] or empty
  double reward = 0.0;
  std::vector<float> rollout_logprobs;  // [response_length] or empty
  std::vector<float> ref_logprobs;      // [response_length] or empty
  uint64_t weight_version = 0;
  int64_t group_id = -1;
  int status = 0;  // proto::Sample::Status
  std::string metadata_json;
};

struct Rollout {
  uint64_t rollout_id = 0;
  std::vector<WireSample> samples;
};

struct RolloutPushResult {
  uint64_t samples = 0;
  uint64_t tokens = 0;
};

// Streams `rollout` to the RolloutTransfer service at `target` in parts of about
// `part_bytes`. Throws anvil::Error naming the target and status on failure.
RolloutPushResult push_rollout(const std::string& target, const std::string& token,
                               const Rollout& rollout, int64_t deadline_ms,
                               size_t part_bytes = 4u << 20);

// Serves RolloutTransfer and keeps complete rollouts until take()n. Each sample is
// validated (non-empty tokens, 1 <= response_length < tokens, per-token fields empty or
// [response_length], finite log-probs <= 0); a bad one fails the whole push with
// INVALID_ARGUMENT naming the sample index and field.
class RolloutReceiver {
 public:
  struct Options {
    std::string host = "127.0.0.1";
    int port = 0;
    uint64_t max_rollout_bytes = uint64_t{4} << 30;
    int max_message_bytes = 64 << 20;
  };
  RolloutReceiver(std::string token, Options options);
  ~RolloutReceiver();
  RolloutReceiver(const RolloutReceiver&) = delete;
  RolloutReceiver& operator=(const RolloutReceiver&) = delete;

  int port() const;
  // Waits until rollout `rollout_id` has arrived whole and returns it. Throws anvil::Error
  // naming the id after `timeout_ms`.
  Rollout take(uint64_t rollout_id, int64_t timeout_ms);
  // Makes every take(), waiting now or later, throw anvil::Error with `reason` (the job is
  // stopping: a role thread blocked on data must end). Thread-safe.
  void cancel(const std::string& reason);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace anvil::runtime

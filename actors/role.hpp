// The compute side of a role actor: what the train, ref and rollout roles do when a
// control message arrives. Implementations hold the backend objects (DecoderModel,
// Trainer, the data pipeline) and the gRPC receivers; the CAF actor (role_actor.cpp) only
// turns messages into these calls. Neither CAF nor LibTorch appears in this header.
//
// Every method runs on the role actor's own thread (one call at a time), may block, and
// throws anvil::Error naming what failed; the actor turns that into a caf::error for the
// controller. Arguments and results are JSON text (never floats inside CAF messages).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace anvil::actors {

struct JobOptions;  // actors/job_options.hpp (includes LibTorch headers)

// The roles `anvil actor --role` accepts.
inline const std::vector<std::string>& role_names() {
  static const std::vector<std::string> names = {"train", "ref", "rollout", "weight-sync"};
  return names;
}
// Throws anvil::Error listing the known roles when `role` is not one of them.
void check_role_name(const std::string& role);

class Role {
 public:
  virtual ~Role() = default;
  // Loads the model and starts the gRPC receivers. Returns
  // {"role", "rank", "endpoint": "host:port" or "", "weight_version", "checksum"}.
  virtual std::string init() = 0;
  // rollout: generates rollout `rollout_id` and pushes it to `targets_json`
  // ({"targets": ["host:port", ...]}, samples split by prompt group across them).
  virtual std::string generate(uint64_t rollout_id, const std::string& targets_json);
  // ref: receives rollout `rollout_id`, adds reference log-probs, pushes it on to the
  // targets (the train ranks).
  virtual std::string compute_ref(uint64_t rollout_id, const std::string& targets_json);
  // train: receives the `parts` rollout pieces with ids first_id.. (one per engine), trains
  // on their union as one rollout; returns the step metrics.
  virtual std::string train(uint64_t first_id, uint64_t parts);
  // train: pushes the current weights as `version` to engines
  // ({"targets": [{"endpoint": "host:port", "shared_memory": bool}, ...]}).
  virtual std::string push_weights(uint64_t version, const std::string& targets_json);
  // {"weight_version", "checksum"}: the version held and a CRC-32C over all weights.
  virtual std::string version();
  // train: writes a checkpoint; `request` is its directory or a SaveRequest
  // (actors/resume_state.hpp: directory, iteration, state to store). rollout: writes
  // nothing, returns its state for that checkpoint (data cursor, prompt index).
  virtual std::string save(const std::string& request);
  // Releases the model's memory (rollout / ref / train) until onload().
  virtual std::string offload();
  virtual std::string onload();
  // rollout: evaluates the weights it holds on its share of --eval-prompt-data
  // (rollout/eval): {"prompts", "samples", "correct", "reward_sum", "response_tokens",
  // "truncated", "counts": [[n, c] per prompt]}; the head combines the engines' answers.
  virtual std::string eval();
  // Called on another thread when the job stops: wakes a call of this role blocked waiting
  // for data (a train or ref role waiting for a rollout that will not come), so that the
  // role's thread ends. Must be thread-safe; the default does nothing.
  virtual void cancel() {}

 protected:
  explicit Role(std::string name) : name_(std::move(name)) {}
  [[noreturn]] void unsupported(const char* op) const;
  std::string name_;
};

// Settings every role process shares.
struct RoleContext {
  std::string role;
  int rank = 0;
  std::string node_id;
  std::string token;
  std::string bind_host = "127.0.0.1";  // where gRPC receivers listen
};

// Creates the role's compute object (nothing is loaded until init()). weight-sync has no
// compute object: returns nullptr (its logic lives in the actor).
std::unique_ptr<Role> make_role(const RoleContext& context, const JobOptions& job);

}  // namespace anvil::actors

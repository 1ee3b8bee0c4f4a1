// The rollout engine: continuous-batching generation on the shared decoder
// (backends/models) with a paged KV cache (kv_pool.hpp), chunked prefill, prefix sharing,
// per-request sampling and log-probs equal to the trainer's.
//
// Scheduling, one step():
//   1. Running sequences first, in admission order: a decoding sequence contributes its
//      last token, one still prefilling contributes its next prompt chunk; then waiting
//      requests are admitted in FIFO order while the step's token budget
//      (max_batch_tokens: chunked prefill) and the KV pool allow.
//   2. One forward of the packed step over the pool; sequences whose tokens are all
//      cached sample their next token. Finished sequences leave, their blocks return.
//   When a running sequence needs a block and none is left (after evicting unused prefix
//   cache blocks), the most recently admitted sequence is preempted: its blocks are freed
//   and it waits at the head of the queue to recompute its prompt and output (its random
//   stream continues, so a seeded sample is unchanged).
//
// Prefix sharing: the n samples of one request prefill the prompt once (the first sample
// leads); when its prefill completes the others fork its blocks (copy-on-write on the
// partial last block) and each samples its first token from the same logits with its own
// random stream. Full blocks are also published to a prefix cache (chain-hashed by
// content) that later requests attach to; flush_cache() empties it.
//
// Weight updates (update_weights*): applied between steps. Policy: requests in flight are
// re-queued: their KV and partial output are dropped and they restart from their prompt
// (with their original seed) on the new weights, so every output comes from exactly one
// weight version, recorded in GenerateOutput::weight_version. The prefix cache is flushed.
// For a bucketed update, pause() first, send the buckets, then continue_generation().
//
// Threads: every public method may be called from any thread. With
// EngineOptions::background (the default) an internal thread runs step() whenever there
// is work; otherwise the caller drives step() (deterministic tests).
#pragma once

#include "backends/models/decoder.hpp"
#include "rollout/engine/sampling.hpp"

#include <ATen/core/Tensor.h>

#include <condition_variable>
#include <deque>
#include <filesystem>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace anvil::data {
class Tokenizer;
}

namespace anvil::engine {

class KVPool;

// End-of-sequence ids of an HF model directory: config.json's eos_token_id plus
// generation_config.json's, deduplicated.
std::vector<int64_t> model_eos_token_ids(const std::filesystem::path& dir,
                                         const models::ModelConfig& config);

struct EngineOptions {
  int64_t block_size = 16;
  // KV cache capacity in tokens; 0 = mem_fraction of the host's physical memory (CPU) or of
  // the device's free memory (CUDA).
  int64_t kv_cache_tokens = 0;
  double mem_fraction = 0.05;
  int64_t max_batch_tokens = 2048;  // tokens per step (decode tokens + prefill chunks)
  int64_t max_running = 256;        // sequences in the running batch
  bool prefix_cache = true;
  bool background = true;
  std::string weight_version = "default";
  // Token ids that end a sample (unless ignore_eos); usually config + generation_config.
  std::vector<int64_t> eos_token_ids;
  uint64_t seed = 0;  // seeds the streams of requests that carry none
  // Validates ranges; throws anvil::Error naming the option.
  void validate() const;
};

enum class FinishReason { kStop, kLength, kAbort };
const char* finish_reason_name(FinishReason r);

struct GenerateOutput {
  std::string rid;
  int64_t sample_index = 0;  // 0..n-1
  std::vector<int64_t> input_ids;
  std::vector<int64_t> output_ids;  // including a matched stop token
  // Log-prob of each output token under logits / temperature (temperature 0: logits), fp32
  // values, the trainer's definition.
  std::vector<float> output_logprobs;
  // With GenerateRequest::top_logprobs_num = k > 0: for each output token, the k most likely
  // tokens (id, log-prob under the same scaled logits), most likely first, ties by id.
  std::vector<std::vector<std::pair<int64_t, float>>> output_top_logprobs;
  std::string text;  // decoded output (empty without a tokenizer); stop string trimmed
  FinishReason finish = FinishReason::kLength;
  std::optional<int64_t> matched_token;     // stop token id that ended it
  std::optional<std::string> matched_stop;  // stop string that ended it
  std::string abort_message;                // why, for kAbort
  std::string weight_version;               // the weights every token was sampled with
  int64_t cached_tokens = 0;                // prompt tokens served from shared/cached KV
};

// One step of a sample's output (streaming): the output so far. A weight update re-queues
// requests in flight (see Engine), so a later event may carry a shorter output: the sample
// restarted from its prompt.
struct TokenEvent {
  int64_t sample_index = 0;
  std::span<const int64_t> output_ids;
  std::span<const float> output_logprobs;
  std::span<const std::vector<std::pair<int64_t, float>>> output_top_logprobs;  // or empty
};

struct GenerateRequest {
  std::vector<int64_t> input_ids;  // the prompt, non-empty
  SamplingParams params;
  std::string rid;  // request id, for abort(); may be empty
  // Called once per sample as it finishes (before its future is ready), on the engine's
  // thread with the engine locked: it must be quick and must not call the engine. Used to
  // start rewards while the rest of the batch still generates.
  std::function<void(const GenerateOutput&)> on_finish;
  // Called after each sampled token, on the engine's thread with the engine locked (same
  // rules as on_finish); the last token's event comes before on_finish. For streaming.
  std::function<void(const TokenEvent&)> on_token;
  int64_t top_logprobs_num = 0;  // >= 0; see GenerateOutput::output_top_logprobs
};

struct EngineStats {
  int64_t running = 0, waiting = 0;
  int64_t total_blocks = 0, available_blocks = 0, cached_blocks = 0, block_size = 0;
  int64_t steps = 0, prefill_tokens = 0, decode_tokens = 0, cached_tokens = 0;
  int64_t preemptions = 0;
  bool paused = false, weights_released = false, kv_released = false;
};

class Engine {
 public:
  // Takes the model (weights are updated in place); `tokenizer` (optional) decodes text
  // and matches stop strings. Throws anvil::Error on bad options or a budget too small
  // for one block.
  Engine(std::shared_ptr<models::DecoderModel> model, EngineOptions options,
         std::shared_ptr<const data::Tokenizer> tokenizer = nullptr);
  ~Engine();  // aborts what is in flight, joins the thread
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Queues a request; returns one future per sample (params.n). Throws anvil::Error
  // naming the field for a bad request (empty prompt, id outside the vocabulary, prompt
  // that leaves no room in the context window or the KV cache, bad sampling params).
  std::vector<std::future<GenerateOutput>> submit(GenerateRequest request);
  // Submits all and waits; outputs in order, samples of a request consecutive. Drives
  // step() itself without a background thread.
  std::vector<GenerateOutput> generate(std::vector<GenerateRequest> requests);
  // One scheduling step (manual mode; also allowed with the thread, then it just races it
  // for the lock). Returns whether requests remain.
  bool step();

  // Finishes matching requests now with finish reason abort and their partial output.
  void abort(const std::string& rid);
  void abort_all(const std::string& message = "aborted");

  // Stops scheduling (in-flight requests keep their state) / resumes.
  void pause();
  void continue_generation();
  // Empties the prefix cache. Returns false (and does nothing) while requests run, as
  // SGLang's /flush_cache.
  bool flush_cache();

  // Colocated mode. Releasing the KV cache preempts running requests (they recompute on
  // resume); releasing weights moves them to host memory (a no-op copy on CPU). No step
  // runs until both are resumed.
  void release_memory(bool weights, bool kv_cache);
  void resume_memory(bool weights, bool kv_cache);

  // In-place update by HF tensor name ("model.layers.0.self_attn.q_proj.weight"); shapes
  // must match. All tensors are checked before any is written. With `version`, the engine's
  // weight version becomes it. In-flight requests are re-queued (see top of file).
  void update_weights(const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                      const std::optional<std::string>& version);
  // Every parameter from the safetensors of an HF directory with the same config.
  void update_weights_from_disk(const std::filesystem::path& dir,
                                const std::optional<std::string>& version);
  std::string weight_version() const;

  EngineStats stats() const;
  const models::ModelConfig& config() const;
  int64_t max_context() const;

 private:
  struct Seq;
  bool step_locked();
  void admit_locked(int64_t& budget, std::vector<std::pair<Seq*, int64_t>>& scheduled);
  bool ensure_blocks_locked(Seq& s, int64_t total);
  void preempt_locked(Seq& s);
  void finish_locked(Seq& s, FinishReason reason);
  void fork_followers_locked(Seq& leader);
  void requeue_all_locked();
  void check_finished_locked(Seq& s);
  void thread_main();

  std::shared_ptr<models::DecoderModel> model_;
  EngineOptions options_;
  std::shared_ptr<const data::Tokenizer> tokenizer_;
  std::unique_ptr<KVPool> pool_;
  int64_t max_context_ = 0;

  mutable std::mutex mu_;
  std::condition_variable work_cv_;
  std::deque<std::unique_ptr<Seq>> waiting_;
  std::vector<std::unique_ptr<Seq>> running_;  // in admission order
  uint64_t next_id_ = 1;
  uint64_t seed_counter_ = 0;
  bool paused_ = false, weights_released_ = false, kv_released_ = false, stop_ = false;
  std::vector<at::Tensor> weight_backup_;  // host copies while weights are released
  std::string weight_version_;
  EngineStats counters_;
  std::thread thread_;
};

}  // namespace anvil::engine

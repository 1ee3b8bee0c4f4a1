// The decoder family (Llama, Qwen2, Qwen3) over packed variable-length batches.
//
// One implementation serves trainer, reference and rollout engine, so all three compute
// the same log-probs for the same weights. Letters used in shape comments:
//   T = packed tokens of a batch, S = sequences, H = hidden_size, V = vocab_size,
//   D = head_dim, Nq / Nkv = attention / key-value heads, L = cached length.
#pragma once

#include "backends/models/config.hpp"
#include "backends/models/rope.hpp"
#include "backends/models/weights.hpp"

#include <ATen/core/Tensor.h>

#include <filesystem>
#include <functional>
#include <memory>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace anvil::models {

// Several sequences concatenated into one row. Attention never crosses a sequence
// boundary; positions restart per sequence (or continue from a cache, see KVCache).
struct PackedBatch {
  at::Tensor tokens;              // [T] int64
  at::Tensor positions;           // [T] int64
  std::vector<int64_t> seq_lens;  // [S], sum == T
  // With a KVCache: the cache slot of each sequence; its new tokens follow the slot's
  // cached tokens. Empty when no cache is used.
  std::vector<int64_t> cache_slots;

  // Packs `sequences` with positions 0..n-1 each.
  static PackedBatch pack(const std::vector<std::vector<int64_t>>& sequences,
                          const at::Device& device);
};

// Where attention keeps the keys and values of earlier tokens, per sequence ("slot").
// forward_hidden() calls, for each sequence of a batch: length() once, append() once per
// layer, then commit() once after the last layer. Implementations: KVCache (contiguous,
// below) and the rollout engine's paged cache (rollout/engine/kv_pool.hpp).
class KVStore {
 public:
  virtual ~KVStore() = default;
  // Tokens cached for `slot` (committed by earlier forwards).
  virtual int64_t length(int64_t slot) const = 0;
  // Appends k/v ([Nkv, n, D]) for `slot` at `layer`; returns the full cached K and V
  // ([Nkv, L+n, D]). The slot's length advances after the last layer (commit()).
  virtual std::pair<at::Tensor, at::Tensor> append(int64_t layer, int64_t slot, const at::Tensor& k,
                                                   const at::Tensor& v) = 0;
  virtual void commit(int64_t slot, int64_t n) = 0;
  // Optional batched path: stores the new k/v ([T, Nkv, D], rotated) of every sequence of
  // `batch` at `layer` and returns the attention output [T, Nq * D] of q ([T, Nq, D]),
  // each token seeing its own sequence's cached keys and the new ones up to itself. An
  // undefined tensor (the default) means "not handled": the decoder then calls append()
  // per sequence. `past` holds length() of each sequence, `scale` the softmax scale.
  virtual at::Tensor attend(int64_t layer, const at::Tensor& q, const at::Tensor& k,
                            const at::Tensor& v, const PackedBatch& batch,
                            const std::vector<int64_t>& past, double scale) {
    (void)layer, (void)q, (void)k, (void)v, (void)batch, (void)past, (void)scale;
    return {};
  }
};

// A contiguous per-sequence key/value cache for simple generation (the rollout engine
// has its own paged cache). Slots are independent; not thread-safe.
class KVCache : public KVStore {
 public:
  explicit KVCache(int64_t num_layers) : layers_(num_layers) {}
  int64_t length(int64_t slot) const override;
  void clear(int64_t slot);

  std::pair<at::Tensor, at::Tensor> append(int64_t layer, int64_t slot, const at::Tensor& k,
                                           const at::Tensor& v) override;
  void commit(int64_t slot, int64_t n) override;

 private:
  struct Entry {
    at::Tensor k, v;  // [Nkv, capacity, D]
  };
  std::vector<std::unordered_map<int64_t, Entry>> layers_;
  std::unordered_map<int64_t, int64_t> lengths_;
};

class DecoderModel {
 public:
  // A model with uninitialised parameters of `options` (dtype, device).
  DecoderModel(ModelConfig config, const at::TensorOptions& options);

  // Loads config.json and the safetensors weights of an HF directory.
  static std::unique_ptr<DecoderModel> from_pretrained(const std::filesystem::path& dir,
                                                       at::ScalarType dtype,
                                                       const at::Device& device);

  const ModelConfig& config() const { return config_; }
  const std::vector<ParamSpec>& specs() const { return specs_; }
  // Parameters in spec order. Callers may replace tensors (same shape) or set
  // requires_grad for training.
  std::vector<at::Tensor>& parameters() { return params_; }
  const std::vector<at::Tensor>& parameters() const { return params_; }
  at::Tensor& parameter(std::string_view name);
  at::ScalarType dtype() const { return options_.dtype().toScalarType(); }
  at::Device device() const { return options_.device(); }

  // Final-norm hidden states [T, H] for a packed batch. With `cache`, each sequence's
  // keys/values are appended to its slot and attention covers the cached prefix.
  at::Tensor forward_hidden(const PackedBatch& batch, KVStore* cache = nullptr) const;
  // The output projection [V, H]: lm_head.weight, or the embedding when tied.
  const at::Tensor& lm_head_weight() const { return p(lm_head_ >= 0 ? lm_head_ : embed_); }
  // Logits [T', V] for hidden states [T', H].
  at::Tensor logits(const at::Tensor& hidden) const;
  // forward_hidden + logits.
  at::Tensor forward(const PackedBatch& batch, KVStore* cache = nullptr) const;

  // --gradient-checkpointing: when on and gradients are being recorded, each decoder
  // layer keeps only its input for backward and recomputes its activations there
  // (per-layer recomputation, as transformers' gradient_checkpointing_enable()). Results
  // and gradients are unchanged; peak activation memory falls to about one layer's.
  void set_gradient_checkpointing(bool on) { checkpointing_ = on; }
  bool gradient_checkpointing() const { return checkpointing_; }

  // Inputs every layer shares within one forward pass (shared with recomputation).
  struct LayerInputs {
    PackedBatch batch;
    at::Tensor cos, sin;        // [T, D]
    std::vector<int64_t> past;  // cached length per sequence
    KVStore* cache = nullptr;
  };
  // Replaces how each layer runs in forward_hidden (without a KV cache): a sharded
  // backend gathers the layer's parameters around it. Empty = run layers directly.
  using LayerRunner = std::function<at::Tensor(int layer, const at::Tensor& h,
                                               std::shared_ptr<const LayerInputs> inputs)>;
  void set_layer_runner(LayerRunner runner) { layer_runner_ = std::move(runner); }

  // One decoder layer: h [T, H] -> h [T, H].
  at::Tensor layer_forward(int layer, const at::Tensor& h, const LayerInputs& in) const;
  // The defined parameters of one layer, in a fixed order.
  std::vector<at::Tensor> layer_parameters(int layer) const;

 private:
  struct LayerIndex {
    int input_norm, q_w, q_b, k_w, k_b, v_w, v_b, o_w, o_b, q_norm, k_norm, post_norm, gate_w,
        gate_b, up_w, up_b, down_w, down_b;
  };
  const at::Tensor& p(int index) const;  // undefined tensor for index -1
  // Self-attention of one layer; cos/sin are [T, D], `past` the cached length per sequence.
  at::Tensor attention(int layer, const at::Tensor& x, const PackedBatch& batch,
                       const at::Tensor& cos, const at::Tensor& sin,
                       const std::vector<int64_t>& past, KVStore* cache) const;

  ModelConfig config_;
  at::TensorOptions options_;
  Rope rope_;
  std::vector<ParamSpec> specs_;
  std::vector<at::Tensor> params_;
  std::unordered_map<std::string, int> index_;
  std::vector<LayerIndex> layers_;
  int embed_ = -1, final_norm_ = -1, lm_head_ = -1;
  bool checkpointing_ = false;
  LayerRunner layer_runner_;
};

// fp32 RMSNorm as transformers: x * rsqrt(mean(x^2) + eps) in fp32, cast back, * weight.
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);

// Causal self-attention of packed sequences without a cache: q [T, Nq, D], k and v
// [T, Nkv, D] holding sequences of `seq_lens` (summing to T) back to back; returns
// [T, Nq * D]. Sequences of one length run as one batched call; different lengths as one
// call padded to the longest with a causal, length-limited mask while padding at most
// doubles the tokens (padded query rows see their sequence's keys, never an empty row, and
// are dropped), else one call per sequence. All three agree within fp32 rounding.
at::Tensor causal_packed_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                   const std::vector<int64_t>& seq_lens, double scale);

}  // namespace anvil::models

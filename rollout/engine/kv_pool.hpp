// The rollout engine's paged key/value cache: a fixed pool of blocks of `block_size`
// token positions per layer, handed to sequences through per-sequence block tables, with
// reference counts so sequences (the n samples of one prompt) and the prefix cache share
// blocks, and copy-on-write when a shared block is written.
//
// Letters: P = pool positions (num_blocks * block_size), Nkv = key/value heads,
// D = head_dim, L = cached tokens of a sequence, n = new tokens, T = new tokens of a
// forward (all sequences), Nq = query heads, Sd = decoding sequences of a forward,
// Lmax = the longest of their lengths.
//
// Attention (attend(), the decoder's batched hook): every sequence that adds one token
// (decode) attends in ONE batched call: its keys are gathered from the pool through the
// block tables into a padded [Sd, Nkv, Lmax, D] batch, with a mask when lengths differ.
// Sequences adding several tokens (prefill chunks) attend one by one with a causal mask
// offset by their cached length.
//
// Not thread-safe: the engine calls it from its step under its own lock.
#pragma once

#include "backends/models/decoder.hpp"

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <set>
#include <span>
#include <unordered_map>
#include <vector>

namespace anvil::engine {

struct KVPoolShape {
  int64_t num_layers = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t block_size = 16;
  int64_t num_blocks = 0;
  // Bytes one block takes over all layers (keys and values) in `dtype_bytes` elements.
  int64_t block_bytes(int64_t dtype_bytes) const {
    return 2 * num_layers * num_kv_heads * head_dim * block_size * dtype_bytes;
  }
};

class KVPool : public models::KVStore {
 public:
  // Allocates the pool tensors ([P, Nkv, D] keys and values per layer) with `options`.
  KVPool(KVPoolShape shape, const at::TensorOptions& options);

  const KVPoolShape& shape() const { return shape_; }
  int64_t block_size() const { return shape_.block_size; }
  int64_t num_blocks() const { return shape_.num_blocks; }
  // Blocks that allocation can obtain now: free ones plus prefix-cache blocks no sequence
  // uses (evicted on demand, least recently used first).
  int64_t available_blocks() const;
  int64_t blocks_for(int64_t tokens) const {
    return (tokens + shape_.block_size - 1) / shape_.block_size;
  }

  // --- sequences ("slots"; any int64 id) ---
  // Makes positions [0, total_tokens) of `slot` writable: allocates blocks and copies a
  // shared block that a write at length(slot) would touch (copy-on-write). Returns false
  // and changes nothing when the pool cannot supply the blocks.
  bool reserve(int64_t slot, int64_t total_tokens);
  // `dst` (new) shares every block of `src` and has its length.
  void fork(int64_t src, int64_t dst);
  // Drops the slot's references; blocks nobody references return to the free list.
  void release(int64_t slot);
  bool has_slot(int64_t slot) const { return slots_.count(slot) != 0; }

  // --- prefix cache (full blocks keyed by a hash of all tokens up to their end) ---
  // Attaches to an empty `slot` the longest run of cached full blocks that prefixes
  // `tokens`, leaving at least one token uncached (its logits are needed). Returns the
  // number of tokens attached (a multiple of block_size).
  int64_t attach_prefix(int64_t slot, std::span<const int64_t> tokens);
  // Publishes the slot's full blocks whose tokens (`tokens`, the slot's sequence) are all
  // cached, so later requests with the same prefix reuse them.
  void publish(int64_t slot, std::span<const int64_t> tokens);
  // Forgets every cached block (sequences keep theirs). Call after a weight update.
  void flush_prefix_cache();
  int64_t cached_blocks() const { return static_cast<int64_t>(cache_.size()); }

  // --- memory ---
  // Frees the pool tensors (release_memory_occupation); requires no live slots.
  void release_storage();
  void resume_storage();
  bool storage_released() const { return !k_.empty() && !k_[0].defined(); }

  // --- models::KVStore ---
  int64_t length(int64_t slot) const override;
  std::pair<at::Tensor, at::Tensor> append(int64_t layer, int64_t slot, const at::Tensor& k,
                                           const at::Tensor& v) override;
  void commit(int64_t slot, int64_t n) override;
  at::Tensor attend(int64_t layer, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                    const models::PackedBatch& batch, const std::vector<int64_t>& past,
                    double scale) override;

 private:
  // Index tensors of one forward, built at its first layer and reused by the others;
  // commit() drops them.
  struct Plan {
    bool valid = false;
    int64_t tokens = 0;
    at::Tensor write;  // [T] pool position of each new token
    // Decoding sequences (one new token each).
    int64_t decode_count = 0, lmax = 0;
    bool decode_only = false;  // every sequence decodes: rows are 0..T-1 in order
    at::Tensor decode_rows;    // [Sd] their rows in T
    at::Tensor gather;         // [Sd * Lmax] pool positions, padded with position 0
    at::Tensor mask;           // [Sd, 1, 1, Lmax] bool (true = attend); undefined if no pad
    // The others: row offset, new tokens, cached length, pool positions [L + n].
    struct Chunk {
      int64_t offset, n, past;
      at::Tensor index;
    };
    std::vector<Chunk> chunks;
  };
  void build_plan(const models::PackedBatch& batch, const std::vector<int64_t>& past);

  struct Slot {
    std::vector<int32_t> blocks;
    int64_t length = 0;
    at::Tensor index;  // [length + pending] int64 pool positions, rebuilt lazily
    int64_t index_len = -1;
  };
  struct CacheEntry {
    int32_t block;
    std::vector<int64_t> tokens;  // the block's own tokens (checked on a hit)
    uint64_t last_used;
  };
  int32_t allocate();  // a free block (evicting if needed); -1 when none
  void unref(int32_t block);
  void copy_block(int32_t from, int32_t to);
  const at::Tensor& positions(Slot& s, int64_t total);

  KVPoolShape shape_;
  at::TensorOptions options_;
  std::vector<at::Tensor> k_, v_;  // per layer [P, Nkv, D]
  Plan plan_;
  std::vector<int32_t> refs_;  // per block
  std::vector<int32_t> free_;
  std::unordered_map<int64_t, Slot> slots_;
  std::unordered_map<uint64_t, CacheEntry> cache_;     // chain hash -> block
  std::unordered_map<int32_t, uint64_t> cached_hash_;  // block -> its cache key
  std::set<std::pair<uint64_t, int32_t>> evictable_;   // (last_used, block), refs == 1
  uint64_t clock_ = 0;
};

}  // namespace anvil::engine

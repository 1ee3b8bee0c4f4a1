#include "rollout/engine/kv_pool.hpp"

#include "backends/common/error.hpp"

#include <ATen/ATen.h>

namespace anvil::engine {
namespace {

uint64_t mix(uint64_t x) {  // splitmix64 finaliser
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// Hash of a block's tokens chained onto the hash of everything before it.
uint64_t chain_hash(uint64_t prev, std::span<const int64_t> tokens) {
  uint64_t h = mix(prev ^ 0x6a09e667f3bcc909ULL);
  for (int64_t t : tokens) h = mix(h ^ static_cast<uint64_t>(t));
  return h;
}

}  // namespace

KVPool::KVPool(KVPoolShape shape, const at::TensorOptions& options)
    : shape_(shape), options_(options) {
  if (shape_.block_size <= 0 || shape_.num_blocks <= 0) {
    fail("KV cache: block_size ({}) and num_blocks ({}) must be positive", shape_.block_size,
         shape_.num_blocks);
  }
  k_.resize(static_cast<size_t>(shape_.num_layers));
  v_.resize(static_cast<size_t>(shape_.num_layers));
  resume_storage();
  refs_.assign(static_cast<size_t>(shape_.num_blocks), 0);
  for (int64_t b = shape_.num_blocks - 1; b >= 0; --b) free_.push_back(static_cast<int32_t>(b));
}

void KVPool::resume_storage() {
  const int64_t P = shape_.num_blocks * shape_.block_size;
  for (size_t l = 0; l < k_.size(); ++l) {
    if (k_[l].defined()) continue;
    k_[l] = at::zeros({P, shape_.num_kv_heads, shape_.head_dim}, options_);  // [P, Nkv, D]
    v_[l] = at::zeros({P, shape_.num_kv_heads, shape_.head_dim}, options_);  // [P, Nkv, D]
  }
}

void KVPool::release_storage() {
  ANVIL_CHECK(slots_.empty(), "KV storage released with {} live sequences", slots_.size());
  flush_prefix_cache();
  for (size_t l = 0; l < k_.size(); ++l) {
    k_[l] = at::Tensor();
    v_[l] = at::Tensor();
  }
}

int64_t KVPool::available_blocks() const {
  return static_cast<int64_t>(free_.size() + evictable_.size());
}

int32_t KVPool::allocate() {
  if (free_.empty() && !evictable_.empty()) {
    // Evict the least recently used cached block that no sequence holds.
    int32_t victim = evictable_.begin()->second;
    evictable_.erase(evictable_.begin());
    cache_.erase(cached_hash_.at(victim));
    cached_hash_.erase(victim);
    refs_[static_cast<size_t>(victim)] = 0;
    free_.push_back(victim);
  }
  if (free_.empty()) return -1;
  int32_t b = free_.back();
  free_.pop_back();
  refs_[static_cast<size_t>(b)] = 1;
  return b;
}

void KVPool::unref(int32_t block) {
  int32_t& r = refs_[static_cast<size_t>(block)];
  ANVIL_CHECK(r > 0);
  --r;
  auto cached = cached_hash_.find(block);
  if (r == 0) {
    ANVIL_CHECK(cached == cached_hash_.end());
    free_.push_back(block);
  } else if (r == 1 && cached != cached_hash_.end()) {
    evictable_.insert({cache_.at(cached->second).last_used, block});
  }
}

void KVPool::copy_block(int32_t from, int32_t to) {
  const int64_t bs = shape_.block_size;
  for (size_t l = 0; l < k_.size(); ++l) {
    k_[l].narrow(0, to * bs, bs).copy_(k_[l].narrow(0, from * bs, bs));
    v_[l].narrow(0, to * bs, bs).copy_(v_[l].narrow(0, from * bs, bs));
  }
}

bool KVPool::reserve(int64_t slot, int64_t total_tokens) {
  Slot& s = slots_[slot];
  const int64_t bs = shape_.block_size;
  const int64_t have = static_cast<int64_t>(s.blocks.size());
  const int64_t need = blocks_for(total_tokens);
  // The block holding position `length` is written next; copy it if shared.
  const int64_t first_write = s.length / bs;
  const bool cow = s.length < total_tokens && first_write < have &&
                   refs_[static_cast<size_t>(s.blocks[static_cast<size_t>(first_write)])] > 1;
  const int64_t wanted = std::max<int64_t>(0, need - have) + (cow ? 1 : 0);
  if (wanted > available_blocks()) {
    if (s.blocks.empty() && s.length == 0) slots_.erase(slot);
    return false;
  }
  if (cow) {
    int32_t& shared = s.blocks[static_cast<size_t>(first_write)];
    int32_t fresh = allocate();
    copy_block(shared, fresh);
    unref(shared);
    shared = fresh;
    s.index_len = -1;
  }
  while (static_cast<int64_t>(s.blocks.size()) < need) {
    int32_t b = allocate();
    ANVIL_CHECK(b >= 0);
    s.blocks.push_back(b);
  }
  return true;
}

void KVPool::fork(int64_t src, int64_t dst) {
  const Slot& from = slots_.at(src);
  ANVIL_CHECK(slots_.count(dst) == 0, "fork into live slot {}", dst);
  Slot to;
  to.blocks = from.blocks;
  to.length = from.length;
  for (int32_t b : to.blocks) {
    if (refs_[static_cast<size_t>(b)]++ == 1 && cached_hash_.count(b) != 0) {
      evictable_.erase({cache_.at(cached_hash_.at(b)).last_used, b});
    }
  }
  slots_.emplace(dst, std::move(to));
}

void KVPool::release(int64_t slot) {
  auto it = slots_.find(slot);
  if (it == slots_.end()) return;
  // Release from the end so that, with equal timestamps, deeper blocks are evicted first.
  for (auto b = it->second.blocks.rbegin(); b != it->second.blocks.rend(); ++b) unref(*b);
  slots_.erase(it);
}

int64_t KVPool::attach_prefix(int64_t slot, std::span<const int64_t> tokens) {
  Slot& s = slots_[slot];
  ANVIL_CHECK(s.blocks.empty() && s.length == 0, "attach_prefix on a non-empty slot");
  const int64_t bs = shape_.block_size;
  uint64_t h = 0;
  int64_t matched = 0;
  ++clock_;
  // Keep at least one token to compute: its hidden state gives the next token's logits.
  while (matched + bs <= static_cast<int64_t>(tokens.size()) - 1) {
    auto block_tokens = tokens.subspan(static_cast<size_t>(matched), static_cast<size_t>(bs));
    h = chain_hash(h, block_tokens);
    auto it = cache_.find(h);
    if (it == cache_.end() ||
        !std::equal(block_tokens.begin(), block_tokens.end(), it->second.tokens.begin())) {
      break;
    }
    int32_t b = it->second.block;
    if (refs_[static_cast<size_t>(b)]++ == 1) evictable_.erase({it->second.last_used, b});
    it->second.last_used = clock_;
    s.blocks.push_back(b);
    matched += bs;
  }
  s.length = matched;
  s.index_len = -1;
  if (s.blocks.empty()) slots_.erase(slot);
  return matched;
}

void KVPool::publish(int64_t slot, std::span<const int64_t> tokens) {
  auto it = slots_.find(slot);
  if (it == slots_.end()) return;
  Slot& s = it->second;
  const int64_t bs = shape_.block_size;
  const int64_t full = std::min<int64_t>(s.length, static_cast<int64_t>(tokens.size())) / bs;
  uint64_t h = 0;
  ++clock_;
  for (int64_t i = 0; i < full; ++i) {
    auto block_tokens = tokens.subspan(static_cast<size_t>(i * bs), static_cast<size_t>(bs));
    h = chain_hash(h, block_tokens);
    int32_t b = s.blocks[static_cast<size_t>(i)];
    auto known = cached_hash_.find(b);
    if (known != cached_hash_.end()) {
      cache_.at(known->second).last_used = clock_;
      continue;
    }
    if (cache_.count(h) != 0) continue;  // same content cached in another block
    cache_.emplace(h, CacheEntry{b, {block_tokens.begin(), block_tokens.end()}, clock_});
    cached_hash_.emplace(b, h);
    ++refs_[static_cast<size_t>(b)];  // the cache's own reference
  }
}

void KVPool::flush_prefix_cache() {
  std::vector<int32_t> blocks;
  for (const auto& [b, h] : cached_hash_) blocks.push_back(b);
  cache_.clear();
  cached_hash_.clear();
  evictable_.clear();
  for (int32_t b : blocks) unref(b);
}

int64_t KVPool::length(int64_t slot) const {
  auto it = slots_.find(slot);
  return it == slots_.end() ? 0 : it->second.length;
}

const at::Tensor& KVPool::positions(Slot& s, int64_t total) {
  if (s.index_len != total) {
    ANVIL_CHECK(blocks_for(total) <= static_cast<int64_t>(s.blocks.size()),
                "KV write past reserved blocks ({} tokens, {} blocks)", total, s.blocks.size());
    std::vector<int64_t> idx(static_cast<size_t>(total));
    const int64_t bs = shape_.block_size;
    for (int64_t p = 0; p < total; ++p) {
      idx[static_cast<size_t>(p)] = s.blocks[static_cast<size_t>(p / bs)] * bs + p % bs;
    }
    s.index = at::tensor(idx, at::kLong).to(options_.device());
    s.index_len = total;
  }
  return s.index;
}

std::pair<at::Tensor, at::Tensor> KVPool::append(int64_t layer, int64_t slot, const at::Tensor& k,
                                                 const at::Tensor& v) {
  ANVIL_CHECK(!storage_released(), "KV cache used while released");
  Slot& s = slots_.at(slot);
  const int64_t n = k.size(1);
  const at::Tensor& idx = positions(s, s.length + n);  // [L+n]
  at::Tensor& K = k_[static_cast<size_t>(layer)];
  at::Tensor& V = v_[static_cast<size_t>(layer)];
  at::Tensor fresh = idx.narrow(0, s.length, n);
  K.index_copy_(0, fresh, k.transpose(0, 1));
  V.index_copy_(0, fresh, v.transpose(0, 1));
  return {K.index_select(0, idx).transpose(0, 1),
          V.index_select(0, idx).transpose(0, 1)};  // [Nkv, L+n, D]
}

void KVPool::commit(int64_t slot, int64_t n) {
  slots_.at(slot).length += n;
  plan_.valid = false;
}

void KVPool::build_plan(const models::PackedBatch& batch, const std::vector<int64_t>& past) {
  const int64_t bs = shape_.block_size;
  const size_t S = batch.seq_lens.size();
  Plan plan;
  std::vector<int64_t> write, rows;
  std::vector<size_t> decoding;
  int64_t offset = 0;
  for (size_t i = 0; i < S; ++i) {
    const int64_t n = batch.seq_lens[i];
    Slot& s = slots_.at(batch.cache_slots[i]);
    ANVIL_CHECK(s.length == past[i], "KV slot {}: length {} but the forward assumed {}",
                batch.cache_slots[i], s.length, past[i]);
    ANVIL_CHECK(blocks_for(s.length + n) <= static_cast<int64_t>(s.blocks.size()),
                "KV write past reserved blocks ({} tokens, {} blocks)", s.length + n,
                s.blocks.size());
    for (int64_t p = s.length; p < s.length + n; ++p) {
      write.push_back(s.blocks[static_cast<size_t>(p / bs)] * bs + p % bs);
    }
    if (n == 1) {
      decoding.push_back(i);
      rows.push_back(offset);
      plan.lmax = std::max(plan.lmax, s.length + 1);
    } else {
      plan.chunks.push_back({offset, n, s.length, positions(s, s.length + n)});
    }
    offset += n;
  }
  const at::Device device = options_.device();
  plan.tokens = offset;
  plan.write = at::tensor(write, at::kLong).to(device);
  plan.decode_count = static_cast<int64_t>(decoding.size());
  plan.decode_only = decoding.size() == S;
  if (!decoding.empty()) {
    const int64_t Sd = plan.decode_count, L = plan.lmax;
    std::vector<int64_t> gather(static_cast<size_t>(Sd * L), 0);
    std::vector<uint8_t> mask(static_cast<size_t>(Sd * L), 0);
    bool padded = false;
    for (int64_t d = 0; d < Sd; ++d) {
      const size_t i = decoding[static_cast<size_t>(d)];
      const Slot& s = slots_.at(batch.cache_slots[i]);
      const int64_t len = s.length + 1;
      padded = padded || len != L;
      for (int64_t p = 0; p < len; ++p) {
        gather[static_cast<size_t>(d * L + p)] =
            s.blocks[static_cast<size_t>(p / bs)] * bs + p % bs;
        mask[static_cast<size_t>(d * L + p)] = 1;
      }
    }
    plan.gather = at::tensor(gather, at::kLong).to(device);
    if (padded) {
      plan.mask = at::from_blob(mask.data(), {Sd, 1, 1, L}, at::kByte)
                      .to(at::TensorOptions().dtype(at::kBool).device(device));
    }
    if (!plan.decode_only) plan.decode_rows = at::tensor(rows, at::kLong).to(device);
  }
  plan.valid = true;
  plan_ = std::move(plan);
}

at::Tensor KVPool::attend(int64_t layer, const at::Tensor& q, const at::Tensor& k,
                          const at::Tensor& v, const models::PackedBatch& batch,
                          const std::vector<int64_t>& past, double scale) {
  ANVIL_CHECK(!storage_released(), "KV cache used while released");
  const int64_t T = q.size(0), Nq = q.size(1), D = q.size(2), Nkv = k.size(1);
  if (!plan_.valid || layer == 0) build_plan(batch, past);
  ANVIL_CHECK(plan_.tokens == T, "KV plan for {} tokens used with {}", plan_.tokens, T);
  at::Tensor& K = k_[static_cast<size_t>(layer)];  // [P, Nkv, D]
  at::Tensor& V = v_[static_cast<size_t>(layer)];
  K.index_copy_(0, plan_.write, k);
  V.index_copy_(0, plan_.write, v);
  const bool gqa = Nq != Nkv;

  // Decoding sequences: one padded batched attention over their gathered keys.
  at::Tensor decoded;  // [Sd, Nq * D]
  if (plan_.decode_count > 0) {
    const int64_t Sd = plan_.decode_count, L = plan_.lmax;
    at::Tensor qd = plan_.decode_only ? q : q.index_select(0, plan_.decode_rows);  // [Sd, Nq, D]
    at::Tensor kd = K.index_select(0, plan_.gather).view({Sd, L, Nkv, D}).transpose(1, 2);
    at::Tensor vd = V.index_select(0, plan_.gather).view({Sd, L, Nkv, D}).transpose(1, 2);
    std::optional<at::Tensor> mask;
    if (plan_.mask.defined()) mask = plan_.mask;
    decoded = at::scaled_dot_product_attention(qd.unsqueeze(2), kd, vd, mask, 0.0,
                                               /*is_causal=*/false, scale, gqa)  // [Sd, Nq, 1, D]
                  .view({Sd, Nq * D});
    if (plan_.decode_only) return decoded;
  }
  at::Tensor out = at::empty({T, Nq * D}, q.options());  // [T, Nq*D]
  if (decoded.defined()) out.index_copy_(0, plan_.decode_rows, decoded);
  // Prefill chunks: query i of a chunk sits at position past + i and sees keys 0..past+i.
  for (const Plan::Chunk& c : plan_.chunks) {
    at::Tensor qs = q.narrow(0, c.offset, c.n).transpose(0, 1);  // [Nq, n, D]
    at::Tensor ks = K.index_select(0, c.index).transpose(0, 1);  // [Nkv, L+n, D]
    at::Tensor vs = V.index_select(0, c.index).transpose(0, 1);
    std::optional<at::Tensor> mask;
    if (c.past > 0) {
      at::Tensor key_pos = at::arange(c.past + c.n, at::TensorOptions().device(q.device()));
      at::Tensor query_pos = at::arange(c.n, key_pos.options()) + c.past;
      mask = key_pos.unsqueeze(0) <= query_pos.unsqueeze(1);  // [n, L+n] bool
    }
    at::Tensor o =
        at::scaled_dot_product_attention(qs.unsqueeze(0), ks.unsqueeze(0), vs.unsqueeze(0), mask,
                                         0.0, c.past == 0, scale, gqa);  // [1, Nq, n, D]
    out.narrow(0, c.offset, c.n).copy_(o.squeeze(0).transpose(0, 1).reshape({c.n, Nq * D}));
  }
  return out;
}

}  // namespace anvil::engine

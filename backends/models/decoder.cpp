#include "backends/models/decoder.hpp"

#include "backends/common/error.hpp"

#include <ATen/ATen.h>

#include <cmath>
#include <numeric>

namespace anvil::models {

PackedBatch PackedBatch::pack(const std::vector<std::vector<int64_t>>& sequences,
                              const at::Device& device) {
  PackedBatch b;
  std::vector<int64_t> tokens, positions;
  for (const auto& seq : sequences) {
    if (seq.empty()) fail("PackedBatch: empty sequence");
    b.seq_lens.push_back(static_cast<int64_t>(seq.size()));
    for (size_t i = 0; i < seq.size(); ++i) {
      tokens.push_back(seq[i]);
      positions.push_back(static_cast<int64_t>(i));
    }
  }
  b.tokens = at::tensor(tokens, at::kLong).to(device);
  b.positions = at::tensor(positions, at::kLong).to(device);
  return b;
}

// ---------------------------------------------------------------------------------------
// KVCache

int64_t KVCache::length(int64_t slot) const {
  auto it = lengths_.find(slot);
  return it == lengths_.end() ? 0 : it->second;
}

void KVCache::clear(int64_t slot) {
  lengths_.erase(slot);
  for (auto& layer : layers_) layer.erase(slot);
}

std::pair<at::Tensor, at::Tensor> KVCache::append(int64_t layer, int64_t slot, const at::Tensor& k,
                                                  const at::Tensor& v) {
  ANVIL_CHECK(layer >= 0 && layer < static_cast<int64_t>(layers_.size()));
  const int64_t past = length(slot);
  const int64_t n = k.size(1);
  Entry& e = layers_[layer][slot];
  if (!e.k.defined() || e.k.size(1) < past + n) {
    // Grow geometrically so appending one token at a time stays amortised O(1).
    int64_t capacity = std::max<int64_t>(64, 2 * (past + n));
    at::Tensor nk = at::empty({k.size(0), capacity, k.size(2)}, k.options());
    at::Tensor nv = at::empty({v.size(0), capacity, v.size(2)}, v.options());
    if (past > 0) {
      nk.narrow(1, 0, past).copy_(e.k.narrow(1, 0, past));
      nv.narrow(1, 0, past).copy_(e.v.narrow(1, 0, past));
    }
    e.k = nk;
    e.v = nv;
  }
  e.k.narrow(1, past, n).copy_(k);
  e.v.narrow(1, past, n).copy_(v);
  return {e.k.narrow(1, 0, past + n), e.v.narrow(1, 0, past + n)};
}

void KVCache::commit(int64_t slot, int64_t n) { lengths_[slot] = length(slot) + n; }

// ---------------------------------------------------------------------------------------
// DecoderModel

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  at::Tensor h = x.to(at::kFloat);
  at::Tensor variance = h.pow(2).mean(-1, /*keepdim=*/true);
  h = h * at::rsqrt(variance + eps);
  return weight * h.to(x.scalar_type());
}

DecoderModel::DecoderModel(ModelConfig config, const at::TensorOptions& options)
    : config_(std::move(config)),
      options_(options),
      rope_(config_),
      specs_(parameter_specs(config_)) {
  params_.resize(specs_.size());
  for (size_t i = 0; i < specs_.size(); ++i) index_[specs_[i].name] = static_cast<int>(i);
  auto find = [&](const std::string& name) {
    auto it = index_.find(name);
    return it == index_.end() ? -1 : it->second;
  };
  embed_ = find("model.embed_tokens.weight");
  final_norm_ = find("model.norm.weight");
  lm_head_ = find("lm_head.weight");
  for (int64_t l = 0; l < config_.num_hidden_layers; ++l) {
    std::string p = "model.layers." + std::to_string(l) + ".";
    layers_.push_back(
        LayerIndex{find(p + "input_layernorm.weight"), find(p + "self_attn.q_proj.weight"),
                   find(p + "self_attn.q_proj.bias"), find(p + "self_attn.k_proj.weight"),
                   find(p + "self_attn.k_proj.bias"), find(p + "self_attn.v_proj.weight"),
                   find(p + "self_attn.v_proj.bias"), find(p + "self_attn.o_proj.weight"),
                   find(p + "self_attn.o_proj.bias"), find(p + "self_attn.q_norm.weight"),
                   find(p + "self_attn.k_norm.weight"), find(p + "post_attention_layernorm.weight"),
                   find(p + "mlp.gate_proj.weight"), find(p + "mlp.gate_proj.bias"),
                   find(p + "mlp.up_proj.weight"), find(p + "mlp.up_proj.bias"),
                   find(p + "mlp.down_proj.weight"), find(p + "mlp.down_proj.bias")});
  }
  ANVIL_CHECK(embed_ >= 0 && final_norm_ >= 0);
}

std::unique_ptr<DecoderModel> DecoderModel::from_pretrained(const std::filesystem::path& dir,
                                                            at::ScalarType dtype,
                                                            const at::Device& device) {
  ModelConfig config = ModelConfig::load(dir);
  auto options = at::TensorOptions().dtype(dtype).device(device);
  auto model = std::make_unique<DecoderModel>(config, options);
  model->params_ = load_parameters(dir, model->specs_, options);
  return model;
}

at::Tensor& DecoderModel::parameter(std::string_view name) {
  auto it = index_.find(std::string(name));
  if (it == index_.end()) fail("model has no parameter '{}'", name);
  return params_[it->second];
}

const at::Tensor& DecoderModel::p(int index) const {
  static const at::Tensor kUndefined;
  return index < 0 ? kUndefined : params_[index];
}

at::Tensor DecoderModel::attention(int layer, const at::Tensor& x, const PackedBatch& batch,
                                   const at::Tensor& cos, const at::Tensor& sin,
                                   const std::vector<int64_t>& past, KVCache* cache) const {
  const LayerIndex& w = layers_[layer];
  const int64_t T = x.size(0);
  const int64_t D = config_.head_dim;
  const int64_t nq = config_.num_attention_heads;
  const int64_t nkv = config_.num_key_value_heads;
  at::Tensor q = at::linear(x, p(w.q_w), p(w.q_b)).view({T, nq, D});   // [T, Nq, D]
  at::Tensor k = at::linear(x, p(w.k_w), p(w.k_b)).view({T, nkv, D});  // [T, Nkv, D]
  at::Tensor v = at::linear(x, p(w.v_w), p(w.v_b)).view({T, nkv, D});  // [T, Nkv, D]
  if (config_.qk_norm) {
    q = rms_norm(q, p(w.q_norm), config_.rms_norm_eps);
    k = rms_norm(k, p(w.k_norm), config_.rms_norm_eps);
  }
  q = apply_rotary(q, cos, sin);
  k = apply_rotary(k, cos, sin);
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  const bool gqa = nq != nkv;
  const size_t S = batch.seq_lens.size();

  // Without a cache, sequences of one length run as one batched attention call.
  if (cache == nullptr && S > 1 &&
      std::all_of(batch.seq_lens.begin(), batch.seq_lens.end(),
                  [&](int64_t n) { return n == batch.seq_lens[0]; })) {
    const int64_t n = batch.seq_lens[0];
    auto heads_first = [&](const at::Tensor& t, int64_t h) {
      return t.view({static_cast<int64_t>(S), n, h, D}).transpose(1, 2);  // [S, h, n, D]
    };
    at::Tensor o = at::scaled_dot_product_attention(heads_first(q, nq), heads_first(k, nkv),
                                                    heads_first(v, nkv), std::nullopt, 0.0,
                                                    /*is_causal=*/true, scale, gqa);
    return at::linear(o.transpose(1, 2).reshape({T, nq * D}), p(w.o_w), p(w.o_b));
  }

  std::vector<at::Tensor> outputs;
  outputs.reserve(S);
  int64_t offset = 0;
  for (size_t s = 0; s < S; ++s) {
    const int64_t n = batch.seq_lens[s];
    at::Tensor qs = q.narrow(0, offset, n).transpose(0, 1);  // [Nq, n, D]
    at::Tensor ks = k.narrow(0, offset, n).transpose(0, 1);  // [Nkv, n, D]
    at::Tensor vs = v.narrow(0, offset, n).transpose(0, 1);  // [Nkv, n, D]
    std::optional<at::Tensor> mask;
    bool causal = true;
    if (cache != nullptr) {
      std::tie(ks, vs) = cache->append(layer, batch.cache_slots[s], ks, vs);  // [Nkv, L+n, D]
      const int64_t p0 = past[s];
      if (p0 > 0) {
        causal = false;
        if (n > 1) {
          // Query i sits at absolute position p0 + i and sees keys 0..p0+i.
          at::Tensor key_pos = at::arange(p0 + n, at::TensorOptions().device(x.device()));
          at::Tensor query_pos = at::arange(n, key_pos.options()) + p0;
          mask = key_pos.unsqueeze(0) <= query_pos.unsqueeze(1);  // [n, L+n] bool
        }
      }
    }
    at::Tensor o = at::scaled_dot_product_attention(qs.unsqueeze(0), ks.unsqueeze(0),
                                                    vs.unsqueeze(0), mask, 0.0, causal, scale,
                                                    gqa);  // [1, Nq, n, D]
    outputs.push_back(o.squeeze(0).transpose(0, 1).reshape({n, nq * D}));
    offset += n;
  }
  at::Tensor attn = outputs.size() == 1 ? outputs[0] : at::cat(outputs, 0);  // [T, Nq*D]
  return at::linear(attn, p(w.o_w), p(w.o_b));
}

at::Tensor DecoderModel::forward_hidden(const PackedBatch& batch, KVCache* cache) const {
  const int64_t T = batch.tokens.size(0);
  int64_t total = std::accumulate(batch.seq_lens.begin(), batch.seq_lens.end(), int64_t{0});
  if (total != T || batch.positions.size(0) != T) {
    fail("PackedBatch: {} tokens, {} positions, sequence lengths summing to {}", T,
         batch.positions.size(0), total);
  }
  if (cache != nullptr && batch.cache_slots.size() != batch.seq_lens.size()) {
    fail("PackedBatch: {} cache slots for {} sequences", batch.cache_slots.size(),
         batch.seq_lens.size());
  }
  for (const at::Tensor& t : params_) {
    if (!t.defined()) fail("DecoderModel: parameters are not initialised");
  }
  if (T > 0) {
    int64_t lo = batch.tokens.min().item<int64_t>();
    int64_t hi = batch.tokens.max().item<int64_t>();
    if (lo < 0 || hi >= config_.vocab_size) {
      fail("token id out of range [0, {}): found {}", config_.vocab_size, lo < 0 ? lo : hi);
    }
  }

  // Rotary tables per sequence, joined to [T, D]. Dynamic NTK uses each sequence's length.
  std::vector<at::Tensor> cos_parts, sin_parts;
  std::vector<int64_t> past(batch.seq_lens.size(), 0);
  at::Tensor positions_cpu = batch.positions.to(at::kCPU);
  const int64_t* pos = positions_cpu.data_ptr<int64_t>();
  int64_t offset = 0;
  for (size_t s = 0; s < batch.seq_lens.size(); ++s) {
    const int64_t n = batch.seq_lens[s];
    if (cache != nullptr) past[s] = cache->length(batch.cache_slots[s]);
    int64_t max_pos = *std::max_element(pos + offset, pos + offset + n);
    auto [c, sn] = rope_.cos_sin(batch.positions.narrow(0, offset, n), dtype(), max_pos + 1);
    cos_parts.push_back(c);
    sin_parts.push_back(sn);
    offset += n;
  }
  at::Tensor cos = cos_parts.size() == 1 ? cos_parts[0] : at::cat(cos_parts, 0);  // [T, D]
  at::Tensor sin = sin_parts.size() == 1 ? sin_parts[0] : at::cat(sin_parts, 0);  // [T, D]

  at::Tensor h = at::embedding(p(embed_), batch.tokens);  // [T, H]
  for (size_t l = 0; l < layers_.size(); ++l) {
    const LayerIndex& w = layers_[l];
    at::Tensor x = rms_norm(h, p(w.input_norm), config_.rms_norm_eps);
    h = h + attention(static_cast<int>(l), x, batch, cos, sin, past, cache);
    x = rms_norm(h, p(w.post_norm), config_.rms_norm_eps);
    at::Tensor gate = at::silu(at::linear(x, p(w.gate_w), p(w.gate_b)));  // [T, I]
    at::Tensor up = at::linear(x, p(w.up_w), p(w.up_b));                  // [T, I]
    h = h + at::linear(gate * up, p(w.down_w), p(w.down_b));
  }
  if (cache != nullptr) {
    for (size_t s = 0; s < batch.seq_lens.size(); ++s) {
      cache->commit(batch.cache_slots[s], batch.seq_lens[s]);
    }
  }
  return rms_norm(h, p(final_norm_), config_.rms_norm_eps);
}

at::Tensor DecoderModel::logits(const at::Tensor& hidden) const {
  return at::linear(hidden, lm_head_weight());
}

at::Tensor DecoderModel::forward(const PackedBatch& batch, KVCache* cache) const {
  return logits(forward_hidden(batch, cache));
}

}  // namespace anvil::models

#include "backends/models/decoder.hpp"

#include "backends/common/error.hpp"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

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
// Gradient checkpointing (LibTorch has no torch.utils.checkpoint): an autograd function
// whose forward runs a layer without recording and whose backward re-runs it with
// recording on, then backpropagates through the recomputed graph. The layer's parameters
// are inputs of the function so their gradients reach them.

namespace {

struct LayerRecompute : torch::CustomClassHolder {
  const DecoderModel* model = nullptr;
  int layer = 0;
  std::shared_ptr<const DecoderModel::LayerInputs> inputs;
};

struct CheckpointedLayer : public torch::autograd::Function<CheckpointedLayer> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx,
                                                const at::Tensor& h, at::TensorList params,
                                                c10::intrusive_ptr<LayerRecompute> recompute) {
    ctx->save_for_backward({h});
    at::Tensor out = recompute->model->layer_forward(recompute->layer, h, *recompute->inputs);
    ctx->saved_data["recompute"] = c10::IValue::make_capsule(std::move(recompute));
    return {out};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto recompute = c10::static_intrusive_pointer_cast<LayerRecompute>(
        ctx->saved_data["recompute"].toCapsule());
    std::vector<at::Tensor> params = recompute->model->layer_parameters(recompute->layer);
    at::Tensor h = ctx->get_saved_variables()[0].detach().requires_grad_(true);
    at::Tensor out;
    {
      at::AutoGradMode enable(true);
      out = recompute->model->layer_forward(recompute->layer, h, *recompute->inputs);
    }
    std::vector<at::Tensor> wrt{h};
    for (const at::Tensor& p : params) wrt.push_back(p);
    // allow_unused: a parameter that does not require grad (frozen) gets no gradient.
    std::vector<at::Tensor> g =
        torch::autograd::grad({out}, wrt, {grads[0]}, /*retain_graph=*/false,
                              /*create_graph=*/false, /*allow_unused=*/true);
    g.push_back(at::Tensor());  // the recompute capsule
    return g;
  }
};

}  // namespace

static at::Tensor checkpointed_layer(const DecoderModel& model, int layer, const at::Tensor& h,
                                     std::shared_ptr<const DecoderModel::LayerInputs> inputs) {
  auto recompute = c10::make_intrusive<LayerRecompute>();
  recompute->model = &model;
  recompute->layer = layer;
  recompute->inputs = std::move(inputs);
  std::vector<at::Tensor> params = model.layer_parameters(layer);
  return CheckpointedLayer::apply(h, at::TensorList(params), std::move(recompute))[0];
}

// ---------------------------------------------------------------------------------------
// DecoderModel

at::Tensor causal_packed_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                   const std::vector<int64_t>& seq_lens, double scale) {
  const int64_t T = q.size(0), nq = q.size(1), nkv = k.size(1), D = q.size(2);
  const int64_t S = static_cast<int64_t>(seq_lens.size());
  const bool gqa = nq != nkv;
  const int64_t L = S == 0 ? 0 : *std::max_element(seq_lens.begin(), seq_lens.end());
  if (S > 1 && S * L == T) {  // every sequence as long as the longest: [S, h, L, D]
    auto heads_first = [&](const at::Tensor& t) {
      return t.view({S, L, t.size(1), D}).transpose(1, 2);
    };
    at::Tensor o = at::scaled_dot_product_attention(heads_first(q), heads_first(k), heads_first(v),
                                                    std::nullopt, 0.0,
                                                    /*is_causal=*/true, scale, gqa);
    return o.transpose(1, 2).reshape({T, nq * D});
  }
  if (S > 1 && S * L <= 2 * T) {
    // One padded call: a launch, an OpenMP region and their backward per layer instead of
    // per sequence (64 short GRPO samples made 64 of each).
    std::vector<int64_t> gather_rows(static_cast<size_t>(S * L), T), keep_rows;
    keep_rows.reserve(static_cast<size_t>(T));
    int64_t off = 0;
    for (int64_t s = 0; s < S; ++s) {
      const int64_t n = seq_lens[static_cast<size_t>(s)];
      for (int64_t j = 0; j < n; ++j) {
        gather_rows[static_cast<size_t>(s * L + j)] = off + j;  // row T is a zero row
        keep_rows.push_back(s * L + j);
      }
      off += n;
    }
    const at::Device dev = q.device();
    at::Tensor gather_idx = at::tensor(gather_rows, at::kLong).to(dev);
    auto padded = [&](const at::Tensor& t) {  // [T, h, D] -> [S, h, L, D]
      at::Tensor z = at::cat({t, at::zeros({1, t.size(1), D}, t.options())}, 0);
      return z.index_select(0, gather_idx).view({S, L, t.size(1), D}).transpose(1, 2);
    };
    at::Tensor pos = at::arange(L, at::TensorOptions().dtype(at::kLong).device(dev));
    at::Tensor len = at::tensor(seq_lens, at::kLong).to(dev).view({S, 1, 1, 1});
    at::Tensor mask = (pos.view({1, 1, 1, L}) <= pos.view({1, 1, L, 1})) &
                      (pos.view({1, 1, 1, L}) < len);  // [S, 1, L, L]: key <= query, < n
    at::Tensor o = at::scaled_dot_product_attention(padded(q), padded(k), padded(v), mask, 0.0,
                                                    /*is_causal=*/false, scale, gqa);
    return o.transpose(1, 2)
        .reshape({S * L, nq * D})
        .index_select(0, at::tensor(keep_rows, at::kLong).to(dev));
  }
  std::vector<at::Tensor> outputs;
  int64_t off = 0;
  for (int64_t n : seq_lens) {
    at::Tensor o = at::scaled_dot_product_attention(
        q.narrow(0, off, n).transpose(0, 1).unsqueeze(0),
        k.narrow(0, off, n).transpose(0, 1).unsqueeze(0),
        v.narrow(0, off, n).transpose(0, 1).unsqueeze(0), std::nullopt, 0.0,
        /*is_causal=*/true, scale, gqa);  // [1, Nq, n, D]
    outputs.push_back(o.squeeze(0).transpose(0, 1).reshape({n, nq * D}));
    off += n;
  }
  return outputs.size() == 1 ? outputs[0] : at::cat(outputs, 0);
}

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
                                   const std::vector<int64_t>& past, KVStore* cache) const {
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

  if (cache == nullptr) {  // training, scoring: the packed sequences themselves
    return at::linear(causal_packed_attention(q, k, v, batch.seq_lens, scale), p(w.o_w), p(w.o_b));
  }
  // A cache that attends the whole batch at once (the rollout engine's paged pool).
  at::Tensor attended = cache->attend(layer, q, k, v, batch, past, scale);  // [T, Nq*D]
  if (attended.defined()) return at::linear(attended, p(w.o_w), p(w.o_b));

  // Otherwise each sequence against its cached keys.
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
    at::Tensor o = at::scaled_dot_product_attention(qs.unsqueeze(0), ks.unsqueeze(0),
                                                    vs.unsqueeze(0), mask, 0.0, causal, scale,
                                                    gqa);  // [1, Nq, n, D]
    outputs.push_back(o.squeeze(0).transpose(0, 1).reshape({n, nq * D}));
    offset += n;
  }
  at::Tensor attn = outputs.size() == 1 ? outputs[0] : at::cat(outputs, 0);  // [T, Nq*D]
  return at::linear(attn, p(w.o_w), p(w.o_b));
}

at::Tensor DecoderModel::forward_hidden(const PackedBatch& batch, KVStore* cache) const {
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

  // Rotary tables per sequence, joined to [T, D]. Dynamic NTK uses each sequence's length;
  // every other type is a function of the position alone, so one call covers the batch
  // with the same values.
  std::vector<at::Tensor> cos_parts, sin_parts;
  std::vector<int64_t> past(batch.seq_lens.size(), 0);
  at::Tensor positions_cpu = batch.positions.to(at::kCPU);
  const int64_t* pos = positions_cpu.data_ptr<int64_t>();
  const bool per_sequence_rope = config_.rope.type == "dynamic";
  int64_t offset = 0;
  for (size_t s = 0; s < batch.seq_lens.size(); ++s) {
    const int64_t n = batch.seq_lens[s];
    if (cache != nullptr) past[s] = cache->length(batch.cache_slots[s]);
    if (per_sequence_rope) {
      int64_t max_pos = *std::max_element(pos + offset, pos + offset + n);
      auto [c, sn] = rope_.cos_sin(batch.positions.narrow(0, offset, n), dtype(), max_pos + 1);
      cos_parts.push_back(c);
      sin_parts.push_back(sn);
    }
    offset += n;
  }
  if (!per_sequence_rope && T > 0) {
    int64_t max_pos = *std::max_element(pos, pos + T);
    auto [c, sn] = rope_.cos_sin(batch.positions, dtype(), max_pos + 1);
    cos_parts.push_back(c);
    sin_parts.push_back(sn);
  }
  at::Tensor cos = cos_parts.size() == 1 ? cos_parts[0] : at::cat(cos_parts, 0);  // [T, D]
  at::Tensor sin = sin_parts.size() == 1 ? sin_parts[0] : at::cat(sin_parts, 0);  // [T, D]

  auto in = std::make_shared<LayerInputs>();
  in->batch = batch;
  in->cos = cos;
  in->sin = sin;
  in->past = std::move(past);
  in->cache = cache;
  const bool checkpoint = checkpointing_ && cache == nullptr && at::GradMode::is_enabled();
  at::Tensor h = at::embedding(p(embed_), batch.tokens);  // [T, H]
  for (size_t l = 0; l < layers_.size(); ++l) {
    if (layer_runner_ && cache == nullptr) {
      h = layer_runner_(static_cast<int>(l), h, in);
    } else {
      h = checkpoint ? checkpointed_layer(*this, static_cast<int>(l), h, in)
                     : layer_forward(static_cast<int>(l), h, *in);
    }
  }
  if (cache != nullptr) {
    for (size_t s = 0; s < batch.seq_lens.size(); ++s) {
      cache->commit(batch.cache_slots[s], batch.seq_lens[s]);
    }
  }
  return rms_norm(h, p(final_norm_), config_.rms_norm_eps);
}

at::Tensor DecoderModel::layer_forward(int layer, const at::Tensor& h,
                                       const LayerInputs& in) const {
  const LayerIndex& w = layers_[static_cast<size_t>(layer)];
  at::Tensor x = rms_norm(h, p(w.input_norm), config_.rms_norm_eps);
  at::Tensor out = h + attention(layer, x, in.batch, in.cos, in.sin, in.past, in.cache);
  x = rms_norm(out, p(w.post_norm), config_.rms_norm_eps);
  at::Tensor gate = at::silu(at::linear(x, p(w.gate_w), p(w.gate_b)));  // [T, I]
  at::Tensor up = at::linear(x, p(w.up_w), p(w.up_b));                  // [T, I]
  return out + at::linear(gate * up, p(w.down_w), p(w.down_b));
}

std::vector<at::Tensor> DecoderModel::layer_parameters(int layer) const {
  const LayerIndex& w = layers_[static_cast<size_t>(layer)];
  std::vector<at::Tensor> out;
  for (int index :
       {w.input_norm, w.q_w, w.q_b, w.k_w, w.k_b, w.v_w, w.v_b, w.o_w, w.o_b, w.q_norm, w.k_norm,
        w.post_norm, w.gate_w, w.gate_b, w.up_w, w.up_b, w.down_w, w.down_b}) {
    if (index >= 0) out.push_back(params_[static_cast<size_t>(index)]);
  }
  return out;
}

at::Tensor DecoderModel::logits(const at::Tensor& hidden) const {
  return at::linear(hidden, lm_head_weight());
}

at::Tensor DecoderModel::forward(const PackedBatch& batch, KVStore* cache) const {
  return logits(forward_hidden(batch, cache));
}

}  // namespace anvil::models

#include "backends/models/weights.hpp"

#include "backends/common/error.hpp"
#include "backends/common/log.hpp"
#include "backends/models/dtype.hpp"
#include "backends/models/safetensors.hpp"

#include <ATen/ATen.h>

#include <set>

namespace anvil::models {

std::vector<ParamSpec> parameter_specs(const ModelConfig& c) {
  const int64_t H = c.hidden_size;
  const int64_t I = c.intermediate_size;
  const int64_t D = c.head_dim;
  const int64_t q_out = c.num_attention_heads * D;
  const int64_t kv_out = c.num_key_value_heads * D;
  std::vector<ParamSpec> specs;
  specs.push_back({"model.embed_tokens.weight", {c.vocab_size, H}, ParamKind::kEmbedding});
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    auto linear = [&](const std::string& name, int64_t out, int64_t in, bool bias) {
      specs.push_back({p + name + ".weight", {out, in}, ParamKind::kLinear});
      if (bias) specs.push_back({p + name + ".bias", {out}, ParamKind::kBias});
    };
    specs.push_back({p + "input_layernorm.weight", {H}, ParamKind::kNorm});
    linear("self_attn.q_proj", q_out, H, c.qkv_bias);
    linear("self_attn.k_proj", kv_out, H, c.qkv_bias);
    linear("self_attn.v_proj", kv_out, H, c.qkv_bias);
    linear("self_attn.o_proj", H, q_out, c.o_bias);
    if (c.qk_norm) {
      specs.push_back({p + "self_attn.q_norm.weight", {D}, ParamKind::kNorm});
      specs.push_back({p + "self_attn.k_norm.weight", {D}, ParamKind::kNorm});
    }
    specs.push_back({p + "post_attention_layernorm.weight", {H}, ParamKind::kNorm});
    linear("mlp.gate_proj", I, H, c.mlp_bias);
    linear("mlp.up_proj", I, H, c.mlp_bias);
    linear("mlp.down_proj", H, I, c.mlp_bias);
  }
  specs.push_back({"model.norm.weight", {H}, ParamKind::kNorm});
  if (!c.tie_word_embeddings) {
    specs.push_back({"lm_head.weight", {c.vocab_size, H}, ParamKind::kLinear});
  }
  return specs;
}

std::vector<at::Tensor> load_parameters(const std::filesystem::path& dir,
                                        const std::vector<ParamSpec>& specs,
                                        const at::TensorOptions& options) {
  CheckpointReader reader = CheckpointReader::open(dir);
  std::vector<at::Tensor> params;
  params.reserve(specs.size());
  std::set<std::string> expected;
  for (const ParamSpec& spec : specs) {
    expected.insert(spec.name);
    if (!reader.contains(spec.name)) {
      fail("{}: checkpoint has no tensor '{}'", dir.string(), spec.name);
    }
    const TensorInfo& info = reader.info(spec.name);
    if (info.shape != spec.shape) {
      fail("{}: tensor '{}' has shape [{}], the config expects [{}]", dir.string(), spec.name,
           fmt::join(info.shape, ", "), fmt::join(spec.shape, ", "));
    }
    params.push_back(reader.load(spec.name).to(options));
  }
  for (const std::string& name : reader.names()) {
    if (expected.count(name) != 0) continue;
    // transformers ignores these too: stale rotary buffers, and a duplicated head when
    // the embeddings are tied.
    if (name.ends_with("rotary_emb.inv_freq") || name == "lm_head.weight") {
      log::get("models")->debug("{}: ignoring tensor '{}'", dir.string(), name);
      continue;
    }
    fail("{}: unexpected tensor '{}' (not part of this {} config)", dir.string(), name, "model");
  }
  return params;
}

std::vector<at::Tensor> init_parameters(const ModelConfig& config,
                                        const std::vector<ParamSpec>& specs, uint64_t seed,
                                        const at::TensorOptions& options) {
  // Draw everything in fp32 on the CPU from one generator, so a seed gives the same
  // weights whatever the target dtype or device.
  at::Generator gen = at::detail::createCPUGenerator(seed);
  std::vector<at::Tensor> params;
  params.reserve(specs.size());
  for (const ParamSpec& spec : specs) {
    at::Tensor t = at::empty(spec.shape, at::kFloat);
    switch (spec.kind) {
      case ParamKind::kEmbedding:
      case ParamKind::kLinear:
      case ParamKind::kBias:
        t.normal_(0.0, config.initializer_range, gen);
        break;
      case ParamKind::kNorm:
        t.normal_(1.0, 0.05, gen);
        break;
    }
    params.push_back(t.to(options));
  }
  return params;
}

at::ScalarType parse_dtype_name(const std::string& name) {
  if (name == "float32" || name == "fp32") return at::kFloat;
  if (name == "bfloat16" || name == "bf16") return at::kBFloat16;
  if (name == "float16" || name == "fp16") return at::kHalf;
  fail("dtype '{}' is not supported (float32, bfloat16, float16)", name);
}

void save_parameters(const std::filesystem::path& dir, const std::vector<ParamSpec>& specs,
                     const std::vector<at::Tensor>& params, at::ScalarType dtype,
                     uint64_t max_shard_bytes) {
  ANVIL_CHECK(specs.size() == params.size());
  CheckpointWriter writer(dir, max_shard_bytes);
  for (size_t i = 0; i < specs.size(); ++i) {
    writer.add(specs[i].name, params[i].detach().to(at::kCPU, dtype).contiguous());
  }
  writer.finish();
}

}  // namespace anvil::models

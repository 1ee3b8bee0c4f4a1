// The parameters of a decoder model, by HuggingFace name, in HF order.
//
// parameter_specs() is the single table of names and shapes that loading, random
// initialisation, saving and (later) sharding all use.
#pragma once

#include "backends/models/config.hpp"

#include <ATen/core/Tensor.h>

#include <filesystem>
#include <string>
#include <vector>

namespace anvil::models {

enum class ParamKind { kEmbedding, kLinear, kBias, kNorm };

struct ParamSpec {
  std::string name;            // e.g. model.layers.0.self_attn.q_proj.weight
  std::vector<int64_t> shape;  // e.g. [Nq*D, H]
  ParamKind kind;
};

// Every parameter of the model described by `config`. With tie_word_embeddings there is
// no lm_head.weight (the head reuses model.embed_tokens.weight).
std::vector<ParamSpec> parameter_specs(const ModelConfig& config);

// Reads the parameters listed in `specs` from the HF checkpoint at `dir` (model.safetensors
// or a sharded index) into tensors of `options` (dtype, device), in spec order.
// Errors name the checkpoint and tensor: a missing tensor, a shape mismatch, or an
// unexpected tensor (except rotary inv_freq buffers and an lm_head.weight that duplicates
// tied embeddings, which transformers also ignores).
std::vector<at::Tensor> load_parameters(const std::filesystem::path& dir,
                                        const std::vector<ParamSpec>& specs,
                                        const at::TensorOptions& options);

// Random initialisation with `seed`: linear and embedding weights ~ N(0, initializer_range),
// biases ~ N(0, initializer_range), norm weights ~ 1 + N(0, 0.05) (perturbed from 1 so
// that tests exercise every weight). Deterministic for a seed on any machine.
std::vector<at::Tensor> init_parameters(const ModelConfig& config,
                                        const std::vector<ParamSpec>& specs, uint64_t seed,
                                        const at::TensorOptions& options);

// Writes `params` (spec order) as HF safetensors into `dir` (sharded above
// `max_shard_bytes`), converted to `dtype`.
// "float32"|"fp32", "bfloat16"|"bf16", "float16"|"fp16" -> at::ScalarType; else anvil::Error.
at::ScalarType parse_dtype_name(const std::string& name);

void save_parameters(const std::filesystem::path& dir, const std::vector<ParamSpec>& specs,
                     const std::vector<at::Tensor>& params, at::ScalarType dtype,
                     uint64_t max_shard_bytes);

}  // namespace anvil::models

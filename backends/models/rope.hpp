// Rotary position embeddings for the decoder family.
//
// Every rope type computes inv_freq in fp32 with the same tensor operations transformers
// uses, so cos/sin tables match it bit for bit. D = head_dim, T = tokens of one sequence.
#pragma once

#include "backends/models/config.hpp"

#include <ATen/core/Tensor.h>

#include <utility>

namespace anvil::models {

class Rope {
 public:
  explicit Rope(const ModelConfig& config);

  // cos and sin, each [T, D] in `dtype`, for `positions` ([T] int64) of one sequence.
  // `seq_len` is that sequence's largest position + 1: dynamic NTK scaling recomputes the
  // frequencies when it exceeds max_position_embeddings (as transformers does for a model
  // that sees this sequence alone; see docs/models.md).
  std::pair<at::Tensor, at::Tensor> cos_sin(const at::Tensor& positions, at::ScalarType dtype,
                                            int64_t seq_len) const;

  const at::Tensor& inv_freq() const { return inv_freq_; }  // [D/2] fp32
  double attention_scaling() const { return attention_scaling_; }

 private:
  ModelConfig config_;
  at::Tensor inv_freq_;  // [D/2] fp32, for sequences within max_position_embeddings
  double attention_scaling_ = 1.0;
};

// Applies the rotation to x: [T, heads, D] with cos/sin [T, D]. Returns [T, heads, D].
at::Tensor apply_rotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

}  // namespace anvil::models

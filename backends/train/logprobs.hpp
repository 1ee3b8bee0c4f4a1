// Per-token log-probs under logits / temperature: the one definition trainer, reference
// and rollout engine share (DESIGN.md, "Numerical contract").
//
// T = tokens, H = hidden, V = vocab. Logits are produced `chunk_tokens` rows at a time and
// upcast to fp32 per chunk, so fp32 [T, V] logits never exist for the whole batch.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace anvil::train {

struct LogProbOptions {
  double temperature = 1.0;     // must be > 0
  int64_t chunk_tokens = 1024;  // rows of logits materialised at once
  bool with_entropy = false;
};

struct LogProbResult {
  at::Tensor logprobs;  // [T] fp32: log softmax(logits[t] / temperature)[targets[t]]
  at::Tensor entropy;   // [T] fp32 when requested, else undefined
};

// hidden: [T, H] final-norm hidden states; lm_head: [V, H]; targets: [T] int64.
// Differentiable through hidden and lm_head. Throws anvil::Error on bad shapes, a
// non-positive temperature, or a target outside [0, V).
LogProbResult token_logprobs(const at::Tensor& hidden, const at::Tensor& lm_head,
                             const at::Tensor& targets, const LogProbOptions& options);

// For sequences packed in order into one row: the rows whose hidden state predicts a next
// token (every position but each sequence's last) and those next tokens, both [T - S]
// int64 on the CPU.
struct NextTokenIndex {
  at::Tensor rows;
  at::Tensor targets;
};
NextTokenIndex next_token_index(const std::vector<std::vector<int64_t>>& sequences);

}  // namespace anvil::train

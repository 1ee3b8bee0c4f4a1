#include "backends/train/logprobs.hpp"

#include "backends/common/error.hpp"

#include <ATen/ATen.h>

namespace anvil::train {

LogProbResult token_logprobs(const at::Tensor& hidden, const at::Tensor& lm_head,
                             const at::Tensor& targets, const LogProbOptions& options) {
  if (hidden.dim() != 2 || lm_head.dim() != 2 || hidden.size(1) != lm_head.size(1)) {
    fail("token_logprobs: hidden [{}] and lm_head [{}] do not match",
         fmt::join(hidden.sizes(), ", "), fmt::join(lm_head.sizes(), ", "));
  }
  if (targets.dim() != 1 || targets.size(0) != hidden.size(0)) {
    fail("token_logprobs: {} targets for {} hidden rows", targets.numel(), hidden.size(0));
  }
  if (!(options.temperature > 0)) {
    fail("token_logprobs: temperature must be > 0, got {}", options.temperature);
  }
  const int64_t T = hidden.size(0);
  const int64_t V = lm_head.size(0);
  if (T > 0) {
    int64_t lo = targets.min().item<int64_t>();
    int64_t hi = targets.max().item<int64_t>();
    if (lo < 0 || hi >= V)
      fail("token_logprobs: target id {} outside [0, {})", lo < 0 ? lo : hi, V);
  }
  const int64_t chunk = std::max<int64_t>(1, options.chunk_tokens);
  std::vector<at::Tensor> lps, ents;
  for (int64_t start = 0; start < T; start += chunk) {
    const int64_t n = std::min(chunk, T - start);
    at::Tensor logits = at::linear(hidden.narrow(0, start, n), lm_head);  // [n, V] model dtype
    logits = logits.to(at::kFloat);
    if (options.temperature != 1.0) logits = logits / options.temperature;
    at::Tensor logp = at::log_softmax(logits, -1);  // [n, V] fp32
    lps.push_back(logp.gather(1, targets.narrow(0, start, n).unsqueeze(1)).squeeze(1));
    if (options.with_entropy) ents.push_back(-(logp.exp() * logp).sum(-1));
  }
  LogProbResult r;
  auto join = [&](std::vector<at::Tensor>& parts) {
    if (parts.empty()) return at::empty({0}, hidden.options().dtype(at::kFloat));
    return parts.size() == 1 ? parts[0] : at::cat(parts, 0);
  };
  r.logprobs = join(lps);
  if (options.with_entropy) r.entropy = join(ents);
  return r;
}

NextTokenIndex next_token_index(const std::vector<std::vector<int64_t>>& sequences) {
  std::vector<int64_t> rows, targets;
  int64_t offset = 0;
  for (const auto& s : sequences) {
    for (size_t i = 0; i + 1 < s.size(); ++i) {
      rows.push_back(offset + static_cast<int64_t>(i));
      targets.push_back(s[i + 1]);
    }
    offset += static_cast<int64_t>(s.size());
  }
  return {at::tensor(rows, at::kLong), at::tensor(targets, at::kLong)};
}

}  // namespace anvil::train

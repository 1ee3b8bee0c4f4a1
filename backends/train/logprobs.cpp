#include "backends/train/logprobs.hpp"

#include "backends/common/error.hpp"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

namespace anvil::train {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// z = (hidden @ lm_head^T) / temperature in fp32 for rows [start, start + n).
at::Tensor scaled_logits(const at::Tensor& hidden, const at::Tensor& lm_head, int64_t start,
                         int64_t n, double temperature) {
  at::Tensor z = at::linear(hidden.narrow(0, start, n), lm_head).to(at::kFloat);  // [n, V]
  return temperature != 1.0 ? z / temperature : z;
}

// log-probs (and entropy) of targets under softmax(hidden @ lm_head^T / temperature),
// chunk by chunk, saving only hidden, lm_head, targets and per-row statistics: backward
// recomputes each chunk's logits, so neither the forward nor the backward ever holds more
// than one [chunk, V] block of logits (slime's --recompute-loss-function, fused).
//
// Gradients, with z the scaled logits of a row, p = softmax(z), lp = z[y] - lse(z),
// H = lse(z) - sum(p z):  dlp/dz = onehot(y) - p;  dH/dz = p * (E_p[z] - z).
struct ChunkedLogProb : public torch::autograd::Function<ChunkedLogProb> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& hidden,
                               const at::Tensor& lm_head, const at::Tensor& targets,
                               double temperature, int64_t chunk, bool with_entropy) {
    const int64_t T = hidden.size(0);
    auto f32 = hidden.options().dtype(at::kFloat);
    at::Tensor logprobs = at::empty({T}, f32), lse = at::empty({T}, f32);
    at::Tensor entropy = with_entropy ? at::empty({T}, f32) : at::empty({0}, f32);
    at::Tensor mean_z = with_entropy ? at::empty({T}, f32) : at::empty({0}, f32);
    for (int64_t start = 0; start < T; start += chunk) {
      const int64_t n = std::min(chunk, T - start);
      at::Tensor z = scaled_logits(hidden, lm_head, start, n, temperature);  // [n, V]
      at::Tensor l = at::logsumexp(z, -1);                                   // [n]
      lse.narrow(0, start, n).copy_(l);
      at::Tensor zy = z.gather(1, targets.narrow(0, start, n).unsqueeze(1)).squeeze(1);
      logprobs.narrow(0, start, n).copy_(zy - l);
      if (with_entropy) {
        at::Tensor ez = (at::softmax(z, -1) * z).sum(-1);
        mean_z.narrow(0, start, n).copy_(ez);
        entropy.narrow(0, start, n).copy_(l - ez);
      }
    }
    ctx->save_for_backward({hidden, lm_head, targets, lse, mean_z});
    ctx->saved_data["temperature"] = temperature;
    ctx->saved_data["chunk"] = chunk;
    ctx->set_materialize_grads(false);
    return {logprobs, entropy};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const at::Tensor &hidden = saved[0], &lm_head = saved[1], &targets = saved[2];
    const at::Tensor &lse = saved[3], &mean_z = saved[4];
    const double temperature = ctx->saved_data["temperature"].toDouble();
    const int64_t chunk = ctx->saved_data["chunk"].toInt();
    const at::Tensor& g_lp = grads[0];
    const at::Tensor& g_ent = grads[1];
    const bool want_h = ctx->needs_input_grad(0), want_w = ctx->needs_input_grad(1);
    const int64_t T = hidden.size(0);
    at::Tensor grad_h, grad_w;
    if (want_h) grad_h = at::empty_like(hidden);
    // Accumulate the head's gradient in fp32 across chunks, round once at the end.
    if (want_w) grad_w = at::zeros(lm_head.sizes(), lm_head.options().dtype(at::kFloat));
    for (int64_t start = 0; start < T; start += chunk) {
      const int64_t n = std::min(chunk, T - start);
      at::Tensor z = scaled_logits(hidden, lm_head, start, n, temperature);  // [n, V]
      at::Tensor p = (z - lse.narrow(0, start, n).unsqueeze(1)).exp_();      // [n, V]
      at::Tensor gz = at::zeros_like(z);
      if (g_lp.defined()) {
        at::Tensor g = g_lp.narrow(0, start, n).unsqueeze(1);  // [n, 1]
        gz.sub_(p * g);
        gz.scatter_add_(1, targets.narrow(0, start, n).unsqueeze(1), g);
      }
      if (g_ent.defined() && g_ent.numel() > 0) {
        at::Tensor g = g_ent.narrow(0, start, n).unsqueeze(1);
        gz.add_(p * (mean_z.narrow(0, start, n).unsqueeze(1) - z) * g);
      }
      if (temperature != 1.0) gz.div_(temperature);
      at::Tensor gl = gz.to(lm_head.scalar_type());  // d loss / d logits, [n, V]
      if (want_h) grad_h.narrow(0, start, n).copy_(at::matmul(gl, lm_head));
      if (want_w) grad_w.add_(at::matmul(gl.t(), hidden.narrow(0, start, n)).to(at::kFloat));
    }
    if (want_w) grad_w = grad_w.to(lm_head.scalar_type());
    return {grad_h, grad_w, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

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
  at::Tensor t = targets.to(hidden.device(), at::kLong);
  variable_list out =
      ChunkedLogProb::apply(hidden, lm_head, t, options.temperature, chunk, options.with_entropy);
  LogProbResult r;
  r.logprobs = out[0];
  if (options.with_entropy) r.entropy = out[1];
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

#include "backends/models/rope.hpp"

#include "backends/common/error.hpp"

#include <ATen/ATen.h>

#include <cmath>

namespace anvil::models {
namespace {

// Python's `scalar / tensor` is `tensor.reciprocal() * scalar` in PyTorch; mirror it so the
// tables round identically.
at::Tensor rdiv(double scalar, const at::Tensor& t) { return at::reciprocal(t) * scalar; }

// base ** (arange(0, D, 2) / D), fp32.
at::Tensor pos_freqs(double base, int64_t dim) {
  at::Tensor exponent = at::arange(0, dim, 2, at::kLong).to(at::kFloat) / static_cast<double>(dim);
  return at::pow(base, exponent);
}

double yarn_mscale(double scale, double mscale) {
  if (scale <= 1) return 1.0;
  return 0.1 * mscale * std::log(scale) + 1.0;
}

std::pair<at::Tensor, double> compute_inv_freq(const ModelConfig& c, int64_t seq_len) {
  const RopeConfig& r = c.rope;
  const int64_t dim = c.head_dim;
  if (r.type == "default") {
    return {rdiv(1.0, pos_freqs(r.theta, dim)), 1.0};
  }
  if (r.type == "linear") {
    at::Tensor inv = rdiv(1.0, pos_freqs(r.theta, dim));
    return {inv / r.factor, 1.0};
  }
  if (r.type == "dynamic") {
    const double max_pos = static_cast<double>(c.max_position_embeddings);
    const double exponent_scale = static_cast<double>(dim) / static_cast<double>(dim - 2);
    at::Tensor exponent =
        at::arange(0, dim, 2, at::kLong).to(at::kFloat) / static_cast<double>(dim);
    if (seq_len <= c.max_position_embeddings) {
      // At construction transformers evaluates the base in Python floats (double).
      double base =
          r.theta * std::pow((r.factor * max_pos / max_pos) - (r.factor - 1.0), exponent_scale);
      return {rdiv(1.0, at::pow(base, exponent)), 1.0};
    }
    // On growth transformers passes seq_len as an int64 tensor: the base is fp32.
    at::Tensor len = at::scalar_tensor(seq_len, at::kLong);
    at::Tensor scaled = (r.factor * len) / max_pos - (r.factor - 1.0);
    at::Tensor base = at::pow(scaled, exponent_scale) * r.theta;
    return {rdiv(1.0, at::pow(base, exponent)), 1.0};
  }
  if (r.type == "yarn") {
    double attention_factor;
    if (r.attention_factor) {
      attention_factor = *r.attention_factor;
    } else if (r.mscale.value_or(0.0) != 0.0 && r.mscale_all_dim.value_or(0.0) != 0.0) {
      attention_factor =
          yarn_mscale(r.factor, *r.mscale) / yarn_mscale(r.factor, *r.mscale_all_dim);
    } else {
      attention_factor = yarn_mscale(r.factor, 1.0);
    }
    auto correction_dim = [&](double rotations) {
      return (static_cast<double>(dim) *
              std::log(static_cast<double>(r.original_max_position_embeddings) /
                       (rotations * 2 * M_PI))) /
             (2 * std::log(r.theta));
    };
    double low = correction_dim(r.beta_fast);
    double high = correction_dim(r.beta_slow);
    if (r.truncate) {
      low = std::floor(low);
      high = std::ceil(high);
    }
    low = std::max(low, 0.0);
    high = std::min(high, static_cast<double>(dim - 1));
    if (low == high) high += 0.001;  // as transformers: avoid a zero-width ramp
    at::Tensor freqs = pos_freqs(r.theta, dim);
    at::Tensor extrapolation = rdiv(1.0, freqs);
    at::Tensor interpolation = rdiv(1.0, r.factor * freqs);
    at::Tensor ramp = at::clamp((at::arange(dim / 2, at::kFloat) - low) / (high - low), 0, 1);
    at::Tensor extrapolation_factor = 1 - ramp;
    at::Tensor inv =
        interpolation * (1 - extrapolation_factor) + extrapolation * extrapolation_factor;
    return {inv, attention_factor};
  }
  if (r.type == "llama3") {
    at::Tensor inv = rdiv(1.0, pos_freqs(r.theta, dim));
    const double old_len = static_cast<double>(r.original_max_position_embeddings);
    const double low_wavelen = old_len / r.low_freq_factor;
    const double high_wavelen = old_len / r.high_freq_factor;
    at::Tensor wavelen = rdiv(2 * M_PI, inv);
    at::Tensor llama = at::where(wavelen > low_wavelen, inv / r.factor, inv);
    at::Tensor smooth =
        (rdiv(old_len, wavelen) - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
    at::Tensor smoothed = (1 - smooth) * llama / r.factor + smooth * llama;
    at::Tensor medium =
        at::logical_not(wavelen < high_wavelen) * at::logical_not(wavelen > low_wavelen);
    return {at::where(medium, smoothed, llama), 1.0};
  }
  fail("rope type '{}' is not supported", r.type);
}

}  // namespace

Rope::Rope(const ModelConfig& config) : config_(config) {
  std::tie(inv_freq_, attention_scaling_) =
      compute_inv_freq(config_, config_.max_position_embeddings);
}

std::pair<at::Tensor, at::Tensor> Rope::cos_sin(const at::Tensor& positions, at::ScalarType dtype,
                                                int64_t seq_len) const {
  at::Tensor inv = inv_freq_;
  double scaling = attention_scaling_;
  if (config_.rope.type == "dynamic" && seq_len > config_.max_position_embeddings) {
    std::tie(inv, scaling) = compute_inv_freq(config_, seq_len);
  }
  inv = inv.to(positions.device());
  at::Tensor freqs = positions.to(at::kFloat).unsqueeze(-1) * inv.unsqueeze(0);  // [T, D/2]
  at::Tensor emb = at::cat({freqs, freqs}, -1);                                  // [T, D]
  at::Tensor cos = emb.cos();
  at::Tensor sin = emb.sin();
  if (scaling != 1.0) {
    cos = cos * scaling;
    sin = sin * scaling;
  }
  return {cos.to(dtype), sin.to(dtype)};
}

at::Tensor apply_rotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t half = x.size(-1) / 2;
  at::Tensor x1 = x.narrow(-1, 0, half);
  at::Tensor x2 = x.narrow(-1, half, half);
  at::Tensor rotated = at::cat({-x2, x1}, -1);
  at::Tensor c = cos.unsqueeze(1);  // [T, 1, D]
  at::Tensor s = sin.unsqueeze(1);
  return x * c + rotated * s;
}

}  // namespace anvil::models

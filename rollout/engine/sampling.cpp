#include "rollout/engine/sampling.hpp"

#include "backends/common/error.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace anvil::engine {

void SamplingParams::validate() const {
  if (!(temperature >= 0) || !std::isfinite(temperature)) {
    fail("sampling_params.temperature must be >= 0, got {}", temperature);
  }
  if (!(top_p > 0 && top_p <= 1)) fail("sampling_params.top_p must be in (0, 1], got {}", top_p);
  if (!(min_p >= 0 && min_p <= 1)) fail("sampling_params.min_p must be in [0, 1], got {}", min_p);
  if (max_new_tokens < 0) {
    fail("sampling_params.max_new_tokens must be >= 0, got {}", max_new_tokens);
  }
  if (n < 1) fail("sampling_params.n must be >= 1, got {}", n);
  for (const std::string& s : stop) {
    if (s.empty()) fail("sampling_params.stop: empty stop string");
  }
}

double uniform01(std::mt19937_64& rng) {
  return static_cast<double>(rng() >> 11) * (1.0 / 9007199254740992.0);
}

int64_t sample_token(const float* z, int64_t V, float lse, const SamplingParams& params,
                     std::mt19937_64& rng) {
  if (params.temperature == 0) {
    // First maximum, as torch.argmax.
    int64_t best = 0;
    for (int64_t i = 1; i < V; ++i) {
      if (z[i] > z[best]) best = i;
    }
    return best;
  }
  // Candidates with their probabilities (double for the cumulative sums).
  std::vector<int64_t> ids(static_cast<size_t>(V));
  std::iota(ids.begin(), ids.end(), int64_t{0});
  std::vector<double> p(static_cast<size_t>(V));
  for (int64_t i = 0; i < V; ++i) p[static_cast<size_t>(i)] = std::exp(double(z[i]) - lse);
  auto by_prob = [&](int64_t a, int64_t b) {
    double pa = p[static_cast<size_t>(a)], pb = p[static_cast<size_t>(b)];
    return pa > pb || (pa == pb && a < b);
  };
  size_t keep = ids.size();
  const bool sorted_needed = (params.top_k > 0 && params.top_k < V) || params.top_p < 1.0;
  if (sorted_needed) {
    if (params.top_k > 0 && params.top_k < V) {
      keep = static_cast<size_t>(params.top_k);
      std::partial_sort(ids.begin(), ids.begin() + static_cast<int64_t>(keep), ids.end(), by_prob);
    } else {
      std::sort(ids.begin(), ids.end(), by_prob);
    }
    if (params.top_p < 1.0) {
      double total = 0;
      for (size_t i = 0; i < keep; ++i) total += p[static_cast<size_t>(ids[i])];
      // Keep a token while the mass strictly before it is below top_p.
      double before = 0;
      size_t k = 0;
      while (k < keep && before < params.top_p * total) {
        before += p[static_cast<size_t>(ids[k])];
        ++k;
      }
      keep = std::max<size_t>(k, 1);
    }
  }
  if (params.min_p > 0) {
    double pmax = 0;
    for (size_t i = 0; i < keep; ++i) pmax = std::max(pmax, p[static_cast<size_t>(ids[i])]);
    const double floor = params.min_p * pmax;
    size_t w = 0;
    for (size_t i = 0; i < keep; ++i) {
      if (p[static_cast<size_t>(ids[i])] >= floor) ids[w++] = ids[i];
    }
    keep = w;
  }
  double total = 0;
  for (size_t i = 0; i < keep; ++i) total += p[static_cast<size_t>(ids[i])];
  const double target = uniform01(rng) * total;
  double acc = 0;
  for (size_t i = 0; i < keep; ++i) {
    acc += p[static_cast<size_t>(ids[i])];
    if (target < acc) return ids[i];
  }
  return ids[keep - 1];
}

}  // namespace anvil::engine

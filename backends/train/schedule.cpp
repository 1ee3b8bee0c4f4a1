#include "backends/train/schedule.hpp"

#include "backends/common/error.hpp"

#include <algorithm>
#include <numeric>
#include <unordered_map>

namespace anvil::train {
namespace {

using Bin = std::vector<int64_t>;  // local indices into the step's samples

int64_t bin_tokens(const Bin& bin, const std::vector<int64_t>& lengths) {
  int64_t sum = 0;
  for (int64_t i : bin) sum += lengths[static_cast<size_t>(i)];
  return sum;
}

std::vector<Bin> first_fit(const std::vector<int64_t>& lengths, int64_t cap) {
  std::vector<Bin> bins;
  std::vector<int64_t> sums;
  for (size_t i = 0; i < lengths.size(); ++i) {
    size_t j = 0;
    while (j < bins.size() && sums[j] + lengths[i] > cap) ++j;
    if (j == bins.size()) {
      bins.emplace_back();
      sums.push_back(0);
    }
    bins[j].push_back(static_cast<int64_t>(i));
    sums[j] += lengths[i];
  }
  return bins;
}

// Splits the largest multi-sample bin into two token-balanced halves (longest first, each
// to the lighter half) until there are `target` bins or none can be split.
void split_to(std::vector<Bin>& bins, size_t target, const std::vector<int64_t>& lengths) {
  while (bins.size() < target) {
    int64_t best = -1, best_tokens = -1;
    for (size_t b = 0; b < bins.size(); ++b) {
      int64_t t = bin_tokens(bins[b], lengths);
      if (bins[b].size() > 1 && t > best_tokens) best = static_cast<int64_t>(b), best_tokens = t;
    }
    if (best < 0) return;
    Bin items = bins[static_cast<size_t>(best)];
    std::stable_sort(items.begin(), items.end(), [&](int64_t a, int64_t b) {
      return lengths[static_cast<size_t>(a)] > lengths[static_cast<size_t>(b)];
    });
    Bin halves[2];
    int64_t sums[2] = {0, 0};
    for (int64_t i : items) {
      int h = sums[0] <= sums[1] ? 0 : 1;
      halves[h].push_back(i);
      sums[h] += lengths[static_cast<size_t>(i)];
    }
    // Keep sample order inside a micro-batch (packing order is the rollout order).
    for (Bin& h : halves) std::sort(h.begin(), h.end());
    bins[static_cast<size_t>(best)] = std::move(halves[0]);
    bins.push_back(std::move(halves[1]));
  }
}

}  // namespace

Schedule build_schedule(const std::vector<int64_t>& total_lengths,
                        const std::vector<int64_t>& rollout_ids, const ScheduleOptions& o) {
  if (o.global_batch_size <= 0)
    fail("--global-batch-size must be positive, got {}", o.global_batch_size);
  if (o.dp_size <= 0) fail("data-parallel size must be positive, got {}", o.dp_size);
  if (o.use_dynamic_batch_size && o.max_tokens_per_gpu <= 0) {
    fail("--use-dynamic-batch-size needs a positive --max-tokens-per-gpu, got {}",
         o.max_tokens_per_gpu);
  }
  if (!o.use_dynamic_batch_size && o.micro_batch_size <= 0)
    fail("--micro-batch-size must be positive, got {}", o.micro_batch_size);
  if (!rollout_ids.empty() && rollout_ids.size() != total_lengths.size()) {
    fail("schedule: {} rollout ids for {} samples", rollout_ids.size(), total_lengths.size());
  }
  for (size_t i = 0; i < total_lengths.size(); ++i) {
    if (total_lengths[i] <= 0) fail("schedule: sample {} has {} tokens", i, total_lengths[i]);
  }

  // Rollouts in first-occurrence order, each with its samples.
  std::vector<std::vector<int64_t>> rollouts;
  std::unordered_map<int64_t, size_t> slot;
  for (size_t i = 0; i < total_lengths.size(); ++i) {
    if (rollout_ids.empty()) {
      rollouts.push_back({static_cast<int64_t>(i)});
      continue;
    }
    auto [it, fresh] = slot.try_emplace(rollout_ids[i], rollouts.size());
    if (fresh) rollouts.emplace_back();
    rollouts[it->second].push_back(static_cast<int64_t>(i));
  }
  const int64_t num_steps = static_cast<int64_t>(rollouts.size()) / o.global_batch_size;
  if (num_steps < 1) {
    fail("{} rollouts are fewer than --global-batch-size {}: no optimizer step can run",
         rollouts.size(), o.global_batch_size);
  }

  Schedule schedule;
  for (size_t r = static_cast<size_t>(num_steps * o.global_batch_size); r < rollouts.size(); ++r)
    schedule.dropped_samples += static_cast<int64_t>(rollouts[r].size());

  for (int64_t s = 0; s < num_steps; ++s) {
    StepSchedule step;
    step.num_rollouts = o.global_batch_size;
    for (int64_t r = s * o.global_batch_size; r < (s + 1) * o.global_batch_size; ++r)
      for (int64_t i : rollouts[static_cast<size_t>(r)]) step.samples.push_back(i);
    std::vector<int64_t> lengths;
    for (int64_t i : step.samples) lengths.push_back(total_lengths[static_cast<size_t>(i)]);
    if (static_cast<int64_t>(lengths.size()) < o.dp_size) {
      fail("step {} has {} samples for {} data-parallel ranks; raise --global-batch-size", s,
           lengths.size(), o.dp_size);
    }

    std::vector<Bin> bins;
    if (o.use_dynamic_batch_size) {
      bins = first_fit(lengths, o.max_tokens_per_gpu);
    } else {
      for (size_t i = 0; i < lengths.size(); i += static_cast<size_t>(o.micro_batch_size)) {
        Bin b(std::min(lengths.size() - i, static_cast<size_t>(o.micro_batch_size)));
        std::iota(b.begin(), b.end(), static_cast<int64_t>(i));
        bins.push_back(std::move(b));
      }
    }
    const size_t target =
        std::max<size_t>((bins.size() + o.dp_size - 1) / o.dp_size * o.dp_size, o.dp_size);
    if (bins.size() != target) {
      if (!o.use_dynamic_batch_size) {
        fail(
            "step {}: {} samples in micro-batches of --micro-batch-size {} give {} micro-batches, "
            "not a multiple of the {} data-parallel ranks",
            s, lengths.size(), o.micro_batch_size, bins.size(), o.dp_size);
      }
      split_to(bins, target, lengths);
      if (bins.size() != target) {
        fail(
            "step {}: its {} samples make {} micro-batches, and no split gives a multiple of the "
            "{} data-parallel ranks; make --global-batch-size a multiple of the ranks or raise "
            "--max-tokens-per-gpu",
            s, lengths.size(), bins.size(), o.dp_size);
      }
    }

    // Balance micro-batches over ranks by tokens, an equal count per rank.
    const size_t per_rank = bins.size() / static_cast<size_t>(o.dp_size);
    std::vector<size_t> order(bins.size());
    std::iota(order.begin(), order.end(), size_t{0});
    std::vector<int64_t> tokens(bins.size());
    for (size_t b = 0; b < bins.size(); ++b) tokens[b] = bin_tokens(bins[b], lengths);
    std::stable_sort(order.begin(), order.end(),
                     [&](size_t a, size_t b) { return tokens[a] > tokens[b]; });
    std::vector<std::vector<size_t>> assigned(static_cast<size_t>(o.dp_size));
    std::vector<int64_t> load(static_cast<size_t>(o.dp_size), 0);
    for (size_t b : order) {
      size_t best = SIZE_MAX;
      for (size_t r = 0; r < assigned.size(); ++r) {
        if (assigned[r].size() < per_rank && (best == SIZE_MAX || load[r] < load[best])) best = r;
      }
      assigned[best].push_back(b);
      load[best] += tokens[b];
    }
    step.micro_batches.resize(static_cast<size_t>(o.dp_size));
    for (size_t r = 0; r < assigned.size(); ++r) {
      std::sort(assigned[r].begin(), assigned[r].end());  // run in packing order
      for (size_t b : assigned[r]) {
        std::vector<int64_t> mb;
        for (int64_t local : bins[b]) mb.push_back(step.samples[static_cast<size_t>(local)]);
        step.micro_batches[r].push_back(std::move(mb));
      }
    }
    schedule.steps.push_back(std::move(step));
  }
  return schedule;
}

}  // namespace anvil::train

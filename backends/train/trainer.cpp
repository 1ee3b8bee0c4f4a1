#include "backends/train/trainer.hpp"

#include "backends/common/error.hpp"
#include "backends/common/log.hpp"
#include "backends/train/logprobs.hpp"

#include <ATen/ATen.h>

#include <cmath>
#include <cstring>

namespace anvil::train {
namespace {

at::Tensor mask_of(const TrainSample& s) {
  if (s.loss_mask.empty()) return at::ones({s.response_length}, at::kFloat);
  return at::tensor(s.loss_mask, at::kFloat);
}

struct MicroBatchForward {
  at::Tensor logprobs;  // [R] concatenated over the micro-batch's samples
  at::Tensor entropy;   // [R]
  std::vector<int64_t> response_lengths;
};

// Packs `indices` of `samples` into one row, runs the model and returns the log-probs of
// their response tokens (rows predicting tokens[L - R .. L)).
MicroBatchForward forward_micro_batch(const models::DecoderModel& model,
                                      const std::vector<TrainSample>& samples,
                                      const std::vector<int64_t>& indices, double temperature,
                                      int64_t chunk, bool with_entropy) {
  std::vector<std::vector<int64_t>> seqs;
  std::vector<int64_t> rows, targets;
  MicroBatchForward out;
  int64_t offset = 0;
  for (int64_t i : indices) {
    const TrainSample& s = samples[static_cast<size_t>(i)];
    const int64_t L = static_cast<int64_t>(s.tokens.size());
    for (int64_t t = L - s.response_length; t < L; ++t) {
      rows.push_back(offset + t - 1);
      targets.push_back(s.tokens[static_cast<size_t>(t)]);
    }
    out.response_lengths.push_back(s.response_length);
    seqs.push_back(s.tokens);
    offset += L;
  }
  const at::Device device = model.device();
  models::PackedBatch batch = models::PackedBatch::pack(seqs, device);
  at::Tensor hidden = model.forward_hidden(batch);                                // [T, H]
  at::Tensor h = hidden.index_select(0, at::tensor(rows, at::kLong).to(device));  // [R, H]
  LogProbResult r = token_logprobs(h, model.lm_head_weight(), at::tensor(targets, at::kLong),
                                   {temperature, chunk, with_entropy});
  out.logprobs = r.logprobs;
  out.entropy = r.entropy;
  return out;
}

// In-order micro-batches of at most `max_tokens` tokens.
std::vector<std::vector<int64_t>> token_bounded_batches(const std::vector<TrainSample>& samples,
                                                        int64_t max_tokens) {
  std::vector<std::vector<int64_t>> batches;
  int64_t used = 0;
  for (size_t i = 0; i < samples.size(); ++i) {
    const int64_t n = static_cast<int64_t>(samples[i].tokens.size());
    if (batches.empty() || used + n > max_tokens) {
      batches.emplace_back();
      used = 0;
    }
    batches.back().push_back(static_cast<int64_t>(i));
    used += n;
  }
  return batches;
}

at::Tensor gather(const std::vector<at::Tensor>& per_sample, const std::vector<int64_t>& idx,
                  const at::Device& device) {
  if (per_sample.empty()) return at::Tensor();
  std::vector<at::Tensor> parts;
  for (int64_t i : idx) parts.push_back(per_sample[static_cast<size_t>(i)]);
  return at::cat(parts, 0).to(device, at::kFloat);
}

void add_metric(Metrics& m, const std::string& name, double v) {
  auto ends_with = [&](const char* suffix) {
    const size_t n = std::strlen(suffix);
    return name.size() >= n && name.compare(name.size() - n, n, suffix) == 0;
  };
  auto it = m.find(name);
  if (it == m.end()) {
    m[name] = v;
  } else if (ends_with("_max")) {
    it->second = std::max(it->second, v);
  } else if (ends_with("_min")) {
    it->second = std::min(it->second, v);
  } else {
    it->second += v;
  }
}

}  // namespace

void validate_samples(const std::vector<TrainSample>& samples, int64_t vocab_size) {
  for (size_t i = 0; i < samples.size(); ++i) {
    const TrainSample& s = samples[i];
    const int64_t L = static_cast<int64_t>(s.tokens.size());
    if (s.response_length < 1 || s.response_length >= L) {
      fail(
          "sample {}: response_length {} must be in [1, {}) for {} tokens (a prompt of at "
          "least one token)",
          i, s.response_length, L, L);
    }
    if (!s.loss_mask.empty() && static_cast<int64_t>(s.loss_mask.size()) != s.response_length)
      fail("sample {}: loss_mask has {} entries for response_length {}", i, s.loss_mask.size(),
           s.response_length);
    for (float m : s.loss_mask)
      if (m != 0.0f && m != 1.0f) fail("sample {}: loss_mask holds {}, not 0 or 1", i, m);
    if (!s.rollout_logprobs.empty() &&
        static_cast<int64_t>(s.rollout_logprobs.size()) != s.response_length)
      fail("sample {}: rollout_logprobs has {} entries for response_length {}", i,
           s.rollout_logprobs.size(), s.response_length);
    for (float lp : s.rollout_logprobs)
      if (!(lp <= 0.0f)) fail("sample {}: rollout log-prob {} is not <= 0", i, lp);
    if (!std::isfinite(s.reward)) fail("sample {}: reward is {}", i, s.reward);
    for (int64_t t : s.tokens)
      if (t < 0 || t >= vocab_size)
        fail("sample {}: token id {} outside [0, {})", i, t, vocab_size);
  }
}

ResponseLogProbs response_logprobs(const models::DecoderModel& model,
                                   const std::vector<TrainSample>& samples, double temperature,
                                   int64_t chunk_tokens, int64_t max_tokens, bool with_entropy) {
  at::NoGradGuard no_grad;
  ResponseLogProbs out;
  out.logprobs.resize(samples.size());
  if (with_entropy) out.entropy.resize(samples.size());
  for (const auto& mb : token_bounded_batches(samples, std::max<int64_t>(max_tokens, 1))) {
    MicroBatchForward f =
        forward_micro_batch(model, samples, mb, temperature, chunk_tokens, with_entropy);
    auto lps = f.logprobs.to(at::kCPU).split_with_sizes(f.response_lengths, 0);
    for (size_t k = 0; k < mb.size(); ++k) out.logprobs[static_cast<size_t>(mb[k])] = lps[k];
    if (with_entropy) {
      auto ents = f.entropy.to(at::kCPU).split_with_sizes(f.response_lengths, 0);
      for (size_t k = 0; k < mb.size(); ++k) out.entropy[static_cast<size_t>(mb[k])] = ents[k];
    }
  }
  return out;
}

// Each rank takes a contiguous, token-balanced part of the samples. A sharded model's
// forward is collective, so every rank runs as many forward passes as the rank with the most
// batches (one-token passes fill the gap); every rank knows every part, so no count needs
// to be exchanged. The parts' log-probs are then all-gathered (padded to the longest).
std::vector<at::Tensor> Trainer::group_response_logprobs(const std::vector<TrainSample>& samples,
                                                         int64_t chunk, int64_t cap) {
  const int64_t W = options_.schedule.dp_size, R = options_.dp_rank;
  int64_t total = 0;
  for (const auto& s : samples) total += static_cast<int64_t>(s.tokens.size());
  std::vector<std::vector<TrainSample>> parts(static_cast<size_t>(W));
  std::vector<std::vector<size_t>> index(static_cast<size_t>(W));
  int64_t seen = 0;
  for (size_t i = 0; i < samples.size(); ++i) {
    const int64_t n = static_cast<int64_t>(samples[i].tokens.size());
    const int64_t r = std::min(W - 1, (2 * seen + n) * W / std::max<int64_t>(2 * total, 1));
    parts[static_cast<size_t>(r)].push_back(samples[i]);
    index[static_cast<size_t>(r)].push_back(i);
    seen += n;
  }
  const int64_t bound = std::max<int64_t>(cap, 1);
  size_t most = 0;
  std::vector<int64_t> resp(static_cast<size_t>(W), 0);
  for (int64_t r = 0; r < W; ++r) {
    const auto& part = parts[static_cast<size_t>(r)];
    most = std::max(most, token_bounded_batches(part, bound).size());
    for (const auto& s : part) resp[static_cast<size_t>(r)] += s.response_length;
  }
  const auto& mine = parts[static_cast<size_t>(R)];
  std::vector<at::Tensor> lps =
      response_logprobs(model_, mine, options_.temperature, chunk, cap).logprobs;
  TrainSample filler;
  filler.tokens = {0, 0};
  filler.response_length = 1;
  for (size_t k = token_bounded_batches(mine, bound).size(); k < most; ++k)
    response_logprobs(model_, {filler}, options_.temperature, chunk, cap);

  const int64_t longest = *std::max_element(resp.begin(), resp.end());
  at::Tensor local = at::zeros({std::max<int64_t>(longest, 1)}, at::kFloat);
  if (!lps.empty()) {
    at::Tensor flat = at::cat(lps, 0).to(at::kFloat);
    local.narrow(0, 0, flat.numel()).copy_(flat);
  }
  at::Tensor all = at::empty({W * local.numel()}, at::kFloat);
  hooks_.all_gather(all, local);
  std::vector<at::Tensor> out(samples.size());
  for (int64_t r = 0; r < W; ++r) {
    int64_t off = r * local.numel();
    const auto& part = parts[static_cast<size_t>(r)];
    for (size_t k = 0; k < part.size(); ++k) {
      out[index[static_cast<size_t>(r)][k]] = all.narrow(0, off, part[k].response_length).clone();
      off += part[k].response_length;
    }
  }
  return out;
}

Trainer::Trainer(models::DecoderModel& model, TrainerOptions options, TrainerHooks hooks)
    : model_(model), options_(std::move(options)), hooks_(std::move(hooks)) {
  validate(options_.loss);
  if (!(options_.temperature > 0))
    fail("--rollout-temperature must be > 0, got {}", options_.temperature);
  if (options_.log_probs_chunk_size == 0 || options_.log_probs_chunk_size < -1)
    fail("--log-probs-chunk-size must be positive or -1, got {}", options_.log_probs_chunk_size);
  if (options_.dp_rank < 0 || options_.dp_rank >= options_.schedule.dp_size)
    fail("data-parallel rank {} outside [0, {})", options_.dp_rank, options_.schedule.dp_size);
  model_.set_gradient_checkpointing(options_.gradient_checkpointing);
  for (at::Tensor& p : model_.parameters()) p.requires_grad_(true);
  optimizer_ = std::make_unique<AdamW>(
      hooks_.optimizer_params.empty() ? model_.parameters() : hooks_.optimizer_params,
      options_.optimizer);
  if (hooks_.reduce_grad_norm_sq) optimizer_->set_grad_norm_reducer(hooks_.reduce_grad_norm_sq);
}

Metrics Trainer::accumulate_step(const StepSchedule& step, const StepInputs& in) {
  const auto& samples = *in.samples;
  const int64_t chunk =
      options_.log_probs_chunk_size < 0 ? INT64_MAX : options_.log_probs_chunk_size;
  const at::Device device = model_.device();
  const bool sft = options_.loss.loss_type == "sft_loss";
  Metrics metrics;
  double tokens = 0, total_tokens = 0;
  for (const auto& mb : step.micro_batches[static_cast<size_t>(options_.dp_rank)]) {
    MicroBatchForward f = forward_micro_batch(model_, samples, mb, options_.temperature, chunk,
                                              /*with_entropy=*/!sft);
    LossInputs li;
    li.logprobs = f.logprobs;
    li.response_lengths = f.response_lengths;
    li.loss_mask = gather(in.loss_masks, mb, device);
    li.weights = gather(in.weights, mb, device);
    if (!sft) {
      li.entropy = options_.loss.entropy_coef != 0 ? f.entropy : f.entropy.detach();
      li.advantages = gather(in.advantages, mb, device);
      li.old_logprobs =
          in.old_from_forward ? f.logprobs.detach() : gather(in.old_logprobs, mb, device);
      li.ref_logprobs = gather(in.ref_logprobs, mb, device);
      li.rollout_logprobs = gather(in.rollout_logprobs, mb, device);
    }
    LossOutput lo = compute_loss(options_.loss, li);
    lo.loss.backward();
    for (auto& [name, v] : lo.metrics) add_metric(metrics, name, v.item<double>());
    tokens += li.loss_mask.sum().item<double>();
    for (int64_t i : mb)
      total_tokens += static_cast<double>(samples[static_cast<size_t>(i)].tokens.size());
  }
  metrics["tokens"] = tokens;  // unmasked response tokens this rank trained on
  metrics["total_tokens"] = total_tokens;
  return metrics;
}

void Trainer::move_state_to(const at::Device& device) {
  at::NoGradGuard no_grad;
  for (at::Tensor& p : model_.parameters()) {
    if (!p.defined() || p.device() == device) continue;
    p.mutable_grad() = at::Tensor();
    p.set_data(offload_copy(p, device));
  }
  optimizer_->move_state_to(device);
}

void Trainer::optimizer_step(Metrics& metrics) {
  if (hooks_.reduce_metrics) hooks_.reduce_metrics(metrics);
  if (hooks_.before_optimizer_step) hooks_.before_optimizer_step();
  if (before_optimizer_step) before_optimizer_step();
  StepStats s = optimizer_->step();
  optimizer_->zero_grad();
  if (hooks_.after_optimizer_step) hooks_.after_optimizer_step();
  metrics["grad_norm"] = s.grad_norm;
  metrics["lr"] = s.lr;
}

std::vector<Metrics> Trainer::train_rollout(const std::vector<TrainSample>& samples,
                                            const std::vector<at::Tensor>& ref_logprobs) {
  validate_samples(samples, model_.config().vocab_size);
  if (!ref_logprobs.empty() && ref_logprobs.size() != samples.size())
    fail("{} reference log-prob tensors for {} samples", ref_logprobs.size(), samples.size());
  for (size_t i = 0; i < ref_logprobs.size(); ++i) {
    if (ref_logprobs[i].numel() != samples[i].response_length)
      fail("sample {}: {} reference log-probs for response_length {}", i, ref_logprobs[i].numel(),
           samples[i].response_length);
  }
  const bool sft = options_.loss.loss_type == "sft_loss";
  const LossOptions& lo = options_.loss;
  const bool needs_ref = !sft && (lo.use_kl_loss || options_.advantage.kl_coef != 0);
  if (needs_ref && ref_logprobs.empty())
    fail("--use-kl-loss / --kl-coef need reference log-probs for every sample");

  std::vector<int64_t> lengths, rollout_ids;
  bool any_rollout_id = false;
  for (const TrainSample& s : samples) {
    lengths.push_back(static_cast<int64_t>(s.tokens.size()));
    any_rollout_id |= s.rollout_id >= 0;
  }
  if (any_rollout_id) {
    for (size_t i = 0; i < samples.size(); ++i)
      rollout_ids.push_back(samples[i].rollout_id >= 0 ? samples[i].rollout_id
                                                       : -1 - static_cast<int64_t>(i));
  }
  Schedule schedule = build_schedule(lengths, rollout_ids, options_.schedule);
  if (schedule.dropped_samples > 0) {
    log::get("train")->warn(
        "{} samples of trailing rollouts do not fill a step of "
        "--global-batch-size {} and are dropped",
        schedule.dropped_samples, options_.schedule.global_batch_size);
  }

  StepInputs in;
  in.samples = &samples;
  for (const TrainSample& s : samples) in.loss_masks.push_back(mask_of(s));
  const bool have_rollout_lp =
      std::all_of(samples.begin(), samples.end(),
                  [](const TrainSample& s) { return !s.rollout_logprobs.empty(); });
  if (have_rollout_lp)
    for (const TrainSample& s : samples)
      in.rollout_logprobs.push_back(at::tensor(s.rollout_logprobs, at::kFloat));
  if (needs_ref) in.ref_logprobs = ref_logprobs;

  if (!sft) {
    // 1. old log-probs under the weights that start this rollout's steps: with one step
    // and no KL reward shaping, the step's own forward gives them (TrainerOptions).
    in.old_from_forward = !lo.use_rollout_logprobs && !options_.recompute_old_logprobs &&
                          schedule.steps.size() == 1 && options_.advantage.kl_coef == 0;
    if (lo.use_rollout_logprobs) {
      if (!have_rollout_lp)
        fail("--use-rollout-logprobs: not every sample carries rollout log-probs");
    } else if (!in.old_from_forward) {
      const int64_t chunk =
          options_.log_probs_chunk_size < 0 ? INT64_MAX : options_.log_probs_chunk_size;
      const int64_t cap = options_.schedule.use_dynamic_batch_size
                              ? options_.schedule.max_tokens_per_gpu
                              : INT64_MAX;
      in.old_logprobs =
          options_.schedule.dp_size > 1 && hooks_.all_gather
              ? group_response_logprobs(samples, chunk, cap)
              : response_logprobs(model_, samples, options_.temperature, chunk, cap).logprobs;
    }
    // 2. advantages.
    AdvantageInputs ai;
    for (const TrainSample& s : samples) ai.rewards.push_back(s.reward);
    ai.logprobs = lo.use_rollout_logprobs ? in.rollout_logprobs : in.old_logprobs;
    ai.ref_logprobs = ref_logprobs;
    ai.loss_masks = in.loss_masks;
    AdvantageResult adv = compute_advantages(options_.advantage, ai);
    in.advantages = std::move(adv.advantages);
  }

  // 3. steps.
  std::vector<Metrics> out;
  for (const StepSchedule& step : schedule.steps) {
    std::vector<at::Tensor> masks;
    std::vector<int64_t> ids;
    for (int64_t i : step.samples) {
      masks.push_back(in.loss_masks[static_cast<size_t>(i)]);
      if (!rollout_ids.empty()) ids.push_back(rollout_ids[static_cast<size_t>(i)]);
    }
    std::vector<at::Tensor> w =
        reducer_weights(masks, ids, step.num_rollouts, lo.calculate_per_token_loss);
    in.weights.assign(samples.size(), at::Tensor());
    for (size_t k = 0; k < step.samples.size(); ++k)
      in.weights[static_cast<size_t>(step.samples[k])] = w[k];
    Metrics m = accumulate_step(step, in);
    optimizer_step(m);
    out.push_back(std::move(m));
  }
  return out;
}

}  // namespace anvil::train

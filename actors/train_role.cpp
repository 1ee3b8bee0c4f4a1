// The train role: receives rollouts, trains on them, pushes weights to the engines.
#include "actors/job_options.hpp"
#include "actors/resume_state.hpp"
#include "actors/role.hpp"
#include "actors/role_util.hpp"
#include "backends/common/error.hpp"
#include "backends/common/log.hpp"
#include "backends/dist/communicator.hpp"
#include "backends/fsdp/fsdp.hpp"
#include "backends/megatron/megatron.hpp"
#include "backends/models/weights.hpp"
#include "backends/train/checkpoint.hpp"
#include "rollout/data/conversation.hpp"
#include "rollout/data/prefetch_queue.hpp"
#include "rollout/data/sample_loader.hpp"
#include "runtime/crc32c.hpp"
#include "runtime/data_plane.hpp"

#include <ATen/ATen.h>
#include <c10/core/CachingDeviceAllocator.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <map>
#include <optional>

namespace anvil::actors {

namespace {

using namespace detail;

std::shared_ptr<spdlog::logger> L() { return anvil::log::get("train"); }

// ---- train ------------------------------------------------------------------------------
//
// One rank of the train group. With one rank the model lives whole on this process (the
// engine's single-rank path). With W > 1 ranks the group trains as FSDP over a c10d
// communicator (--train-backend fsdp): every rank holds 1/W of the parameters, gradients
// and AdamW state. Rollout samples arrive split by prompt group over the ranks (as slime's
// data-parallel split does); the ranks all-gather them so every rank schedules the same
// global batch (the Trainer picks each rank's micro-batches). Weight pushes, checkpoints and
// checksums gather full tensors and so are collective: the controller calls every rank.

// Samples in one canonical order: by prompt group, then as generated. The order a rollout
// arrives in depends on how many engines made it and how many ranks received it; training
// must not (W ranks train what one rank would).
void canonical_order(std::vector<runtime::WireSample>& samples) {
  std::stable_sort(samples.begin(), samples.end(),
                   [](const runtime::WireSample& a, const runtime::WireSample& b) {
                     return a.group_id < b.group_id;
                   });
}

nlohmann::json sample_to_json(const runtime::WireSample& s) {
  return {{"t", s.tokens},          {"r", s.response_length},   {"m", s.loss_mask},
          {"w", s.reward},          {"lp", s.rollout_logprobs}, {"ref", s.ref_logprobs},
          {"v", s.weight_version},  {"g", s.group_id},          {"st", s.status},
          {"meta", s.metadata_json}};
}

runtime::WireSample sample_from_json(const nlohmann::json& j) {
  runtime::WireSample s;
  s.tokens = j.at("t").get<std::vector<int64_t>>();
  s.response_length = j.at("r").get<int64_t>();
  s.loss_mask = j.at("m").get<std::vector<float>>();
  s.reward = j.at("w").get<double>();
  s.rollout_logprobs = j.at("lp").get<std::vector<float>>();
  s.ref_logprobs = j.at("ref").get<std::vector<float>>();
  s.weight_version = j.at("v").get<uint64_t>();
  s.group_id = j.at("g").get<int64_t>();
  s.status = j.at("st").get<int>();
  s.metadata_json = j.at("meta").get<std::string>();
  return s;
}

// Every rank's samples, on every rank (variable sizes: lengths first, then padded bytes).
std::vector<runtime::WireSample> all_gather_samples(dist::Communicator& comm,
                                                    const std::vector<runtime::WireSample>& mine) {
  nlohmann::json arr = nlohmann::json::array();
  for (const auto& s : mine) arr.push_back(sample_to_json(s));
  std::vector<uint8_t> bytes = nlohmann::json::to_msgpack(arr);
  const int64_t w = comm.size();
  at::Tensor len = at::tensor({static_cast<int64_t>(bytes.size())}, at::kLong);
  at::Tensor lens = at::empty({w}, at::kLong);
  comm.all_gather(lens, len);
  int64_t max_len = lens.max().item<int64_t>();
  at::Tensor buf = at::zeros({max_len}, at::kByte);
  if (!bytes.empty()) std::memcpy(buf.data_ptr(), bytes.data(), bytes.size());
  at::Tensor all = at::empty({w * max_len}, at::kByte);
  comm.all_gather(all, buf);
  std::vector<runtime::WireSample> out;
  const uint8_t* base = all.data_ptr<uint8_t>();
  for (int64_t r = 0; r < w; ++r) {
    const int64_t n = lens[r].item<int64_t>();
    const uint8_t* p = base + r * max_len;
    nlohmann::json part = nlohmann::json::from_msgpack(p, p + n);
    for (const auto& j : part) out.push_back(sample_from_json(j));
  }
  return out;
}

class TrainRole final : public Role {
 public:
  TrainRole(RoleContext ctx, const JobOptions& job)
      : Role("train"), ctx_(std::move(ctx)), job_(job) {}

  std::string init() override {
    if (job_.train_backend != "fsdp" && job_.train_backend != "megatron") {
      fail("--train-backend must be fsdp or megatron, got '{}'", job_.train_backend);
    }
    world_ = job_.placement.actor_num_nodes * job_.placement.actor_num_gpus_per_node;
    if (world_ < 1) fail("the train group needs at least one rank, got {}", world_);
    if (ctx_.rank < 0 || ctx_.rank >= world_) {
      fail("train rank {} outside the group of {} ranks", ctx_.rank, world_);
    }
    // --load --finetune: the checkpoint's weights (its HF model/) are the start point.
    JobOptions model_job = job_;
    if (!job_.load.empty() && job_.finetune) {
      model_job.model = checkpoint_model_dir(find_resume_point(job_.load, job_.ckpt_step)).string();
    }
    if (world_ == 1) {
      model_ = load_model(model_job);
      trainer_ = std::make_unique<train::Trainer>(*model_, job_.train);
    } else {
      if (job_.dist_master_port <= 0) {
        fail(
            "train group of {} ranks: --dist-master-port is not set (anvil head picks a free "
            "port when it starts the job)",
            world_);
      }
      dist::CommOptions co;
      co.master_addr = job_.dist_master_addr;
      co.master_port = job_.dist_master_port;
      co.rank = ctx_.rank;
      co.world_size = world_;
      co.timeout = std::chrono::milliseconds(job_.transfer_timeout_ms);
      const at::Device device = role_device(job_);
      co.backend = device.is_cuda() ? dist::CommBackend::Nccl : dist::CommBackend::Gloo;
      comm_ = dist::Communicator::create(co);
      if (job_.train_backend == "megatron") {
        // TP x DP x PP mesh (TP innermost); each rank holds its TP slice of its pipeline
        // stage, the distributed optimizer shards fp32 masters and AdamW state over DP
        // (backends/megatron).
        megatron::Mesh mesh = megatron::Mesh::create(comm_, job_.tensor_model_parallel_size,
                                                     job_.pipeline_model_parallel_size);
        mega_ = std::make_unique<megatron::MegatronModel>(
            std::move(mesh), model_job.model, models::parse_dtype_name(job_.dtype), device);
        mega_->set_sequence_parallel(job_.sequence_parallel);
        mega_trainer_ = std::make_unique<megatron::MegatronTrainer>(*mega_, job_.train);
      } else {
        init_fsdp(model_job.model, device);
      }
    }
    // --seed (the same on every rank, as Megatron's data-parallel ranks), then --load
    // restores the checkpoint's RNG state over it.
    at::manual_seed(job_.seed);
    if (!job_.load.empty() && !job_.finetune) {
      load_checkpoint();
    }
    runtime::RolloutReceiver::Options o;
    o.host = ctx_.bind_host;
    receiver_ = std::make_unique<runtime::RolloutReceiver>(ctx_.token, o);
    cancel_target_.store(receiver_.get());
    if (job_.train.loss.loss_type == "sft_loss") start_sft_data();
    return info();
  }

  std::string train(uint64_t first_id, uint64_t parts) override {
    // SFT mode (--loss-type sft_loss): no rollout role; this rank reads the batch itself.
    if (parts == 0) return train_sft(first_id);
    uint64_t rollout_id = first_id;
    runtime::Rollout r;
    for (uint64_t i = 0; i < parts; ++i) {
      runtime::Rollout p = receiver_->take(first_id + i, job_.transfer_timeout_ms);
      for (auto& s : p.samples) r.samples.push_back(std::move(s));
    }
    if (comm_) r.samples = all_gather_samples(*comm_, r.samples);
    canonical_order(r.samples);
    if (r.samples.empty()) fail("train rank {}: rollout {} has no samples", ctx_.rank, rollout_id);
    std::vector<double> raw;
    for (const auto& s : r.samples) raw.push_back(s.reward);
    // Off-policy distance: the weight version this rank holds minus the one each sample was
    // generated with (0 in the synchronous loop, 1 one-step-off).
    double staleness_sum = 0, staleness_max = 0;
    for (const auto& s : r.samples) {
      const double d = static_cast<double>(version_) - static_cast<double>(s.weight_version);
      staleness_sum += d;
      staleness_max = std::max(staleness_max, d);
    }
    int64_t group = job_.rollout.n_samples_per_prompt;
    if (static_cast<int64_t>(raw.size()) % group != 0) {
      fail(
          "train rank {}: rollout {} has {} samples, not whole groups of "
          "--n-samples-per-prompt {}",
          ctx_.rank, rollout_id, raw.size(), group);
    }
    std::vector<double> rewards = train::post_process_rewards(
        raw, job_.train.advantage.estimator, group, !job_.disable_rewards_normalization,
        !job_.disable_grpo_std_normalization);
    std::vector<train::TrainSample> samples;
    std::vector<at::Tensor> ref;
    bool have_ref = true;
    for (size_t i = 0; i < r.samples.size(); ++i) {
      samples.push_back(to_train_sample(r.samples[i]));
      samples.back().reward = rewards[i];
      const auto& lp = r.samples[i].ref_logprobs;
      if (lp.empty()) have_ref = false;
      ref.push_back(at::tensor(at::ArrayRef<float>(lp.data(), lp.size()), at::kFloat));
    }
    if (job_.use_ref() && !have_ref) {
      fail(
          "train rank {}: rollout {} came without reference log-probs, which --use-kl-loss / "
          "--kl-coef need",
          ctx_.rank, rollout_id);
    }
    auto t0 = std::chrono::steady_clock::now();
    std::vector<train::Metrics> steps =
        train_steps(samples, have_ref ? ref : std::vector<at::Tensor>{});
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ++version_;
    nlohmann::json out = {{"rollout_id", rollout_id},   {"rank", ctx_.rank},
                          {"world_size", world_},       {"samples", samples.size()},
                          {"weight_version", version_}, {"seconds", seconds}};
    out["optimizer_steps"] = optimizer_steps();
    out["staleness_mean"] = staleness_sum / static_cast<double>(r.samples.size());
    out["staleness_max"] = staleness_max;
    out["steps"] = nlohmann::json::array();
    for (const auto& m : steps) {
      nlohmann::json step;
      for (const auto& [k, v] : m) step[k] = json_number(v);
      out["steps"].push_back(step);
    }
    return out.dump();
  }

  // Collective with W > 1: every rank gathers its share of each tensor; rank 0 pushes.
  std::string push_weights(uint64_t version, const std::string& targets_json) override {
    if (version != version_) {
      fail("train rank {} holds weight version {}, asked to push {}", ctx_.rank, version_, version);
    }
    auto j = parse_json(targets_json, "update-weights targets");
    std::vector<at::Tensor> keep;
    uint32_t crc = 0;
    std::vector<runtime::TensorView> views = full_weight_views(keep, crc, ctx_.rank == 0);
    if (ctx_.rank != 0) {
      return nlohmann::json{{"weight_version", version}, {"rank", ctx_.rank}, {"gathered", true}}
          .dump();
    }
    nlohmann::json out = {{"weight_version", version}, {"checksum", crc}};
    out["targets"] = nlohmann::json::array();
    for (const auto& t : j.value("targets", nlohmann::json::array())) {
      runtime::WeightPushOptions o;
      o.shared_memory = t.value("shared_memory", false);
      o.deadline_ms = job_.transfer_timeout_ms;
      std::string endpoint = t.value("endpoint", "");
      auto t0 = std::chrono::steady_clock::now();
      auto& pusher = pushers_[endpoint];
      if (!pusher) pusher = std::make_unique<runtime::WeightPusher>(endpoint, ctx_.token);
      auto res = pusher->push(version, views, o);
      double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      out["targets"].push_back({{"endpoint", endpoint},
                                {"shared_memory", o.shared_memory},
                                {"chunks", res.chunks},
                                {"bytes", res.bytes},
                                {"tensors", res.tensors},
                                {"seconds", s}});
    }
    return out.dump();
  }

  // Collective with W > 1 (gathers every tensor to checksum it).
  std::string version() override {
    return nlohmann::json{{"weight_version", version_}, {"checksum", checksum()}}.dump();
  }

  // Collective with W > 1: every rank writes its shard file, rank 0 the HF model/. The
  // request's state (the rollout engines' cursors, actors/resume_state.hpp) is stored in
  // trainer_state.json inside the step directory, before `latest` moves.
  std::string save(const std::string& request) override {
    SaveRequest req = parse_save_request(request);
    if (req.iteration >= 0 && req.iteration != static_cast<int64_t>(version_)) {
      fail("train rank {} holds weight version {}, asked to save iteration {}", ctx_.rank, version_,
           req.iteration);
    }
    nlohmann::json state = req.state;
    state["weight_version"] = version_;
    state["rollout_id"] = version_;  // the next rollout to generate and train
    if (sft_loader_) {
      // SFT mode: the dataset position after the last trained sample, so --load continues.
      state["sft_data"] = {{"data_cursor", sft_cursor_.to_json()},
                           {"tokens_seen", sft_tokens_seen_}};
    }
    const std::string& dir = req.dir;
    if (mega_) {
      mega_trainer_->save_checkpoint(dir, static_cast<int64_t>(version_), state, job_.model,
                                     models::parse_dtype_name(job_.dtype));
    } else if (fsdp_) {
      fsdp_->save_checkpoint(dir, static_cast<int64_t>(version_), trainer_->optimizer(), state,
                             job_.model);
    } else {
      train::save_checkpoint(dir, static_cast<int64_t>(version_), *model_, trainer_->optimizer(),
                             state, job_.model);
    }
    return nlohmann::json{{"saved", dir}, {"iteration", version_}, {"rank", ctx_.rank}}.dump();
  }

  // Colocated mode: the training state (weights or shards, AdamW state) leaves the device
  // while the engines generate, and the device's cached blocks go back to the driver so the
  // engine process can use them. On the CPU there is nothing to give back.
  void cancel() override {
    if (auto* r = cancel_target_.load()) r->cancel("the job is stopping");
  }

  std::string offload() override { return move_state(/*to_host=*/true); }
  std::string onload() override { return move_state(/*to_host=*/false); }

 private:
  // ---- SFT mode: the "rollout function" is the dataset ----------------------------------
  // Every rank reads the same deterministic sample order (the Trainer picks each rank's
  // micro-batches from the global batch, as with rollouts): conversations rendered with the
  // chat template, token-exact loss masks on the assistant tokens (rollout/data, sft mode).
  void start_sft_data() {
    sft_chat_ =
        std::make_unique<data::ChatTokenizer>(data::ChatTokenizer::from_model_dir(job_.model));
    sft_source_ = std::make_unique<data::PromptSource>(job_.data);
    sft_loader_ = std::make_unique<data::SampleLoader>(*sft_source_, *sft_chat_,
                                                       data::LoaderMode::Sft, job_.data);
    // --load of an SFT checkpoint of the loop: continue the dataset where it stopped.
    if (loaded_state_.contains("sft_data")) {
      const auto& d = loaded_state_["sft_data"];
      const std::string where = job_.load + " (trainer_state.json state.sft_data)";
      if (!d.contains("data_cursor")) fail("{}: no 'data_cursor'", where);
      sft_source_->restore(data::DataCursor::from_json(d["data_cursor"], where));
      sft_tokens_seen_ = d.value("tokens_seen", 0.0);
      L()->info("train rank {}: SFT data resumed at epoch {}, sample {}", ctx_.rank,
                sft_source_->cursor().epoch, sft_source_->cursor().offset);
    } else if (!job_.load.empty() && !job_.finetune) {
      fail(
          "--load {}: the checkpoint has no SFT data cursor (state.sft_data): not written by "
          "an SFT job of the loop; use --finetune to start from its weights",
          job_.load);
    }
    sft_cursor_ = sft_source_->cursor();
    if (job_.data.prefetch > 0) {
      sft_queue_.emplace([this] { return sft_loader_->next(); },
                         static_cast<size_t>(job_.data.prefetch));
    }
  }

  // An encoded conversation as a trainer sample (as `anvil sft` does): the response starts
  // at the first trained token, with at least one token of context before it.
  static std::optional<train::TrainSample> sft_sample(const data::Encoded& e) {
    size_t first = 0;
    while (first < e.loss_mask.size() && e.loss_mask[first] == 0) ++first;
    if (first == e.loss_mask.size()) return std::nullopt;
    first = std::max<size_t>(first, 1);
    if (first >= e.ids.size()) return std::nullopt;
    train::TrainSample s;
    s.tokens.assign(e.ids.begin(), e.ids.end());
    s.response_length = static_cast<int64_t>(e.ids.size() - first);
    for (size_t i = first; i < e.loss_mask.size(); ++i) s.loss_mask.push_back(e.loss_mask[i]);
    return s;
  }

  std::string train_sft(uint64_t step_id) {
    if (!sft_loader_) {
      fail("train rank {}: asked for an SFT step but --loss-type is {}", ctx_.rank,
           job_.train.loss.loss_type);
    }
    const int64_t gbs = job_.train.schedule.global_batch_size;
    const double depth = sft_queue_ ? static_cast<double>(sft_queue_->depth()) : 0.0;
    std::vector<train::TrainSample> batch;
    while (static_cast<int64_t>(batch.size()) < gbs) {
      auto t = sft_queue_ ? sft_queue_->pop() : sft_loader_->next();
      if (!t) {
        fail(
            "SFT step {}: the data ran out after {} of --global-batch-size {} samples "
            "(fewer --num-rollout steps, or more --num-epoch)",
            step_id, batch.size(), gbs);
      }
      sft_cursor_ = t->cursor;
      auto s = sft_sample(t->encoded);
      if (!s) {
        sft_source_->note_skipped(*t->sample);
        continue;
      }
      batch.push_back(std::move(*s));
    }
    auto t0 = std::chrono::steady_clock::now();
    std::vector<train::Metrics> steps = train_steps(batch, {});
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ++version_;
    nlohmann::json out = {{"rollout_id", step_id},
                          {"rank", ctx_.rank},
                          {"world_size", world_},
                          {"samples", batch.size()},
                          {"weight_version", version_},
                          {"seconds", seconds},
                          {"optimizer_steps", optimizer_steps()}};
    out["steps"] = nlohmann::json::array();
    for (const auto& m : steps) {
      nlohmann::json step;
      for (const auto& [k, v] : m) step[k] = json_number(v);
      const double loss = m.count("loss") ? m.at("loss") : 0.0;
      sft_tokens_seen_ += m.count("tokens") ? m.at("tokens") : 0.0;
      step["sft/loss"] = json_number(loss);
      if (job_.train.loss.calculate_per_token_loss) step["sft/per_token_loss"] = json_number(loss);
      step["sft/tokens_seen"] = sft_tokens_seen_;
      step["sft/epoch"] = sft_cursor_.epoch;
      step["data/prefetch_queue_depth"] = depth;
      out["steps"].push_back(step);
    }
    return out.dump();
  }

  // --load: the checkpoint's weights, AdamW moments and step (the LR schedule follows it)
  // and RNG. Whatever wrote it (one rank, an FSDP group of any size, any Megatron mesh)
  // loads into whatever this group is: resharded through train::StateReader, the RNG kept
  // only when the layout is the same. The weight version continues from it.
  void load_checkpoint() {
    ResumePoint p = find_resume_point(job_.load, job_.ckpt_step);
    const auto iteration = std::optional<int64_t>(p.iteration);
    if (mega_) {
      auto loaded = mega_trainer_->load_checkpoint(job_.load, iteration);
      if (loaded) loaded_state_ = loaded->second;
    } else if (fsdp_) {
      auto loaded = fsdp_->load_checkpoint(job_.load, trainer_->optimizer(), iteration);
      if (loaded) loaded_state_ = loaded->second;
    } else {
      auto loaded = train::load_checkpoint(job_.load, *model_, trainer_->optimizer(), iteration);
      if (loaded) loaded_state_ = loaded->state;
    }
    version_ = static_cast<uint64_t>(p.iteration);
    loaded_iteration_ = p.iteration;
  }

  // --train-backend fsdp with W > 1: this rank's shards under train::Trainer's flow.
  void init_fsdp(const std::string& model_dir, const at::Device& device) {
    fsdp::FsdpOptions fo;
    fo.reshard_after_forward = job_.reshard_after_forward;
    fo.cpu_offload = job_.fsdp_cpu_offload;
    fsdp_ = std::make_unique<fsdp::FsdpModel>(comm_, model_dir,
                                              models::parse_dtype_name(job_.dtype), device, fo);
    train::TrainerOptions o = job_.train;
    o.schedule.dp_size = world_;
    o.dp_rank = ctx_.rank;
    trainer_ = std::make_unique<train::Trainer>(fsdp_->model(), o, fsdp_->trainer_hooks());
  }

  // One optimizer step per global batch of `samples` on whichever engine this rank runs.
  std::vector<train::Metrics> train_steps(const std::vector<train::TrainSample>& samples,
                                          const std::vector<at::Tensor>& ref) {
    return mega_trainer_ ? mega_trainer_->train_rollout(samples, ref)
                         : trainer_->train_rollout(samples, ref);
  }
  int64_t optimizer_steps() const {
    return mega_trainer_ ? mega_trainer_->steps() : trainer_->steps();
  }

  std::string move_state(bool to_host) {
    const at::Device device = role_device(job_);
    nlohmann::json out = {{"rank", ctx_.rank}, {"device", job_.device}};
    if (!device.is_cuda()) {
      out["moved"] = false;
      return out.dump();
    }
    at::NoGradGuard no_grad;
    const at::Device target = to_host ? at::Device(at::kCPU) : device;
    if (mega_trainer_) {
      to_host ? mega_trainer_->offload() : mega_trainer_->onload();
    } else if (fsdp_) {
      to_host ? fsdp_->offload() : fsdp_->onload();
      trainer_->optimizer().move_state_to(target);
    } else {
      trainer_->move_state_to(target);
    }
    if (to_host) c10::getDeviceAllocator(c10::kCUDA)->emptyCache();
    out["moved"] = true;
    out["offloaded"] = to_host;
    return out.dump();
  }

  // The full weights in HF order as views (kept alive by `keep`) and their CRC-32C. One
  // rank: the model's own tensors. FSDP: gathered in buckets of --update-weight-buffer-size
  // in the model's dtype (every rank takes part); only `keep_tensors` ranks keep them.
  std::vector<runtime::TensorView> full_weight_views(std::vector<at::Tensor>& keep, uint32_t& crc,
                                                     bool keep_tensors = true) {
    keep.clear();
    crc = 0;
    if (!fsdp_ && !mega_) {
      auto views = weight_views(*model_, keep);
      for (const auto& v : views) crc = runtime::crc32c(v.data, v.bytes, crc);
      return views;
    }
    std::vector<runtime::TensorView> views;
    const at::ScalarType dtype = models::parse_dtype_name(job_.dtype);
    auto take = [&](const std::vector<std::pair<std::string, at::Tensor>>& bucket) {
      for (const auto& [name, full] : bucket) {
        std::vector<at::Tensor> one;
        runtime::TensorView v = host_view(name, full, keep_tensors ? keep : one);
        crc = runtime::crc32c(v.data, v.bytes, crc);
        if (keep_tensors) views.push_back(std::move(v));
      }
    };
    if (mega_) {
      mega_->for_each_full_bucket(job_.update_weight_buffer_size, dtype, take);
    } else {
      fsdp_->for_each_full_bucket(job_.update_weight_buffer_size, dtype, take);
    }
    return views;
  }
  uint32_t checksum() {
    std::vector<at::Tensor> keep;
    uint32_t crc = 0;
    full_weight_views(keep, crc, /*keep_tensors=*/false);
    return crc;
  }
  std::string info() {
    return nlohmann::json{
        {"role", "train"},
        {"rank", ctx_.rank},
        {"world_size", world_},
        {"endpoint", ctx_.bind_host + ":" + std::to_string(receiver_->port())},
        {"weight_version", version_},
        {"loaded_iteration",
         loaded_iteration_ >= 0 ? nlohmann::json(loaded_iteration_) : nlohmann::json()},
        {"checksum", checksum()}}
        .dump();
  }
  RoleContext ctx_;
  JobOptions job_;
  int world_ = 1;
  std::unique_ptr<models::DecoderModel> model_;    // one rank
  std::shared_ptr<dist::Communicator> comm_;       // W > 1
  std::unique_ptr<fsdp::FsdpModel> fsdp_;          // W > 1, --train-backend fsdp
  std::unique_ptr<megatron::MegatronModel> mega_;  // W > 1, --train-backend megatron
  std::unique_ptr<megatron::MegatronTrainer> mega_trainer_;
  std::unique_ptr<train::Trainer> trainer_;
  std::unique_ptr<runtime::RolloutReceiver> receiver_;
  std::atomic<runtime::RolloutReceiver*> cancel_target_{nullptr};  // receiver_, for cancel()
  std::map<std::string, std::unique_ptr<runtime::WeightPusher>> pushers_;  // by endpoint
  uint64_t version_ = 0;
  int64_t loaded_iteration_ = -1;                           // --load: the checkpoint's iteration
  nlohmann::json loaded_state_ = nlohmann::json::object();  // --load: its trainer state
  // SFT mode (--loss-type sft_loss).
  std::unique_ptr<data::ChatTokenizer> sft_chat_;
  std::unique_ptr<data::PromptSource> sft_source_;
  std::unique_ptr<data::SampleLoader> sft_loader_;
  std::optional<data::PrefetchQueue<data::TokenizedSample>> sft_queue_;
  data::DataCursor sft_cursor_;
  double sft_tokens_seen_ = 0;
};

}  // namespace

std::unique_ptr<Role> make_train_role(const RoleContext& context, const JobOptions& job) {
  return std::make_unique<TrainRole>(context, job);
}

}  // namespace anvil::actors

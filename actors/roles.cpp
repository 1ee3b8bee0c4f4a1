// The train, ref and rollout roles: thin adapters from control calls to the backends.
// Letters: R = response tokens of a sample.
#include "actors/job_options.hpp"
#include "actors/role.hpp"
#include "backends/common/error.hpp"
#include "backends/common/json_util.hpp"
#include "backends/models/decoder.hpp"
#include "backends/train/checkpoint.hpp"
#include "rollout/data/conversation.hpp"
#include "rollout/data/sample_loader.hpp"
#include "rollout/engine/engine.hpp"
#include "rollout/reward/reward.hpp"
#include "runtime/crc32c.hpp"
#include "runtime/data_plane.hpp"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>
#include "backends/common/log.hpp"

#include <spdlog/spdlog.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <map>
#include <mutex>

namespace anvil::actors {

namespace {
std::shared_ptr<spdlog::logger> L() { return anvil::log::get("rollout"); }
}  // namespace

void check_role_name(const std::string& role) {
  for (const auto& r : role_names()) {
    if (r == role) return;
  }
  fail("unknown role '{}' (known: train, ref, rollout, weight-sync)", role);
}

void Role::unsupported(const char* op) const { fail("role {} does not handle '{}'", name_, op); }
std::string Role::generate(uint64_t, const std::string&) { unsupported("generate"); }
std::string Role::compute_ref(uint64_t, const std::string&) { unsupported("compute-ref"); }
std::string Role::train(uint64_t, uint64_t) { unsupported("train"); }
std::string Role::push_weights(uint64_t, const std::string&) { unsupported("update-weights"); }
std::string Role::version() { unsupported("version"); }
std::string Role::save(const std::string&) { unsupported("save"); }
std::string Role::offload() { unsupported("offload"); }
std::string Role::onload() { unsupported("onload"); }

namespace {

nlohmann::json parse_json(const std::string& text, const char* what) {
  try {
    return nlohmann::json::parse(text);
  } catch (const std::exception& e) {
    fail("{}: malformed JSON: {}", what, e.what());
  }
}

// A number, or its text for inf / NaN (JSON has neither).
nlohmann::json json_number(double v) {
  if (std::isfinite(v)) return v;
  return std::isnan(v) ? "nan" : (v > 0 ? "inf" : "-inf");
}

std::string st_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return "F32";
    case at::kBFloat16:
      return "BF16";
    case at::kHalf:
      return "F16";
    case at::kDouble:
      return "F64";
    default:
      fail("weights: dtype {} cannot be sent", c10::toString(t));
  }
}

// The model's parameters as borrowed views, in spec order (contiguous CPU tensors).
std::vector<runtime::TensorView> weight_views(const models::DecoderModel& model,
                                              std::vector<at::Tensor>& keep) {
  std::vector<runtime::TensorView> views;
  keep.clear();
  const auto& specs = model.specs();
  for (size_t i = 0; i < specs.size(); ++i) {
    at::Tensor t = model.parameters()[i];
    if (!t.defined()) continue;
    t = t.detach().to(at::kCPU).contiguous();
    keep.push_back(t);
    runtime::TensorView v;
    v.name = specs[i].name;
    v.dtype = st_dtype(t.scalar_type());
    v.shape = t.sizes().vec();
    v.data = static_cast<const uint8_t*>(t.data_ptr());
    v.bytes = t.nbytes();
    views.push_back(std::move(v));
  }
  return views;
}

uint32_t weights_checksum(const models::DecoderModel& model) {
  std::vector<at::Tensor> keep;
  uint32_t crc = 0;
  for (const auto& v : weight_views(model, keep)) crc = runtime::crc32c(v.data, v.bytes, crc);
  return crc;
}

std::vector<std::string> targets_of(const std::string& targets_json, const char* what) {
  auto j = parse_json(targets_json, what);
  if (!j.contains("targets") || !j["targets"].is_array()) fail("{}: no 'targets' list", what);
  std::vector<std::string> out;
  for (const auto& t : j["targets"]) {
    if (!t.is_string()) fail("{}: targets must be host:port strings", what);
    out.push_back(t.get<std::string>());
  }
  return out;
}

// Splits a rollout by prompt group over `n` targets (contiguous ranges of groups).
std::vector<runtime::Rollout> split_by_group(const runtime::Rollout& r, size_t n) {
  std::vector<runtime::Rollout> parts(n);
  std::vector<int64_t> groups;
  for (const auto& s : r.samples) {
    if (groups.empty() || groups.back() != s.group_id) groups.push_back(s.group_id);
  }
  size_t g = 0;
  int64_t prev = INT64_MIN;
  for (const auto& s : r.samples) {
    if (s.group_id != prev && prev != INT64_MIN) ++g;
    prev = s.group_id;
    size_t t = groups.empty() ? 0 : g * n / groups.size();
    parts[t].samples.push_back(s);
  }
  for (auto& p : parts) p.rollout_id = r.rollout_id;
  return parts;
}

train::TrainSample to_train_sample(const runtime::WireSample& s) {
  train::TrainSample t;
  t.tokens = s.tokens;
  t.response_length = s.response_length;
  t.loss_mask = s.loss_mask;
  t.reward = s.reward;
  t.rollout_logprobs = s.rollout_logprobs;
  t.weight_version = static_cast<int64_t>(s.weight_version);
  return t;
}

std::unique_ptr<models::DecoderModel> load_model(const JobOptions& job) {
  if (job.model.empty()) fail("--model is required");
  return models::DecoderModel::from_pretrained(job.model, models::parse_dtype_name(job.dtype),
                                               at::Device(at::kCPU));
}

// ---- train ------------------------------------------------------------------------------

class TrainRole final : public Role {
 public:
  TrainRole(RoleContext ctx, const JobOptions& job)
      : Role("train"), ctx_(std::move(ctx)), job_(job) {}

  std::string init() override {
    if (job_.train_backend != "fsdp" && job_.train_backend != "megatron") {
      fail("--train-backend must be fsdp or megatron, got '{}'", job_.train_backend);
    }
    int world = job_.placement.actor_num_nodes * job_.placement.actor_num_gpus_per_node;
    if (world != 1) {
      fail(
          "train group of {} ranks: data-parallel training needs the {} backend "
          "(backends/fsdp), which this build does not provide yet; use one train rank",
          world, job_.train_backend);
    }
    model_ = load_model(job_);
    trainer_ = std::make_unique<train::Trainer>(*model_, job_.train);
    runtime::RolloutReceiver::Options o;
    o.host = ctx_.bind_host;
    receiver_ = std::make_unique<runtime::RolloutReceiver>(ctx_.token, o);
    return info();
  }

  std::string train(uint64_t first_id, uint64_t parts) override {
    uint64_t rollout_id = first_id;
    runtime::Rollout r;
    for (uint64_t i = 0; i < parts; ++i) {
      runtime::Rollout p = receiver_->take(first_id + i, job_.transfer_timeout_ms);
      for (auto& s : p.samples) r.samples.push_back(std::move(s));
    }
    if (r.samples.empty()) fail("train rank {}: rollout {} has no samples", ctx_.rank, rollout_id);
    std::vector<double> raw;
    for (const auto& s : r.samples) raw.push_back(s.reward);
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
        trainer_->train_rollout(samples, have_ref ? ref : std::vector<at::Tensor>{});
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ++version_;
    nlohmann::json out = {{"rollout_id", rollout_id},
                          {"rank", ctx_.rank},
                          {"samples", samples.size()},
                          {"weight_version", version_},
                          {"seconds", seconds}};
    out["steps"] = nlohmann::json::array();
    for (const auto& m : steps) {
      nlohmann::json step;
      for (const auto& [k, v] : m) step[k] = json_number(v);
      out["steps"].push_back(step);
    }
    return out.dump();
  }

  std::string push_weights(uint64_t version, const std::string& targets_json) override {
    if (version != version_) {
      fail("train rank {} holds weight version {}, asked to push {}", ctx_.rank, version_, version);
    }
    auto j = parse_json(targets_json, "update-weights targets");
    std::vector<at::Tensor> keep;
    auto views = weight_views(*model_, keep);
    nlohmann::json out = {{"weight_version", version}, {"checksum", weights_checksum(*model_)}};
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

  std::string version() override {
    return nlohmann::json{{"weight_version", version_}, {"checksum", weights_checksum(*model_)}}
        .dump();
  }

  std::string save(const std::string& dir) override {
    train::save_checkpoint(dir, static_cast<int64_t>(version_), *model_, trainer_->optimizer(),
                           nlohmann::json{{"weight_version", version_}});
    return nlohmann::json{{"saved", dir}, {"iteration", version_}}.dump();
  }

 private:
  std::string info() const {
    return nlohmann::json{{"role", "train"},
                          {"rank", ctx_.rank},
                          {"endpoint", ctx_.bind_host + ":" + std::to_string(receiver_->port())},
                          {"weight_version", version_},
                          {"checksum", weights_checksum(*model_)}}
        .dump();
  }
  RoleContext ctx_;
  JobOptions job_;
  std::unique_ptr<models::DecoderModel> model_;
  std::unique_ptr<train::Trainer> trainer_;
  std::unique_ptr<runtime::RolloutReceiver> receiver_;
  std::map<std::string, std::unique_ptr<runtime::WeightPusher>> pushers_;  // by endpoint
  uint64_t version_ = 0;
};

// ---- ref --------------------------------------------------------------------------------

class RefRole final : public Role {
 public:
  RefRole(RoleContext ctx, const JobOptions& job) : Role("ref"), ctx_(std::move(ctx)), job_(job) {}

  std::string init() override {
    model_ = load_model(job_);
    runtime::RolloutReceiver::Options o;
    o.host = ctx_.bind_host;
    receiver_ = std::make_unique<runtime::RolloutReceiver>(ctx_.token, o);
    return nlohmann::json{{"role", "ref"},
                          {"rank", ctx_.rank},
                          {"endpoint", ctx_.bind_host + ":" + std::to_string(receiver_->port())},
                          {"weight_version", 0},
                          {"checksum", weights_checksum(*model_)}}
        .dump();
  }

  std::string compute_ref(uint64_t rollout_id, const std::string& targets_json) override {
    auto targets = targets_of(targets_json, "compute-ref targets");
    if (targets.empty()) fail("compute-ref: no train ranks to send rollout {} to", rollout_id);
    runtime::Rollout r = receiver_->take(rollout_id, job_.transfer_timeout_ms);
    std::vector<train::TrainSample> samples;
    for (const auto& s : r.samples) samples.push_back(to_train_sample(s));
    auto lp = train::response_logprobs(*model_, samples, job_.train.temperature,
                                       job_.train.log_probs_chunk_size, /*max_tokens=*/8192);
    for (size_t i = 0; i < r.samples.size(); ++i) {
      at::Tensor t = lp.logprobs[i].to(at::kFloat).contiguous();
      r.samples[i].ref_logprobs.assign(t.data_ptr<float>(), t.data_ptr<float>() + t.numel());
    }
    auto parts = split_by_group(r, targets.size());
    uint64_t tokens = 0;
    for (size_t i = 0; i < targets.size(); ++i) {
      tokens +=
          runtime::push_rollout(targets[i], ctx_.token, parts[i], job_.transfer_timeout_ms).tokens;
    }
    return nlohmann::json{
        {"rollout_id", rollout_id}, {"samples", r.samples.size()}, {"tokens", tokens}}
        .dump();
  }

 private:
  RoleContext ctx_;
  JobOptions job_;
  std::unique_ptr<models::DecoderModel> model_;
  std::unique_ptr<runtime::RolloutReceiver> receiver_;
};

// ---- rollout ----------------------------------------------------------------------------

int finish_status(engine::FinishReason r) {
  switch (r) {
    case engine::FinishReason::kStop:
      return 0;  // COMPLETED
    case engine::FinishReason::kLength:
      return 1;  // TRUNCATED
    default:
      return 2;  // ABORTED
  }
}

class RolloutRole final : public Role {
 public:
  RolloutRole(RoleContext ctx, const JobOptions& job)
      : Role("rollout"), ctx_(std::move(ctx)), job_(job) {}

  std::string init() override {
    if (job_.rollout.max_response_len < 1) fail("--rollout-max-response-len must be >= 1");
    if (job_.rollout.rollout_batch_size < 1) fail("--rollout-batch-size must be >= 1");
    if (job_.rollout.n_samples_per_prompt < 1) fail("--n-samples-per-prompt must be >= 1");
    if (!job_.reward.rm_type.empty()) job_.reward.validate();
    model_ = std::shared_ptr<models::DecoderModel>(load_model(job_));
    chat_ = std::make_unique<data::ChatTokenizer>(data::ChatTokenizer::from_model_dir(job_.model));
    source_ = std::make_unique<data::PromptSource>(job_.data);
    loader_ =
        std::make_unique<data::SampleLoader>(*source_, *chat_, data::LoaderMode::Prompt, job_.data);
    engine::EngineOptions eo;
    eo.background = false;  // generate() drives the steps on this role's thread
    eo.eos_token_ids = engine::model_eos_token_ids(job_.model, model_->config());
    eo.seed = job_.rollout.sampling_seed;
    eo.weight_version = "0";
    auto tokenizer = std::make_shared<const data::Tokenizer>(
        data::Tokenizer::from_file(std::filesystem::path(job_.model) / "tokenizer.json"));
    engine_ = std::make_unique<engine::Engine>(model_, eo, tokenizer);
    runtime::WeightReceiver::Options o;
    o.host = ctx_.bind_host;
    receiver_ = std::make_unique<runtime::WeightReceiver>(
        ctx_.token, o, [this](const runtime::WeightVersion& v) {
          std::lock_guard<std::mutex> lock(mutex_);
          size_t defined = 0;
          for (const auto& p : model_->parameters()) defined += p.defined() ? 1 : 0;
          if (v.tensors.size() != defined) {
            fail("weight version {}: {} tensors, the model has {} parameters", v.version,
                 v.tensors.size(), defined);
          }
          std::vector<std::pair<std::string, at::Tensor>> tensors;
          for (const auto& t : v.tensors) {
            at::Tensor& p = model_->parameter(t.name);
            if (st_dtype(p.scalar_type()) != t.dtype) {
              fail("weight version {}: tensor '{}' is {}, the model holds {}", v.version, t.name,
                   t.dtype, st_dtype(p.scalar_type()));
            }
            tensors.emplace_back(t.name,
                                 at::from_blob(const_cast<uint8_t*>(t.bytes.data()), t.shape,
                                               at::TensorOptions().dtype(p.scalar_type())));
          }
          engine_->update_weights(tensors, std::to_string(v.version));
          version_ = v.version;
          L()->info("rollout engine {}: weight version {} applied ({} tensors, {} bytes{})",
                    ctx_.rank, v.version, v.tensors.size(), v.bytes,
                    v.via_shared_memory ? ", shared memory" : "");
        });
    std::lock_guard<std::mutex> lock(mutex_);
    return nlohmann::json{{"role", "rollout"},
                          {"rank", ctx_.rank},
                          {"endpoint", ctx_.bind_host + ":" + std::to_string(receiver_->port())},
                          {"weight_version", version_},
                          {"checksum", weights_checksum(*model_)}}
        .dump();
  }

  std::string generate(uint64_t rollout_id, const std::string& targets_json) override {
    auto targets = targets_of(targets_json, "generate targets");
    if (targets.empty()) fail("generate: rollout {} has nowhere to go", rollout_id);
    const auto& ro = job_.rollout;
    int64_t engines = job_.placement.rollout_num_gpus / job_.placement.rollout_num_gpus_per_engine;
    if (ro.rollout_batch_size % engines != 0) {
      fail("--rollout-batch-size {} is not a multiple of the {} rollout engines",
           ro.rollout_batch_size, engines);
    }
    std::lock_guard<std::mutex> lock(mutex_);
    struct Prompt {
      data::TokenizedSample sample;
      int64_t index;
    };
    std::vector<Prompt> prompts;
    std::vector<engine::GenerateRequest> requests;
    for (int64_t p = 0; p < ro.rollout_batch_size / engines; ++p) {
      // Engine e takes every e-th prompt of the shared order, so engines never repeat one.
      std::optional<data::TokenizedSample> next;
      int64_t index = 0;
      do {
        next = loader_->next();
        index = prompt_index_++;
      } while (next && index % engines != ctx_.rank);
      if (!next) fail("generate: the prompt data ran out at rollout {} prompt {}", rollout_id, p);
      if (next->encoded.ids.empty()) fail("generate: prompt {} encodes to no tokens", index);
      engine::GenerateRequest req;
      req.input_ids.assign(next->encoded.ids.begin(), next->encoded.ids.end());
      req.params.temperature = job_.train.temperature;
      req.params.top_p = ro.top_p;
      req.params.top_k = ro.top_k > 0 ? ro.top_k : -1;
      req.params.max_new_tokens = ro.max_response_len;
      req.params.n = ro.n_samples_per_prompt;
      req.params.seed = ro.sampling_seed * 1000003 + static_cast<uint64_t>(index) * 7919;
      req.rid = std::to_string(rollout_id) + "/" + std::to_string(index);
      requests.push_back(std::move(req));
      prompts.push_back({std::move(*next), index});
    }
    std::vector<engine::GenerateOutput> outputs = engine_->generate(std::move(requests));
    runtime::Rollout r;
    r.rollout_id = rollout_id;
    bool warned = false;
    for (size_t i = 0; i < outputs.size(); ++i) {
      const auto& out = outputs[i];
      const Prompt& prompt = prompts[i / static_cast<size_t>(ro.n_samples_per_prompt)];
      if (out.output_ids.empty()) {
        fail("generate: rollout {} prompt {} produced no tokens ({})", rollout_id, prompt.index,
             out.abort_message);
      }
      runtime::WireSample s;
      s.tokens = out.input_ids;
      s.tokens.insert(s.tokens.end(), out.output_ids.begin(), out.output_ids.end());
      s.response_length = static_cast<int64_t>(out.output_ids.size());
      s.rollout_logprobs = out.output_logprobs;
      s.weight_version = version_;
      s.group_id = prompt.index;
      s.status = finish_status(out.finish);
      nlohmann::json meta = nlohmann::json::parse(prompt.sample.sample->metadata.dump());
      s.metadata_json = meta.dump();
      if (!job_.reward.rm_type.empty()) {
        reward::RewardInput in;
        in.prompt = prompt.sample.encoded.text;
        in.response = out.text;
        in.label = nlohmann::json::parse(prompt.sample.sample->label.dump());
        in.metadata = meta;
        s.reward =
            reward::reward_value(reward::compute_reward(in, job_.reward), job_.reward.reward_key);
      } else if (!warned) {
        warned = true;
        if (!warned_no_rm_) L()->warn("no --rm-type: every sample's reward is 0");
        warned_no_rm_ = true;
      }
      r.samples.push_back(std::move(s));
    }
    auto parts = split_by_group(r, targets.size());
    uint64_t tokens = 0;
    for (size_t i = 0; i < targets.size(); ++i) {
      tokens +=
          runtime::push_rollout(targets[i], ctx_.token, parts[i], job_.transfer_timeout_ms).tokens;
    }
    return nlohmann::json{{"rollout_id", rollout_id},
                          {"samples", r.samples.size()},
                          {"tokens", tokens},
                          {"weight_version", version_}}
        .dump();
  }

  std::string version() override {
    std::lock_guard<std::mutex> lock(mutex_);
    return nlohmann::json{{"weight_version", version_}, {"checksum", weights_checksum(*model_)}}
        .dump();
  }

  // Colocated mode: weights to host memory and the KV cache freed while training runs.
  std::string offload() override {
    std::lock_guard<std::mutex> lock(mutex_);
    engine_->release_memory(/*weights=*/true, /*kv_cache=*/true);
    return memory_state();
  }
  std::string onload() override {
    std::lock_guard<std::mutex> lock(mutex_);
    engine_->resume_memory(/*weights=*/true, /*kv_cache=*/true);
    return memory_state();
  }

 private:
  std::string memory_state() const {
    auto st = engine_->stats();
    return nlohmann::json{{"rank", ctx_.rank},
                          {"weights_released", st.weights_released},
                          {"kv_released", st.kv_released}}
        .dump();
  }

  RoleContext ctx_;
  JobOptions job_;
  std::mutex mutex_;  // the engine: generation vs. a weight version arriving
  std::shared_ptr<models::DecoderModel> model_;
  std::unique_ptr<data::ChatTokenizer> chat_;
  std::unique_ptr<data::PromptSource> source_;
  std::unique_ptr<data::SampleLoader> loader_;
  std::unique_ptr<engine::Engine> engine_;
  int64_t prompt_index_ = 0;  // prompts of the shared order seen so far
  bool warned_no_rm_ = false;
  std::unique_ptr<runtime::WeightReceiver> receiver_;
  uint64_t version_ = 0;
};

}  // namespace

std::unique_ptr<Role> make_role(const RoleContext& context, const JobOptions& job) {
  check_role_name(context.role);
  if (context.role == "train") return std::make_unique<TrainRole>(context, job);
  if (context.role == "ref") return std::make_unique<RefRole>(context, job);
  if (context.role == "rollout") return std::make_unique<RolloutRole>(context, job);
  return nullptr;  // weight-sync: the actor itself
}

}  // namespace anvil::actors

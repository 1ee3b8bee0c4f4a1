// The train, ref and rollout roles: thin adapters from control calls to the backends.
// Letters: R = response tokens of a sample.
#include "actors/job_options.hpp"
#include "actors/resume_state.hpp"
#include "actors/role.hpp"
#include "actors/role_util.hpp"
#include "backends/common/error.hpp"
#include "backends/common/json_util.hpp"
#include "backends/models/decoder.hpp"
#include "backends/train/checkpoint.hpp"
#include "rollout/data/conversation.hpp"
#include "rollout/data/sample_loader.hpp"
#include "rollout/engine/engine.hpp"
#include "rollout/eval/evaluate.hpp"
#include "rollout/reward/reward.hpp"
#include "runtime/crc32c.hpp"
#include "runtime/data_plane.hpp"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>
#include "backends/common/log.hpp"

#include <spdlog/spdlog.h>

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
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
std::string Role::eval() { unsupported("eval"); }

namespace {

using namespace detail;

// ---- ref --------------------------------------------------------------------------------

class RefRole final : public Role {
 public:
  RefRole(RoleContext ctx, const JobOptions& job) : Role("ref"), ctx_(std::move(ctx)), job_(job) {}

  std::string init() override {
    // --ref-load: an HF directory, or a --save checkpoint directory (its latest model/).
    JobOptions ref_job = job_;
    if (!job_.ref_load.empty()) {
      namespace fs = std::filesystem;
      const fs::path dir(job_.ref_load);
      if (fs::exists(dir / "latest_checkpointed_iteration.txt")) {
        ref_job.model = checkpoint_model_dir(find_resume_point(job_.ref_load, -1)).string();
      } else if (fs::exists(dir / "config.json")) {
        ref_job.model = job_.ref_load;
      } else {
        fail(
            "--ref-load {}: neither an HF model directory (config.json) nor a checkpoint "
            "directory (latest_checkpointed_iteration.txt)",
            job_.ref_load);
      }
    }
    model_ = load_model(ref_job);
    if (!job_.ref_load.empty()) {
      const auto policy =
          models::ModelConfig::load(std::filesystem::path(job_.model) / "config.json");
      if (policy.vocab_size != model_->config().vocab_size) {
        fail("--ref-load {}: vocabulary of {} tokens, the policy (--model {}) has {}",
             job_.ref_load, model_->config().vocab_size, job_.model, policy.vocab_size);
      }
      L()->info("reference model from {} (--ref-load)", ref_job.model);
    }
    runtime::RolloutReceiver::Options o;
    o.host = ctx_.bind_host;
    receiver_ = std::make_unique<runtime::RolloutReceiver>(ctx_.token, o);
    cancel_target_.store(receiver_.get());
    return nlohmann::json{{"role", "ref"},
                          {"rank", ctx_.rank},
                          {"endpoint", ctx_.bind_host + ":" + std::to_string(receiver_->port())},
                          {"weight_version", 0},
                          {"checksum", weights_checksum(*model_)}}
        .dump();
  }

  void cancel() override {
    if (auto* r = cancel_target_.load()) r->cancel("the job is stopping");
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
  std::atomic<runtime::RolloutReceiver*> cancel_target_{nullptr};  // receiver_, for cancel()
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
    // --load: the checkpoint's weights (its HF model/, in the model's dtype: what a weight
    // push of that version carries), data cursor and prompt index; --finetune: its weights only.
    std::optional<ResumePoint> resume;
    if (!job_.load.empty()) resume = find_resume_point(job_.load, job_.ckpt_step);
    JobOptions model_job = job_;
    if (resume) model_job.model = checkpoint_model_dir(*resume).string();
    // --debug-train-only: no inference engine (and no model) here; this role only reads
    // --load-debug-rollout-data and hands the samples to training.
    if (!job_.debug_train_only)
      model_ = std::shared_ptr<models::DecoderModel>(load_model(model_job));
    chat_ = std::make_unique<data::ChatTokenizer>(data::ChatTokenizer::from_model_dir(job_.model));
    source_ = std::make_unique<data::PromptSource>(job_.data);
    if (resume && !job_.finetune) {
      nlohmann::json st = rollout_engine_state(*resume, ctx_.rank, engines());
      const std::string where = (resume->dir / "trainer_state.json").string();
      source_->restore(data::DataCursor::from_json(st["data_cursor"], where));
      if (!st["prompt_index"].is_number_integer() || st["prompt_index"].get<int64_t>() < 0) {
        fail("{}: rollout engine {}: 'prompt_index' must be a non-negative integer", where,
             ctx_.rank);
      }
      prompt_index_ = st["prompt_index"].get<int64_t>();
      version_ = static_cast<uint64_t>(resume->iteration);
      next_rollout_ = resume->iteration;
      loaded_iteration_ = resume->iteration;
      L()->info("rollout engine {}: resumed at rollout {} (prompt {}, epoch {}, sample {})",
                ctx_.rank, resume->iteration, prompt_index_, source_->cursor().epoch,
                source_->cursor().offset);
    }
    loader_ =
        std::make_unique<data::SampleLoader>(*source_, *chat_, data::LoaderMode::Prompt, job_.data);
    if (job_.eval.interval > 0) {
      // This engine's share of the held-out prompts: every engines()-th, from its rank.
      data::DataOptions d = job_.data;
      d.prompt_data = {job_.eval.path()};
      d.shuffle = false;
      auto all = eval::load_eval_prompts(d, *chat_);
      for (size_t j = static_cast<size_t>(ctx_.rank); j < all.size();
           j += static_cast<size_t>(engines())) {
        all[j].index = static_cast<int64_t>(j);  // seeds as in `anvil eval` of the whole set
        eval_prompts_.push_back(std::move(all[j]));
      }
    }
    if (job_.debug_train_only) {
      L()->info("rollout role {}: --debug-train-only, no inference engine started", ctx_.rank);
      return init_info();
    }
    engine::EngineOptions eo;
    eo.background = false;  // generate() drives the steps on this role's thread
    eo.eos_token_ids = engine::model_eos_token_ids(job_.model, model_->config());
    eo.seed = job_.rollout.sampling_seed;
    eo.weight_version = std::to_string(version_);
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
    return init_info();
  }

  // The init reply: where weight versions go (none with --debug-train-only: no engine) and
  // what this engine holds.
  std::string init_info() {
    std::lock_guard<std::mutex> lock(mutex_);
    return nlohmann::json{
        {"role", "rollout"},
        {"rank", ctx_.rank},
        {"endpoint", receiver_ ? ctx_.bind_host + ":" + std::to_string(receiver_->port()) : ""},
        {"weight_version", version_},
        {"loaded_iteration",
         loaded_iteration_ >= 0 ? nlohmann::json(loaded_iteration_) : nlohmann::json()},
        {"engine", model_ != nullptr},
        {"checksum", model_ ? weights_checksum(*model_) : 0u}}
        .dump();
  }

  std::string generate(uint64_t rollout_id, const std::string& targets_json) override {
    auto targets = targets_of(targets_json, "generate targets");
    // --debug-rollout-only: no train rank; the samples end in the report and the debug file.
    if (targets.empty() && !job_.debug_rollout_only) {
      fail("generate: rollout {} has nowhere to go", rollout_id);
    }
    const auto& ro = job_.rollout;
    const int64_t engines = this->engines();
    if (ro.rollout_batch_size % engines != 0) {
      fail("--rollout-batch-size {} is not a multiple of the {} rollout engines",
           ro.rollout_batch_size, engines);
    }
    std::lock_guard<std::mutex> lock(mutex_);
    // The state before this rollout's prompts: what a checkpoint of iteration k stores, even
    // when rollout k was generated ahead of that checkpoint (one-step-off).
    const int64_t k = static_cast<int64_t>(rollout_id) / engines;
    before_.emplace(k, state_before(k));
    while (before_.size() > 8) before_.erase(before_.begin());  // only the latest few matter
    next_rollout_ = std::max(next_rollout_, k + 1);
    runtime::Rollout r;
    r.rollout_id = rollout_id;
    nlohmann::json stats = nlohmann::json::object();
    if (!ro.load_debug_rollout_data.empty()) {
      r.samples = load_debug_rollout(debug_rollout_path(ro.load_debug_rollout_data, k));
      stats["loaded_from"] = debug_rollout_path(ro.load_debug_rollout_data, k);
    } else {
      stats = generate_groups(rollout_id, ro.rollout_batch_size / engines, r.samples);
    }
    if (!ro.save_debug_rollout_data.empty()) {
      save_debug_rollout(debug_rollout_path(ro.save_debug_rollout_data, k), r.samples);
    }
    double reward_sum = 0;
    int64_t response_tokens = 0;
    for (const auto& s : r.samples) {
      reward_sum += s.reward;
      response_tokens += s.response_length;
    }
    uint64_t tokens = 0;
    if (!targets.empty()) {
      auto parts = split_by_group(r, targets.size());
      for (size_t i = 0; i < targets.size(); ++i) {
        tokens += runtime::push_rollout(targets[i], ctx_.token, parts[i], job_.transfer_timeout_ms)
                      .tokens;
      }
    }
    nlohmann::json out = {{"rollout_id", rollout_id},
                          {"samples", r.samples.size()},
                          {"tokens", tokens},
                          {"reward_sum", reward_sum},
                          {"response_tokens", response_tokens},
                          {"weight_version", version_}};
    out.update(stats);
    return out.dump();
  }

  std::string version() override {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!model_) fail("rollout role {}: --debug-train-only, it holds no weights", ctx_.rank);
    return nlohmann::json{{"weight_version", version_}, {"checksum", weights_checksum(*model_)}}
        .dump();
  }

  std::string eval() override {
    std::lock_guard<std::mutex> lock(mutex_);
    nlohmann::json out = {{"rank", ctx_.rank},
                          {"weight_version", version_},
                          {"prompts", 0},
                          {"samples", 0},
                          {"correct", 0},
                          {"reward_sum", 0.0},
                          {"response_tokens", 0},
                          {"truncated", 0},
                          {"counts", nlohmann::json::array()}};
    if (eval_prompts_.empty()) return out.dump();  // more engines than eval prompts
    const eval::EvalResult r =
        eval::evaluate(*engine_, eval_prompts_, job_.reward, job_.eval.options);
    std::vector<std::pair<int64_t, int64_t>> counts(eval_prompts_.size(), {0, 0});
    double reward_sum = 0;
    int64_t tokens = 0, truncated = 0;
    for (const auto& s : r.samples_detail) {
      auto& [n, c] = counts[static_cast<size_t>(s.prompt_index)];
      ++n;
      c += s.correct ? 1 : 0;
      reward_sum += s.reward;
      tokens += s.response_tokens;
      truncated += s.truncated ? 1 : 0;
    }
    out["prompts"] = r.prompts;
    out["samples"] = r.samples;
    out["correct"] = r.correct;
    out["reward_sum"] = reward_sum;
    out["response_tokens"] = tokens;
    out["truncated"] = truncated;
    for (const auto& [n, c] : counts) out["counts"].push_back({n, c});
    return out.dump();
  }

  // Writes nothing: replies with this engine's state for the checkpoint of the request's
  // iteration (the data cursor and prompt index before that rollout's prompts), which the
  // controller hands to the train ranks to store (actors/resume_state.hpp).
  std::string save(const std::string& request) override {
    SaveRequest req = parse_save_request(request);
    std::lock_guard<std::mutex> lock(mutex_);
    if (req.iteration < 0) {
      fail("rollout engine {}: the save request names no iteration", ctx_.rank);
    }
    nlohmann::json st;
    if (auto it = before_.find(req.iteration); it != before_.end()) {
      st = it->second;
    } else if (req.iteration == next_rollout_) {
      st = state_before(req.iteration);
    } else {
      fail(
          "rollout engine {}: asked for its state before rollout {}, but it has generated up "
          "to rollout {}",
          ctx_.rank, req.iteration, next_rollout_ - 1);
    }
    before_.erase(before_.begin(), before_.lower_bound(req.iteration));
    return st.dump();
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
  int64_t engines() const {
    return job_.placement.rollout_num_gpus / job_.placement.rollout_num_gpus_per_engine;
  }
  // One round of generation: `count` prompts of this engine's share, n samples each, with
  // rewards. Groups come back in prompt order, each as its n samples.
  std::vector<std::vector<runtime::WireSample>> generate_round(uint64_t rollout_id, int64_t count) {
    const auto& ro = job_.rollout;
    const int64_t engines = this->engines();
    struct Prompt {
      data::TokenizedSample sample;
      int64_t index;
    };
    std::vector<Prompt> prompts;
    std::vector<engine::GenerateRequest> requests;
    for (int64_t p = 0; p < count; ++p) {
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
    std::vector<std::vector<runtime::WireSample>> groups(prompts.size());
    bool warned = false;
    for (size_t i = 0; i < outputs.size(); ++i) {
      const auto& out = outputs[i];
      const size_t g = i / static_cast<size_t>(ro.n_samples_per_prompt);
      const Prompt& prompt = prompts[g];
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
      groups[g].push_back(std::move(s));
    }
    return groups;
  }

  // This engine's `quota` groups of rollout `rollout_id` into `samples`. Without a filter:
  // one round of `quota` prompts. With --dynamic-sampling-filter-path (slime's
  // check_reward_nonzero_std): rounds of --over-sampling-batch-size / engines prompts until
  // `quota` groups whose rewards are not all equal are kept (a group of equal rewards has
  // zero advantage under GRPO and teaches nothing); groups past the quota are dropped, as
  // slime drops them. Returns the round statistics for the controller's report.
  nlohmann::json generate_groups(uint64_t rollout_id, int64_t quota,
                                 std::vector<runtime::WireSample>& samples) {
    const auto& ro = job_.rollout;
    const bool filter = !ro.dynamic_sampling_filter.empty();
    const int64_t per_round =
        ro.over_sampling_batch_size > 0 ? ro.over_sampling_batch_size / engines() : quota;
    constexpr int64_t kMaxRounds = 64;
    int64_t kept = 0, generated = 0, filtered = 0, rounds = 0;
    while (kept < quota) {
      if (rounds == kMaxRounds) {
        fail(
            "dynamic sampling: rollout {}: after {} rounds of {} prompts only {} of {} groups "
            "had rewards that differ (--dynamic-sampling-filter-path {}); check the reward "
            "(--rm-type) or the data",
            rollout_id, rounds, per_round, kept, quota, ro.dynamic_sampling_filter);
      }
      ++rounds;
      std::vector<std::vector<runtime::WireSample>> groups;
      try {
        groups = generate_round(rollout_id, per_round);
      } catch (const Error& e) {
        if (!filter) throw;
        fail(
            "dynamic sampling: rollout {}: {}; by then {} of {} groups had rewards that differ "
            "(--dynamic-sampling-filter-path {}): check the reward (--rm-type) or the data",
            rollout_id, e.what(), kept, quota, ro.dynamic_sampling_filter);
      }
      for (auto& group : groups) {
        ++generated;
        if (filter && !rewards_differ(group)) {
          ++filtered;
          continue;
        }
        if (kept == quota) continue;  // surplus of the last round
        ++kept;
        for (auto& s : group) samples.push_back(std::move(s));
      }
    }
    nlohmann::json out = {{"groups", kept}, {"groups_generated", generated}};
    if (filter) {
      out["groups_filtered"] = filtered;
      out["rounds"] = rounds;
    }
    return out;
  }

  // slime's check_reward_nonzero_std: the group's rewards have a non-zero standard deviation.
  static bool rewards_differ(const std::vector<runtime::WireSample>& group) {
    for (const auto& s : group) {
      if (s.reward != group.front().reward) return true;
    }
    return false;
  }

  // --save/--load-debug-rollout-data: "{rollout_id}" is the RL rollout index and "{engine}"
  // this engine's rank (required when there are several engines).
  std::string debug_rollout_path(const std::string& tmpl, int64_t k) const {
    std::string out = tmpl;
    auto put = [&](const std::string& key, const std::string& value) {
      for (size_t at = out.find(key); at != std::string::npos; at = out.find(key, at))
        out.replace(at, key.size(), value), at += value.size();
    };
    put("{rollout_id}", std::to_string(k));
    put("{engine}", std::to_string(ctx_.rank));
    return out;
  }

  // One JSON object per line and sample: tokens, response_length, reward, rollout_logprobs,
  // weight_version, group_id, status, metadata. Written to a temporary file and renamed.
  void save_debug_rollout(const std::string& path,
                          const std::vector<runtime::WireSample>& samples) {
    std::filesystem::path p(path);
    if (p.has_parent_path()) std::filesystem::create_directories(p.parent_path());
    const std::string tmp = path + ".tmp." + std::to_string(::getpid());
    {
      std::ofstream f(tmp);
      if (!f) fail("--save-debug-rollout-data: cannot write {}", tmp);
      for (const auto& s : samples) {
        nlohmann::json j = {
            {"tokens", s.tokens},
            {"response_length", s.response_length},
            {"reward", s.reward},
            {"rollout_logprobs", s.rollout_logprobs},
            {"weight_version", s.weight_version},
            {"group_id", s.group_id},
            {"status", s.status},
            {"metadata",
             nlohmann::json::parse(s.metadata_json.empty() ? std::string("{}") : s.metadata_json)}};
        f << j.dump() << "\n";
      }
      f.flush();
      if (!f) fail("--save-debug-rollout-data: writing {} failed", tmp);
    }
    std::filesystem::rename(tmp, path);
  }

  std::vector<runtime::WireSample> load_debug_rollout(const std::string& path) const {
    std::ifstream f(path);
    if (!f) fail("--load-debug-rollout-data: cannot read {}", path);
    std::vector<runtime::WireSample> out;
    std::string line;
    for (int64_t n = 1; std::getline(f, line); ++n) {
      if (line.empty()) continue;
      const std::string where = path + ":" + std::to_string(n);
      nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (j.is_discarded() || !j.is_object())
        fail("--load-debug-rollout-data {}: not a JSON object", where);
      runtime::WireSample s;
      try {
        s.tokens = j.at("tokens").get<std::vector<int64_t>>();
        s.response_length = j.at("response_length").get<int64_t>();
        s.reward = j.at("reward").get<double>();
        s.rollout_logprobs = j.value("rollout_logprobs", std::vector<float>{});
        s.weight_version = j.value("weight_version", uint64_t{0});
        s.group_id = j.at("group_id").get<int64_t>();
        s.status = j.value("status", 0);
        s.metadata_json = j.value("metadata", nlohmann::json::object()).dump();
      } catch (const nlohmann::json::exception& e) {
        fail("--load-debug-rollout-data {}: {}", where, e.what());
      }
      if (s.response_length < 1 || s.response_length >= static_cast<int64_t>(s.tokens.size())) {
        fail("--load-debug-rollout-data {}: response_length {} must be in [1, {})", where,
             s.response_length, s.tokens.size());
      }
      out.push_back(std::move(s));
    }
    if (out.empty()) fail("--load-debug-rollout-data: {} holds no samples", path);
    return out;
  }

  // What a checkpoint keeps of this engine when the next rollout is `k`.
  nlohmann::json state_before(int64_t k) const {
    return {{"rank", ctx_.rank},
            {"engines", engines()},
            {"rollout", k},
            {"prompt_index", prompt_index_},
            {"data_cursor", source_->cursor().to_json()}};
  }

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
  std::vector<eval::EvalPrompt> eval_prompts_;  // this engine's share of --eval-prompt-data
  std::unique_ptr<engine::Engine> engine_;
  int64_t prompt_index_ = 0;                  // prompts of the shared order seen so far
  int64_t next_rollout_ = 0;                  // the rollout after the last one generated
  int64_t loaded_iteration_ = -1;             // --load: the checkpoint's iteration
  std::map<int64_t, nlohmann::json> before_;  // rollout k -> state_before(k), until saved
  bool warned_no_rm_ = false;
  std::unique_ptr<runtime::WeightReceiver> receiver_;
  uint64_t version_ = 0;
};

}  // namespace

std::unique_ptr<Role> make_role(const RoleContext& context, const JobOptions& job) {
  check_role_name(context.role);
  if (context.role == "train") return make_train_role(context, job);
  if (context.role == "ref") return std::make_unique<RefRole>(context, job);
  if (context.role == "rollout") return std::make_unique<RolloutRole>(context, job);
  return nullptr;  // weight-sync: the actor itself
}

}  // namespace anvil::actors

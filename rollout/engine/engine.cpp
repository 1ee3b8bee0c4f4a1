#include "rollout/engine/engine.hpp"

#include "backends/common/error.hpp"
#include "backends/common/json_util.hpp"
#include "backends/common/log.hpp"
#include "backends/common/omp_pool.hpp"
#include "backends/models/weights.hpp"
#include "rollout/data/tokenizer.hpp"
#include "rollout/engine/kv_pool.hpp"

#include <ATen/ATen.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

namespace anvil::engine {

const char* finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kLength:
      return "length";
    case FinishReason::kAbort:
      return "abort";
  }
  return "abort";
}

std::vector<int64_t> model_eos_token_ids(const std::filesystem::path& dir,
                                         const models::ModelConfig& config) {
  std::vector<int64_t> ids = config.eos_token_ids;
  auto add = [&](int64_t id) {
    if (std::find(ids.begin(), ids.end(), id) == ids.end()) ids.push_back(id);
  };
  const std::filesystem::path gen = dir / "generation_config.json";
  if (std::filesystem::exists(gen)) {
    nlohmann::json j = read_json_file(gen);
    if (j.contains("eos_token_id")) {
      const auto& e = j["eos_token_id"];
      if (e.is_number_integer()) add(e.get<int64_t>());
      if (e.is_array()) {
        for (const auto& x : e) {
          if (x.is_number_integer()) add(x.get<int64_t>());
        }
      }
    }
  }
  return ids;
}

void EngineOptions::validate() const {
  if (block_size <= 0) fail("engine: block_size must be > 0, got {}", block_size);
  if (kv_cache_tokens < 0) fail("engine: kv_cache_tokens must be >= 0, got {}", kv_cache_tokens);
  if (kv_cache_tokens == 0 && !(mem_fraction > 0 && mem_fraction < 1)) {
    fail("engine: mem_fraction must be in (0, 1), got {}", mem_fraction);
  }
  if (max_batch_tokens <= 0) fail("engine: max_batch_tokens must be > 0, got {}", max_batch_tokens);
  if (max_running <= 0) fail("engine: max_running must be > 0, got {}", max_running);
}

struct Engine::Seq {
  uint64_t id = 0;
  std::string rid;
  int64_t sample_index = 0;
  std::vector<int64_t> tokens;  // prompt then output
  int64_t prompt_len = 0;
  std::vector<float> logprobs;
  std::vector<std::vector<std::pair<int64_t, float>>> top;  // per output token
  int64_t top_logprobs_num = 0;
  std::function<void(const TokenEvent&)> on_token;
  SamplingParams params;
  uint64_t seed = 0;
  std::mt19937_64 rng;
  int64_t computed = 0;  // tokens whose KV is in the pool
  int64_t cached_tokens = 0;
  bool done = false;
  std::vector<std::unique_ptr<Seq>> followers;  // samples waiting to fork this prefill
  std::promise<GenerateOutput> promise;
  std::function<void(const GenerateOutput&)> on_finish;
  std::optional<int64_t> matched_token;
  std::optional<std::string> matched_stop;
  size_t stop_pos = std::string::npos;
  std::string abort_message;

  int64_t output_len() const { return static_cast<int64_t>(tokens.size()) - prompt_len; }
  void restart() {  // back to the prompt with the original random stream
    tokens.resize(static_cast<size_t>(prompt_len));
    logprobs.clear();
    top.clear();
    rng.seed(seed);
    computed = 0;
    cached_tokens = 0;
  }
};

namespace {

uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

int64_t dtype_bytes(at::ScalarType t) { return static_cast<int64_t>(c10::elementSize(t)); }

// The k largest entries of a row of scaled logits as (id, log-prob), largest first.
std::vector<std::pair<int64_t, float>> top_logprobs(const float* z, int64_t V, float lse,
                                                    int64_t k) {
  std::vector<int64_t> ids(static_cast<size_t>(V));
  for (int64_t i = 0; i < V; ++i) ids[static_cast<size_t>(i)] = i;
  auto before = [&](int64_t a, int64_t b) { return z[a] > z[b] || (z[a] == z[b] && a < b); };
  std::partial_sort(ids.begin(), ids.begin() + k, ids.end(), before);
  std::vector<std::pair<int64_t, float>> out;
  out.reserve(static_cast<size_t>(k));
  for (int64_t i = 0; i < k; ++i) {
    const int64_t id = ids[static_cast<size_t>(i)];
    out.emplace_back(id, z[id] - lse);
  }
  return out;
}

std::string decode(const data::Tokenizer* tok, const std::vector<int64_t>& ids, size_t from,
                   bool skip_special) {
  if (tok == nullptr) return {};
  std::vector<int32_t> ids32(ids.begin() + static_cast<int64_t>(from), ids.end());
  return tok->decode(ids32, skip_special);
}

}  // namespace

Engine::Engine(std::shared_ptr<models::DecoderModel> model, EngineOptions options,
               std::shared_ptr<const data::Tokenizer> tokenizer)
    : model_(std::move(model)), options_(std::move(options)), tokenizer_(std::move(tokenizer)) {
  options_.validate();
  const models::ModelConfig& c = model_->config();
  if (options_.eos_token_ids.empty()) options_.eos_token_ids = c.eos_token_ids;
  max_context_ = c.max_position_embeddings;
  weight_version_ = options_.weight_version;

  KVPoolShape shape;
  shape.num_layers = c.num_hidden_layers;
  shape.num_kv_heads = c.num_key_value_heads;
  shape.head_dim = c.head_dim;
  shape.block_size = options_.block_size;
  const int64_t block_bytes = shape.block_bytes(dtype_bytes(model_->dtype()));
  int64_t tokens = options_.kv_cache_tokens;
  if (tokens == 0) {
    const double host =
        static_cast<double>(sysconf(_SC_PHYS_PAGES)) * static_cast<double>(sysconf(_SC_PAGESIZE));
    tokens = static_cast<int64_t>(options_.mem_fraction * host / static_cast<double>(block_bytes)) *
             options_.block_size;
  }
  shape.num_blocks = std::max<int64_t>(1, tokens / options_.block_size);
  pool_ = std::make_unique<KVPool>(
      shape, at::TensorOptions().dtype(model_->dtype()).device(model_->device()));
  counters_.total_blocks = shape.num_blocks;
  counters_.block_size = shape.block_size;
  log::get("engine")->info("KV cache: {} blocks x {} tokens ({:.1f} MiB), max {} tokens per step",
                           shape.num_blocks, shape.block_size,
                           static_cast<double>(shape.num_blocks * block_bytes) / (1 << 20),
                           options_.max_batch_tokens);
  if (options_.background) thread_ = std::thread([this] { thread_main(); });
}

Engine::~Engine() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  work_cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  std::lock_guard lock(mu_);
  for (auto& s : running_) finish_locked(*s, FinishReason::kAbort);
  for (auto& s : waiting_) finish_locked(*s, FinishReason::kAbort);
}

const models::ModelConfig& Engine::config() const { return model_->config(); }
int64_t Engine::max_context() const { return max_context_; }

std::string Engine::weight_version() const {
  std::lock_guard lock(mu_);
  return weight_version_;
}

EngineStats Engine::stats() const {
  std::lock_guard lock(mu_);
  EngineStats s = counters_;
  s.running = static_cast<int64_t>(running_.size());
  s.waiting = 0;
  for (const auto& w : waiting_) s.waiting += 1 + static_cast<int64_t>(w->followers.size());
  for (const auto& r : running_) s.waiting += static_cast<int64_t>(r->followers.size());
  if (!kv_released_) {
    s.available_blocks = pool_->available_blocks();
    s.cached_blocks = pool_->cached_blocks();
  }
  s.paused = paused_;
  s.weights_released = weights_released_;
  s.kv_released = kv_released_;
  return s;
}

std::vector<std::future<GenerateOutput>> Engine::submit(GenerateRequest request) {
  const int64_t V = model_->config().vocab_size;
  const auto& ids = request.input_ids;
  if (ids.empty()) fail("input_ids: the prompt is empty");
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= V) {
      fail("input_ids[{}]: token id {} outside the vocabulary [0, {})", i, ids[i], V);
    }
  }
  request.params.validate();
  if (request.top_logprobs_num < 0) {
    fail("top_logprobs_num must be >= 0, got {}", request.top_logprobs_num);
  }
  const int64_t n = static_cast<int64_t>(ids.size());
  if (n >= max_context_) {
    fail("input_ids: the prompt has {} tokens; the context window ({}) leaves no room to generate",
         n, max_context_);
  }
  if (pool_->blocks_for(n + 1) > pool_->num_blocks()) {
    fail("input_ids: the prompt has {} tokens; the KV cache holds {}", n,
         pool_->num_blocks() * pool_->block_size());
  }

  std::vector<std::future<GenerateOutput>> futures;
  std::unique_lock lock(mu_);
  std::vector<std::unique_ptr<Seq>> samples;
  for (int64_t i = 0; i < request.params.n; ++i) {
    auto s = std::make_unique<Seq>();
    s->id = next_id_++;
    s->rid = request.rid;
    s->sample_index = i;
    s->tokens = ids;
    s->prompt_len = n;
    s->params = request.params;
    s->seed = request.params.seed ? *request.params.seed + static_cast<uint64_t>(i)
                                  : mix64(options_.seed ^ mix64(++seed_counter_));
    s->rng.seed(s->seed);
    s->on_finish = request.on_finish;
    s->on_token = request.on_token;
    s->top_logprobs_num = std::min(request.top_logprobs_num, V);
    futures.push_back(s->promise.get_future());
    samples.push_back(std::move(s));
  }
  if (request.params.max_new_tokens == 0) {
    for (auto& s : samples) finish_locked(*s, FinishReason::kLength);
    return futures;
  }
  std::unique_ptr<Seq> leader = std::move(samples[0]);
  for (size_t i = 1; i < samples.size(); ++i) leader->followers.push_back(std::move(samples[i]));
  waiting_.push_back(std::move(leader));
  lock.unlock();
  work_cv_.notify_all();
  return futures;
}

std::vector<GenerateOutput> Engine::generate(std::vector<GenerateRequest> requests) {
  std::vector<std::future<GenerateOutput>> futures;
  for (auto& r : requests) {
    for (auto& f : submit(std::move(r))) futures.push_back(std::move(f));
  }
  std::vector<GenerateOutput> out;
  for (auto& f : futures) {
    if (!options_.background) {
      while (f.wait_for(std::chrono::seconds(0)) != std::future_status::ready) {
        {
          std::lock_guard lock(mu_);
          if (paused_ || weights_released_ || kv_released_) {
            fail("generate: the engine is paused or its memory is released");
          }
        }
        step();
      }
    }
    out.push_back(f.get());
  }
  return out;
}

bool Engine::step() {
  std::lock_guard lock(mu_);
  step_locked();
  return !running_.empty() || !waiting_.empty();
}

void Engine::thread_main() {
  std::unique_lock lock(mu_);
  auto ready = [&] {
    return stop_ || ((!running_.empty() || !waiting_.empty()) && !paused_ && !weights_released_ &&
                     !kv_released_);
  };
  while (true) {
    if (!ready()) {
      release_omp_pool();  // idle: another thread may compute (backends/common/omp_pool.hpp)
      work_cv_.wait(lock, ready);
    }
    if (stop_) return;
    try {
      step_locked();
    } catch (const std::exception& e) {
      // A failed forward (e.g. out of device memory) aborts what was in flight rather
      // than killing the server; the engine stays usable.
      log::get("engine")->error("step failed: {}", e.what());
      for (auto& s : running_) {
        s->abort_message = e.what();
        finish_locked(*s, FinishReason::kAbort);
      }
      std::erase_if(running_, [](const auto& s) { return s->done; });
    }
    // Let API calls waiting on the lock in between steps.
    lock.unlock();
    std::this_thread::yield();
    lock.lock();
  }
}

bool Engine::ensure_blocks_locked(Seq& s, int64_t total) {
  while (!pool_->reserve(static_cast<int64_t>(s.id), total)) {
    if (running_.empty() || running_.back().get() == &s) return false;
    preempt_locked(*running_.back());
  }
  return true;
}

void Engine::preempt_locked(Seq& s) {
  pool_->release(static_cast<int64_t>(s.id));
  s.computed = 0;
  ++counters_.preemptions;
  auto it =
      std::find_if(running_.begin(), running_.end(), [&](const auto& p) { return p.get() == &s; });
  ANVIL_CHECK(it != running_.end());
  std::unique_ptr<Seq> owned = std::move(*it);
  running_.erase(it);
  waiting_.push_front(std::move(owned));
}

void Engine::admit_locked(int64_t& budget, std::vector<std::pair<Seq*, int64_t>>& scheduled) {
  while (budget > 0 && !waiting_.empty() &&
         static_cast<int64_t>(running_.size()) < options_.max_running) {
    Seq& s = *waiting_.front();
    const int64_t len = static_cast<int64_t>(s.tokens.size());
    const int64_t slot = static_cast<int64_t>(s.id);
    if (options_.prefix_cache && s.computed == 0) {
      s.computed = pool_->attach_prefix(slot, s.tokens);
      s.cached_tokens = std::max(s.cached_tokens, std::min(s.computed, s.prompt_len));
      counters_.cached_tokens += s.computed;
    }
    // Admit only when the whole prompt and one block per forked sample fit.
    const int64_t want = pool_->blocks_for(len) - pool_->blocks_for(s.computed) +
                         static_cast<int64_t>(s.followers.size());
    if (want > pool_->available_blocks()) {
      pool_->release(slot);
      s.computed = 0;
      if (running_.empty()) {
        s.abort_message = "the request does not fit in the KV cache";
        finish_locked(s, FinishReason::kAbort);
        waiting_.pop_front();
        continue;
      }
      return;
    }
    const int64_t chunk = std::min(len - s.computed, budget);
    ANVIL_CHECK(pool_->reserve(slot, s.computed + chunk));
    running_.push_back(std::move(waiting_.front()));
    waiting_.pop_front();
    scheduled.emplace_back(running_.back().get(), chunk);
    budget -= chunk;
  }
}

bool Engine::step_locked() {
  if (paused_ || weights_released_ || kv_released_) return false;
  if (running_.empty() && waiting_.empty()) return false;
  int64_t budget = options_.max_batch_tokens;
  std::vector<std::pair<Seq*, int64_t>> scheduled;  // sequence, tokens this step
  for (size_t i = 0; i < running_.size() && budget > 0; ++i) {
    Seq& s = *running_[i];
    const int64_t chunk =
        std::min<int64_t>(static_cast<int64_t>(s.tokens.size()) - s.computed, budget);
    if (!ensure_blocks_locked(s, s.computed + chunk)) {
      preempt_locked(s);  // it is the last one; nothing after it to schedule
      break;
    }
    scheduled.emplace_back(&s, chunk);
    budget -= chunk;
  }
  admit_locked(budget, scheduled);
  std::erase_if(waiting_, [](const auto& s) { return s->done; });
  if (scheduled.empty()) return false;

  // One packed forward over the pool.
  std::vector<int64_t> tokens, positions, seq_lens, slots;
  for (const auto& [s, chunk] : scheduled) {
    for (int64_t p = s->computed; p < s->computed + chunk; ++p) {
      tokens.push_back(s->tokens[static_cast<size_t>(p)]);
      positions.push_back(p);
    }
    seq_lens.push_back(chunk);
    slots.push_back(static_cast<int64_t>(s->id));
  }
  const at::Device device = model_->device();
  models::PackedBatch batch;
  batch.tokens = at::tensor(tokens, at::kLong).to(device);
  batch.positions = at::tensor(positions, at::kLong).to(device);
  batch.seq_lens = seq_lens;
  batch.cache_slots = slots;
  at::NoGradGuard no_grad;
  at::Tensor hidden = model_->forward_hidden(batch, pool_.get());  // [T, H]
  ++counters_.steps;

  // Sequences whose tokens are now all cached sample their next token.
  std::vector<Seq*> samplers;
  std::vector<int64_t> rows;
  int64_t offset = 0;
  for (const auto& [s, chunk] : scheduled) {
    const bool was_prefill = s->computed < s->prompt_len;
    s->computed += chunk;
    offset += chunk;
    if (chunk > 1 || was_prefill) {
      counters_.prefill_tokens += chunk;
    } else {
      counters_.decode_tokens += 1;
    }
    if (s->computed == static_cast<int64_t>(s->tokens.size())) {
      samplers.push_back(s);
      rows.push_back(offset - 1);
      if (options_.prefix_cache && was_prefill) {
        pool_->publish(
            static_cast<int64_t>(s->id),
            std::span<const int64_t>(s->tokens.data(), static_cast<size_t>(s->prompt_len)));
      }
    }
  }
  if (!samplers.empty()) {
    at::Tensor h = hidden.index_select(0, at::tensor(rows, at::kLong).to(device));  // [B, H]
    // Scaled fp32 logits exactly as train::token_logprobs: linear, upcast, / temperature.
    at::Tensor z = at::linear(h, model_->lm_head_weight()).to(at::kFloat);  // [B, V]
    auto temp_of = [](const Seq* s) {
      return s->params.temperature > 0 ? s->params.temperature : 1.0;
    };
    const double t0 = temp_of(samplers[0]);
    const bool uniform = std::all_of(samplers.begin(), samplers.end(),
                                     [&](const Seq* s) { return temp_of(s) == t0; });
    if (uniform) {
      if (t0 != 1.0) z = z / t0;
    } else {
      std::vector<at::Tensor> parts;
      for (size_t i = 0; i < samplers.size(); ++i) {
        at::Tensor zi = z.narrow(0, static_cast<int64_t>(i), 1);
        const double t = temp_of(samplers[i]);
        parts.push_back(t != 1.0 ? zi / t : zi);
      }
      z = at::cat(parts, 0);
    }
    at::Tensor lse = at::logsumexp(z, -1);  // [B]
    at::Tensor z_cpu = z.to(at::kCPU).contiguous();
    at::Tensor lse_cpu = lse.to(at::kCPU).contiguous();
    const int64_t V = z_cpu.size(1);
    const float* zp = z_cpu.data_ptr<float>();
    const float* lp = lse_cpu.data_ptr<float>();
    for (size_t i = 0; i < samplers.size(); ++i) {
      Seq& s = *samplers[i];
      const float* row = zp + static_cast<int64_t>(i) * V;
      // Followers fork the leader's prompt blocks before anyone writes past them.
      std::vector<Seq*> forked;
      if (!s.followers.empty()) {
        for (auto& f : s.followers) {
          pool_->fork(static_cast<int64_t>(s.id), static_cast<int64_t>(f->id));
          f->computed = s.computed;
          f->cached_tokens = f->prompt_len;
          counters_.cached_tokens += f->prompt_len;
          forked.push_back(f.get());
          running_.push_back(std::move(f));
        }
        s.followers.clear();
      }
      forked.insert(forked.begin(), &s);
      for (Seq* t : forked) {
        const int64_t y = sample_token(row, V, lp[i], t->params, t->rng);
        t->tokens.push_back(y);
        t->logprobs.push_back(row[y] - lp[i]);  // the trainer's z[y] - lse(z), in fp32
        if (t->top_logprobs_num > 0)
          t->top.push_back(top_logprobs(row, V, lp[i], t->top_logprobs_num));
        if (t->on_token) {
          try {
            t->on_token(TokenEvent{
                t->sample_index,
                std::span<const int64_t>(t->tokens).subspan(static_cast<size_t>(t->prompt_len)),
                t->logprobs, t->top});
          } catch (const std::exception& e) {
            log::get("engine")->error("on_token of request '{}' failed: {}", t->rid, e.what());
          }
        }
        check_finished_locked(*t);
      }
    }
  }
  std::erase_if(running_, [](const auto& s) { return s->done; });
  return true;
}

void Engine::check_finished_locked(Seq& s) {
  const int64_t y = s.tokens.back();
  const auto& p = s.params;
  const bool eos =
      !p.ignore_eos && std::find(options_.eos_token_ids.begin(), options_.eos_token_ids.end(), y) !=
                           options_.eos_token_ids.end();
  if (eos ||
      std::find(p.stop_token_ids.begin(), p.stop_token_ids.end(), y) != p.stop_token_ids.end()) {
    s.matched_token = y;
    finish_locked(s, FinishReason::kStop);
    return;
  }
  if (!p.stop.empty() && tokenizer_) {
    const std::string text = decode(tokenizer_.get(), s.tokens, static_cast<size_t>(s.prompt_len),
                                    p.skip_special_tokens);
    for (const std::string& stop : p.stop) {
      size_t at = text.find(stop);
      if (at != std::string::npos) {
        s.matched_stop = stop;
        s.stop_pos = p.no_stop_trim ? at + stop.size() : at;
        finish_locked(s, FinishReason::kStop);
        return;
      }
    }
  }
  if (s.output_len() >= p.max_new_tokens || static_cast<int64_t>(s.tokens.size()) >= max_context_) {
    finish_locked(s, FinishReason::kLength);
  }
}

void Engine::finish_locked(Seq& s, FinishReason reason) {
  if (s.done) return;
  s.done = true;
  pool_->release(static_cast<int64_t>(s.id));
  GenerateOutput out;
  out.rid = s.rid;
  out.sample_index = s.sample_index;
  out.input_ids.assign(s.tokens.begin(), s.tokens.begin() + s.prompt_len);
  out.output_ids.assign(s.tokens.begin() + s.prompt_len, s.tokens.end());
  out.output_logprobs = s.logprobs;
  out.output_top_logprobs = s.top;
  out.text = decode(tokenizer_.get(), s.tokens, static_cast<size_t>(s.prompt_len),
                    s.params.skip_special_tokens);
  if (s.stop_pos != std::string::npos && s.stop_pos < out.text.size()) {
    out.text.resize(s.stop_pos);
  }
  out.finish = reason;
  out.matched_token = s.matched_token;
  out.matched_stop = s.matched_stop;
  out.abort_message = s.abort_message;
  out.weight_version = weight_version_;
  out.cached_tokens = s.cached_tokens;
  if (s.on_finish) {
    try {
      s.on_finish(out);
    } catch (const std::exception& e) {
      log::get("engine")->error("on_finish of request '{}' failed: {}", s.rid, e.what());
    }
  }
  s.promise.set_value(std::move(out));
  for (auto& f : s.followers) {
    f->abort_message = s.abort_message;
    finish_locked(*f, reason);
  }
  s.followers.clear();
}

void Engine::abort(const std::string& rid) {
  std::lock_guard lock(mu_);
  auto visit = [&](Seq& s) {
    if (s.rid == rid) {
      s.abort_message = "aborted by request";
      finish_locked(s, FinishReason::kAbort);
    }
  };
  for (auto& s : running_) visit(*s);
  for (auto& s : waiting_) visit(*s);
  std::erase_if(running_, [](const auto& s) { return s->done; });
  std::erase_if(waiting_, [](const auto& s) { return s->done; });
}

void Engine::abort_all(const std::string& message) {
  std::lock_guard lock(mu_);
  for (auto& s : running_) {
    s->abort_message = message;
    finish_locked(*s, FinishReason::kAbort);
  }
  for (auto& s : waiting_) {
    s->abort_message = message;
    finish_locked(*s, FinishReason::kAbort);
  }
  running_.clear();
  waiting_.clear();
}

void Engine::pause() {
  std::lock_guard lock(mu_);
  paused_ = true;
}

void Engine::continue_generation() {
  {
    std::lock_guard lock(mu_);
    paused_ = false;
  }
  work_cv_.notify_all();
}

bool Engine::flush_cache() {
  std::lock_guard lock(mu_);
  if (!running_.empty() || !waiting_.empty()) return false;
  if (!kv_released_) pool_->flush_prefix_cache();
  return true;
}

void Engine::requeue_all_locked() {
  // Running sequences go back to the head of the queue in admission order.
  for (auto it = running_.rbegin(); it != running_.rend(); ++it) {
    pool_->release(static_cast<int64_t>((*it)->id));
    waiting_.push_front(std::move(*it));
  }
  running_.clear();
  for (auto& s : waiting_) s->restart();
}

void Engine::release_memory(bool weights, bool kv_cache) {
  std::lock_guard lock(mu_);
  if (kv_cache && !kv_released_) {
    while (!running_.empty()) preempt_locked(*running_.back());
    pool_->release_storage();
    kv_released_ = true;
  }
  if (weights && !weights_released_) {
    if (model_->device().is_cuda()) {
      weight_backup_.clear();
      for (at::Tensor& p : model_->parameters()) {
        weight_backup_.push_back(p.to(at::kCPU));
        p = at::Tensor();
      }
    }
    weights_released_ = true;
  }
}

void Engine::resume_memory(bool weights, bool kv_cache) {
  {
    std::lock_guard lock(mu_);
    if (weights && weights_released_) {
      if (!weight_backup_.empty()) {
        auto& params = model_->parameters();
        for (size_t i = 0; i < params.size(); ++i)
          params[i] = weight_backup_[i].to(model_->device());
        weight_backup_.clear();
      }
      weights_released_ = false;
    }
    if (kv_cache && kv_released_) {
      pool_->resume_storage();
      kv_released_ = false;
    }
  }
  work_cv_.notify_all();
}

void Engine::update_weights(const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                            const std::optional<std::string>& version) {
  std::lock_guard lock(mu_);
  if (weights_released_) fail("update_weights: weights are released; resume them first");
  std::vector<at::Tensor*> targets;
  for (const auto& [name, t] : tensors) {
    at::Tensor& p = model_->parameter(name);  // throws naming an unknown tensor
    if (!t.defined() || t.sizes() != p.sizes()) {
      fail("update_weights: tensor '{}' has shape [{}], the model's is [{}]", name,
           t.defined() ? fmt::format("{}", fmt::join(t.sizes(), ", ")) : "undefined",
           fmt::join(p.sizes(), ", "));
    }
    targets.push_back(&p);
  }
  {
    at::NoGradGuard no_grad;
    for (size_t i = 0; i < tensors.size(); ++i) targets[i]->copy_(tensors[i].second);
  }
  if (version) weight_version_ = *version;
  requeue_all_locked();
  if (!kv_released_) pool_->flush_prefix_cache();
}

void Engine::update_weights_from_disk(const std::filesystem::path& dir,
                                      const std::optional<std::string>& version) {
  models::ModelConfig c = models::ModelConfig::load(dir);
  std::vector<models::ParamSpec> specs = models::parameter_specs(c);
  const auto& mine = model_->specs();
  if (specs.size() != mine.size()) {
    fail("update_weights_from_disk: {} has {} tensors, the served model {}", dir.string(),
         specs.size(), mine.size());
  }
  std::vector<at::Tensor> loaded = models::load_parameters(
      dir, specs, at::TensorOptions().dtype(model_->dtype()).device(model_->device()));
  std::vector<std::pair<std::string, at::Tensor>> named;
  for (size_t i = 0; i < specs.size(); ++i) named.emplace_back(specs[i].name, loaded[i]);
  update_weights(named, version);
}

}  // namespace anvil::engine

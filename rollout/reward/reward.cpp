#include "rollout/reward/reward.hpp"

#include "backends/common/error.hpp"
#include "backends/common/log.hpp"
#include "rollout/reward/math_answer.hpp"

#include <httplib.h>

#include <chrono>
#include <random>

namespace anvil::reward {
namespace {

std::string trim(const std::string& s) {
  size_t a = s.find_first_not_of(" \t\r\n");
  if (a == std::string::npos) return {};
  size_t b = s.find_last_not_of(" \t\r\n");
  return s.substr(a, b - a + 1);
}

std::string label_text(const nlohmann::json& label) {
  if (label.is_string()) return label.get<std::string>();
  if (label.is_null()) return {};
  return label.dump();
}

struct Url {
  std::string scheme_host_port, path;
};

Url parse_url(const std::string& url) {
  const size_t scheme = url.find("://");
  if (scheme == std::string::npos) fail("--rm-url '{}': expected http://host:port/path", url);
  const std::string s = url.substr(0, scheme);
  if (s != "http" && s != "https") fail("--rm-url '{}': scheme must be http or https", url);
  const size_t slash = url.find('/', scheme + 3);
  if (slash == std::string::npos) return {url, "/"};
  return {url.substr(0, slash), url.substr(slash)};
}

nlohmann::json remote_reward(const RewardInput& sample, const RewardOptions& o) {
  const Url url = parse_url(o.rm_url);
  const nlohmann::json payload = {
      {"prompt", sample.prompt}, {"response", sample.response}, {"label", sample.label}};
  const std::string body = payload.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  static thread_local std::mt19937_64 rng(std::random_device{}());
  std::string last_error;
  for (int attempt = 0; attempt < o.max_retries; ++attempt) {
    httplib::Client client(url.scheme_host_port);
    const auto timeout = std::chrono::duration<double>(o.timeout_s);
    client.set_connection_timeout(std::chrono::duration_cast<std::chrono::microseconds>(timeout));
    client.set_read_timeout(std::chrono::duration_cast<std::chrono::microseconds>(timeout));
    auto res = client.Post(url.path, body, "application/json");
    if (!res) {
      last_error = httplib::to_string(res.error());
    } else if (res->status < 200 || res->status >= 300) {
      last_error = fmt::format("HTTP {}: {}", res->status, res->body.substr(0, 200));
    } else {
      nlohmann::json j = nlohmann::json::parse(res->body, nullptr, false);
      if (j.is_discarded()) {
        fail("remote_rm {}: reply is not JSON: {}", o.rm_url, res->body.substr(0, 200));
      }
      return j;
    }
    if (attempt + 1 < o.max_retries) {
      const double delay =
          (std::min(std::pow(2.0, attempt), 30.0) + std::uniform_real_distribution<>(0, 1)(rng)) *
          o.backoff_scale;
      log::get("reward")->info("remote_rm {}: {}; retry {}/{} in {:.2f}s", o.rm_url, last_error,
                               attempt + 1, o.max_retries, delay);
      std::this_thread::sleep_for(std::chrono::duration<double>(delay));
    }
  }
  fail("remote_rm {}: failed after {} attempts: {}", o.rm_url, o.max_retries, last_error);
}

const char* const kTypes[] = {"math", "exact_match", "remote_rm"};

}  // namespace

void RewardOptions::validate() const {
  std::string base = rm_type.rfind("boxed_", 0) == 0 ? rm_type.substr(6) : rm_type;
  if (!base.empty() && std::find(std::begin(kTypes), std::end(kTypes), base) == std::end(kTypes)) {
    fail("--rm-type '{}' is not one of math, exact_match, remote_rm (optionally boxed_...)",
         rm_type);
  }
  if (base == "remote_rm") parse_url(rm_url);
  if (max_retries < 1) fail("remote_rm: max_retries must be >= 1, got {}", max_retries);
}

nlohmann::json compute_reward(const RewardInput& sample, const RewardOptions& options) {
  std::string type = options.rm_type;
  if (sample.metadata.is_object() && sample.metadata.contains("rm_type") &&
      sample.metadata["rm_type"].is_string() &&
      !sample.metadata["rm_type"].get<std::string>().empty()) {
    type = sample.metadata["rm_type"].get<std::string>();
  }
  type = trim(type);
  std::string response = sample.response;
  if (type.rfind("boxed_", 0) == 0) {
    response = last_boxed(response).value_or("");
    type = type.substr(6);
  }
  if (type == "math") return math_reward(response, label_text(sample.label));
  if (type == "exact_match") {
    return trim(response) == trim(label_text(sample.label)) ? 1.0 : 0.0;
  }
  if (type == "remote_rm") {
    RewardInput in = sample;
    in.response = response;
    return remote_reward(in, options);
  }
  if (type.empty()) fail("reward: no --rm-type given and the sample has no metadata rm_type");
  fail("reward: rm_type '{}' is not implemented (math, exact_match, remote_rm)", type);
}

double reward_value(const nlohmann::json& reward, const std::string& reward_key) {
  if (reward.is_number()) return reward.get<double>();
  if (reward.is_boolean()) return reward.get<bool>() ? 1.0 : 0.0;
  if (reward.is_object()) {
    if (reward_key.empty()) {
      fail("reward is an object ({}); set --reward-key to pick its value", reward.dump());
    }
    if (!reward.contains(reward_key) || !reward[reward_key].is_number()) {
      fail("--reward-key '{}': not a number in reward {}", reward_key, reward.dump());
    }
    return reward[reward_key].get<double>();
  }
  fail("reward {} is neither a number nor an object", reward.dump());
}

RewardWorker::RewardWorker(RewardOptions options, int threads) : options_(std::move(options)) {
  options_.validate();
  for (int i = 0; i < std::max(1, threads); ++i) threads_.emplace_back([this] { run(); });
}

RewardWorker::~RewardWorker() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  for (auto& t : threads_) t.join();
}

void RewardWorker::run() {
  while (true) {
    std::function<void()> task;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return stop_ || !tasks_.empty(); });
      if (tasks_.empty()) return;
      task = std::move(tasks_.front());
      tasks_.pop_front();
    }
    task();
  }
}

std::future<nlohmann::json> RewardWorker::submit(RewardInput sample) {
  auto task = std::make_shared<std::packaged_task<nlohmann::json()>>(
      [this, s = std::move(sample)] { return compute_reward(s, options_); });
  auto f = task->get_future();
  {
    std::lock_guard lock(mu_);
    tasks_.push_back([task] { (*task)(); });
  }
  cv_.notify_one();
  return f;
}

std::future<std::vector<nlohmann::json>> RewardWorker::submit_group(
    std::vector<RewardInput> samples, GroupRewardFn group) {
  auto task = std::make_shared<std::packaged_task<std::vector<nlohmann::json>()>>(
      [this, s = std::move(samples), g = std::move(group)] {
        if (g) {
          std::vector<nlohmann::json> r = g(s);
          if (r.size() != s.size()) {
            fail("group reward returned {} rewards for {} samples", r.size(), s.size());
          }
          return r;
        }
        std::vector<nlohmann::json> r;
        for (const auto& x : s) r.push_back(compute_reward(x, options_));
        return r;
      });
  auto f = task->get_future();
  {
    std::lock_guard lock(mu_);
    tasks_.push_back([task] { (*task)(); });
  }
  cv_.notify_one();
  return f;
}

}  // namespace anvil::reward

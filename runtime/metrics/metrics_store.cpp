#include "runtime/metrics/metrics_store.hpp"

#include <nlohmann/json.hpp>

#include <cmath>

namespace anvil::metrics {

void MetricsStore::append(Record record) {
  std::lock_guard<std::mutex> lock(mu_);
  if (started_ == 0) started_ = record.wall_time;
  updated_ = record.wall_time;
  if (state_ == "starting") state_ = "running";
  records_.push_back(std::move(record));
}

void MetricsStore::set_status(const std::string& state, const std::string& detail,
                              double wall_time) {
  std::lock_guard<std::mutex> lock(mu_);
  if (started_ == 0) started_ = wall_time;
  updated_ = wall_time;
  state_ = state;
  detail_ = detail;
}

void MetricsStore::set_config(const Config& config) {
  std::lock_guard<std::mutex> lock(mu_);
  config_ = config;
}

size_t MetricsStore::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return records_.size();
}

std::string MetricsStore::json_since(size_t since, double now) const {
  std::lock_guard<std::mutex> lock(mu_);
  nlohmann::json out;
  out["next"] = records_.size();
  out["status"] = {
      {"state", state_},
      {"detail", detail_},
      {"step", records_.empty() ? nlohmann::json() : nlohmann::json(records_.back().step)},
      {"records", records_.size()},
      {"started", started_},
      {"updated", updated_},
      {"now", now}};
  nlohmann::json series = nlohmann::json::object();
  nlohmann::json texts = nlohmann::json::object();
  for (size_t i = since; i < records_.size(); ++i) {
    const Record& r = records_[i];
    for (const auto& [name, v] : r.scalars) {
      series[name].push_back({r.step, std::isfinite(v) ? nlohmann::json(v) : nlohmann::json()});
    }
    for (const auto& [name, t] : r.texts) texts[name] = {r.step, t};
  }
  out["series"] = std::move(series);
  out["texts"] = std::move(texts);
  if (since == 0) out["config"] = config_;
  // Replace invalid UTF-8 rather than throw: texts may hold raw model output.
  return out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace anvil::metrics

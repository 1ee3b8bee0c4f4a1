#include "runtime/metrics/metrics_store.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>

namespace anvil::metrics {

void MetricsStore::append(const Record& record) {
  std::lock_guard<std::mutex> lock(mu_);
  if (started_ == 0) started_ = record.wall_time;
  updated_ = record.wall_time;
  if (state_ == "starting") state_ = "running";
  for (const auto& [name, v] : record.scalars) {
    series_[name].push_back(Point{records_, record.step, v});
  }
  for (const auto& [name, t] : record.texts) texts_[name] = Text{records_, record.step, t};
  last_step_ = record.step;
  ++records_;
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
  return records_;
}

std::string MetricsStore::json_since(size_t since, double now) const {
  std::lock_guard<std::mutex> lock(mu_);
  nlohmann::json out;
  out["next"] = records_;
  out["status"] = {{"state", state_},
                   {"detail", detail_},
                   {"step", records_ == 0 ? nlohmann::json() : nlohmann::json(last_step_)},
                   {"records", records_},
                   {"started", started_},
                   {"updated", updated_},
                   {"now", now}};
  nlohmann::json series = nlohmann::json::object();
  for (const auto& [name, points] : series_) {
    // Points are in record order: start at the first one from record `since` on.
    auto first = std::lower_bound(points.begin(), points.end(), since,
                                  [](const Point& p, size_t r) { return p.record < r; });
    if (first == points.end()) continue;
    nlohmann::json& pts = series[name] = nlohmann::json::array();
    for (auto it = first; it != points.end(); ++it) {
      pts.push_back(
          {it->step, std::isfinite(it->value) ? nlohmann::json(it->value) : nlohmann::json()});
    }
  }
  nlohmann::json texts = nlohmann::json::object();
  for (const auto& [name, t] : texts_) {
    if (t.record >= since) texts[name] = {t.step, t.text};
  }
  out["series"] = std::move(series);
  out["texts"] = std::move(texts);
  if (since == 0) out["config"] = config_;
  // Replace invalid UTF-8 rather than throw: texts may hold raw model output.
  return out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace anvil::metrics

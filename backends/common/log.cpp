#include "backends/common/log.hpp"

#include <spdlog/sinks/stdout_color_sinks.h>

#include <cstdlib>
#include <mutex>

namespace anvil::log {
namespace {

std::mutex g_mutex;

spdlog::level::level_enum initial_level() {
  const char* env = std::getenv("ANVIL_LOG_LEVEL");
  if (env == nullptr) return spdlog::level::info;
  return spdlog::level::from_str(env);
}

}  // namespace

std::shared_ptr<spdlog::logger> get(const std::string& component) {
  std::lock_guard lock(g_mutex);
  if (auto existing = spdlog::get(component)) return existing;
  // Logs go to stderr so that stdout stays clean for command output.
  auto logger = spdlog::stderr_color_mt(component);
  logger->set_pattern("[%H:%M:%S.%e] [%n] [%^%l%$] %v");
  logger->set_level(initial_level());
  return logger;
}

void set_level(spdlog::level::level_enum level) {
  std::lock_guard lock(g_mutex);
  spdlog::set_level(level);
  spdlog::apply_all([level](const std::shared_ptr<spdlog::logger>& l) { l->set_level(level); });
}

}  // namespace anvil::log

// Component loggers over spdlog. Every log line carries the component name
// ("models", "tokenizer", "rollout", ...). Level comes from ANVIL_LOG_LEVEL
// (trace|debug|info|warn|error|off, default info) or set_level().
#pragma once

#include <spdlog/spdlog.h>

#include <memory>
#include <string>

namespace anvil::log {

// Returns the logger for `component`, creating it on first use. Thread-safe.
std::shared_ptr<spdlog::logger> get(const std::string& component);

// Sets the level of every existing and future logger.
void set_level(spdlog::level::level_enum level);

}  // namespace anvil::log

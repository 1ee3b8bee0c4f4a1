// The resolved configuration of a run: every flag's final value after the YAML file
// (--config) and the command line were applied, saved beside the run as config.yaml so the
// run can be repeated with `--config config.yaml`.
#pragma once

#include "runtime/metrics/metrics_store.hpp"

#include <map>
#include <string>
#include <vector>

namespace anvil::metrics {

// Flag name without dashes (e.g. "rollout-batch-size") -> its values: one value is a
// scalar, zero or several a list.
using ResolvedConfig = std::map<std::string, std::vector<std::string>>;

// YAML text of `config`: a header comment, then one "key: value" or "key: [a, b]" line per
// key in key order. Values that YAML would not read back as the same plain string (empty,
// leading/trailing spaces, ':' '#' quotes and the like) are double-quoted with escapes.
std::string config_yaml(const ResolvedConfig& config);

// Writes config_yaml(config) to `path` atomically: a temporary file in the same directory,
// fsync'd, then renamed over `path`, so a reader sees the old file or the whole new one.
// Creates the parent directories. Throws anvil::Error naming the path on any failure (and
// leaves no temporary file behind).
void write_config_file(const std::string& path, const ResolvedConfig& config);

// `config` for display (MetricsHub::log_config): lists joined with ", ".
Config display_config(const ResolvedConfig& config);

}  // namespace anvil::metrics

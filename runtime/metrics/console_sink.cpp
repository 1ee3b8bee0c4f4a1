#include "runtime/metrics/console_sink.hpp"

#include <fmt/format.h>

#include <cstdio>
#include <set>

namespace anvil::metrics {
namespace {

enum class Style { Seconds, Fixed4, G4, G3, Exp2, Int };

struct Field {
  const char* label;
  std::vector<const char*> names;
  Style style;
};

struct Group {
  std::vector<Field> fields;
};

const std::vector<Group>& groups() {
  static const std::vector<Group> g = {
      {{{"rollout", {"time/rollout", "rollout_time"}, Style::Seconds},
        {"train", {"time/train", "train_time"}, Style::Seconds},
        {"sync", {"time/sync", "sync_time"}, Style::Seconds},
        {"total", {"time/step", "step_time"}, Style::Seconds}}},
      {{{"reward", {"rollout/reward_mean", "reward_mean", "reward"}, Style::Fixed4}}},
      {{{"loss", {"train/loss", "sft/loss", "loss"}, Style::G4},
        {"kl", {"train/kl_loss", "kl_loss"}, Style::G3},
        {"entropy", {"train/entropy_loss", "entropy_loss"}, Style::G3},
        {"gnorm", {"train/grad_norm", "grad_norm"}, Style::G3},
        {"lr", {"train/lr", "lr"}, Style::Exp2}}},
      {{{"tok/s", {"perf/tokens_per_s", "tokens_per_s"}, Style::Int}}},
      {{{"eval", {"eval/accuracy", "eval/pass@1"}, Style::Fixed4}}},
  };
  return g;
}

std::string format_value(double v, Style style) {
  switch (style) {
    case Style::Seconds:
      return fmt::format("{:.2f}s", v);
    case Style::Fixed4:
      return fmt::format("{:.4f}", v);
    case Style::G4:
      return fmt::format("{:.4g}", v);
    case Style::G3:
      return fmt::format("{:.3g}", v);
    case Style::Exp2:
      return fmt::format("{:.2e}", v);
    case Style::Int:
      return fmt::format("{:.0f}", v);
  }
  return fmt::format("{}", v);
}

}  // namespace

std::string format_console_line(const Record& record) {
  std::string line = fmt::format("step {}", record.step);
  std::set<std::string> shown;
  for (const Group& g : groups()) {
    std::string part;
    for (const Field& f : g.fields) {
      for (const char* name : f.names) {
        auto it = record.scalars.find(name);
        if (it == record.scalars.end()) continue;
        if (!part.empty()) part += ' ';
        part += fmt::format("{} {}", f.label, format_value(it->second, f.style));
        shown.insert(name);
        break;
      }
    }
    if (!part.empty()) line += " | " + part;
  }
  size_t more = record.scalars.size() - shown.size();
  if (more > 0) line += fmt::format(" | +{} more", more);
  return line;
}

ConsoleSink::ConsoleSink(std::function<void(const std::string&)> out) : out_(std::move(out)) {
  if (!out_) {
    out_ = [](const std::string& line) {
      std::fputs(line.c_str(), stdout);
      std::fputc('\n', stdout);
      std::fflush(stdout);
    };
  }
}

void ConsoleSink::write(const Record& record) { out_(format_console_line(record)); }

}  // namespace anvil::metrics

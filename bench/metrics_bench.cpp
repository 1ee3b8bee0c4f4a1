// Metrics sink throughput: time to log --steps steps of --scalars scalars each through a
// MetricsHub with one sink (TensorBoard event file, or JSONL), flushed per step, as the RL
// loop does. Driven by bench/metrics_bench.py, which times the Python peers the same way.
//
//   metrics_bench --sink tensorboard|jsonl --dir D [--steps 2000] [--scalars 20] [--repeats 5]
// Prints one JSON line: {"sink", "steps", "scalars", "seconds": [one per repeat]}.
#include "runtime/metrics/metrics_hub.hpp"

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <chrono>
#include <filesystem>
#include <iostream>

int main(int argc, char** argv) {
  CLI::App app{"metrics_bench"};
  std::string sink = "tensorboard", dir;
  int64_t steps = 2000, scalars = 20, repeats = 5;
  app.add_option("--sink", sink)->check(CLI::IsMember({"tensorboard", "jsonl"}));
  app.add_option("--dir", dir)->required();
  app.add_option("--steps", steps);
  app.add_option("--scalars", scalars);
  app.add_option("--repeats", repeats);
  CLI11_PARSE(app, argc, argv);
  std::vector<std::string> names;
  for (int64_t k = 0; k < scalars; ++k) names.push_back(fmt::format("group{}/metric_{}", k % 4, k));
  std::string seconds;
  for (int64_t r = 0; r < repeats; ++r) {
    std::string out = fmt::format("{}/anvil_{}_{}", dir, sink, r);
    std::filesystem::remove_all(out);
    anvil::metrics::MetricsOptions o;
    o.console = false;
    if (sink == "tensorboard") {
      o.use_tensorboard = true;
      o.tensorboard_dir = out;
    } else {
      o.jsonl_path = out + "/metrics.jsonl";
    }
    auto t0 = std::chrono::steady_clock::now();
    {
      anvil::metrics::MetricsHub hub(o);
      anvil::metrics::Scalars values;
      for (int64_t s = 0; s < steps; ++s) {
        for (int64_t k = 0; k < scalars; ++k) {
          values[names[static_cast<size_t>(k)]] = 1.0 / static_cast<double>(s + k + 1);
        }
        hub.log(s, values);
      }
      hub.close();
    }
    double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    seconds += (r ? ", " : "") + fmt::format("{:.6f}", t);
  }
  std::cout << fmt::format(R"({{"sink": "{}", "steps": {}, "scalars": {}, "seconds": [{}]}})", sink,
                           steps, scalars, seconds)
            << std::endl;
  return 0;
}

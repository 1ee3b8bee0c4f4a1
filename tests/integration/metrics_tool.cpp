// metrics_tool: drives a MetricsHub with synthetic steps so the tests can check the sinks
// (JSONL, TensorBoard files, the dashboard) without running an RL job.
//
//   metrics_tool --steps N [--jsonl F] [--tensorboard-dir D] [--dashboard-port P]
//                [--port-file F] [--clock T0] [--config-out F] [--config k=v ...] [--serve]
//                [--no-console]
//
// Step s (0-based) logs, with the wall time T0 + s when --clock is given:
//   train/loss = 1 / (s + 1)          rollout/reward_mean = 0.1 * s
//   time/train = 0.5 + 0.01 * s       perf/tokens_per_s = 1000 + s
//   rollout = s                       text "sample" = "step s: <b>answer</b> & more"
// --config k=v entries (repeatable; v may be "a,b" for a list) go to log_config and, with
// --config-out, through write_config_file. With --serve the tool keeps serving and reads
// commands from stdin: "log" logs the next step, "status STATE DETAIL..." sets the status;
// it exits at end of input.
#include "runtime/metrics/metrics_hub.hpp"
#include "runtime/metrics/run_config.hpp"

#include <CLI/CLI.hpp>

#include <fstream>
#include <iostream>
#include <sstream>

namespace {

anvil::metrics::Scalars scalars_of(int64_t s) {
  double d = static_cast<double>(s);
  return {{"train/loss", 1.0 / (d + 1)},
          {"rollout/reward_mean", 0.1 * d},
          {"time/train", 0.5 + 0.01 * d},
          {"perf/tokens_per_s", 1000 + d},
          {"rollout", d}};
}

anvil::metrics::Texts texts_of(int64_t s) {
  return {{"sample", "step " + std::to_string(s) + ": <b>answer</b> & more"}};
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"metrics_tool"};
  int64_t steps = 0;
  anvil::metrics::MetricsOptions o;
  o.console = true;
  std::string port_file, config_out;
  double clock0 = -1;
  bool serve = false;
  std::vector<std::string> config_entries;
  app.add_option("--steps", steps);
  app.add_option("--jsonl", o.jsonl_path);
  app.add_option("--tensorboard-dir", o.tensorboard_dir);
  app.add_option("--dashboard-port", o.dashboard_port);
  app.add_option("--port-file", port_file);
  app.add_option("--clock", clock0);
  app.add_option("--config-out", config_out);
  app.add_option("--config", config_entries);
  app.add_flag("--serve", serve);
  bool no_console = false;
  app.add_flag("--no-console", no_console, "No progress lines on stdout");
  CLI11_PARSE(app, argc, argv);
  o.use_tensorboard = !o.tensorboard_dir.empty();
  o.console = !no_console;
  o.run_name = "metrics_tool <test>";
  try {
    std::function<double()> clock;
    int64_t step = 0;
    if (clock0 >= 0) clock = [&] { return clock0 + static_cast<double>(step); };
    anvil::metrics::MetricsHub hub(o, clock);
    anvil::metrics::ResolvedConfig config;
    for (const auto& e : config_entries) {
      auto eq = e.find('=');
      if (eq == std::string::npos) throw std::runtime_error("--config " + e + ": not k=v");
      std::vector<std::string> values;
      std::string v = e.substr(eq + 1);
      if (v.find(',') == std::string::npos) {
        values.push_back(v);
      } else {
        std::stringstream ss(v);
        for (std::string item; std::getline(ss, item, ',');) values.push_back(item);
      }
      config[e.substr(0, eq)] = values;
    }
    if (!config.empty()) hub.log_config(anvil::metrics::display_config(config));
    if (!config_out.empty()) anvil::metrics::write_config_file(config_out, config);
    hub.set_status("running", "synthetic steps");
    for (; step < steps; ++step) hub.log(step, scalars_of(step), texts_of(step));
    if (!port_file.empty()) {
      std::ofstream(port_file + ".tmp") << hub.dashboard_port() << "\n";
      std::rename((port_file + ".tmp").c_str(), port_file.c_str());
    }
    if (serve) {
      for (std::string line; std::getline(std::cin, line);) {
        if (line == "log") {
          hub.log(step, scalars_of(step), texts_of(step));
          ++step;
        } else if (line.rfind("status ", 0) == 0) {
          std::string rest = line.substr(7);
          auto sp = rest.find(' ');
          hub.set_status(rest.substr(0, sp), sp == std::string::npos ? "" : rest.substr(sp + 1));
        }
        std::cout << "ok " << step << std::endl;
      }
    }
    hub.close();
  } catch (const std::exception& e) {
    std::cerr << "metrics_tool: " << e.what() << "\n";
    return 1;
  }
  return 0;
}

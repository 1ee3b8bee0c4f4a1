// The job's config handling (launcher/job_flags.cpp): unknown and duplicate YAML keys and
// contradictory settings are errors naming the key; the resolved config (every flag's
// final value, derived ones included) is written as config.yaml and, read back with
// --config, gives the same job.
#include "backends/common/error.hpp"
#include "launcher/job_flags.hpp"
#include "tests/unit/error_of.hpp"

#include <CLI/CLI.hpp>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

using anvil::test_util::error_of;

namespace anvil::launcher {
namespace {

namespace fs = std::filesystem;

struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() /
           ("anvil_metrics_config_test_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
  std::string write(const std::string& name, const std::string& text) const {
    std::ofstream(path / name) << text;
    return (path / name).string();
  }
};

std::string read_file(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

TEST(MetricsConfigYaml, UnknownKeyNamesFileAndKey) {
  TempDir d;
  std::string path = d.write("job.yaml", "lr: 1e-5\nlearning_rat: 3\n");
  std::string e = error_of([&] { yaml_job_args(path, {}); });
  EXPECT_NE(e.find("config " + path + ": unknown key 'learning_rat'"), std::string::npos) << e;
  EXPECT_NE(e.find("--learning-rat"), std::string::npos) << e;
}

TEST(MetricsConfigYaml, TwoKeysForOneFlag) {
  TempDir d;
  std::string path = d.write("job.yaml", "use_kl_loss: true\n--use-kl-loss: false\n");
  std::string e = error_of([&] { yaml_job_args(path, {}); });
  EXPECT_NE(e.find("keys 'use_kl_loss' and '--use-kl-loss' both set --use-kl-loss"),
            std::string::npos)
      << e;
}

TEST(MetricsConfigYaml, BooleansAndCommandLineOverride) {
  TempDir d;
  std::string path = d.write(
      "job.yaml", "colocate: true\nreshard_after_forward: false\nlr: 1\nprompt-data: [a, b]\n");
  EXPECT_EQ(yaml_job_args(path, {}),
            (std::vector<std::string>{"--colocate=true", "--reshard-after-forward=false", "--lr",
                                      "1", "--prompt-data", "a", "b"}));
  EXPECT_EQ(yaml_job_args(path, {"--lr", "--colocate"}),
            (std::vector<std::string>{"--reshard-after-forward=false", "--prompt-data", "a", "b"}));
  actors::JobOptions job;
  parse_job_args(yaml_job_args(path, {}), job, "job flags");
  EXPECT_TRUE(job.placement.colocate);
  EXPECT_FALSE(job.reshard_after_forward);  // a false flag whose default is true
}

TEST(MetricsConfigFlags, ContradictorySettingsNameTheFlags) {
  auto parse = [](std::vector<std::string> args) {
    actors::JobOptions job;
    parse_job_args(args, job, "job flags");
  };
  EXPECT_NE(error_of([&] {
              parse({"--save-interval", "2"});
            }).find("job flags: --save-interval 2 needs --save"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              parse({"--use-tensorboard"});
            }).find("--use-tensorboard needs --tensorboard-dir"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              parse({"--tensorboard-dir", "tb"});
            }).find("--tensorboard-dir tb is set but --use-tensorboard is not"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              parse({"--dashboard-port", "70000"});
            }).find("--dashboard-port"),
            std::string::npos);
  actors::JobOptions ok;
  parse_job_args({"--use-tensorboard", "--tensorboard-dir", "tb", "--dashboard-port", "0"}, ok,
                 "job flags");
  EXPECT_TRUE(ok.use_tensorboard);
  EXPECT_EQ(ok.tensorboard_dir, "tb");
  EXPECT_EQ(ok.dashboard_port, 0);
  EXPECT_EQ(ok.dashboard_host, "127.0.0.1");
}

TEST(MetricsConfigResolved, EveryFlagsFinalValue) {
  std::vector<std::string> args = {"--lr",    "1.234567891e-5", "--eps-clip",
                                   "0.125",   "--colocate",     "--no-reshard-after-forward",
                                   "--lr",    "2e-5",           "--prompt-data",
                                   "a.jsonl", "b.jsonl"};
  metrics::ResolvedConfig c = resolved_job_config(args, "job flags");
  EXPECT_EQ(c.at("lr"), std::vector<std::string>{"2e-5"});  // the last one given, as given
  EXPECT_EQ(c.at("colocate"), std::vector<std::string>{"true"});
  EXPECT_EQ(c.at("reshard-after-forward"), std::vector<std::string>{"false"});
  EXPECT_EQ(c.at("fsdp-cpu-offload"), std::vector<std::string>{"false"});  // default
  EXPECT_EQ(c.at("rollout-batch-size"), std::vector<std::string>{"4"});    // default
  EXPECT_EQ(c.at("prompt-data"), (std::vector<std::string>{"a.jsonl", "b.jsonl"}));
  EXPECT_EQ(c.at("eps-clip-high"), std::vector<std::string>{"0.125"});  // derived from --eps-clip
  EXPECT_EQ(c.count("help"), 0u);
  // Every job flag is there, but those never given that have no default.
  EXPECT_EQ(c.count("model"), 0u);
  EXPECT_EQ(c.count("eps-clip-c"), 0u);
  CLI::App app;
  actors::JobOptions job;
  add_job_flags(app, job);
  size_t flags = 0;
  for (const CLI::Option* o : app.get_options()) flags += o->get_lnames().empty() ? 0 : 1;
  EXPECT_GT(c.size(), flags / 2);
  for (const auto& [key, values] : c) {
    EXPECT_NE(app.get_option_no_throw("--" + key), nullptr) << key;
  }
  EXPECT_EQ(resolved_job_config({"--model", "m"}, "job flags").at("model"),
            std::vector<std::string>{"m"});
}

TEST(MetricsConfigResolved, SavedFileRepeatsTheJob) {
  TempDir d;
  std::vector<std::string> args = {"--lr",
                                   "3e-6",
                                   "--no-reshard-after-forward",
                                   "--use-kl-loss",
                                   "--save",
                                   (d.path / "ckpt").string(),
                                   "--save-interval",
                                   "2",
                                   "--prompt-data",
                                   "x y.jsonl"};
  actors::JobOptions job;
  parse_job_args(args, job, "job flags");
  std::string path = save_resolved_job_config(args, job, "job flags");
  EXPECT_EQ(path, (d.path / "ckpt" / "config.yaml").string());
  std::string text = read_file(path);
  EXPECT_NE(text.find("\nlr: 3e-6\n"), std::string::npos) << text;
  EXPECT_NE(text.find("\nprompt-data: \"x y.jsonl\"\n"), std::string::npos) << text;

  // --config config.yaml alone: the same resolved config and options.
  std::vector<std::string> again = yaml_job_args(path, {});
  EXPECT_EQ(resolved_job_config(again, "job flags (config.yaml)"),
            resolved_job_config(args, "job flags"));
  actors::JobOptions repeated;
  parse_job_args(again, repeated, "job flags (config.yaml)");
  EXPECT_EQ(repeated.train.optimizer.lr, 3e-6);
  EXPECT_FALSE(repeated.reshard_after_forward);
  EXPECT_TRUE(repeated.train.loss.use_kl_loss);
  EXPECT_EQ(repeated.save_interval, 2);
  EXPECT_EQ(repeated.data.prompt_data, std::vector<std::string>{"x y.jsonl"});

  // Defaults alone round-trip too (a flag that defaults to true stays true).
  actors::JobOptions plain;
  parse_job_args({}, plain, "job flags");
  EXPECT_EQ(save_resolved_job_config({}, plain, "job flags"), "");  // no run directory
  metrics::write_config_file((d.path / "defaults.yaml").string(),
                             resolved_job_config({}, "job flags"));
  actors::JobOptions from_defaults;
  parse_job_args(yaml_job_args((d.path / "defaults.yaml").string(), {}), from_defaults, "x");
  EXPECT_TRUE(from_defaults.reshard_after_forward);
  EXPECT_EQ(from_defaults.rollout.rollout_batch_size, plain.rollout.rollout_batch_size);
}

}  // namespace
}  // namespace anvil::launcher

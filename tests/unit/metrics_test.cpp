// runtime/metrics: the console line, JSONL lines, TFRecord framing and Event bytes (checked
// against a bitwise CRC-32C written here), the resolved-config YAML and its atomic write,
// the store's incremental JSON, the hub's fan-out and the dashboard's HTTP answers and
// errors. The tensorboard package and a real browser check the rest (test_metrics.py).
#include "backends/common/error.hpp"
#include "runtime/metrics/console_sink.hpp"
#include "runtime/metrics/dashboard.hpp"
#include "runtime/metrics/jsonl_sink.hpp"
#include "runtime/metrics/metrics_hub.hpp"
#include "runtime/metrics/run_config.hpp"
#include "runtime/metrics/tensorboard_sink.hpp"

#include <gtest/gtest.h>
#include <httplib.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>

namespace anvil::metrics {
namespace {

namespace fs = std::filesystem;

struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() /
           ("anvil_metrics_test_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
};

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Bitwise CRC-32C (reflected polynomial 0x82F63B78): an oracle independent of crc32c.cpp.
uint32_t crc32c_bitwise(const std::string& s) {
  uint32_t crc = 0xffffffffu;
  for (unsigned char c : s) {
    crc ^= c;
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0x82f63b78u & (0u - (crc & 1u)));
  }
  return ~crc;
}

uint32_t masked(uint32_t crc) { return ((crc >> 15) | (crc << 17)) + 0xa282ead8u; }

template <typename T>
T load_le(const std::string& s, size_t at) {
  T v;
  std::memcpy(&v, s.data() + at, sizeof(T));
  return v;
}

// Splits a TFRecord stream, checking both CRCs of every record.
std::vector<std::string> split_records(const std::string& file) {
  std::vector<std::string> out;
  size_t at = 0;
  while (at < file.size()) {
    EXPECT_LE(at + 12, file.size());
    auto length = load_le<uint64_t>(file, at);
    EXPECT_EQ(load_le<uint32_t>(file, at + 8), masked(crc32c_bitwise(file.substr(at, 8))));
    std::string data = file.substr(at + 12, length);
    EXPECT_EQ(load_le<uint32_t>(file, at + 12 + length), masked(crc32c_bitwise(data)));
    out.push_back(data);
    at += 12 + length + 4;
  }
  return out;
}

std::string bytes(std::initializer_list<int> b) {
  std::string s;
  for (int c : b) s.push_back(static_cast<char>(c));
  return s;
}

std::string le_double(double v) {
  std::string s(8, '\0');
  std::memcpy(s.data(), &v, 8);
  return s;
}

std::string le_float(float v) {
  std::string s(4, '\0');
  std::memcpy(s.data(), &v, 4);
  return s;
}

TEST(MetricsConsole, FixedFormatInGroupOrder) {
  Record r;
  r.step = 12;
  r.scalars = {{"time/rollout", 3.214},
               {"time/train", 1.05},
               {"time/sync", 0.4},
               {"rollout/reward_mean", 0.532},
               {"train/loss", -0.012345},
               {"train/kl_loss", 0.00123},
               {"lr", 1e-6},
               {"perf/tokens_per_s", 1234.4},
               {"weight_version", 3},
               {"rank", 0}};
  EXPECT_EQ(format_console_line(r),
            "step 12 | rollout 3.21s train 1.05s sync 0.40s | reward 0.5320 | loss -0.01235 kl "
            "0.00123 lr 1.00e-06 | tok/s 1234 | +2 more");
}

TEST(MetricsConsole, AliasesAndEmpty) {
  Record r;
  r.step = 0;
  EXPECT_EQ(format_console_line(r), "step 0");
  r.scalars = {{"loss", 0.25}, {"grad_norm", std::numeric_limits<double>::quiet_NaN()}};
  EXPECT_EQ(format_console_line(r), "step 0 | loss 0.25 gnorm nan");
  // The first accepted name wins; the other counts as "more".
  r.scalars = {{"train/loss", 1.5}, {"loss", 2.5}};
  EXPECT_EQ(format_console_line(r), "step 0 | loss 1.5 | +1 more");
}

TEST(MetricsJsonl, LineShapeMatchesTheControllersLines) {
  Record r;
  r.step = 7;
  r.scalars = {{"loss", 0.125},
               {"rollout", 3},
               {"weight_version", 4},
               {"bad", std::numeric_limits<double>::infinity()}};
  r.texts = {{"sample", "a \"b\"\n"}};
  EXPECT_EQ(
      format_jsonl_line(r),
      R"({"bad":null,"loss":0.125,"rollout":3,"sample":"a \"b\"\n","step":7,"weight_version":4})");
}

TEST(MetricsJsonl, AppendsAndFlushesEveryLine) {
  TempDir d;
  fs::path p = d.path / "sub" / "metrics.jsonl";
  JsonlSink sink(p.string());
  Record r;
  r.scalars = {{"x", 1.5}};
  sink.write(r);
  EXPECT_EQ(read_file(p), "{\"step\":0,\"x\":1.5}\n");  // visible before close
  r.step = 1;
  sink.write(r);
  sink.close();
  JsonlSink again(p.string());
  r.step = 2;
  again.write(r);
  again.close();
  EXPECT_EQ(read_file(p),
            "{\"step\":0,\"x\":1.5}\n{\"step\":1,\"x\":1.5}\n{\"step\":2,\"x\":1.5}\n");
}

TEST(MetricsJsonl, UnopenablePathNamesTheFlagAndPath) {
  TempDir d;
  try {
    JsonlSink sink(d.path.string());  // a directory
    FAIL() << "opened a directory";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--metrics-jsonl " + d.path.string()), std::string::npos)
        << e.what();
  }
}

TEST(MetricsTensorBoard, MaskedCrcAndFraming) {
  std::string data = "hello event";
  EXPECT_EQ(masked_crc32c(data.data(), data.size()), masked(crc32c_bitwise(data)));
  // RFC 3720: CRC-32C("123456789") = 0xE3069283.
  EXPECT_EQ(crc32c_bitwise("123456789"), 0xe3069283u);
  std::string rec = tfrecord(data);
  ASSERT_EQ(rec.size(), 8 + 4 + data.size() + 4);
  EXPECT_EQ(split_records(rec), std::vector<std::string>{data});
}

TEST(MetricsTensorBoard, EventBytes) {
  EXPECT_EQ(encode_file_version_event(2.5),
            bytes({0x09}) + le_double(2.5) + bytes({0x1a, 13}) + "brain.Event:2");
  // Event{wall_time: 1, step: 300, summary{value{tag: "a/b", simple_value: 0.5}}}
  std::string value = bytes({0x0a, 3}) + "a/b" + bytes({0x15}) + le_float(0.5f);
  std::string summary = bytes({0x0a, static_cast<int>(value.size())}) + value;
  EXPECT_EQ(encode_scalars_event(1.0, 300, {{"a/b", 0.5}}),
            bytes({0x09}) + le_double(1.0) + bytes({0x10, 0xac, 0x02}) +
                bytes({0x2a, static_cast<int>(summary.size())}) + summary);
}

TEST(MetricsTensorBoard, FileStartsWithVersionAndHasOneEventPerStep) {
  TempDir d;
  TensorBoardSink sink((d.path / "tb").string(), 100.0);
  EXPECT_EQ(fs::path(sink.path()).filename().string().rfind("events.out.tfevents.100.", 0), 0u);
  Record r{5, 101.0, {{"loss", 0.5}}, {}};
  sink.write(r);
  r = Record{6, 102.0, {{"loss", 0.25}}, {{"sample", "hi"}}};
  sink.write(r);
  std::vector<std::string> records = split_records(read_file(sink.path()));
  ASSERT_EQ(records.size(), 4u);  // version, step 5, step 6 scalars, step 6 texts
  EXPECT_EQ(records[0], encode_file_version_event(100.0));
  EXPECT_EQ(records[1], encode_scalars_event(101.0, 5, {{"loss", 0.5}}));
  EXPECT_EQ(records[2], encode_scalars_event(102.0, 6, {{"loss", 0.25}}));
  EXPECT_EQ(records[3], encode_texts_event(102.0, 6, {{"sample", "hi"}}));
  EXPECT_NE(records[3].find("text"), std::string::npos);  // the text plugin's name
}

TEST(MetricsTensorBoard, NeedsADirectory) {
  try {
    TensorBoardSink sink("", 0);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--tensorboard-dir"), std::string::npos);
  }
  TempDir d;
  std::ofstream(d.path / "file") << "x";
  EXPECT_THROW(TensorBoardSink((d.path / "file" / "tb").string(), 0), Error);
}

TEST(MetricsConfig, YamlQuotesWhatPlainYamlWouldChange) {
  ResolvedConfig c = {{"lr", {"1e-06"}},
                      {"model", {"/m/Qwen3 0.6B"}},
                      {"empty", {""}},
                      {"note", {"a: b # c"}},
                      {"quote", {"say \"hi\"\n"}},
                      {"colocate", {"true"}},
                      {"prompt-data", {"a.jsonl", "b.jsonl"}},
                      {"none", {}}};
  EXPECT_EQ(config_yaml(c),
            "# The resolved configuration of this run (every flag's final value).\n"
            "# Repeat the run with: --config <this file>\n"
            "colocate: true\n"
            "empty: \"\"\n"
            "lr: 1e-06\n"
            "model: \"/m/Qwen3 0.6B\"\n"
            "none: []\n"
            "note: \"a: b # c\"\n"
            "prompt-data: [a.jsonl, b.jsonl]\n"
            "quote: \"say \\\"hi\\\"\\n\"\n");
  EXPECT_THROW(config_yaml({{"bad key", {"x"}}}), Error);
  Config shown = display_config(c);
  EXPECT_EQ(shown["prompt-data"], "[a.jsonl, b.jsonl]");
  EXPECT_EQ(shown["lr"], "1e-06");
}

TEST(MetricsConfig, WriteIsAtomicAndReplaces) {
  TempDir d;
  fs::path p = d.path / "run" / "config.yaml";
  write_config_file(p.string(), {{"lr", {"1"}}});
  write_config_file(p.string(), {{"lr", {"2"}}});
  EXPECT_NE(read_file(p).find("lr: 2\n"), std::string::npos);
  EXPECT_EQ(std::distance(fs::directory_iterator(p.parent_path()), fs::directory_iterator()), 1);
  try {
    write_config_file((d.path / "run" / "config.yaml" / "x").string(), {{"lr", {"1"}}});
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("config.yaml/x"), std::string::npos) << e.what();
  }
}

TEST(MetricsStore, IncrementalJson) {
  MetricsStore s;
  s.set_config({{"lr", "1e-6"}});
  s.append(Record{0, 10.0, {{"a", 1.0}, {"b", 2.0}}, {}});
  s.append(Record{1, 11.0, {{"a", std::nan("")}}, {{"t", "x"}}});
  s.append(Record{2, 12.0, {{"a", 3.0}}, {}});
  auto all = nlohmann::json::parse(s.json_since(0, 13.0));
  EXPECT_EQ(all["next"], 3);
  EXPECT_EQ(all["series"]["a"], nlohmann::json::parse("[[0,1.0],[1,null],[2,3.0]]"));
  EXPECT_EQ(all["series"]["b"], nlohmann::json::parse("[[0,2.0]]"));
  EXPECT_EQ(all["texts"]["t"], nlohmann::json::parse(R"([1,"x"])"));
  EXPECT_EQ(all["config"]["lr"], "1e-6");
  EXPECT_EQ(all["status"]["state"], "running");
  EXPECT_EQ(all["status"]["step"], 2);
  EXPECT_EQ(all["status"]["started"], 10.0);
  EXPECT_EQ(all["status"]["now"], 13.0);
  auto tail = nlohmann::json::parse(s.json_since(2, 13.0));
  EXPECT_EQ(tail["series"], nlohmann::json::parse(R"({"a":[[2,3.0]]})"));
  EXPECT_FALSE(tail.contains("config"));
  EXPECT_EQ(tail["texts"], nlohmann::json::object());  // "t" was logged before record 2
  EXPECT_EQ(nlohmann::json::parse(s.json_since(99, 13.0))["series"], nlohmann::json::object());
}

struct CapturingSink : Sink {
  std::vector<Record>* records;
  std::vector<Config>* configs;
  bool* closed;
  void write(const Record& r) override { records->push_back(r); }
  void write_config(const Config& c, double) override { configs->push_back(c); }
  void close() override { *closed = true; }
};

TEST(MetricsHub, FansOutInOrderWithTheClocksTime) {
  std::vector<Record> records;
  std::vector<Config> configs;
  bool closed = false;
  double t = 1000;
  MetricsOptions o;
  o.console = false;
  MetricsHub hub(o, [&] { return t; });
  auto sink = std::make_unique<CapturingSink>();
  sink->records = &records;
  sink->configs = &configs;
  sink->closed = &closed;
  hub.add_sink(std::move(sink));
  hub.log_config({{"lr", "1"}});
  hub.log(0, {{"a", 1}});
  t = 1001;
  hub.log(1, {{"a", 2}}, {{"s", "x"}});
  ASSERT_EQ(records.size(), 2u);
  EXPECT_EQ(records[1].step, 1);
  EXPECT_EQ(records[1].wall_time, 1001);
  EXPECT_EQ(records[1].texts.at("s"), "x");
  EXPECT_EQ(configs.size(), 1u);
  EXPECT_EQ(hub.store().size(), 2u);
  EXPECT_EQ(hub.dashboard_port(), -1);
  hub.close();
  EXPECT_TRUE(closed);
  EXPECT_THROW(hub.log(2, {}), Error);
  hub.close();  // idempotent
}

TEST(MetricsHub, DashboardServesPageAndJsonAndRefusesABusyPort) {
  MetricsOptions o;
  o.console = false;
  o.dashboard_port = 0;
  o.run_name = "run <1>";
  MetricsHub hub(o, [] { return 50.0; });
  int port = hub.dashboard_port();
  ASSERT_GT(port, 0);
  hub.log(3, {{"loss", 0.5}});
  hub.set_status("finished", "done");
  httplib::Client cli("127.0.0.1", port);
  auto page = cli.Get("/");
  ASSERT_TRUE(page);
  EXPECT_EQ(page->status, 200);
  EXPECT_NE(page->body.find("<title>run &lt;1&gt; - anvil</title>"), std::string::npos);
  // Nothing loaded from elsewhere: no external scripts, styles or images.
  EXPECT_EQ(page->body.find(" src="), std::string::npos);
  EXPECT_EQ(page->body.find("<link"), std::string::npos);
  auto api = cli.Get("/api/metrics?since=0");
  ASSERT_TRUE(api);
  auto j = nlohmann::json::parse(api->body);
  EXPECT_EQ(j["series"]["loss"], nlohmann::json::parse("[[3,0.5]]"));
  EXPECT_EQ(j["status"]["state"], "finished");
  auto bad = cli.Get("/api/metrics?since=-1");
  ASSERT_TRUE(bad);
  EXPECT_EQ(bad->status, 400);

  MetricsOptions same = o;
  same.dashboard_port = port;
  try {
    MetricsHub second(same);
    FAIL() << "bound a busy port";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--dashboard-port " + std::to_string(port)),
              std::string::npos)
        << e.what();
  }
  hub.close();
  EXPECT_FALSE(httplib::Client("127.0.0.1", port).Get("/"));  // stopped
}

}  // namespace
}  // namespace anvil::metrics

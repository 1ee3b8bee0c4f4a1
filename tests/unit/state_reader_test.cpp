// Unit tests for backends/train/state_reader: regions assembled from the stored boxes of a
// synthetic Megatron-layout checkpoint (row-split over two ranks, zero-padded shards), and
// the errors for missing files, malformed box metadata, gaps and another model shape.
#include "backends/common/error.hpp"
#include "backends/common/json_util.hpp"
#include "backends/models/safetensors.hpp"
#include "backends/train/state_reader.hpp"
#include "tests/unit/error_of.hpp"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <functional>
#include <string>

using namespace anvil;
using anvil::test_util::error_of;
using train::Box;
using train::StateReader;
namespace fs = std::filesystem;

namespace {

class StateReaderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) /
           ("state_reader_" +
            std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()));
    fs::remove_all(dir_);
    fs::create_directories(dir_ / "megatron");
    full_ = at::arange(24, at::kFloat).reshape({4, 6});
    models::CheckpointWriter model(dir_ / "model");
    model.add("w", full_);
    model.finish();
    write_json_file_atomic(dir_ / "trainer_state.json",
                           {{"iteration", 2},
                            {"optimizer_steps", 3},
                            {"world_size", 2},
                            {"megatron", {{"tp", 2}, {"pp", 1}, {"dp", 1}}}});
  }
  // Rank r holds columns [3r, 3r + 3) of "w" (its moments are the values times 10 and 100),
  // stored with one zero row of padding; `boxes` overrides the metadata.
  void write_rank(int r, const std::string& boxes = "") {
    at::Tensor piece = at::zeros({5, 3});
    piece.narrow(0, 0, 4).copy_(full_.narrow(1, 3 * r, 3));
    nlohmann::json b = {{"w", Box{{0, 3 * r}, {4, 3}}.to_json()}};
    const fs::path tmp = dir_ / "tmp";
    models::CheckpointWriter w(tmp, 5ull << 30,
                               {{train::kBoxesMetadataKey, boxes.empty() ? b.dump() : boxes}});
    w.add("w", piece);
    w.add("w.exp_avg", piece * 10);
    w.add("w.exp_avg_sq", piece * 100);
    w.finish();
    fs::rename(tmp / "model.safetensors",
               dir_ / "megatron" / ("rank_" + std::to_string(r) + "-of-2.safetensors"));
  }
  fs::path dir_;
  at::Tensor full_;
};

}  // namespace

TEST_F(StateReaderTest, RegionsSpanRankBoxes) {
  write_rank(0);
  write_rank(1);
  StateReader reader(dir_);
  EXPECT_EQ(reader.layout().describe(), "Megatron TP=2 x PP=1 x DP=1 (2 ranks)");
  EXPECT_EQ(reader.optimizer_steps(), 3);
  const Box region{{1, 2}, {2, 3}};  // columns 2-4: one from rank 0, two from rank 1
  at::Tensor want = full_.narrow(0, 1, 2).narrow(1, 2, 3);
  EXPECT_TRUE(at::equal(reader.read("w", {4, 6}, region, StateReader::Part::kMaster), want));
  EXPECT_TRUE(at::equal(reader.read("w", {4, 6}, region, StateReader::Part::kExpAvg), want * 10));
  EXPECT_TRUE(at::equal(reader.read("w", {4, 6}, Box::whole({4, 6}), StateReader::Part::kExpAvgSq),
                        full_ * 100));
  EXPECT_FALSE(reader.rng(0, "__rng__.cpu").has_value());
}

TEST_F(StateReaderTest, ErrorsNameTheFileAndTensor) {
  write_rank(0);
  std::string e = error_of([&] { StateReader r(dir_); });
  EXPECT_NE(e.find("incomplete checkpoint"), std::string::npos) << e;
  EXPECT_NE(e.find("rank_1-of-2.safetensors is missing"), std::string::npos) << e;

  write_rank(1, "{not json");
  e = error_of([&] { StateReader r(dir_); });
  EXPECT_NE(e.find("rank_1-of-2.safetensors: metadata 'anvil.boxes' is not JSON"),
            std::string::npos)
      << e;

  write_rank(1, R"({"w": {"offset": [0, 3], "size": [4]}})");
  e = error_of([&] { StateReader r(dir_); });
  EXPECT_NE(e.find("metadata box 'w': 'offset' has 2 dimensions, 'size' 1"), std::string::npos)
      << e;

  write_rank(1, R"({"w": {"offset": [0, -3], "size": [4, 3]}})");
  e = error_of([&] { StateReader r(dir_); });
  EXPECT_NE(e.find("key 'offset' must be an array of non-negative integers"), std::string::npos)
      << e;

  write_rank(1, "{}");  // rank 1 stores nothing: half of "w" is not covered
  StateReader gap(dir_);
  e = error_of([&] { gap.read("w", {4, 6}, Box::whole({4, 6}), StateReader::Part::kMaster); });
  EXPECT_NE(e.find("holds 12 of the 24 values of 'w'"), std::string::npos) << e;
  e = error_of([&] { gap.read("v", {4}, Box::whole({4}), StateReader::Part::kMaster); });
  EXPECT_NE(e.find("tensor 'v' is not in the checkpoint (written by Megatron"), std::string::npos)
      << e;
  e = error_of([&] { gap.read("w", {4, 8}, Box::whole({4, 8}), StateReader::Part::kMaster); });
  EXPECT_NE(e.find("has shape [4, 6] in the checkpoint, the model's is [4, 8]"), std::string::npos)
      << e;
  e = error_of([&] { gap.read("w", {4, 6}, Box{{3, 0}, {2, 6}}, StateReader::Part::kMaster); });
  EXPECT_NE(e.find("is outside [4, 6]"), std::string::npos) << e;

  write_json_file_atomic(
      dir_ / "trainer_state.json",
      {{"optimizer_steps", 3}, {"world_size", 3}, {"megatron", {{"tp", 2}, {"pp", 1}, {"dp", 1}}}});
  e = error_of([&] { StateReader r(dir_); });
  EXPECT_NE(e.find("world_size 3 is not TP x PP x DP = 2 x 1 x 1"), std::string::npos) << e;
}

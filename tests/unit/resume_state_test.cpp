// actors/resume_state: finding the checkpoint --load names (and naming what is wrong with
// it), the save request, the rollout engines' entries and the controller's start rollout.
#include "actors/resume_state.hpp"

#include "backends/common/error.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>
#include <string>

namespace anvil::actors {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

class ResumeStateTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("anvil-resume-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  static void write(const fs::path& p, const std::string& text) {
    fs::create_directories(p.parent_path());
    std::ofstream(p) << text;
  }
  // A checkpoint of `iteration` as the train ranks write it (only what resume reads).
  void checkpoint(int64_t iteration, const json& state, int world_size = 0) {
    char name[32];
    std::snprintf(name, sizeof name, "iter_%07lld", static_cast<long long>(iteration));
    json meta = {{"format_version", 1}, {"iteration", iteration}, {"state", state}};
    if (world_size > 0) meta["world_size"] = world_size;
    write(dir_ / name / "trainer_state.json", meta.dump());
    write(dir_ / "latest_checkpointed_iteration.txt", std::to_string(iteration) + "\n");
  }
  static json engine(int rank, int64_t engines, int64_t rollout, int64_t prompt_index) {
    return {{"rank", rank},
            {"engines", engines},
            {"rollout", rollout},
            {"prompt_index", prompt_index},
            {"data_cursor", {{"epoch", 0}, {"offset", prompt_index}}}};
  }
  // The message of the anvil::Error `f` throws (fails the test when it throws none).
  template <typename F>
  static std::string error_of(F f) {
    try {
      f();
    } catch (const Error& e) {
      return e.what();
    }
    ADD_FAILURE() << "no error thrown";
    return "";
  }

  fs::path dir_;
};

TEST_F(ResumeStateTest, FindsTheLatestOrTheGivenIteration) {
  checkpoint(2, {{"rollout_id", 2}});
  checkpoint(4, {{"rollout_id", 4}}, /*world_size=*/2);
  ResumePoint p = find_resume_point(dir_.string(), -1);
  EXPECT_EQ(p.iteration, 4);
  EXPECT_EQ(p.dir, dir_ / "iter_0000004");
  EXPECT_TRUE(p.sharded);
  EXPECT_EQ(p.world_size, 2);
  EXPECT_EQ(p.state["rollout_id"], 4);
  ResumePoint q = find_resume_point(dir_.string(), 2);
  EXPECT_EQ(q.iteration, 2);
  EXPECT_FALSE(q.sharded);
  EXPECT_EQ(q.world_size, 1);
  EXPECT_EQ(q.state["rollout_id"], 2);
}

TEST_F(ResumeStateTest, BadDirectoriesAreNamed) {
  const std::string missing = (dir_ / "nope").string();
  EXPECT_NE(error_of([&] {
              find_resume_point(missing, -1);
            }).find("--load " + missing + ": no such checkpoint directory"),
            std::string::npos);
  write(dir_ / "file", "x");
  EXPECT_NE(error_of([&] { find_resume_point((dir_ / "file").string(), -1); }).find("is a file"),
            std::string::npos);
  std::string e = error_of([&] { find_resume_point(dir_.string(), -1); });
  EXPECT_NE(e.find((dir_ / "latest_checkpointed_iteration.txt").string() + " is missing"),
            std::string::npos)
      << e;
  write(dir_ / "latest_checkpointed_iteration.txt", "two\n");
  e = error_of([&] { find_resume_point(dir_.string(), -1); });
  EXPECT_NE(e.find("expected an iteration number, found 'two'"), std::string::npos) << e;
  write(dir_ / "latest_checkpointed_iteration.txt", "3\n");
  e = error_of([&] { find_resume_point(dir_.string(), -1); });
  EXPECT_NE(e.find((dir_ / "iter_0000003").string() + " is missing"), std::string::npos) << e;
  fs::create_directories(dir_ / "iter_0000003");
  e = error_of([&] { find_resume_point(dir_.string(), -1); });
  EXPECT_NE(e.find("incomplete checkpoint, trainer_state.json is missing"), std::string::npos) << e;
  write(dir_ / "iter_0000003" / "trainer_state.json", R"({"iteration": 5})");
  e = error_of([&] { find_resume_point(dir_.string(), -1); });
  EXPECT_NE(e.find("holds iteration 5"), std::string::npos) << e;
  write(dir_ / "iter_0000003" / "trainer_state.json", R"({"iteration": 3, "state": [1]})");
  e = error_of([&] { find_resume_point(dir_.string(), -1); });
  EXPECT_NE(e.find("key 'state' must be an object"), std::string::npos) << e;
  e = error_of([&] { find_resume_point(dir_.string(), 7); });
  EXPECT_NE(e.find("iter_0000007 is missing (--ckpt-step)"), std::string::npos) << e;
}

TEST_F(ResumeStateTest, SaveRequestRoundTripsAndPlainDirectoriesStillWork) {
  SaveRequest r;
  r.dir = "/ckpt";
  r.iteration = 6;
  r.state = {{"rollout_engines", json::array({engine(0, 1, 6, 12)})}};
  SaveRequest back = parse_save_request(save_request_text(r));
  EXPECT_EQ(back.dir, "/ckpt");
  EXPECT_EQ(back.iteration, 6);
  EXPECT_EQ(back.state, r.state);
  SaveRequest plain = parse_save_request("/old/head/dir");
  EXPECT_EQ(plain.dir, "/old/head/dir");
  EXPECT_EQ(plain.iteration, -1);
  EXPECT_TRUE(plain.state.empty());
  EXPECT_NE(error_of([] { parse_save_request("{not json"); }).find("save request"),
            std::string::npos);
  EXPECT_NE(error_of([] { parse_save_request(R"({"iteration": 1})"); }).find("'dir'"),
            std::string::npos);
  EXPECT_NE(error_of([] { parse_save_request(R"({"dir": "d", "state": 3})"); }).find("'state'"),
            std::string::npos);
  EXPECT_NE(error_of([] { parse_save_request(""); }).find("no checkpoint directory"),
            std::string::npos);
}

TEST_F(ResumeStateTest, RolloutEngineEntries) {
  checkpoint(4, {{"rollout_engines", json::array({engine(0, 2, 4, 8), engine(1, 2, 4, 8)})}});
  ResumePoint p = find_resume_point(dir_.string(), -1);
  EXPECT_EQ(rollout_engine_state(p, 1, 2)["rank"], 1);
  EXPECT_NE(error_of([&] {
              rollout_engine_state(p, 0, 3);
            }).find("written by a job of 2 rollout engines, this one has 3"),
            std::string::npos);
  EXPECT_NE(error_of([&] { rollout_engine_state(p, 5, 2); }).find("no entry for rollout engine 5"),
            std::string::npos);

  checkpoint(6, {{"rollout_engines", json::array({engine(0, 1, 5, 8)})}});
  p = find_resume_point(dir_.string(), -1);
  EXPECT_NE(error_of([&] {
              rollout_engine_state(p, 0, 1);
            }).find("saved its state for rollout 5, the checkpoint is iteration 6"),
            std::string::npos);

  checkpoint(8, {{"data_cursor", json::object()}});  // e.g. an `anvil sft` checkpoint
  p = find_resume_point(dir_.string(), -1);
  std::string e = error_of([&] { rollout_engine_state(p, 0, 1); });
  EXPECT_NE(e.find("not a checkpoint of an RL job"), std::string::npos) << e;
  EXPECT_NE(e.find((dir_ / "iter_0000008" / "trainer_state.json").string()), std::string::npos);
}

TEST_F(ResumeStateTest, ResumedRolloutFromInitReplies) {
  json train0 = {{"role", "train"}, {"rank", 0}, {"loaded_iteration", nullptr}};
  json ref = {{"role", "ref"}, {"rank", 0}};
  json eng0 = {{"role", "rollout"}, {"rank", 0}, {"loaded_iteration", nullptr}};
  EXPECT_EQ(resumed_rollout({train0, ref, eng0}), 0);
  train0["loaded_iteration"] = 4;
  eng0["loaded_iteration"] = 4;
  json train1 = train0;
  train1["rank"] = 1;
  EXPECT_EQ(resumed_rollout({train0, train1, ref, eng0}), 4);
  train1["loaded_iteration"] = 2;
  std::string e = error_of([&] { resumed_rollout({train0, train1, eng0}); });
  EXPECT_NE(e.find("train rank 1 loaded 2"), std::string::npos) << e;
  json eng1 = {{"role", "rollout"}, {"rank", 1}};
  e = error_of([&] { resumed_rollout({train0, eng0, eng1}); });
  EXPECT_NE(e.find("rollout rank 1 did not load"), std::string::npos) << e;
}

}  // namespace
}  // namespace anvil::actors

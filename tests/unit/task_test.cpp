// rollout/tasks: the arithmetic task is deterministic per seed, its labels are the exact
// answers, eval problems are held out of train, and bad options are named.
#include "backends/common/error.hpp"
#include "rollout/tasks/arithmetic.hpp"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <set>

#include <unistd.h>

using anvil::tasks::arithmetic_answer;
using anvil::tasks::ArithmeticOptions;
using anvil::tasks::make_arithmetic;

namespace {

TEST(ArithmeticTask, LabelsAreAnswersAndEvalIsHeldOut) {
  ArithmeticOptions o;
  o.seed = 5;
  o.train = 500;
  o.eval = 100;
  o.digits = 2;
  o.ops = "+-*";
  auto s = make_arithmetic(o);
  ASSERT_EQ(s.train.size(), 500u);
  ASSERT_EQ(s.eval.size(), 100u);
  std::set<std::string> eval_prompts, train_prompts;
  std::set<char> ops_seen;
  for (const auto& r : s.eval) {
    EXPECT_EQ(std::to_string(arithmetic_answer(r.prompt)), r.label) << r.prompt;
    eval_prompts.insert(r.prompt);
  }
  for (const auto& r : s.train) {
    EXPECT_EQ(std::to_string(arithmetic_answer(r.prompt)), r.label) << r.prompt;
    EXPECT_EQ(eval_prompts.count(r.prompt), 0u) << r.prompt << " is in both sets";
    train_prompts.insert(r.prompt);
    ops_seen.insert(r.prompt[r.prompt.find_first_of("+-*")]);
    EXPECT_EQ(r.label.find('-'), std::string::npos) << "negative answer for " << r.prompt;
  }
  EXPECT_EQ(eval_prompts.size(), 100u);
  EXPECT_EQ(train_prompts.size(), 500u);
  EXPECT_EQ(ops_seen.size(), 3u);
}

TEST(ArithmeticTask, SameSeedSameProblemsOtherSeedOthers) {
  ArithmeticOptions o;
  o.seed = 1;
  o.train = 50;
  o.eval = 20;
  auto a = make_arithmetic(o), b = make_arithmetic(o);
  o.seed = 2;
  auto c = make_arithmetic(o);
  int same = 0;
  for (size_t i = 0; i < a.train.size(); ++i) {
    EXPECT_EQ(a.train[i].prompt, b.train[i].prompt);
    same += a.train[i].prompt == c.train[i].prompt ? 1 : 0;
  }
  EXPECT_LT(same, 5);
}

TEST(ArithmeticTask, SecondOperandDigits) {
  ArithmeticOptions o;
  o.train = 700;
  o.eval = 200;  // 900 of the 1000 problems a + b, a < 100, b < 10
  o.digits = 2;
  o.digits2 = 1;
  auto s = make_arithmetic(o);
  for (const auto& r : s.train) {
    const std::string b = r.prompt.substr(r.prompt.find('+') + 1);
    EXPECT_EQ(b.size(), 2u) << r.prompt;  // one digit and '='
  }
  o.train = 801;
  EXPECT_THROW(make_arithmetic(o), anvil::Error);  // 1001 > 1000 distinct problems
  // Subtraction with a >= b: 100 * 10 ordered pairs, of which 45 pairs below 10 coincide.
  o.ops = "-";
  o.train = 955;
  o.eval = 0;
  EXPECT_EQ(make_arithmetic(o).train.size(), 955u);
  o.train = 956;
  EXPECT_THROW(make_arithmetic(o), anvil::Error);
}

TEST(ArithmeticTask, BadOptionsAreNamed) {
  auto expect_error = [](ArithmeticOptions o, const std::string& needle) {
    try {
      make_arithmetic(o);
      FAIL() << "no error for " << needle;
    } catch (const anvil::Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  ArithmeticOptions o;
  o.digits = 0;
  expect_error(o, "--digits");
  o = {};
  o.ops = "+/";
  expect_error(o, "--ops");
  o = {};
  o.digits = 1;
  o.train = 90;
  o.eval = 20;  // 100 distinct one-digit sums
  expect_error(o, "distinct problems");
  o = {};
  o.train = -1;
  expect_error(o, "--train");
  EXPECT_THROW(arithmetic_answer("12+="), anvil::Error);
  EXPECT_THROW(arithmetic_answer("1x2="), anvil::Error);
  EXPECT_EQ(arithmetic_answer("12*7="), 84);
}

TEST(ArithmeticTask, WritesJsonlThePipelineReads) {
  namespace fs = std::filesystem;
  fs::path dir = fs::temp_directory_path() / ("anvil_task_test_" + std::to_string(::getpid()));
  ArithmeticOptions o;
  o.train = 7;
  o.eval = 3;
  auto s = make_arithmetic(o);
  anvil::tasks::write_task(dir, s, o);
  std::ifstream f(dir / "eval.jsonl");
  std::string line;
  int n = 0;
  while (std::getline(f, line)) {
    auto j = nlohmann::json::parse(line);
    EXPECT_EQ(j["prompt"], s.eval[n].prompt);
    EXPECT_EQ(j["label"], s.eval[n].label);
    ++n;
  }
  EXPECT_EQ(n, 3);
  auto meta = nlohmann::json::parse(std::ifstream(dir / "task.json"));
  EXPECT_EQ(meta["rm_type"], "exact_match");
  EXPECT_EQ(meta["train"], 7);
  EXPECT_FALSE(fs::exists(dir / "train.jsonl.tmp"));
  fs::remove_all(dir);
}

}  // namespace

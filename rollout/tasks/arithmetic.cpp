#include "rollout/tasks/arithmetic.hpp"

#include "backends/common/error.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <fstream>
#include <random>
#include <set>
#include <tuple>

namespace anvil::tasks {
namespace {

// Uniform in [0, n) by rejection (std::uniform_int_distribution differs across libraries).
uint64_t draw(std::mt19937_64& rng, uint64_t n) {
  const uint64_t limit = UINT64_MAX - UINT64_MAX % n;
  uint64_t x = 0;
  do {
    x = rng();
  } while (x >= limit);
  return x % n;
}

uint64_t pow10(int d) {
  uint64_t p = 1;
  for (int i = 0; i < d; ++i) p *= 10;
  return p;
}

// Distinct problems the options can produce (for the capacity check).
double problem_space(const ArithmeticOptions& o) {
  const double m = static_cast<double>(pow10(o.digits));
  const double m2 = static_cast<double>(pow10(o.digits2 > 0 ? o.digits2 : o.digits));
  double n = 0;
  for (char op : std::set<char>(o.ops.begin(), o.ops.end())) {
    if (op == '+') n += m * m2;
    // Unordered pairs {a, b}: each pair with both below min(m, m2) is drawn two ways.
    if (op == '-') n += m * m2 - std::min(m, m2) * (std::min(m, m2) - 1) / 2;
    if (op == '*') n += m * 10;
  }
  return n;
}

void write_jsonl(const std::filesystem::path& path, const std::vector<TaskRow>& rows) {
  std::filesystem::path tmp = path;
  tmp += ".tmp";
  {
    std::ofstream f(tmp, std::ios::trunc);
    if (!f) fail("{}: cannot open for writing", tmp.string());
    for (const TaskRow& r : rows) {
      f << nlohmann::json{{"prompt", r.prompt}, {"label", r.label}}.dump() << '\n';
    }
    if (!f.flush()) fail("{}: write failed", tmp.string());
  }
  std::filesystem::rename(tmp, path);
}

}  // namespace

void ArithmeticOptions::validate() const {
  if (digits < 1 || digits > 9) fail("--digits must be in [1, 9] (got {})", digits);
  if (digits2 < 0 || digits2 > 9) fail("--digits2 must be in [0, 9] (got {})", digits2);
  if (ops.empty()) fail("--ops must name at least one operator of +, -, *");
  for (char c : ops) {
    if (c != '+' && c != '-' && c != '*') {
      fail("--ops '{}': '{}' is not an operator (+, -, *)", ops, std::string(1, c));
    }
  }
  if (train < 0) fail("--train must be >= 0 (got {})", train);
  if (eval < 0) fail("--eval must be >= 0 (got {})", eval);
  if (static_cast<double>(train + eval) > problem_space(*this)) {
    fail("--train {} + --eval {} exceeds the {} distinct problems of --digits {} --ops '{}'", train,
         eval, problem_space(*this), digits, ops);
  }
}

TaskSplit make_arithmetic(const ArithmeticOptions& o) {
  o.validate();
  std::mt19937_64 rng(o.seed);
  const uint64_t m = pow10(o.digits);
  const uint64_t m2 = pow10(o.digits2 > 0 ? o.digits2 : o.digits);
  std::set<std::tuple<char, uint64_t, uint64_t>> seen;
  auto next = [&]() -> TaskRow {
    for (;;) {
      const char op = o.ops[draw(rng, o.ops.size())];
      uint64_t a = draw(rng, m);
      uint64_t b = draw(rng, op == '*' ? 10 : m2);
      if (op == '-' && a < b) std::swap(a, b);
      if (!seen.insert({op, a, b}).second) continue;
      const uint64_t c = op == '+' ? a + b : op == '-' ? a - b : a * b;
      return {std::to_string(a) + op + std::to_string(b) + "=", std::to_string(c)};
    }
  };
  TaskSplit s;
  for (int64_t i = 0; i < o.eval; ++i) s.eval.push_back(next());
  for (int64_t i = 0; i < o.train; ++i) s.train.push_back(next());
  return s;
}

int64_t arithmetic_answer(const std::string& prompt) {
  size_t pos = prompt.find_first_of("+-*");
  if (pos == std::string::npos || pos == 0 || prompt.empty() || prompt.back() != '=' ||
      pos + 2 > prompt.size() - 1) {
    fail("arithmetic prompt '{}' is not of the form A<op>B=", prompt);
  }
  const std::string a = prompt.substr(0, pos), b = prompt.substr(pos + 1, prompt.size() - pos - 2);
  for (const std::string* s : {&a, &b}) {
    if (s->empty() || s->size() > 18 || s->find_first_not_of("0123456789") != std::string::npos) {
      fail("arithmetic prompt '{}': operand '{}' is not a number", prompt, *s);
    }
  }
  const int64_t x = std::stoll(a), y = std::stoll(b);
  switch (prompt[pos]) {
    case '+':
      return x + y;
    case '-':
      return x - y;
    default:
      return x * y;
  }
}

void write_task(const std::filesystem::path& dir, const TaskSplit& split,
                const ArithmeticOptions& o) {
  std::filesystem::create_directories(dir);
  write_jsonl(dir / "train.jsonl", split.train);
  write_jsonl(dir / "eval.jsonl", split.eval);
  nlohmann::json meta = {{"task", "arithmetic"},        {"seed", o.seed},
                         {"digits", o.digits},          {"ops", o.ops},
                         {"train", split.train.size()}, {"eval", split.eval.size()},
                         {"input_key", "prompt"},       {"label_key", "label"},
                         {"rm_type", "exact_match"}};
  std::filesystem::path tmp = dir / "task.json.tmp";
  {
    std::ofstream f(tmp, std::ios::trunc);
    if (!f) fail("{}: cannot open for writing", tmp.string());
    f << meta.dump(2) << '\n';
    if (!f.flush()) fail("{}: write failed", tmp.string());
  }
  std::filesystem::rename(tmp, dir / "task.json");
}

}  // namespace anvil::tasks

// The bundled arithmetic task of the demo: integer problems such as "37+85=" whose label is
// the exact answer ("122"), generated from a seed, as JSONL rows the data pipeline reads
// ({"prompt": ..., "label": ...}: SFT renders them as a user/assistant turn, rollouts and
// eval as a prompt with --apply-chat-template) and scored by --rm-type exact_match.
//
// Generation: std::mt19937_64(seed) with anvil's own bounded draw (the same problems on
// every platform). Each problem picks an operator from `ops` uniformly, then operands:
//   +  a uniform in [0, 10^digits), b uniform in [0, 10^digits2)
//   -  the same, swapped so that a >= b (answers are never negative)
//   *  a uniform in [0, 10^digits), b uniform in [0, 10)
// The eval problems are drawn first; train problems never repeat an eval problem (held
// out), and neither set repeats a problem within itself.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace anvil::tasks {

struct ArithmeticOptions {
  uint64_t seed = 0;
  int64_t train = 2000;   // train problems
  int64_t eval = 200;     // held-out problems
  int digits = 2;         // digits of the first operand (1..9)
  int digits2 = 0;        // digits of the second operand of + and - (0 = digits)
  std::string ops = "+";  // any of "+-*"
  // Throws anvil::Error naming the flag (--digits, --digits2, --ops, --train, --eval) when out of
  // range or when there are fewer distinct problems than train + eval.
  void validate() const;
};

struct TaskRow {
  std::string prompt;  // "37+85="
  std::string label;   // "122"
};

struct TaskSplit {
  std::vector<TaskRow> train, eval;
};

// The problems for `options` (validated first).
TaskSplit make_arithmetic(const ArithmeticOptions& options);

// The exact answer of a prompt "A<op>B=" (digits only, op one of + - *), or an anvil::Error
// naming the prompt. Used to check generated rows.
int64_t arithmetic_answer(const std::string& prompt);

// Writes DIR/train.jsonl, DIR/eval.jsonl and DIR/task.json (the options, counts and the
// reward to use) under temporary names, renamed when complete. Creates DIR.
void write_task(const std::filesystem::path& dir, const TaskSplit& split,
                const ArithmeticOptions& options);

}  // namespace anvil::tasks

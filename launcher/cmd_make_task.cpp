// anvil make-task arithmetic --out DIR [--seed S] [--train N] [--eval M] [--digits D] [--digits2
// D2] [--ops +-*]
//
// Writes a bundled task (rollout/tasks) as DIR/train.jsonl, DIR/eval.jsonl and DIR/task.json:
// rows {"prompt": "37+85=", "label": "122"} for --input-key prompt --label-key label, scored
// by --rm-type exact_match.
#include "backends/common/error.hpp"
#include "launcher/commands.hpp"
#include "rollout/tasks/arithmetic.hpp"

#include <CLI/CLI.hpp>

#include <cstdio>

namespace anvil::launcher {

void register_make_task(CLI::App& app, int& exit_code) {
  auto* cmd = app.add_subcommand("make-task", "Write a bundled task's train/eval JSONL");
  struct Args {
    std::string task, out;
    tasks::ArithmeticOptions options;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("task", a->task, "Task name (arithmetic)")->required();
  cmd->add_option("--out", a->out, "Output directory")->required();
  cmd->add_option("--seed", a->options.seed)->capture_default_str();
  cmd->add_option("--train", a->options.train, "Train problems")->capture_default_str();
  cmd->add_option("--eval", a->options.eval, "Held-out eval problems")->capture_default_str();
  cmd->add_option("--digits", a->options.digits, "Digits of the first operand")
      ->capture_default_str();
  cmd->add_option("--digits2", a->options.digits2,
                  "Digits of the second operand of + and - (0 = --digits)")
      ->capture_default_str();
  cmd->add_option("--ops", a->options.ops, "Operators, any of +-*")->capture_default_str();
  cmd->callback([a, &exit_code] {
    if (a->task != "arithmetic")
      fail("make-task: unknown task '{}' (available: arithmetic)", a->task);
    const tasks::TaskSplit split = tasks::make_arithmetic(a->options);
    tasks::write_task(a->out, split, a->options);
    std::printf(
        "wrote %zu train and %zu eval problems to %s (--input-key prompt --label-key "
        "label --rm-type exact_match)\n",
        split.train.size(), split.eval.size(), a->out.c_str());
    exit_code = 0;
  });
}

}  // namespace anvil::launcher

// Subcommands of the `anvil` binary. Each lives in launcher/cmd_<name>.cpp and registers
// itself on the CLI11 app; its callback returns the process exit code through `exit_code`.
#pragma once

#include <string>

namespace CLI {
class App;
}

namespace anvil::launcher {

void register_init_model(CLI::App& app, int& exit_code);
void register_score(CLI::App& app, int& exit_code);
void register_generate(CLI::App& app, int& exit_code);
void register_serve(CLI::App& app, int& exit_code);
void register_tokenize(CLI::App& app, int& exit_code);
void register_render_chat(CLI::App& app, int& exit_code);
void register_data_preview(CLI::App& app, int& exit_code);

void register_sft(CLI::App& app, int& exit_code);
void register_head(CLI::App& app, int& exit_code);
void register_worker(CLI::App& app, int& exit_code);
void register_actor(CLI::App& app, int& exit_code);
void register_eval(CLI::App& app, int& exit_code);
void register_make_task(CLI::App& app, int& exit_code);
void register_train(CLI::App& app, int& exit_code);  // anvil train, anvil train-async

// The controller's command line, shared by `anvil head` (waits for --workers) and
// `anvil train` / `anvil train-async` (launcher/cmd_train.cpp: in-process unless --workers).
enum class HeadCommandMode { Head, Train, TrainAsync };
CLI::App* add_head_command(CLI::App& app, int& exit_code, const std::string& name,
                           const std::string& description, HeadCommandMode mode);

}  // namespace anvil::launcher

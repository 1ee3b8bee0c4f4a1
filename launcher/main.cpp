// The `anvil` command. Subcommands are registered from launcher/cmd_*.cpp.
// Exit codes: 0 success, 1 anvil::Error (bad input, with a message naming the culprit),
// 2 command-line usage error, 3 unexpected internal exception.
#include "backends/common/error.hpp"
#include "launcher/commands.hpp"

#include <CLI/CLI.hpp>

#include <cstdio>
#include <exception>

int main(int argc, char** argv) {
  CLI::App app{"anvil: RL post-training for HuggingFace-format language models"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "anvil 0.1.0");
  int exit_code = 0;
  anvil::launcher::register_init_model(app, exit_code);
  anvil::launcher::register_score(app, exit_code);
  anvil::launcher::register_generate(app, exit_code);
  anvil::launcher::register_serve(app, exit_code);
  anvil::launcher::register_tokenize(app, exit_code);
  anvil::launcher::register_render_chat(app, exit_code);
  anvil::launcher::register_data_preview(app, exit_code);
  anvil::launcher::register_sft(app, exit_code);
  anvil::launcher::register_head(app, exit_code);
  anvil::launcher::register_worker(app, exit_code);
  anvil::launcher::register_actor(app, exit_code);
  anvil::launcher::register_eval(app, exit_code);
  anvil::launcher::register_make_task(app, exit_code);
  anvil::launcher::register_train(app, exit_code);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const anvil::Error& e) {
    std::fprintf(stderr, "anvil: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "anvil: internal error: %s\n", e.what());
    return 3;
  }
  return exit_code;
}

#include "launcher/commands.hpp"
#include <CLI/CLI.hpp>
namespace anvil::launcher {
void register_init_model(CLI::App& app, int& exit_code) { (void)app; (void)exit_code; }
}

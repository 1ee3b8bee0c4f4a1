#include "launcher/commands.hpp"
#include <CLI/CLI.hpp>
namespace anvil::launcher {
void register_generate(CLI::App& app, int& exit_code) { (void)app; (void)exit_code; }
}

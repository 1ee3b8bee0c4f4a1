#include "runtime/caf_system.hpp"

#include "backends/common/error.hpp"

#include <caf/all.hpp>

namespace anvil::runtime {

std::string caf_echo_roundtrip(const std::string& text) {
  caf::actor_system_config cfg;
  caf::actor_system sys{cfg};
  auto echo = sys.spawn(
      []() -> caf::behavior { return {[](const std::string& in) { return "echo:" + in; }}; });
  caf::scoped_actor self{sys};
  std::string result;
  self->request(echo, std::chrono::seconds(5), text)
      .receive([&](const std::string& reply) { result = reply; },
               [&](caf::error& err) { fail("CAF echo failed: {}", sys.render(err)); });
  self->send_exit(echo, caf::exit_reason::user_shutdown);
  return result;
}

}  // namespace anvil::runtime

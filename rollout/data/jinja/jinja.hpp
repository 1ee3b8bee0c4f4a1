// anvil::jinja: the Jinja2 subset HuggingFace chat templates use, rendering exactly what
// transformers' apply_chat_template renders (its ImmutableSandboxedEnvironment with
// trim_blocks=True, lstrip_blocks=True, loopcontrols, and its tojson / raise_exception /
// strftime_now / namespace / dict globals). No autoescaping.
//
//   auto t = anvil::jinja::Template::parse(tokenizer_config["chat_template"]);
//   std::string prompt = t.render({{"messages", msgs}, {"add_generation_prompt", true}});
//
// Supported: {{ }}, {% %}, {# #} with "-"/"+" whitespace control; if/elif/else, for (with
// else, an "if" filter, tuple unpacking, loop.* and break/continue), set (also block set
// and ns.attr), macro (defaults, caller), call, filter, with, raw, generation; Python
// operators, literals, slicing; jinja's common filters and tests; str/dict/list methods.
// Not supported (anvil::Error at parse time): include, extends, block, import, recursive
// loops, *args in calls. Undefined values follow jinja2's default Undefined: they print as
// "" and are falsy, and using them otherwise (attribute, arithmetic) is an error.
#pragma once

#include <nlohmann/json.hpp>

#include <memory>
#include <string>
#include <string_view>

namespace anvil::jinja {

struct Program;

class Template {
 public:
  // Parses `source`. Throws anvil::Error "<name>:<line>: <what>" on bad syntax, unknown
  // tags, unknown filters or tests.
  static Template parse(std::string_view source, std::string name = "chat_template");

  // Renders with `context` (a JSON object) as the template's variables. Object key order is
  // kept when given an ordered_json (tojson then prints keys as given); nlohmann::json
  // sorts keys. Throws anvil::Error "<name>:<line>: <what>" on runtime errors, including
  // raise_exception(msg) (the message is <what>), on output over 64 MiB and on macro
  // recursion deeper than 64. Const and thread-safe: one Template may render on many
  // threads at once.
  std::string render(const nlohmann::json& context) const;
  std::string render(const nlohmann::ordered_json& context) const;

  const std::string& name() const;

 private:
  explicit Template(std::shared_ptr<const Program> program) : program_(std::move(program)) {}
  std::shared_ptr<const Program> program_;
};

}  // namespace anvil::jinja

// jinja_render IN OUT: renders each JSONL line {"template": str, "context": {...}} of IN and
// writes one JSONL line per input to OUT: {"ok": true, "text": str} or {"ok": false,
// "error": str}. Templates are cached by text. Context key order is kept.
#include "backends/common/error.hpp"
#include "rollout/data/jinja/jinja.hpp"

#include <nlohmann/json.hpp>

#include <fstream>
#include <iostream>
#include <map>

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: jinja_render IN.jsonl OUT.jsonl\n";
    return 2;
  }
  std::ifstream in(argv[1]);
  std::ofstream out(argv[2]);
  if (!in || !out) {
    std::cerr << "jinja_render: cannot open " << argv[1] << " or " << argv[2] << "\n";
    return 2;
  }
  std::map<std::string, anvil::jinja::Template> cache;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    nlohmann::ordered_json result;
    try {
      auto req = nlohmann::ordered_json::parse(line);
      const std::string src = req.at("template").get<std::string>();
      auto it = cache.find(src);
      if (it == cache.end()) it = cache.emplace(src, anvil::jinja::Template::parse(src)).first;
      result["ok"] = true;
      result["text"] = it->second.render(req.at("context"));
    } catch (const std::exception& e) {
      result = {{"ok", false}, {"error", e.what()}};
    }
    out << result.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  }
  return 0;
}

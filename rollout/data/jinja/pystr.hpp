// Python str semantics on UTF-8 strings: whitespace, case mapping, split, strip, title,
// replace and format. Case mapping uses utf8proc's simple (1:1) Unicode mappings.
#pragma once

#include "rollout/data/jinja/value.hpp"

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace anvil::jinja::pystr {

std::string upper(std::string_view s);
std::string lower(std::string_view s);
std::string capitalize(std::string_view s);  // str.capitalize()
std::string title(std::string_view s);       // str.title()
std::string jinja_title(std::string_view s);  // jinja's |title filter
bool is_upper(std::string_view s);
bool is_lower(std::string_view s);

// str.strip(chars) / lstrip / rstrip; no chars strips Unicode whitespace.
std::string strip(std::string_view s, const std::optional<std::string>& chars, bool left,
                  bool right);
// str.split(sep, maxsplit); no sep splits on runs of whitespace.
std::vector<std::string> split(std::string_view s, const std::optional<std::string>& sep,
                               int64_t maxsplit);
std::vector<std::string> rsplit(std::string_view s, const std::optional<std::string>& sep,
                                int64_t maxsplit);
std::vector<std::string> splitlines(std::string_view s);
std::string replace(std::string_view s, std::string_view old, std::string_view repl,
                    int64_t count);
int64_t count(std::string_view s, std::string_view sub);
// str.find / rfind in code points; -1 when absent.
int64_t find(std::string_view s, std::string_view sub, bool reverse);
// str.format with {} / {0} / {name} fields (no format specs).
std::string format(std::string_view fmt, const Args& args);
// "fmt % args" with %s %r %d %i %f %%.
std::string percent_format(std::string_view fmt, const Value& args);

}  // namespace anvil::jinja::pystr

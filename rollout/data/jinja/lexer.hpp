// Template source -> tokens, with the whitespace rules transformers' environment uses:
// trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False, newlines normalised
// to "\n", plus the "-" / "+" markers on tags. Comments are dropped here.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace anvil::jinja {

struct Token {
  enum class Type {
    Text,        // literal template text (already whitespace-processed)
    VarBegin,    // {{
    VarEnd,      // }}
    BlockBegin,  // {%
    BlockEnd,    // %}
    Name,
    String,      // text holds the unescaped value
    Int,
    Float,
    Op,          // operators and punctuation: + - * / // % ** ~ ( ) [ ] { } . , : | = == != < <= > >=
    End,
  };
  Type type;
  std::string text;
  int line;
};

// Throws anvil::Error "<name>:<line>: ..." on unterminated tags, strings or bad characters.
std::vector<Token> tokenize(std::string_view source, const std::string& name);

}  // namespace anvil::jinja

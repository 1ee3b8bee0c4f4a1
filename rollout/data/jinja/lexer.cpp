#include "rollout/data/jinja/lexer.hpp"

#include "backends/common/error.hpp"

#include <cctype>

namespace anvil::jinja {

namespace {

bool is_ws(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

void append_utf8(uint32_t cp, std::string& out) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xc0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xe0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  } else {
    out += static_cast<char>(0xf0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3f));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  }
}

class Lexer {
 public:
  Lexer(std::string src, const std::string& name) : src_(std::move(src)), name_(name) {}

  std::vector<Token> run() {
    bool line_starting = true;
    while (pos_ < src_.size()) {
      size_t tag = find_tag(pos_);
      std::string_view text(src_.data() + pos_, (tag == std::string::npos ? src_.size() : tag) - pos_);
      if (tag == std::string::npos) {
        emit_text(text);
        advance_to(src_.size());
        break;
      }
      char kind = src_[tag + 1];
      char sign = tag + 2 < src_.size() && (src_[tag + 2] == '-' || src_[tag + 2] == '+')
                      ? src_[tag + 2]
                      : 0;
      if (sign == '-') {
        while (!text.empty() && is_ws(text.back())) text.remove_suffix(1);
      } else if (sign != '+' && kind != '{') {
        // lstrip_blocks: drop the indentation before a block or comment tag on its own line.
        size_t l = text.rfind('\n');
        l = l == std::string_view::npos ? 0 : l + 1;
        if ((l > 0 || line_starting) && l < text.size()) {
          bool all_ws = true;
          for (size_t i = l; i < text.size(); ++i) all_ws = all_ws && is_ws(text[i]);
          if (all_ws) text = text.substr(0, l);
        }
      }
      emit_text(text);
      advance_to(tag);
      size_t body = tag + 2 + (sign ? 1 : 0);
      if (kind == '#') {
        line_starting = comment(body);
      } else if (kind == '%' && raw(tag, body, line_starting)) {
        // raw block handled
      } else {
        line_starting = tag_tokens(kind, body);
      }
    }
    tokens_.push_back({Token::Type::End, "", line_});
    return std::move(tokens_);
  }

 private:
  [[noreturn]] void error(const std::string& what) const {
    fail("{}:{}: {}", name_, line_, what);
  }

  size_t find_tag(size_t from) const {
    for (size_t i = from; i + 1 < src_.size(); ++i) {
      if (src_[i] == '{' && (src_[i + 1] == '{' || src_[i + 1] == '%' || src_[i + 1] == '#')) {
        return i;
      }
    }
    return std::string::npos;
  }

  void advance_to(size_t to) {
    for (; pos_ < to; ++pos_) {
      if (src_[pos_] == '\n') ++line_;
    }
  }

  void emit_text(std::string_view text) {
    if (!text.empty()) tokens_.push_back({Token::Type::Text, std::string(text), line_});
  }

  // After a tag end: "-" eats all following whitespace, otherwise trim_blocks eats one "\n".
  // Returns whether the consumed text ended with a newline (jinja's line_starting).
  bool after_tag_end(size_t end, char mode) {
    size_t p = end;
    if (mode == '-') {
      while (p < src_.size() && is_ws(src_[p])) ++p;
    } else if (mode == 't' && p < src_.size() && src_[p] == '\n') {
      ++p;
    }
    advance_to(p);
    return p > 0 && src_[p - 1] == '\n';
  }

  bool comment(size_t body) {
    size_t e = src_.find("#}", body);
    if (e == std::string::npos) error("unterminated comment");
    bool strip = e > body && src_[e - 1] == '-';
    return after_tag_end(e + 2, strip ? '-' : 't');
  }

  // {% raw %}...{% endraw %}: the content is literal text.
  bool raw(size_t tag, size_t body, bool& line_starting) {
    size_t p = body;
    while (p < src_.size() && is_ws(src_[p])) ++p;
    if (src_.compare(p, 3, "raw") != 0) return false;
    p += 3;
    while (p < src_.size() && is_ws(src_[p])) ++p;
    char mode = 0;
    if (src_.compare(p, 3, "-%}") == 0) {
      mode = '-';
      p += 3;
    } else if (src_.compare(p, 2, "%}") == 0) {
      p += 2;
    } else {
      return false;
    }
    (void)tag;
    if (mode == '-') {
      while (p < src_.size() && is_ws(src_[p])) ++p;
    }
    // Find {%[-+]? endraw [-+]?%}.
    for (size_t s = src_.find("{%", p); s != std::string::npos; s = src_.find("{%", s + 2)) {
      size_t q = s + 2;
      char sign = q < src_.size() && (src_[q] == '-' || src_[q] == '+') ? src_[q++] : 0;
      while (q < src_.size() && is_ws(src_[q])) ++q;
      if (src_.compare(q, 6, "endraw") != 0) continue;
      q += 6;
      while (q < src_.size() && is_ws(src_[q])) ++q;
      char end_mode = 't';
      if (src_.compare(q, 3, "-%}") == 0) {
        end_mode = '-';
        q += 3;
      } else if (src_.compare(q, 3, "+%}") == 0) {
        end_mode = '+';
        q += 3;
      } else if (src_.compare(q, 2, "%}") == 0) {
        q += 2;
      } else {
        continue;
      }
      std::string_view text(src_.data() + p, s - p);
      if (sign == '-') {
        while (!text.empty() && is_ws(text.back())) text.remove_suffix(1);
      }
      advance_to(p);
      emit_text(text);
      advance_to(q);
      line_starting = after_tag_end(q, end_mode);
      return true;
    }
    error("unterminated raw block (missing endraw)");
  }

  bool tag_tokens(char kind, size_t body) {
    bool block = kind == '%';
    tokens_.push_back({block ? Token::Type::BlockBegin : Token::Type::VarBegin, "", line_});
    advance_to(body);
    int depth = 0;
    while (true) {
      while (pos_ < src_.size() && is_ws(src_[pos_])) advance_to(pos_ + 1);
      if (pos_ >= src_.size()) error(block ? "unterminated block tag '{%'" : "unterminated '{{'");
      if (depth == 0) {
        const char* close = block ? "%}" : "}}";
        Token::Type end = block ? Token::Type::BlockEnd : Token::Type::VarEnd;
        if (src_.compare(pos_, 1, "-") == 0 && src_.compare(pos_ + 1, 2, close) == 0) {
          tokens_.push_back({end, "", line_});
          return after_tag_end(pos_ + 3, '-');
        }
        if (block && src_.compare(pos_, 3, "+%}") == 0) {
          tokens_.push_back({end, "", line_});
          return after_tag_end(pos_ + 3, '+');
        }
        if (src_.compare(pos_, 2, close) == 0) {
          tokens_.push_back({end, "", line_});
          return after_tag_end(pos_ + 2, block ? 't' : '+');
        }
      }
      lex_one(depth);
    }
  }

  void lex_one(int& depth) {
    char c = src_[pos_];
    size_t start = pos_;
    if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
      while (pos_ < src_.size() &&
             (std::isalnum(static_cast<unsigned char>(src_[pos_])) || src_[pos_] == '_')) {
        ++pos_;
      }
      tokens_.push_back({Token::Type::Name, src_.substr(start, pos_ - start), line_});
      return;
    }
    if (std::isdigit(static_cast<unsigned char>(c))) {
      lex_number();
      return;
    }
    if (c == '\'' || c == '"') {
      lex_string(c);
      return;
    }
    static const char* kTwo[] = {"//", "**", "==", "!=", "<=", ">="};
    for (const char* op : kTwo) {
      if (src_.compare(pos_, 2, op) == 0) {
        tokens_.push_back({Token::Type::Op, op, line_});
        pos_ += 2;
        return;
      }
    }
    if (std::string_view("+-*/%~()[]{}.,:|=<>").find(c) == std::string_view::npos) {
      error(std::string("unexpected character '") + c + "'");
    }
    if (c == '(' || c == '[' || c == '{') ++depth;
    if ((c == ')' || c == ']' || c == '}') && depth > 0) --depth;
    tokens_.push_back({Token::Type::Op, std::string(1, c), line_});
    ++pos_;
  }

  void lex_number() {
    auto digits = [&](std::string& out) {
      while (pos_ < src_.size() &&
             (std::isdigit(static_cast<unsigned char>(src_[pos_])) || src_[pos_] == '_')) {
        if (src_[pos_] != '_') out += src_[pos_];
        ++pos_;
      }
    };
    bool after_dot = pos_ > 0 && src_[pos_ - 1] == '.';  // "x.0.1" is x[0][1], not x[0.1]
    std::string text;
    digits(text);
    bool is_float = false;
    if (!after_dot && pos_ + 1 < src_.size() && src_[pos_] == '.' &&
        std::isdigit(static_cast<unsigned char>(src_[pos_ + 1]))) {
      text += '.';
      ++pos_;
      digits(text);
      is_float = true;
    }
    if (!after_dot && pos_ < src_.size() && (src_[pos_] == 'e' || src_[pos_] == 'E')) {
      size_t p = pos_ + 1;
      if (p < src_.size() && (src_[p] == '+' || src_[p] == '-')) ++p;
      if (p < src_.size() && std::isdigit(static_cast<unsigned char>(src_[p]))) {
        text += 'e';
        text.append(src_, pos_ + 1, p - pos_ - 1);
        pos_ = p;
        digits(text);
        is_float = true;
      }
    }
    tokens_.push_back({is_float ? Token::Type::Float : Token::Type::Int, text, line_});
  }

  void lex_string(char quote) {
    int line = line_;
    std::string out;
    ++pos_;
    while (true) {
      if (pos_ >= src_.size()) error("unterminated string literal");
      char c = src_[pos_];
      if (c == quote) {
        ++pos_;
        break;
      }
      if (c == '\n') ++line_;
      if (c != '\\' || pos_ + 1 >= src_.size()) {
        out += c;
        ++pos_;
        continue;
      }
      char e = src_[pos_ + 1];
      pos_ += 2;
      auto hex = [&](int n) {
        uint32_t cp = 0;
        for (int i = 0; i < n; ++i) {
          if (pos_ >= src_.size() || !std::isxdigit(static_cast<unsigned char>(src_[pos_]))) {
            error("bad escape in string literal");
          }
          char h = src_[pos_++];
          cp = cp * 16 + static_cast<uint32_t>(std::isdigit(static_cast<unsigned char>(h))
                                                    ? h - '0'
                                                    : std::tolower(h) - 'a' + 10);
        }
        if (cp > 0x10ffff) error("bad escape in string literal");
        append_utf8(cp, out);
      };
      switch (e) {
        case 'n': out += '\n'; break;
        case 't': out += '\t'; break;
        case 'r': out += '\r'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'v': out += '\v'; break;
        case 'a': out += '\a'; break;
        case '\\': out += '\\'; break;
        case '\'': out += '\''; break;
        case '"': out += '"'; break;
        case '\n': ++line_; break;  // line continuation
        case 'x': hex(2); break;
        case 'u': hex(4); break;
        case 'U': hex(8); break;
        default:
          if (e >= '0' && e <= '7') {
            uint32_t cp = static_cast<uint32_t>(e - '0');
            for (int i = 0; i < 2 && pos_ < src_.size() && src_[pos_] >= '0' && src_[pos_] <= '7'; ++i) {
              cp = cp * 8 + static_cast<uint32_t>(src_[pos_++] - '0');
            }
            append_utf8(cp, out);
          } else {
            out += '\\';
            out += e;
          }
      }
    }
    tokens_.push_back({Token::Type::String, std::move(out), line});
  }

  std::string src_;
  const std::string& name_;
  size_t pos_ = 0;
  int line_ = 1;
  std::vector<Token> tokens_;
};

}  // namespace

std::vector<Token> tokenize(std::string_view source, const std::string& name) {
  // Jinja normalises \r\n and \r to \n and drops one trailing newline.
  std::string src;
  src.reserve(source.size());
  for (size_t i = 0; i < source.size(); ++i) {
    if (source[i] == '\r') {
      src += '\n';
      if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
    } else {
      src += source[i];
    }
  }
  if (!src.empty() && src.back() == '\n') src.pop_back();
  return Lexer(std::move(src), name).run();
}

}  // namespace anvil::jinja

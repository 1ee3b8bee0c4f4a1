#include "rollout/data/jinja/pystr.hpp"

#include <fmt/format.h>
#include <utf8proc.h>

#include <algorithm>

namespace anvil::jinja::pystr {

namespace {

std::vector<int32_t> decode(std::string_view s) {
  std::vector<int32_t> out;
  out.reserve(s.size());
  const auto* p = reinterpret_cast<const utf8proc_uint8_t*>(s.data());
  utf8proc_ssize_t left = static_cast<utf8proc_ssize_t>(s.size());
  while (left > 0) {
    int32_t cp = 0;
    utf8proc_ssize_t n = utf8proc_iterate(p, left, &cp);
    if (n <= 0) {  // invalid byte: keep it as U+FFFD
      cp = 0xfffd;
      n = 1;
    }
    out.push_back(cp);
    p += n;
    left -= n;
  }
  return out;
}

std::string encode(const std::vector<int32_t>& cps) {
  std::string out;
  out.reserve(cps.size());
  utf8proc_uint8_t buf[4];
  for (int32_t cp : cps) {
    auto n = utf8proc_encode_char(cp, buf);
    out.append(reinterpret_cast<char*>(buf), static_cast<size_t>(n));
  }
  return out;
}

bool is_space(int32_t c) {
  return (c >= 9 && c <= 13) || (c >= 28 && c <= 32) || c == 0x85 || c == 0xa0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f ||
         c == 0x205f || c == 0x3000;
}

bool is_cased(int32_t c) {
  auto cat = utf8proc_category(c);
  return cat == UTF8PROC_CATEGORY_LU || cat == UTF8PROC_CATEGORY_LL ||
         cat == UTF8PROC_CATEGORY_LT;
}

}  // namespace

std::string upper(std::string_view s) {
  auto cps = decode(s);
  for (auto& c : cps) c = utf8proc_toupper(c);
  return encode(cps);
}

std::string lower(std::string_view s) {
  auto cps = decode(s);
  for (auto& c : cps) c = utf8proc_tolower(c);
  return encode(cps);
}

std::string capitalize(std::string_view s) {
  auto cps = decode(s);
  for (size_t i = 0; i < cps.size(); ++i) {
    cps[i] = i == 0 ? utf8proc_totitle(cps[i]) : utf8proc_tolower(cps[i]);
  }
  return encode(cps);
}

std::string title(std::string_view s) {
  auto cps = decode(s);
  bool prev_cased = false;
  for (auto& c : cps) {
    bool cased = is_cased(c);
    c = prev_cased ? utf8proc_tolower(c) : utf8proc_totitle(c);
    prev_cased = cased;
  }
  return encode(cps);
}

std::string jinja_title(std::string_view s) {
  // Words start after runs of "-", whitespace, "(", "{", "[" or "<"; each word gets its
  // first character upper-cased and the rest lower-cased.
  auto cps = decode(s);
  bool word_start = true;
  for (auto& c : cps) {
    bool sep = c == '-' || c == '(' || c == '{' || c == '[' || c == '<' || is_space(c);
    if (sep) {
      word_start = true;
    } else {
      c = word_start ? utf8proc_toupper(c) : utf8proc_tolower(c);
      word_start = false;
    }
  }
  return encode(cps);
}

bool is_upper(std::string_view s) {
  bool any = false;
  for (int32_t c : decode(s)) {
    auto cat = utf8proc_category(c);
    if (cat == UTF8PROC_CATEGORY_LL || cat == UTF8PROC_CATEGORY_LT) return false;
    any = any || cat == UTF8PROC_CATEGORY_LU;
  }
  return any;
}

bool is_lower(std::string_view s) {
  bool any = false;
  for (int32_t c : decode(s)) {
    auto cat = utf8proc_category(c);
    if (cat == UTF8PROC_CATEGORY_LU || cat == UTF8PROC_CATEGORY_LT) return false;
    any = any || cat == UTF8PROC_CATEGORY_LL;
  }
  return any;
}

std::string strip(std::string_view s, const std::optional<std::string>& chars, bool left,
                  bool right) {
  auto cps = decode(s);
  std::vector<int32_t> set;
  if (chars) set = decode(*chars);
  auto strip_it = [&](int32_t c) {
    return chars ? std::find(set.begin(), set.end(), c) != set.end() : is_space(c);
  };
  size_t b = 0, e = cps.size();
  if (left) {
    while (b < e && strip_it(cps[b])) ++b;
  }
  if (right) {
    while (e > b && strip_it(cps[e - 1])) --e;
  }
  return encode(std::vector<int32_t>(cps.begin() + static_cast<ptrdiff_t>(b),
                                     cps.begin() + static_cast<ptrdiff_t>(e)));
}

std::vector<std::string> split(std::string_view s, const std::optional<std::string>& sep,
                               int64_t maxsplit) {
  std::vector<std::string> out;
  if (sep) {
    if (sep->empty()) throw EvalError("empty separator");
    size_t start = 0;
    while (maxsplit < 0 || static_cast<int64_t>(out.size()) < maxsplit) {
      size_t p = s.find(*sep, start);
      if (p == std::string_view::npos) break;
      out.emplace_back(s.substr(start, p - start));
      start = p + sep->size();
    }
    out.emplace_back(s.substr(start));
    return out;
  }
  auto cps = decode(s);
  size_t i = 0;
  while (i < cps.size()) {
    while (i < cps.size() && is_space(cps[i])) ++i;
    if (i == cps.size()) break;
    if (maxsplit >= 0 && static_cast<int64_t>(out.size()) == maxsplit) {
      size_t e = cps.size();
      while (e > i && is_space(cps[e - 1])) --e;
      out.push_back(encode({cps.begin() + static_cast<ptrdiff_t>(i), cps.begin() + static_cast<ptrdiff_t>(e)}));
      break;
    }
    size_t j = i;
    while (j < cps.size() && !is_space(cps[j])) ++j;
    out.push_back(encode({cps.begin() + static_cast<ptrdiff_t>(i), cps.begin() + static_cast<ptrdiff_t>(j)}));
    i = j;
  }
  return out;
}

std::vector<std::string> rsplit(std::string_view s, const std::optional<std::string>& sep,
                                int64_t maxsplit) {
  if (maxsplit < 0 || !sep) {
    if (maxsplit >= 0 && !sep) {
      // rsplit() on whitespace with a limit: split from the right.
      std::vector<std::string> words = split(s, sep, -1);
      if (static_cast<int64_t>(words.size()) <= maxsplit + 1) return words;
      // Re-join the leading words with the original text before the kept tail.
      size_t keep = static_cast<size_t>(maxsplit);
      std::string_view rest = s;
      std::vector<std::string> tail;
      for (size_t k = 0; k < keep; ++k) {
        size_t e = rest.size();
        while (e > 0 && is_space(static_cast<unsigned char>(rest[e - 1]))) --e;
        size_t b = e;
        while (b > 0 && !is_space(static_cast<unsigned char>(rest[b - 1]))) --b;
        tail.emplace_back(rest.substr(b, e - b));
        rest = rest.substr(0, b);
      }
      std::vector<std::string> out{strip(rest, std::nullopt, true, true)};
      out.insert(out.end(), tail.rbegin(), tail.rend());
      return out;
    }
    return split(s, sep, -1);
  }
  if (sep->empty()) throw EvalError("empty separator");
  std::vector<std::string> out;
  size_t end = s.size();
  while (static_cast<int64_t>(out.size()) < maxsplit) {
    if (end < sep->size()) break;
    size_t p = s.rfind(*sep, end - sep->size());
    if (p == std::string_view::npos) break;
    out.emplace_back(s.substr(p + sep->size(), end - p - sep->size()));
    end = p;
  }
  out.emplace_back(s.substr(0, end));
  std::reverse(out.begin(), out.end());
  return out;
}

std::vector<std::string> splitlines(std::string_view s) {
  std::vector<std::string> out;
  size_t start = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\n' || s[i] == '\r') {
      out.emplace_back(s.substr(start, i - start));
      if (s[i] == '\r' && i + 1 < s.size() && s[i + 1] == '\n') ++i;
      start = i + 1;
    }
  }
  if (start < s.size()) out.emplace_back(s.substr(start));
  return out;
}

std::string replace(std::string_view s, std::string_view old, std::string_view repl,
                    int64_t count) {
  std::string out;
  if (old.empty()) {
    auto chars = utf8::split_chars(s);
    int64_t done = 0;
    for (size_t i = 0; i <= chars.size(); ++i) {
      if (count < 0 || done < count) {
        out += repl;
        ++done;
      }
      if (i < chars.size()) out += chars[i];
    }
    return out;
  }
  size_t start = 0;
  int64_t done = 0;
  while (count < 0 || done < count) {
    size_t p = s.find(old, start);
    if (p == std::string_view::npos) break;
    out.append(s.substr(start, p - start));
    out.append(repl);
    start = p + old.size();
    ++done;
  }
  out.append(s.substr(start));
  return out;
}

int64_t count(std::string_view s, std::string_view sub) {
  if (sub.empty()) return static_cast<int64_t>(utf8::length(s)) + 1;
  int64_t n = 0;
  for (size_t p = s.find(sub); p != std::string_view::npos; p = s.find(sub, p + sub.size())) ++n;
  return n;
}

int64_t find(std::string_view s, std::string_view sub, bool reverse) {
  size_t p = reverse ? s.rfind(sub) : s.find(sub);
  if (p == std::string_view::npos) return -1;
  return static_cast<int64_t>(utf8::length(s.substr(0, p)));
}

std::string format(std::string_view f, const Args& args) {
  std::string out;
  size_t auto_index = 0;
  for (size_t i = 0; i < f.size(); ++i) {
    char c = f[i];
    if (c == '{' && i + 1 < f.size() && f[i + 1] == '{') {
      out += '{';
      ++i;
    } else if (c == '}' && i + 1 < f.size() && f[i + 1] == '}') {
      out += '}';
      ++i;
    } else if (c == '{') {
      size_t e = f.find('}', i);
      if (e == std::string_view::npos) throw EvalError("Single '{' encountered in format string");
      std::string_view field = f.substr(i + 1, e - i - 1);
      if (field.find_first_of(":!") != std::string_view::npos) {
        throw EvalError("format specs in str.format are not supported");
      }
      const Value* v = nullptr;
      if (field.empty()) {
        if (auto_index >= args.pos.size()) throw EvalError("Replacement index out of range");
        v = &args.pos[auto_index++];
      } else if (std::all_of(field.begin(), field.end(), [](char d) { return d >= '0' && d <= '9'; })) {
        size_t k = std::stoul(std::string(field));
        if (k >= args.pos.size()) throw EvalError("Replacement index out of range");
        v = &args.pos[k];
      } else {
        for (const auto& [name, val] : args.kw) {
          if (name == field) v = &val;
        }
        if (!v) throw EvalError("KeyError: '" + std::string(field) + "'");
      }
      out += v->str();
      i = e;
    } else if (c == '}') {
      throw EvalError("Single '}' encountered in format string");
    } else {
      out += c;
    }
  }
  return out;
}

std::string percent_format(std::string_view f, const Value& args) {
  std::vector<Value> items;
  if (args.is_list() && args.as_list().tuple) {
    items = args.as_list().items;
  } else {
    items.push_back(args);
  }
  std::string out;
  size_t k = 0;
  auto next = [&]() -> const Value& {
    if (k >= items.size()) throw EvalError("not enough arguments for format string");
    return items[k++];
  };
  for (size_t i = 0; i < f.size(); ++i) {
    if (f[i] != '%') {
      out += f[i];
      continue;
    }
    if (++i >= f.size()) throw EvalError("incomplete format");
    switch (f[i]) {
      case '%': out += '%'; break;
      case 's': out += next().str(); break;
      case 'r': out += next().repr(); break;
      case 'd':
      case 'i': {
        const Value& v = next();
        if (!v.is_number()) throw EvalError("%d format: a real number is required, not " + v.type_name());
        out += v.is_float() ? std::to_string(static_cast<int64_t>(v.as_double())) : std::to_string(v.as_int());
        break;
      }
      case 'f': {
        const Value& v = next();
        if (!v.is_number()) throw EvalError("must be real number, not " + v.type_name());
        out += fmt::format("{:.6f}", v.as_double());
        break;
      }
      default:
        throw EvalError(std::string("unsupported format character '") + f[i] + "'");
    }
  }
  if (k < items.size()) throw EvalError("not all arguments converted during string formatting");
  return out;
}

}  // namespace anvil::jinja::pystr

#include "rollout/reward/math_answer.hpp"

#include <cctype>
#include <cstring>
#include <limits>
#include <optional>
#include <cmath>
#include <cstdlib>
#include <vector>

namespace anvil::reward {
namespace {

void replace_all(std::string& s, const std::string& from, const std::string& to) {
  if (from.empty()) return;
  size_t pos = 0;
  while ((pos = s.find(from, pos)) != std::string::npos) {
    s.replace(pos, from.size(), to);
    pos += to.size();
  }
}

std::vector<std::string> split(const std::string& s, const std::string& sep) {
  std::vector<std::string> out;
  size_t start = 0, pos;
  while ((pos = s.find(sep, start)) != std::string::npos) {
    out.push_back(s.substr(start, pos - start));
    start = pos + sep.size();
  }
  out.push_back(s.substr(start));
  return out;
}

std::string trim(const std::string& s) {
  size_t a = 0, b = s.size();
  while (a < b && std::isspace(static_cast<unsigned char>(s[a]))) ++a;
  while (b > a && std::isspace(static_cast<unsigned char>(s[b - 1]))) --b;
  return s.substr(a, b - a);
}

// \frac1b -> \frac{1}{b}, \frac12 -> \frac{1}{2}, \frac1{72} -> \frac{1}{72}.
std::string fix_fracs(const std::string& s) {
  std::vector<std::string> parts = split(s, "\\frac");
  std::string out = parts[0];
  for (size_t i = 1; i < parts.size(); ++i) {
    const std::string& p = parts[i];
    out += "\\frac";
    if (!p.empty() && p[0] == '{') {
      out += p;
      continue;
    }
    if (p.size() < 2) return s;
    const char a = p[0], b = p[1];
    if (b != '{') {
      out += std::string("{") + a + "}{" + b + "}" + p.substr(2);
    } else {
      out += std::string("{") + a + "}" + p.substr(1);
    }
  }
  return out;
}

bool is_plain_int(const std::string& s) {
  if (s.empty()) return false;
  size_t i = s[0] == '-' ? 1 : 0;
  if (i == s.size()) return false;
  for (; i < s.size(); ++i) {
    if (!std::isdigit(static_cast<unsigned char>(s[i]))) return false;
  }
  return true;
}

// a/b with integers -> \frac{a}{b}.
std::string fix_a_slash_b(const std::string& s) {
  std::vector<std::string> parts = split(s, "/");
  if (parts.size() != 2 || !is_plain_int(parts[0]) || !is_plain_int(parts[1])) return s;
  return "\\frac{" + parts[0] + "}{" + parts[1] + "}";
}

// \sqrt3 -> \sqrt{3}.
std::string fix_sqrt(const std::string& s) {
  std::vector<std::string> parts = split(s, "\\sqrt");
  std::string out = parts[0];
  for (size_t i = 1; i < parts.size(); ++i) {
    const std::string& p = parts[i];
    if (!p.empty() && p[0] != '{') {
      out += "\\sqrt{" + p.substr(0, 1) + "}" + p.substr(1);
    } else {
      out += "\\sqrt" + p;
    }
  }
  return out;
}

// A number written as an integer, decimal (with 1,234 separators) or \frac{a}{b} / a/b.
std::optional<double> as_number(std::string s) {
  // Thousands separators: digit , three digits.
  std::string t;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == ',' && i > 0 && std::isdigit(static_cast<unsigned char>(s[i - 1])) &&
        i + 3 < s.size() + 1 && s.size() - i - 1 >= 3 &&
        std::isdigit(static_cast<unsigned char>(s[i + 1])) &&
        std::isdigit(static_cast<unsigned char>(s[i + 2])) &&
        std::isdigit(static_cast<unsigned char>(s[i + 3])) &&
        (i + 4 == s.size() || !std::isdigit(static_cast<unsigned char>(s[i + 4])))) {
      continue;
    }
    t += s[i];
  }
  s = t;
  if (s.rfind("\\frac{", 0) == 0 || s.rfind("-\\frac{", 0) == 0) {
    const bool neg = s[0] == '-';
    const size_t open1 = s.find('{');
    const size_t close1 = s.find('}', open1);
    if (close1 == std::string::npos || close1 + 1 >= s.size() || s[close1 + 1] != '{' ||
        s.back() != '}') {
      return std::nullopt;
    }
    auto num = as_number(s.substr(open1 + 1, close1 - open1 - 1));
    auto den = as_number(s.substr(close1 + 2, s.size() - close1 - 3));
    if (!num || !den || *den == 0) return std::nullopt;
    return (neg ? -1 : 1) * *num / *den;
  }
  if (s.empty()) return std::nullopt;
  char* end = nullptr;
  double v = std::strtod(s.c_str(), &end);
  if (end != s.c_str() + s.size() || !std::isfinite(v)) return std::nullopt;
  // Reject hex, inf, nan spellings strtod accepts.
  for (char c : s) {
    if (!(std::isdigit(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == '+' ||
          c == 'e' || c == 'E')) {
      return std::nullopt;
    }
  }
  return v;
}

// Exact rationals for expression equality ("1/2 + 1/4" == "0.75" == "\frac{3}{4}").
// Overflow of the 64-bit numerator or denominator makes the evaluation fail (nullopt),
// never a wrong answer.
struct Rational {
  int64_t num = 0, den = 1;
};

std::optional<Rational> make_rational(__int128 n, __int128 d) {
  if (d == 0) return std::nullopt;
  if (d < 0) n = -n, d = -d;
  __int128 a = n < 0 ? -n : n, b = d;
  while (b != 0) {
    __int128 t = a % b;
    a = b;
    b = t;
  }
  if (a > 1) n /= a, d /= a;
  constexpr __int128 kMax = std::numeric_limits<int64_t>::max();
  if (n > kMax || n < -kMax || d > kMax) return std::nullopt;
  return Rational{static_cast<int64_t>(n), static_cast<int64_t>(d)};
}

// Recursive descent over: sums and differences, products (* \cdot \times, implicit
// between a number and a parenthesis), quotients (/ \div), integer powers (^), unary
// minus, parentheses and braces, \frac{a}{b}, integers and decimals (exact), a trailing
// percent sign (/100). Anything else (variables, \sqrt, \pi) fails the evaluation.
class RationalParser {
 public:
  explicit RationalParser(const std::string& s) : s_(s) {}
  std::optional<Rational> parse() {
    auto v = sum();
    if (!v || pos_ != s_.size()) return std::nullopt;
    return v;
  }

 private:
  bool eat(const char* token) {
    const size_t n = std::strlen(token);
    if (s_.compare(pos_, n, token) == 0) {
      pos_ += n;
      return true;
    }
    return false;
  }
  static std::optional<Rational> add(Rational a, Rational b, int sign) {
    return make_rational(
        static_cast<__int128>(a.num) * b.den + sign * static_cast<__int128>(b.num) * a.den,
        static_cast<__int128>(a.den) * b.den);
  }
  static std::optional<Rational> mul(Rational a, Rational b) {
    return make_rational(static_cast<__int128>(a.num) * b.num,
                         static_cast<__int128>(a.den) * b.den);
  }
  static std::optional<Rational> div(Rational a, Rational b) {
    return make_rational(static_cast<__int128>(a.num) * b.den,
                         static_cast<__int128>(a.den) * b.num);
  }
  std::optional<Rational> sum() {
    auto v = product();
    while (v && pos_ < s_.size()) {
      if (eat("+")) {
        auto r = product();
        v = r ? add(*v, *r, 1) : std::nullopt;
      } else if (eat("-")) {
        auto r = product();
        v = r ? add(*v, *r, -1) : std::nullopt;
      } else {
        break;
      }
    }
    return v;
  }
  std::optional<Rational> product() {
    auto v = unary();
    while (v && pos_ < s_.size()) {
      if (eat("*") || eat("\\cdot") || eat("\\times")) {
        auto r = unary();
        v = r ? mul(*v, *r) : std::nullopt;
      } else if (eat("/") || eat("\\div")) {
        auto r = unary();
        v = r ? div(*v, *r) : std::nullopt;
      } else if (s_[pos_] == '(') {  // 2(3+4)
        auto r = unary();
        v = r ? mul(*v, *r) : std::nullopt;
      } else {
        break;
      }
    }
    return v;
  }
  // Binds tighter than unary minus: -2^2 = -(2^2); the exponent may be signed (2^-1).
  std::optional<Rational> power() {
    auto base = atom();
    if (!base || !eat("^")) return base;
    auto e = unary();
    if (!e || e->den != 1 || e->num > 64 || e->num < -64) return std::nullopt;
    std::optional<Rational> r = Rational{1, 1};
    for (int64_t i = 0; r && i < (e->num < 0 ? -e->num : e->num); ++i) r = mul(*r, *base);
    if (r && e->num < 0) r = div(Rational{1, 1}, *r);
    return r;
  }
  std::optional<Rational> unary() {
    if (eat("-")) {
      auto v = unary();
      if (!v) return std::nullopt;
      return Rational{-v->num, v->den};
    }
    if (eat("+")) return unary();
    return power();
  }
  std::optional<Rational> atom() {
    std::optional<Rational> v;
    if (eat("\\frac{")) {
      auto a = sum();
      if (!a || !eat("}") || !eat("{")) return std::nullopt;
      auto b = sum();
      if (!b || !eat("}")) return std::nullopt;
      v = div(*a, *b);
    } else if (eat("(")) {
      v = sum();
      if (!v || !eat(")")) return std::nullopt;
    } else if (eat("{")) {
      v = sum();
      if (!v || !eat("}")) return std::nullopt;
    } else {
      v = number();
    }
    if (v && eat("\\%"))
      v = div(*v, Rational{100, 1});
    else if (v && eat("%"))
      v = div(*v, Rational{100, 1});
    return v;
  }
  std::optional<Rational> number() {
    __int128 n = 0, d = 1;
    size_t digits = 0;
    while (pos_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[pos_]))) {
      n = n * 10 + (s_[pos_++] - '0');
      if (++digits > 30) return std::nullopt;
    }
    if (pos_ < s_.size() && s_[pos_] == '.') {
      ++pos_;
      while (pos_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[pos_]))) {
        n = n * 10 + (s_[pos_++] - '0');
        d *= 10;
        if (++digits > 30) return std::nullopt;
      }
    }
    if (digits == 0) return std::nullopt;
    return make_rational(n, d);
  }

  const std::string& s_;
  size_t pos_ = 0;
};

// Removes thousands separators ("1,234,567" -> "1234567") from a string that is exactly
// one such number (possibly signed or a decimal).
std::string strip_thousands(const std::string& s) {
  size_t i = (!s.empty() && (s[0] == '-' || s[0] == '+')) ? 1 : 0;
  size_t first = i;
  while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) ++i;
  if (i == first || i - first > 3 || i >= s.size() || s[i] != ',') return s;
  std::string out = s.substr(0, i);
  while (i < s.size() && s[i] == ',') {
    for (size_t k = 1; k <= 3; ++k) {
      if (i + k >= s.size() || !std::isdigit(static_cast<unsigned char>(s[i + k]))) return s;
    }
    out += s.substr(i + 1, 3);
    i += 4;
  }
  if (i < s.size() && s[i] != '.') return s;
  return out + s.substr(i);
}

// Splits "(a,b)" / "[a,b]" / "a,b" at top-level commas; one element when there is none.
std::vector<std::string> top_level_items(const std::string& s, char& open, char& close) {
  std::string body = s;
  open = close = 0;
  if (s.size() >= 2 && (s[0] == '(' || s[0] == '[') && (s.back() == ')' || s.back() == ']')) {
    open = s[0];
    close = s.back();
    body = s.substr(1, s.size() - 2);
  }
  std::vector<std::string> items;
  int depth = 0;
  size_t start = 0;
  for (size_t i = 0; i < body.size(); ++i) {
    const char c = body[i];
    if (c == '(' || c == '[' || c == '{') ++depth;
    if (c == ')' || c == ']' || c == '}') --depth;
    if (c == ',' && depth == 0) {
      items.push_back(body.substr(start, i - start));
      start = i + 1;
    }
  }
  items.push_back(body.substr(start));
  return items;
}

std::optional<Rational> evaluate(const std::string& normalized) {
  return RationalParser(strip_thousands(normalized)).parse();
}

}  // namespace

std::optional<std::string> last_boxed(const std::string& text) {
  size_t idx = text.rfind("\\boxed");
  size_t skip = 6;
  if (idx == std::string::npos) {
    idx = text.rfind("\\fbox");
    skip = 5;
    if (idx == std::string::npos) return std::nullopt;
  }
  size_t i = idx + skip;
  while (i < text.size() && text[i] == ' ') ++i;
  if (i >= text.size() || text[i] != '{') {
    // "\boxed 5" form: up to the next '$' or end.
    size_t end = text.find('$', i);
    std::string inner = trim(text.substr(i, end == std::string::npos ? end : end - i));
    if (inner.empty()) return std::nullopt;
    return inner;
  }
  int depth = 0;
  for (size_t j = i; j < text.size(); ++j) {
    if (text[j] == '{') ++depth;
    if (text[j] == '}' && --depth == 0) return text.substr(i + 1, j - i - 1);
  }
  return std::nullopt;
}

std::string normalize_math_answer(std::string s) {
  s = trim(s);
  // Enclosing \text{...}.
  if (s.rfind("\\text{", 0) == 0 && s.back() == '}' && s.find('}') == s.size() - 1) {
    s = trim(s.substr(6, s.size() - 7));
  }
  replace_all(s, "\n", "");
  replace_all(s, "\\!", "");
  replace_all(s, "\\\\", "\\");
  replace_all(s, "tfrac", "frac");
  replace_all(s, "dfrac", "frac");
  replace_all(s, "\\left", "");
  replace_all(s, "\\right", "");
  replace_all(s, "^{\\circ}", "");
  replace_all(s, "^\\circ", "");
  replace_all(s, "\\$", "");
  replace_all(s, "$", "");
  // Units on the right: "\text{ cm}".
  if (size_t u = s.find("\\text{ "); u != std::string::npos) s = s.substr(0, u);
  replace_all(s, "\\%", "");
  replace_all(s, "%", "");
  replace_all(s, " .", " 0.");
  replace_all(s, "{.", "{0.");
  if (s.empty()) return s;
  if (s[0] == '.') s = "0" + s;
  // "k = 5" -> "5" when the left side is short.
  if (std::vector<std::string> eq = split(s, "="); eq.size() == 2 && trim(eq[0]).size() <= 2) {
    s = eq[1];
  }
  s = fix_sqrt(s);
  replace_all(s, " ", "");
  s = fix_fracs(s);
  if (s == "0.5") s = "\\frac{1}{2}";
  s = fix_a_slash_b(s);
  return s;
}

bool math_answers_equal(const std::string& given, const std::string& truth_in) {
  std::string truth = truth_in;
  if (truth.find("\\boxed") != std::string::npos) {
    auto inner = last_boxed(truth);
    if (!inner) return false;
    truth = *inner;
  }
  if (trim(truth).empty()) return false;
  return normalized_answers_equal(normalize_math_answer(given), normalize_math_answer(truth));
}

bool normalized_answers_equal(const std::string& a, const std::string& b) {
  if (a == b) return true;
  // Exact rational evaluation: fractions, decimals, percentages, simple arithmetic.
  auto ra = evaluate(a), rb = evaluate(b);
  if (ra && rb) return ra->num == rb->num && ra->den == rb->den;
  // Tuples and intervals, element by element (brackets must agree).
  char oa, ca, ob, cb;
  std::vector<std::string> ia = top_level_items(a, oa, ca), ib = top_level_items(b, ob, cb);
  if ((ia.size() > 1 || ib.size() > 1) && ia.size() == ib.size() && oa == ob && ca == cb &&
      strip_thousands(a) == a && strip_thousands(b) == b) {
    for (size_t i = 0; i < ia.size(); ++i) {
      if (!normalized_answers_equal(ia[i], ib[i])) return false;
    }
    return true;
  }
  auto x = as_number(a), y = as_number(b);
  if (x && y) return std::abs(*x - *y) <= 1e-6 * std::max(1.0, std::abs(*y));
  return false;
}

double math_reward(const std::string& response, const std::string& label) {
  auto answer = last_boxed(response);
  if (!answer) return 0.0;
  return math_answers_equal(*answer, label) ? 1.0 : 0.0;
}

}  // namespace anvil::reward

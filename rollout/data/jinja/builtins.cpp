#include "rollout/data/jinja/builtins.hpp"

#include "rollout/data/jinja/pystr.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <ctime>
#include <unordered_map>

namespace anvil::jinja {

namespace {

constexpr int64_t kMaxRange = 1 << 20;           // items one range() may produce
constexpr size_t kMaxBuilt = size_t{64} << 20;   // bytes / items one repetition may produce

using FilterFn = Value (*)(const Value&, Args&);
using TestFn = bool (*)(const Value&, Args&);

[[noreturn]] void undefined_error(const Value& v) {
  throw EvalError(v.undefined_hint().empty() ? "value is undefined" : v.undefined_hint());
}

std::optional<std::string> opt_str(const Value* v) {
  if (!v || v->is_none()) return std::nullopt;
  if (!v->is_string()) throw EvalError("expected a string argument, got " + v->type_name());
  return v->as_string();
}

const std::string& want_str(const Value& v, std::string_view what) {
  if (!v.is_string()) {
    throw EvalError(fmt::format("{} expects a string, got {}", what, v.type_name()));
  }
  return v.as_string();
}

int64_t want_int(const Value* v, int64_t fallback, std::string_view what) {
  if (!v || v->is_none()) return fallback;
  if (!v->is_integral()) {
    throw EvalError(fmt::format("{} expects an integer, got {}", what, v->type_name()));
  }
  return v->as_int();
}

Value str_list(std::vector<std::string> parts) {
  std::vector<Value> items;
  items.reserve(parts.size());
  for (auto& p : parts) items.push_back(Value::string(std::move(p)));
  return Value::list(std::move(items));
}

std::string type_desc(const Value& v) { return "'" + v.type_name() + " object'"; }

// --- methods of str, dict and list, returned by get_attr as bound callables ---

Value string_method(const std::string& self, const std::string& name) {
  auto bind = [&](auto fn) {
    return Value::callable(name, [self, name, fn](Args& a) -> Value { return fn(self, a); });
  };
  if (name == "startswith" || name == "endswith") {
    bool starts = name == "startswith";
    return Value::callable(name, [self, starts](Args& a) -> Value {
      a.check(starts ? "startswith" : "endswith", 1, {});
      if (a.pos.empty()) throw EvalError("startswith/endswith takes one argument");
      std::vector<Value> options;
      if (a.pos[0].is_list() && a.pos[0].as_list().tuple) options = a.pos[0].as_list().items;
      else options.push_back(a.pos[0]);
      for (const auto& o : options) {
        const std::string& p = want_str(o, starts ? "startswith" : "endswith");
        if (p.size() <= self.size() &&
            (starts ? self.compare(0, p.size(), p) == 0
                    : self.compare(self.size() - p.size(), p.size(), p) == 0)) {
          return Value::boolean(true);
        }
      }
      return Value::boolean(false);
    });
  }
  if (name == "strip" || name == "lstrip" || name == "rstrip") {
    bool l = name != "rstrip", r = name != "lstrip";
    return Value::callable(name, [self, l, r](Args& a) -> Value {
      return Value::string(pystr::strip(self, opt_str(a.get(0, "chars")), l, r));
    });
  }
  if (name == "split" || name == "rsplit") {
    bool rev = name == "rsplit";
    return Value::callable(name, [self, rev](Args& a) -> Value {
      auto sep = opt_str(a.get(0, "sep"));
      int64_t maxsplit = want_int(a.get(1, "maxsplit"), -1, "split");
      return str_list(rev ? pystr::rsplit(self, sep, maxsplit) : pystr::split(self, sep, maxsplit));
    });
  }
  if (name == "splitlines") {
    return bind([](const std::string& s, Args&) { return str_list(pystr::splitlines(s)); });
  }
  if (name == "replace") {
    return bind([](const std::string& s, Args& a) {
      if (a.pos.size() < 2) throw EvalError("replace() takes at least 2 arguments");
      return Value::string(pystr::replace(s, want_str(a.pos[0], "replace"),
                                          want_str(a.pos[1], "replace"),
                                          want_int(a.get(2, "count"), -1, "replace")));
    });
  }
  if (name == "upper") return bind([](const std::string& s, Args&) { return Value::string(pystr::upper(s)); });
  if (name == "lower") return bind([](const std::string& s, Args&) { return Value::string(pystr::lower(s)); });
  if (name == "title") return bind([](const std::string& s, Args&) { return Value::string(pystr::title(s)); });
  if (name == "capitalize") {
    return bind([](const std::string& s, Args&) { return Value::string(pystr::capitalize(s)); });
  }
  if (name == "isupper") return bind([](const std::string& s, Args&) { return Value::boolean(pystr::is_upper(s)); });
  if (name == "islower") return bind([](const std::string& s, Args&) { return Value::boolean(pystr::is_lower(s)); });
  if (name == "isdigit" || name == "isnumeric" || name == "isdecimal") {
    return bind([](const std::string& s, Args&) {
      return Value::boolean(!s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; }));
    });
  }
  if (name == "isspace") {
    return bind([](const std::string& s, Args&) {
      return Value::boolean(!s.empty() && pystr::strip(s, std::nullopt, true, true).empty());
    });
  }
  if (name == "isalpha" || name == "isalnum") {
    bool num = name == "isalnum";
    return Value::callable(name, [self, num](Args&) -> Value {
      return Value::boolean(!self.empty() && std::all_of(self.begin(), self.end(), [num](char c) {
        return std::isalpha(static_cast<unsigned char>(c)) || (num && std::isdigit(static_cast<unsigned char>(c)));
      }));
    });
  }
  if (name == "find" || name == "rfind" || name == "index" || name == "rindex") {
    bool rev = name[0] == 'r';
    bool raise = name.find("index") != std::string::npos;
    return Value::callable(name, [self, rev, raise](Args& a) -> Value {
      if (a.pos.empty()) throw EvalError("find() takes at least 1 argument");
      int64_t r = pystr::find(self, want_str(a.pos[0], "find"), rev);
      if (r < 0 && raise) throw EvalError("substring not found");
      return Value::integer(r);
    });
  }
  if (name == "count") {
    return bind([](const std::string& s, Args& a) {
      if (a.pos.empty()) throw EvalError("count() takes at least 1 argument");
      return Value::integer(pystr::count(s, want_str(a.pos[0], "count")));
    });
  }
  if (name == "format") {
    return bind([](const std::string& s, Args& a) { return Value::string(pystr::format(s, a)); });
  }
  if (name == "join") {
    return bind([](const std::string& s, Args& a) {
      if (a.pos.size() != 1) throw EvalError("join() takes exactly one argument");
      std::string out;
      bool first = true;
      for (const auto& v : iterate(a.pos[0])) {
        if (!first) out += s;
        first = false;
        out += want_str(v, "join");
      }
      return Value::string(std::move(out));
    });
  }
  return Value::undefined("'str object' has no attribute '" + name + "'");
}

Value dict_method(const Value& self, const std::string& name) {
  if (name == "items" || name == "keys" || name == "values") {
    int which = name == "items" ? 0 : name == "keys" ? 1 : 2;
    return Value::callable(name, [self, which](Args& a) -> Value {
      a.check("items", 0, {});
      std::vector<Value> out;
      for (const auto& [k, v] : self.as_dict().items) {
        if (which == 0) out.push_back(Value::list({k, v}, true));
        else out.push_back(which == 1 ? k : v);
      }
      return Value::list(std::move(out));
    });
  }
  if (name == "get") {
    return Value::callable(name, [self](Args& a) -> Value {
      if (a.pos.empty() || a.pos.size() > 2) throw EvalError("get() takes 1 or 2 arguments");
      const Value* v = self.as_dict().find(a.pos[0]);
      if (v) return *v;
      return a.pos.size() > 1 ? a.pos[1] : Value::none();
    });
  }
  return Value::undefined();
}

Value list_method(const Value& self, const std::string& name) {
  if (name == "index" || name == "count") {
    bool idx = name == "index";
    return Value::callable(name, [self, idx](Args& a) -> Value {
      if (a.pos.size() != 1) throw EvalError("index()/count() take one argument");
      int64_t n = 0;
      const auto& items = self.as_list().items;
      for (size_t i = 0; i < items.size(); ++i) {
        if (items[i] == a.pos[0]) {
          if (idx) return Value::integer(static_cast<int64_t>(i));
          ++n;
        }
      }
      if (idx) throw EvalError(a.pos[0].repr() + " is not in list");
      return Value::integer(n);
    });
  }
  return Value::undefined("'" + self.type_name() + " object' has no attribute '" + name + "'");
}

// --- attribute paths for filters: "a.b.0" ---
Value get_path(const Value& v, const Value& attribute) {
  if (attribute.is_integral()) return get_item(v, attribute);
  Value cur = v;
  const std::string& path = want_str(attribute, "attribute");
  size_t start = 0;
  while (true) {
    size_t dot = path.find('.', start);
    std::string part = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    bool digits = !part.empty() && std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; });
    cur = get_item(cur, digits ? Value::integer(std::stoll(part)) : Value::string(part));
    if (dot == std::string::npos) return cur;
    start = dot + 1;
  }
}

// a OP b for int64, failing on overflow instead of wrapping (Python ints do not wrap).
template <typename Op>
int64_t checked(Op op, int64_t a, int64_t b) {
  int64_t r = 0;
  if (op(a, b, &r)) throw EvalError("integer overflow");
  return r;
}
bool add_ovf(int64_t a, int64_t b, int64_t* r) { return __builtin_add_overflow(a, b, r); }
bool sub_ovf(int64_t a, int64_t b, int64_t* r) { return __builtin_sub_overflow(a, b, r); }
bool mul_ovf(int64_t a, int64_t b, int64_t* r) { return __builtin_mul_overflow(a, b, r); }

int64_t floor_div(int64_t a, int64_t b) {
  if (b == 0) throw EvalError("integer division or modulo by zero");
  if (a == INT64_MIN && b == -1) throw EvalError("integer overflow");
  int64_t q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
  return q;
}

int64_t py_mod(int64_t a, int64_t b) {
  if (b == 0) throw EvalError("integer division or modulo by zero");
  if (b == -1) return 0;
  int64_t r = a % b;
  if (r != 0 && ((r < 0) != (b < 0))) r += b;
  return r;
}

double py_fmod(double a, double b) {
  if (b == 0) throw EvalError("float modulo");
  double r = std::fmod(a, b);
  if (r != 0 && ((r < 0) != (b < 0))) r += b;
  return r;
}

Value repeat(const Value& seq, int64_t n) {
  if (n < 0) n = 0;
  if (seq.is_string()) {
    if (seq.as_string().size() * static_cast<size_t>(n) > kMaxBuilt) throw EvalError("string too large");
    std::string out;
    for (int64_t i = 0; i < n; ++i) out += seq.as_string();
    return Value::string(std::move(out));
  }
  const auto& l = seq.as_list();
  if (l.items.size() * static_cast<size_t>(n) > kMaxBuilt) throw EvalError("list too large");
  std::vector<Value> out;
  for (int64_t i = 0; i < n; ++i) out.insert(out.end(), l.items.begin(), l.items.end());
  return Value::list(std::move(out), l.tuple);
}

// Python's <, for sort and comparisons. Returns <0, 0, >0.
int order(const Value& a, const Value& b, bool case_sensitive = true) {
  if (a.is_undefined()) undefined_error(a);
  if (b.is_undefined()) undefined_error(b);
  if (a.is_number() && b.is_number()) {
    if (a.is_float() || b.is_float()) {
      double x = a.as_double(), y = b.as_double();
      return x < y ? -1 : x > y ? 1 : 0;
    }
    return a.as_int() < b.as_int() ? -1 : a.as_int() > b.as_int() ? 1 : 0;
  }
  if (a.is_string() && b.is_string()) {
    if (!case_sensitive) {
      std::string x = pystr::lower(a.as_string()), y = pystr::lower(b.as_string());
      return x.compare(y) < 0 ? -1 : x.compare(y) > 0 ? 1 : 0;
    }
    int c = a.as_string().compare(b.as_string());
    return c < 0 ? -1 : c > 0 ? 1 : 0;
  }
  if (a.is_list() && b.is_list() && a.as_list().tuple == b.as_list().tuple) {
    const auto& x = a.as_list().items;
    const auto& y = b.as_list().items;
    for (size_t i = 0; i < std::min(x.size(), y.size()); ++i) {
      if (!(x[i] == y[i])) return order(x[i], y[i], case_sensitive);
    }
    return x.size() < y.size() ? -1 : x.size() > y.size() ? 1 : 0;
  }
  throw EvalError(fmt::format("'<' not supported between instances of '{}' and '{}'",
                              a.type_name(), b.type_name()));
}

Value case_key(const Value& v, bool case_sensitive) {
  if (!case_sensitive && v.is_string()) return Value::string(pystr::lower(v.as_string()));
  return v;
}

// --- filters ---

Value f_abs(const Value& v, Args&) {
  if (v.is_float()) return Value::real(std::fabs(v.as_double()));
  if (v.is_integral()) return Value::integer(v.as_int() < 0 ? checked(sub_ovf, 0, v.as_int()) : v.as_int());
  throw EvalError("bad operand type for abs(): '" + v.type_name() + "'");
}
Value f_attr(const Value& v, Args& a) {
  const Value* n = a.get(0, "name");
  if (!n) throw EvalError("attr() needs a name");
  return get_attr(v, want_str(*n, "attr"));
}
Value f_capitalize(const Value& v, Args&) { return Value::string(pystr::capitalize(v.str())); }
Value f_lower(const Value& v, Args&) { return Value::string(pystr::lower(v.str())); }
Value f_upper(const Value& v, Args&) { return Value::string(pystr::upper(v.str())); }
Value f_title(const Value& v, Args&) { return Value::string(pystr::jinja_title(v.str())); }
Value f_trim(const Value& v, Args& a) {
  a.check("trim", 1, {"chars"});
  return Value::string(pystr::strip(v.str(), opt_str(a.get(0, "chars")), true, true));
}
Value f_length(const Value& v, Args&) { return Value::integer(length(v)); }
Value f_string(const Value& v, Args&) { return Value::string(v.str()); }
Value f_safe(const Value& v, Args&) { return v; }
Value f_list(const Value& v, Args&) { return Value::list(iterate(v)); }
Value f_default(const Value& v, Args& a) {
  a.check("default", 2, {"default_value", "boolean"});
  const Value* d = a.get(0, "default_value");
  const Value* b = a.get(1, "boolean");
  bool boolean = b && b->truthy();
  if (v.is_undefined() || (boolean && !v.truthy())) return d ? *d : Value::string("");
  return v;
}
Value f_first(const Value& v, Args&) {
  if (v.is_undefined()) undefined_error(v);
  auto items = iterate(v);
  if (items.empty()) return Value::undefined("No first item, sequence was empty.");
  return items.front();
}
Value f_last(const Value& v, Args&) {
  if (v.is_undefined()) undefined_error(v);
  auto items = iterate(v);
  if (items.empty()) return Value::undefined("No last item, sequence was empty.");
  return items.back();
}
Value f_join(const Value& v, Args& a) {
  a.check("join", 2, {"d", "attribute"});
  const Value* d = a.get(0, "d");
  const Value* attr = a.get(1, "attribute");
  std::string sep = d ? d->str() : "";
  std::string out;
  bool first = true;
  for (const auto& item : iterate(v)) {
    if (!first) out += sep;
    first = false;
    out += (attr && !attr->is_none() ? get_path(item, *attr) : item).str();
  }
  return Value::string(std::move(out));
}
Value f_int(const Value& v, Args& a) {
  a.check("int", 2, {"default", "base"});
  const Value* d = a.get(0, "default");
  Value fallback = d ? *d : Value::integer(0);
  if (v.is_integral()) return Value::integer(v.as_int());
  if (v.is_float()) {
    double x = v.as_double();
    if (!std::isfinite(x) || std::fabs(x) > 9.2e18) return fallback;
    return Value::integer(static_cast<int64_t>(x));
  }
  if (v.is_string()) {
    std::string s = pystr::strip(v.as_string(), std::nullopt, true, true);
    s.erase(std::remove(s.begin(), s.end(), '_'), s.end());
    int base = static_cast<int>(want_int(a.get(1, "base"), 10, "int"));
    if (!s.empty()) {
      char* end = nullptr;
      errno = 0;
      long long r = std::strtoll(s.c_str(), &end, base);
      if (errno == 0 && end == s.c_str() + s.size()) return Value::integer(r);
      errno = 0;
      double x = std::strtod(s.c_str(), &end);
      if (end == s.c_str() + s.size() && std::isfinite(x) && std::fabs(x) < 9.2e18) {
        return Value::integer(static_cast<int64_t>(x));
      }
    }
  }
  return fallback;
}
Value f_float(const Value& v, Args& a) {
  a.check("float", 1, {"default"});
  const Value* d = a.get(0, "default");
  Value fallback = d ? *d : Value::real(0.0);
  if (v.is_number()) return Value::real(v.as_double());
  if (v.is_string()) {
    std::string s = pystr::strip(v.as_string(), std::nullopt, true, true);
    char* end = nullptr;
    if (!s.empty()) {
      double x = std::strtod(s.c_str(), &end);
      if (end == s.c_str() + s.size()) return Value::real(x);
    }
  }
  return fallback;
}
Value f_round(const Value& v, Args& a) {
  a.check("round", 2, {"precision", "method"});
  int64_t precision = want_int(a.get(0, "precision"), 0, "round");
  const Value* m = a.get(1, "method");
  std::string method = m ? want_str(*m, "round") : "common";
  if (!v.is_number()) throw EvalError("round() needs a number, got " + v.type_name());
  if (method == "common") {
    if (v.is_integral()) return Value::integer(v.as_int());
    double x = v.as_double();
    if (precision == 0) return Value::real(std::nearbyint(x));
    std::string s = fmt::format("{:.{}f}", x, std::clamp<int64_t>(precision, 0, 30));
    return Value::real(std::strtod(s.c_str(), nullptr));
  }
  if (method != "ceil" && method != "floor") {
    throw EvalError("method must be common, ceil or floor");
  }
  double scale = std::pow(10.0, static_cast<double>(precision));
  double x = v.as_double() * scale;
  return Value::real((method == "ceil" ? std::ceil(x) : std::floor(x)) / scale);
}
Value f_items(const Value& v, Args&) {
  if (v.is_undefined()) return Value::list({});
  if (!v.is_dict()) throw EvalError("Can only get item pairs from a mapping.");
  Args none;
  return dict_method(v, "items").as_callable().fn(none);
}
Value f_replace(const Value& v, Args& a) {
  a.check("replace", 3, {"old", "new", "count"});
  const Value* o = a.get(0, "old");
  const Value* n = a.get(1, "new");
  if (!o || !n) throw EvalError("replace() needs old and new");
  return Value::string(pystr::replace(v.str(), o->str(), n->str(), want_int(a.get(2, "count"), -1, "replace")));
}
Value f_reverse(const Value& v, Args&) {
  if (v.is_string()) {
    auto chars = utf8::split_chars(v.as_string());
    std::string out;
    for (auto it = chars.rbegin(); it != chars.rend(); ++it) out += *it;
    return Value::string(std::move(out));
  }
  auto items = iterate(v);
  std::reverse(items.begin(), items.end());
  return Value::list(std::move(items));
}
Value f_tojson(const Value& v, Args& a) {
  a.check("tojson", 5, {"ensure_ascii", "indent", "separators", "sort_keys"});
  JsonOptions o;
  if (const Value* e = a.get(0, "ensure_ascii")) o.ensure_ascii = e->truthy();
  if (const Value* i = a.get(1, "indent"); i && !i->is_none()) {
    if (i->is_string()) throw EvalError("tojson: string indents are not supported");
    o.indent = static_cast<int>(std::clamp<int64_t>(want_int(i, 0, "tojson indent"), 0, 64));
    o.item_sep = ",";
  }
  if (const Value* s = a.get(2, "separators"); s && !s->is_none()) {
    if (!s->is_list() || s->as_list().items.size() != 2) throw EvalError("tojson: separators must be a pair");
    o.item_sep = want_str(s->as_list().items[0], "separators");
    o.key_sep = want_str(s->as_list().items[1], "separators");
  }
  if (const Value* k = a.get(3, "sort_keys")) o.sort_keys = k->truthy();
  return Value::string(to_json_text(v, o));
}
Value f_indent(const Value& v, Args& a) {
  a.check("indent", 3, {"width", "first", "blank"});
  const Value* w = a.get(0, "width");
  std::string ind = w && w->is_string() ? w->as_string() : std::string(static_cast<size_t>(std::clamp<int64_t>(want_int(w, 4, "indent"), 0, 1024)), ' ');
  const Value* f = a.get(1, "first");
  const Value* b = a.get(2, "blank");
  auto lines = pystr::splitlines(v.str() + "\n");
  std::string rv;
  if (b && b->truthy()) {
    for (size_t i = 0; i < lines.size(); ++i) rv += (i ? "\n" + ind : "") + lines[i];
  } else {
    rv = lines.empty() ? "" : lines[0];
    for (size_t i = 1; i < lines.size(); ++i) rv += "\n" + (lines[i].empty() ? "" : ind) + lines[i];
  }
  if (f && f->truthy()) rv = ind + rv;
  return Value::string(std::move(rv));
}
Value f_format(const Value& v, Args& a) {
  if (a.pos.size() == 1) return Value::string(pystr::percent_format(want_str(v, "format"), a.pos[0]));
  return Value::string(pystr::percent_format(want_str(v, "format"), Value::list(a.pos, true)));
}
Value f_escape(const Value& v, Args&) {
  std::string out;
  for (char c : v.str()) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&#34;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return Value::string(std::move(out));
}

// select / reject / selectattr / rejectattr share this: keep items where test(item) == keep.
Value select_impl(const Value& v, Args& a, bool with_attr, bool keep) {
  size_t off = with_attr ? 1 : 0;
  if (with_attr && a.pos.empty()) throw EvalError("selectattr/rejectattr need an attribute");
  std::string test = a.pos.size() > off ? want_str(a.pos[off], "select test") : "";
  if (!test.empty() && !has_test(test)) throw EvalError("no test named '" + test + "'");
  Args targs;
  for (size_t i = off + 1; i < a.pos.size(); ++i) targs.pos.push_back(a.pos[i]);
  std::vector<Value> out;
  for (const auto& item : iterate(v)) {
    Value x = with_attr ? get_path(item, a.pos[0]) : item;
    bool r = test.empty() ? x.truthy() : apply_test(test, x, targs);
    if (r == keep) out.push_back(item);
  }
  return Value::list(std::move(out));
}
Value f_select(const Value& v, Args& a) { return select_impl(v, a, false, true); }
Value f_reject(const Value& v, Args& a) { return select_impl(v, a, false, false); }
Value f_selectattr(const Value& v, Args& a) { return select_impl(v, a, true, true); }
Value f_rejectattr(const Value& v, Args& a) { return select_impl(v, a, true, false); }

Value f_map(const Value& v, Args& a) {
  std::vector<Value> out;
  if (a.pos.empty()) {
    const Value* attr = a.get(99, "attribute");
    if (!attr) throw EvalError("map() needs a filter name or attribute=");
    const Value* d = a.get(99, "default");
    for (const auto& item : iterate(v)) {
      Value x = get_path(item, *attr);
      out.push_back(x.is_undefined() && d ? *d : x);
    }
    return Value::list(std::move(out));
  }
  std::string filter = want_str(a.pos[0], "map");
  if (!has_filter(filter)) throw EvalError("no filter named '" + filter + "'");
  Args fargs;
  fargs.pos.assign(a.pos.begin() + 1, a.pos.end());
  fargs.kw = a.kw;
  for (const auto& item : iterate(v)) {
    Args copy = fargs;
    out.push_back(apply_filter(filter, item, copy));
  }
  return Value::list(std::move(out));
}
Value f_unique(const Value& v, Args& a) {
  a.check("unique", 2, {"case_sensitive", "attribute"});
  const Value* cs = a.get(0, "case_sensitive");
  const Value* attr = a.get(1, "attribute");
  bool case_sensitive = cs && cs->truthy();
  std::vector<Value> out, seen;
  for (const auto& item : iterate(v)) {
    Value key = case_key(attr && !attr->is_none() ? get_path(item, *attr) : item, case_sensitive);
    if (std::find(seen.begin(), seen.end(), key) != seen.end()) continue;
    seen.push_back(key);
    out.push_back(item);
  }
  return Value::list(std::move(out));
}
Value f_sort(const Value& v, Args& a) {
  a.check("sort", 3, {"reverse", "case_sensitive", "attribute"});
  const Value* r = a.get(0, "reverse");
  const Value* cs = a.get(1, "case_sensitive");
  const Value* attr = a.get(2, "attribute");
  bool reverse = r && r->truthy();
  bool case_sensitive = cs && cs->truthy();
  std::vector<std::pair<Value, Value>> keyed;
  for (const auto& item : iterate(v)) {
    keyed.emplace_back(attr && !attr->is_none() ? get_path(item, *attr) : item, item);
  }
  std::stable_sort(keyed.begin(), keyed.end(), [&](const auto& x, const auto& y) {
    int c = order(x.first, y.first, case_sensitive);
    return reverse ? c > 0 : c < 0;
  });
  std::vector<Value> out;
  for (auto& kv : keyed) out.push_back(std::move(kv.second));
  return Value::list(std::move(out));
}
Value f_dictsort(const Value& v, Args& a) {
  a.check("dictsort", 3, {"case_sensitive", "by", "reverse"});
  if (!v.is_dict()) throw EvalError("dictsort needs a mapping");
  const Value* cs = a.get(0, "case_sensitive");
  const Value* by = a.get(1, "by");
  const Value* r = a.get(2, "reverse");
  bool case_sensitive = cs && cs->truthy();
  bool by_value = by && by->is_string() && by->as_string() == "value";
  bool reverse = r && r->truthy();
  std::vector<std::pair<Value, Value>> items = v.as_dict().items;
  std::stable_sort(items.begin(), items.end(), [&](const auto& x, const auto& y) {
    int c = by_value ? order(x.second, y.second, case_sensitive) : order(x.first, y.first, case_sensitive);
    return reverse ? c > 0 : c < 0;
  });
  std::vector<Value> out;
  for (auto& [k, e] : items) out.push_back(Value::list({k, e}, true));
  return Value::list(std::move(out));
}
Value minmax(const Value& v, Args& a, bool want_max) {
  a.check(want_max ? "max" : "min", 2, {"case_sensitive", "attribute"});
  const Value* cs = a.get(0, "case_sensitive");
  const Value* attr = a.get(1, "attribute");
  bool case_sensitive = cs && cs->truthy();
  Value best, best_key;
  bool any = false;
  for (const auto& item : iterate(v)) {
    Value key = attr && !attr->is_none() ? get_path(item, *attr) : item;
    if (!any || (want_max ? order(key, best_key, case_sensitive) > 0 : order(key, best_key, case_sensitive) < 0)) {
      best = item;
      best_key = key;
      any = true;
    }
  }
  if (!any) return Value::undefined("No aggregated item, sequence was empty.");
  return best;
}
Value f_max(const Value& v, Args& a) { return minmax(v, a, true); }
Value f_min(const Value& v, Args& a) { return minmax(v, a, false); }
Value f_sum(const Value& v, Args& a) {
  a.check("sum", 2, {"attribute", "start"});
  const Value* attr = a.get(0, "attribute");
  const Value* start = a.get(1, "start");
  Value total = start ? *start : Value::integer(0);
  for (const auto& item : iterate(v)) {
    total = binary_op("+", total, attr && !attr->is_none() ? get_path(item, *attr) : item);
  }
  return total;
}
Value f_wordcount(const Value& v, Args&) {
  return Value::integer(static_cast<int64_t>(pystr::split(v.str(), std::nullopt, -1).size()));
}

const std::unordered_map<std::string_view, FilterFn>& filters() {
  static const std::unordered_map<std::string_view, FilterFn> table = {
      {"abs", f_abs}, {"attr", f_attr}, {"capitalize", f_capitalize}, {"count", f_length},
      {"d", f_default}, {"default", f_default}, {"dictsort", f_dictsort}, {"e", f_escape},
      {"escape", f_escape}, {"first", f_first}, {"float", f_float}, {"format", f_format},
      {"indent", f_indent}, {"int", f_int}, {"items", f_items}, {"join", f_join},
      {"last", f_last}, {"length", f_length}, {"list", f_list}, {"lower", f_lower},
      {"map", f_map}, {"max", f_max}, {"min", f_min}, {"reject", f_reject},
      {"rejectattr", f_rejectattr}, {"replace", f_replace}, {"reverse", f_reverse},
      {"round", f_round}, {"safe", f_safe}, {"select", f_select}, {"selectattr", f_selectattr},
      {"sort", f_sort}, {"string", f_string}, {"sum", f_sum}, {"title", f_title},
      {"tojson", f_tojson}, {"trim", f_trim}, {"unique", f_unique}, {"upper", f_upper},
      {"wordcount", f_wordcount},
  };
  return table;
}

// --- tests ---

const Value& arg0(Args& a, std::string_view test) {
  if (a.pos.empty()) throw EvalError(fmt::format("test '{}' needs an argument", test));
  return a.pos[0];
}

bool t_defined(const Value& v, Args&) { return !v.is_undefined(); }
bool t_undefined(const Value& v, Args&) { return v.is_undefined(); }
bool t_none(const Value& v, Args&) { return v.is_none(); }
bool t_boolean(const Value& v, Args&) { return v.is_bool(); }
bool t_true(const Value& v, Args&) { return v.is_bool() && v.as_bool(); }
bool t_false(const Value& v, Args&) { return v.is_bool() && !v.as_bool(); }
bool t_integer(const Value& v, Args&) { return v.is_int(); }
bool t_float(const Value& v, Args&) { return v.is_float(); }
bool t_number(const Value& v, Args&) { return v.is_number(); }
bool t_string(const Value& v, Args&) { return v.is_string(); }
bool t_mapping(const Value& v, Args&) { return v.is_dict(); }
bool t_iterable(const Value& v, Args&) {
  return v.is_undefined() || v.is_string() || v.is_list() || v.is_dict();
}
bool t_sequence(const Value& v, Args&) {
  return v.is_undefined() || v.is_string() || v.is_list() || v.is_dict();
}
bool t_callable(const Value& v, Args&) { return v.is_callable(); }
bool t_eq(const Value& v, Args& a) { return v == arg0(a, "eq"); }
bool t_ne(const Value& v, Args& a) { return !(v == arg0(a, "ne")); }
bool t_lt(const Value& v, Args& a) { return compare("<", v, arg0(a, "lt")); }
bool t_le(const Value& v, Args& a) { return compare("<=", v, arg0(a, "le")); }
bool t_gt(const Value& v, Args& a) { return compare(">", v, arg0(a, "gt")); }
bool t_ge(const Value& v, Args& a) { return compare(">=", v, arg0(a, "ge")); }
bool t_in(const Value& v, Args& a) { return compare("in", v, arg0(a, "in")); }
bool t_sameas(const Value& v, Args& a) {
  const Value& o = arg0(a, "sameas");
  if (v.is_none() || v.is_bool() || v.is_undefined()) return v.kind() == o.kind() && v == o;
  return v.kind() == o.kind() && (v.is_dict() || v.is_list() || v.is_namespace() || v.is_callable()) && v == o;
}
int64_t want_integral(const Value& v, std::string_view test) {
  if (!v.is_integral()) throw EvalError(fmt::format("test '{}' needs an integer, got {}", test, v.type_name()));
  return v.as_int();
}
bool t_odd(const Value& v, Args&) { return py_mod(want_integral(v, "odd"), 2) == 1; }
bool t_even(const Value& v, Args&) { return py_mod(want_integral(v, "even"), 2) == 0; }
bool t_divisibleby(const Value& v, Args& a) {
  return py_mod(want_integral(v, "divisibleby"), want_integral(arg0(a, "divisibleby"), "divisibleby")) == 0;
}
bool t_lower(const Value& v, Args&) { return pystr::is_lower(v.str()); }
bool t_upper(const Value& v, Args&) { return pystr::is_upper(v.str()); }
bool t_escaped(const Value&, Args&) { return false; }

const std::unordered_map<std::string_view, TestFn>& tests() {
  static const std::unordered_map<std::string_view, TestFn> table = {
      {"defined", t_defined}, {"undefined", t_undefined}, {"none", t_none},
      {"boolean", t_boolean}, {"true", t_true}, {"false", t_false}, {"integer", t_integer},
      {"float", t_float}, {"number", t_number}, {"string", t_string}, {"mapping", t_mapping},
      {"iterable", t_iterable}, {"sequence", t_sequence}, {"callable", t_callable},
      {"eq", t_eq}, {"equalto", t_eq}, {"==", t_eq}, {"ne", t_ne}, {"!=", t_ne},
      {"lt", t_lt}, {"lessthan", t_lt}, {"<", t_lt}, {"le", t_le}, {"<=", t_le},
      {"gt", t_gt}, {"greaterthan", t_gt}, {">", t_gt}, {"ge", t_ge}, {">=", t_ge},
      {"in", t_in}, {"sameas", t_sameas}, {"odd", t_odd}, {"even", t_even},
      {"divisibleby", t_divisibleby}, {"lower", t_lower}, {"upper", t_upper},
      {"escaped", t_escaped},
  };
  return table;
}

// --- globals ---

Value g_range(Args& a) {
  a.check("range", 3, {});
  if (a.pos.empty()) throw EvalError("range expected at least 1 argument, got 0");
  int64_t start = 0, stop = 0, step = 1;
  if (a.pos.size() == 1) {
    stop = want_int(&a.pos[0], 0, "range");
  } else {
    start = want_int(&a.pos[0], 0, "range");
    stop = want_int(&a.pos[1], 0, "range");
    if (a.pos.size() == 3) step = want_int(&a.pos[2], 1, "range");
  }
  if (step == 0) throw EvalError("range() arg 3 must not be zero");
  std::vector<Value> out;
  for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
    if (static_cast<int64_t>(out.size()) >= kMaxRange) throw EvalError("range too large");
    out.push_back(Value::integer(i));
  }
  return Value::list(std::move(out));
}

DictObj kwargs_dict(Args& a, std::string_view fn) {
  DictObj d;
  if (a.pos.size() > 1) throw EvalError(fmt::format("{} expected at most 1 positional argument", fn));
  if (!a.pos.empty()) {
    const Value& src = a.pos[0];
    if (src.is_dict()) {
      d = src.as_dict();
    } else {
      for (const auto& item : iterate(src)) {
        if (!item.is_list() || item.as_list().items.size() != 2) {
          throw EvalError(fmt::format("{}: sequence elements must be pairs", fn));
        }
        d.set(item.as_list().items[0], item.as_list().items[1]);
      }
    }
  }
  for (auto& [k, v] : a.kw) d.set(Value::string(k), v);
  return d;
}

Value g_dict(Args& a) { return Value::dict(kwargs_dict(a, "dict")); }
Value g_namespace(Args& a) {
  DictObj d = kwargs_dict(a, "namespace");
  for (const auto& [k, v] : d.items) {
    if (k.is_string() && !k.as_string().empty() && k.as_string()[0] == '_') {
      throw EvalError("Chat templates cannot store underscore-prefixed attributes on a namespace");
    }
  }
  return Value::ns(std::move(d));
}
Value g_raise_exception(Args& a) {
  // The renderer prefixes "<name>:<line>: " like any other template error.
  throw EvalError(a.pos.empty() ? std::string("raise_exception called") : a.pos[0].str());
}
Value g_strftime_now(Args& a) {
  if (a.pos.size() != 1) throw EvalError("strftime_now() takes exactly one argument");
  const std::string& f = want_str(a.pos[0], "strftime_now");
  std::time_t now = std::time(nullptr);
  std::tm tm{};
  localtime_r(&now, &tm);
  char buf[512];
  size_t n = std::strftime(buf, sizeof(buf), f.c_str(), &tm);
  return Value::string(std::string(buf, n));
}

}  // namespace

bool has_filter(std::string_view name) { return filters().count(name) != 0; }
bool has_test(std::string_view name) { return tests().count(name) != 0; }

Value apply_filter(std::string_view name, const Value& input, Args& args) {
  auto it = filters().find(name);
  if (it == filters().end()) throw EvalError("unknown filter '" + std::string(name) + "'");
  return it->second(input, args);
}

bool apply_test(std::string_view name, const Value& input, Args& args) {
  auto it = tests().find(name);
  if (it == tests().end()) throw EvalError("unknown test '" + std::string(name) + "'");
  return it->second(input, args);
}

Value get_attr(const Value& obj, const std::string& name) {
  switch (obj.kind()) {
    case Value::Kind::Undefined:
      undefined_error(obj);
    case Value::Kind::Dict: {
      Value m = dict_method(obj, name);
      if (!m.is_undefined()) return m;
      if (const Value* v = obj.as_dict().find(std::string_view(name))) return *v;
      return Value::undefined("'dict object' has no attribute '" + name + "'");
    }
    case Value::Kind::String:
      return string_method(obj.as_string(), name);
    case Value::Kind::List:
      return list_method(obj, name);
    case Value::Kind::Namespace:
      if (const Value* v = obj.as_namespace().attrs.find(std::string_view(name))) return *v;
      return Value::undefined("'Namespace object' has no attribute '" + name + "'");
    default:
      return Value::undefined(type_desc(obj) + " has no attribute '" + name + "'");
  }
}

Value get_item(const Value& obj, const Value& key) {
  switch (obj.kind()) {
    case Value::Kind::Undefined:
      undefined_error(obj);
    case Value::Kind::Dict:
      if (const Value* v = obj.as_dict().find(key)) return *v;
      if (key.is_string()) {
        Value m = dict_method(obj, key.as_string());
        if (!m.is_undefined()) return m;
      }
      return Value::undefined("'dict object' has no attribute " + key.repr());
    case Value::Kind::List:
    case Value::Kind::String: {
      if (!key.is_integral()) {
        if (key.is_string()) return get_attr(obj, key.as_string());
        return Value::undefined(type_desc(obj) + " has no element " + key.repr());
      }
      int64_t n = length(obj);
      int64_t i = key.as_int();
      if (i < 0) i += n;
      if (i < 0 || i >= n) return Value::undefined(type_desc(obj) + " has no element " + key.repr());
      if (obj.is_list()) return obj.as_list().items[static_cast<size_t>(i)];
      return Value::string(std::string(utf8::split_chars(obj.as_string())[static_cast<size_t>(i)]));
    }
    case Value::Kind::Namespace:
      if (key.is_string()) return get_attr(obj, key.as_string());
      [[fallthrough]];
    default:
      return Value::undefined(type_desc(obj) + " has no element " + key.repr());
  }
}

Value slice(const Value& obj, const Value& start_v, const Value& stop_v, const Value& step_v) {
  if (obj.is_undefined()) undefined_error(obj);
  if (!obj.is_list() && !obj.is_string()) {
    return Value::undefined(type_desc(obj) + " is not subscriptable");
  }
  auto idx = [](const Value& v, std::string_view what) -> std::optional<int64_t> {
    if (v.is_undefined() || v.is_none()) return std::nullopt;
    if (!v.is_integral()) throw EvalError(fmt::format("slice {} must be an integer", what));
    return v.as_int();
  };
  int64_t n = length(obj);
  int64_t step = idx(step_v, "step").value_or(1);
  if (step == 0) throw EvalError("slice step cannot be zero");
  int64_t lower = step < 0 ? -1 : 0, upper = step < 0 ? n - 1 : n;
  auto clamp = [&](std::optional<int64_t> v, int64_t fallback) {
    if (!v) return fallback;
    int64_t x = *v;
    if (x < 0) {
      x += n;
      if (x < lower) x = lower;
    } else if (x > upper) {
      x = upper;
    }
    return x;
  };
  int64_t start = clamp(idx(start_v, "start"), step < 0 ? upper : lower);
  int64_t stop = clamp(idx(stop_v, "stop"), step < 0 ? lower : upper);
  std::vector<size_t> picks;
  for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) picks.push_back(static_cast<size_t>(i));
  if (obj.is_string()) {
    auto chars = utf8::split_chars(obj.as_string());
    std::string out;
    for (size_t i : picks) out += chars[i];
    return Value::string(std::move(out));
  }
  std::vector<Value> out;
  for (size_t i : picks) out.push_back(obj.as_list().items[i]);
  return Value::list(std::move(out), obj.as_list().tuple);
}

Value global(const std::string& name) {
  static const std::unordered_map<std::string, Value> table = {
      {"range", Value::callable("range", g_range)},
      {"dict", Value::callable("dict", g_dict)},
      {"namespace", Value::callable("namespace", g_namespace)},
      {"raise_exception", Value::callable("raise_exception", g_raise_exception)},
      {"strftime_now", Value::callable("strftime_now", g_strftime_now)},
  };
  auto it = table.find(name);
  if (it == table.end()) return Value::undefined("'" + name + "' is undefined");
  return it->second;
}

Value binary_op(const std::string& op, const Value& a, const Value& b) {
  if (a.is_undefined()) undefined_error(a);
  if (b.is_undefined()) undefined_error(b);
  char c = op[0];
  bool ints = a.is_integral() && b.is_integral();
  bool nums = a.is_number() && b.is_number();
  if (op == "+") {
    if (ints) {
      return Value::integer(checked(add_ovf, a.as_int(), b.as_int()));
    }
    if (nums) return Value::real(a.as_double() + b.as_double());
    if (a.is_string() && b.is_string()) {
      if (a.as_string().size() + b.as_string().size() > kMaxBuilt) throw EvalError("string too large");
      return Value::string(a.as_string() + b.as_string());
    }
    if (a.is_list() && b.is_list() && a.as_list().tuple == b.as_list().tuple) {
      std::vector<Value> items = a.as_list().items;
      items.insert(items.end(), b.as_list().items.begin(), b.as_list().items.end());
      return Value::list(std::move(items), a.as_list().tuple);
    }
  } else if (op == "-") {
    if (ints) {
      return Value::integer(checked(sub_ovf, a.as_int(), b.as_int()));
    }
    if (nums) return Value::real(a.as_double() - b.as_double());
  } else if (op == "*") {
    if (ints) {
      return Value::integer(checked(mul_ovf, a.as_int(), b.as_int()));
    }
    if (nums) return Value::real(a.as_double() * b.as_double());
    if ((a.is_string() || a.is_list()) && b.is_integral()) return repeat(a, b.as_int());
    if ((b.is_string() || b.is_list()) && a.is_integral()) return repeat(b, a.as_int());
  } else if (op == "/") {
    if (nums) {
      if (b.as_double() == 0) throw EvalError("division by zero");
      return Value::real(a.as_double() / b.as_double());
    }
  } else if (op == "//") {
    if (ints) return Value::integer(floor_div(a.as_int(), b.as_int()));
    if (nums) {
      if (b.as_double() == 0) throw EvalError("float floor division by zero");
      return Value::real(std::floor(a.as_double() / b.as_double()));
    }
  } else if (c == '%') {
    if (ints) return Value::integer(py_mod(a.as_int(), b.as_int()));
    if (nums) return Value::real(py_fmod(a.as_double(), b.as_double()));
    if (a.is_string()) return Value::string(pystr::percent_format(a.as_string(), b));
  } else if (op == "**") {
    if (ints && b.as_int() >= 0) {
      int64_t base = a.as_int(), e = b.as_int(), r = 1;
      while (e > 0) {
        if (e & 1) r = checked(mul_ovf, r, base);
        e >>= 1;
        if (e > 0) base = checked(mul_ovf, base, base);
      }
      return Value::integer(r);
    }
    if (nums) {
      if (a.as_double() == 0 && b.as_double() < 0) throw EvalError("0.0 cannot be raised to a negative power");
      return Value::real(std::pow(a.as_double(), b.as_double()));
    }
  }
  throw EvalError(fmt::format("unsupported operand type(s) for {}: '{}' and '{}'", op,
                              a.type_name(), b.type_name()));
}

bool compare(const std::string& op, const Value& a, const Value& b) {
  if (op == "==") return a == b;
  if (op == "!=") return !(a == b);
  if (op == "in" || op == "notin") {
    bool found = false;
    if (b.is_string()) {
      if (!a.is_string()) {
        throw EvalError("'in <string>' requires string as left operand, not " + a.type_name());
      }
      found = b.as_string().find(a.as_string()) != std::string::npos;
    } else if (b.is_list()) {
      for (const auto& x : b.as_list().items) found = found || x == a;
    } else if (b.is_dict()) {
      found = b.as_dict().find(a) != nullptr;
    } else if (!b.is_undefined()) {
      throw EvalError("argument of type '" + b.type_name() + "' is not iterable");
    }
    return op == "in" ? found : !found;
  }
  int c = order(a, b);
  if (op == "<") return c < 0;
  if (op == "<=") return c <= 0;
  if (op == ">") return c > 0;
  return c >= 0;
}

std::vector<Value> iterate(const Value& value) {
  switch (value.kind()) {
    case Value::Kind::Undefined:
      return {};
    case Value::Kind::List:
      return value.as_list().items;
    case Value::Kind::Dict: {
      std::vector<Value> keys;
      for (const auto& kv : value.as_dict().items) keys.push_back(kv.first);
      return keys;
    }
    case Value::Kind::String: {
      std::vector<Value> out;
      for (auto ch : utf8::split_chars(value.as_string())) out.push_back(Value::string(std::string(ch)));
      return out;
    }
    default:
      throw EvalError("'" + value.type_name() + "' object is not iterable");
  }
}

int64_t length(const Value& value) {
  switch (value.kind()) {
    case Value::Kind::Undefined:
      return 0;
    case Value::Kind::String:
      return static_cast<int64_t>(utf8::length(value.as_string()));
    case Value::Kind::List:
      return static_cast<int64_t>(value.as_list().items.size());
    case Value::Kind::Dict:
      return static_cast<int64_t>(value.as_dict().items.size());
    default:
      throw EvalError("object of type '" + value.type_name() + "' has no len()");
  }
}

}  // namespace anvil::jinja

// Values seen by a Jinja template: Python-like dynamic values with Python's printing rules.
//
// A Value is cheap to copy: strings are held by value, lists, dicts and callables by
// shared_ptr to immutable objects (templates run in jinja2's *immutable* sandbox, so no
// template can mutate a list or dict). The one mutable object is a namespace(), which is
// shared by reference exactly like in Python.
//
// Printing follows Python: str(True) == "True", str(None) == "None", floats print with
// repr()'s shortest round-trip digits ("2.0", "1e-05"), lists and dicts print as repr().
// Not thread-safe across renders unless the Value is never mutated (only namespaces are).
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

namespace anvil::jinja {

class Value;

// A runtime type error raised by a builtin; the renderer adds "name:line: " to it and
// rethrows it as anvil::Error.
class EvalError : public std::runtime_error {
 public:
  explicit EvalError(const std::string& message) : std::runtime_error(message) {}
};

struct ListObj {
  std::vector<Value> items;
  bool tuple = false;  // prints as (a, b) instead of [a, b]
};

// A dict preserving insertion order. Keys are Values (almost always strings).
struct DictObj {
  std::vector<std::pair<Value, Value>> items;
  const Value* find(const Value& key) const;
  const Value* find(std::string_view key) const;
  void set(Value key, Value value);  // replaces an existing key in place
};

// Call arguments: positional then keyword.
struct Args {
  std::vector<Value> pos;
  std::vector<std::pair<std::string, Value>> kw;
  // The argument at position `index` or named `name`, or nullptr when absent.
  const Value* get(size_t index, std::string_view name) const;
  // Fails when there are more positional arguments than `max_pos`, or an unknown keyword.
  void check(std::string_view fn, size_t max_pos, std::initializer_list<std::string_view> names) const;
};

struct CallableObj {
  std::string name;
  std::function<Value(Args&)> fn;
};

struct NamespaceObj {
  DictObj attrs;
};

class Value {
 public:
  enum class Kind { Undefined, None, Bool, Int, Float, String, List, Dict, Callable, Namespace };

  Value() = default;  // undefined
  static Value undefined(std::string hint = {});
  static Value none();
  static Value boolean(bool b);
  static Value integer(int64_t i);
  static Value real(double d);
  static Value string(std::string s);
  static Value list(std::vector<Value> items, bool tuple = false);
  static Value dict(DictObj dict);
  static Value callable(std::string name, std::function<Value(Args&)> fn);
  static Value ns(DictObj attrs);

  Kind kind() const { return static_cast<Kind>(data_.index()); }
  bool is_undefined() const { return kind() == Kind::Undefined; }
  bool is_none() const { return kind() == Kind::None; }
  bool is_bool() const { return kind() == Kind::Bool; }
  bool is_int() const { return kind() == Kind::Int; }
  bool is_float() const { return kind() == Kind::Float; }
  bool is_string() const { return kind() == Kind::String; }
  bool is_list() const { return kind() == Kind::List; }
  bool is_dict() const { return kind() == Kind::Dict; }
  bool is_callable() const { return kind() == Kind::Callable; }
  bool is_namespace() const { return kind() == Kind::Namespace; }
  // Python's numbers.Number: int, float and bool.
  bool is_number() const { return is_int() || is_float() || is_bool(); }
  // An int or a bool (Python's bool is an int).
  bool is_integral() const { return is_int() || is_bool(); }

  bool as_bool() const { return std::get<bool>(data_); }
  int64_t as_int() const;    // int or bool
  double as_double() const;  // int, bool or float
  const std::string& as_string() const { return std::get<std::string>(data_); }
  const ListObj& as_list() const { return *std::get<std::shared_ptr<const ListObj>>(data_); }
  const DictObj& as_dict() const { return *std::get<std::shared_ptr<const DictObj>>(data_); }
  const CallableObj& as_callable() const {
    return *std::get<std::shared_ptr<const CallableObj>>(data_);
  }
  NamespaceObj& as_namespace() const { return *std::get<std::shared_ptr<NamespaceObj>>(data_); }
  // The name an undefined value was looked up under, for error messages.
  const std::string& undefined_hint() const { return std::get<Undef>(data_).hint; }

  bool truthy() const;
  std::string str() const;   // Python str(); undefined prints as ""
  std::string repr() const;  // Python repr()
  std::string type_name() const;  // Python type name: 'str', 'int', 'dict', ...

  // Python ==, with 1 == 1.0 == True.
  friend bool operator==(const Value& a, const Value& b);

  // JSON conversion. Objects keep their key order when given ordered_json.
  static Value from_json(const nlohmann::json& j);
  static Value from_json(const nlohmann::ordered_json& j);

 private:
  struct Undef {
    std::string hint;
  };
  std::variant<Undef, std::nullptr_t, bool, int64_t, double, std::string,
               std::shared_ptr<const ListObj>, std::shared_ptr<const DictObj>,
               std::shared_ptr<const CallableObj>, std::shared_ptr<NamespaceObj>>
      data_;
};

// Python's repr() of a float ("2.0", "0.1", "1e-05", "1e+16", "inf", "nan").
std::string float_repr(double d);

// json.dumps(value, ensure_ascii, indent, separators, sort_keys) with Python's output.
// indent < 0 means None. Throws EvalError for values JSON cannot hold.
struct JsonOptions {
  int indent = -1;
  std::string item_sep = ", ";
  std::string key_sep = ": ";
  bool sort_keys = false;
  bool ensure_ascii = false;
};
std::string to_json_text(const Value& value, const JsonOptions& options);

// UTF-8 helpers: strings are indexed, sliced and counted by code point like Python's str.
namespace utf8 {
std::vector<std::string_view> split_chars(std::string_view s);  // one view per code point
size_t length(std::string_view s);
}  // namespace utf8

}  // namespace anvil::jinja

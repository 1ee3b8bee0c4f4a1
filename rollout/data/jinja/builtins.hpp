// Jinja's builtin filters, tests, globals and the Python methods templates call on values,
// restricted to what jinja2's ImmutableSandboxedEnvironment allows (nothing mutates a
// list or dict). All of them throw EvalError on bad input; the renderer adds the location.
#pragma once

#include "rollout/data/jinja/value.hpp"

#include <string_view>

namespace anvil::jinja {

bool has_filter(std::string_view name);
bool has_test(std::string_view name);

Value apply_filter(std::string_view name, const Value& input, Args& args);
bool apply_test(std::string_view name, const Value& input, Args& args);

// obj.name with jinja's sandboxed getattr: methods of str/dict/list, dict keys, namespace
// attributes; a missing attribute is undefined. Throws EvalError on an undefined obj.
Value get_attr(const Value& obj, const std::string& name);
// obj[key]: index, key or attribute; missing is undefined. Throws on an undefined obj.
Value get_item(const Value& obj, const Value& key);
// obj[start:stop:step] with Python's slice rules (absent parts are undefined values).
Value slice(const Value& obj, const Value& start, const Value& stop, const Value& step);

// The global functions: range, dict, namespace, raise_exception, strftime_now.
// Returns an undefined value for other names.
Value global(const std::string& name);

// Python operators. op in {+ - * / // % **}.
Value binary_op(const std::string& op, const Value& a, const Value& b);
// op in {== != < <= > >= in notin}.
bool compare(const std::string& op, const Value& a, const Value& b);
// The items `for x in value` visits (keys for dicts, code points for strings).
std::vector<Value> iterate(const Value& value);
// Python len().
int64_t length(const Value& value);

}  // namespace anvil::jinja

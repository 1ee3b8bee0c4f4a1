// The tree-walking renderer. One Renderer per render() call holds all mutable state
// (scopes, output), so a parsed Program is shared read-only between threads.
#include "backends/common/error.hpp"
#include "rollout/data/jinja/ast.hpp"
#include "rollout/data/jinja/builtins.hpp"
#include "rollout/data/jinja/jinja.hpp"

#include <unordered_map>

namespace anvil::jinja {

namespace {

constexpr size_t kMaxOutput = size_t{64} << 20;  // bytes of any rendered text
constexpr int kMaxMacroDepth = 64;
constexpr int64_t kMaxIterations = 50'000'000;   // loop iterations per render

const char* kBodyVar = "\x01body";  // the text a {% filter %} / {% set | f %} block produced

class Renderer {
 public:
  Renderer(const Program& program, Value context)
      : program_(program), context_(std::move(context)) {
    frames_.emplace_back();
  }

  std::string run() {
    std::string out;
    exec(program_.body, out);
    return out;
  }

 private:
  enum class Flow { Normal, Break, Continue };
  using Frame = std::unordered_map<std::string, Value>;

  [[noreturn]] void error(int line, const std::string& what) const {
    fail("{}:{}: {}", program_.name, line, what);
  }

  void emit(std::string& out, std::string_view s, int line) const {
    if (out.size() + s.size() > kMaxOutput) error(line, "rendered output exceeds 64 MiB");
    out.append(s);
  }

  Value lookup(const std::string& name) const {
    for (auto it = frames_.rbegin(); it != frames_.rend(); ++it) {
      auto f = it->find(name);
      if (f != it->end()) return f->second;
    }
    if (const Value* v = context_.as_dict().find(std::string_view(name))) return *v;
    return global(name);
  }

  void assign(const std::string& name, Value v) { frames_.back()[name] = std::move(v); }

  void assign_targets(const std::vector<std::string>& targets, const Value& v, int line) {
    if (targets.size() == 1) {
      assign(targets[0], v);
      return;
    }
    std::vector<Value> items;
    try {
      items = iterate(v);
    } catch (const EvalError&) {
      error(line, "cannot unpack non-iterable " + v.type_name() + " object");
    }
    if (items.size() != targets.size()) {
      error(line, items.size() > targets.size()
                      ? fmt::format("too many values to unpack (expected {})", targets.size())
                      : fmt::format("not enough values to unpack (expected {}, got {})",
                                    targets.size(), items.size()));
    }
    for (size_t i = 0; i < targets.size(); ++i) assign(targets[i], items[i]);
  }

  // --- statements ---

  Flow exec(const Body& body, std::string& out) {
    for (const auto& n : body) {
      Flow f = exec(*n, out);
      if (f != Flow::Normal) return f;
    }
    return Flow::Normal;
  }

  Flow exec(const Node& n, std::string& out) {
    try {
      return exec_node(n, out);
    } catch (const EvalError& e) {
      error(n.line, e.what());
    }
  }

  Flow exec_node(const Node& n, std::string& out) {
    switch (n.kind) {
      case Node::Kind::Text:
        emit(out, n.text, n.line);
        return Flow::Normal;
      case Node::Kind::Output:
        emit(out, eval(*n.expr).str(), n.line);
        return Flow::Normal;
      case Node::Kind::If:
        for (size_t i = 0; i < n.conds.size(); ++i) {
          if (eval(*n.conds[i]).truthy()) return exec(n.bodies[i], out);
        }
        return exec(n.else_body, out);
      case Node::Kind::For:
        return exec_for(n, out);
      case Node::Kind::Set:
        exec_set(n);
        return Flow::Normal;
      case Node::Kind::SetBlock: {
        std::string text;
        exec(n.bodies[0], text);
        assign(n.targets[0], n.expr ? filter_text(*n.expr, std::move(text))
                                    : Value::string(std::move(text)));
        return Flow::Normal;
      }
      case Node::Kind::Macro:
        assign(n.text, make_macro(n));
        return Flow::Normal;
      case Node::Kind::CallBlock:
        emit(out, eval_call(*n.expr, make_caller(n)).str(), n.line);
        return Flow::Normal;
      case Node::Kind::FilterBlock: {
        std::string text;
        exec(n.bodies[0], text);
        emit(out, filter_text(*n.expr, std::move(text)).str(), n.line);
        return Flow::Normal;
      }
      case Node::Kind::With: {
        Frame frame;
        for (size_t i = 0; i < n.targets.size(); ++i) frame[n.targets[i]] = eval(*n.conds[i]);
        frames_.push_back(std::move(frame));
        Flow f = exec(n.bodies[0], out);
        frames_.pop_back();
        return f;
      }
      case Node::Kind::Break:
        return Flow::Break;
      case Node::Kind::Continue:
        return Flow::Continue;
      case Node::Kind::Scope:
        return exec(n.bodies[0], out);
    }
    return Flow::Normal;
  }

  Value filter_text(const Expr& chain, std::string text) {
    frames_.emplace_back();
    frames_.back()[kBodyVar] = Value::string(std::move(text));
    Value v = eval(chain);
    frames_.pop_back();
    return v;
  }

  Flow exec_for(const Node& n, std::string& out) {
    Value iterable = eval(*n.expr);
    std::vector<Value> items = iterate(iterable);
    if (n.cond) {
      std::vector<Value> kept;
      for (auto& item : items) {
        frames_.emplace_back();
        assign_targets(n.targets, item, n.line);
        bool keep = eval(*n.cond).truthy();
        frames_.pop_back();
        if (keep) kept.push_back(std::move(item));
      }
      items = std::move(kept);
    }
    if (items.empty()) return exec(n.else_body, out);
    const int64_t len = static_cast<int64_t>(items.size());
    for (int64_t i = 0; i < len; ++i) {
      if (++iterations_ > kMaxIterations) error(n.line, "too many loop iterations");
      DictObj loop;
      auto set = [&](const char* k, Value v) { loop.items.emplace_back(Value::string(k), std::move(v)); };
      set("index", Value::integer(i + 1));
      set("index0", Value::integer(i));
      set("revindex", Value::integer(len - i));
      set("revindex0", Value::integer(len - i - 1));
      set("first", Value::boolean(i == 0));
      set("last", Value::boolean(i == len - 1));
      set("length", Value::integer(len));
      set("depth", Value::integer(1));
      set("depth0", Value::integer(0));
      if (i > 0) set("previtem", items[static_cast<size_t>(i - 1)]);
      if (i + 1 < len) set("nextitem", items[static_cast<size_t>(i + 1)]);
      set("cycle", Value::callable("cycle", [i](Args& a) -> Value {
            if (a.pos.empty()) throw EvalError("no items for cycling given");
            return a.pos[static_cast<size_t>(i) % a.pos.size()];
          }));
      frames_.emplace_back();
      frames_.back()["loop"] = Value::dict(std::move(loop));
      assign_targets(n.targets, items[static_cast<size_t>(i)], n.line);
      Flow f = exec(n.bodies[0], out);
      frames_.pop_back();
      if (f == Flow::Break) break;
    }
    return Flow::Normal;
  }

  void exec_set(const Node& n) {
    Value v = eval(*n.expr);
    if (n.attr.empty()) {
      assign_targets(n.targets, v, n.line);
      return;
    }
    Value target = lookup(n.targets[0]);
    if (!target.is_namespace()) {
      error(n.line, "cannot assign attribute on non-namespace object '" + n.targets[0] + "'");
    }
    if (n.attr[0] == '_') {
      error(n.line, "Chat templates cannot store underscore-prefixed attributes on a namespace");
    }
    target.as_namespace().attrs.set(Value::string(n.attr), std::move(v));
  }

  // --- macros ---

  Value make_macro(const Node& n) {
    const Node* node = &n;
    return Value::callable(n.text, [this, node](Args& a) -> Value { return call_macro(*node, a); });
  }

  Value make_caller(const Node& n) {
    const Node* node = &n;
    auto scope = std::make_shared<std::vector<Frame>>(frames_);
    return Value::callable("caller", [this, node, scope](Args& a) -> Value {
      // The call body sees the variables of where the call block stands.
      std::vector<Frame> saved = std::move(frames_);
      frames_ = *scope;
      Frame params;
      for (size_t i = 0; i < node->targets.size(); ++i) {
        const Value* v = a.get(i, node->targets[i]);
        params[node->targets[i]] = v ? *v : node->conds[i] ? eval(*node->conds[i]) : Value::undefined();
      }
      frames_.push_back(std::move(params));
      std::string text;
      try {
        exec(node->bodies[0], text);
      } catch (...) {
        frames_ = std::move(saved);
        throw;
      }
      frames_ = std::move(saved);
      return Value::string(std::move(text));
    });
  }

  Value call_macro(const Node& n, Args& a) {
    if (macro_depth_ >= kMaxMacroDepth) error(n.line, "macro recursion deeper than 64");
    if (a.pos.size() > n.targets.size()) {
      throw EvalError(fmt::format("macro '{}' takes not more than {} argument(s)", n.text,
                                  n.targets.size()));
    }
    Frame args;
    for (const auto& [k, v] : a.kw) {
      if (k == "caller") {
        args["caller"] = v;
        continue;
      }
      if (std::find(n.targets.begin(), n.targets.end(), k) == n.targets.end()) {
        throw EvalError(fmt::format("macro '{}' takes no keyword argument '{}'", n.text, k));
      }
    }
    // Macros see the template's top-level variables and their own arguments.
    std::vector<Frame> saved = std::move(frames_);
    frames_.clear();
    frames_.push_back(saved.front());
    frames_.push_back(Frame{});
    ++macro_depth_;
    std::string text;
    try {
      for (auto& [k, v] : args) frames_.back()[k] = v;
      for (size_t i = 0; i < n.targets.size(); ++i) {
        const Value* v = a.get(i, n.targets[i]);
        frames_.back()[n.targets[i]] =
            v ? *v : n.conds[i] ? eval(*n.conds[i]) : Value::undefined("'" + n.targets[i] + "' is undefined");
      }
      exec(n.bodies[0], text);
    } catch (...) {
      --macro_depth_;
      frames_ = std::move(saved);
      throw;
    }
    --macro_depth_;
    // Top-level assignments made inside the macro do not leak; restore the caller's scope.
    frames_ = std::move(saved);
    return Value::string(std::move(text));
  }

  // --- expressions ---

  Value eval(const Expr& e) {
    try {
      return eval_inner(e);
    } catch (const EvalError& err) {
      error(e.line, err.what());
    }
  }

  Args eval_args(const Expr& e, size_t first) {
    Args a;
    for (size_t i = first; i < e.args.size(); ++i) a.pos.push_back(eval(*e.args[i]));
    for (const auto& [k, v] : e.kwargs) a.kw.emplace_back(k, eval(*v));
    return a;
  }

  Value eval_call(const Expr& e, Value caller) {
    Value fn = eval(*e.args[0]);
    Args a = eval_args(e, 1);
    if (!caller.is_undefined()) a.kw.emplace_back("caller", std::move(caller));
    if (fn.is_undefined()) {
      throw EvalError(fn.undefined_hint().empty() ? "call of an undefined value" : fn.undefined_hint());
    }
    if (!fn.is_callable()) throw EvalError("'" + fn.type_name() + "' object is not callable");
    return fn.as_callable().fn(a);
  }

  Value eval_inner(const Expr& e) {
    switch (e.kind) {
      case Expr::Kind::Literal:
        return e.value;
      case Expr::Kind::Name:
        return lookup(e.name);
      case Expr::Kind::List:
      case Expr::Kind::Tuple: {
        std::vector<Value> items;
        for (const auto& x : e.args) items.push_back(eval(*x));
        return Value::list(std::move(items), e.kind == Expr::Kind::Tuple);
      }
      case Expr::Kind::Dict: {
        DictObj d;
        for (size_t i = 0; i + 1 < e.args.size(); i += 2) d.set(eval(*e.args[i]), eval(*e.args[i + 1]));
        return Value::dict(std::move(d));
      }
      case Expr::Kind::Attr:
        return get_attr(eval(*e.args[0]), e.name);
      case Expr::Kind::Index:
        return get_item(eval(*e.args[0]), eval(*e.args[1]));
      case Expr::Kind::Slice: {
        Value obj = eval(*e.args[0]);
        Value parts[3];
        for (int i = 0; i < 3; ++i) {
          if (e.args[static_cast<size_t>(i + 1)]) parts[i] = eval(*e.args[static_cast<size_t>(i + 1)]);
        }
        return slice(obj, parts[0], parts[1], parts[2]);
      }
      case Expr::Kind::Call:
        return eval_call(e, Value());
      case Expr::Kind::Filter: {
        Value input = eval(*e.args[0]);
        Args a = eval_args(e, 1);
        return apply_filter(e.name, input, a);
      }
      case Expr::Kind::Test: {
        Value input = eval(*e.args[0]);
        Args a = eval_args(e, 1);
        return Value::boolean(apply_test(e.name, input, a) != e.negated);
      }
      case Expr::Kind::Unary: {
        Value v = eval(*e.args[0]);
        if (e.name == "not") return Value::boolean(!v.truthy());
        if (v.is_undefined()) throw EvalError(v.undefined_hint());
        if (e.name == "-") {
          if (v.is_float()) return Value::real(-v.as_double());
          if (v.is_integral()) return binary_op("-", Value::integer(0), v);
          throw EvalError("bad operand type for unary -: '" + v.type_name() + "'");
        }
        if (!v.is_number()) throw EvalError("bad operand type for unary +: '" + v.type_name() + "'");
        return v.is_bool() ? Value::integer(v.as_int()) : v;
      }
      case Expr::Kind::Binary: {
        if (e.name == "and") {
          Value a = eval(*e.args[0]);
          return a.truthy() ? eval(*e.args[1]) : a;
        }
        if (e.name == "or") {
          Value a = eval(*e.args[0]);
          return a.truthy() ? a : eval(*e.args[1]);
        }
        Value a = eval(*e.args[0]);
        Value b = eval(*e.args[1]);
        if (e.name == "~") {
          std::string s = a.str();
          s += b.str();
          if (s.size() > kMaxOutput) throw EvalError("string too large");
          return Value::string(std::move(s));
        }
        return binary_op(e.name, a, b);
      }
      case Expr::Kind::Compare: {
        Value left = eval(*e.args[0]);
        for (size_t i = 0; i < e.ops.size(); ++i) {
          Value right = eval(*e.args[i + 1]);
          if (!compare(e.ops[i], left, right)) return Value::boolean(false);
          left = std::move(right);
        }
        return Value::boolean(true);
      }
      case Expr::Kind::Cond:
        if (eval(*e.args[0]).truthy()) return eval(*e.args[1]);
        return e.args[2] ? eval(*e.args[2]) : Value::undefined();
    }
    return Value();
  }

  const Program& program_;
  Value context_;
  std::vector<Frame> frames_;
  int macro_depth_ = 0;
  int64_t iterations_ = 0;
};

template <typename Json>
std::string render_json(const Program& program, const Json& context) {
  if (!context.is_object()) fail("{}: render context must be a JSON object", program.name);
  Value ctx;
  try {
    ctx = Value::from_json(context);
  } catch (const EvalError& e) {
    fail("{}: {}", program.name, e.what());
  }
  return Renderer(program, std::move(ctx)).run();
}

}  // namespace

Template Template::parse(std::string_view source, std::string name) {
  return Template(parse_program(source, std::move(name)));
}

std::string Template::render(const nlohmann::json& context) const {
  return render_json(*program_, context);
}

std::string Template::render(const nlohmann::ordered_json& context) const {
  return render_json(*program_, context);
}

const std::string& Template::name() const { return program_->name; }

}  // namespace anvil::jinja

// The parsed template: an immutable tree of statements and expressions, shared by all
// concurrent renders of one Template.
#pragma once

#include "rollout/data/jinja/value.hpp"

#include <memory>
#include <string>
#include <vector>

namespace anvil::jinja {

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  enum class Kind {
    Literal,   // value
    Name,      // name
    List,      // args = items
    Tuple,     // args = items
    Dict,      // args = key0, value0, key1, value1, ...
    Attr,      // args[0].name
    Index,     // args[0][args[1]]
    Slice,     // args[0][args[1]:args[2]:args[3]], absent parts are nullptr
    Call,      // args[0](args[1..], kwargs)
    Filter,    // args[0] | name(args[1..], kwargs)
    Test,      // args[0] is [not] name(args[1..], kwargs); negated
    Unary,     // name in {"-", "+", "not"}; args[0]
    Binary,    // args[0] name args[1]; name in {+ - * / // % ** ~ and or}
    Compare,   // args[0] ops[0] args[1] ops[1] args[2] ...
    Cond,      // args[1] if args[0] else args[2] (args[2] may be nullptr)
  };
  Kind kind;
  int line = 0;
  Value value;
  std::string name;
  bool negated = false;
  std::vector<ExprPtr> args;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
  std::vector<std::string> ops;
};

struct Node;
using NodePtr = std::unique_ptr<Node>;
using Body = std::vector<NodePtr>;

struct Node {
  enum class Kind {
    Text,         // text
    Output,       // {{ expr }}
    If,           // conds[i] -> bodies[i]; else_body
    For,          // for targets in expr [if cond]: bodies[0]; else_body
    Set,          // set targets = expr; or set target.attr = expr (attr non-empty)
    SetBlock,     // set targets[0] [| filters] %}bodies[0]{% endset
    Macro,        // macro name(params = defaults): bodies[0]
    CallBlock,    // call[(params)] expr: bodies[0] is `caller`
    FilterBlock,  // filter <expr over placeholder>: bodies[0]
    With,         // with targets = conds: bodies[0]
    Break,
    Continue,
    Scope,        // bodies[0] rendered in place (generation blocks)
  };
  Kind kind;
  int line = 0;
  std::string text;
  std::vector<std::string> targets;
  std::string attr;
  ExprPtr expr;       // Output, For iterable, Set value, CallBlock call, FilterBlock filter chain
  ExprPtr cond;       // For filter
  std::vector<ExprPtr> conds;  // If conditions; Macro/CallBlock parameter defaults; With values
  std::vector<Body> bodies;
  Body else_body;
};

struct Program {
  std::string name;
  Body body;
};

// Parses tokens into a Program; throws anvil::Error "<name>:<line>: ..." on bad syntax,
// unknown tags, filters or tests.
std::shared_ptr<const Program> parse_program(std::string_view source, std::string name);

}  // namespace anvil::jinja

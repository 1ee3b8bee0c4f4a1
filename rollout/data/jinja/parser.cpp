// Recursive-descent parser following jinja2's grammar and operator precedence:
//   cond: or ["if" or ["else" cond]]
//   or: and ("or" and)*          and: not ("and" not)*        not: "not" not | compare
//   compare: math1 (("==" | "!=" | "<" | ... | "in" | "not in") math1)*
//   math1: concat (("+" | "-") concat)*     concat: math2 ("~" math2)*
//   math2: pow (("*" | "/" | "//" | "%") pow)*   pow: unary ("**" unary)*
//   unary: ("-" | "+") unary | primary postfix*, then filters / tests
#include "backends/common/error.hpp"
#include "rollout/data/jinja/ast.hpp"
#include "rollout/data/jinja/builtins.hpp"
#include "rollout/data/jinja/lexer.hpp"

#include <charconv>
#include <initializer_list>

namespace anvil::jinja {

namespace {

constexpr int kMaxDepth = 200;  // nesting of expressions and blocks; deeper input is rejected

using T = Token::Type;

class Parser {
 public:
  Parser(std::vector<Token> tokens, const std::string& name)
      : toks_(std::move(tokens)), name_(name) {}

  Body parse_template() {
    std::string end;
    Body body = parse_body({}, end);
    return body;
  }

 private:
  struct DepthGuard {
    explicit DepthGuard(Parser& p) : p(p) {
      if (++p.depth_ > kMaxDepth) p.error("template nested too deeply");
    }
    ~DepthGuard() { --p.depth_; }
    Parser& p;
  };

  [[noreturn]] void error(const std::string& what) const {
    fail("{}:{}: {}", name_, cur().line, what);
  }
  const Token& cur() const { return toks_[pos_]; }
  const Token& peek(size_t k = 1) const {
    return toks_[std::min(pos_ + k, toks_.size() - 1)];
  }
  void next() {
    if (pos_ + 1 < toks_.size()) ++pos_;
  }
  bool is_op(std::string_view op) const { return cur().type == T::Op && cur().text == op; }
  bool is_name(std::string_view n) const { return cur().type == T::Name && cur().text == n; }
  bool accept_op(std::string_view op) {
    if (!is_op(op)) return false;
    next();
    return true;
  }
  bool accept_name(std::string_view n) {
    if (!is_name(n)) return false;
    next();
    return true;
  }
  std::string describe(const Token& t) const {
    switch (t.type) {
      case T::End: return "end of template";
      case T::BlockEnd: return "end of block '%}'";
      case T::VarEnd: return "end of print '}}'";
      case T::Text: return "template text";
      default: return "'" + t.text + "'";
    }
  }
  void expect_op(std::string_view op) {
    if (!accept_op(op)) error("expected '" + std::string(op) + "', got " + describe(cur()));
  }
  std::string expect_ident() {
    if (cur().type != T::Name) error("expected a name, got " + describe(cur()));
    std::string n = cur().text;
    next();
    return n;
  }
  void expect_block_end(std::string_view tag) {
    if (cur().type != T::BlockEnd) {
      error("expected end of '" + std::string(tag) + "' tag, got " + describe(cur()));
    }
    next();
  }

  ExprPtr make(Expr::Kind kind, int line) {
    auto e = std::make_unique<Expr>();
    e->kind = kind;
    e->line = line;
    return e;
  }

  // --- statements ---

  // Parses until a block tag whose name is in `ends` (consumed, name stored in `end`) or
  // the end of input (only allowed when `ends` is empty).
  Body parse_body(std::initializer_list<std::string_view> ends, std::string& end) {
    DepthGuard guard(*this);
    Body body;
    while (true) {
      const Token& t = cur();
      if (t.type == T::End) {
        if (ends.size() != 0) {
          error("unexpected end of template, expected '" + std::string(*ends.begin()) + "'");
        }
        return body;
      }
      if (t.type == T::Text) {
        auto n = std::make_unique<Node>();
        n->kind = Node::Kind::Text;
        n->line = t.line;
        n->text = t.text;
        body.push_back(std::move(n));
        next();
        continue;
      }
      if (t.type == T::VarBegin) {
        next();
        auto n = std::make_unique<Node>();
        n->kind = Node::Kind::Output;
        n->line = t.line;
        n->expr = parse_tuple(true);
        if (cur().type != T::VarEnd) error("expected '}}', got " + describe(cur()));
        next();
        body.push_back(std::move(n));
        continue;
      }
      if (t.type != T::BlockBegin) error("unexpected " + describe(t));
      next();
      if (cur().type != T::Name) error("expected a tag name, got " + describe(cur()));
      std::string tag = cur().text;
      for (auto e : ends) {
        if (tag == e) {
          next();
          end = tag;
          return body;
        }
      }
      body.push_back(parse_statement(tag));
    }
  }

  NodePtr parse_statement(const std::string& tag) {
    int line = cur().line;
    next();
    auto n = std::make_unique<Node>();
    n->line = line;
    std::string end;
    if (tag == "if") {
      n->kind = Node::Kind::If;
      n->conds.push_back(parse_tuple(true));
      expect_block_end("if");
      while (true) {
        n->bodies.push_back(parse_body({"elif", "else", "endif"}, end));
        if (end == "elif") {
          n->conds.push_back(parse_tuple(true));
          expect_block_end("elif");
        } else if (end == "else") {
          expect_block_end("else");
          n->else_body = parse_body({"endif"}, end);
          expect_block_end("endif");
          break;
        } else {
          expect_block_end("endif");
          break;
        }
      }
    } else if (tag == "for") {
      n->kind = Node::Kind::For;
      n->targets = parse_targets();
      if (!accept_name("in")) error("expected 'in' in for loop, got " + describe(cur()));
      n->expr = parse_tuple(false);
      if (accept_name("if")) n->cond = parse_tuple(true);
      if (is_name("recursive")) error("recursive for loops are not supported");
      expect_block_end("for");
      ++loop_depth_;
      n->bodies.push_back(parse_body({"else", "endfor"}, end));
      --loop_depth_;
      expect_block_end(end);
      if (end == "else") {
        n->else_body = parse_body({"endfor"}, end);
        expect_block_end("endfor");
      }
    } else if (tag == "set") {
      std::string first = expect_ident();
      if (accept_op(".")) {
        n->kind = Node::Kind::Set;
        n->targets = {first};
        n->attr = expect_ident();
        expect_op("=");
        n->expr = parse_tuple(true);
        expect_block_end("set");
      } else {
        n->targets = {first};
        while (accept_op(",")) n->targets.push_back(expect_ident());
        if (accept_op("=")) {
          n->kind = Node::Kind::Set;
          n->expr = parse_tuple(true);
          expect_block_end("set");
        } else {
          if (n->targets.size() != 1) error("block set takes a single name");
          n->kind = Node::Kind::SetBlock;
          if (is_op("|")) n->expr = parse_filters(placeholder(line));
          expect_block_end("set");
          n->bodies.push_back(parse_body({"endset"}, end));
          expect_block_end("endset");
        }
      }
    } else if (tag == "macro") {
      n->kind = Node::Kind::Macro;
      n->text = expect_ident();
      parse_params(*n);
      expect_block_end("macro");
      n->bodies.push_back(parse_body({"endmacro"}, end));
      if (cur().type == T::Name) next();  // {% endmacro name %}
      expect_block_end("endmacro");
    } else if (tag == "call") {
      n->kind = Node::Kind::CallBlock;
      if (is_op("(")) parse_params(*n);
      n->expr = parse_expression(true);
      if (n->expr->kind != Expr::Kind::Call) error("call block needs a macro call");
      expect_block_end("call");
      n->bodies.push_back(parse_body({"endcall"}, end));
      expect_block_end("endcall");
    } else if (tag == "filter") {
      n->kind = Node::Kind::FilterBlock;
      n->expr = parse_filter_chain(placeholder(line), true);
      expect_block_end("filter");
      n->bodies.push_back(parse_body({"endfilter"}, end));
      expect_block_end("endfilter");
    } else if (tag == "with") {
      n->kind = Node::Kind::With;
      while (cur().type != T::BlockEnd) {
        if (!n->targets.empty()) expect_op(",");
        n->targets.push_back(expect_ident());
        expect_op("=");
        n->conds.push_back(parse_expression(true));
      }
      expect_block_end("with");
      n->bodies.push_back(parse_body({"endwith"}, end));
      expect_block_end("endwith");
    } else if (tag == "break" || tag == "continue") {
      if (loop_depth_ == 0) {
        pos_ -= 1;
        error("'" + tag + "' outside of a loop");
      }
      n->kind = tag == "break" ? Node::Kind::Break : Node::Kind::Continue;
      expect_block_end(tag);
    } else if (tag == "generation") {
      n->kind = Node::Kind::Scope;
      expect_block_end("generation");
      n->bodies.push_back(parse_body({"endgeneration"}, end));
      expect_block_end("endgeneration");
    } else if (tag == "include" || tag == "extends" || tag == "block" || tag == "import" ||
               tag == "from" || tag == "do" || tag == "autoescape" || tag == "trans") {
      pos_ -= 1;
      error("unsupported tag '" + tag + "'");
    } else {
      pos_ -= 1;
      error("unknown tag '" + tag + "'");
    }
    return n;
  }

  ExprPtr placeholder(int line) {
    auto e = make(Expr::Kind::Name, line);
    e->name = "\x01body";
    return e;
  }

  std::vector<std::string> parse_targets() {
    std::vector<std::string> targets;
    bool paren = accept_op("(");
    targets.push_back(expect_ident());
    while (accept_op(",")) {
      if (paren && is_op(")")) break;
      targets.push_back(expect_ident());
    }
    if (paren) expect_op(")");
    return targets;
  }

  // (a, b=default, ...) into targets / conds (nullptr for no default).
  void parse_params(Node& n) {
    expect_op("(");
    while (!accept_op(")")) {
      if (!n.targets.empty()) expect_op(",");
      if (accept_op(")")) break;
      n.targets.push_back(expect_ident());
      n.conds.push_back(accept_op("=") ? parse_expression(true) : nullptr);
    }
  }

  // --- expressions ---

  // expr ("," expr)* -> a tuple when there is a comma.
  ExprPtr parse_tuple(bool with_cond) {
    int line = cur().line;
    ExprPtr first = parse_expression(with_cond);
    if (!is_op(",")) return first;
    auto t = make(Expr::Kind::Tuple, line);
    t->args.push_back(std::move(first));
    while (accept_op(",")) {
      if (cur().type == T::BlockEnd || cur().type == T::VarEnd || is_name("if") || is_op(")")) {
        break;
      }
      t->args.push_back(parse_expression(with_cond));
    }
    return t;
  }

  ExprPtr parse_expression(bool with_cond) {
    DepthGuard guard(*this);
    if (!with_cond) return parse_or();
    int line = cur().line;
    ExprPtr e = parse_or();
    while (accept_name("if")) {
      auto c = make(Expr::Kind::Cond, line);
      c->args.push_back(parse_or());  // condition
      c->args.push_back(std::move(e));  // value when true
      c->args.push_back(accept_name("else") ? parse_expression(true) : nullptr);
      e = std::move(c);
    }
    return e;
  }

  ExprPtr binary(const char* op, ExprPtr a, ExprPtr b, int line) {
    auto e = make(Expr::Kind::Binary, line);
    e->name = op;
    e->args.push_back(std::move(a));
    e->args.push_back(std::move(b));
    return e;
  }

  ExprPtr parse_or() {
    ExprPtr e = parse_and();
    while (is_name("or")) {
      int line = cur().line;
      next();
      e = binary("or", std::move(e), parse_and(), line);
    }
    return e;
  }

  ExprPtr parse_and() {
    ExprPtr e = parse_not();
    while (is_name("and")) {
      int line = cur().line;
      next();
      e = binary("and", std::move(e), parse_not(), line);
    }
    return e;
  }

  ExprPtr parse_not() {
    DepthGuard guard(*this);
    if (is_name("not")) {
      auto e = make(Expr::Kind::Unary, cur().line);
      next();
      e->name = "not";
      e->args.push_back(parse_not());
      return e;
    }
    return parse_compare();
  }

  ExprPtr parse_compare() {
    int line = cur().line;
    ExprPtr first = parse_math1();
    ExprPtr cmp;
    while (true) {
      std::string op;
      if (cur().type == T::Op && (cur().text == "==" || cur().text == "!=" || cur().text == "<" ||
                                  cur().text == "<=" || cur().text == ">" || cur().text == ">=")) {
        op = cur().text;
        next();
      } else if (is_name("in")) {
        op = "in";
        next();
      } else if (is_name("not") && peek().type == T::Name && peek().text == "in") {
        op = "notin";
        next();
        next();
      } else {
        break;
      }
      if (!cmp) {
        cmp = make(Expr::Kind::Compare, line);
        cmp->args.push_back(std::move(first));
      }
      cmp->ops.push_back(op);
      cmp->args.push_back(parse_math1());
    }
    return cmp ? std::move(cmp) : std::move(first);
  }

  ExprPtr parse_math1() {
    ExprPtr e = parse_concat();
    while (is_op("+") || is_op("-")) {
      const char* op = cur().text == "+" ? "+" : "-";
      int line = cur().line;
      next();
      e = binary(op, std::move(e), parse_concat(), line);
    }
    return e;
  }

  ExprPtr parse_concat() {
    ExprPtr e = parse_math2();
    while (is_op("~")) {
      int line = cur().line;
      next();
      e = binary("~", std::move(e), parse_math2(), line);
    }
    return e;
  }

  ExprPtr parse_math2() {
    ExprPtr e = parse_pow();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      static const char* kOps[] = {"*", "/", "//", "%"};
      const char* op = nullptr;
      for (const char* o : kOps) {
        if (cur().text == o) op = o;
      }
      int line = cur().line;
      next();
      e = binary(op, std::move(e), parse_pow(), line);
    }
    return e;
  }

  ExprPtr parse_pow() {
    ExprPtr e = parse_unary(true);
    while (is_op("**")) {
      int line = cur().line;
      next();
      e = binary("**", std::move(e), parse_unary(true), line);
    }
    return e;
  }

  ExprPtr parse_unary(bool with_filter) {
    DepthGuard guard(*this);
    ExprPtr e;
    if (is_op("-") || is_op("+")) {
      e = make(Expr::Kind::Unary, cur().line);
      e->name = cur().text;
      next();
      e->args.push_back(parse_unary(false));
    } else {
      e = parse_primary();
    }
    e = parse_postfix(std::move(e));
    if (with_filter) e = parse_filters(std::move(e));
    return e;
  }

  ExprPtr parse_primary() {
    const Token& t = cur();
    int line = t.line;
    switch (t.type) {
      case T::Name: {
        if (t.text == "true" || t.text == "True" || t.text == "false" || t.text == "False") {
          auto e = make(Expr::Kind::Literal, line);
          e->value = Value::boolean(t.text == "true" || t.text == "True");
          next();
          return e;
        }
        if (t.text == "none" || t.text == "None") {
          auto e = make(Expr::Kind::Literal, line);
          e->value = Value::none();
          next();
          return e;
        }
        auto e = make(Expr::Kind::Name, line);
        e->name = t.text;
        next();
        return e;
      }
      case T::String: {
        std::string s;
        while (cur().type == T::String) {  // adjacent literals concatenate
          s += cur().text;
          next();
        }
        auto e = make(Expr::Kind::Literal, line);
        e->value = Value::string(std::move(s));
        return e;
      }
      case T::Int: {
        auto e = make(Expr::Kind::Literal, line);
        int64_t v = 0;
        auto r = std::from_chars(t.text.data(), t.text.data() + t.text.size(), v);
        if (r.ec != std::errc()) error("integer literal out of range: " + t.text);
        e->value = Value::integer(v);
        next();
        return e;
      }
      case T::Float: {
        auto e = make(Expr::Kind::Literal, line);
        e->value = Value::real(std::strtod(t.text.c_str(), nullptr));
        next();
        return e;
      }
      case T::Op:
        if (t.text == "(") {
          next();
          if (accept_op(")")) return make(Expr::Kind::Tuple, line);
          ExprPtr e = parse_tuple(true);
          // A parenthesised single expression is itself; "(a,)" is a tuple.
          expect_op(")");
          return e;
        }
        if (t.text == "[") {
          next();
          auto e = make(Expr::Kind::List, line);
          while (!accept_op("]")) {
            if (!e->args.empty()) {
              expect_op(",");
              if (accept_op("]")) break;
            }
            e->args.push_back(parse_expression(true));
          }
          return e;
        }
        if (t.text == "{") {
          next();
          auto e = make(Expr::Kind::Dict, line);
          while (!accept_op("}")) {
            if (!e->args.empty()) {
              expect_op(",");
              if (accept_op("}")) break;
            }
            e->args.push_back(parse_expression(true));
            expect_op(":");
            e->args.push_back(parse_expression(true));
          }
          return e;
        }
        break;
      default:
        break;
    }
    error("unexpected " + describe(t));
  }

  ExprPtr parse_postfix(ExprPtr e) {
    while (true) {
      int line = cur().line;
      if (accept_op(".")) {
        if (cur().type == T::Int) {
          auto idx = make(Expr::Kind::Index, line);
          auto key = make(Expr::Kind::Literal, line);
          key->value = Value::integer(std::stoll(cur().text));
          next();
          idx->args.push_back(std::move(e));
          idx->args.push_back(std::move(key));
          e = std::move(idx);
        } else {
          auto a = make(Expr::Kind::Attr, line);
          a->name = expect_ident();
          a->args.push_back(std::move(e));
          e = std::move(a);
        }
      } else if (accept_op("[")) {
        e = parse_subscript(std::move(e), line);
      } else if (is_op("(")) {
        auto c = make(Expr::Kind::Call, line);
        c->args.push_back(std::move(e));
        parse_call_args(*c);
        e = std::move(c);
      } else {
        return e;
      }
    }
  }

  ExprPtr parse_subscript(ExprPtr obj, int line) {
    ExprPtr parts[3];
    bool is_slice = false;
    if (!is_op(":")) parts[0] = parse_expression(true);
    if (accept_op(":")) {
      is_slice = true;
      if (!is_op("]") && !is_op(":")) parts[1] = parse_expression(true);
      if (accept_op(":")) {
        if (!is_op("]")) parts[2] = parse_expression(true);
      }
    }
    expect_op("]");
    if (!is_slice) {
      auto e = make(Expr::Kind::Index, line);
      e->args.push_back(std::move(obj));
      e->args.push_back(std::move(parts[0]));
      return e;
    }
    auto e = make(Expr::Kind::Slice, line);
    e->args.push_back(std::move(obj));
    for (auto& p : parts) e->args.push_back(std::move(p));
    return e;
  }

  // "(" [arg ("," arg)*] ")" into e.args (after what is already there) and e.kwargs.
  void parse_call_args(Expr& e) {
    expect_op("(");
    bool first = true;
    while (!accept_op(")")) {
      if (!first) {
        expect_op(",");
        if (accept_op(")")) break;
      }
      first = false;
      if (is_op("*") || is_op("**")) error("*args and **kwargs in calls are not supported");
      if (cur().type == T::Name && peek().type == T::Op && peek().text == "=") {
        std::string key = cur().text;
        next();
        next();
        e.kwargs.emplace_back(key, parse_expression(true));
      } else {
        if (!e.kwargs.empty()) error("positional argument follows keyword argument");
        e.args.push_back(parse_expression(true));
      }
    }
  }

  ExprPtr parse_filters(ExprPtr e) { return parse_filter_chain(std::move(e), false); }

  // Filters ("|name(args)") and tests ("is [not] name args") after an operand. With
  // `leading` the first filter has no "|" (the {% filter %} tag).
  ExprPtr parse_filter_chain(ExprPtr e, bool leading) {
    while (true) {
      int line = cur().line;
      if (leading || accept_op("|")) {
        leading = false;
        auto f = make(Expr::Kind::Filter, line);
        f->name = expect_ident();
        while (accept_op(".")) f->name += "." + expect_ident();
        if (!has_filter(f->name)) {
          fail("{}:{}: unknown filter '{}'", name_, line, f->name);
        }
        f->args.push_back(std::move(e));
        if (is_op("(")) parse_call_args(*f);
        e = std::move(f);
      } else if (is_name("is")) {
        next();
        auto t = make(Expr::Kind::Test, line);
        t->negated = accept_name("not");
        t->name = expect_ident();
        if (!has_test(t->name)) fail("{}:{}: unknown test '{}'", name_, line, t->name);
        t->args.push_back(std::move(e));
        if (is_op("(")) {
          parse_call_args(*t);
        } else if ((cur().type == T::Name || cur().type == T::String || cur().type == T::Int ||
                    cur().type == T::Float || is_op("[") || is_op("{")) &&
                   !is_name("else") && !is_name("or") && !is_name("and") && !is_name("is")) {
          // A single argument without parentheses: "x is divisibleby 3".
          t->args.push_back(parse_postfix(parse_primary()));
        }
        e = std::move(t);
      } else if (is_op("(")) {
        auto c = make(Expr::Kind::Call, line);
        c->args.push_back(std::move(e));
        parse_call_args(*c);
        e = std::move(c);
      } else {
        return e;
      }
    }
  }

  std::vector<Token> toks_;
  const std::string& name_;
  size_t pos_ = 0;
  int depth_ = 0;
  int loop_depth_ = 0;
};

}  // namespace

std::shared_ptr<const Program> parse_program(std::string_view source, std::string name) {
  auto program = std::make_shared<Program>();
  program->name = std::move(name);
  Parser parser(tokenize(source, program->name), program->name);
  program->body = parser.parse_template();
  return program;
}

}  // namespace anvil::jinja

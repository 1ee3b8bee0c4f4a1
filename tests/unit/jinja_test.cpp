// Unit tests for anvil::jinja: one small template per construct, with the exact text
// jinja2 (transformers' environment: trim_blocks, lstrip_blocks) renders, and the error
// messages for bad templates. Broad parity runs in tests/parity/test_chat_template_parity.py.
#include "backends/common/error.hpp"
#include "rollout/data/jinja/jinja.hpp"

#include <gtest/gtest.h>

#include <string>
#include <thread>
#include <vector>

namespace {

using anvil::jinja::Template;
using nlohmann::json;

std::string render(const std::string& src, const json& ctx = json::object()) {
  return Template::parse(src).render(ctx);
}

// The anvil::Error message of parsing + rendering `src`, or "" when it succeeds.
std::string error_of(const std::string& src, const json& ctx = json::object()) {
  try {
    render(src, ctx);
  } catch (const anvil::Error& e) {
    return e.what();
  }
  return "";
}

TEST(JinjaOutput, PrintsLikePython) {
  EXPECT_EQ(render("{{ 1/2 }} {{ 4/2 }} {{ 7//2 }} {{ -7//2 }} {{ -7 % 3 }} {{ 2**10 }} {{ 2**-1 }}"),
            "0.5 2.0 3 -4 2 1024 0.5");
  EXPECT_EQ(render("{{ 1e16 }} {{ 1e15 }} {{ 0.1+0.2 }} {{ 1e-5 }} {{ 0.0001 }} {{ -0.0 }}"),
            "1e+16 1000000000000000.0 0.30000000000000004 1e-05 0.0001 -0.0");
  EXPECT_EQ(render("{{ True }} {{ none }} {{ false }}"), "True None False");
  EXPECT_EQ(render("{{ ['a', \"it's\", 1.0, none, true] }}"), "['a', \"it's\", 1.0, None, True]");
  EXPECT_EQ(render("{{ {'a': (1,), 'b': {}} }} {{ (1, 2) }}"), "{'a': (1,), 'b': {}} (1, 2)");
  EXPECT_EQ(render("{{ x }}", {{"x", "line\nbreak"}}), "line\nbreak");
}

TEST(JinjaWhitespace, TrimAndLstripBlocks) {
  EXPECT_EQ(render("  {% if true %}\n    yes\n  {% endif %}\nend"), "    yes\nend");
  EXPECT_EQ(render("a  {{- ' b ' -}}  c"), "a b c");
  EXPECT_EQ(render("a\n  {# comment #}\nb"), "a\nb");
  EXPECT_EQ(render("{% if true +%}\nx{% endif %}"), "\nx");
  EXPECT_EQ(render("x {%+ if true %}y{% endif %}"), "x y");
  EXPECT_EQ(render("a\n{%- if true -%}\n  b\n{%- endif %}"), "ab");
  EXPECT_EQ(render("line\n"), "line");  // keep_trailing_newline=False
  EXPECT_EQ(render("a\r\nb"), "a\nb");
  EXPECT_EQ(render("{% raw %}{{ x }}{% endraw %}"), "{{ x }}");
}

TEST(JinjaControl, IfElifElse) {
  const char* t = "{% if n > 2 %}big{% elif n == 2 %}two{% else %}small{% endif %}";
  EXPECT_EQ(render(t, {{"n", 3}}), "big");
  EXPECT_EQ(render(t, {{"n", 2}}), "two");
  EXPECT_EQ(render(t, {{"n", 0}}), "small");
}

TEST(JinjaControl, ForLoopVariables) {
  EXPECT_EQ(render("{% for x in xs %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}"
                   "{{ loop.first }}{{ loop.last }}{{ loop.length }}|{% endfor %}",
                   {{"xs", {"a", "b"}}}),
            "102TrueFalse2|211FalseTrue2|");
  EXPECT_EQ(render("{% for x in xs %}{{ loop.previtem|default('-') }}{{ loop.nextitem|default('-') }} "
                   "{% endfor %}",
                   {{"xs", {1, 2, 3}}}),
            "-2 13 2- ");
  EXPECT_EQ(render("{% for x in [] %}x{% else %}empty{% endfor %}"), "empty");
  EXPECT_EQ(render("{% for x in range(6) if x is odd %}{{ x }}{{ loop.length }} {% endfor %}"),
            "13 33 53 ");
  EXPECT_EQ(render("{% for i in range(5) %}{% if i == 1 %}{% continue %}{% endif %}"
                   "{% if i == 3 %}{% break %}{% endif %}{{ i }}{% endfor %}"),
            "02");
  EXPECT_EQ(render("{% for i in range(3) %}{{ loop.cycle('a', 'b') }}{% endfor %}"), "aba");
}

TEST(JinjaControl, DictItemsAndUnpacking) {
  nlohmann::ordered_json ctx = {{"d", {{"z", 1}, {"a", 2}}}};
  EXPECT_EQ(Template::parse("{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}{% for k in d %}{{ k }}{% endfor %}")
                .render(ctx),
            "z=1;a=2;za");
}

TEST(JinjaControl, SetScopingAndNamespace) {
  EXPECT_EQ(render("{% set x = 1 %}{% for i in [1, 2] %}{{ x }}{% set x = i %}{{ x }}{% endfor %}{{ x }}"),
            "11121");
  EXPECT_EQ(render("{% set ns = namespace(n=0) %}{% for i in range(4) %}{% set ns.n = ns.n + i %}"
                   "{% endfor %}{{ ns.n }}"),
            "6");
  EXPECT_EQ(render("{% set a, b = 1, 2 %}{{ a }}{{ b }}"), "12");
  EXPECT_EQ(render("{% set blk %} in {{ 1 }} {% endset %}[{{ blk }}]"), "[ in 1 ]");
  EXPECT_EQ(render("{% set blk | trim | upper %} in {% endset %}[{{ blk }}]"), "[IN]");
}

TEST(JinjaControl, MacrosCallFilterWith) {
  EXPECT_EQ(render("{% macro g(name, greet='Hi') %}{{ greet }} {{ name }}{% endmacro %}"
                   "{{ g('a') }},{{ g('b', greet='Yo') }},{{ g(name='c') }}"),
            "Hi a,Yo b,Hi c");
  EXPECT_EQ(render("{% macro w() %}<{{ caller() }}>{% endmacro %}{% call w() %}body{% endcall %}"),
            "<body>");
  EXPECT_EQ(render("{% filter upper %}abc{% endfilter %}"), "ABC");
  EXPECT_EQ(render("{% with a = 2 %}{{ a }}{% endwith %}{{ a }}"), "2");
  EXPECT_EQ(render("{% generation %}gen{% endgeneration %}"), "gen");
}

TEST(JinjaExpr, OperatorsAndLiterals) {
  EXPECT_EQ(render("{{ 1 + 2 * 3 }} {{ (1 + 2) * 3 }} {{ 'a' ~ 1 ~ none }} {{ [1] + [2] }} {{ 'ab' * 2 }}"),
            "7 9 a1None [1, 2] abab");
  EXPECT_EQ(render("{{ 1 < 2 < 3 }} {{ 'a' in 'cat' }} {{ 2 not in [1] }} {{ not true }} {{ 1 == 1.0 }}"),
            "True True True False True");
  EXPECT_EQ(render("{{ '' or 'e' }} {{ 0 and 1 }} {{ 'y' if x else 'n' }} {{ 'y' if not x }}|"), "e 0 n y|");
  EXPECT_EQ(render("{{ x is none }} {{ x is not none }}", {{"x", nullptr}}), "True False");
  EXPECT_EQ(render("{{ -x|abs }} {{ -2 ** 2 }}", {{"x", 3}}), "3 4");  // jinja: unary minus binds tighter than **
  EXPECT_EQ(render("{{ '%s-%d' % ('a', 3) }}"), "a-3");
}

TEST(JinjaExpr, SubscriptsAndSlices) {
  json ctx = {{"m", {{"role", "user"}, {"content", "hi"}}}, {"xs", {1, 2, 3, 4}}};
  EXPECT_EQ(render("{{ m.role }} {{ m['content'] }} {{ xs[0] }} {{ xs[-1] }} {{ xs.1 }}", ctx), "user hi 1 4 2");
  EXPECT_EQ(render("{{ xs[1:] }} {{ xs[:-2] }} {{ xs[::-1] }} {{ xs[::2] }}", ctx),
            "[2, 3, 4] [1, 2] [4, 3, 2, 1] [1, 3]");
  EXPECT_EQ(render("{{ 'héllo'[::-1] }} {{ 'héllo'[1] }} {{ 'héllo'|length }}"), "olléh é 5");
  EXPECT_EQ(render("{{ xs[10] }}|{{ m.missing }}|{{ m.missing is defined }}", ctx), "||False");
}

TEST(JinjaExpr, StringAndDictMethods) {
  EXPECT_EQ(render("{{ 'a,b'.split(',') }} {{ ' x '.strip() }} {{ 'xxaxx'.lstrip('x') }} {{ 'ab  '.rstrip() }}"),
            "['a', 'b'] x axx ab");
  EXPECT_EQ(render("{{ 'abc'.startswith('ab') }} {{ 'abc'.endswith(('x', 'c')) }} {{ 'aXa'.replace('a', 'b') }}"),
            "True True bXb");
  EXPECT_EQ(render("{{ 'Ab'.upper() }} {{ 'Ab'.lower() }} {{ 'hello world'.title() }} {{ 'abcabc'.find('c') }}"
                   " {{ 'abcabc'.count('b') }} {{ '{}-{x}'.format(1, x=2) }}"),
            "AB ab Hello World 2 2 1-2");
  EXPECT_EQ(render("{{ d.get('a') }} {{ d.get('z', 0) }} {{ d.keys()|list }} {{ d.values()|list }} {{ d.items()|list }}",
                   {{"d", {{"a", 1}}}}),
            "1 0 ['a'] [1] [('a', 1)]");
}

TEST(JinjaFilters, Common) {
  EXPECT_EQ(render("{{ ' x '|trim }}|{{ 'ab'|upper }}|{{ 'AB'|lower }}|{{ 'aB'|capitalize }}|{{ 'a-b c'|title }}"),
            "x|AB|ab|Ab|A-B C");
  EXPECT_EQ(render("{{ [1,2]|length }} {{ 'abc'|count }} {{ [1,2]|first }} {{ [1,2]|last }} {{ [1,2]|join('-') }}"),
            "2 3 1 2 1-2");
  EXPECT_EQ(render("{{ u|default('d') }} {{ ''|default('d', true) }} {{ ''|d('x') }}"), "d d ");
  EXPECT_EQ(render("{{ 'ab'|list }} {{ 3|string ~ 'x' }} {{ '42'|int + 1 }} {{ 'x'|int }} {{ '4.5'|float }} {{ 3|float }}"),
            "['a', 'b'] 3x 43 0 4.5 3.0");
  EXPECT_EQ(render("{{ -3|abs }} {{ 2.567|round(2) }} {{ 2.5|round }} {{ 3.5|round }} {{ 2.1|round(0, 'ceil') }}"),
            "3 2.57 2.0 4.0 3.0");
  EXPECT_EQ(render("{{ [3,1,2]|sort }} {{ [3,1,2]|sort(reverse=true) }} {{ ['b','A','a']|unique|list }}"
                   " {{ [1,2]|reverse|list }} {{ 'ab'|reverse }}"),
            "[1, 2, 3] [3, 2, 1] ['b', 'A'] [2, 1] ba");
  EXPECT_EQ(render("{{ 'abab'|replace('a', 'x') }} {{ 'x'|safe }} {{ {'b': 1, 'a': 2}|items|list }}"),
            "xbxb x [('b', 1), ('a', 2)]");
}

TEST(JinjaFilters, SelectMap) {
  json ctx = {{"ms", {{{"role", "user"}, {"n", 1}}, {{"role", "bot"}, {"n", 0}}}}};
  EXPECT_EQ(render("{{ ms|selectattr('role', 'equalto', 'user')|map(attribute='n')|list }}"
                   " {{ ms|rejectattr('n')|map(attribute='role')|join }} {{ ms|selectattr('n')|list|length }}",
                   ctx),
            "[1] bot 1");
  EXPECT_EQ(render("{{ [1,2,3,4]|select('even')|list }} {{ [0,1]|reject|list }} {{ ['a']|map('upper')|list }}"),
            "[2, 4] [0] ['A']");
}

TEST(JinjaFilters, ToJsonMatchesTransformers) {
  nlohmann::ordered_json ctx = {{"d", {{"z", 1}, {"a", {1.5, nullptr, true}}, {"é", "q\"\n<>"}}}};
  auto t = [&](const std::string& s) { return Template::parse(s).render(ctx); };
  EXPECT_EQ(t("{{ d|tojson }}"), R"({"z": 1, "a": [1.5, null, true], "é": "q\"\n<>"})");
  EXPECT_EQ(t("{{ d.a|tojson(indent=2) }}"), "[\n  1.5,\n  null,\n  true\n]");
  EXPECT_EQ(t("{{ d|tojson(sort_keys=true, separators=(',', ':')) }}"), R"({"a":[1.5,null,true],"z":1,"é":"q\"\n<>"})");
  EXPECT_EQ(t("{{ d['é']|tojson(ensure_ascii=true) }}"), R"("q\"\n<>")");
  EXPECT_EQ(render("{{ 'é🙂'|tojson(ensure_ascii=true) }} {{ {}|tojson }} {{ []|tojson(indent=4) }}"),
            R"("\u00e9\ud83d\ude42" {} [])");
}

TEST(JinjaTests, Builtin) {
  EXPECT_EQ(render("{{ x is defined }}{{ y is undefined }}{{ x is string }}{{ 1 is number }}{{ 1 is integer }}"
                   "{{ 1.0 is integer }}{{ {} is mapping }}{{ [] is iterable }}{{ 'a' is sequence }}"
                   "{{ true is boolean }}{{ true is true }}{{ 0 is false }}",
                   {{"x", "s"}}),
            "TrueTrueTrueTrueTrueFalseTrueTrueTrueTrueTrueFalse");
  EXPECT_EQ(render("{{ 3 is odd }}{{ 3 is even }}{{ 6 is divisibleby 3 }}{{ 1 is eq 1 }}{{ 1 is equalto 2 }}"
                   "{{ 1 is ne 2 }}{{ 1 is in [1] }}"),
            "TrueFalseTrueTrueFalseTrueTrue");
}

TEST(JinjaGlobals, RangeDictNamespaceStrftime) {
  EXPECT_EQ(render("{{ range(3)|list }} {{ range(1, 7, 2)|list }} {{ dict(a=1) }}"), "[0, 1, 2] [1, 3, 5] {'a': 1}");
  EXPECT_EQ(render("{{ strftime_now('%Y')|length }}"), "4");
  EXPECT_EQ(error_of("{{ raise_exception('roles must alternate') }}"), "chat_template:1: roles must alternate");
}

TEST(JinjaUndefined, FollowsJinjaDefaultUndefined) {
  EXPECT_EQ(render("[{{ u }}]{{ u is defined }}{{ u|length }}{{ u|list }}{% for x in u %}x{% endfor %}"
                   "{% if u %}t{% else %}f{% endif %}{{ u == u }}"),
            "[]False0[]fTrue");
  EXPECT_EQ(error_of("{{ u.attr }}"), "chat_template:1: 'u' is undefined");
  EXPECT_EQ(error_of("{{ d.x.y }}", {{"d", json::object()}}), "chat_template:1: 'dict object' has no attribute 'x'");
  EXPECT_EQ(error_of("\n{{ u + 1 }}"), "chat_template:2: 'u' is undefined");
}

TEST(JinjaErrors, ParseErrorsNameTemplateLineAndConstruct) {
  EXPECT_EQ(error_of("line1\n{{ x|foo }}"), "chat_template:2: unknown filter 'foo'");
  EXPECT_EQ(error_of("{{ x is foo }}"), "chat_template:1: unknown test 'foo'");
  EXPECT_EQ(error_of("{% include 'x' %}"), "chat_template:1: unsupported tag 'include'");
  EXPECT_EQ(error_of("{% frobnicate %}"), "chat_template:1: unknown tag 'frobnicate'");
  EXPECT_EQ(error_of("{% if x %}\n\nno end"), "chat_template:3: unexpected end of template, expected 'elif'");
  EXPECT_EQ(error_of("{{ x "), "chat_template:1: unterminated '{{'");
  EXPECT_EQ(error_of("{{ 'abc }}"), "chat_template:1: unterminated string literal");
  EXPECT_EQ(error_of("{% break %}"), "chat_template:1: 'break' outside of a loop");
  EXPECT_EQ(error_of("{{ (1, }}"), "chat_template:1: unterminated '{{'");  // "}}" inside "(" is not an end
  EXPECT_EQ(error_of("{{ (1 ] }}"), "chat_template:1: expected ')', got ']'");
  try {
    Template::parse("{{ x|nope }}", "my_tpl");
    FAIL();
  } catch (const anvil::Error& e) {
    EXPECT_STREQ(e.what(), "my_tpl:1: unknown filter 'nope'");
  }
}

TEST(JinjaErrors, RuntimeErrors) {
  EXPECT_EQ(error_of("{{ 'a' + 1 }}"), "chat_template:1: unsupported operand type(s) for +: 'str' and 'int'");
  EXPECT_EQ(error_of("{{ 1 / 0 }}"), "chat_template:1: division by zero");
  EXPECT_EQ(error_of("{{ 1 < 'a' }}"), "chat_template:1: '<' not supported between instances of 'int' and 'str'");
  EXPECT_EQ(error_of("{% for a, b in [[1, 2, 3]] %}{% endfor %}"), "chat_template:1: too many values to unpack (expected 2)");
  EXPECT_EQ(error_of("{% for x in 3 %}{% endfor %}"), "chat_template:1: 'int' object is not iterable");
  EXPECT_EQ(error_of("{{ 9223372036854775807 + 1 }}"), "chat_template:1: integer overflow");
  EXPECT_EQ(error_of("{{ x }}", json::array()), "chat_template: render context must be a JSON object");
}

TEST(JinjaLimits, RecursionAndOutputAreBounded) {
  EXPECT_EQ(error_of("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}"),
            "chat_template:1: macro recursion deeper than 64");
  EXPECT_NE(error_of("{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}").find("exceeds 64 MiB"),
            std::string::npos);
  std::string deep = std::string(5000, '(') + "1" + std::string(5000, ')');
  EXPECT_NE(error_of("{{ " + deep + " }}").find("nested too deeply"), std::string::npos);
}

TEST(JinjaThreads, ConstRenderIsThreadSafe) {
  auto t = Template::parse(
      "{% set ns = namespace(s='') %}{% for m in messages %}{% set ns.s = ns.s ~ m %}{% endfor %}{{ ns.s }}");
  std::vector<std::thread> threads;
  std::vector<std::string> results(8);
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&, i] {
      for (int k = 0; k < 200; ++k) results[i] = t.render(json{{"messages", {std::to_string(i), "x"}}});
    });
  }
  for (auto& th : threads) th.join();
  for (int i = 0; i < 8; ++i) EXPECT_EQ(results[i], std::to_string(i) + "x");
}

}  // namespace

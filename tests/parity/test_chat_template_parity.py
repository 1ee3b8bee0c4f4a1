"""Chat-template parity: anvil's Jinja engine (jinja_render) vs transformers' own jinja env.

Templates are written here in the styles of ChatML/Qwen3 (thinking, tool calls, tool
responses), Llama-3.1 (tools, date string), Mistral and Gemma (raise_exception on role
alternation), DeepSeek-R1 and a tojson-heavy tool template. A seeded generator makes
conversations (system prompt or not, multi-turn, tool calls, reasoning, unicode,
add_generation_prompt and enable_thinking both ways). Each (template, conversation) is
rendered by transformers' compiled template (the oracle) and by jinja_render; the texts must
be identical, and an oracle error must be an anvil error (with the raise_exception message).
"""

import json
import os
import random
import subprocess

import pytest
from transformers.utils.chat_template_utils import _compile_jinja_template

TOOLS_DIR = os.environ.get("ANVIL_TEST_TOOLS", "build/tests")
JINJA_RENDER = os.path.join(TOOLS_DIR, "jinja_render")

QWEN3 = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\n\n' }}
    {%- endif %}
    {{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in content %}
                {%- set reasoning_content = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
                {%- set content = content.split('</think>')[-1].lstrip('\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\n' + content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or (not loop.first) %}
                    {{- '\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}
"""

LLAMA31 = r"""{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = strftime_now("%d %b %Y") %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message + builtin tools #}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if builtin_tools is defined or tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\n\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\n\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
        {{- '{"name": "' + tool_call.name + '", ' }}
        {{- '"parameters": ' }}
        {{- tool_call.arguments | tojson }}
        {{- "}" }}
        {{- "<|eot_id|>" }}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"""

MISTRAL = r"""{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {%- if loop.first and system_message is defined %}
            {{- ' [INST] ' + system_message + '\n\n' + message['content'] + ' [/INST]' }}
        {%- else %}
            {{- ' [INST] ' + message['content'] + ' [/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' %}
        {{- ' ' + message['content'] + eos_token}}
    {%- else %}
        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}
    {%- endif %}
{%- endfor %}
"""

GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)

DEEPSEEK = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{% set ns = namespace(is_first=false, is_tool=false, system_prompt='') %}"
    "{%- for message in messages %}{%- if message['role'] == 'system' %}{% set ns.system_prompt = message['content'] %}"
    "{%- endif %}{%- endfor %}{{bos_token}}{{ns.system_prompt}}"
    "{%- for message in messages %}{%- if message['role'] == 'user' %}{%- set ns.is_tool = false -%}"
    "{{'<｜User｜>' + message['content']}}{%- endif %}"
    "{%- if message['role'] == 'assistant' and message['content'] is not none %}{% set content = message['content'] %}"
    "{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}"
    "{{'<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>'}}{%- endif %}"
    "{%- if message['role'] == 'tool' %}{{'<｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}{%- endif %}"
    "{%- endfor -%}{% if add_generation_prompt %}{{'<｜Assistant｜><think>\\n'}}{% endif %}"
)

# Tool calling with tojson options, macros, map/selectattr/join, loop.* and dict items().
TOOLS_JSON = r"""{%- macro render_args(args, sep=', ') -%}
{%- for k, v in args.items() -%}
{{ k }}={{ v|tojson }}{% if not loop.last %}{{ sep }}{% endif %}
{%- endfor -%}
{%- endmacro -%}
{%- if tools %}
<|tools|>
{%- for tool in tools %}
{{ tool|tojson(indent=2) }}
{%- endfor %}
names: {{ tools|map(attribute='function')|map(attribute='name')|join(', ') }}
sorted: {{ tools[0]|tojson(sort_keys=true, separators=(',', ':')) }}
<|/tools|>
{%- endif %}
{%- set users = messages|selectattr('role', 'equalto', 'user')|list %}
{{ users|length }} user turns, last={{ (users|last).content[:10] if users else 'none' }}
{%- for message in messages %}
<|{{ message.role }}|>{{ '#' ~ loop.index ~ '/' ~ loop.length }}{% if loop.previtem is defined %} after {{ loop.previtem.role }}{% endif %}
{%- if message.tool_calls is defined and message.tool_calls %}
{%- for call in message.tool_calls %}
  call {{ loop.index0 }}: {{ call.function.name }}({{ render_args(call.function.arguments) if call.function.arguments is mapping else call.function.arguments }})
  raw: {{ call.function|tojson(sort_keys=true) }}
{%- endfor %}
{%- elif message.role == 'tool' %}
{{ message.content|tojson }}
{%- else %}
{{ message.content|default('', true)|trim|replace('\n', ' / ') }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
<|assistant|>{% if enable_thinking is false %}<think></think>{% endif %}
{%- endif %}
"""

# ChatML with plenty of whitespace control corner cases (lstrip/trim blocks, comments, +).
CHATML = """{# ChatML #}
{% for message in messages %}
  {% if loop.first and message['role'] != 'system' %}
<|im_start|>system
You are a helpful assistant.<|im_end|>
  {% endif %}
<|im_start|>{{ message['role'] }}
{{ message['content'] if message['content'] is string else message['content']|tojson }}<|im_end|>
    {# between messages #}
{% endfor %}
{% if add_generation_prompt %}
<|im_start|>assistant
{% endif %}
"""

TEMPLATES = {
    "qwen3": QWEN3,
    "llama31": LLAMA31,
    "mistral": MISTRAL,
    "gemma": GEMMA,
    "deepseek": DEEPSEEK,
    "tools_json": TOOLS_JSON,
    "chatml": CHATML,
}

WORDS = ["hello", "world", "What's", "the", "weather", "in", "Paris", "?", "naïve", "café", "日本語",
         "🙂", "👨‍👩‍👧", "x²", "don't", "\"quoted\"", "<tag>", "a\\b", "{{ not jinja }}", "{% raw %}",
         "tab\there", "line\nbreak", "  spaced  ", "ünïcödé", "Straße", "русский", "العربية", "3.14", "42"]
SYSTEMS = ["You are a helpful assistant.", "  Be concise.\n", "Réponds en français. 🙂",
           "You are Qwen, created by Alibaba Cloud.", "Multi\nline\n\nsystem prompt"]
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Get the weather — in °C",
                                      "parameters": {"type": "object", "properties": {
                                          "location": {"type": "string", "description": "City, e.g. Zürich"},
                                          "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                                          "required": ["location"]}}},
    {"type": "function", "function": {"name": "search", "description": "Search the web",
                                      "parameters": {"type": "object", "properties": {
                                          "query": {"type": "string"}, "top_k": {"type": "integer", "default": 5},
                                          "weight": {"type": "number", "default": 0.5}}, "required": ["query"]}}},
    {"type": "function", "function": {"name": "calc", "description": "Evaluate \"math\"\n safely",
                                      "parameters": {"zeta": {"type": "null"}, "alpha": [1, 2.0, True, None]}}},
]


def text(rng, lo=1, hi=12):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def tool_call(rng):
    name = rng.choice(["get_weather", "search", "calc"])
    args = {"location": text(rng, 1, 2), "n": rng.randint(-5, 100), "x": rng.choice([0.5, 1.0, 2.25, 1e-7, 1e20]),
            "flag": rng.choice([True, False, None]), "nested": {"list": [1, "two", {"three": 3}]}}
    keys = rng.sample(list(args), rng.randint(1, len(args)))
    args = {k: args[k] for k in keys}
    if rng.random() < 0.25:
        args = json.dumps(args, ensure_ascii=False)
    return {"type": "function", "function": {"name": name, "arguments": args}}


def conversation(rng):
    messages = []
    if rng.random() < 0.5:
        messages.append({"role": "system", "content": rng.choice(SYSTEMS)})
    for turn in range(rng.randint(1, 4)):
        messages.append({"role": "user", "content": text(rng)})
        if rng.random() < 0.08:  # broken alternation: two user turns in a row
            messages.append({"role": "user", "content": text(rng)})
        r = rng.random()
        if r < 0.3:
            calls = [tool_call(rng) for _ in range(rng.randint(1, 2))]
            msg = {"role": "assistant", "content": rng.choice(["", text(rng, 1, 4), None]), "tool_calls": calls}
            messages.append(msg)
            for _ in calls:
                content = rng.choice([text(rng), json.dumps({"temp": rng.randint(-10, 30), "unit": "°C"})])
                messages.append({"role": "tool", "content": content})
            messages.append({"role": "assistant", "content": text(rng)})
        elif r < 0.55:
            messages.append({"role": "assistant",
                             "content": "<think>\n" + text(rng) + "\n</think>\n\n" + text(rng)})
        elif r < 0.7:
            messages.append({"role": "assistant", "content": text(rng), "reasoning_content": text(rng)})
        else:
            messages.append({"role": "assistant", "content": text(rng)})
    if rng.random() < 0.5:
        messages.append({"role": "user", "content": text(rng)})
    ctx = {"messages": messages, "bos_token": "<s>", "eos_token": "</s>"}
    if rng.random() < 0.4:
        ctx["tools"] = rng.sample(TOOLS, rng.randint(1, 3))
    ctx["add_generation_prompt"] = rng.random() < 0.5
    think = rng.random()
    if think < 0.35:
        ctx["enable_thinking"] = False
    elif think < 0.7:
        ctx["enable_thinking"] = True
    if rng.random() < 0.8:
        ctx["date_string"] = "26 Jul 2024"
    if rng.random() < 0.2:
        ctx["tools_in_user_message"] = False
    return ctx


def oracle(template, ctx):
    try:
        return {"ok": True, "text": _compile_jinja_template(template).render(**ctx)}
    except Exception as e:  # noqa: BLE001 - any oracle error must be an anvil error too
        return {"ok": False, "error": f"{type(e).__name__}: {e}", "message": str(e)}


def run_anvil(requests, tmp_path):
    src = tmp_path / "in.jsonl"
    dst = tmp_path / "out.jsonl"
    with open(src, "w", encoding="utf-8") as f:
        for r in requests:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    subprocess.run([JINJA_RENDER, str(src), str(dst)], check=True, timeout=300)
    with open(dst, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def check(requests, tmp_path):
    got = run_anvil(requests, tmp_path)
    assert len(got) == len(requests)
    failures = []
    n_err = 0
    for req, out in zip(requests, got):
        want = oracle(req["template"], req["context"])
        if want["ok"]:
            if not out["ok"] or out["text"] != want["text"]:
                failures.append((req, want, out))
        else:
            n_err += 1
            if out["ok"] or (want["error"].startswith("TemplateError") and want["message"] not in out["error"]):
                failures.append((req, want, out))
    for req, want, out in failures[:3]:
        print("TEMPLATE:", req["template"][:120])
        print("CONTEXT:", json.dumps(req["context"], ensure_ascii=False)[:400])
        print("ORACLE:", repr(want)[:600])
        print("ANVIL: ", repr(out)[:600])
    assert not failures, f"{len(failures)} of {len(requests)} renders differ"
    return n_err


def test_conversations_match_transformers(tmp_path):
    rng = random.Random(1234)
    conversations = [conversation(rng) for _ in range(240)]
    requests = [{"template": t, "context": c} for t in TEMPLATES.values() for c in conversations]
    n_err = check(requests, tmp_path)
    # The generator must exercise raise_exception (alternation, system role) and success paths.
    assert 20 < n_err < len(requests) // 2


def test_strftime_now_date(tmp_path):
    ctx = {"messages": [{"role": "user", "content": "hi"}], "add_generation_prompt": True}
    check([{"template": LLAMA31, "context": ctx}], tmp_path)


SNIPPETS = [
    ("{{ 1/2 }} {{ 4/2 }} {{ 7//2 }} {{ -7//2 }} {{ -7 % 3 }} {{ 2**10 }} {{ 2**-1 }} {{ 1e16 }} {{ 0.1+0.2 }}"
     " {{ True }} {{ none }} {{ ['a', \"it's\", 1.0, none, true] }} {{ {'a': (1,), 'b': {}} }}", {}),
    ("{% for k, v in d.items() %}{{ k }}={{ v }}{{ ',' if not loop.last }}{% endfor %} {{ d|tojson }}"
     " {{ d|tojson(indent=2) }} {{ d|items|list }} {{ d.keys()|list }} {{ d|dictsort }}",
     {"d": {"z": 1, "a": [1.5, None], "m": {"é": "\n"}}}),
    ("{{ 'Hello World'[::-1] }} {{ 'abc'[1:] }} {{ [1,2,3,4][-2:] }} {{ 'a,b,c'.split(',') }} {{ ' x '.strip() }}"
     " {{ 'hello world'.title() }} {{ 'x{}y{}'.format(1, 'z') }} {{ 'aXa'.replace('a','b') }}"
     " {{ 'abcabc'.find('c') }} {{ 'abcabc'.count('b') }} {{ 'a b  c'.split() }} {{ 'ÉCOLE'.lower() }}", {}),
    ("{{ u }}|{{ u is defined }}|{{ x.y is defined }}|{{ x.get('y', 5) }}|{{ x['y'] }}{{ x.z|default('dz') }}"
     "|{{ '' or 'e' }}|{{ 0 and 1 }}|{{ 'a' if x else 'b' }}|{{ u|length }}|{{ u|list }}", {"x": {"z": None}}),
    ("{{ [3,1,2]|sort }} {{ ['b','A','a']|unique|list }} {{ [1,2,3]|reverse|list }} {{ -3|abs }} {{ 2.567|round(2) }}"
     " {{ 2.5|round }} {{ '42'|int + 1 }} {{ '4.5'|float }} {{ 3 is odd }} {{ 4 is divisibleby 2 }}"
     " {{ [1,2,3,4]|select('even')|list }} {{ [{'a':1},{'a':0}]|rejectattr('a')|list }} {{ 'ab'|capitalize }}"
     " {{ 'a-b c'|title }} {{ [1,2]|sum }} {{ [4,2,9]|max }} {{ 'x\ny'|indent(2, true) }}", {}),
    ("  {% if true %}\n    yes\n  {% endif %}\n  {{- ' v ' -}}\n  {# c #}\n  after\n{%- if true +%}\n  plus\n{% endif %}", {}),
    ("{% for i in range(5) %}{% if i == 1 %}{% continue %}{% endif %}{% if i == 3 %}{% break %}{% endif %}{{ i }}"
     "{% else %}none{% endfor %}{% for i in [] %}x{% else %}empty{% endfor %}\n{% set a, b = 1, 2 %}{{ a }}{{ b }}"
     " {% set blk %}  inner {{ a }} {% endset %}[{{ blk }}] {{ 'a' in 'cat' }} {{ 2 not in [1] }}"
     " {{ 1 < 2 < 3 }} {{ 'x' ~ 1 ~ none }} {{ [1] + [2] }} {{ 'ab' * 2 }} {{ dict(a=1, b=2) }}", {}),
    ("{% macro m(a, b=2) %}[{{ a }}{{ b }}{{ caller() if caller is defined }}]{% endmacro %}{{ m(1) }}{{ m(1, b=3) }}"
     "{% call m(0) %}body{% endcall %}{% filter upper %}shout {{ 'x' }}{% endfilter %}"
     "{% set ns = namespace(c=0) %}{% for i in range(3) %}{% set ns.c = ns.c + i %}{% endfor %}{{ ns.c }}", {}),
    ("{{ x + 1 }}", {"x": "s"}),
    ("{{ u.attr }}", {}),
    ("{{ raise_exception('custom failure: ' ~ n) }}", {"n": 3}),
    ("{% for a, b in [[1, 2, 3]] %}{% endfor %}", {}),
]


def test_snippets_match_transformers(tmp_path):
    check([{"template": t, "context": c} for t, c in SNIPPETS], tmp_path)

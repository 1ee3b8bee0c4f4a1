"""Data-pipeline parity: anvil's datasets, loss masks and cursor against Python references.

(a) Loss masks: for seeded multi-turn conversations (system prompts, tool calls, tool
    results, unicode, whitespace) under three chat templates (ChatML, a Llama-3-style layout
    with bos and trim, a Qwen2.5-style tool template that groups tool results), the ids and
    loss mask of `anvil render-chat` equal transformers' apply_chat_template with
    return_assistant_tokens_mask on the same template annotated with {% generation %}
    around exactly the assistant content and its end-of-turn token.
(b) Parquet written by pyarrow and JSONL with the same rows give identical samples.
(c) Resume: a run cut anywhere (mid-epoch, at an epoch boundary, with shuffle and prefetch)
    and resumed from its saved cursor yields exactly the uninterrupted sequence, which also
    equals a Python re-implementation of the documented order (mt19937_64 + Fisher-Yates).
(d) Bad rows: skipped and counted with file:line and key, or a clean failure under
    --strict-data (no output file).
(e) render-chat end to end, including its errors.
"""

import json
import os
import random
import subprocess

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

ANVIL = os.environ.get("ANVIL_BIN", "anvil")


def anvil(*args, ok=True):
    proc = subprocess.run([ANVIL, *args], capture_output=True, text=True)
    if ok:
        assert proc.returncode == 0, f"anvil {' '.join(args)} failed:\n{proc.stderr}"
    return proc


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("model") / "m")
    anvil("init-model", "--arch", "qwen3", "--preset", "tiny", "--out", out, "--seed", "3")
    return out


def with_template(model_dir, tmp_path, name, template):
    """A copy of the model directory whose tokenizer_config.json uses `template`."""
    out = tmp_path / name
    out.mkdir()
    for f in os.listdir(model_dir):
        if f != "model.safetensors":
            data = open(os.path.join(model_dir, f), "rb").read()
            open(out / f, "wb").write(data)
    cfg = json.load(open(out / "tokenizer_config.json"))
    cfg["chat_template"] = template
    json.dump(cfg, open(out / "tokenizer_config.json", "w"))
    return str(out)


# --- (a) loss masks -------------------------------------------------------------------------

# GEN( and )GEN mark the assistant's generated part: removed for anvil, turned into
# {% generation %} ... {% endgeneration %} for the transformers reference.
CHATML = (
    "{%- for message in messages %}"
    "{%- if message.role == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}GEN({{- message.content + '<|im_end|>' }})GEN{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

LLAMA3_STYLE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n\\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "GEN({{- message['content'] | trim + '<|im_end|>' }})GEN"
    "{%- else %}{{- message['content'] | trim + '<|im_end|>' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n\\n' }}{%- endif %}"
)

QWEN25_TOOLS = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}{%- else %}{{- 'You are a helpful assistant.' }}{%- endif %}
    {{- "\n\n# Tools\n\n<tools>" }}
    {%- for tool in tools %}{{- "\n" }}{{- tool | tojson }}{%- endfor %}
    {{- "\n</tools><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role + '\n' }}GEN(
        {%- if message.content %}{{- message.content }}{%- endif %}
        {%- for tool_call in message.tool_calls | default([]) %}
            {%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}{{- tool_call.name }}{{- '", "arguments": ' }}{{- tool_call.arguments | tojson }}{{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>' }})GEN{{- '\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}{{- '<|im_start|>user' }}{%- endif %}
        {{- '\n<tool_response>\n' }}{{- message.content }}{{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}{{- '<|im_end|>\n' }}{%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"""

TEMPLATES = {"chatml": CHATML, "llama3_style": LLAMA3_STYLE, "qwen25_tools": QWEN25_TOOLS}
TOOLS = [{"type": "function", "function": {"name": "add", "description": "Add two numbers",
                                           "parameters": {"type": "object", "properties": {
                                               "a": {"type": "number"}, "b": {"type": "number"}}}}}]
WORDS = ["the", "answer", "is", "42", "héllo", "naïve", "数学", "🙂", "x=1;", "def f():",
         "\n", "  ", "Sure!", "<tag>", "a\tb", "3.14", "—", "ok"]


def text(rng, lo=1, hi=12):
    s = " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))
    if rng.random() < 0.15:
        s = " " + s + "\n"
    return s


def conversation(rng, tools):
    msgs = []
    if rng.random() < 0.5:
        msgs.append({"role": "system", "content": text(rng)})
    for _ in range(rng.randint(1, 4)):
        msgs.append({"role": "user", "content": text(rng)})
        if tools and rng.random() < 0.4:
            calls = [{"type": "function", "function": {"name": "add", "arguments": {
                "b": rng.randint(0, 9), "a": rng.randint(0, 9)}}} for _ in range(rng.randint(1, 2))]
            msgs.append({"role": "assistant", "content": text(rng, 0, 3), "tool_calls": calls})
            for _ in calls:
                msgs.append({"role": "tool", "content": str(rng.randint(0, 18))})
        msgs.append({"role": "assistant", "content": "" if rng.random() < 0.05 else text(rng)})
    return msgs


@pytest.mark.parametrize("name", sorted(TEMPLATES))
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_loss_masks_match_transformers_generation_masks(model, tmp_path, name, add_generation_prompt):
    src = TEMPLATES[name]
    plain = src.replace("GEN(", "").replace(")GEN", "")
    annotated = src.replace("GEN(", "{% generation %}").replace(")GEN", "{% endgeneration %}")
    mdir = with_template(model, tmp_path, name, plain)
    tok = AutoTokenizer.from_pretrained(mdir)
    rng = random.Random(sum(map(ord, name)) + int(add_generation_prompt))
    use_tools = name == "qwen25_tools"
    rows = []
    for i in range(120):
        row = {"messages": conversation(rng, use_tools)}
        if use_tools and i % 2 == 0:
            row["tools"] = TOOLS
        rows.append(row)
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    args = ["render-chat", "--model", mdir, "--input", inp, "--output", str(out)]
    if add_generation_prompt:
        args.append("--add-generation-prompt")
    anvil(*args)
    got = read_jsonl(out)
    assert len(got) == len(rows)
    trained_turns = 0
    for row, g in zip(rows, got):
        ref = tok.apply_chat_template(row["messages"], tools=row.get("tools"),
                                      chat_template=annotated, tokenize=True, return_dict=True,
                                      return_assistant_tokens_mask=True,
                                      add_generation_prompt=add_generation_prompt)
        ref_text = tok.apply_chat_template(row["messages"], tools=row.get("tools"),
                                           chat_template=plain, tokenize=False,
                                           add_generation_prompt=add_generation_prompt)
        assert g["text"] == ref_text
        assert g["ids"] == list(ref["input_ids"])
        assert g["loss_mask"] == list(ref["assistant_masks"]), (
            f"mask differs for {row['messages']}:\n"
            + "\n".join(f"{t!r} anvil={a} ref={b}" for t, a, b in
                        zip(g["tokens"], g["loss_mask"], ref["assistant_masks"]) if a != b))
        # Decoding the trained tokens gives back every assistant turn, each ending with the
        # end-of-turn token.
        trained = tok.decode([t for t, m in zip(g["ids"], g["loss_mask"]) if m])
        assert trained.count("<|im_end|>") == sum(m["role"] == "assistant" for m in row["messages"])
        trained_turns += trained.count("<|im_end|>")
    assert trained_turns > 200


# --- (b) Parquet == JSONL -----------------------------------------------------------------

def sft_rows(n, seed=5):
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        r = {"messages": conversation(rng, tools=(i % 3 == 0)), "label": f"L{i}",
             "meta": {"id": i, "tag": rng.choice(["a", "b"])} if i % 4 else {"other": 1.5}}
        if i % 5 == 0:
            r["tools"] = json.dumps(TOOLS)
        rows.append(r)
    return rows


def preview(model, out, *data_args, mode="sft", ok=True, extra=()):
    proc = anvil("data-preview", "--model", model, "--output", str(out), "--mode", mode,
                 *data_args, *extra, ok=ok)
    return proc


def strip_location(samples):
    return [{k: v for k, v in s.items() if k not in ("file", "source")} for s in samples]


def test_parquet_and_jsonl_give_identical_samples(model, tmp_path):
    rows = sft_rows(40)
    jl = write_jsonl(tmp_path / "d.jsonl", rows)
    pqf = str(tmp_path / "d.parquet")
    pq.write_table(pa.Table.from_pylist(rows), pqf, row_group_size=7)  # several row groups
    common = ["--input-key", "messages", "--label-key", "label", "--metadata-key", "meta",
              "--tool-key", "tools", "--num-epoch", "2", "--rollout-shuffle"]
    preview(model, tmp_path / "a.jsonl", "--prompt-data", jl, *common)
    preview(model, tmp_path / "b.jsonl", "--prompt-data", pqf, *common)
    a, b = read_jsonl(tmp_path / "a.jsonl"), read_jsonl(tmp_path / "b.jsonl")
    assert len(a) == 80
    assert strip_location(a) == strip_location(b)
    assert [s["line"] for s in a] == [s["line"] for s in b]
    # The samples are the rows themselves.
    first = a[0]
    src = rows[first["line"] - 1]
    assert first["input"] == src["messages"] and first["label"] == src["label"]
    assert first["metadata"] == src["meta"]


def test_parquet_bad_rows_and_types(model, tmp_path):
    table = pa.table({
        "prompt": pa.array([b"fine", b"\xff\xfe", None, b"also fine"], type=pa.binary()),
        "n": pa.array([1, 2, 3, 4], type=pa.int64()),
    })
    f = str(tmp_path / "b.parquet")
    pq.write_table(table, f)
    proc = preview(model, tmp_path / "o.jsonl", "--prompt-data", f, "--label-key", "n",
                   mode="prompt")
    got = read_jsonl(tmp_path / "o.jsonl")
    assert [(s["line"], s["input"], s["label"]) for s in got] == [(1, "fine", 1), (4, "also fine", 4)]
    assert "b.parquet:2: column 'prompt' holds invalid UTF-8" in proc.stderr
    assert "b.parquet:3: key 'prompt': missing" in proc.stderr
    strict = preview(model, tmp_path / "s.jsonl", "--prompt-data", f, "--strict-data",
                     mode="prompt", ok=False)
    assert strict.returncode == 1
    assert "b.parquet:2: column 'prompt' holds invalid UTF-8" in strict.stderr
    assert not (tmp_path / "s.jsonl").exists()


# --- (c) resume -----------------------------------------------------------------------------

class MT19937_64:
    """std::mt19937_64, written from the C++ standard's definition."""

    def __init__(self, seed):
        m = (1 << 64) - 1
        self.mt = [seed & m]
        for i in range(1, 312):
            prev = self.mt[-1]
            self.mt.append((6364136223846793005 * (prev ^ (prev >> 62)) + i) & m)
        self.i = 312

    def __call__(self):
        m = (1 << 64) - 1
        if self.i >= 312:
            for k in range(312):
                x = (self.mt[k] & 0xFFFFFFFF80000000) | (self.mt[(k + 1) % 312] & 0x7FFFFFFF)
                y = x >> 1
                if x & 1:
                    y ^= 0xB5026F5AA96619E9
                self.mt[k] = self.mt[(k + 156) % 312] ^ y
            self.i = 0
        x = self.mt[self.i]
        self.i += 1
        x ^= (x >> 29) & 0x5555555555555555
        x ^= (x << 17) & 0x71D67FFFEDA60000
        x ^= (x << 37) & 0xFFF7EEE000000000
        x ^= x >> 43
        return x & m


def python_order(n, shuffle, seed, epoch):
    order = list(range(n))
    if not shuffle:
        return order
    rng = MT19937_64(seed + epoch)
    for i in range(n - 1, 0, -1):
        bound = i + 1
        threshold = ((1 << 64) - bound) % bound
        while True:
            r = rng()
            if r >= threshold:
                break
        j = r % bound
        order[i], order[j] = order[j], order[i]
    return order


@pytest.mark.parametrize("prefetch", ["0", "16"])
def test_resume_continues_exactly(model, tmp_path, prefetch):
    a_rows = [{"prompt": f"alpha {i}", "label": i} for i in range(9)]
    b_rows = [{"prompt": f"beta {i}", "label": 100 + i} for i in range(5)]
    a = write_jsonl(tmp_path / "a.jsonl", a_rows)
    b = str(tmp_path / "b.parquet")
    pq.write_table(pa.Table.from_pylist(b_rows), b)
    data = ["--prompt-data", "A", a, "B", b, "--label-key", "label", "--rollout-shuffle",
            "--rollout-seed", "1234", "--num-epoch", "3", "--apply-chat-template",
            "--prefetch-depth", prefetch]
    full_out = tmp_path / "full.jsonl"
    preview(model, full_out, *data, mode="prompt")
    full = [(s["source"], s["label"]) for s in read_jsonl(full_out)]
    check = MT19937_64(5489)
    assert [check() for _ in range(10000)][-1] == 9981545732273789042  # the standard's check
    pool = [("A", r["label"]) for r in a_rows] + [("B", r["label"]) for r in b_rows]
    expected = [pool[i] for e in range(3) for i in python_order(14, True, 1234, e)]
    assert full == expected
    for cut in [1, 6, 13, 14, 15, 27, 41]:
        head_out, cursor = tmp_path / f"h{cut}.jsonl", tmp_path / f"c{cut}.json"
        preview(model, head_out, *data, mode="prompt",
                extra=["--take", str(cut), "--save-cursor", str(cursor)])
        tail_out = tmp_path / f"t{cut}.jsonl"
        preview(model, tail_out, *data, mode="prompt", extra=["--resume", str(cursor)])
        head = [(s["source"], s["label"]) for s in read_jsonl(head_out)]
        tail = [(s["source"], s["label"]) for s in read_jsonl(tail_out)]
        assert head + tail == full, f"cut at {cut}"
        c = json.load(open(cursor))
        assert (c["epoch"], c["offset"]) == divmod(cut, 14)
        assert sum(s["consumed"] for s in c["sources"]) == cut
    # A cursor from other data or another seed is refused.
    reseeded = [("1" if x == "1234" else x) for x in data]
    other = preview(model, tmp_path / "x.jsonl", *reseeded, mode="prompt",
                    extra=["--resume", str(tmp_path / "c6.json")], ok=False)
    assert other.returncode == 1 and "--rollout-seed=1234" in other.stderr


# --- (d) bad rows ---------------------------------------------------------------------------

BAD_LINES = [
    '{"prompt": "good one", "label": "a"}',
    '{"prompt": 7, "label": "a"}',
    '{"label": "a"}',
    '{"prompt": "no label"}',
    '{"prompt": [{"role": "user"}], "label": "a"}',
    'this is not json',
    '{"prompt": "x", "label": "a", "meta": "not an object"}',
    '{"prompt": "a much longer prompt that will certainly exceed the tiny limit of tokens", "label": "a"}',
    '{"prompt": "good two", "label": "b"}',
]


def write_bad(tmp_path):
    p = tmp_path / "bad.jsonl"
    with open(p, "wb") as f:
        for line in BAD_LINES:
            f.write(line.encode() + b"\n")
        f.write(b'{"prompt": "\xc3\x28", "label": "a"}\n')  # line 10: invalid UTF-8
    return str(p)


def test_bad_rows_skipped_and_counted_or_strict_failure(model, tmp_path):
    f = write_bad(tmp_path)
    data = ["--prompt-data", f, "--label-key", "label", "--metadata-key", "meta",
            "--max-length", "24"]
    proc = preview(model, tmp_path / "o.jsonl", *data, mode="sft")
    got = read_jsonl(tmp_path / "o.jsonl")
    assert [s["line"] for s in got] == [1, 9]
    err = proc.stderr
    for needle in ["bad.jsonl:2: key 'prompt': is an integer",
                   "bad.jsonl:3: key 'prompt': missing",
                   "bad.jsonl:4: key 'label': missing",
                   "bad.jsonl:5: key 'prompt': message 0 (user) has no 'content'",
                   "bad.jsonl:6: malformed JSON",
                   "bad.jsonl:7: key 'meta': is a string, expected an object",
                   "bad.jsonl:8: ", "longer than --max-length 24",
                   "bad.jsonl:10: invalid UTF-8",
                   "7 bad rows skipped", "1 skipped"]:
        assert needle in err, f"{needle!r} not in:\n{err}"
    # Under --strict-data the first bad row fails the run and no output is written.
    strict = preview(model, tmp_path / "s.jsonl", *data, "--strict-data", mode="sft", ok=False)
    assert strict.returncode == 1
    assert "bad.jsonl:2: key 'prompt': is an integer" in strict.stderr
    assert not (tmp_path / "s.jsonl").exists()
    # The too-long row alone also fails strictly, at its own line.
    only = write_jsonl(tmp_path / "long.jsonl", [json.loads(BAD_LINES[0]), json.loads(BAD_LINES[7])])
    strict = preview(model, tmp_path / "s.jsonl", "--prompt-data", only, "--label-key", "label",
                     "--max-length", "24", "--strict-data", mode="sft", ok=False)
    assert strict.returncode == 1 and "long.jsonl:2: " in strict.stderr
    assert "longer than --max-length 24" in strict.stderr
    assert not (tmp_path / "s.jsonl").exists()


def test_missing_and_unknown_files_are_clear_errors(model, tmp_path):
    (tmp_path / "notes.txt").write_text("hello\n")
    for path, needle in [(str(tmp_path / "nope.jsonl"), "nope.jsonl: dataset file does not exist"),
                         (str(tmp_path / "notes.txt"), "notes.txt: not a dataset file"),
                         (str(tmp_path), "is not a regular file")]:
        proc = preview(model, tmp_path / "o.jsonl", "--prompt-data", path, ok=False)
        assert proc.returncode == 1 and needle in proc.stderr, proc.stderr
    (tmp_path / "fake.parquet").write_text('{"prompt": "x"}\n')
    proc = preview(model, tmp_path / "o.jsonl", "--prompt-data", str(tmp_path / "fake.parquet"),
                   ok=False)
    assert proc.returncode == 1 and "fake.parquet: cannot read Parquet" in proc.stderr
    assert not (tmp_path / "o.jsonl").exists()


# --- (e) render-chat ------------------------------------------------------------------------

def test_render_chat_end_to_end(model, tmp_path):
    rows = [{"messages": [{"role": "user", "content": "Hi"},
                          {"role": "assistant", "content": "Hello!"}]},
            {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}]}]
    inp = write_jsonl(tmp_path / "c.jsonl", rows)
    out = tmp_path / "o.jsonl"
    anvil("render-chat", "--model", model, "--input", inp, "--output", str(out))
    got = read_jsonl(out)
    tok = AutoTokenizer.from_pretrained(model)
    assert got[0]["text"] == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
    assert got[0]["ids"] == tok(got[0]["text"], add_special_tokens=False)["input_ids"]
    assert "".join(got[0]["tokens"]) == got[0]["text"]
    assert tok.decode([t for t, m in zip(got[0]["ids"], got[0]["loss_mask"]) if m]) == "Hello!<|im_end|>"
    assert sum(got[1]["loss_mask"]) == 0
    anvil("render-chat", "--model", model, "--input", inp, "--output", str(out),
          "--add-generation-prompt", "--chat-template-kwargs", '{"enable_thinking": false}')
    got = read_jsonl(out)
    assert got[1]["text"].endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert sum(got[1]["loss_mask"]) == 0


def test_render_chat_errors_leave_no_partial_output(model, tmp_path):
    out = tmp_path / "o.jsonl"
    out.write_text("previous contents\n")

    def fails(args, needle):
        proc = anvil("render-chat", *args, "--output", str(out), ok=False)
        assert proc.returncode != 0, f"expected failure for {args}"
        assert needle in proc.stderr, f"{needle!r} not in:\n{proc.stderr}"
        assert out.read_text() == "previous contents\n"  # untouched

    good = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    bad_line = tmp_path / "bad.jsonl"
    bad_line.write_text(json.dumps(good) + "\n{not json\n")
    fails(["--model", model, "--input", str(bad_line)], "bad.jsonl:2: malformed JSON")
    no_role = write_jsonl(tmp_path / "norole.jsonl", [good, {"messages": [{"content": "x"}]}])
    fails(["--model", model, "--input", no_role], "norole.jsonl:2: key 'messages': message 0 has no 'role'")
    no_key = write_jsonl(tmp_path / "nokey.jsonl", [{"conversation": []}])
    fails(["--model", model, "--input", no_key], "nokey.jsonl:1: key 'messages': missing")
    text_row = write_jsonl(tmp_path / "text.jsonl", [{"messages": "just text"}])
    fails(["--model", model, "--input", text_row], "text.jsonl:1: key 'messages': is a string")
    fails(["--model", model, "--input", str(tmp_path / "missing.jsonl")],
          "missing.jsonl: dataset file does not exist")
    fails(["--model", str(tmp_path / "nomodel"), "--input", no_role], "model directory does not exist")
    # A template that rewrites earlier turns (like Qwen3's reasoning) has no exact mask.
    unstable = with_template(model, tmp_path, "unstable",
                             "{%- for m in messages %}<|im_start|>{{ m.role }}\n"
                             "{%- if m.role == 'assistant' and loop.last %}<think></think>{% endif %}"
                             "{{ m.content }}<|im_end|>\n{%- endfor %}"
                             "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    two = write_jsonl(tmp_path / "two.jsonl", [{"messages": good["messages"] * 2}])
    fails(["--model", unstable, "--input", two], "two.jsonl:1: chat template is not prefix-stable")
    raising = with_template(model, tmp_path, "raising",
                            "{{ raise_exception('only one turn please') }}")
    fails(["--model", raising, "--input", two], "only one turn please")
    no_template = with_template(model, tmp_path, "none", None)
    fails(["--model", no_template, "--input", two], "has no chat_template")

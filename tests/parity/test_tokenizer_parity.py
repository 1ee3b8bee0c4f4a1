"""Tokenizer parity with HuggingFace `tokenizers` (the oracle).

Byte-level BPE tokenizers are trained here with `tokenizers` in the Qwen2/3 layout (NFC +
Split(regex, Isolated) + ByteLevel) and the Llama-3 layout (no normalizer, ignore_merges),
with added/special tokens (some with lstrip/rstrip), and saved both with merges as pairs
and as legacy "a b" strings. anvil must produce identical ids for every test string and
decode(encode(x)) == the oracle's decode.
"""

import json
import os
import random
import subprocess

import pytest
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from tokenizers import AddedToken

ANVIL = os.environ.get("ANVIL_BIN", "anvil")
QWEN_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
           r"|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
             r"|\s*[\r\n]+|\s+(?!\S)|\s+")

WORDS = ["the", "quick", "brown", "fox", "don't", "I'm", "we'll", "they're", "it's", "you've",
         "HELLO", "World", "naïve", "café", "Straße", "über", "日本語", "中文字符", "한국어",
         "русский", "العربية", "emoji", "🙂", "👨‍👩‍👧", "🇫🇷", "x²", "½", "123", "4567", "3.14",
         "foo_bar", "a+b=c", "(x)", "{}", "<tag>", "\\n", "e\u0301", "n\u0303", "A\u030a",
         "\u00e9", "\t", "  ", "\n\n", "\r\n", "...", "--", "'", '"', "0x1F", "#include"]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def corpus(seed):
    rng = random.Random(seed)
    lines = []
    for _ in range(3000):
        n = rng.randint(1, 12)
        lines.append(" ".join(rng.choice(WORDS) for _ in range(n)))
    return lines


def make_strings(seed=0, n=1200):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        kind = i % 6
        if kind == 0:  # words and separators
            s = "".join(rng.choice(WORDS) + rng.choice([" ", "", "  ", "\n", "\t", ", "])
                        for _ in range(rng.randint(1, 10)))
        elif kind == 1:  # random code points incl. CJK, emoji, combining marks
            s = "".join(chr(rng.choice([rng.randint(32, 126), rng.randint(0x4E00, 0x4FFF),
                                        rng.randint(0x1F300, 0x1F64F), rng.randint(0x300, 0x36F),
                                        rng.randint(0xA0, 0x24F), 0x200D, 0xFE0F]))
                        for _ in range(rng.randint(1, 20)))
        elif kind == 2:  # whitespace and newline runs
            s = "".join(rng.choice([" ", "\n", "\t", "\r\n", "a", "b ", "  x"])
                        for _ in range(rng.randint(1, 15)))
        elif kind == 3:  # digits and arithmetic
            s = " ".join(str(rng.randint(0, 10 ** rng.randint(1, 9))) + rng.choice(["+", "-", "*", "=", ""])
                         for _ in range(rng.randint(1, 6)))
        elif kind == 4:  # specials embedded in text
            s = "".join(rng.choice(WORDS + SPECIALS + [" <|im_end|> ", "<|im_start|>user\n"])
                        for _ in range(rng.randint(1, 8)))
        else:  # contractions and mixed case
            s = " ".join(rng.choice(["Don't", "DON'T", "I'LL", "she'd", "We'Re", "o'clock"])
                         for _ in range(rng.randint(1, 5)))
        out.append(s)
    return out


def build(style, merges_as_strings, tmp_path):
    tok = Tokenizer(models.BPE(ignore_merges=(style == "llama3")))
    if style == "qwen":
        tok.normalizer = normalizers.NFC()
        regex = QWEN_RE
    else:
        regex = LLAMA3_RE
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=700, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=[])
    tok.train_from_iterator(corpus(1), trainer)
    tok.add_special_tokens([AddedToken(s, normalized=False) for s in SPECIALS])
    tok.add_tokens([AddedToken("<think>", lstrip=True, normalized=False),
                    AddedToken("</think>", rstrip=True, normalized=False)])
    path = tmp_path / f"{style}-{'str' if merges_as_strings else 'pair'}.json"
    j = json.loads(tok.to_str())
    if merges_as_strings:
        j["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m for m in j["model"]["merges"]]
    path.write_text(json.dumps(j))
    return Tokenizer.from_file(str(path)), path


def anvil_tokenize(tok_path, strings, tmp_path):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text("".join(json.dumps({"text": s}) + "\n" for s in strings))
    proc = subprocess.run([ANVIL, "tokenize", "--tokenizer", str(tok_path), "--input", str(inp),
                           "--output", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in out.read_text().splitlines()]


@pytest.mark.parametrize("style,merges_as_strings", [("qwen", False), ("qwen", True), ("llama3", False)])
def test_ids_and_round_trip_match_hf(tmp_path, style, merges_as_strings):
    hf, path = build(style, merges_as_strings, tmp_path)
    strings = make_strings(seed={"qwen": 1, "llama3": 2}[style])
    ours = anvil_tokenize(path, strings, tmp_path)
    assert len(ours) == len(strings) >= 1000
    mismatches = []
    for s, o in zip(strings, ours):
        ids = hf.encode(s, add_special_tokens=False).ids
        if o["ids"] != ids:
            mismatches.append((s, ids, o["ids"]))
        assert o["decoded"] == hf.decode(ids, skip_special_tokens=False)
    assert not mismatches, f"{len(mismatches)} mismatches, first: {mismatches[:3]}"
    # Byte-level BPE is lossless on valid UTF-8 once NFC is accounted for.
    for s, o in zip(strings, ours):
        expect = hf.normalizer.normalize_str(s) if hf.normalizer else s
        if "<think>" not in s and "</think>" not in s:
            assert o["decoded"] == expect


def test_anvil_trained_tokenizer_loads_in_hf(tmp_path):
    path = tmp_path / "builtin.json"
    proc = subprocess.run([ANVIL, "tokenize", "--train-builtin", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    hf = Tokenizer.from_file(str(path))
    strings = make_strings(seed=5, n=300)
    ours = anvil_tokenize(path, strings, tmp_path)
    for s, o in zip(strings, ours):
        assert o["ids"] == hf.encode(s, add_special_tokens=False).ids, s


def test_bad_tokenizer_files_are_clear_errors(tmp_path):
    hf, path = build("qwen", False, tmp_path)
    j = json.loads(path.read_text())
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"text": "hi"}\n')
    cases = {
        "unknown_pre": (lambda j: j["pre_tokenizer"].update(type="Metaspace"), "Metaspace"),
        "bad_merge": (lambda j: j["model"]["merges"].append(["zzz", "qqq"]), "merges"),
        "wordpiece": (lambda j: j["model"].update(type="WordPiece"), "BPE"),
    }
    for name, (mutate, needle) in cases.items():
        bad = json.loads(json.dumps(j))
        mutate(bad)
        p = tmp_path / f"{name}.json"
        p.write_text(json.dumps(bad))
        proc = subprocess.run([ANVIL, "tokenize", "--tokenizer", str(p), "--input", str(inp),
                               "--output", str(tmp_path / "o.jsonl")], capture_output=True, text=True)
        assert proc.returncode == 1 and needle in proc.stderr and p.name in proc.stderr, proc.stderr
    p = tmp_path / "trunc.json"
    p.write_text(path.read_text()[:500])
    proc = subprocess.run([ANVIL, "tokenize", "--tokenizer", str(p), "--input", str(inp),
                           "--output", str(tmp_path / "o.jsonl")], capture_output=True, text=True)
    assert proc.returncode == 1 and "malformed JSON" in proc.stderr
    assert not (tmp_path / "o.jsonl").exists()

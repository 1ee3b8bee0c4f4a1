#!/usr/bin/env python3
"""SFT data throughput (conversations/s) of anvil vs transformers, one thread each.

Generates a seeded JSONL of N conversations (default 100k; system prompt or not, 1-4 user /
assistant exchanges, mixed English, code, numbers and unicode) and a model directory with
`anvil init-model` (ChatML chat template, its byte-level BPE tokenizer). Then times:
  anvil         bench/data_bench: read + validate the JSONL, render the chat template,
                tokenise, and build the token-exact loss mask (every turn rendered as a
                prefix as well, see rollout/data/conversation.hpp)
  transformers  json.loads + apply_chat_template(tokenize=True) with the fast tokenizer
                (no mask), and the same with return_assistant_tokens_mask=True on the
                template annotated with {% generation %} (the mask, like for like)
Prints samples/s and the ratios anvil / transformers.

    .venv/bin/python bench/data_bench.py [--n 100000] [--build build]
"""
import argparse
import json
import os
import random
import subprocess
import tempfile
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAYON_NUM_THREADS", "1")

from transformers import AutoTokenizer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = ("the quick brown fox jumps over a lazy dog while we compute 12 + 30 = 42 and print "
         "def main(): return x * 2 héllo naïve 数学 🙂 Sure! Let me explain step by step "
         "first second third because therefore").split()
GENERATION_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}{% generation %}{{- message['content'] + '<|im_end|>' }}"
    "{% endgeneration %}{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
)


def text(rng, lo, hi):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def write_conversations(path, n, seed=0):
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n):
            msgs = []
            if rng.random() < 0.5:
                msgs.append({"role": "system", "content": text(rng, 3, 12)})
            for _ in range(rng.randint(1, 4)):
                msgs.append({"role": "user", "content": text(rng, 4, 40)})
                msgs.append({"role": "assistant", "content": text(rng, 8, 80)})
            f.write(json.dumps({"messages": msgs}, ensure_ascii=False) + "\n")


def python_side(model_dir, path, template=None):
    tok = AutoTokenizer.from_pretrained(model_dir)
    t0 = time.perf_counter()
    samples = tokens = 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            msgs = json.loads(line)["messages"]
            if template is None:
                ids = tok.apply_chat_template(msgs, tokenize=True, return_dict=True)["input_ids"]
            else:
                out = tok.apply_chat_template(msgs, chat_template=template, tokenize=True,
                                              return_dict=True, return_assistant_tokens_mask=True)
                ids = out["input_ids"]
            samples += 1
            tokens += len(ids)
    return samples, tokens, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100000)
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    a = ap.parse_args()
    anvil = os.path.join(a.build, "launcher", "anvil")
    bench = os.path.join(a.build, "bench", "data_bench")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = os.path.join(tmp, "model")
        subprocess.run([anvil, "init-model", "--arch", "qwen3", "--preset", "tiny", "--out",
                        model_dir], check=True, capture_output=True)
        data = os.path.join(tmp, "conversations.jsonl")
        write_conversations(data, a.n)
        size_mb = os.path.getsize(data) / 1e6
        out = subprocess.run([bench, model_dir, data], check=True, capture_output=True,
                             text=True).stdout
        ours = json.loads(out)
        n1, tok1, t1 = python_side(model_dir, data)
        n2, tok2, t2 = python_side(model_dir, data, GENERATION_TEMPLATE)
    assert n1 == n2 == ours["samples"] == a.n, (n1, n2, ours["samples"])
    assert tok1 == tok2 == ours["tokens"], (tok1, tok2, ours["tokens"])  # same token count
    anvil_rate = ours["samples_per_s"]
    print(f"SFT data path, {a.n} conversations ({size_mb:.0f} MB, {ours['tokens']} tokens), "
          "1 thread")
    print(f"  anvil (load {ours['load_s']:.2f} s + template/tokenise/mask "
          f"{ours['tokenize_s']:.2f} s)   {anvil_rate:9.0f} samples/s")
    print(f"  transformers apply_chat_template           {n1 / t1:9.0f} samples/s"
          f"   ratio {anvil_rate / (n1 / t1):.2f}")
    print(f"  transformers ... + assistant mask          {n2 / t2:9.0f} samples/s"
          f"   ratio {anvil_rate / (n2 / t2):.2f}")


if __name__ == "__main__":
    main()

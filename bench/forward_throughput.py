#!/usr/bin/env python3
"""Forward throughput (tokens/s) of anvil vs PyTorch + transformers on CPU.

Same model (an `anvil init-model` directory), same tokens (B sequences of L tokens; anvil
packs them into one row, transformers takes the [B, L] batch, no padding needed), same
thread count. Prints medians and the ratio anvil / transformers.

    .venv/bin/python bench/forward_throughput.py [--preset small] [--batch 8] [--seq-len 128]
"""
import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time

import torch
from transformers import AutoModelForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ANVIL = os.path.join(ROOT, "build", "launcher", "anvil")
BENCH = os.path.join(ROOT, "build", "bench", "forward_bench")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small")
    ap.add_argument("--arch", default="qwen3")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--iters", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="float32")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = os.path.join(tmp, "model")
        subprocess.run([ANVIL, "init-model", "--arch", a.arch, "--preset", a.preset,
                        "--out", model_dir], check=True, capture_output=True)
        out = subprocess.run([BENCH, model_dir, str(a.batch), str(a.seq_len), str(a.iters),
                              str(a.threads), a.dtype], check=True, capture_output=True,
                             text=True).stdout
        ours = json.loads(out)["tokens_per_s_median"]

        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[a.dtype]
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()
        ids = torch.randint(0, model.config.vocab_size, (a.batch, a.seq_len))
        times = []
        with torch.no_grad():
            for i in range(a.iters + 1):
                t0 = time.perf_counter()
                model(input_ids=ids, use_cache=False).logits.sum().item()
                if i > 0:
                    times.append(time.perf_counter() - t0)
        theirs = a.batch * a.seq_len / statistics.median(times)
    print(f"forward {a.arch}-{a.preset} {a.dtype} batch={a.batch} len={a.seq_len} "
          f"threads={a.threads}")
    print(f"  anvil        {ours:10.0f} tokens/s")
    print(f"  transformers {theirs:10.0f} tokens/s")
    print(f"  ratio anvil/transformers = {ours / theirs:.2f}")


if __name__ == "__main__":
    main()

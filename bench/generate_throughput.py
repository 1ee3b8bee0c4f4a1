#!/usr/bin/env python3
"""Generation throughput (output tokens/s) of anvil's rollout engine vs transformers
`generate` on CPU: same model directory, same random prompts shape, same threads, greedy,
EOS ignored, prefill included. Prints medians and the ratio anvil / transformers.

    .venv/bin/python bench/generate_throughput.py [--build build] [--preset small]
        [--batch 1 64] [--prompt-len 32] [--new-tokens 64]
"""
import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time

import torch
from transformers import AutoModelForCausalLM, GenerationConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--preset", default="small")
    ap.add_argument("--arch", default="qwen3")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="float32")
    a = ap.parse_args()
    anvil = os.path.join(a.build, "launcher", "anvil")
    bench = os.path.join(a.build, "bench", "generate_bench")
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = os.path.join(tmp, "model")
        subprocess.run([anvil, "init-model", "--arch", a.arch, "--preset", a.preset,
                        "--out", model_dir], check=True, capture_output=True)
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[a.dtype]
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()
        cfg = GenerationConfig(max_new_tokens=a.new_tokens, do_sample=False, eos_token_id=None,
                               pad_token_id=0)
        print(f"generate {a.arch}-{a.preset} {a.dtype} prompt={a.prompt_len} "
              f"new={a.new_tokens} threads={a.threads} (output tokens/s, median of {a.iters})")
        for batch in a.batch:
            out = subprocess.run([bench, model_dir, str(batch), str(a.prompt_len),
                                  str(a.new_tokens), str(a.iters), str(a.threads), a.dtype],
                                 check=True, capture_output=True, text=True).stdout
            ours = json.loads(out)["output_tokens_per_s_median"]
            g = torch.Generator().manual_seed(1)
            ids = torch.randint(0, model.config.vocab_size, (batch, a.prompt_len), generator=g)
            rates = []
            with torch.no_grad():
                for i in range(a.iters + 1):
                    t0 = time.perf_counter()
                    res = model.generate(ids, attention_mask=torch.ones_like(ids),
                                         generation_config=cfg)
                    dt = time.perf_counter() - t0
                    produced = (res.shape[1] - a.prompt_len) * batch
                    if i > 0:
                        rates.append(produced / dt)
            theirs = statistics.median(rates)
            print(f"  batch {batch:3d}: anvil {ours:9.1f}  transformers {theirs:9.1f}  "
                  f"ratio {ours / theirs:.2f}")


if __name__ == "__main__":
    main()

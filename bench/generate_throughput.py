#!/usr/bin/env python3
"""Generation throughput (output tokens/s) of anvil's rollout engine vs transformers
`generate`: same model directory, same random prompts shape, same threads, greedy,
EOS ignored, prefill included. Prints medians and the ratio anvil / transformers. With
`--device cuda` it also measures the GPU's copy bandwidth and prints each rate against the
decode roofline (batch x bandwidth / bytes of weights read per step; prefill ignored, so
the roofline is generous).

    .venv/bin/python bench/generate_throughput.py [--build build] [--preset small]
        [--batch 1 64] [--prompt-len 32] [--new-tokens 64] [--device cpu|cuda]
    e.g. on a GPU: --preset qwen3-0.6b --dtype bfloat16 --device cuda --new-tokens 256
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
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--anvil", help="anvil binary (default BUILD/launcher/anvil)")
    ap.add_argument("--bench", help="generate_bench binary (default BUILD/bench/generate_bench)")
    a = ap.parse_args()
    anvil = a.anvil or os.path.join(a.build, "launcher", "anvil")
    bench = a.bench or os.path.join(a.build, "bench", "generate_bench")
    cuda = a.device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    bandwidth = copy_bandwidth() if cuda else None
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = os.path.join(tmp, "model")
        subprocess.run([anvil, "init-model", "--arch", a.arch, "--preset", a.preset,
                        "--out", model_dir], check=True, capture_output=True)
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[a.dtype]
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval().to(a.device)
        weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        cfg = GenerationConfig(max_new_tokens=a.new_tokens, do_sample=False, eos_token_id=None,
                               pad_token_id=0)
        print(f"generate {a.arch}-{a.preset} {a.dtype} on {a.device} prompt={a.prompt_len} "
              f"new={a.new_tokens} threads={a.threads} (output tokens/s, median of {a.iters})")
        if cuda:
            print(f"  copy bandwidth {bandwidth / 1e12:.2f} TB/s, weights {weight_bytes / 1e9:.3f} GB")
        for batch in a.batch:
            out = subprocess.run([bench, model_dir, str(batch), str(a.prompt_len),
                                  str(a.new_tokens), str(a.iters), str(a.threads), a.dtype,
                                  a.device],
                                 check=True, capture_output=True, text=True).stdout
            ours = json.loads(out)["output_tokens_per_s_median"]
            g = torch.Generator().manual_seed(1)
            ids = torch.randint(0, model.config.vocab_size, (batch, a.prompt_len),
                                generator=g).to(a.device)
            rates = []
            with torch.no_grad():
                for i in range(a.iters + 1):
                    sync()
                    t0 = time.perf_counter()
                    res = model.generate(ids, attention_mask=torch.ones_like(ids),
                                         generation_config=cfg)
                    sync()
                    dt = time.perf_counter() - t0
                    produced = (res.shape[1] - a.prompt_len) * batch
                    if i > 0:
                        rates.append(produced / dt)
            theirs = statistics.median(rates)
            line = (f"  batch {batch:3d}: anvil {ours:9.1f}  transformers {theirs:9.1f}  "
                    f"ratio {ours / theirs:.2f}")
            if cuda:
                roof = batch * bandwidth / weight_bytes
                line += (f"  roofline {roof:9.1f}: anvil {100 * ours / roof:.1f}%, "
                         f"transformers {100 * theirs / roof:.1f}%")
            print(line)


def copy_bandwidth():
    """Device-to-device copy rate, bytes read + written per second (median of 10)."""
    x = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    rates = []
    for i in range(11):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        y.copy_(x)
        torch.cuda.synchronize()
        if i > 0:
            rates.append(2 * x.numel() / (time.perf_counter() - t0))
    return statistics.median(rates)


if __name__ == "__main__":
    main()

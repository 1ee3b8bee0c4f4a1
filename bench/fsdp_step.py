#!/usr/bin/env python3
"""FSDP training step on CPU: one process vs W ranks over Gloo on localhost, same model,
same global batch, same total threads (W = 1 uses T threads; each of W ranks uses T / W).
Prints step time, global tokens/s and the ratio (W ranks / one process).

    .venv/bin/python bench/fsdp_step.py [--world 2] [--batch 8] [--seq-len 256] [--threads 2]
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("ANVIL_BUILD", os.path.join(ROOT, "build"))
ANVIL = os.environ.get("ANVIL_BIN", os.path.join(BUILD, "launcher", "anvil"))
BENCH = os.path.join(BUILD, "bench", "train_bench")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small")
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--micro-batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = os.path.join(tmp, "model")
        if os.path.exists(ANVIL):
            subprocess.run([ANVIL, "init-model", "--arch", "qwen3", "--preset", a.preset,
                            "--out", model], check=True, capture_output=True)
        else:  # a compute-only build (GPU machines): the same shape through transformers
            import torch
            from transformers import Qwen3Config, Qwen3ForCausalLM
            sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
            from train_step import SHAPES
            torch.manual_seed(0)
            Qwen3ForCausalLM(Qwen3Config(**SHAPES[f"qwen3-{a.preset}"])).save_pretrained(model)
        base = [BENCH, model, str(a.batch), str(a.seq_len), str(a.steps)]
        one = json.loads(subprocess.run(base[:5] + [str(a.threads), "float32", "cpu", "0",
                                                     str(a.micro_batch)],
                                        check=True, capture_output=True, text=True).stdout)
        port = free_port()
        per = max(1, a.threads // a.world)
        procs = [subprocess.Popen(base + [str(per), "float32", "cpu", "0", str(a.micro_batch),
                                          str(a.world), str(r), str(port)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for r in range(a.world)]
        outs = [p.communicate() for p in procs]
        for p, (so, se) in zip(procs, outs):
            if p.returncode != 0:
                raise SystemExit(se)
        ranks = [json.loads(so) for so, _ in outs]
        step = max(r["step_s_median"] for r in ranks)
    tokens = a.batch * a.seq_len
    print(f"fsdp step qwen3-{a.preset} fp32 cpu batch={a.batch} len={a.seq_len} "
          f"micro-batch={a.micro_batch} total threads={a.threads}")
    print(f"  1 process   step {one['step_s_median']:.3f} s  {one['tokens_per_s']:8.0f} tokens/s  "
          f"peak RSS {one['peak_rss_bytes'] / 2**30:.2f} GiB")
    print(f"  {a.world} ranks     step {step:.3f} s  {tokens / step:8.0f} tokens/s  "
          f"peak RSS/rank {max(r['peak_rss_bytes'] for r in ranks) / 2**30:.2f} GiB")
    print(f"  ratio {a.world} ranks / 1 process = {one['step_s_median'] / step:.2f}")


if __name__ == "__main__":
    main()

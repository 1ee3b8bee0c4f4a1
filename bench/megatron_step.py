#!/usr/bin/env python3
"""Megatron-style training step on CPU: TP=1 (one process) vs TP=2 and PP=2 (two ranks over
Gloo on localhost), same model, same rollout, same total threads (TP=1 uses T threads; each
rank of a 2-rank group uses T / 2). The plain single-process train::Trainer is the baseline
peer. Prints the median step time, tokens/s and the ratios.

    .venv/bin/python bench/megatron_step.py [--preset small] [--batch 8] [--seq-len 256]
                                            [--threads 2] [--tp 2] [--pp 2]
"""
import argparse
import json
import os
import socket
import subprocess
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("ANVIL_BUILD", os.path.join(ROOT, "build"))
ANVIL = os.environ.get("ANVIL_BIN", os.path.join(BUILD, "launcher", "anvil"))
BENCH = os.path.join(BUILD, "bench", "megatron_bench")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# A loaded machine (more runnable threads than cores) makes OpenMP's spinning workers
# collapse a 2-thread step by 20x; passive waiting keeps the comparison about the engine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def run(model, a, world, tp, threads, pp=1):
    port = free_port()
    ranks = max(world, 1)
    procs = [subprocess.Popen([BENCH, model, str(a.batch), str(a.seq_len), str(a.steps),
                               str(threads), str(a.micro_batch), str(world), str(r), str(port),
                               str(tp), str(pp)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in range(ranks)]
    outs = [p.communicate() for p in procs]
    for p, (so, se) in zip(procs, outs):
        if p.returncode != 0:
            raise SystemExit(se)
    return max(json.loads(so)["step_s_median"] for so, _ in outs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--micro-batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tp", type=int, default=2)
    ap.add_argument("--pp", type=int, default=2)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = os.path.join(tmp, "model")
        subprocess.run([ANVIL, "init-model", "--arch", "qwen3", "--preset", a.preset,
                        "--out", model], check=True, capture_output=True)
        plain = run(model, a, 0, 1, a.threads)
        tp1 = run(model, a, 1, 1, a.threads)
        tpn = run(model, a, a.tp, a.tp, max(1, a.threads // a.tp))
        ppn = run(model, a, a.pp, 1, max(1, a.threads // a.pp), a.pp)
    tokens = a.batch * a.seq_len
    print(f"megatron step qwen3-{a.preset} fp32 cpu batch={a.batch} len={a.seq_len} "
          f"micro-batch={a.micro_batch} total threads={a.threads} (GRPO rollout in one "
          f"optimizer step; old log-probs from its own forward)")
    print(f"  train::Trainer (peer)   step {plain:.3f} s  {tokens / plain:8.0f} tokens/s")
    print(f"  megatron TP=1           step {tp1:.3f} s  {tokens / tp1:8.0f} tokens/s")
    print(f"  megatron TP={a.tp}           step {tpn:.3f} s  {tokens / tpn:8.0f} tokens/s")
    print(f"  megatron PP={a.pp}           step {ppn:.3f} s  {tokens / ppn:8.0f} tokens/s")
    print(f"  ratio TP=1 / Trainer step time = {tp1 / plain:.2f}")
    print(f"  ratio TP=1 / TP={a.tp} step time = {tp1 / tpn:.2f}")
    print(f"  ratio TP=1 / PP={a.pp} step time = {tp1 / ppn:.2f}")


if __name__ == "__main__":
    main()

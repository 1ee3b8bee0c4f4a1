#!/usr/bin/env python3
"""Metrics sink throughput: anvil's MetricsHub vs the Python peers, per-step flush each.

Logs --steps steps of --scalars scalars (names group<k%4>/metric_<k>), flushing after
every step as a training loop does so that a crash loses nothing:
  TensorBoard  anvil bench/metrics_bench --sink tensorboard (hand-encoded Events, TFRecord)
               vs torch.utils.tensorboard.SummaryWriter.add_scalar + flush()
               (and, for reference, SummaryWriter left to flush in its background thread)
  JSONL        anvil --sink jsonl vs json.dumps + write + flush
Prints the median seconds over --repeats runs, steps/s and the ratio (peer time / anvil
time: above 1 means anvil is faster).

    .venv/bin/python bench/metrics_bench.py [--steps 2000] [--scalars 20] [--build build]
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def names(scalars):
    return [f"group{k % 4}/metric_{k}" for k in range(scalars)]


def peer_tensorboard(out, steps, scalars, flush=True):
    from torch.utils.tensorboard import SummaryWriter

    tags = names(scalars)
    t0 = time.perf_counter()
    w = SummaryWriter(out)
    for s in range(steps):
        for k, tag in enumerate(tags):
            w.add_scalar(tag, 1.0 / (s + k + 1), s)
        if flush:
            w.flush()
    w.close()
    return time.perf_counter() - t0


def peer_tensorboard_batched(out, steps, scalars):
    return peer_tensorboard(out, steps, scalars, flush=False)


def peer_jsonl(out, steps, scalars):
    tags = names(scalars)
    os.makedirs(out, exist_ok=True)
    t0 = time.perf_counter()
    with open(os.path.join(out, "metrics.jsonl"), "a") as f:
        for s in range(steps):
            line = {tag: 1.0 / (s + k + 1) for k, tag in enumerate(tags)}
            line["step"] = s
            f.write(json.dumps(line, sort_keys=True) + "\n")
            f.flush()
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--scalars", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    a = ap.parse_args()
    tool = os.path.join(a.build, "bench", "metrics_bench")
    d = tempfile.mkdtemp(prefix="anvil_metrics_bench_")
    try:
        print(f"{a.steps} steps x {a.scalars} scalars, flushed per step; median of {a.repeats}")
        for sink, peer_name, peer in (
                ("tensorboard", "torch SummaryWriter", peer_tensorboard),
                ("tensorboard", "SummaryWriter, flushed only at close", peer_tensorboard_batched),
                ("jsonl", "python json", peer_jsonl)):
            out = subprocess.run([tool, "--sink", sink, "--dir", d, "--steps", str(a.steps),
                                  "--scalars", str(a.scalars), "--repeats", str(a.repeats)],
                                 check=True, capture_output=True, text=True).stdout
            anvil_s = statistics.median(json.loads(out.strip().splitlines()[-1])["seconds"])
            peer_s = statistics.median(
                peer(os.path.join(d, f"peer_{sink}_{r}"), a.steps, a.scalars)
                for r in range(a.repeats))
            print(f"{sink:12s} anvil {anvil_s * 1e3:8.1f} ms ({a.steps / anvil_s:9.0f} steps/s)"
                  f"   {peer_name} {peer_s * 1e3:8.1f} ms ({a.steps / peer_s:9.0f} steps/s)"
                  f"   ratio {peer_s / anvil_s:.2f}x")
    finally:
        shutil.rmtree(d)


if __name__ == "__main__":
    main()

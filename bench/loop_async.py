#!/usr/bin/env python3
"""Step time of the RL loop: `anvil train` (synchronous: generate, then train, then push the
weights) vs `anvil train-async` (one-step-off: rollout k+1 is generated while rollout k
trains), on the same generation-bound tiny configuration, every role in one process (CPU).

The peer here is anvil's own synchronous loop; async can at best hide the shorter of the
two phases (step = max(generate, train) + sync instead of their sum). A step is taken from
the metrics the head logs (--metrics-jsonl): `time/step` of each rollout (for async: from
when training waits for rollout k to the end of its weight push). The first `--warmup`
rollouts are skipped; the figures are medians of the rest. Also printed: the median
generation and training time per rollout of each mode and the measured overlap.

    .venv/bin/python bench/loop_async.py                 # tiny preset, P=8, G=4, L=64
    .venv/bin/python bench/loop_async.py --rollouts 10 --response-len 128 --threads 1
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def anvil_bin(args):
    if args.anvil:
        return args.anvil
    for d in ("build-loop", "build"):
        p = os.path.join(ROOT, d, "launcher", "anvil")
        if os.path.exists(p):
            return p
    sys.exit("no anvil binary: pass --anvil PATH")


def per_rollout(path):
    """rollout id -> the first record of that rollout (times are per rollout)."""
    out = {}
    for line in open(path):
        m = json.loads(line)
        out.setdefault(m["rollout"], m)
    return [out[k] for k in sorted(out)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--anvil", default="")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--rollouts", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--response-len", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="OMP threads of the process")
    args = ap.parse_args()
    anvil = anvil_bin(args)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "ANVIL_LOG_LEVEL": "warn"}
    with tempfile.TemporaryDirectory() as d:
        model = os.path.join(d, "model")
        subprocess.run([anvil, "init-model", "--arch", "qwen3", "--preset", args.preset,
                        "--out", model, "--seed", "3"], check=True, env=env,
                       capture_output=True)
        data = os.path.join(d, "prompts.jsonl")
        with open(data, "w") as f:
            for i in range(args.prompts * (args.rollouts + 2)):
                f.write(json.dumps({"prompt": f"count from {i} to {i + 20}:",
                                    "label": str(i)}) + "\n")
        common = ["--model", model, "--prompt-data", data, "--input-key", "prompt",
                  "--label-key", "label", "--rm-type", "exact_match",
                  "--rollout-batch-size", str(args.prompts),
                  "--n-samples-per-prompt", str(args.group),
                  "--rollout-max-response-len", str(args.response_len),
                  "--global-batch-size", str(args.prompts * args.group),
                  "--micro-batch-size", str(args.prompts * args.group),
                  "--lr", "1e-5", "--rollout-sampling-seed", "5",
                  "--num-rollout", str(args.rollouts)]
        results = {}
        for mode in ("train", "train-async"):
            metrics = os.path.join(d, f"{mode}.jsonl")
            p = subprocess.run([anvil, mode, *common, "--metrics-jsonl", metrics], env=env,
                               capture_output=True, text=True)
            if p.returncode != 0:
                sys.exit(f"anvil {mode} failed:\n{p.stderr}")
            rows = per_rollout(metrics)[args.warmup:]
            med = lambda k: statistics.median(r[k] for r in rows)  # noqa: E731
            results[mode] = {"step": med("time/step"), "rollout": med("time/rollout"),
                             "train": med("time/train"), "sync": med("time/sync"),
                             "tokens": med("rollout/response_tokens")}
    print(f"config: preset {args.preset}, {args.prompts} prompts x {args.group} samples, "
          f"<= {args.response_len} new tokens, {args.rollouts} rollouts ({args.warmup} warmup), "
          f"OMP threads {args.threads}")
    for mode, r in results.items():
        print(f"anvil {mode:<12} step {r['step']:.3f} s (median)  generate {r['rollout']:.3f} s  "
              f"train {r['train']:.3f} s  sync {r['sync']:.3f} s  response tokens {r['tokens']:.0f}")
    s, a = results["train"]["step"], results["train-async"]["step"]
    print(f"ratio sync/async step time: {s / a:.2f}x "
          f"(ideal for these phases: {s / (max(results['train']['rollout'], results['train']['train']) + results['train']['sync']):.2f}x)")


if __name__ == "__main__":
    main()

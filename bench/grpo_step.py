#!/usr/bin/env python3
"""Time per GRPO step: anvil (`anvil head --in-process`) vs TRL's GRPOTrainer, on CPU.

Same model (the HF directory `anvil init-model` writes), same prompts (the arithmetic task of
`anvil make-task`, rendered with the model's chat template on both sides), same group size,
prompts per step, response-length limit, learning rate, sampling temperature 1, no KL term
(TRL beta 0, anvil without --use-kl-loss), one optimizer step per batch of P x G samples run
as one micro-batch on both sides (TRL per_device_train_batch_size = anvil --micro-batch-size =
P x G; anvil's default of 1 sample per micro-batch costs it ~2x on the train side), and the
same number of intra-op threads. A step is generate + reward + train (+ anvil's weight
sync to its engine). A random model rarely emits its end token, so both sides generate close
to the limit; the mean response length of each side is printed beside its time.

The first `--warmup` steps are skipped; the printed figure is the median of the rest.
anvil's step time is the interval between consecutive "rollout k trained" log lines of the
head; TRL's is the interval between consecutive on_step_end callbacks. Each side runs in its
own process.

    .venv/bin/python bench/grpo_step.py                    # tiny preset, P=8, G=8, L=16
    .venv/bin/python bench/grpo_step.py --preset small --threads 2 --steps 8

TRL is not part of scripts/setup.sh: when `import trl` fails this script pip-installs it into
the running interpreter's environment with torch and transformers pinned to the versions
already installed (so nothing else changes).
"""
import argparse
import datetime
import importlib.metadata
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("ANVIL_BUILD", os.path.join(ROOT, "build"))
ANVIL = os.environ.get("ANVIL_BIN", os.path.join(BUILD, "launcher", "anvil"))


def ensure_trl():
    try:
        import trl  # noqa: F401
        return
    except ImportError:
        pass
    pins = []
    for pkg in ("torch", "transformers"):
        pins.append(f"{pkg}=={importlib.metadata.version(pkg)}")
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n".join(pins) + "\n")
        constraints = f.name
    print(f"installing trl (constraints: {', '.join(pins)})", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "trl", "-c", constraints],
                   check=True)
    os.unlink(constraints)


def anvil(*args, env=None):
    p = subprocess.run([ANVIL, *args], capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise SystemExit(f"anvil {' '.join(args)} failed ({p.returncode}):\n{p.stderr}")
    return p


def run_anvil(a, model, data, work):
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "ANVIL_LOG_LEVEL": "info"}
    report = os.path.join(work, "anvil_report.json")
    metrics = os.path.join(work, "anvil_metrics.jsonl")
    p = anvil("head", "--in-process", "--model", model, "--prompt-data", data,
              "--input-key", "prompt", "--label-key", "label", "--apply-chat-template",
              "--rollout-shuffle", "--num-epoch", "1000", "--rm-type", "exact_match",
              "--rollout-batch-size", str(a.prompts), "--n-samples-per-prompt", str(a.group),
              "--rollout-max-response-len", str(a.response_len),
              "--global-batch-size", str(a.prompts * a.group),
              "--micro-batch-size", str(a.prompts * a.group), "--lr", str(a.lr),
              "--advantage-estimator", "grpo", "--num-rollout", str(a.steps),
              "--report", report, "--metrics-jsonl", metrics, env=env)
    stamps = []
    for line in p.stderr.splitlines():
        m = re.match(r"\[(\d+):(\d+):(\d+\.\d+)\] \[head\] \[info\] rollout (\d+) trained", line)
        if m:
            h, mi, s = int(m.group(1)), int(m.group(2)), float(m.group(3))
            stamps.append(h * 3600 + mi * 60 + s)
    if len(stamps) != a.steps:
        raise SystemExit(f"anvil: found {len(stamps)} 'rollout k trained' lines, expected "
                         f"{a.steps}:\n{p.stderr[-3000:]}")
    steps = [t1 - t0 for t0, t1 in zip(stamps, stamps[1:])]
    steps = [d + 86400 if d < 0 else d for d in steps]  # past midnight
    rep = json.load(open(report))
    resp = []
    for r in rep["rollouts"]:
        st = r["train"][0]["steps"][0]
        resp.append(st["tokens"] / (a.prompts * a.group))
    return steps[a.warmup - 1:] if a.warmup >= 1 else steps, statistics.mean(resp)


TRL_CHILD = r"""
import json, statistics, sys, time
import torch
a = json.loads(sys.argv[1])
torch.set_num_threads(a["threads"])
torch.manual_seed(0)
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import GRPOConfig, GRPOTrainer

rows = [json.loads(l) for l in open(a["data"])]
ds = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}],
                         "label": r["label"]} for r in rows])
tok = AutoTokenizer.from_pretrained(a["model"])
model = AutoModelForCausalLM.from_pretrained(a["model"], dtype=torch.float32)

def exact_match(completions, label, **kw):
    return [1.0 if c[0]["content"].strip() == l.strip() else 0.0
            for c, l in zip(completions, label)]

stamps, lengths = [], []
class Clock(TrainerCallback):
    def on_step_end(self, args, state, control, **kw):
        stamps.append(time.perf_counter())
    def on_log(self, args, state, control, logs=None, **kw):
        if logs and "completions/mean_length" in logs:
            lengths.append(logs["completions/mean_length"])

cfg = GRPOConfig(output_dir=a["work"] + "/trl", use_cpu=True, report_to="none",
                 per_device_train_batch_size=a["prompts"] * a["group"],
                 num_generations=a["group"], max_completion_length=a["response_len"],
                 learning_rate=a["lr"], beta=0.0, temperature=1.0, max_steps=a["steps"],
                 logging_steps=1, save_strategy="no", lr_scheduler_type="constant",
                 warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, seed=0,
                 dataloader_num_workers=0, disable_dropout=True)
trainer = GRPOTrainer(model=model, reward_funcs=exact_match, args=cfg, train_dataset=ds,
                      processing_class=tok, callbacks=[Clock()])
t0 = time.perf_counter()
trainer.train()
print(json.dumps({"t0": t0, "stamps": stamps, "lengths": lengths}))
"""


def run_trl(a, model, data, work):
    args = {"threads": a.threads, "data": data, "model": model, "work": work,
            "prompts": a.prompts, "group": a.group, "response_len": a.response_len,
            "lr": a.lr, "steps": a.steps}
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "CUDA_VISIBLE_DEVICES": "",
           "TOKENIZERS_PARALLELISM": "false"}
    p = subprocess.run([sys.executable, "-c", TRL_CHILD, json.dumps(args)], capture_output=True,
                       text=True, env=env)
    if p.returncode != 0:
        raise SystemExit(f"TRL run failed ({p.returncode}):\n{p.stderr[-5000:]}")
    out = json.loads(p.stdout.strip().splitlines()[-1])
    stamps = out["stamps"]
    if len(stamps) != a.steps:
        raise SystemExit(f"TRL: {len(stamps)} steps recorded, expected {a.steps}")
    steps = [t1 - t0 for t0, t1 in zip(stamps, stamps[1:])]
    length = statistics.mean(out["lengths"]) if out["lengths"] else float("nan")
    return steps[a.warmup - 1:] if a.warmup >= 1 else steps, length


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="tiny", help="anvil init-model preset")
    ap.add_argument("--prompts", type=int, default=8, help="prompts per step (P)")
    ap.add_argument("--group", type=int, default=8, help="samples per prompt (G)")
    ap.add_argument("--response-len", type=int, default=16, help="response token limit (L)")
    ap.add_argument("--steps", type=int, default=6, help="GRPO steps per side")
    ap.add_argument("--warmup", type=int, default=1, help="leading steps left out")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--only", choices=["anvil", "trl"], help="run one side")
    a = ap.parse_args()
    if a.steps < a.warmup + 2:
        raise SystemExit("--steps must exceed --warmup by at least 2")
    if a.only != "anvil":
        ensure_trl()
    with tempfile.TemporaryDirectory(prefix="anvil_grpo_bench_") as work:
        model = os.path.join(work, "model")
        anvil("init-model", "--arch", "qwen3", "--preset", a.preset, "--out", model,
              "--seed", "0")
        anvil("make-task", "arithmetic", "--out", os.path.join(work, "task"), "--seed", "0",
              "--train", "512", "--eval", "0", "--digits", "2", "--digits2", "1")
        data = os.path.join(work, "task", "train.jsonl")
        print(f"model: {a.preset} preset; P={a.prompts} prompts x G={a.group} samples per step, "
              f"response <= {a.response_len} tokens, {a.threads} threads, CPU, fp32; "
              f"median of steps {a.warmup + 1}..{a.steps}")
        res = {}
        if a.only != "trl":
            res["anvil"] = run_anvil(a, model, data, work)
        if a.only != "anvil":
            res["trl"] = run_trl(a, model, data, work)
        for name, (steps, length) in res.items():
            print(f"{name:>6}: {statistics.median(steps):8.3f} s/step  (steps "
                  f"{', '.join(f'{s:.2f}' for s in steps)}; mean response {length:.1f} tokens)")
        if len(res) == 2:
            ta, tt = statistics.median(res["anvil"][0]), statistics.median(res["trl"][0])
            print(f" ratio: TRL / anvil = {tt / ta:.2f}x  (anvil / TRL = {ta / tt:.3f})")


if __name__ == "__main__":
    main()

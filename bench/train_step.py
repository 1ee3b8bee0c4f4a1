#!/usr/bin/env python3
"""Training-step throughput and peak memory: anvil's Trainer vs PyTorch + transformers.

Same model directory, same batch (B sequences of L random tokens, loss on every next
token, per-token mean), same optimizer (AdamW lr 1e-5, betas 0.9/0.999, eps 1e-8, no weight
decay, global-norm clip 1.0), same threads, same gradient-checkpointing setting, each side in
its own process so peak memory is its own. The first step is warm-up; medians of the rest.

Precision. fp32: both sides fp32. bf16: anvil keeps bf16 parameters and gradients with fp32
master weights in AdamW; the peer keeps fp32 parameters under torch.autocast(bfloat16), which
is what transformers' Trainer does with --bf16. Both hold 16 bytes of state per parameter.

    .venv/bin/python bench/train_step.py                     # CPU, `small` preset, fp32
    python3 bench/train_step.py --shape qwen3-1.7b --device cuda --dtype bfloat16 \
        --batch 8 --seq-len 2048 --micro-batch 2             # GPU machine

Prints tokens/s, step time, peak memory, the ratio anvil / transformers, and on CUDA the
model-FLOPs utilisation (6 N + 12 layers * heads * head_dim * seq flops per token against the
H100's 989 TFLOPS dense bf16).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("ANVIL_BUILD", os.path.join(ROOT, "build"))
ANVIL = os.path.join(BUILD, "launcher", "anvil")
BENCH = os.path.join(BUILD, "bench", "train_bench")

SHAPES = {
    # `anvil init-model --preset small` (its tokenizer's 402-token vocabulary), for machines
    # without the full build.
    "qwen3-small": dict(vocab_size=402, hidden_size=256, intermediate_size=704,
                        num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
                        head_dim=32, max_position_embeddings=4096, rms_norm_eps=1e-6,
                        tie_word_embeddings=True, rope_theta=10000.0),
    # Qwen/Qwen3-1.7B's config.json shape (random weights).
    "qwen3-1.7b": dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144,
                       num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
                       head_dim=128, max_position_embeddings=40960, rms_norm_eps=1e-6,
                       tie_word_embeddings=True, rope_theta=1000000.0),
}
H100_BF16_DENSE = 989.4e12


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return -1


def peer(a):
    """PyTorch + transformers, in its own process; prints one JSON line."""
    import torch
    from transformers import AutoModelForCausalLM
    torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32).to(dev)
    model.config.use_cache = False
    model.train()
    if a.ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    autocast = a.dtype == "bfloat16"
    if a.fsdp:
        # PyTorch FSDP2 on a one-rank group: fully_shard per decoder layer and the root,
        # bf16 parameters for compute, fp32 gradient reduction, fp32 sharded master weights.
        import torch.distributed as dist
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo",
                                init_method=f"tcp://127.0.0.1:{a.port}", rank=0, world_size=1)
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if autocast else torch.float32,
                                  reduce_dtype=torch.float32)
        for layer in model.model.layers:
            fully_shard(layer, mp_policy=mp)
        fully_shard(model, mp_policy=mp)
        autocast = False
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=0.0)
    gen = torch.Generator().manual_seed(1234)
    vocab = model.config.vocab_size
    micro = a.micro_batch or a.batch
    times, loss_value = [], 0.0
    for step in range(a.steps + 1):
        ids = torch.randint(0, vocab, (a.batch, a.seq_len), generator=gen).to(dev)
        t0 = time.perf_counter()
        for mb in ids.split(micro):
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast):
                loss = model(input_ids=mb, labels=mb).loss
            (loss * (mb.shape[0] / a.batch)).backward()
            loss_value = loss.item()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        next(model.parameters()).sum().item()
        if step > 0:
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    out = {"step_s_median": med, "tokens_per_s": a.batch * a.seq_len / med, "loss": loss_value,
           "peak_rss_bytes": peak_rss()}
    if dev.type == "cuda":
        out["peak_device_bytes"] = torch.cuda.max_memory_allocated(dev)
    print(json.dumps(out))


def make_model(a, path):
    if a.shape:
        import torch
        from transformers import Qwen3Config, Qwen3ForCausalLM
        torch.manual_seed(0)
        cfg = Qwen3Config(**SHAPES[a.shape])
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            m = Qwen3ForCausalLM(cfg)
        if a.dtype == "bfloat16":
            m = m.to(torch.bfloat16)
        m.save_pretrained(path)
    else:
        subprocess.run([ANVIL, "init-model", "--arch", "qwen3", "--preset", a.preset, "--out", path],
                       check=True, capture_output=True)


def flops_per_token(model_dir, seq_len):
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    H, V, L = cfg["hidden_size"], cfg["vocab_size"], cfg["num_hidden_layers"]
    I, nq, nkv = cfg["intermediate_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    D = cfg.get("head_dim") or H // nq
    per_layer = H * nq * D + 2 * H * nkv * D + nq * D * H + 3 * H * I
    matmul_params = L * per_layer + V * H  # the output projection (tied or not)
    return 6 * matmul_params + 12 * L * nq * D * seq_len


def run_anvil(a, ckpt):
    cmd = [BENCH, a.model, str(a.batch), str(a.seq_len), str(a.steps), str(a.threads), a.dtype,
           a.device, "1" if ckpt else "0", str(a.micro_batch or a.batch)]
    if a.fsdp:
        cmd += ["1", "0", str(free_port())]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def run_peer(a, ckpt):
    cmd = [sys.executable, os.path.abspath(__file__), "--peer", "--model", a.model,
           "--batch", str(a.batch), "--seq-len", str(a.seq_len), "--steps", str(a.steps),
           "--threads", str(a.threads), "--dtype", a.dtype, "--device", a.device,
           "--micro-batch", str(a.micro_batch or a.batch)] + (["--ckpt"] if ckpt else []) + \
        (["--fsdp", "--port", str(free_port())] if a.fsdp else [])
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small")
    ap.add_argument("--shape", choices=sorted(SHAPES))
    ap.add_argument("--model")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--micro-batch", type=int, default=0)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--ckpt", action="store_true", help="(peer mode) gradient checkpointing")
    ap.add_argument("--fsdp", action="store_true",
                    help="both sides on their FSDP code path (one rank): anvil FsdpModel vs "
                         "PyTorch FSDP2 fully_shard with bf16 params / fp32 reduction")
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--peer", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--modes", default="off,on", help="gradient checkpointing modes to run")
    ap.add_argument("--json-out")
    a = ap.parse_args()
    if a.peer:
        return peer(a)
    with tempfile.TemporaryDirectory() as tmp:
        if not a.model:
            a.model = os.path.join(tmp, "model")
            make_model(a, a.model)
        fpt = flops_per_token(a.model, a.seq_len)
        name = a.shape or f"qwen3-{a.preset}"
        print(f"train step {name} {a.dtype} {a.device}{' FSDP (1 rank)' if a.fsdp else ''} batch={a.batch} len={a.seq_len} "
              f"micro-batch={a.micro_batch or a.batch} threads={a.threads} steps={a.steps}")
        results = []
        for mode in a.modes.split(","):
            ckpt = mode == "on"
            ours, theirs = run_anvil(a, ckpt), run_peer(a, ckpt)
            mem = "peak_device_bytes" if a.device.startswith("cuda") else "peak_rss_bytes"
            row = {"ckpt": ckpt, "anvil": ours, "transformers": theirs,
                   "ratio": ours["tokens_per_s"] / theirs["tokens_per_s"]}
            print(f"  gradient checkpointing {mode}:")
            for side, r in (("anvil", ours), ("transformers", theirs)):
                line = (f"    {side:13s} {r['tokens_per_s']:10.0f} tokens/s  step {r['step_s_median']:.3f} s"
                        f"  peak {r.get(mem, -1) / 2**30:6.2f} GiB  loss {r['loss']:.4f}")
                if a.device.startswith("cuda"):
                    mfu = r["tokens_per_s"] * fpt / H100_BF16_DENSE
                    r["mfu"] = mfu
                    line += f"  MFU {100 * mfu:.1f}%"
                print(line)
            print(f"    ratio anvil/transformers = {row['ratio']:.2f}")
            results.append(row)
        if a.json_out:
            json.dump(results, open(a.json_out, "w"), indent=1)


if __name__ == "__main__":
    main()

"""The rollout engine against its oracles, through `anvil generate` and `anvil serve`.

- Greedy generation equals transformers `generate` token for token (fp32) on tiny llama,
  qwen2 and qwen3 models, alone and as one batch through the server's continuous batching.
- True on-policy: sampled outputs' log-probs at temperature 0.7 equal `anvil score` (the
  trainer's log-prob path) on the same sequences within 1e-6 (fp32: the engine computes the
  same scaled fp32 logits; only the order of the KV computation differs).
- Weight update by disk equals a restart from the updated checkpoint.
"""

import json
import os
import subprocess
import tempfile

import pytest
import torch
from transformers import AutoModelForCausalLM, GenerationConfig

from serve_util import ANVIL, Server

torch.set_num_threads(2)


def run(*args):
    proc = subprocess.run([ANVIL, *args], capture_output=True, text=True)
    assert proc.returncode == 0, f"anvil {' '.join(args)} failed:\n{proc.stderr}"
    return proc.stdout


def init_model(out, arch, seed, override=None):
    args = ["init-model", "--arch", arch, "--preset", "tiny", "--out", out, "--seed", str(seed),
            "--force"]
    if override:
        args += ["--override", json.dumps(override)]
    run(*args)
    return out


def prompts(vocab, lengths, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in lengths]


def hf_greedy(model, ids, n):
    cfg = GenerationConfig(max_new_tokens=n, do_sample=False,
                           eos_token_id=None, pad_token_id=0)
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), generation_config=cfg)
    return out[0, len(ids):].tolist()


ARCHS = {
    "qwen3": ("qwen3", {}),
    "qwen2": ("qwen2", {"num_key_value_heads": 1}),
    "llama": ("llama", {"attention_bias": True, "tie_word_embeddings": True}),
}


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_greedy_equals_transformers_generate(tmp_path, name):
    arch, override = ARCHS[name]
    d = init_model(str(tmp_path / name), arch, seed=21, override=override)
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    # One prompt through `anvil generate`.
    out = json.loads(run("generate", "--model", d, "--prompt", "Hello, anvil: 12+34=",
                         "--max-new-tokens", "16", "--temperature", "0", "--ignore-eos",
                         "--json", "--threads", "2"))
    assert out["output_ids"] == hf_greedy(model, out["prompt_ids"], 16)
    # Several prompts at once through the server (continuous batching, chunked prefill).
    ps = prompts(model.config.vocab_size, [3, 17, 40, 9], seed=5)
    with Server(d, "--chunked-prefill-size", "24", "--page-size", "8") as srv:
        status, res = srv.post("/generate", {
            "input_ids": ps,
            "sampling_params": {"temperature": 0, "max_new_tokens": 20, "ignore_eos": True}})
        assert status == 200, res
    for p, r in zip(ps, res):
        assert r["output_ids"] == hf_greedy(model, p, 20)


def anvil_score(model_dir, seqs, temperature):
    with tempfile.TemporaryDirectory() as tmp:
        inp, out = os.path.join(tmp, "in.jsonl"), os.path.join(tmp, "out.jsonl")
        with open(inp, "w") as f:
            for s in seqs:
                f.write(json.dumps({"tokens": s}) + "\n")
        run("score", "--model", model_dir, "--input", inp, "--output", out, "--temperature",
            str(temperature), "--threads", "2")
        with open(out) as f:
            return [json.loads(line)["logprobs"] for line in f]


def test_sampled_logprobs_equal_anvil_score(tmp_path):
    d = init_model(str(tmp_path / "m"), "qwen3", seed=22)
    vocab = json.load(open(os.path.join(d, "config.json")))["vocab_size"]
    ps = prompts(vocab, [5, 12, 30], seed=6)
    with Server(d) as srv:
        status, res = srv.post("/generate", {
            "input_ids": ps,
            "sampling_params": {"temperature": 0.7, "max_new_tokens": 24, "n": 2,
                                "ignore_eos": True, "sampling_seed": 3},
            "return_logprob": True})
        assert status == 200, res
    assert len(res) == 6
    seqs, engine_lps = [], []
    for i, r in enumerate(res):
        lps = r["meta_info"]["output_token_logprobs"]
        assert [t for _, t, _ in lps] == r["output_ids"]
        seqs.append(ps[i // 2] + r["output_ids"])
        engine_lps.append([lp for lp, _, _ in lps])
    assert res[0]["output_ids"] != res[1]["output_ids"]  # two samples of one prompt
    scored = anvil_score(d, seqs, 0.7)
    worst = 0.0
    for i, (ours, ref) in enumerate(zip(engine_lps, scored)):
        ref = ref[len(ps[i // 2]):]
        assert len(ref) == len(ours)
        worst = max(worst, max(abs(a - b) for a, b in zip(ours, ref)))
    print(f"engine vs anvil score at T=0.7: max |diff| = {worst:.3g}")
    assert worst <= 1e-6


def test_update_weights_from_disk_equals_restart(tmp_path):
    a = init_model(str(tmp_path / "a"), "qwen3", seed=23)
    b = init_model(str(tmp_path / "b"), "qwen3", seed=24)
    vocab = json.load(open(os.path.join(a, "config.json")))["vocab_size"]
    body = {"input_ids": prompts(vocab, [6, 14], seed=7),
            "sampling_params": {"temperature": 0.8, "max_new_tokens": 16, "ignore_eos": True,
                                "sampling_seed": 11},
            "return_logprob": True}
    with Server(b) as srv:
        _, restarted = srv.post("/generate", body)
    with Server(a, "--weight-version", "v1") as srv:
        _, before = srv.post("/generate", body)
        assert before[0]["meta_info"]["weight_version"] == "v1"
        status, res = srv.post("/update_weights_from_disk", {"model_path": b,
                                                             "weight_version": "v2"})
        assert status == 200 and res["success"], res
        assert srv.get("/get_weight_version") == (200, {"weight_version": "v2"})
        _, after = srv.post("/generate", body)
    assert [r["output_ids"] for r in before] != [r["output_ids"] for r in restarted]
    for x, y in zip(after, restarted):
        assert x["output_ids"] == y["output_ids"]
        assert x["meta_info"]["weight_version"] == "v2"
        for (p, _, _), (q, _, _) in zip(x["meta_info"]["output_token_logprobs"],
                                        y["meta_info"]["output_token_logprobs"]):
            assert abs(p - q) <= 1e-6

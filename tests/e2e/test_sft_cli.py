"""`anvil sft` end to end: conversations in, steps with metrics, checkpoints, exact resume,
HuggingFace export that transformers loads, and clear errors for bad flags."""
import json
import os
import subprocess

import numpy as np
import pytest
from safetensors.numpy import load_file

ANVIL = os.environ.get("ANVIL_BIN", "anvil")


def run(*args, check=True):
    p = subprocess.run([ANVIL, *args], capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    if check and p.returncode != 0:
        raise AssertionError(f"anvil {' '.join(args)} failed ({p.returncode}):\n{p.stderr}")
    return p


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("sft")
    model = str(d / "model")
    run("init-model", "--arch", "qwen3", "--preset", "tiny", "--out", model, "--seed", "1")
    data = d / "chat.jsonl"
    with open(data, "w") as f:
        for i in range(12):
            msgs = [{"role": "user", "content": f"what is {i} plus {i}?"},
                    {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]
            if i % 3 == 0:
                msgs = [{"role": "system", "content": "be brief"}] + msgs + [
                    {"role": "user", "content": "and doubled?"},
                    {"role": "assistant", "content": f"{4 * i}"}]
            f.write(json.dumps({"messages": msgs}) + "\n")
    return d, model, str(data)


COMMON = ["--input-key", "messages", "--global-batch-size", "4", "--micro-batch-size", "2",
          "--lr", "2e-3", "--lr-warmup-iters", "2", "--num-epoch", "2", "--rollout-shuffle",
          "--calculate-per-token-loss", "--threads", "1"]


def model_tensors(ckpt_dir, it):
    return load_file(os.path.join(ckpt_dir, f"iter_{it:07d}", "model", "model.safetensors"))


def test_sft_trains_checkpoints_and_resumes_exactly(setup):
    d, model, data = setup
    straight = str(d / "straight")
    metrics = str(d / "m.jsonl")
    run("sft", "--model", model, "--prompt-data", data, "--save", straight, "--save-interval", "2",
        "--metrics-jsonl", metrics, *COMMON)
    lines = [json.loads(l) for l in open(metrics)]
    assert [l["step"] for l in lines] == [1, 2, 3, 4, 5, 6]  # 12 samples x 2 epochs / 4
    assert lines[-1]["sft/loss"] < lines[0]["sft/loss"]
    assert lines[-1]["sft/epoch"] == 2 or lines[-1]["sft/epoch"] == 1
    assert all(l["tokens"] > 0 and l["grad_norm"] > 0 for l in lines)
    assert open(os.path.join(straight, "latest_checkpointed_iteration.txt")).read().strip() == "6"
    assert sorted(os.listdir(straight)) == ["iter_0000002", "iter_0000004", "iter_0000006",
                                            "latest_checkpointed_iteration.txt"]

    # Interrupted after 3 steps (mid-epoch), resumed: bitwise the same weights at step 6.
    part = str(d / "part")
    run("sft", "--model", model, "--prompt-data", data, "--save", part, "--num-steps", "3", *COMMON)
    assert open(os.path.join(part, "latest_checkpointed_iteration.txt")).read().strip() == "3"
    out = run("sft", "--model", model, "--prompt-data", data, "--save", part, "--load", part, *COMMON)
    assert "resumed at step 3" in out.stderr + out.stdout
    a, b = model_tensors(straight, 6), model_tensors(part, 6)
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k


def test_save_hf_loads_in_transformers(setup):
    d, model, data = setup
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM
    out = str(d / "hf")
    run("sft", "--model", model, "--prompt-data", data, "--num-steps", "2", "--save-hf", out,
        "--save-hf-dtype", "bfloat16", *COMMON)
    assert os.path.exists(os.path.join(out, "tokenizer.json"))
    m = AutoModelForCausalLM.from_pretrained(out)
    assert m.dtype == torch.bfloat16
    ids = torch.tensor([[1, 2, 3, 4]])
    assert torch.isfinite(m(ids).logits).all()


@pytest.mark.parametrize("args,needle", [
    (["--save-interval", "2"], "--save-interval needs --save"),
    (["--lr-decay-style", "exp"], "--lr-decay-style"),
    (["--kl-loss-type", "k7"], "--kl-loss-type"),
    (["--global-batch-size", "0"], "--global-batch-size"),
    (["--use-dynamic-batch-size"], "--max-tokens-per-gpu"),
    (["--eps-clip-c", "0.5"], "--eps-clip-c"),
])
def test_bad_flags_are_named(setup, args, needle):
    d, model, data = setup
    p = run("sft", "--model", model, "--prompt-data", data, "--input-key", "messages", *args,
            check=False)
    assert p.returncode == 1, p.stderr
    assert needle in p.stderr


def test_missing_data_and_model_are_named(setup):
    d, model, data = setup
    p = run("sft", "--model", model, "--prompt-data", str(d / "nope.jsonl"), check=False)
    assert p.returncode == 1 and "nope.jsonl" in p.stderr
    p = run("sft", "--model", str(d / "nomodel"), "--prompt-data", data, check=False)
    assert p.returncode == 1 and "nomodel" in p.stderr

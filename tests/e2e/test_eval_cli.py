"""`anvil make-task` and `anvil eval` end to end: the arithmetic task's files, held-out
accuracy / pass@k against labels made from the model's own greedy answers (so the expected
accuracy is known exactly), the JSON and per-sample outputs, and errors naming the culprit."""
import json
import os
import subprocess

import pytest

ANVIL = os.environ.get("ANVIL_BIN", "anvil")


def run(*args, check=True):
    p = subprocess.run([ANVIL, *args], capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    if check and p.returncode != 0:
        raise AssertionError(f"anvil {' '.join(args)} failed ({p.returncode}):\n{p.stderr}")
    return p


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("eval")
    model = str(d / "model")
    run("init-model", "--arch", "qwen3", "--preset", "tiny", "--out", model, "--seed", "4")
    task = d / "task"
    out = run("make-task", "arithmetic", "--out", str(task), "--seed", "3", "--train", "40",
              "--eval", "8", "--digits", "2", "--ops", "+-").stdout
    assert "wrote 40 train and 8 eval problems" in out
    return d, model, task


def chat_prompt(p):
    return f"<|im_start|>user\n{p}<|im_end|>\n<|im_start|>assistant\n"


def test_make_task_files(setup):
    d, _, task = setup
    meta = json.load(open(task / "task.json"))
    assert meta["rm_type"] == "exact_match" and meta["train"] == 40 and meta["eval"] == 8
    rows = [json.loads(l) for l in open(task / "eval.jsonl")]
    train = {json.loads(l)["prompt"] for l in open(task / "train.jsonl")}
    assert len(rows) == 8
    for r in rows:
        a, op, b = r["prompt"][:-1].partition("+") if "+" in r["prompt"] else \
            r["prompt"][:-1].partition("-")
        assert int(r["label"]) == (int(a) + int(b) if op == "+" else int(a) - int(b))
        assert r["prompt"] not in train
    again = d / "again"
    run("make-task", "arithmetic", "--out", str(again), "--seed", "3", "--train", "40",
        "--eval", "8", "--digits", "2", "--ops", "+-")
    assert open(again / "eval.jsonl").read() == open(task / "eval.jsonl").read()


def test_eval_accuracy_matches_known_labels(setup):
    d, model, task = setup
    rows = [json.loads(l) for l in open(task / "eval.jsonl")]
    # Rows 0, 2, 4, 6 get the model's greedy answer as label (correct by construction).
    data = d / "greedy.jsonl"
    with open(data, "w") as f:
        for i, r in enumerate(rows):
            label = "not the answer"
            if i % 2 == 0:
                g = json.loads(run("generate", "--model", model, "--prompt",
                                   chat_prompt(r["prompt"]), "--max-new-tokens", "5",
                                   "--temperature", "0", "--json").stdout)
                label = g["text"]
            f.write(json.dumps({"prompt": r["prompt"], "label": label}) + "\n")
    res = d / "res.json"
    samples = d / "samples.jsonl"
    p = run("eval", "--model", model, "--prompt-data", str(data), "--rm-type", "exact_match",
            "--apply-chat-template", "--n-samples-per-eval-prompt", "3",
            "--eval-temperature", "0", "--eval-max-response-len", "5", "--output", str(res),
            "--dump-samples", str(samples))
    assert "eval: accuracy 0.5000 (12/24) pass@1 0.5000 pass@2 0.5000 pass@3 0.5000" in p.stdout
    j = json.load(open(res))
    assert j["prompts"] == 8 and j["samples"] == 24 and j["correct"] == 12
    assert j["accuracy"] == 0.5 and j["mean_reward"] == 0.5 and j["pass@3"] == 0.5
    lines = [json.loads(l) for l in open(samples)]
    assert len(lines) == 24
    assert [l["correct"] for l in lines] == [i // 3 % 2 == 0 for i in range(24)]
    assert lines[0]["where"].endswith("greedy.jsonl:1")


def test_sampled_eval_is_reproducible(setup):
    d, model, task = setup
    args = ["eval", "--model", model, "--prompt-data", str(task / "eval.jsonl"), "--rm-type",
            "exact_match", "--apply-chat-template", "--n-samples-per-eval-prompt", "4",
            "--eval-temperature", "1.0", "--eval-max-response-len", "4", "--eval-seed", "9"]
    a, b = run(*args).stdout, run(*args).stdout
    assert a == b and a.startswith("eval: accuracy ")
    assert "pass@4" in a


def test_errors_name_the_culprit(setup):
    d, model, task = setup
    base = ["eval", "--model", model, "--apply-chat-template"]
    p = run(*base, "--prompt-data", str(d / "missing.jsonl"), "--rm-type", "exact_match",
            check=False)
    assert p.returncode == 1 and "missing.jsonl" in p.stderr
    p = run(*base, "--prompt-data", str(task / "eval.jsonl"), "--rm-type", "nope", check=False)
    assert p.returncode == 1 and "--rm-type 'nope'" in p.stderr
    p = run(*base, "--prompt-data", str(task / "eval.jsonl"), "--rm-type", "exact_match",
            "--n-samples-per-eval-prompt", "0", check=False)
    assert p.returncode == 1 and "--n-samples-per-eval-prompt" in p.stderr
    nolabel = d / "nolabel.jsonl"
    nolabel.write_text('{"prompt": "1+1="}\n')
    p = run(*base, "--prompt-data", str(nolabel), "--rm-type", "exact_match", check=False)
    assert p.returncode == 1 and "nolabel.jsonl" in p.stderr, p.stderr
    p = run("make-task", "arithmetic", "--out", str(d / "x"), "--digits", "1", "--train", "200",
            check=False)
    assert p.returncode == 1 and "distinct problems" in p.stderr
    p = run("make-task", "geometry", "--out", str(d / "x"), check=False)
    assert p.returncode == 1 and "unknown task 'geometry'" in p.stderr

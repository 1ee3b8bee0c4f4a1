"""scripts/demo.sh end to end at small sizes (the pipeline, not its accuracy): make-task,
init-model, SFT, GRPO through `anvil train` (sync and one-step-off async in one process, and
as head + a local worker whose roles are processes), and `anvil eval` after each phase.
Checks the printed held-out accuracy lines, the eval JSON, the GRPO report, and that each
phase really changed the weights and left a complete HuggingFace directory."""
import json
import os
import re
import subprocess

import numpy as np
import pytest
from safetensors.numpy import load_file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ANVIL = os.environ.get("ANVIL_BIN", "anvil")


@pytest.mark.parametrize("mode", ["sync", "async", "processes"])
def test_demo_pipeline(tmp_path, mode):
    run = tmp_path / "demo"
    env = {**os.environ, "ANVIL_BIN": ANVIL, "ANVIL_DEMO_DIR": str(run), "ANVIL_DEMO_SEED": "1",
           "ANVIL_DEMO_MODE": mode,
           "ANVIL_DEMO_TRAIN": "64", "ANVIL_DEMO_EVAL": "12", "ANVIL_DEMO_SFT_STEPS": "60",
           "ANVIL_DEMO_ROLLOUTS": "2", "ANVIL_DEMO_EVAL_SAMPLES": "2"}
    p = subprocess.run([os.path.join(ROOT, "scripts", "demo.sh")], capture_output=True,
                       text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    out = p.stdout
    for phase in ("init", "sft", "grpo"):
        assert re.search(rf"^  {phase} greedy:  accuracy [0-9.]+ \(\d+/12\)", out, re.M), out
        assert re.search(rf"^  {phase} sampled: accuracy [0-9.]+ \(\d+/24\) pass@1 [0-9.]+ "
                         rf"pass@2 [0-9.]+", out, re.M), out
        for kind, samples in (("greedy", 12), ("sampled", 24)):
            j = json.load(open(run / f"eval_{phase}_{kind}.json"))
            assert j["samples"] == samples and 0 <= j["accuracy"] <= 1
    table = re.findall(r"^  (initial model|after SFT|after GRPO): +([0-9.]+) \| ([0-9.]+)$",
                       out, re.M)
    assert [t[0] for t in table] == ["initial model", "after SFT", "after GRPO"], out
    greedy = json.load(open(run / "eval_grpo_greedy.json"))["accuracy"]
    assert float(table[2][1]) == round(greedy, 3)

    report = json.load(open(run / "grpo_report.json"))
    assert report["ok"] and len(report["rollouts"]) == 2
    # processes: the roles ran under the demo's local worker, not in the head
    nodes = {p["node_id"] for p in report["placement"]}
    assert nodes == ({"demo"} if mode == "processes" else {"in-process"}), report["placement"]
    # sync: rollout k is generated with weight version k; async (one-step-off): rollout 1 is
    # generated while rollout 0 trains, so with version 0 again
    versions = [r["generate"][0]["weight_version"] for r in report["rollouts"]]
    assert versions == ([0, 0] if mode == "async" else [0, 1]), versions
    for r in report["rollouts"]:
        assert sum(g["samples"] for g in r["generate"]) == 32 * 8
        # 60 SFT steps leave the model answering some problems, so the groups' rewards differ
        # and GRPO has a gradient (after 6 steps every reward was 0 and the update was zero).
        assert all(s["grad_norm"] > 0 for t in r["train"] for s in t["steps"]), r["train"]
    for d in ("init", "sft", "grpo"):
        for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
            assert (run / d / f).exists(), f"{d}/{f}"
    w = {d: load_file(str(run / d / "model.safetensors")) for d in ("init", "sft", "grpo")}
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not np.array_equal(w["init"][name], w["sft"][name])
    assert not np.array_equal(w["sft"][name], w["grpo"][name])
    assert len(open(run / "sft_metrics.jsonl").read().splitlines()) == 60

"""FSDP train groups inside the RL job: `--actor-num-gpus-per-node 2` (or two nodes of one)
makes the train role a group of two ranks that shard the model over c10d (Gloo). The group
must train what one rank trains: the same rollouts (sorted into one canonical order), the
same steps, the weights equal within fp32 reduction-order noise; weight pushes, checksums
and checkpoints are collective (every rank gathers its share, rank 0 sends)."""
import json
import os

import numpy as np
import pytest
from safetensors.numpy import load_file

from test_runtime import Cluster, assert_no_processes, job_flags, run, setup  # noqa: F401


def grpo(model, data, save, *extra):
    # lr 1e-3 / eps 1e-6: Adam's division by sqrt(v) + eps would otherwise blow the
    # last-bit differences of another reduction order up into visible weight differences.
    return job_flags(model, data, "--num-rollout", "3", "--lr", "1e-3", "--adam-eps", "1e-6",
                     "--use-kl-loss", "--kl-loss-coef", "0.01", "--save", str(save),
                     "--save-interval", "3", *extra)


def weights(ckpt, iteration=3):
    return load_file(os.path.join(ckpt, f"iter_{iteration:07d}", "model", "model.safetensors"))


def assert_close(a, b, tol=1e-5):
    assert a.keys() == b.keys()
    for k in a:
        assert np.abs(a[k].astype(np.float64) - b[k]).max() <= tol, k


def check_group_report(report, world):
    assert report["ok"], report
    assert len(report["rollouts"]) == 3
    for k, r in enumerate(report["rollouts"]):
        train = r["train"]
        assert len(train) == world and {t["rank"] for t in train} == set(range(world))
        assert all(t["world_size"] == world and t["samples"] == 4 for t in train)
        # Every rank saw the whole rollout and reports the same (all-reduced) step metrics.
        assert all(t["steps"] == train[0]["steps"] for t in train)
        sync = r["sync"]
        assert sync["weight_version"] == k + 1
        for e in sync["engines"]:
            assert e["weight_version"] == k + 1 and e["checksum"] == sync["checksum"]


def test_in_process_group_of_two_trains_like_one_rank(setup):
    d, model, data = setup
    one, two = d / "one", d / "two"
    for ranks, save in ((1, one), (2, two)):
        report = d / f"report-{ranks}.json"
        p = run("head", "--in-process", "--report", str(report),
                *grpo(model, data, save, "--actor-num-gpus-per-node", str(ranks)), check=False)
        assert p.returncode == 0, p.stderr
        check_group_report(json.load(open(report)), ranks)
    assert_close(weights(one), weights(two))
    # The sharded checkpoint: one shard file per rank beside the HF model.
    shards = sorted(os.listdir(two / "iter_0000003" / "fsdp"))
    assert shards == ["rank_0-of-2.safetensors", "rank_1-of-2.safetensors"]


def test_head_and_two_workers_run_grpo_with_a_train_group_of_two(setup):
    d, model, data = setup
    save = d / "cluster"
    c = Cluster(d, "cluster", grpo(model, data, save, "--actor-num-nodes", "2",
                                   "--actor-num-gpus-per-node", "1"), devices=(1, 2))
    try:
        assert c.head.wait(300) == 0, c.head.text()
        for w in c.workers:
            assert w.wait(30) == 0, w.text()
        report = json.load(open(c.report))
        check_group_report(report, 2)
        # One device on node0: the group's two ranks live on different nodes and meet over
        # TCP (the store on rank 0's address, Gloo between them).
        nodes = {p["rank"]: p["node_id"] for p in report["placement"] if p["role"] == "train"}
        assert nodes == {0: "node0", 1: "node1"}
        assert_no_processes(c.token)
    finally:
        c.close()
    # The same job on one rank in one process trains to the same weights.
    assert_close(weights(save), weights(d / "one"))



def test_cuda_roles_without_a_gpu_are_refused_clearly(setup):
    d, model, data = setup
    if os.path.exists("/dev/nvidia0"):
        pytest.skip("a GPU is here: --device cuda is a real run, not a refusal")
    p = run("head", "--in-process", *job_flags(model, data, "--num-rollout", "1", "--device",
                                                "cuda"), check=False)
    assert p.returncode != 0
    assert "--device cuda: no CUDA device is visible to this role" in p.stderr, p.stderr


# ---- --train-backend megatron: the train group as a TP x DP mesh --------------------------

MEGATRON = ["--train-backend", "megatron", "--actor-num-gpus-per-node", "2"]


def test_megatron_train_group_trains_like_one_rank(setup):
    """TP=2, TP=2 with sequence parallel, DP=2 (distributed optimizer) and PP=2 inside the RL job
    train what one rank trains: every optimizer step's loss and grad norm within 1e-5, and
    the engines, fed the pushed weights, sample the same responses (same rewards)."""
    from test_loop import RecordingRewardServer
    d, model, data = setup
    rm = RecordingRewardServer()  # rewards vary with the response text: nonzero advantages
    runs = {}
    try:
        for name, extra in [("one", []),
                            ("tp2", [*MEGATRON, "--tensor-model-parallel-size", "2"]),
                            ("tp2-sp", [*MEGATRON, "--tensor-model-parallel-size", "2",
                                        "--sequence-parallel"]),
                            ("dp2", MEGATRON),
                            ("pp2", [*MEGATRON, "--pipeline-model-parallel-size", "2"])]:
            out = d / f"megatron-{name}"
            out.mkdir()
            run("head", "--in-process", "--report", str(out / "report.json"),
                *job_flags(model, data, "--num-rollout", "3", "--lr", "1e-3", "--adam-eps", "1e-6",
                           "--rm-type", "remote_rm", "--rm-url", rm.url,
                           "--metrics-jsonl", str(out / "metrics.jsonl"), *extra))
            report = json.load(open(out / "report.json"))
            if name != "one":
                check_group_report(report, 2)
            runs[name] = (report, [json.loads(l) for l in open(out / "metrics.jsonl")])
    finally:
        rm.close()
    base_report, base = runs["one"]
    assert any(l["grad_norm"] > 0 for l in base)
    for name in ("tp2", "tp2-sp", "dp2", "pp2"):
        report, m = runs[name]
        assert len(m) == len(base) == 3
        for a, b in zip(m, base):
            for key in ("loss", "pg_loss", "grad_norm", "ppo_kl"):
                assert abs(a[key] - b[key]) <= 1e-5 * max(1.0, abs(b[key])), (name, key, a, b)
        for ra, rb in zip(report["rollouts"], base_report["rollouts"]):
            ga = [(g["response_tokens"], g["reward_sum"]) for g in ra["generate"]]
            gb = [(g["response_tokens"], g["reward_sum"]) for g in rb["generate"]]
            assert ga == gb, name


@pytest.mark.parametrize("extra,message", [
    ([*MEGATRON, "--pipeline-model-parallel-size", "3"],
     "--pipeline-model-parallel-size 3 = 3 does not divide the 2 train ranks"),
    ([*MEGATRON, "--tensor-model-parallel-size", "3"], "does not divide the 2 train ranks"),
    (["--tensor-model-parallel-size", "2"], "need --train-backend megatron"),
    ([*MEGATRON, "--sequence-parallel"], "--sequence-parallel needs --tensor-model-parallel-size"),
])
def test_megatron_flag_errors(setup, extra, message):
    d, model, data = setup
    p = run("head", "--in-process", *job_flags(model, data, *extra), check=False)
    assert p.returncode != 0 and message in p.stderr, p.stderr

"""Resume of an RL job (issue 9): a GRPO run of 4 rollouts checkpointing every 2 is killed
(SIGKILL, every process of the job) right after its iteration-2 checkpoint, restarted
with --load, and must end exactly where the uninterrupted run ends: the metrics of
rollouts 3-4, the weights pushed to the engines after each of them (CRC-32C) and the final
weights, AdamW moments and RNG states are bitwise equal (CPU, fp32, fixed seeds, one
thread). The kill is placed without timing: the job's rewards come from a remote reward
model served here, which answers the 8 requests of rollouts 1-2 and holds the 9th, the
first of rollout 3, which is only asked for once the checkpoint is complete.

Bad --load directories (missing, without a checkpoint, of another model shape) fail at
init with an error naming the path."""
import json
import os
import shutil
import signal
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from safetensors.numpy import load_file

from test_runtime import (ANVIL, ENV, Cluster, assert_no_processes, has_cuda,  # noqa: F401
                          job_processes, run, setup)

GROUP = 2 * 2  # --rollout-batch-size 2 x --n-samples-per-prompt 2: reward requests per rollout


class RewardServer:
    """A remote reward model (--rm-type remote_rm): the reward of a response is a function
    of its text alone. With `hold_after` N, request N + 1 and later ones are held (never
    answered) until close(); `held` is set when the first one arrives."""

    def __init__(self, hold_after=None):
        self.count = 0
        self.lock = threading.Lock()
        self.held = threading.Event()
        self.release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.count += 1
                    n = server.count
                if hold_after is not None and n > hold_after:
                    server.held.set()
                    server.release.wait(120)
                    return
                text = body["response"]
                reward = (sum(map(ord, text)) % 7) / 6.0  # varied, so advantages are not 0
                data = json.dumps(reward).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/reward"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def grpo(model, data, url, save, metrics, *extra):
    return ["--model", model, "--prompt-data", data, "--input-key", "prompt",
            "--label-key", "label", "--rollout-batch-size", "2", "--n-samples-per-prompt", "2",
            "--rollout-max-response-len", "4", "--global-batch-size", "4", "--lr", "1e-2",
            "--lr-decay-style", "cosine", "--lr-warmup-iters", "1", "--weight-decay", "0.1",
            "--rollout-sampling-seed", "5", "--rollout-shuffle", "--rollout-seed", "11",
            "--use-kl-loss", "--kl-loss-coef", "0.01", "--rm-type", "remote_rm",
            "--rm-url", url, "--num-rollout", "4", "--save", str(save), "--save-interval", "2",
            "--metrics-jsonl", str(metrics), *extra]


TIMING = ("seconds", "time/", "perf/", "timestamp", "wall")


def metric_lines(path):
    """The metrics file without timing fields, which no two runs share."""
    out = []
    for line in open(path):
        m = json.loads(line)
        out.append({k: v for k, v in m.items() if not any(t in k for t in TIMING)})
    return out


def checkpoint(save, iteration):
    """Every tensor file of a step directory (model/, optimizer.safetensors or the FSDP
    ranks' shards) by relative path, and trainer_state.json."""
    d = os.path.join(save, f"iter_{iteration:07d}")
    tensors = {}
    for root, _, files in os.walk(d):
        for f in files:
            if f.endswith(".safetensors"):
                path = os.path.join(root, f)
                tensors[os.path.relpath(path, d)] = load_file(path)
    return tensors, json.load(open(os.path.join(d, "trainer_state.json")))


def assert_bitwise(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert a[k].tobytes() == b[k].tobytes(), f"tensor {k} differs"


def sync_checksums(report):
    return [(r["sync"]["weight_version"], r["sync"]["checksum"]) for r in report["rollouts"]]


def start_head_in_process(flags, report):
    return subprocess.Popen([ANVIL, "head", "--in-process", "--report", str(report), *flags],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=ENV, start_new_session=True)


def straight_run(out, model, data, *extra):
    """The uninterrupted run (in-process): its checkpoints, metrics and report."""
    rm = RewardServer()
    try:
        out.mkdir()
        p = run("head", "--in-process", "--report", str(out / "report.json"),
                *grpo(model, data, rm.url, out / "ckpt", out / "metrics.jsonl", *extra),
                check=False)
        assert p.returncode == 0, p.stderr
    finally:
        rm.close()
    report = json.load(open(out / "report.json"))
    assert report["ok"] and len(report["rollouts"]) == 4, report
    assert [c["iteration"] for c in report["checkpoints"]] == [2, 4]
    return out, report


@pytest.fixture(scope="module")
def straight(setup):
    d, model, data = setup
    return straight_run(d / "straight", model, data)


def check_resumed(reference, run_dir, resumed_report):
    out, report = reference
    # Rollouts 3-4 (ids 2, 3) ran after the restart and pushed the same weights.
    assert [r["rollout"] for r in resumed_report["rollouts"]] == [2, 3]
    assert sync_checksums(resumed_report) == sync_checksums(report)[2:]
    # Metrics: rollouts 1-2 from before the kill, 3-4 after it, equal to the straight run's.
    a, b = metric_lines(out / "metrics.jsonl"), metric_lines(run_dir / "metrics.jsonl")
    assert sorted({m["rollout"] for m in b}) == [0, 1, 2, 3]  # a line per step (and rank)
    assert a == b
    # Final checkpoint: weights, AdamW moments + RNG states, trainer state (rollout cursors).
    ta, sa = checkpoint(out / "ckpt", 4)
    tb, sb = checkpoint(run_dir / "ckpt", 4)
    assert ta.keys() == tb.keys() and "model/model.safetensors" in ta
    for f in ta:
        assert_bitwise(ta[f], tb[f])
    assert sa == sb
    engines = sb["state"]["rollout_engines"]
    assert [e["prompt_index"] for e in engines] == [8]  # 4 rollouts x 2 prompts


def remove_shared_memory(pids):
    """The weight-sync segments (/dev/shm/anvil-PID-*) a SIGKILLed process leaves behind."""
    for name in os.listdir("/dev/shm"):
        if any(name.startswith(f"anvil-{pid}-") for pid in pids):
            os.unlink(os.path.join("/dev/shm", name))


def kill_after_checkpoint(rm, run_dir, proc_alive):
    """Waits until rollout 3 asks for its first reward (the iteration-2 checkpoint is then
    complete), checks that checkpoint, then lets the caller kill the job."""
    while not rm.held.wait(0.5):
        assert proc_alive(), "the job ended before rollout 3 started"
    latest = open(run_dir / "ckpt" / "latest_checkpointed_iteration.txt").read().strip()
    assert latest == "2"
    assert not os.path.exists(run_dir / "ckpt" / "iter_0000004")


def kill_and_resume_in_process(run_dir, model, data, *extra):
    run_dir.mkdir()
    flags = grpo(model, data, "", run_dir / "ckpt", run_dir / "metrics.jsonl", *extra)
    rm = RewardServer(hold_after=2 * GROUP)
    flags[flags.index("--rm-url") + 1] = rm.url
    p = start_head_in_process(flags, run_dir / "report-1.json")
    try:
        kill_after_checkpoint(rm, run_dir, lambda: p.poll() is None)
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(30)
        assert p.returncode == -signal.SIGKILL
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        rm.close()
        remove_shared_memory([p.pid])
    rm = RewardServer()
    flags[flags.index("--rm-url") + 1] = rm.url
    try:
        r = run("head", "--in-process", "--report", str(run_dir / "report-2.json"),
                *flags, "--load", str(run_dir / "ckpt"), check=False)
        assert r.returncode == 0, r.stderr
        assert "resuming at rollout 2" in r.stderr
    finally:
        rm.close()
    return json.load(open(run_dir / "report-2.json"))


def test_in_process_killed_run_resumes_bitwise(setup, straight):
    d, model, data = setup
    run_dir = d / "killed-in-process"
    check_resumed(straight, run_dir, kill_and_resume_in_process(run_dir, model, data))


def test_fsdp_group_of_two_killed_and_resumed_bitwise(setup, straight):
    """A train group of two FSDP ranks: each rank's shards, AdamW moments and RNG come back
    from its shard file."""
    d, model, data = setup
    two = ("--actor-num-gpus-per-node", "2")
    straight2 = straight_run(d / "straight-fsdp", model, data, *two)
    run_dir = d / "killed-fsdp"
    report = kill_and_resume_in_process(run_dir, model, data, *two)
    check_resumed(straight2, run_dir, report)
    shards = sorted(os.listdir(run_dir / "ckpt" / "iter_0000004" / "fsdp"))
    assert shards == ["rank_0-of-2.safetensors", "rank_1-of-2.safetensors"]
    # Another layout resumes too: the pair's iteration 2 on one rank, one rank's on the pair.
    resume_elsewhere(setup, "fsdp-to-one", run_dir / "ckpt", straight, [])
    resume_elsewhere(setup, "one-to-fsdp", straight[0] / "ckpt", straight2, two)


def test_megatron_pipeline_group_killed_and_resumed_bitwise(setup, straight):
    """A Megatron train group of two pipeline stages: each rank's fp32 master shards, AdamW
    moments and RNG come back from its shard file. The checkpoint also resumes resharded."""
    d, model, data = setup
    mesh = ("--train-backend", "megatron", "--actor-num-gpus-per-node", "2",
            "--pipeline-model-parallel-size", "2")
    straight2 = straight_run(d / "straight-megatron", model, data, *mesh)
    run_dir = d / "killed-megatron"
    report = kill_and_resume_in_process(run_dir, model, data, *mesh)
    check_resumed(straight2, run_dir, report)
    shards = sorted(os.listdir(run_dir / "ckpt" / "iter_0000004" / "megatron"))
    assert shards == ["rank_0-of-2.safetensors", "rank_1-of-2.safetensors"]
    # Resharded onto two data-parallel Megatron ranks, and onto one rank.
    resume_elsewhere(setup, "megatron-pp2-to-dp2", run_dir / "ckpt", straight2, mesh[:4])
    resume_elsewhere(setup, "megatron-pp2-to-one", run_dir / "ckpt", straight, [])


def resume_elsewhere(setup, name, load, reference, extra, tol=1e-5):
    """Iteration 2 of checkpoint `load` resumed on the train layout `extra` (resharded:
    backends/train/state_reader.hpp): rollouts 3-4 run and the final weights are those of
    `reference`, the straight run on that layout, within `tol` (not bitwise: the first two
    rollouts ran in another reduction order; measured ~1.6e-7)."""
    d, model, data = setup
    setup_dir = d / name
    setup_dir.mkdir()
    rm = RewardServer()
    try:
        flags = grpo(model, data, rm.url, setup_dir / "ckpt", setup_dir / "metrics.jsonl", *extra)
        r = run("head", "--in-process", "--report", str(setup_dir / "report.json"), *flags,
                "--load", str(load), "--ckpt-step", "2", check=False)
        assert r.returncode == 0, r.stderr
        assert "resharding" in r.stderr and "resuming at rollout 2" in r.stderr, r.stderr
    finally:
        rm.close()
    report = json.load(open(setup_dir / "report.json"))
    assert [x["rollout"] for x in report["rollouts"]] == [2, 3]
    got, _ = checkpoint(setup_dir / "ckpt", 4)
    want, _ = checkpoint(reference[0] / "ckpt", 4)
    a, b = got["model/model.safetensors"], want["model/model.safetensors"]
    assert a.keys() == b.keys()
    worst = max(float(np.abs(a[k] - b[k]).max()) for k in a)
    assert worst < tol, (name, worst)


def test_cluster_killed_run_resumes_bitwise(setup, straight):
    """Head + two workers + a role process each: every process of the job is SIGKILLed."""
    d, model, data = setup
    rm = RewardServer(hold_after=2 * GROUP)
    base = d / "killed-cluster"
    base.mkdir()
    flags = grpo(model, data, rm.url, base / "ckpt", base / "metrics.jsonl")
    c = Cluster(base, "run1", flags)
    pids = []
    try:
        kill_after_checkpoint(rm, base, lambda: c.head.p.poll() is None)
        pids = job_processes(c.token)
        c.close()  # SIGKILL: head, workers, every role process
        assert_no_processes(c.token)
    finally:
        c.close()
        rm.close()
    remove_shared_memory(pids)
    rm = RewardServer()
    flags[flags.index("--rm-url") + 1] = rm.url
    c = Cluster(base, "run2", [*flags, "--load", str(base / "ckpt")])
    try:
        assert c.head.wait(300) == 0, c.head.text()
        for w in c.workers:
            assert w.wait(30) == 0, w.text()
        assert "resuming at rollout 2" in c.head.text()
        assert_no_processes(c.token)
    finally:
        c.close()
        rm.close()
    check_resumed(straight, base, json.load(open(c.report)))


def failed_init(d, name, flags):
    report = d / f"{name}.json"
    r = run("head", "--in-process", "--report", str(report), *flags, check=False)
    assert r.returncode == 1, r.stderr
    return json.load(open(report))["error"]


def test_bad_load_directories_are_named(setup, straight):
    d, model, data = setup
    out, _ = straight
    flags = grpo(model, data, "http://127.0.0.1:9/reward", d / "bad-save", d / "bad.jsonl")

    missing = d / "no-such-dir"
    err = failed_init(d, "missing", [*flags, "--load", str(missing)])
    assert f"--load {missing}: no such checkpoint directory" in err

    empty = d / "empty-ckpt"
    empty.mkdir()
    err = failed_init(d, "empty", [*flags, "--load", str(empty)])
    assert str(empty / "latest_checkpointed_iteration.txt") in err and "is missing" in err

    err = failed_init(d, "step", [*flags, "--load", str(out / "ckpt"), "--ckpt-step", "3"])
    assert str(out / "ckpt" / "iter_0000003") in err and "is missing" in err

    # The straight run's checkpoint under a model of another shape.
    other = d / "other-model"
    run("init-model", "--arch", "qwen3", "--preset", "tiny", "--out", str(other), "--seed", "3",
        "--override", '{"intermediate_size": 128}')
    oflags = list(flags)
    oflags[oflags.index("--model") + 1] = str(other)
    err = failed_init(d, "shape", [*oflags, "--load", str(out / "ckpt")])
    assert str(out / "ckpt" / "iter_0000004") in err and "mlp" in err, err

    r = run("head", "--in-process", *flags, "--ckpt-step", "2", check=False)
    assert r.returncode == 1 and "--ckpt-step 2 needs --load" in r.stderr


def test_finetune_starts_from_the_checkpoint_weights(setup, straight):
    """--load DIR --finetune: the checkpoint's weights are the start point (e.g. RL after
    SFT): rollout 0, weight version 0, a fresh optimizer. With --lr 0 the first push carries
    exactly the loaded weights: the straight run's version 2."""
    d, model, data = setup
    out, report = straight
    rm = RewardServer()
    try:
        flags = grpo(model, data, rm.url, d / "finetune", d / "finetune.jsonl")
        flags[flags.index("--num-rollout") + 1] = "1"
        flags[flags.index("--lr") + 1] = "0"
        r = run("head", "--in-process", "--report", str(d / "finetune.json"), *flags,
                "--load", str(out / "ckpt"), "--ckpt-step", "2", "--finetune", check=False)
        assert r.returncode == 0, r.stderr
    finally:
        rm.close()
    ft = json.load(open(d / "finetune.json"))
    assert [x["rollout"] for x in ft["rollouts"]] == [0]
    assert all(g["weight_version"] == 0 for g in ft["rollouts"][0]["generate"])
    assert sync_checksums(ft) == [(1, report["rollouts"][1]["sync"]["checksum"])]
    # Without --finetune, an SFT checkpoint (no rollout state) is refused with the hint.
    sft = d / "sft-like"
    (sft / "iter_0000003").mkdir(parents=True)
    shutil.copytree(out / "ckpt" / "iter_0000002" / "model", sft / "iter_0000003" / "model")
    shutil.copy(out / "ckpt" / "iter_0000002" / "optimizer.safetensors", sft / "iter_0000003")
    st = json.load(open(out / "ckpt" / "iter_0000002" / "trainer_state.json"))
    st["iteration"] = 3
    st["state"] = {"data_cursor": {}, "tokens_seen": 10}
    json.dump(st, open(sft / "iter_0000003" / "trainer_state.json", "w"))
    open(sft / "latest_checkpointed_iteration.txt", "w").write("3\n")
    err = failed_init(d, "sft-like", [*flags, "--load", str(sft)])
    assert "not a checkpoint of an RL job" in err and "--finetune" in err, err
    r = run("head", "--in-process", *flags, "--finetune", check=False)
    assert r.returncode == 1 and "--finetune needs --load" in r.stderr


def assert_close_metrics(a, b, rtol):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            if isinstance(x[k], float):
                assert abs(x[k] - y[k]) <= rtol * max(1.0, abs(x[k])), (k, x[k], y[k])
            else:
                assert x[k] == y[k], k


@pytest.mark.skipif(not has_cuda(), reason="no CUDA device: runs on the GPU machine")
def test_cuda_killed_run_resumes(setup):
    """--device cuda: the same kill and resume. Checked within 1e-5 (weights, AdamW moments)
    and 1e-4 relative (metrics) rather than bitwise, since CUDA kernels need not reduce in a
    fixed order; the RNG states (CPU and CUDA) and the rollout cursors exactly."""
    d, model, data = setup
    cuda = ("--device", "cuda")
    out, _ = straight_run(d / "straight-cuda", model, data, *cuda)
    run_dir = d / "killed-cuda"
    report = kill_and_resume_in_process(run_dir, model, data, *cuda)
    assert [r["rollout"] for r in report["rollouts"]] == [2, 3]
    assert_close_metrics(metric_lines(out / "metrics.jsonl"),
                         metric_lines(run_dir / "metrics.jsonl"), 1e-4)
    ta, sa = checkpoint(out / "ckpt", 4)
    tb, sb = checkpoint(run_dir / "ckpt", 4)
    assert ta.keys() == tb.keys() and sa == sb
    for f in ta:
        for k in ta[f]:
            if k.startswith("__rng__"):
                assert ta[f][k].tobytes() == tb[f][k].tobytes(), k
            else:
                diff = np.abs(ta[f][k].astype(np.float64) - tb[f][k].astype(np.float64)).max()
                assert diff <= 1e-5, (f, k, diff)

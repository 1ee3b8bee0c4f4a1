"""The training loop of `anvil train` (actors/controller.cpp) on a tiny model, every role in
one process: the metrics hub's records per optimizer step (JSONL, TensorBoard, console),
rewards checked against a reward server that records what it answered, the one-step-off
async pipeline (`anvil train-async`: sample weight versions, staleness, weight pushes every
--update-weights-interval), the colocated offload/onload of the train role, and flag errors
that name the flags."""
import json
import os
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from test_runtime import ANVIL, ENV, setup  # noqa: F401

GROUP = 2 * 2  # --rollout-batch-size 2 x --n-samples-per-prompt 2: samples per rollout


class RecordingRewardServer:
    """--rm-type remote_rm: the reward of a response is a function of its text; every
    answer is recorded in arrival order."""

    def __init__(self):
        self.rewards = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                reward = (sum(map(ord, body["response"])) % 7) / 6.0
                with server.lock:
                    server.rewards.append(reward)
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
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def rm():
    server = RecordingRewardServer()
    yield server
    server.close()


def flags(model, data, url, *extra):
    return ["--model", model, "--prompt-data", data, "--input-key", "prompt",
            "--label-key", "label", "--rollout-batch-size", "2", "--n-samples-per-prompt", "2",
            "--rollout-max-response-len", "4", "--global-batch-size", "2", "--lr", "1e-2",
            "--rollout-sampling-seed", "5", "--rm-type", "remote_rm", "--rm-url", url, *extra]


def run(*args, check=True, timeout=120):
    """`anvil ARGS`; on a failure or a timeout the assertion shows its stderr."""
    try:
        p = subprocess.run([ANVIL, *args], capture_output=True, text=True, env=ENV,
                           timeout=timeout)
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        raise AssertionError(f"anvil {' '.join(args)} did not finish in {timeout} s:\n{err}")
    if check and p.returncode != 0:
        raise AssertionError(f"anvil {' '.join(args)} failed ({p.returncode}):\n{p.stderr}")
    return p


def lines(path):
    return [json.loads(l) for l in open(path)]


def test_train_logs_every_optimizer_step_through_the_hub(setup, rm):
    d, model, data = setup
    out = d / "train-sync"
    metrics, tb = out / "metrics.jsonl", out / "tb"
    p = run("train", "--report", str(out / "report.json"),
            *flags(model, data, rm.url, "--num-rollout", "2", "--metrics-jsonl", str(metrics),
                   "--use-tensorboard", "--tensorboard-dir", str(tb)))
    report = json.load(open(out / "report.json"))
    assert report["ok"] and len(report["rollouts"]) == 2
    # In one process (no workers): every role placed on the in-process node.
    assert {pl["node_id"] for pl in report["placement"]} == {"in-process"}
    m = lines(metrics)
    # --global-batch-size 2 of 4 samples: two optimizer steps per rollout, numbered globally.
    assert [l["step"] for l in m] == [0, 1, 2, 3]
    assert [(l["rollout"], l["weight_version"]) for l in m] == [(0, 1), (0, 1), (1, 2), (1, 2)]
    for l in m:
        for key in ("time/rollout", "time/train", "time/sync", "time/step", "perf/tokens_per_s",
                    "loss", "grad_norm", "lr", "rollout/response_tokens"):
            assert key in l, (key, l)
        assert l["time/step"] >= l["time/sync"] > 0 and l["perf/tokens_per_s"] > 0
        # The synchronous loop trains on samples of the weights it holds.
        assert l["async/staleness_mean"] == 0 and l["async/staleness_max"] == 0
    # The rewards the reward model answered, averaged per rollout.
    assert len(rm.rewards) == 2 * GROUP
    for k in range(2):
        want = sum(rm.rewards[k * GROUP:(k + 1) * GROUP]) / GROUP
        assert all(abs(l["rollout/reward_mean"] - want) < 1e-9 for l in m if l["rollout"] == k)
    # Response tokens: what the engine generated, as the train role counted them.
    for k, r in enumerate(report["rollouts"]):
        assert m[2 * k]["rollout/response_tokens"] == sum(g["response_tokens"] for g in r["generate"])
    # The console progress line per step on stdout.
    assert p.stdout.count("step ") >= 4 and "reward" in p.stdout
    # TensorBoard: one event file with the same scalars.
    files = os.listdir(tb)
    assert len(files) == 1 and files[0].startswith("events.out.tfevents.")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(tb))
    acc.Reload()
    events = acc.Scalars("rollout/reward_mean")
    assert [e.step for e in events] == [0, 1, 2, 3]
    assert abs(events[0].value - m[0]["rollout/reward_mean"]) < 1e-6


def test_train_async_is_one_step_off(setup, rm):
    d, model, data = setup
    out = d / "train-async"
    metrics = out / "metrics.jsonl"
    run("train-async", "--report", str(out / "report.json"),
        *flags(model, data, rm.url, "--num-rollout", "3", "--metrics-jsonl", str(metrics),
               "--get-mismatch-metrics"))
    report = json.load(open(out / "report.json"))
    assert report["ok"] and [r["rollout"] for r in report["rollouts"]] == [0, 1, 2]
    # Rollout k+1 is generated while k trains: with the weights of version k (rollout 0 and 1
    # both with the initial weights), one version behind the trainer from rollout 1 on.
    gen_versions = [r["generate"][0]["weight_version"] for r in report["rollouts"]]
    assert gen_versions == [0, 0, 1]
    assert [r["train"][0]["staleness_max"] for r in report["rollouts"]] == [0, 1, 1]
    # Weights pushed after every rollout (--update-weights-interval 1).
    assert [r["sync"]["weight_version"] for r in report["rollouts"]] == [1, 2, 3]
    for r in report["rollouts"]:
        assert all(e["checksum"] == r["sync"]["checksum"] for e in r["sync"]["engines"])
    m = lines(metrics)
    assert [l["async/staleness_mean"] for l in m] == [0, 0, 1, 1, 1, 1]
    # Train/rollout log-prob mismatch per step: 0 on-policy (fp32 rounding), larger once the
    # samples are one version old.
    assert all("train_rollout_logprob_abs_diff" in l and "tis" in l for l in m)
    assert max(l["train_rollout_logprob_abs_diff"] for l in m[:2]) < 1e-4
    assert min(l["train_rollout_logprob_abs_diff"] for l in m[2:]) > 1e-4
    assert all("time/wait_rollout" in l for l in m)
    # Rewards are those of the reward model, in order (generations never overlap each other).
    for k in range(3):
        want = sum(rm.rewards[k * GROUP:(k + 1) * GROUP]) / GROUP
        assert abs(m[2 * k]["rollout/reward_mean"] - want) < 1e-9


def test_train_async_update_weights_interval(setup, rm):
    d, model, data = setup
    out = d / "train-async-2"
    run("train", "--async", "--report", str(out / "report.json"),
        *flags(model, data, rm.url, "--num-rollout", "3", "--update-weights-interval", "2"))
    report = json.load(open(out / "report.json"))
    assert report["ok"]
    # A push after rollout 1 (every 2) and at the end; none after rollout 0.
    assert ["sync" in r for r in report["rollouts"]] == [False, True, True]
    # Rollout 2 was generated while rollout 1 trained, before that push: initial weights.
    assert [r["generate"][0]["weight_version"] for r in report["rollouts"]] == [0, 0, 0]
    assert [r["train"][0]["staleness_max"] for r in report["rollouts"]] == [0, 1, 2]


def test_colocated_train_offloads_around_generation(setup, rm):
    d, model, data = setup
    out = d / "train-colocate"
    run("train", "--colocate", "--report", str(out / "report.json"),
        *flags(model, data, rm.url, "--num-rollout", "2"))
    report = json.load(open(out / "report.json"))
    assert report["ok"]
    for r in report["rollouts"]:
        # The train role gave the device up before generation and took it back before
        # training (on the CPU nothing moves, and the role says so).
        assert [o["moved"] for o in r["train_offload"]] == [False]
        assert [o["moved"] for o in r["train_onload"]] == [False]
        assert "offload" in r and "onload" in r  # the engines' mirror image


@pytest.mark.parametrize("extra,message", [
    (["--colocate"], "--async (anvil train-async) and --colocate cannot be combined"),
])
def test_async_refuses_colocate(setup, extra, message):
    d, model, data = setup
    p = run("train-async", *flags(model, data, "http://127.0.0.1:9/x", *extra), check=False)
    assert p.returncode == 1 and message in p.stderr, p.stderr


def test_update_weights_interval_needs_async(setup):
    d, model, data = setup
    p = run("train", *flags(model, data, "http://127.0.0.1:9/x", "--update-weights-interval",
                            "2"), check=False)
    assert p.returncode == 1, p.stderr
    assert "--update-weights-interval 2 needs --async" in p.stderr


@pytest.fixture(scope="module")
def chat_data(setup):
    d, model, data = setup
    path = d / "chat.jsonl"
    with open(path, "w") as f:
        for i in range(12):
            msgs = [{"role": "user", "content": f"what is {i} plus {i}?"},
                    {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]
            f.write(json.dumps({"messages": msgs}) + "\n")
    return str(path)


SFT = ["--input-key", "messages", "--global-batch-size", "4", "--micro-batch-size", "2",
       "--lr", "2e-3", "--calculate-per-token-loss", "--rollout-shuffle"]


def test_sft_in_the_loop_equals_anvil_sft(setup, chat_data):
    """--loss-type sft_loss: only the train role runs; its steps are `anvil sft`'s."""
    d, model, _ = setup
    out = d / "loop-sft"
    metrics = out / "metrics.jsonl"
    run("train", "--report", str(out / "report.json"), "--model", model,
        "--prompt-data", chat_data, "--loss-type", "sft_loss", "--num-rollout", "3",
        "--metrics-jsonl", str(metrics), "--save", str(out / "ckpt"), *SFT)
    report = json.load(open(out / "report.json"))
    assert report["ok"] and len(report["rollouts"]) == 3
    assert [p["role"] for p in report["placement"]] == ["train"]
    m = lines(metrics)
    assert [l["step"] for l in m] == [0, 1, 2]
    for l in m:
        for key in ("sft/loss", "sft/per_token_loss", "sft/tokens_seen", "sft/epoch",
                    "data/prefetch_queue_depth", "grad_norm", "lr"):
            assert key in l, (key, l)
    assert m[0]["sft/tokens_seen"] < m[1]["sft/tokens_seen"] < m[2]["sft/tokens_seen"]
    # The oracle: `anvil sft` on the same data and flags, one process, no actors.
    ref = out / "sft.jsonl"
    run("sft", "--model", model, "--prompt-data", chat_data, "--num-steps", "3",
        "--metrics-jsonl", str(ref), *SFT)
    r = lines(ref)
    assert len(r) == 3
    for a, b in zip(m, r):
        assert abs(a["sft/loss"] - b["sft/loss"]) <= 1e-6, (a, b)
        assert a["sft/tokens_seen"] == b["sft/tokens_seen"]
    assert (out / "ckpt" / "latest_checkpointed_iteration.txt").read_text().strip() == "3"


def test_rl_from_the_sft_checkpoint(setup, chat_data, rm):
    d, model, data = setup
    sft = d / "loop-sft" / "ckpt"
    if not sft.exists():
        pytest.skip("needs test_sft_in_the_loop_equals_anvil_sft's checkpoint")
    out = d / "rl-after-sft"
    run("train", "--report", str(out / "report.json"),
        *flags(model, data, rm.url, "--num-rollout", "1", "--load", str(sft), "--finetune",
               "--save", str(out / "ckpt")))
    report = json.load(open(out / "report.json"))
    assert report["ok"]
    # The engines and the trainer started from the SFT weights (version 0 = the checkpoint's).
    import numpy as np
    from safetensors.numpy import load_file
    a = load_file(str(sft / "iter_0000003" / "model" / "model.safetensors"))
    b = load_file(os.path.join(model, "model.safetensors"))
    name = next(k for k in a if k.endswith("q_proj.weight"))
    assert not np.array_equal(a[name], b[name])
    assert (out / "ckpt" / "latest_checkpointed_iteration.txt").read_text().strip() == "1"


# ---- eval in the loop, SFT resume, --ref-load, slime's debug switches -----------------------

EVAL = ["--n-samples-per-eval-prompt", "3", "--eval-temperature", "0.8",
        "--eval-max-response-len", "4", "--eval-seed", "11"]


@pytest.fixture(scope="module")
def held_out(setup):
    d, _, _ = setup
    path = d / "held.jsonl"
    with open(path, "w") as f:
        for i in range(5):  # odd: the two engines get 3 and 2 prompts
            f.write(json.dumps({"prompt": f"count to {100 + i}:", "label": str(100 + i)}) + "\n")
    return str(path)


def anvil_eval(model, held, url, out):
    """The oracle: `anvil eval` (one engine, no actors) on the same prompts and settings."""
    run("eval", "--model", model, "--prompt-data", held, "--input-key", "prompt",
        "--label-key", "label", "--rm-type", "remote_rm", "--rm-url", url, *EVAL,
        "--output", str(out))
    return json.load(open(out))


def test_eval_in_the_loop_equals_anvil_eval(setup, rm, held_out):
    """--eval-interval: before training and after rollout 2 (interval 2, last), each of two
    engines evaluates its share; the combined accuracy, pass@k and mean reward equal
    `anvil eval` of the same weights (the initial model, then the saved iteration 2)."""
    d, model, data = setup
    out = d / "loop-eval"
    metrics = out / "metrics.jsonl"
    p = run("train", "--report", str(out / "report.json"),
            *flags(model, data, rm.url, "--num-rollout", "2", "--rollout-num-gpus", "2",
                   "--metrics-jsonl", str(metrics), "--save", str(out / "ckpt"),
                   "--eval-interval", "2", "--eval-prompt-data", "held", held_out, *EVAL))
    report = json.load(open(out / "report.json"))
    assert report["ok"], report
    evals = report["evals"]
    assert [e["rollout"] for e in evals] == [0, 2]
    assert sorted(e["prompts"] for e in evals[0]["engines"]) == [2, 3]
    assert [e["engines"][0]["weight_version"] for e in evals] == [0, 2]
    assert "eval at rollout 2: accuracy" in p.stderr + p.stdout
    m = [l for l in lines(metrics) if "eval/held/accuracy" in l]
    assert [l["rollout"] for l in m] == [0, 2]
    for e, weights in zip(evals, [model, str(out / "ckpt" / "iter_0000002" / "model")]):
        want = anvil_eval(weights, held_out, rm.url, out / f"oracle-{e['rollout']}.json")
        got = e["metrics"]
        assert got["eval/held/samples"] == want["samples"] == 15
        assert got["eval/held/prompts"] == want["prompts"] == 5
        assert got["eval/held/accuracy"] == pytest.approx(want["accuracy"], abs=1e-12)
        assert got["eval/held/mean_reward"] == pytest.approx(want["mean_reward"], abs=1e-12)
        for k in ("1", "2", "3"):
            assert got[f"eval/held/pass@{k}"] == pytest.approx(want[f"pass@{k}"], abs=1e-12)
        assert got["eval/held/mean_response_tokens"] == pytest.approx(
            want["mean_response_tokens"], abs=1e-12)


def test_eval_flag_errors(setup, held_out):
    d, model, data = setup
    base = flags(model, data, "http://127.0.0.1:9/x")
    for extra, message in [
        (["--eval-interval", "1"], "--eval-interval 1 needs --eval-prompt-data"),
        (["--eval-prompt-data", held_out], "--eval-prompt-data is set but --eval-interval"),
        (["--eval-interval", "1", "--eval-prompt-data", held_out,
          "--n-samples-per-eval-prompt", "0"], "--n-samples-per-eval-prompt"),
        (["--eval-interval", "1", "--eval-prompt-data", str(d / "missing.jsonl")],
         "missing.jsonl"),
    ]:
        p = run("train", *base, *extra, check=False, timeout=60)
        assert p.returncode != 0 and message in p.stderr, (extra, p.stderr)


def test_sft_in_the_loop_resumes_the_dataset(setup, chat_data):
    """An SFT job of the loop checkpointed after every step and resumed from iteration 1
    continues the dataset where it stopped: the same losses and tokens as the straight run,
    and the same final weights."""
    d, model, _ = setup
    out = d / "loop-sft-resume"
    common = ["--model", model, "--prompt-data", chat_data, "--loss-type", "sft_loss",
              "--num-rollout", "3", *SFT]
    run("train", *common, "--metrics-jsonl", str(out / "a.jsonl"), "--save", str(out / "a"),
        "--save-interval", "1")
    run("train", *common, "--metrics-jsonl", str(out / "b.jsonl"), "--save", str(out / "b"),
        "--load", str(out / "a"), "--ckpt-step", "1")
    a, b = lines(out / "a.jsonl"), lines(out / "b.jsonl")
    assert [l["step"] for l in b] == [1, 2]
    for x, y in zip(a[1:], b):
        assert x["sft/loss"] == y["sft/loss"], (x, y)
        assert x["sft/tokens_seen"] == y["sft/tokens_seen"]
    wa = open(out / "a" / "iter_0000003" / "model" / "model.safetensors", "rb").read()
    wb = open(out / "b" / "iter_0000003" / "model" / "model.safetensors", "rb").read()
    assert wa == wb
    # An RL checkpoint carries no SFT data cursor: plain --load in SFT mode is refused.
    rl = d / "loop-eval" / "ckpt"
    if rl.exists():
        p = run("train", *common, "--load", str(rl), check=False)
        assert p.returncode != 0 and "no SFT data cursor" in p.stderr, p.stderr


def first_kl(metrics):
    return lines(metrics)[0]["kl_loss"]


def test_ref_load_sets_the_kl_anchor(setup, chat_data, rm):
    """RL after SFT (seed 002): with --ref-load of the SFT checkpoint the reference equals
    the starting policy, so the first step's KL loss is exactly 0; with the base model as
    reference it is not."""
    d, model, data = setup
    sft = d / "loop-sft" / "ckpt"
    if not sft.exists():
        pytest.skip("needs test_sft_in_the_loop_equals_anvil_sft's checkpoint")
    out = d / "ref-load"
    kl = ["--use-kl-loss", "--kl-loss-coef", "0.1", "--kl-loss-type", "low_var_kl",
          "--num-rollout", "1", "--load", str(sft), "--finetune"]
    run("train", *flags(model, data, rm.url, *kl, "--ref-load", str(sft),
                        "--metrics-jsonl", str(out / "sft-ref.jsonl")))
    run("train", *flags(model, data, rm.url, *kl, "--metrics-jsonl", str(out / "base-ref.jsonl")))
    assert abs(first_kl(out / "sft-ref.jsonl")) < 1e-9
    assert abs(first_kl(out / "base-ref.jsonl")) > 1e-6
    # An HF directory works too (the SFT checkpoint's model/).
    run("train", *flags(model, data, rm.url, *kl, "--ref-load",
                        str(sft / "iter_0000003" / "model"),
                        "--metrics-jsonl", str(out / "hf-ref.jsonl")))
    assert abs(first_kl(out / "hf-ref.jsonl")) < 1e-9
    p = run("train", *flags(model, data, rm.url, *kl, "--ref-load", str(d / "nowhere")),
            check=False)
    assert p.returncode != 0 and "--ref-load" in p.stderr and "nowhere" in p.stderr, p.stderr
    p = run("train", *flags(model, data, rm.url, "--ref-load", str(sft)), check=False)
    assert p.returncode != 0 and "no reference model is used" in p.stderr, p.stderr


def test_debug_rollout_only_then_debug_train_only(setup, rm):
    """--debug-rollout-only places only the engines and saves their samples; a normal run
    saves its samples too; --debug-train-only (no inference engine) trained on the normal
    run's samples reaches the normal run's weights exactly."""
    d, model, data = setup
    out = d / "debug"
    p = run("train", "--report", str(out / "ro.json"),
            *flags(model, data, rm.url, "--num-rollout", "2", "--debug-rollout-only",
                   "--metrics-jsonl", str(out / "ro.jsonl"),
                   "--save-debug-rollout-data", str(out / "ro" / "{rollout_id}.jsonl")))
    report = json.load(open(out / "ro.json"))
    assert report["ok"] and [pl["role"] for pl in report["placement"]] == ["rollout"]
    assert [l["rollout"] for l in lines(out / "ro.jsonl")] == [0, 1]
    assert all(l["weight_version"] == 0 for l in lines(out / "ro.jsonl"))
    for k in range(2):
        assert len(lines(out / "ro" / f"{k}.jsonl")) == GROUP
    # A normal run that records its samples, then training alone on them.
    run("train", *flags(model, data, rm.url, "--num-rollout", "2", "--save", str(out / "full"),
                        "--save-debug-rollout-data", str(out / "full" / "{rollout_id}.jsonl")))
    run("train", "--report", str(out / "to.json"),
        *flags(model, data, rm.url, "--num-rollout", "2", "--debug-train-only",
               "--save", str(out / "to"),
               "--load-debug-rollout-data", str(out / "full" / "{rollout_id}.jsonl")))
    report = json.load(open(out / "to.json"))
    assert report["ok"] and "weight-sync" not in [pl["role"] for pl in report["placement"]]
    a = open(out / "full" / "iter_0000002" / "model" / "model.safetensors", "rb").read()
    b = open(out / "to" / "iter_0000002" / "model" / "model.safetensors", "rb").read()
    assert a == b


@pytest.mark.parametrize("extra,message", [
    (["--debug-rollout-only", "--debug-train-only"], "exclude each other"),
    (["--debug-rollout-only", "--save", "x"], "trains nothing"),
    (["--debug-train-only"], "needs --load-debug-rollout-data"),
    (["--disable-compute-advantages-and-returns"], "needs --loss-type sft_loss"),
    (["--debug-rollout-only", "--colocate"], "--colocate"),
])
def test_debug_flag_errors(setup, extra, message):
    d, model, data = setup
    p = run("train", *flags(model, data, "http://127.0.0.1:9/x", *extra), check=False, timeout=60)
    assert p.returncode != 0 and message in p.stderr, p.stderr


def test_debug_rollout_only_refuses_async(setup):
    d, model, data = setup
    p = run("train", "--async", *flags(model, data, "http://127.0.0.1:9/x",
                                       "--debug-rollout-only"), check=False, timeout=60)
    assert p.returncode != 0 and "--debug-rollout-only" in p.stderr, p.stderr

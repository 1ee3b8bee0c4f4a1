"""Rollout-side data features of the RL job, with slime's flags: dynamic sampling
(--dynamic-sampling-filter-path check_reward_nonzero_std with --over-sampling-batch-size:
each engine generates rounds of prompts until it has its share of groups whose rewards
differ, dropping the others) and debug rollout data (--save-debug-rollout-data writes each
rollout's samples as JSONL, --load-debug-rollout-data trains on them instead of generating:
the loaded run must train to exactly the weights of the run that saved them)."""
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from test_runtime import run, setup  # noqa: F401

SLIME_FILTER = "slime.rollout.filter_hub.dynamic_sampling_filters.check_reward_nonzero_std"


class ParityReward:
    """A remote reward model whose reward is the parity of the response's characters: the two
    samples of a group agree about half the time, so the filter has work to do."""

    def __init__(self):
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                data = json.dumps(float(sum(map(ord, body["response"])) % 2)).encode()
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


@pytest.fixture(scope="module")
def reward():
    r = ParityReward()
    yield r
    r.close()


def job(model, data, url, *extra):
    return ["--model", model, "--prompt-data", data, "--input-key", "prompt",
            "--label-key", "label", "--rollout-batch-size", "2", "--n-samples-per-prompt", "2",
            "--rollout-max-response-len", "4", "--global-batch-size", "4", "--lr", "1e-2",
            "--rollout-sampling-seed", "5", "--rm-type", "remote_rm", "--rm-url", url,
            "--num-rollout", "3", *extra]


def head(d, name, flags, check=True):
    out = d / f"{name}.json"
    p = run("head", "--in-process", "--report", str(out), *flags, check=False)
    if check:
        assert p.returncode == 0, p.stderr
        return json.load(open(out))
    return p


def samples(path):
    return [json.loads(line) for line in open(path)]


def test_dynamic_sampling_keeps_groups_whose_rewards_differ_and_debug_data_replays(setup, reward):
    d, model, data = setup
    dump = d / "dyn" / "rollout_{rollout_id}.jsonl"
    report = head(d, "dyn", job(model, data, reward.url, "--dynamic-sampling-filter-path",
                                SLIME_FILTER, "--over-sampling-batch-size", "4",
                                "--save-debug-rollout-data", str(dump)))
    assert report["ok"]
    filtered = 0
    for k, r in enumerate(report["rollouts"]):
        g = r["generate"][0]
        assert g["groups"] == 2 and g["samples"] == 4 and g["rounds"] >= 1
        assert g["groups_generated"] == 4 * g["rounds"]
        filtered += g["groups_filtered"]
        assert r["train"][0]["samples"] == 4
        saved = samples(str(dump).replace("{rollout_id}", str(k)))
        assert len(saved) == 4
        by_group = {}
        for s in saved:
            by_group.setdefault(s["group_id"], []).append(s["reward"])
            assert s["weight_version"] == k and len(s["rollout_logprobs"]) == s["response_length"]
        assert len(by_group) == 2
        assert all(len(set(v)) == 2 for v in by_group.values()), by_group
    assert filtered > 0  # the parity rewards left some groups without spread

    # The same job trained on the saved samples instead of generating: the same weights.
    replay = head(d, "replay", job(model, data, reward.url, "--load-debug-rollout-data",
                                   str(dump)))
    assert [r["sync"]["checksum"] for r in replay["rollouts"]] == \
        [r["sync"]["checksum"] for r in report["rollouts"]]
    assert all("loaded_from" in r["generate"][0] for r in replay["rollouts"])


@pytest.mark.parametrize("extra,message", [
    (["--over-sampling-batch-size", "4"], "without --dynamic-sampling-filter-path"),
    (["--dynamic-sampling-filter-path", "my.filters.keep_all"], "unknown filter"),
    (["--dynamic-sampling-filter-path", "check_reward_nonzero_std", "--n-samples-per-prompt",
      "1"], "needs --n-samples-per-prompt >= 2"),
    (["--dynamic-sampling-filter-path", "check_reward_nonzero_std",
      "--over-sampling-batch-size", "1"], "is below --rollout-batch-size 2"),
    (["--save-debug-rollout-data", "/tmp/one_file.jsonl"], "the path needs {rollout_id}"),
])
def test_bad_rollout_flags_are_named(setup, reward, extra, message):
    d, model, data = setup
    p = head(d, "bad", job(model, data, reward.url, *extra), check=False)
    assert p.returncode != 0 and message in p.stderr, p.stderr


def test_missing_debug_rollout_data_is_named(setup, reward):
    d, model, data = setup
    missing = d / "nowhere" / "r_{rollout_id}.jsonl"
    p = head(d, "missing", job(model, data, reward.url, "--load-debug-rollout-data",
                               str(missing)), check=False)
    assert p.returncode != 0
    assert str(missing).replace("{rollout_id}", "0") in p.stderr, p.stderr


def test_dynamic_sampling_that_never_finds_spread_fails_clearly(setup):
    d, model, data = setup
    # exact_match on "count to i:" -> "i": a random tiny model never matches, every group's
    # rewards are 0, so no group passes the filter and the engine gives up naming the flag.
    p = head(d, "nospread", ["--model", model, "--prompt-data", data, "--input-key", "prompt",
                             "--label-key", "label", "--rollout-batch-size", "2",
                             "--n-samples-per-prompt", "2", "--rollout-max-response-len", "2",
                             "--global-batch-size", "4", "--rm-type", "exact_match",
                             "--num-rollout", "1", "--dynamic-sampling-filter-path",
                             "check_reward_nonzero_std"], check=False)
    assert p.returncode != 0
    assert "had rewards that differ" in p.stderr and "--dynamic-sampling-filter-path" in p.stderr

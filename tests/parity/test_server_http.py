"""HTTP conformance of `anvil serve` with a real client (urllib) against a running server:
every endpoint, single and batch requests, SGLang's response shapes, OpenAI completions,
and malformed requests (bad JSON, wrong types, too-long prompts, unknown fields by SGLang's
rules: ignored at the top level, rejected inside sampling_params). The server must keep
serving after each error."""

import base64
import json
import os
import shutil
import subprocess
import threading
import time
import urllib.request

import pytest

from serve_util import ANVIL, Server


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("m") / "qwen3")
    subprocess.run([ANVIL, "init-model", "--arch", "qwen3", "--preset", "tiny", "--out", d,
                    "--seed", "31", "--force"], check=True, capture_output=True)
    return d


@pytest.fixture(scope="module")
def srv(model):
    with Server(model, "--kv-cache-tokens", "4096", "--weight-version", "v0") as s:
        yield s


def greedy(n=8, **extra):
    return {"temperature": 0, "max_new_tokens": n, "ignore_eos": True, **extra}


def check_result(r, n_out=None):
    assert set(r) >= {"text", "output_ids", "meta_info"}
    m = r["meta_info"]
    assert set(m) >= {"id", "finish_reason", "prompt_tokens", "completion_tokens",
                      "cached_tokens", "weight_version"}
    assert m["completion_tokens"] == len(r["output_ids"])
    if n_out is not None:
        assert len(r["output_ids"]) == n_out


def test_health_and_info(srv):
    assert srv.get("/health")[0] == 200
    assert srv.get("/health_generate")[0] == 200
    status, info = srv.get("/get_model_info")
    assert status == 200 and info["is_generation"] is True
    assert srv.get("/get_weight_version") == (200, {"weight_version": "v0"})
    status, models = srv.get("/v1/models")
    assert status == 200 and models["data"][0]["object"] == "model"


def test_generate_single_and_batch(srv):
    status, r = srv.post("/generate", {"text": "Hello world", "sampling_params": greedy(),
                                       "return_logprob": True})
    assert status == 200, r
    check_result(r, 8)
    assert r["meta_info"]["finish_reason"] == {"type": "length", "length": 8}
    assert r["meta_info"]["weight_version"] == "v0"
    lps = r["meta_info"]["output_token_logprobs"]
    assert [t for _, t, _ in lps] == r["output_ids"]
    assert all(lp <= 0 and txt is None for lp, _, txt in lps)
    # input_ids gives the same as the text's tokens.
    ids = None
    status, r2 = srv.post("/generate", {"input_ids": [1, 2, 3], "sampling_params": greedy()})
    assert status == 200 and "output_token_logprobs" not in r2["meta_info"]
    assert r2["meta_info"]["prompt_tokens"] == 3
    # Batches: text list, input_ids list of lists, per-item sampling params and rids.
    status, rs = srv.post("/generate", {"text": ["a", "bb", "ccc"], "sampling_params": greedy(4)})
    assert status == 200 and isinstance(rs, list) and len(rs) == 3
    for r in rs:
        check_result(r, 4)
    status, rs = srv.post("/generate", {
        "input_ids": [[1, 2, 3], [4, 5]],
        "sampling_params": [greedy(2), greedy(5)],
        "rid": ["x", "y"], "return_logprob": [True, False]})
    assert status == 200, rs
    assert [len(r["output_ids"]) for r in rs] == [2, 5]
    assert [r["meta_info"]["id"] for r in rs] == ["x", "y"]
    assert "output_token_logprobs" in rs[0]["meta_info"]
    assert "output_token_logprobs" not in rs[1]["meta_info"]
    # The batch's first item equals the single request.
    assert rs[0]["output_ids"] == r2["output_ids"][:2]
    # n samples of one input come back as a list, the prompt cached for all but the first.
    status, rs = srv.post("/generate", {"input_ids": list(range(1, 40)),
                                        "sampling_params": {"n": 3, "max_new_tokens": 6,
                                                            "temperature": 1.0,
                                                            "ignore_eos": True}})
    assert status == 200 and len(rs) == 3, rs
    assert [r["meta_info"]["cached_tokens"] for r in rs][1:] == [39, 39]
    # Unknown top-level fields are ignored (as SGLang's dataclass parsing does).
    status, r = srv.post("/generate", {"text": "x", "sampling_params": greedy(1),
                                       "some_future_field": {"a": 1}, "logprob_start_len": -1})
    assert status == 200, r


def test_stop_conditions(srv):
    _, full = srv.post("/generate", {"input_ids": [5, 6, 7], "sampling_params": greedy(12)})
    ids = full["output_ids"]
    status, r = srv.post("/generate", {"input_ids": [5, 6, 7],
                                       "sampling_params": greedy(12, stop_token_ids=[ids[3]])})
    assert status == 200
    k = ids.index(ids[3])
    assert r["output_ids"] == ids[:k + 1]
    assert r["meta_info"]["finish_reason"] == {"type": "stop", "matched": ids[3]}
    # A stop string taken from the greedy text: the text is cut before it.
    text = full["text"]
    if len(text) >= 4:
        stop = text[2:4]
        status, r = srv.post("/generate", {"input_ids": [5, 6, 7],
                                           "sampling_params": greedy(12, stop=stop)})
        assert status == 200
        assert r["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop}
        assert r["text"] == text[:text.index(stop)]
        status, r = srv.post("/generate", {"input_ids": [5, 6, 7],
                                           "sampling_params": greedy(12, stop=[stop],
                                                                     no_stop_trim=True)})
        assert r["text"].endswith(stop)


@pytest.mark.parametrize("body,needle", [
    ({"sampling_params": greedy()}, "exactly one of text and input_ids"),
    ({"text": "a", "input_ids": [1]}, "exactly one of text and input_ids"),
    ({"text": 5}, "text must be a string"),
    ({"input_ids": [1, "2"]}, "input_ids[1]"),
    ({"input_ids": [[1], [2, 3.5]]}, "input_ids[1][1]"),
    ({"input_ids": []}, "input_ids"),
    ({"input_ids": [1, 10 ** 7]}, "outside the vocabulary"),
    ({"text": "a", "sampling_params": {"temperature": "hot"}}, "sampling_params.temperature"),
    ({"text": "a", "sampling_params": {"max_new_tokens": -1}}, "max_new_tokens"),
    ({"text": "a", "sampling_params": {"top_p": 0}}, "top_p"),
    ({"text": "a", "sampling_params": {"bogus": 1}}, "unknown sampling parameter"),
    ({"text": "a", "sampling_params": [greedy()]}, "sampling_params must be an object"),
    ({"text": ["a", "b"], "sampling_params": [greedy()]}, "sampling_params has 1 entries"),
    ({"text": ["a", "b"], "rid": ["x"]}, "rid has 1 entries"),
    ({"text": "a", "return_logprob": "yes"}, "return_logprob"),
    ({"text": "a", "stream": "yes"}, "stream"),
    ({"text": "a", "return_logprob": True, "top_logprobs_num": -1}, "top_logprobs_num"),
    ({"input_ids": list(range(1, 300)) * 20}, "context window"),
])
def test_bad_generate_requests(srv, body, needle):
    status, r = srv.post("/generate", body)
    assert status == 400, r
    assert needle in r["error"]["message"], r
    assert r["error"]["code"] == 400


def test_malformed_bodies_and_paths(srv):
    for raw in [b"{bad", b"[1, 2]", b"", b"\xff\xfe"]:
        status, r = srv.post("/generate", raw=raw)
        assert status == 400 and "error" in r, (raw, r)
    status, r = srv.get("/no_such_endpoint")
    assert status == 404 and r["error"]["code"] == 404
    status, r = srv.post("/update_weights_from_disk", {"model_path": 3})
    assert status == 400
    status, r = srv.post("/update_weights_from_disk", {"model_path": "/nonexistent/model"})
    assert status == 400 and r["success"] is False and "/nonexistent/model" in r["message"]
    status, r = srv.post("/release_memory_occupation", {"tags": ["gpu_soul"]})
    assert status == 400
    status, r = srv.post("/pause_generation", {"mode": "sideways"})
    assert status == 400
    status, r = srv.post("/abort_request", {})
    assert status == 400
    assert srv.get("/health")[0] == 200  # still serving


def test_control_endpoints(srv, model):
    body = {"input_ids": [9, 8, 7, 6], "sampling_params": greedy(6)}
    _, ref = srv.post("/generate", body)
    assert srv.post("/flush_cache")[0] == 200
    assert srv.get("/flush_cache")[0] == 200
    # Pause in place: a request waits until generation continues.
    assert srv.post("/pause_generation", {"mode": "in_place"})[0] == 200
    result = {}
    t = threading.Thread(target=lambda: result.update(r=srv.post("/generate", body)))
    t.start()
    time.sleep(0.5)
    assert "r" not in result
    assert srv.post("/continue_generation")[0] == 200
    t.join(60)
    assert result["r"][0] == 200 and result["r"][1]["output_ids"] == ref["output_ids"]
    # Pause in abort mode (SGLang's default) aborts what is in flight.
    assert srv.post("/pause_generation", {"mode": "in_place"})[0] == 200
    t = threading.Thread(target=lambda: result.update(a=srv.post("/generate", body)))
    t.start()
    time.sleep(0.3)
    assert srv.post("/pause_generation")[0] == 200
    t.join(60)
    assert result["a"][1]["meta_info"]["finish_reason"]["type"] == "abort"
    assert srv.post("/continue_generation")[0] == 200
    # Release and resume memory; generation is unchanged afterwards.
    assert srv.post("/release_memory_occupation", {"tags": ["kv_cache", "weights"]})[0] == 200
    assert srv.post("/resume_memory_occupation", {})[0] == 200
    assert srv.post("/generate", body)[1]["output_ids"] == ref["output_ids"]
    # Weight update from disk (same weights): version changes, outputs do not.
    status, r = srv.post("/update_weights_from_disk", {"model_path": model,
                                                       "weight_version": "v1"})
    assert status == 200 and r["success"], r
    _, after = srv.post("/generate", body)
    assert after["output_ids"] == ref["output_ids"]
    assert after["meta_info"]["weight_version"] == "v1"


def test_concurrent_clients_share_the_batch(srv):
    results = [None] * 16

    def one(i):
        results[i] = srv.post("/generate", {"input_ids": [i + 1, 2, 3],
                                            "sampling_params": greedy(10)})

    threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for i, (status, r) in enumerate(results):
        assert status == 200
        _, alone = srv.post("/generate", {"input_ids": [i + 1, 2, 3],
                                          "sampling_params": greedy(10)})
        assert r["output_ids"] == alone["output_ids"]


def test_openai_completions(srv):
    status, r = srv.post("/v1/completions", {"model": "m", "prompt": "Hello", "max_tokens": 5,
                                             "temperature": 0, "logprobs": 0,
                                             "ignore_eos": True})
    assert status == 200, r
    assert r["object"] == "text_completion" and len(r["choices"]) == 1
    c = r["choices"][0]
    assert c["finish_reason"] == "length" and len(c["logprobs"]["token_logprobs"]) == 5
    assert r["usage"]["completion_tokens"] == 5
    assert r["usage"]["total_tokens"] == r["usage"]["prompt_tokens"] + 5
    status, r = srv.post("/v1/completions", {"prompt": ["a", "b"], "max_tokens": 3, "n": 2,
                                             "ignore_eos": True})
    assert status == 200 and len(r["choices"]) == 4
    assert [c["index"] for c in r["choices"]] == [0, 1, 2, 3]
    status, r = srv.post("/v1/completions", {"prompt": [1, 2, 3], "max_tokens": 2})
    assert status == 200
    status, r = srv.post("/v1/chat/completions", {
        "messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": "Hi!"}],
        "max_tokens": 6, "temperature": 0, "logprobs": True, "ignore_eos": True})
    assert status == 200, r
    assert r["object"] == "chat.completion"
    msg = r["choices"][0]["message"]
    assert msg["role"] == "assistant" and isinstance(msg["content"], str)
    assert len(r["choices"][0]["logprobs"]["content"]) == 6
    for body, needle in [({"prompt": "a", "max_tokens": "x"}, "max_tokens"),
                         ({"max_tokens": 2}, "prompt"),
                         ({"prompt": "a", "echo": True}, "echo"),
                         ({"prompt": "a", "temperature": -1}, "temperature")]:
        status, r = srv.post("/v1/completions", body)
        assert status == 400 and needle in r["error"]["message"], (body, r)
    status, r = srv.post("/v1/chat/completions", {"messages": "hi"})
    assert status == 400 and "messages" in r["error"]["message"]
    status, r = srv.post("/v1/chat/completions", {"messages": [{"content": "no role"}]})
    assert status == 400


def test_shutdown_on_sigterm(model):
    s = Server(model)
    assert s.get("/health")[0] == 200
    assert s.stop() == 0


# --- streaming (SSE through a real HTTP client) ----------------------------------------

def sse(srv, path, body, timeout=120):
    """POSTs `body` and reads the text/event-stream: the JSON of each `data:` line, up to
    [DONE] (which must come last)."""
    req = urllib.request.Request(srv.url + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    events, done = [], False
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        for raw in resp:
            line = raw.decode().rstrip("\n")
            if not line:
                continue
            assert line.startswith("data: "), line
            assert not done, "data after [DONE]"
            if line == "data: [DONE]":
                done = True
            else:
                events.append(json.loads(line[len("data: "):]))
    assert done
    return events


def test_generate_stream_ends_with_the_non_stream_result(srv):
    body = {"input_ids": [3, 1, 4, 1, 5], "sampling_params": greedy(10),
            "return_logprob": True, "top_logprobs_num": 3, "return_text_in_logprobs": True}
    status, ref = srv.post("/generate", body)
    assert status == 200, ref
    events = sse(srv, "/generate", {**body, "stream": True})
    assert len(events) == 11  # one per token, then the final result
    for i, e in enumerate(events[:-1]):
        assert e["output_ids"] == ref["output_ids"][:i + 1]
        assert e["meta_info"]["finish_reason"] is None
        assert len(e["meta_info"]["output_token_logprobs"]) == i + 1
    last = events[-1]
    assert last["output_ids"] == ref["output_ids"] and last["text"] == ref["text"]
    assert last["meta_info"]["finish_reason"] == ref["meta_info"]["finish_reason"]
    assert last["meta_info"]["output_token_logprobs"] == ref["meta_info"]["output_token_logprobs"]
    assert last["meta_info"]["output_top_logprobs"] == ref["meta_info"]["output_top_logprobs"]
    # Top log-probs: k entries, most likely first, the greedy token first with its own
    # log-prob; return_text_in_logprobs fills the token text.
    for (lp, tok, text), top in zip(ref["meta_info"]["output_token_logprobs"],
                                    ref["meta_info"]["output_top_logprobs"]):
        assert len(top) == 3 and top[0][1] == tok and top[0][0] == lp
        assert [t[0] for t in top] == sorted([t[0] for t in top], reverse=True)
        assert isinstance(text, str)
    # A batch streams every item, each event tagged with its index.
    events = sse(srv, "/generate", {"input_ids": [[1, 2], [3, 4, 5]],
                                    "sampling_params": [greedy(3), greedy(5)], "stream": True})
    finals = {e["index"]: e for e in events if e["meta_info"]["finish_reason"] is not None}
    assert sorted(finals) == [0, 1]
    assert [len(finals[i]["output_ids"]) for i in (0, 1)] == [3, 5]
    for i, ids in enumerate([[1, 2], [3, 4, 5]]):
        _, alone = srv.post("/generate", {"input_ids": ids, "sampling_params": greedy(3 + 2 * i)})
        assert finals[i]["output_ids"] == alone["output_ids"]


def test_openai_stream_deltas_concatenate_to_the_non_stream_result(srv):
    body = {"prompt": "Hello", "max_tokens": 9, "temperature": 0, "ignore_eos": True,
            "logprobs": 2}
    status, ref = srv.post("/v1/completions", body)
    assert status == 200, ref
    rc = ref["choices"][0]
    assert all(len(t) <= 2 for t in rc["logprobs"]["top_logprobs"])
    chunks = sse(srv, "/v1/completions",
                 {**body, "stream": True, "stream_options": {"include_usage": True}})
    assert all(c["object"] == "text_completion" and c["id"] == chunks[0]["id"] for c in chunks)
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["usage"] == ref["usage"]
    text = "".join(c["choices"][0]["text"] for c in chunks[:-1])
    assert text == rc["text"]
    tokens = [t for c in chunks[:-1] for t in c["choices"][0]["logprobs"]["tokens"]]
    values = [v for c in chunks[:-1] for v in c["choices"][0]["logprobs"]["token_logprobs"]]
    assert tokens == rc["logprobs"]["tokens"] and values == rc["logprobs"]["token_logprobs"]
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]][-1] == "length"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-2])
    # Chat: the role comes in the first delta; contents concatenate to the message.
    body = {"messages": [{"role": "user", "content": "Hi!"}], "max_tokens": 7,
            "temperature": 0, "ignore_eos": True, "logprobs": True, "top_logprobs": 2}
    status, ref = srv.post("/v1/chat/completions", body)
    assert status == 200, ref
    chunks = sse(srv, "/v1/chat/completions", {**body, "stream": True})
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    content = "".join(c["choices"][0]["delta"]["content"] for c in chunks)
    assert content == ref["choices"][0]["message"]["content"]
    lps = [x for c in chunks for x in c["choices"][0]["logprobs"]["content"]]
    assert lps == ref["choices"][0]["logprobs"]["content"]
    assert all(len(x["top_logprobs"]) == 2 for x in lps)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert "usage" not in chunks[-1]
    status, r = srv.post("/v1/chat/completions", {**body, "stream_options": 3})
    assert status == 400 and "stream_options" in r["error"]["message"]


# --- /update_weights_from_tensor --------------------------------------------------------

def tensor_item(name, t):
    import torch
    dtype = {torch.float32: "float32", torch.bfloat16: "bfloat16",
             torch.float16: "float16"}[t.dtype]
    raw = t.contiguous().view(torch.uint8).numpy().tobytes()
    return {"name": name, "dtype": dtype, "shape": list(t.shape),
            "data": base64.b64encode(raw).decode()}


def test_update_weights_from_tensor_equals_restart_from_checkpoint(srv, model, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file
    body = {"input_ids": [2, 7, 1, 8, 2, 8], "sampling_params": greedy(8),
            "return_logprob": True}
    _, before = srv.post("/generate", body)
    files = [f for f in os.listdir(model) if f.endswith(".safetensors")]
    assert len(files) == 1
    weights = load_file(os.path.join(model, files[0]))
    g = torch.Generator().manual_seed(0)
    changed = {n: t + 0.5 * torch.randn(t.shape, generator=g, dtype=t.dtype)
               for n, t in weights.items() if n.endswith("mlp.down_proj.weight")
               or n == "lm_head.weight" or n == "model.embed_tokens.weight"}
    assert changed
    # The same checkpoint with the changed tensors, served by a fresh server.
    other = tmp_path / "changed"
    shutil.copytree(model, other)
    save_file({**weights, **changed}, str(other / files[0]), metadata={"format": "pt"})
    with Server(str(other)) as fresh:
        _, restarted = fresh.post("/generate", body)
    status, r = srv.post("/update_weights_from_tensor", {
        "serialized_named_tensors": [tensor_item(n, t) for n, t in changed.items()],
        "weight_version": "pushed", "flush_cache": True})
    assert status == 200 and r["success"], r
    assert srv.get("/get_weight_version")[1] == {"weight_version": "pushed"}
    _, pushed = srv.post("/generate", body)
    assert pushed["output_ids"] == restarted["output_ids"]
    a = [x[0] for x in pushed["meta_info"]["output_token_logprobs"]]
    b = [x[0] for x in restarted["meta_info"]["output_token_logprobs"]]
    c = [x[0] for x in before["meta_info"]["output_token_logprobs"]]
    assert max(abs(x - y) for x, y in zip(a, b)) <= 1e-5
    assert pushed["output_ids"] != before["output_ids"] or \
        max(abs(x - y) for x, y in zip(a, c)) > 1e-3  # the push changed the model
    # Per-rank lists (SGLang's tensor-parallel layout) and bfloat16 are accepted; pushing
    # the original tensors back restores the original outputs.
    originals = [tensor_item(n, weights[n]) for n in changed]
    status, r = srv.post("/update_weights_from_tensor", {
        "serialized_named_tensors": [originals], "weight_version": "v0"})
    assert status == 200 and r["success"], r
    _, back = srv.post("/generate", body)
    assert back["output_ids"] == before["output_ids"]
    assert back["meta_info"]["output_token_logprobs"] == before["meta_info"]["output_token_logprobs"]


@pytest.mark.parametrize("items,needle", [
    (None, "serialized_named_tensors is required"),
    (["gASVpickled"], "pickled CUDA IPC"),
    ([{"name": "lm_head.weight"}], "serialized_named_tensors[0] needs name, dtype, shape"),
    ([{"name": "x", "dtype": "int8", "shape": [1], "data": "AA=="}],
     "serialized_named_tensors[0].dtype"),
    ([{"name": "x", "dtype": "float32", "shape": [2], "data": "AAAAAA=="}],
     "serialized_named_tensors[0].data holds 4 bytes; shape and dtype need 8"),
    ([{"name": "x", "dtype": "float32", "shape": [1], "data": "A*AA"}],
     "serialized_named_tensors[0].data is not base64"),
    ([{"name": "x", "dtype": "float32", "shape": "1", "data": "AAAAAA=="}],
     "serialized_named_tensors[0].shape"),
    ([{"name": "model.no_such.weight", "dtype": "float32", "shape": [1], "data": "AAAAAA=="}],
     "model.no_such.weight"),
    ([{"name": "lm_head.weight", "dtype": "float32", "shape": [1], "data": "AAAAAA=="}],
     "lm_head.weight"),
])
def test_bad_tensor_payloads_are_400_naming_the_field(srv, items, needle):
    body = {} if items is None else {"serialized_named_tensors": items}
    status, r = srv.post("/update_weights_from_tensor", body)
    assert status == 400, r
    assert needle in r["error"]["message"], r
    assert srv.get("/get_weight_version")[0] == 200

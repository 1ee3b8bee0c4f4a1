"""FSDP (backends/fsdp) with real processes on localhost over Gloo: world sizes 1, 2 and 3
(uneven shards) train to the same weights as a single process, with and without CPU
offload, gradient checkpointing and resharding after forward; per-rank parameter+gradient
bytes scale as 1/W; a dead peer fails the others within the timeout with a clear error."""
import json
import os
import socket
import subprocess
import time

import numpy as np
import pytest
from safetensors.numpy import load_file

TOOLS = os.environ.get("ANVIL_TEST_TOOLS", "build/tests")
TOOL = os.path.join(TOOLS, "fsdp_tool")
ANVIL = os.environ.get("ANVIL_BIN", "anvil")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("fsdp")
    path = str(d / "model")
    # Untied head and odd sizes: every parameter shards unevenly for W = 3.
    subprocess.run([ANVIL, "init-model", "--arch", "qwen3", "--preset", "tiny", "--out", path,
                    "--seed", "5", "--override", '{"tie_word_embeddings": false}'],
                   check=True, capture_output=True)
    return d, path


def run_group(model_path, out, world, extra=(), timeout=300):
    port = free_port()
    procs = [subprocess.Popen([TOOL, "--model", model_path, "--out", out, "--world", str(world),
                               "--rank", str(r), "--port", str(port), *extra],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in range(world)]
    results = []
    for p in procs:
        so, se = p.communicate(timeout=timeout)
        results.append((p.returncode, so, se))
    return results


def weights(path):
    return load_file(os.path.join(path, "model.safetensors"))


@pytest.fixture(scope="module")
def reference(model):
    d, path = model
    out = str(d / "single")
    p = subprocess.run([TOOL, "--model", path, "--out", out, "--single"], capture_output=True,
                       text=True)
    assert p.returncode == 0, p.stderr
    return weights(out), json.loads(p.stdout)


CASES = [
    (1, []),
    (2, []),
    (3, []),
    (2, ["--offload"]),
    (3, ["--ckpt"]),
    (2, ["--no-reshard"]),
    (3, ["--ckpt", "--offload", "--no-reshard"]),
    (2, ["--bucket-bytes", "40000"]),  # weights written from the weight-sync buckets
    (2, ["--offload-cycle"]),  # colocated offload + onload between rollouts
]


@pytest.mark.parametrize("world,extra", CASES, ids=[f"w{w}{''.join(e)}" for w, e in CASES])
def test_matches_single_process(model, reference, world, extra):
    d, path = model
    out = str(d / f"w{world}{'_'.join(x.strip('-') for x in extra)}")
    results = run_group(path, out, world, extra)
    for rc, so, se in results:
        assert rc == 0, se
    ref, ref_info = reference
    got = weights(out)
    assert got.keys() == ref.keys()
    worst = max(float(np.abs(got[k] - ref[k]).max()) for k in ref)
    assert worst < 1e-5, worst
    # metrics of the last step agree too (reduced over ranks)
    info = json.loads(results[0][1])
    for k in ("loss", "pg_loss", "entropy_loss", "tokens", "grad_norm"):
        assert abs(info["metrics"][k] - ref_info["metrics"][k]) < 1e-4 * max(1, abs(ref_info["metrics"][k])), k


def test_weight_sync_buckets_respect_the_buffer_size(model):
    d, path = model
    results = run_group(path, str(d / "buckets"), 2, ["--rollouts", "1", "--bucket-bytes", "40000"])
    infos = [json.loads(so) for rc, so, se in results]
    # Every rank sees the same buckets; a bucket of several tensors stays within the size.
    assert infos[0]["buckets"] == infos[1]["buckets"] > 1
    assert 0 < infos[0]["max_multi_tensor_bucket_bytes"] <= 40000
    whole = run_group(path, str(d / "one-bucket"), 2, ["--rollouts", "1", "--bucket-bytes",
                                                       str(1 << 40)])
    assert json.loads(whole[0][1])["buckets"] == 1


def test_nccl_group_without_a_gpu_is_refused_clearly(model):
    d, path = model
    if os.path.exists("/dev/nvidia0"):
        pytest.skip("a GPU is present: the NCCL path is exercised on the device machine")
    results = run_group(path, str(d / "nccl"), 2, ["--rollouts", "1", "--nccl"], timeout=60)
    for rc, so, se in results:
        assert rc != 0
        assert ("no CUDA device is visible" in se or "this build has no NCCL support" in se), se


def gpu_present():
    return os.path.exists("/dev/nvidia0") or os.path.exists("/dev/nvidiactl")


@pytest.mark.parametrize("extra", [[], ["--offload-cycle"], ["--ckpt", "--offload"]],
                         ids=["plain", "offload-cycle", "ckpt-cpu-offload"])
def test_cuda_nccl_group_matches_cpu(model, reference, extra):
    """One rank over NCCL with the model on the GPU (a single GPU cannot hold two NCCL ranks):
    the CUDA FSDP path, NCCL collectives and colocated offload give the CPU reference's
    weights within fp32 reduction-order noise."""
    if not gpu_present():
        pytest.skip("no GPU: the CUDA/NCCL path runs on the device machine")
    d, path = model
    out = str(d / ("cuda" + "_".join(x.strip("-") for x in extra)))
    results = run_group(path, out, 1, ["--nccl", "--cuda", *extra])
    for rc, so, se in results:
        assert rc == 0, se
    ref, _ = reference
    got = weights(out)
    worst = max(float(np.abs(got[k] - ref[k]).max()) for k in ref)
    assert worst < 1e-4, worst


def test_shard_memory_scales_with_world_size(model, reference):
    d, path = model
    _, ref_info = reference
    full = ref_info["shard_bytes"]
    results = run_group(path, str(d / "mem3"), 3, ["--rollouts", "1"])
    per_rank = [json.loads(so)["shard_bytes"] for rc, so, se in results]
    for b in per_rank:
        # 1/W of the single-process bytes, within 15% plus dim-0 padding
        assert b <= full / 3 * 1.15, (b, full)
        assert b >= full / 3 * 0.85, (b, full)


def test_dead_peer_fails_the_group_within_timeout(model):
    d, path = model
    port = free_port()
    args = ["--model", path, "--out", str(d / "dead"), "--world", "2", "--port", str(port),
            "--timeout-ms", "4000", "--rollouts", "3"]
    t0 = time.time()
    p0 = subprocess.Popen([TOOL, *args, "--rank", "0"], stderr=subprocess.PIPE, text=True)
    p1 = subprocess.Popen([TOOL, *args, "--rank", "1", "--die-at-rollout", "1"],
                          stderr=subprocess.PIPE, text=True)
    _, err0 = p0.communicate(timeout=120)
    p1.communicate(timeout=120)
    assert p1.returncode == -9
    assert p0.returncode == 1, err0
    assert "rank 0 of 2" in err0 and "failed" in err0, err0
    assert time.time() - t0 < 60


def test_sharded_checkpoint_resumes_bitwise_and_reshards(model):
    d, path = model
    straight = str(d / "ck_straight")
    assert all(rc == 0 for rc, _, _ in run_group(path, straight, 2, ["--rollouts", "4"]))
    ck = str(d / "ck")
    half = str(d / "ck_half")
    res = run_group(path, half, 2, ["--rollouts", "2", "--save", ck])
    assert all(rc == 0 for rc, _, se in res), res
    assert open(os.path.join(ck, "latest_checkpointed_iteration.txt")).read().strip() == "2"
    assert sorted(os.listdir(os.path.join(ck, "iter_0000002", "fsdp"))) == [
        "rank_0-of-2.safetensors", "rank_1-of-2.safetensors"]
    # the checkpoint's model/ is an HF directory with the weights of that moment
    saved = load_file(os.path.join(ck, "iter_0000002", "model", "model.safetensors"))
    mid = weights(half)
    assert all(np.array_equal(saved[k], mid[k]) for k in mid)

    # same world size: bitwise the straight run
    resumed = str(d / "ck_resumed")
    res = run_group(path, resumed, 2, ["--load", ck, "--first-rollout", "2", "--rollouts", "2"])
    assert all(rc == 0 for rc, _, se in res), res
    a, b = weights(straight), weights(resumed)
    assert all(np.array_equal(a[k], b[k]) for k in a)

    # another world size: exactly the saved state after loading, then close to the straight run
    resh0 = str(d / "ck_resharded0")
    res = run_group(path, resh0, 3, ["--load", ck, "--rollouts", "0"])
    assert all(rc == 0 for rc, _, se in res), res
    r0 = weights(resh0)
    assert all(np.array_equal(r0[k], mid[k]) for k in mid)
    resh = str(d / "ck_resharded")
    res = run_group(path, resh, 3, ["--load", ck, "--first-rollout", "2", "--rollouts", "2"])
    assert all(rc == 0 for rc, _, se in res), res
    r = weights(resh)
    assert max(float(np.abs(r[k] - a[k]).max()) for k in a) < 1e-5


def test_streamed_hf_export_is_sharded_and_loads(model):
    d, path = model
    out, hf = str(d / "exp_w"), str(d / "exp_hf")
    res = run_group(path, out, 3, ["--rollouts", "1", "--export-hf", hf])
    assert all(rc == 0 for rc, _, se in res), res
    assert os.path.exists(os.path.join(hf, "model.safetensors.index.json"))  # 200 kB shards
    assert os.path.exists(os.path.join(hf, "tokenizer.json"))
    index = json.load(open(os.path.join(hf, "model.safetensors.index.json")))
    exported = {}
    for shard in set(index["weight_map"].values()):
        exported.update(load_file(os.path.join(hf, shard)))
    w = weights(out)
    assert exported.keys() == w.keys()
    assert all(np.array_equal(exported[k], w[k]) for k in w)
    from transformers import AutoModelForCausalLM
    AutoModelForCausalLM.from_pretrained(hf)

"""Megatron-style backend (backends/megatron) with real processes on localhost over Gloo:
TP=2, DP=2, TP=2 x DP=2, PP=2, PP=2 x DP=2, PP=2 x TP=2 and PP=3 groups train to the same weights as train::Trainer in one process
(fp32, several optimizer steps on the same rollouts); vocab-parallel log-probs, entropy and
their gradient equal the full head's; an HF model loaded under TP=2 exports identical
tensors (also under PP=2 and TP=2 x PP=2); sequence parallel gives the same weights as TP without it; weight-sync buckets respect their size; bad mesh sizes fail clearly."""
import json
import os
import socket
import subprocess

import numpy as np
import pytest
from safetensors.numpy import load_file

TOOLS = os.environ.get("ANVIL_TEST_TOOLS", "build/tests")
TOOL = os.path.join(TOOLS, "megatron_tool")
ANVIL = os.environ.get("ANVIL_BIN", "anvil")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("megatron")
    path = str(d / "model")
    # Untied head; the tokenizer's vocab (402) is odd-sized per TP rank only if TP does not
    # divide it, so a second model below uses vocab 403 (uneven vocab shards).
    subprocess.run([ANVIL, "init-model", "--arch", "qwen3", "--preset", "tiny", "--out", path,
                    "--seed", "5", "--override", '{"tie_word_embeddings": false}'],
                   check=True, capture_output=True)
    return d, path


@pytest.fixture(scope="module")
def qwen2_tied(tmp_path_factory):
    """Qwen2 (q/k/v biases), tied embeddings, a vocab TP=2 does not divide."""
    d = tmp_path_factory.mktemp("megatron_qwen2")
    path = str(d / "model")
    subprocess.run([ANVIL, "init-model", "--arch", "qwen2", "--preset", "tiny", "--out", path,
                    "--seed", "9", "--override", '{"vocab_size": 403}'],
                   check=True, capture_output=True)
    return d, path


def run_group(model_path, out, world, extra=(), timeout=300, tool=TOOL):
    port = free_port()
    procs = [subprocess.Popen([tool, "--model", model_path, "--out", out, "--world", str(world),
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


def single(model_path, out, extra=()):
    p = subprocess.run([TOOL, "--model", model_path, "--out", out, "--single", *extra],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return weights(out), json.loads(p.stdout)


@pytest.fixture(scope="module")
def reference(model):
    d, path = model
    return single(path, str(d / "single"), ["--rollouts", "3"])


CASES = [
    (2, 2, []),            # TP=2
    (2, 1, []),            # DP=2 (distributed optimizer only)
    (4, 2, []),            # TP=2 x DP=2
    (2, 2, ["--ckpt"]),    # TP=2 with per-layer recomputation
    (2, 2, ["--sp"]),      # sequence parallel
    (4, 2, ["--sp", "--ckpt"]),  # TP=2 x DP=2, sequence parallel, recomputation
    (2, 2, ["--bucket-bytes", "40000"]),  # weights written from the weight-sync buckets
    (2, 1, ["--pp", "2"]),           # PP=2 (1F1B over the step's micro-batches)
    (4, 1, ["--pp", "2"]),           # PP=2 x DP=2
    (4, 2, ["--pp", "2"]),           # PP=2 x TP=2
    (2, 1, ["--pp", "2", "--ckpt"]),  # PP=2 with per-layer recomputation
    (4, 2, ["--pp", "2", "--sp"]),   # PP=2 x TP=2, sequence-parallel activations between stages
    (2, 1, ["--pp", "2", "--bucket-bytes", "40000"]),  # buckets gathered over the stages
]


@pytest.mark.parametrize("world,tp,extra", CASES,
                         ids=[f"w{w}tp{t}{''.join(e)}" for w, t, e in CASES])
def test_matches_single_process(model, reference, world, tp, extra):
    d, path = model
    out = str(d / f"w{world}tp{tp}{'_'.join(x.strip('-') for x in extra)}")
    results = run_group(path, out, world, ["--tp", str(tp), "--rollouts", "3", *extra])
    for rc, so, se in results:
        assert rc == 0, se
    ref, ref_info = reference
    got = weights(out)
    assert got.keys() == ref.keys()
    worst = max(float(np.abs(got[k] - ref[k]).max()) for k in ref)
    assert worst < 1e-5, worst
    # the weights moved (the comparison is not of two untrained models)
    init = weights(path)
    assert max(float(np.abs(ref[k] - init[k]).max()) for k in ref) > 1e-3
    info = json.loads(results[0][1])
    for k in ("loss", "pg_loss", "entropy_loss", "tokens", "grad_norm"):
        assert abs(info["metrics"][k] - ref_info["metrics"][k]) < 1e-4 * max(
            1, abs(ref_info["metrics"][k])), k
    # the distributed optimizer: fp32 masters + grads per rank shrink with TP x DP
    assert info["shard_bytes"] <= 2 * 4 * sum(v.size for v in ref.values()) / world * 1.2


@pytest.fixture(scope="module")
def qwen2_tied_3_layers(tmp_path_factory):
    """As qwen2_tied with 3 layers: PP=2 splits them 2 + 1, PP=3 has a middle stage and an
    embedding group of the first and last stage only."""
    d = tmp_path_factory.mktemp("megatron_qwen2_3")
    path = str(d / "model")
    subprocess.run([ANVIL, "init-model", "--arch", "qwen2", "--preset", "tiny", "--out", path,
                    "--seed", "9", "--override", '{"vocab_size": 403, "num_hidden_layers": 3}'],
                   check=True, capture_output=True)
    return d, path


TIED_CASES = [
    ("qwen2_tied", 2, ["--tp", "2"]),
    ("qwen2_tied", 2, ["--tp", "2", "--sp"]),
    # tied embeddings split over the pipeline: the two copies' gradients are summed
    ("qwen2_tied", 2, ["--pp", "2"]),
    ("qwen2_tied", 4, ["--tp", "2", "--pp", "2"]),
    ("qwen2_tied_3_layers", 2, ["--pp", "2"]),
    ("qwen2_tied_3_layers", 3, ["--pp", "3"]),
]


@pytest.mark.parametrize("fixture,world,extra", TIED_CASES,
                         ids=[f"{f}-w{w}{''.join(e)}" for f, w, e in TIED_CASES])
def test_qwen2_tied_uneven_vocab_matches_single_process(request, fixture, world, extra):
    d, path = request.getfixturevalue(fixture)
    ref_dir = str(d / "single")
    ref = weights(ref_dir) if os.path.exists(ref_dir) else single(path, ref_dir)[0]
    out = str(d / ("w" + str(world) + "".join(extra)))
    results = run_group(path, out, world, extra)
    for rc, so, se in results:
        assert rc == 0, se
    got = weights(out)
    assert got.keys() == ref.keys()
    assert max(float(np.abs(got[k] - ref[k]).max()) for k in ref) < 1e-5


def test_sequence_parallel_equals_tp_without_it(model):
    d, path = model
    outs = []
    for extra in ([], ["--sp"]):
        out = str(d / ("cmp_tp2" + "".join(extra)))
        results = run_group(path, out, 2, ["--tp", "2", "--rollouts", "2", *extra])
        assert all(rc == 0 for rc, _, se in results), results
        outs.append(weights(out))
    a, b = outs
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) < 1e-5


@pytest.mark.parametrize("fixture", ["model", "qwen2_tied"])
def test_vocab_parallel_logprobs_equal_full_head(request, fixture):
    d, path = request.getfixturevalue(fixture)
    results = run_group(path, str(d / "lp"), 2, ["--tp", "2", "--logprob-check"])
    results += run_group(path, str(d / "lp_sp"), 2, ["--tp", "2", "--logprob-check", "--sp"])
    # the pipelined forward's hidden states (the head checked on the last stage)
    results += run_group(path, str(d / "lp_pp"), 4, ["--tp", "2", "--pp", "2",
                                                      "--logprob-check", "--sp"])
    for rc, so, se in results:
        assert rc == 0, se
        info = json.loads(so)
        assert info["logprob_diff"] < 1e-6, info
        assert info["entropy_diff"] < 1e-6, info
        assert info["grad_diff"] < 1e-6, info
        assert info["hidden_diff"] < 1e-5, info


@pytest.mark.parametrize("world,extra", [(2, ["--tp", "2"]), (2, ["--pp", "2"]),
                                         (4, ["--tp", "2", "--pp", "2"])],
                         ids=["tp2", "pp2", "tp2pp2"])
def test_load_and_export_round_trip_is_identical(model, world, extra):
    d, path = model
    hf = str(d / ("export_hf" + "".join(extra)))
    results = run_group(path, str(d / ("rt" + "".join(extra))), world,
                        [*extra, "--rollouts", "0", "--export-hf", hf])
    for rc, so, se in results:
        assert rc == 0, se
    index = json.load(open(os.path.join(hf, "model.safetensors.index.json")))
    exported = {}
    for shard in set(index["weight_map"].values()):
        exported.update(load_file(os.path.join(hf, shard)))
    src = weights(path)
    assert exported.keys() == src.keys()
    assert all(np.array_equal(exported[k], src[k]) for k in src)
    assert os.path.exists(os.path.join(hf, "tokenizer.json"))
    assert json.load(open(os.path.join(hf, "config.json")))["vocab_size"] == 402


def test_weight_sync_buckets_respect_the_buffer_size(model):
    d, path = model
    results = run_group(path, str(d / "buckets"), 2, ["--tp", "2", "--rollouts", "0",
                                                       "--bucket-bytes", "40000"])
    infos = [json.loads(so) for rc, so, se in results]
    assert infos[0]["buckets"] == infos[1]["buckets"] > 1
    assert 0 < infos[0]["max_multi_tensor_bucket_bytes"] <= 40000
    src = weights(path)
    got = weights(str(d / "buckets"))
    assert all(np.array_equal(got[k], src[k]) for k in src)


def test_bad_mesh_sizes_fail_clearly(model):
    d, path = model
    # 4 attention heads, 2 key-value heads: TP=4 cannot split the key-value heads.
    results = run_group(path, str(d / "bad"), 4, ["--tp", "4"], timeout=120)
    for rc, so, se in results:
        assert rc == 1
        assert "num_key_value_heads 2 does not divide by --tensor-model-parallel-size 4" in se, se
    results = run_group(path, str(d / "bad3"), 3, ["--tp", "2"], timeout=120)
    for rc, so, se in results:
        assert rc == 1
        assert "--tensor-model-parallel-size 2 must be >= 1 and divide the world size 3" in se, se
    results = run_group(path, str(d / "bad_pp"), 2, ["--tp", "2", "--pp", "2"], timeout=120)
    for rc, so, se in results:
        assert rc == 1
        assert ("--tensor-model-parallel-size 2 x --pipeline-model-parallel-size 2: both must "
                "be >= 1 and their product divide the world size 2") in se, se
    # 2 layers cannot make 3 stages
    results = run_group(path, str(d / "bad_pp3"), 3, ["--pp", "3"], timeout=120)
    for rc, so, se in results:
        assert rc == 1
        assert "num_hidden_layers 2 is fewer than --pipeline-model-parallel-size 3" in se, se


def test_bf16_tp2_close_to_single_process_bf16(model):
    """bf16 compute with fp32 master shards: TP=2 x DP=2 stays close to one bf16 process
    (different reduction orders round differently in bf16, so not within 1e-5)."""
    d, path = model
    ref, _ = single(path, str(d / "single_bf16"), ["--bf16"])
    out = str(d / "bf16_w4")
    results = run_group(path, out, 4, ["--tp", "2", "--bf16"])
    for rc, so, se in results:
        assert rc == 0, se
    got = weights(out)
    init = weights(path)
    # Adam normalises each step, so a near-zero gradient rounded differently in bf16 can
    # flip a step of lr: single elements may differ by a few lr; on average the runs must
    # be far closer than the training moved the weights.
    worst = max(float(np.abs(got[k] - ref[k]).max()) for k in ref)
    assert worst < 0.05, worst
    diff = np.mean(np.concatenate([np.abs(got[k] - ref[k]).ravel() for k in ref]))
    moved = np.mean(np.concatenate([np.abs(ref[k] - init[k]).ravel() for k in ref]))
    assert diff < 0.1 * moved, (diff, moved)


def gpu_present():
    return os.path.exists("/dev/nvidia0") or os.path.exists("/dev/nvidiactl")


def test_cuda_nccl_rank_matches_cpu(model, reference):
    """One rank over NCCL with the model on the GPU (TP=1: a single GPU cannot hold two
    NCCL ranks): the CUDA path of the vocab-parallel head, distributed optimizer and export
    gives the CPU reference's weights within fp32 reduction-order noise."""
    if not gpu_present():
        pytest.skip("no GPU: the CUDA/NCCL path runs on the device machine")
    d, path = model
    out = str(d / "cuda")
    results = run_group(path, out, 1, ["--tp", "1", "--rollouts", "3", "--cuda", "--nccl"])
    for rc, so, se in results:
        assert rc == 0, se
    ref, _ = reference
    got = weights(out)
    assert max(float(np.abs(got[k] - ref[k]).max()) for k in ref) < 1e-4


@pytest.mark.parametrize("world,extra", [(4, ["--tp", "2", "--pp", "2"]), (2, [])],
                         ids=["tp2pp2", "dp2"])
def test_sharded_checkpoint_resumes_bitwise(model, world, extra):
    """2 rollouts, --save-ckpt, a new group --load-ckpt and 1 more rollout: the same weights
    as 3 rollouts straight (masters, AdamW moments and step restored); the checkpoint's
    model/ is the HF model after 2 rollouts. (Loading into another mesh: test_reshard.py.)"""
    d, path = model
    tag = "".join(extra) or "dp"
    ck = str(d / f"ck{tag}")
    runs = [("straight", ["--rollouts", "3"]), ("part", ["--rollouts", "2", "--save-ckpt", ck]),
            ("resumed", ["--rollouts", "1", "--load-ckpt", ck, "--rollout-offset", "2"])]
    for name, flags in runs:
        results = run_group(path, str(d / f"{name}{tag}"), world, [*extra, *flags])
        for rc, so, se in results:
            assert rc == 0, se
    straight, resumed = weights(str(d / f"straight{tag}")), weights(str(d / f"resumed{tag}"))
    assert all(np.array_equal(straight[k], resumed[k]) for k in straight)
    part = weights(str(d / f"part{tag}"))
    saved = load_file(os.path.join(ck, "iter_0000002", "model", "model.safetensors"))
    assert saved.keys() == part.keys() and all(np.array_equal(saved[k], part[k]) for k in part)
    meta = json.load(open(os.path.join(ck, "iter_0000002", "trainer_state.json")))
    assert meta["iteration"] == 2 and meta["world_size"] == world


@pytest.mark.parametrize("world,extra", [(4, ["--tp", "2", "--pp", "2"]), (2, [])],
                         ids=["tp2pp2", "dp2"])
def test_offload_and_onload_keep_training_bitwise(model, world, extra):
    """Colocated offload after every rollout (compute parameters freed, master shards and
    AdamW moments moved off and back, the parameters all-gathered again from the masters)
    leaves training bitwise where it would be without it."""
    d, path = model
    tag = "".join(extra) or "dp"
    runs = {}
    for name, flags in (("plain", []), ("cycled", ["--offload-cycle"])):
        out = str(d / f"offload-{name}{tag}")
        for rc, so, se in run_group(path, out, world, [*extra, "--rollouts", "3", *flags]):
            assert rc == 0, se
        runs[name] = weights(out)
    a, b = runs["plain"], runs["cycled"]
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("world,extra", [(4, ["--tp", "2", "--pp", "2"]), (2, [])],
                         ids=["tp2pp2", "dp2"])
def test_one_step_rollouts_reuse_the_training_forward(model, world, extra):
    """--global-batch 8 (one optimizer step per rollout of 8): both the Megatron group and
    train::Trainer take the old log-probs from the step's own forward (no separate pass,
    PPO ratio exactly 1) and end within 1e-5 of each other."""
    d, path = model
    tag = "".join(extra) or "dp"
    flags = ["--rollouts", "3", "--global-batch", "8"]
    ref, _ = single(path, str(d / f"onestep-single{tag}"), flags)
    results = run_group(path, str(d / f"onestep{tag}"), world, [*extra, *flags])
    for rc, so, se in results:
        assert rc == 0, se
    m = json.loads(results[0][1])["metrics"]
    # rank 0 is a first-stage rank: the last stage's metrics reach it by broadcast
    assert m["ratio_max"] == 1.0 and m["ratio_min"] == 1.0, m
    got = weights(str(d / f"onestep{tag}"))
    assert max(float(np.abs(got[k] - ref[k]).max()) for k in ref) < 1e-5

"""Checkpoints move between layouts (backends/train/state_reader.hpp): the training state a
Megatron mesh, an FSDP group or a single rank saved loads into any other of them.

The model is the hard case: Qwen2 (q/k/v biases) with tied embeddings (the last pipeline
stage's copy of the embedding) and a vocabulary of 403 that TP=2 splits unevenly. Sources,
each after 2 rollouts: Megatron TP=2 x PP=2, FSDP over 2 ranks, one rank. Every target
loads a source and saves again at once; the fp32 masters and AdamW moments, reassembled
here in Python from each layout's files (an independent reading of the formats), are
bitwise those of the source, and the step count is kept. Every target also trains a third
rollout, which must land within 1e-5 of one rank training all three straight. Bad sources
(another architecture, a missing rank file) fail naming the file and tensor."""
import json
import math
import os
import shutil
import subprocess

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file

from test_megatron import ANVIL, TOOLS, run_group

MEGATRON = os.path.join(TOOLS, "megatron_tool")
FSDP = os.path.join(TOOLS, "fsdp_tool")


def group(tool, model, out, world, flags, timeout=300):
    """world ranks of `tool` (or the single-process path when world is 0)."""
    if world == 0:
        p = subprocess.run([tool, "--model", model, "--out", out, "--single", *flags],
                           capture_output=True, text=True, timeout=timeout)
        return [(p.returncode, p.stdout, p.stderr)]
    return run_group(model, out, world, flags, timeout=timeout, tool=tool)


def ok(results):
    for rc, _, se in results:
        assert rc == 0, se
    return results


# A layout: (tool, world, mesh flags). world 0 = one rank (fsdp_tool --single).
LAYOUTS = {
    "megatron-tp2pp2": (MEGATRON, 4, ["--tp", "2", "--pp", "2"]),
    "megatron-dp2": (MEGATRON, 2, []),
    "megatron-tp2": (MEGATRON, 2, ["--tp", "2"]),
    "megatron-pp2": (MEGATRON, 2, ["--pp", "2"]),
    "fsdp2": (FSDP, 2, []),
    "fsdp3": (FSDP, 3, []),
    "single": (FSDP, 0, []),
}


def run_layout(name, model, out, rollouts, first=0, save=None, load=None):
    tool, world, mesh = LAYOUTS[name]
    flags = [*mesh, "--rollouts", str(rollouts)]
    if tool == MEGATRON:
        flags += ["--rollout-offset", str(first)]
        flags += ["--save-ckpt", save] if save else []
        flags += ["--load-ckpt", load] if load else []
    else:
        flags += ["--first-rollout", str(first)]
        flags += ["--save", save] if save else []
        flags += ["--load", load] if load else []
    return group(tool, model, out, world, flags)


def full_state(ck, iteration):
    """{tensor or tensor.exp_avg / .exp_avg_sq: full fp32 array} and the optimizer steps of a
    checkpoint step, reassembled from whichever layout wrote it."""
    d = os.path.join(ck, f"iter_{iteration:07d}")
    meta = json.load(open(os.path.join(d, "trainer_state.json")))
    model = load_file(os.path.join(d, "model", "model.safetensors"))
    out = {}

    def put(key, shape, index, piece):
        a = out.setdefault(key, np.full(shape, np.nan, np.float32))
        region = a[index]
        # Replicated copies (norms on every TP rank) hold the same values.
        assert np.isnan(region).all() or np.array_equal(region, piece), key
        a[index] = piece

    suffixes = ("", ".exp_avg", ".exp_avg_sq")
    if "megatron" in meta:
        W = meta["world_size"]
        tied = {}
        for r in range(W):
            path = os.path.join(d, "megatron", f"rank_{r}-of-{W}.safetensors")
            with safe_open(path, "np") as f:
                boxes = json.loads(f.metadata()["anvil.boxes"])
                for key, b in boxes.items():
                    index = tuple(slice(o, o + s) for o, s in zip(b["offset"], b["size"]))
                    for sfx in suffixes:
                        stored = f.get_tensor(key + sfx)
                        assert not stored[b["size"][0]:].any(), f"{key}{sfx}: padding not zero"
                        piece = stored[:b["size"][0]]
                        if "@" in key:
                            tied[(key.split("@")[0] + sfx, index)] = piece
                        else:
                            put(key + sfx, model[key].shape, index, piece)
        for (key, index), piece in tied.items():  # the last stage's copy equals its source
            assert np.array_equal(out[key][index], piece), key
    elif "world_size" in meta:
        W = meta["world_size"]
        for r in range(W):
            f = load_file(os.path.join(d, "fsdp", f"rank_{r}-of-{W}.safetensors"))
            for key in f:
                if key.startswith("__") or key.endswith((".exp_avg", ".exp_avg_sq")):
                    continue
                rows = model[key].shape[0]
                sr = math.ceil(rows / W)
                lo, hi = min(rows, r * sr), min(rows, (r + 1) * sr)
                for sfx in suffixes:
                    put(key + sfx, model[key].shape, slice(lo, hi), f[key + sfx][:hi - lo])
    else:
        opt = load_file(os.path.join(d, "optimizer.safetensors"))
        for key in opt:
            if key.endswith(".exp_avg"):
                name = key[:-len(".exp_avg")]
                out[name] = opt.get(name + ".master", model[name]).astype(np.float32)
                out[key] = opt[key]
                out[name + ".exp_avg_sq"] = opt[name + ".exp_avg_sq"]
    for k, a in out.items():
        assert not np.isnan(a).any(), f"{k}: not every value is stored"
    return out, meta["optimizer_steps"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("reshard")
    model = str(d / "model")
    subprocess.run([ANVIL, "init-model", "--arch", "qwen2", "--preset", "tiny", "--out", model,
                    "--seed", "9", "--override", '{"vocab_size": 403}'],
                   check=True, capture_output=True)
    ok(run_layout("single", model, str(d / "straight"), 3))
    sources = {}
    for name in ("megatron-tp2pp2", "fsdp2", "single"):
        ck = str(d / f"src-{name}")
        ok(run_layout(name, model, str(d / f"src-{name}-w"), 2, save=ck))
        sources[name] = ck
    return d, model, sources, load_file(str(d / "straight" / "model.safetensors"))


PAIRS = [
    ("megatron-tp2pp2", "megatron-dp2"),
    ("megatron-tp2pp2", "megatron-tp2"),
    ("megatron-tp2pp2", "fsdp3"),
    ("megatron-tp2pp2", "single"),
    ("fsdp2", "megatron-tp2"),
    ("fsdp2", "megatron-pp2"),
    ("single", "megatron-tp2pp2"),
    ("single", "fsdp2"),
]


@pytest.mark.parametrize("source,target", PAIRS, ids=[f"{a}-to-{b}" for a, b in PAIRS])
def test_state_moves_bitwise_and_training_continues(setup, source, target):
    d, model, sources, straight = setup
    src = sources[source]
    tag = f"{source}-to-{target}"
    # Load and save again at once: the same state, bitwise, in the target's layout.
    again = str(d / f"again-{tag}")
    ok(run_layout(target, model, str(d / f"again-{tag}-w"), 0, first=2, load=src, save=again))
    a, steps_a = full_state(src, 2)
    b, steps_b = full_state(again, 2)
    assert steps_a == steps_b > 0
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), f"{k} changed moving {tag}"
    # And the third rollout trains on as one rank training straight through would.
    out = str(d / f"on-{tag}")
    ok(run_layout(target, model, out, 1, first=2, load=src))
    got = load_file(os.path.join(out, "model.safetensors"))
    assert got.keys() == straight.keys()
    worst = max(float(np.abs(got[k] - straight[k]).max()) for k in straight)
    assert worst < 1e-5, (tag, worst)


def test_bad_sources_are_named(setup, tmp_path):
    d, model, sources, _ = setup
    # Another architecture: Qwen3 has no q/k/v biases.
    other = str(tmp_path / "qwen3")
    subprocess.run([ANVIL, "init-model", "--arch", "qwen3", "--preset", "tiny", "--out", other,
                    "--seed", "9", "--override", '{"vocab_size": 403}'],
                   check=True, capture_output=True)
    ck = str(tmp_path / "other-ck")
    ok(run_layout("fsdp2", other, str(tmp_path / "other-w"), 1, save=ck))
    [(rc, _, se)] = run_layout("single", model, str(tmp_path / "w"), 0, load=ck)
    assert rc == 1, se
    assert (f"{ck}/iter_0000001/model: tensor 'model.layers.0.self_attn.q_proj.weight' has "
            "shape [128, 64] in the checkpoint, the model's is [64, 64]") in se, se
    # A Megatron checkpoint missing a rank's file.
    broken = str(tmp_path / "broken")
    shutil.copytree(sources["megatron-tp2pp2"], broken)
    os.remove(os.path.join(broken, "iter_0000002", "megatron", "rank_3-of-4.safetensors"))
    results = run_layout("fsdp2", model, str(tmp_path / "w2"), 0, load=broken)
    for rc, _, se in results:
        assert rc == 1 and "incomplete checkpoint" in se and "rank_3-of-4.safetensors" in se, se


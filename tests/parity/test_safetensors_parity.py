"""safetensors interoperability with the Python `safetensors` package (the reference
implementation, Rust core). Python writes single and sharded checkpoints (the index laid
out as transformers' save_pretrained does) in every dtype; the C++ safetensors_tool reads
them with CheckpointReader and writes them back with CheckpointWriter; Python then loads
the result (its strict validator included) and requires bit-identical tensors, HF shard
names and a consistent index. Errors must name the file or tensor at fault."""

import json
import os
import struct
import subprocess

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

TOOL = os.path.join(os.environ.get("ANVIL_TEST_TOOLS", "build/tests"), "safetensors_tool")

DTYPES = {
    "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8,
    "F8_E5M2": torch.float8_e5m2, "F8_E4M3": torch.float8_e4m3fn,
    "I16": torch.int16, "U16": torch.uint16, "F16": torch.float16, "BF16": torch.bfloat16,
    "I32": torch.int32, "U32": torch.uint32, "F32": torch.float32, "F64": torch.float64,
    "I64": torch.int64, "U64": torch.uint64,
}


def random_bits(dtype, shape, gen):
    """Arbitrary bit patterns (NaN payloads, infinities, denormals) of `dtype`."""
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=gen, dtype=torch.uint8).bool()
    n = 1
    for d in shape:
        n *= d
    size = torch.empty((), dtype=dtype).element_size()
    raw = torch.randint(0, 256, (n * size,), generator=gen, dtype=torch.uint8)
    return raw.view(dtype).reshape(shape)


def model_tensors():
    gen = torch.Generator().manual_seed(0)
    out = {}
    for i, (name, dtype) in enumerate(DTYPES.items()):
        out[f"model.layers.{i}.{name.lower()}.weight"] = random_bits(dtype, (7, 3 + i % 4), gen)
    out["model.embed_tokens.weight"] = random_bits(torch.bfloat16, (64, 16), gen)
    out["model.norm.scalar"] = torch.tensor(1.5, dtype=torch.float32)
    out["model.empty"] = torch.empty((0, 4), dtype=torch.float16)
    out["lm_head.weight"] = random_bits(torch.float32, (64, 16), gen)
    return out


def bits(t):
    return t.contiguous().reshape(-1).view(torch.uint8)


def assert_bit_identical(expected, actual):
    assert sorted(expected) == sorted(actual)
    for name, e in expected.items():
        a = actual[name]
        assert a.dtype == e.dtype, name
        assert a.shape == e.shape, name
        assert torch.equal(bits(a), bits(e)), name


def save_sharded_like_transformers(tensors, out_dir, max_bytes):
    """Greedy insertion-order sharding + index, as transformers.save_pretrained does."""
    os.makedirs(out_dir, exist_ok=True)
    shards, current, size = [[]], 0, 0
    for name, t in tensors.items():
        n = t.numel() * t.element_size()
        if shards[-1] and current + n > max_bytes:
            shards.append([])
            current = 0
        shards[-1].append(name)
        current += n
        size += n
    weight_map = {}
    for k, names in enumerate(shards):
        file = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file({n: tensors[n].contiguous() for n in names}, os.path.join(out_dir, file),
                  metadata={"format": "pt"})
        weight_map.update({n: file for n in names})
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": size}, "weight_map": weight_map}, f, indent=2)
    return len(shards)


def tool(*args, check=True):
    proc = subprocess.run([TOOL, *map(str, args)], capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def read_header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return n, json.loads(f.read(n))


def load_checkpoint(d):
    """Loads an HF checkpoint directory with the Python library, validating the index."""
    index_path = os.path.join(d, "model.safetensors.index.json")
    if not os.path.exists(index_path):
        return load_file(os.path.join(d, "model.safetensors")), None
    with open(index_path) as f:
        index = json.load(f)
    files = sorted(set(index["weight_map"].values()))
    count = len(files)
    assert files == [f"model-{k:05d}-of-{count:05d}.safetensors" for k in range(1, count + 1)]
    out, total = {}, 0
    for file in files:
        shard = load_file(os.path.join(d, file))
        assert sorted(shard) == sorted(n for n, f in index["weight_map"].items() if f == file)
        for name, t in shard.items():
            assert name not in out
            out[name] = t
            total += t.numel() * t.element_size()
    assert index["metadata"]["total_size"] == total
    return out, index


def check_cpp_layout(d, max_bytes):
    """Every shard of ours: metadata format=pt, 8-byte aligned data, within max_bytes unless
    a single tensor is larger."""
    for file in os.listdir(d):
        if not file.endswith(".safetensors"):
            continue
        n, header = read_header(os.path.join(d, file))
        assert (8 + n) % 8 == 0
        assert header["__metadata__"] == {"format": "pt"}
        entries = [v for k, v in header.items() if k != "__metadata__"]
        data = sum(e["data_offsets"][1] - e["data_offsets"][0] for e in entries)
        assert data <= max_bytes or len(entries) == 1, file
        with safe_open(os.path.join(d, file), "pt") as f:
            assert f.metadata() == {"format": "pt"}


def test_single_file_python_to_cpp_to_python(tmp_path):
    tensors = model_tensors()
    src = tmp_path / "src"
    src.mkdir()
    save_file(tensors, str(src / "model.safetensors"), metadata={"format": "pt"})
    for source in (src, src / "model.safetensors"):  # a directory or the file itself
        dst = tmp_path / ("dst_" + source.name)
        tool("copy", source, dst, 1 << 30)
        assert sorted(os.listdir(dst)) == ["model.safetensors"]
        ours, index = load_checkpoint(str(dst))
        assert index is None
        assert_bit_identical(tensors, ours)
        check_cpp_layout(str(dst), 1 << 30)


@pytest.mark.parametrize("max_bytes", [1000, 3000])
def test_sharded_both_directions(tmp_path, max_bytes):
    tensors = model_tensors()
    src = tmp_path / "py"
    shards = save_sharded_like_transformers(tensors, str(src), 2500)
    assert shards > 1
    # Python -> C++: read the Python shards, write our own sharding.
    cpp = tmp_path / "cpp"
    tool("copy", src, cpp, max_bytes)
    ours, index = load_checkpoint(str(cpp))
    assert index is not None and len(set(index["weight_map"].values())) > 1
    assert_bit_identical(tensors, ours)
    check_cpp_layout(str(cpp), max_bytes)
    # C++ -> C++ -> Python: our own output read back by us, re-sharded into one file.
    again = tmp_path / "again"
    tool("copy", cpp, again, 1 << 30)
    single, _ = load_checkpoint(str(again))
    assert_bit_identical(tensors, single)


def test_greedy_sharding_matches_transformers_layout(tmp_path):
    """Our shard assignment for sorted names equals the Python greedy reference."""
    tensors = model_tensors()
    ordered = {n: tensors[n] for n in sorted(tensors)}  # the tool writes in name order
    ref = tmp_path / "ref"
    save_sharded_like_transformers(ordered, str(ref), 1200)
    cpp = tmp_path / "cpp"
    tool("copy", ref, cpp, 1200)
    with open(ref / "model.safetensors.index.json") as f:
        ref_index = json.load(f)
    with open(cpp / "model.safetensors.index.json") as f:
        cpp_index = json.load(f)
    assert cpp_index == ref_index
    assert sorted(os.listdir(cpp)) == sorted(os.listdir(ref))


def test_list_matches_python_header(tmp_path):
    tensors = model_tensors()
    save_file(tensors, str(tmp_path / "model.safetensors"))
    listed = json.loads(tool("list", tmp_path).stdout)
    _, header = read_header(tmp_path / "model.safetensors")
    header.pop("__metadata__", None)
    assert listed == {k: {"dtype": v["dtype"], "shape": v["shape"]} for k, v in header.items()}


@pytest.mark.parametrize("name,begin,end", [
    ("model.embed_tokens.weight", 10, 37),
    ("model.embed_tokens.weight", 0, 64),
    ("model.layers.6.u16.weight", 6, 7),
    ("model.layers.3.f8_e5m2.weight", 2, 2),
])
def test_load_rows_matches_slicing(tmp_path, name, begin, end):
    tensors = model_tensors()
    save_sharded_like_transformers(tensors, str(tmp_path / "src"), 2000)
    tool("rows", tmp_path / "src", name, begin, end, tmp_path / "rows")
    rows = load_file(str(tmp_path / "rows" / "model.safetensors"))
    assert_bit_identical({name: tensors[name][begin:end]}, rows)


def test_errors_name_file_and_tensor(tmp_path):
    tensors = model_tensors()
    src = tmp_path / "src"
    save_sharded_like_transformers(tensors, str(src), 2500)
    index_path = src / "model.safetensors.index.json"
    with open(index_path) as f:
        index = json.load(f)
    # A truncated shard.
    shard = sorted(set(index["weight_map"].values()))[1]
    data = (src / shard).read_bytes()
    (src / shard).write_bytes(data[: len(data) - 3])
    proc = tool("copy", src, tmp_path / "out", 1 << 30, check=False)
    assert proc.returncode == 1
    assert str(src / shard) in proc.stderr and "past the data" in proc.stderr, proc.stderr
    (src / shard).write_bytes(data)
    # The index names a shard that does not exist.
    bad = dict(index, weight_map=dict(index["weight_map"], extra="model-00099-of-00099.safetensors"))
    index_path.write_text(json.dumps(bad))
    proc = tool("copy", src, tmp_path / "out", 1 << 30, check=False)
    assert proc.returncode == 1
    assert str(index_path) in proc.stderr and "'extra'" in proc.stderr, proc.stderr
    # The index assigns a tensor to a shard that lacks it.
    first = sorted(set(index["weight_map"].values()))[0]
    bad = dict(index, weight_map=dict(index["weight_map"], ghost=first))
    index_path.write_text(json.dumps(bad))
    proc = tool("copy", src, tmp_path / "out", 1 << 30, check=False)
    assert proc.returncode == 1
    assert "'ghost'" in proc.stderr and first in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()  # nothing was written

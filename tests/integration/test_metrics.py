"""The metrics sinks of runtime/metrics/ driven by metrics_tool (synthetic steps):
TensorBoard event files read back by the real `tensorboard` package (tags, steps, values,
wall times, texts, the config), metrics.jsonl line by line, config.yaml read back by PyYAML,
the dashboard's /api/metrics (incremental with ?since=N, live while steps are logged), and
the dashboard page rendered by a real headless Chromium: one SVG plot per metric with one
point per step, and a screenshot that is not blank."""
import json
import math
import os
import re
import shutil
import struct
import subprocess
import time
import urllib.error
import urllib.request
import zlib

import pytest

TOOLS = os.environ.get("ANVIL_TEST_TOOLS", "")
TOOL = os.path.join(TOOLS, "metrics_tool")
T0 = 1700000000.0
SCALARS = {
    "train/loss": lambda s: 1.0 / (s + 1),
    "rollout/reward_mean": lambda s: 0.1 * s,
    "time/train": lambda s: 0.5 + 0.01 * s,
    "perf/tokens_per_s": lambda s: 1000.0 + s,
    "rollout": lambda s: float(s),
}


def sample_text(s):
    return f"step {s}: <b>answer</b> & more"


def run_tool(*args):
    p = subprocess.run([TOOL, *args], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, f"metrics_tool {args} failed ({p.returncode}):\n{p.stderr}"
    return p


def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def test_tensorboard_files_read_back_by_tensorboard(tmp_path):
    from tensorboard.backend.event_processing import event_accumulator

    tb = tmp_path / "tb"
    run_tool("--steps", "20", "--tensorboard-dir", str(tb), "--clock", str(T0),
             "--config", "lr=1e-06", "--config", "prompt-data=a.jsonl,b.jsonl")
    files = os.listdir(tb)
    assert len(files) == 1 and files[0].startswith("events.out.tfevents."), files
    acc = event_accumulator.EventAccumulator(
        str(tb), size_guidance={event_accumulator.SCALARS: 0, event_accumulator.TENSORS: 0})
    acc.Reload()
    assert acc.file_version == 2.0  # parsed from "brain.Event:2"
    assert sorted(acc.Tags()["scalars"]) == sorted(SCALARS)
    for tag, fn in SCALARS.items():
        events = acc.Scalars(tag)
        assert [e.step for e in events] == list(range(20)), tag
        assert [e.value for e in events] == [f32(fn(s)) for s in range(20)], tag
        assert [e.wall_time for e in events] == [T0 + s for s in range(20)], tag
    assert "sample" in acc.Tags()["tensors"]
    texts = acc.Tensors("sample")
    assert [t.step for t in texts] == list(range(20))
    assert [t.tensor_proto.string_val[0].decode() for t in texts] == [sample_text(s) for s in range(20)]
    config = acc.Tensors("config")
    assert len(config) == 1 and config[0].step == 0
    assert config[0].tensor_proto.string_val[0].decode() == "lr: 1e-06  \nprompt-data: [a.jsonl, b.jsonl]  \n"


def test_tensorboard_file_is_readable_while_the_run_goes_on(tmp_path):
    """Each step is flushed: a reader sees every step logged so far, with valid CRCs."""
    from tensorboard.backend.event_processing import event_accumulator

    tb = tmp_path / "tb"
    p = subprocess.Popen([TOOL, "--steps", "3", "--tensorboard-dir", str(tb), "--serve"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(2):
            p.stdin.write("log\n")
            p.stdin.flush()
            while not p.stdout.readline().startswith("ok"):
                pass
        acc = event_accumulator.EventAccumulator(str(tb))
        acc.Reload()
        assert [e.step for e in acc.Scalars("train/loss")] == [0, 1, 2, 3, 4]
    finally:
        p.stdin.close()
        assert p.wait(timeout=30) == 0


def test_jsonl_lines(tmp_path):
    path = tmp_path / "run" / "metrics.jsonl"
    run_tool("--steps", "5", "--jsonl", str(path))
    run_tool("--steps", "2", "--jsonl", str(path))  # appends
    lines = path.read_text().splitlines()
    assert len(lines) == 7
    for i, line in enumerate(lines):
        s = i if i < 5 else i - 5
        got = json.loads(line)
        want = {k: fn(s) for k, fn in SCALARS.items()}
        want["rollout"] = s
        want["step"] = s
        want["sample"] = sample_text(s)
        assert got.keys() == want.keys(), line
        for k, v in want.items():
            if isinstance(v, float):
                assert got[k] == v, (k, line)  # shortest round-trip repr: exact
            else:
                assert got[k] == v and type(got[k]) is type(v), (k, line)


def test_console_progress_line(tmp_path):
    p = run_tool("--steps", "3")
    lines = [l for l in p.stdout.splitlines() if l.startswith("step ")]
    assert lines == [
        "step 0 | train 0.50s | reward 0.0000 | loss 1 | tok/s 1000 | +1 more",
        "step 1 | train 0.51s | reward 0.1000 | loss 0.5 | tok/s 1001 | +1 more",
        "step 2 | train 0.52s | reward 0.2000 | loss 0.3333 | tok/s 1002 | +1 more",
    ]


def test_config_yaml_round_trip(tmp_path):
    import yaml

    out = tmp_path / "run" / "config.yaml"
    values = {"model": "/m/Qwen3 0.6B", "lr": "1e-06", "empty": "", "note": "a: b # c",
              "quote": 'say "hi"', "prompt-data": ["a.jsonl", "b.jsonl"]}
    args = []
    for k, v in values.items():
        args += ["--config", f"{k}={','.join(v) if isinstance(v, list) else v}"]
    run_tool("--steps", "0", "--config-out", str(out), *args)
    loaded = yaml.safe_load(out.read_text())
    assert loaded == values
    assert [f for f in os.listdir(out.parent)] == ["config.yaml"]  # no temporary left


def get_json(port, since=None):
    url = f"http://127.0.0.1:{port}/api/metrics" + ("" if since is None else f"?since={since}")
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


class Server:
    def __init__(self, tmp_path, steps):
        port_file = tmp_path / "port"
        self.p = subprocess.Popen(
            [TOOL, "--steps", str(steps), "--dashboard-port", "0", "--port-file", str(port_file),
             "--serve", "--no-console", "--config", "lr=1e-06", "--config", "model=/m/tiny"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        end = time.monotonic() + 30
        while not port_file.exists():
            assert self.p.poll() is None, "metrics_tool exited early"
            assert time.monotonic() < end, "no port file"
            time.sleep(0.05)
        self.port = int(port_file.read_text())

    def send(self, line):
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()
        while True:
            out = self.p.stdout.readline()
            assert out, "metrics_tool exited"
            if out.startswith("ok"):
                return

    def close(self):
        self.p.stdin.close()
        assert self.p.wait(timeout=30) == 0


def test_api_metrics_incremental(tmp_path):
    srv = Server(tmp_path, 6)
    try:
        full = get_json(srv.port)
        assert full["next"] == 6
        assert full["status"]["state"] == "running" and full["status"]["step"] == 5
        assert full["config"] == {"lr": "1e-06", "model": "/m/tiny"}
        assert sorted(full["series"]) == sorted(SCALARS)
        for k, fn in SCALARS.items():
            assert full["series"][k] == [[s, fn(s)] for s in range(6)]
        assert full["texts"]["sample"] == [5, sample_text(5)]
        assert get_json(srv.port, 6)["series"] == {}
        assert "config" not in get_json(srv.port, 6)
        part = get_json(srv.port, 4)
        assert part["series"]["train/loss"] == [[4, 0.2], [5, 1 / 6]]
        # Live: a step logged now shows up for a client that has seen 6 records.
        srv.send("log")
        srv.send("status finished all done")
        live = get_json(srv.port, 6)
        assert live["next"] == 7
        assert live["series"]["rollout/reward_mean"] == [[6, 0.1 * 6]]
        assert live["status"]["state"] == "finished" and live["status"]["detail"] == "all done"
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/api/metrics?since=x", timeout=10)
        assert e.value.code == 400
    finally:
        srv.close()


def chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def png_pixels(data):
    """Width, height and rows of RGB(A) bytes of a non-interlaced 8-bit PNG (what Chromium
    writes), decoded with zlib only."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, w = 8, b"", 0
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and color in (2, 6) and interlace == 0, (depth, color, interlace)
            bpp = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw = zlib.decompress(idat)
    stride = w * bpp
    rows, prev = [], bytearray(stride)
    for y in range(h):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return w, h, bpp, rows


def test_dashboard_in_headless_chromium(tmp_path):
    browser = chromium()
    if browser is None:
        pytest.skip("chromium is not installed (scripts/setup.sh installs Debian's chromium)")
    steps = 12
    srv = Server(tmp_path, steps)
    try:
        base = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}",
                "--virtual-time-budget=5000"]
        url = f"http://127.0.0.1:{srv.port}/"
        dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True,
                             timeout=120).stdout
        plots = re.findall(r'<svg class="plot" data-metric="([^"]+)" data-points="(\d+)"', dom)
        assert sorted(plots) == sorted((k, str(steps)) for k in SCALARS), dom[:3000]
        polylines = re.findall(r'<polyline points="([^"]+)"', dom)
        assert len(polylines) == len(SCALARS)
        assert all(len(p.split()) == steps for p in polylines)
        # The loss falls: its polyline's y (SVG y grows downward) rises step by step.
        loss_svg = dom[dom.index('data-metric="train/loss"'):]
        ys = [float(pt.split(",")[1]) for pt in re.search(r'<polyline points="([^"]+)"',
                                                         loss_svg).group(1).split()]
        assert ys == sorted(ys) and ys[0] < ys[-1]
        assert 'class="state running"' in dom
        assert "<td>lr</td><td>1e-06</td>" in dom
        assert "&lt;b&gt;answer&lt;/b&gt; &amp; more" in dom  # texts are escaped, not HTML
        assert "metrics_tool &lt;test&gt;" in dom

        shot = tmp_path / "shot.png"
        subprocess.run([*base, f"--screenshot={shot}", "--window-size=1000,700", url],
                       capture_output=True, timeout=120)
        w, h, bpp, rows = png_pixels(shot.read_bytes())
        assert (w, h) == (1000, 700)
        # Not blank: the plot strokes (#1565c0, blue) are there, and many pixels differ
        # from the page background.
        background = rows[0][:3]
        differ = sum(1 for r in rows for i in range(0, w * bpp, bpp) if r[i:i + 3] != background)
        blue = sum(1 for r in rows for i in range(0, w * bpp, bpp)
                   if r[i + 2] > 150 and r[i] < 80 and r[i + 1] < 140)
        assert differ > 2000, differ
        assert blue > 100, blue
    finally:
        srv.close()


def test_dashboard_thins_long_series_in_chromium(tmp_path):
    browser = chromium()
    if browser is None:
        pytest.skip("chromium is not installed (scripts/setup.sh installs Debian's chromium)")
    srv = Server(tmp_path, 2500)
    try:
        dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                              "--no-first-run", "--disable-dev-shm-usage",
                              f"--user-data-dir={tmp_path / 'profile'}",
                              "--virtual-time-budget=5000", "--dump-dom",
                              f"http://127.0.0.1:{srv.port}/"],
                             capture_output=True, text=True, timeout=120).stdout
        plots = re.findall(r'<svg class="plot" data-metric="([^"]+)" data-points="(\d+)"', dom)
        assert sorted(plots) == sorted((k, "2500") for k in SCALARS), dom[:2000]
        for p in re.findall(r'<polyline points="([^"]+)"', dom):
            pts = p.split()
            assert len(pts) == 834  # every 3rd of 2500 points, and the last
            assert float(pts[-1].split(",")[0]) == 320 - 6  # the last step at the right edge
    finally:
        srv.close()

ANVIL = os.environ.get("ANVIL_BIN", "")


def head(*args):
    """`anvil head` with no worker coming: it parses the job (and saves config.yaml), waits
    300 ms for a worker, and fails."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("ANVIL_JOB_TOKEN", None)
    return subprocess.run([ANVIL, "head", "--listen", "127.0.0.1:0", "--workers", "1",
                           "--register-timeout-ms", "300", *args],
                          capture_output=True, text=True, timeout=120, env=env)


needs_anvil = pytest.mark.skipif(not ANVIL or not os.path.exists(ANVIL),
                                 reason="ANVIL_BIN (the anvil binary) is not built")


@needs_anvil
def test_head_rejects_bad_config_keys_and_contradictions(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("lr: 1e-5\nlearning_rat: 3\n")
    p = head("--config", str(job))
    assert p.returncode != 0
    assert f"config {job}: unknown key 'learning_rat' (there is no job flag --learning-rat)" in p.stderr
    job.write_text("lr: 1e-5\n--lr: 2e-5\n")
    p = head("--config", str(job))
    assert p.returncode != 0 and "keys 'lr' and '--lr' both set --lr" in p.stderr, p.stderr
    p = head("--use-tensorboard")
    assert p.returncode != 0 and "--use-tensorboard needs --tensorboard-dir" in p.stderr, p.stderr
    p = head("--save-interval", "2")
    assert p.returncode != 0 and "--save-interval 2 needs --save" in p.stderr, p.stderr


@needs_anvil
def test_head_saves_the_resolved_config_and_it_repeats_the_job(tmp_path):
    import yaml

    save = tmp_path / "ckpt"
    job = tmp_path / "job.yaml"
    job.write_text(f"lr: 1e-5\nuse_kl_loss: true\nreshard_after_forward: false\nsave: {save}\n"
                   "rollout-batch-size: 8\n")
    p = head("--config", str(job), "--lr", "3e-6", "--n-samples-per-prompt", "4")
    assert "waited 300 ms" in p.stderr, p.stderr  # got past the flags
    saved = save / "config.yaml"
    config = yaml.safe_load(saved.read_text())
    assert str(config["lr"]) == "3e-6"  # the command line wins over the YAML
    assert config["use-kl-loss"] is True and config["reshard-after-forward"] is False
    assert config["rollout-batch-size"] == 8 and config["n-samples-per-prompt"] == 4
    assert config["save"] == str(save)
    assert config["num-rollout"] == 1  # a default
    first = saved.read_text()
    # --config config.yaml alone resolves to the same config.
    p = head("--config", str(saved))
    assert "waited 300 ms" in p.stderr, p.stderr
    assert saved.read_text() == first

"""The actor runtime with real processes on localhost: `anvil head`, two `anvil worker`
daemons and every role (`anvil actor --role train|ref|rollout|weight-sync`) on a tiny
model. A rollout batch and full weight versions move end to end (checksums verified by
the receivers and compared by the weight-sync role), the job shuts down cleanly with no
process left, and faults (kill -9 a role or a worker, SIGSTOP a role) are reported within
5 s naming node, role and rank, with a non-zero exit and nothing hanging. Bad peers (wrong
token, garbage on the control port, unknown role) are refused clearly."""
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time

import pytest

ANVIL = os.environ.get("ANVIL_BIN", "anvil")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "ANVIL_LOG_LEVEL": "info"}
ENV.pop("ANVIL_JOB_TOKEN", None)


def run(*args, check=True):
    p = subprocess.run([ANVIL, *args], capture_output=True, text=True, env=ENV, timeout=120)
    if check and p.returncode != 0:
        raise AssertionError(f"anvil {' '.join(args)} failed ({p.returncode}):\n{p.stderr}")
    return p


class Proc:
    """A child process whose stderr lines are collected with their arrival times."""

    def __init__(self, args, env=ENV, prefix=()):
        self.args = args
        self.p = subprocess.Popen([*prefix, ANVIL, *args], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True, env=env)
        self.lines = []  # (time, line)
        self.t = threading.Thread(target=self._read, daemon=True)
        self.t.start()

    def _read(self):
        for line in self.p.stderr:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def text(self):
        return "\n".join(l for _, l in self.lines)

    def wait_line(self, pattern, timeout):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for t, l in list(self.lines):
                m = re.search(pattern, l)
                if m:
                    return t, m
            if self.p.poll() is not None and not self.t.is_alive():
                break
            time.sleep(0.05)
        raise AssertionError(f"no line matching {pattern!r} within {timeout} s:\n{self.text()}")

    def wait(self, timeout):
        try:
            code = self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            raise AssertionError(f"anvil {' '.join(self.args)} did not exit within {timeout} s:\n"
                                 f"{self.text()}")
        self.t.join(timeout=5)
        return code

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()


def job_processes(token):
    """Pids of live (non-zombie) processes that carry this job's token in their environment."""
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/environ", "rb") as f:
                env = f.read().split(b"\0")
            with open(f"/proc/{d}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if f"ANVIL_JOB_TOKEN={token}".encode() in env and state != "Z":
            pids.append(int(d))
    return pids


def segments_of(pids):
    """The weight-sync segments (/dev/shm/anvil-PID-N) that these processes created. Other
    tests run beside this one (ctest -j) and make and SIGKILL their own, so a leak check
    looks at our pids only."""
    return {f for f in os.listdir("/dev/shm")
            if any(f.startswith(f"anvil-{pid}-") for pid in pids)}


def assert_no_processes(token, timeout=10):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not job_processes(token):
            return
        time.sleep(0.1)
    raise AssertionError(f"processes of the job still alive: {job_processes(token)}")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("runtime")
    model = str(d / "model")
    run("init-model", "--arch", "qwen3", "--preset", "tiny", "--out", model, "--seed", "3")
    data = d / "prompts.jsonl"
    with open(data, "w") as f:
        for i in range(64):
            f.write(json.dumps({"prompt": f"count to {i}:", "label": str(i)}) + "\n")
    return d, model, str(data)


class Cluster:
    """A head and its workers, all torn down (and checked for leftovers) at the end."""

    def __init__(self, d, name, job, workers=2, head_flags=(), devices=(1, 1), start=True,
                 worker_flags=(), listen="127.0.0.1"):
        self.dir = d / name
        self.dir.mkdir()
        self.worker_flags = list(worker_flags)
        self.host = listen
        self.token_file = str(self.dir / "token")
        self.report = str(self.dir / "report.json")
        port_file = str(self.dir / "port")
        self.head = Proc(["head", "--listen", f"{listen}:0", "--workers", str(workers),
                          "--token-file", self.token_file, "--port-file", port_file,
                          "--report", self.report, "--heartbeat-ms", "250",
                          "--heartbeat-timeout-ms", "2000", *head_flags, *job])
        end = time.monotonic() + 60
        while not os.path.exists(port_file):
            assert time.monotonic() < end and self.head.p.poll() is None, self.head.text()
            time.sleep(0.05)
        self.port = int(open(port_file).read())
        self.token = open(self.token_file).read().strip()
        self.workers = []
        for i in range(workers if start else 0):
            self.workers.append(self.start_worker(f"node{i}", devices[i]))

    def start_worker(self, node_id, devices, token_file=None, flags=None, prefix=()):
        (self.dir / node_id).mkdir(exist_ok=True)
        args = ["worker", "--head", f"{self.host}:{self.port}", "--token-file",
                token_file or self.token_file, "--node-id", node_id,
                *(["--devices", str(devices)] if devices is not None else []), "--log-dir", str(self.dir / node_id), "--heartbeat-ms", "250",
                *(self.worker_flags if flags is None else flags)]
        return Proc(args, prefix=prefix)

    def role_pid(self, role, rank=0, timeout=60):
        for w in self.workers:
            for _, l in list(w.lines):
                m = re.search(rf"spawned role {role} rank {rank} as pid (\d+)", l)
                if m:
                    return int(m.group(1)), w
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for w in self.workers:
                for _, l in list(w.lines):
                    m = re.search(rf"spawned role {role} rank {rank} as pid (\d+)", l)
                    if m:
                        return int(m.group(1)), w
            time.sleep(0.05)
        raise AssertionError(f"role {role} was not spawned:\n" +
                             "\n".join(w.text() for w in self.workers))

    def pids(self):
        """The head's, the workers' and every role's pid that a worker logged spawning."""
        pids = {self.head.p.pid, *(w.p.pid for w in self.workers)}
        for w in self.workers:
            for _, l in list(w.lines):
                m = re.search(r"spawned role \S+ rank \d+ as pid (\d+)", l)
                if m:
                    pids.add(int(m.group(1)))
        return pids

    def close(self):
        for p in [self.head, *self.workers]:
            p.kill()
        for pid in job_processes(self.token):
            os.kill(pid, signal.SIGKILL)


def job_flags(model, data, *extra):
    return ["--model", model, "--prompt-data", data, "--input-key", "prompt",
            "--rollout-batch-size", "2", "--n-samples-per-prompt", "2",
            "--rollout-max-response-len", "4", "--global-batch-size", "4", "--lr", "1e-2",
            "--weight-decay", "0.1", "--rollout-sampling-seed", "5", "--label-key", "label",
            "--rm-type", "exact_match", *extra]


def check_report(report, rollouts):
    assert report["ok"], report
    assert len(report["rollouts"]) == rollouts
    checksums = []
    for k, r in enumerate(report["rollouts"]):
        assert sum(g["samples"] for g in r["generate"]) == 4
        assert r["train"][0]["samples"] == 4 and r["train"][0]["steps"], r["train"]
        # The engine (another process) sampled with the weights the trainer holds: its
        # log-probs are the trainer's ("true on-policy"), fp32 rounding apart.
        assert r["train"][0]["steps"][0]["train_rollout_logprob_abs_diff"] < 1e-5
        sync = r["sync"]
        assert sync["weight_version"] == k + 1
        assert sync["targets"] and all(t["tensors"] > 0 for t in sync["targets"])
        for e in sync["engines"]:
            assert e["weight_version"] == k + 1 and e["checksum"] == sync["checksum"]
        checksums.append(sync["checksum"])
    assert len(set(checksums)) == rollouts  # every version really differs


def test_two_workers_every_role_end_to_end_and_clean_shutdown(setup):
    d, model, data = setup
    ckpt, metrics = d / "e2e-ckpt", d / "e2e-metrics.jsonl"
    c = Cluster(d, "e2e", job_flags(model, data, "--num-rollout", "2", "--use-kl-loss",
                                    "--kl-loss-coef", "0.01", "--save", str(ckpt),
                                    "--save-interval", "1", "--metrics-jsonl", str(metrics)))
    try:
        assert c.head.wait(240) == 0, c.head.text()
        for w in c.workers:
            assert w.wait(30) == 0, w.text()
        report = json.load(open(c.report))
        check_report(report, 2)
        roles = {(p["role"], p["node_id"]) for p in report["placement"]}
        assert roles == {("train", "node0"), ("ref", "node0"), ("rollout", "node1"),
                         ("weight-sync", "node0")}
        # Train rank 0 and the engine sit on different nodes: gRPC chunks.
        assert report["rollouts"][0]["sync"]["targets"][0]["shared_memory"] is False
        assert report["rollouts"][0]["ref"][0]["samples"] == 4
        # Checkpoints after each rollout, metrics for each optimizer step.
        assert (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == "2"
        assert (ckpt / "iter_0000001" / "model" / "config.json").exists()
        lines = [json.loads(l) for l in open(metrics)]
        assert [(l["rollout"], l["weight_version"]) for l in lines] == [(0, 1), (1, 2)]
        assert all("kl_loss" in l and "grad_norm" in l for l in lines)
        assert_no_processes(c.token)
    finally:
        c.close()


def test_colocated_weights_go_through_shared_memory(setup):
    d, model, data = setup
    # No --devices: the worker counts the CUDA devices it sees, else offers one CPU slot.
    c = Cluster(d, "coloc", job_flags(model, data, "--num-rollout", "1", "--colocate"),
                workers=1, devices=(None,))
    try:
        assert c.head.wait(240) == 0, c.head.text()
        report = json.load(open(c.report))
        check_report(report, 1)
        assert report["rollouts"][0]["sync"]["targets"][0]["shared_memory"] is True
        # The engine released its memory for training and took it back before the sync.
        assert report["rollouts"][0]["offload"][0]["weights_released"] is True
        assert report["rollouts"][0]["onload"][0]["weights_released"] is False
        assert c.workers[0].wait(30) == 0
        # The node's resources as the worker registered them.
        _, m = c.workers[0].wait_line(r"registered with the head at \S+ \((\d+) devices "
                                      r"\((cuda|cpu)\), (\d+) cores, (\d+) MiB memory\)", 1)
        assert int(m.group(3)) == len(os.sched_getaffinity(0))
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") >> 20
        assert int(m.group(4)) == total
        assert (m.group(2) == "cpu") == (int(m.group(1)) == 1 and not has_cuda())
        assert_no_processes(c.token)
        assert len(c.pids()) > 2  # the roles' spawn lines were seen
        assert not segments_of(c.pids())  # the segment went with its process
    finally:
        c.close()


def test_in_process_runs_the_same_job(setup):
    d, model, data = setup
    out = d / "inproc.json"
    p = Proc(["head", "--in-process", "--report", str(out),
              *job_flags(model, data, "--num-rollout", "2", "--use-kl-loss")])
    assert p.wait(120) == 0, p.text()
    check_report(json.load(open(out)), 2)
    assert not segments_of([p.p.pid])


def long_job(model, data):
    return job_flags(model, data, "--num-rollout", "100000")


@pytest.mark.parametrize("victim", ["rollout", "train"])
def test_kill_9_role_is_reported_within_5s(setup, victim):
    d, model, data = setup
    c = Cluster(d, f"kill-{victim}", long_job(model, data))
    try:
        c.head.wait_line(r"rollout 0 trained", 120)
        pid, _ = c.role_pid(victim)
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        t, _ = c.head.wait_line(rf"role {victim} rank 0 \(pid {pid}\) on node node\d .*"
                                rf"(killed by signal 9|unreachable)", 10)
        assert t - t0 < 5
        assert c.head.wait(30) != 0
        for w in c.workers:
            w.wait(30)
        assert_no_processes(c.token)
        report = json.load(open(c.report))
        assert not report["ok"] and f"role {victim} rank 0" in report["error"]
    finally:
        c.close()


def test_kill_9_worker_is_reported_and_its_roles_die(setup):
    d, model, data = setup
    c = Cluster(d, "kill-worker", long_job(model, data))
    try:
        c.head.wait_line(r"rollout 0 trained", 120)
        rollout_pid, w = c.role_pid("rollout")
        t0 = time.monotonic()
        w.p.send_signal(signal.SIGKILL)
        t, _ = c.head.wait_line(r"(worker on node node1 .*unreachable|role rollout rank 0 .*"
                                r"node node1)", 10)
        assert t - t0 < 5
        assert c.head.wait(30) != 0
        assert_no_processes(c.token)  # the roles died with their worker (PR_SET_PDEATHSIG)
    finally:
        c.close()


def test_sigstop_role_is_reported_as_hung_within_5s(setup):
    d, model, data = setup
    c = Cluster(d, "stop", long_job(model, data))
    try:
        c.head.wait_line(r"rollout 0 trained", 120)
        pid, _ = c.role_pid("train")
        t0 = time.monotonic()
        os.kill(pid, signal.SIGSTOP)
        t, _ = c.head.wait_line(rf"role train rank 0 \(pid {pid}\) on node node0 did not answer "
                                rf"a heartbeat", 10)
        assert t - t0 < 5
        assert c.head.wait(30) != 0
        for w in c.workers:
            w.wait(30)
        assert_no_processes(c.token)
    finally:
        c.close()


def test_wrong_token_garbage_and_unknown_role_are_refused(setup, tmp_path):
    d, model, data = setup
    c = Cluster(d, "refuse", long_job(model, data), workers=1, start=False,
                head_flags=["--register-timeout-ms", "8000"])
    try:
        # Garbage on the control port: the head drops the connection and keeps serving.
        with socket.create_connection(("127.0.0.1", c.port)) as s:
            s.sendall(b"\xff" * 4096 + b"GET / HTTP/1.1\r\n\r\n")
            time.sleep(0.3)
        other = tmp_path / "other-token"
        other.write_text("not-the-job-token\n")
        w = c.start_worker("intruder", 1, token_file=str(other))
        assert w.wait(30) == 1
        assert "wrong job token" in w.text(), w.text()
        assert c.head.p.poll() is None  # still alive and waiting
        # The head gives up on its missing worker cleanly.
        _, m = c.head.wait_line(r"waited 8000 ms for 1 workers, 0 registered", 30)
        assert c.head.wait(30) == 1
    finally:
        c.close()
    p = run("actor", "--role", "judge", "--head", "127.0.0.1:1", "--node-id", "x", check=False)
    assert p.returncode == 1 and "unknown role 'judge'" in p.stderr, p.stderr


def test_a_role_that_does_not_answer_an_operation_is_reported(setup):
    """Every head -> role request has a deadline (--request-timeout-ms): a role whose
    compute thread is stuck in a call (its front still answers heartbeats) is reported,
    naming the role and the operation, and the job stops."""
    d, model, data = setup
    out = d / "timeout.json"
    # 1 ms: no role loads its model that fast, so the init of some role times out.
    p = run("head", "--in-process", "--report", str(out), "--request-timeout-ms", "1",
            *job_flags(model, data, "--num-rollout", "1"), check=False)
    assert p.returncode == 1, p.stderr
    assert re.search(r"role \S+ rank 0 \(pid \d+\) on node in-process did not answer 'init' "
                     r"within 1 ms", p.stderr), p.stderr
    report = json.load(open(out))
    assert not report["ok"] and "did not answer 'init'" in report["error"]


def make_certs(d):
    """A CA with a certificate for 127.0.0.1 (and the namespace addresses), and a second CA
    with its own certificate, made with the openssl CLI (EC P-256, valid two days)."""
    def sh(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    def ca(name):
        sh("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
           "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={name}")

    def cert(name, ca_name):
        sh("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
           "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        (d / f"{name}.ext").write_text(
            f"subjectAltName=IP:127.0.0.1,DNS:localhost,{NETNS_SANS}\n"
            "extendedKeyUsage=serverAuth,clientAuth\n")
        sh("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca_name}.pem", "-CAkey",
           f"{ca_name}.key", "-CAcreateserial", "-out", f"{name}.pem", "-days", "2",
           "-extfile", f"{name}.ext")

    ca("ca")
    ca("other-ca")
    cert("node", "ca")
    cert("rogue", "other-ca")

    def flags(name, ca_name):
        return ["--tls-cert", str(d / f"{name}.pem"), "--tls-key", str(d / f"{name}.key"),
                "--tls-ca", str(d / f"{ca_name}.pem")]
    return flags("node", "ca"), flags("rogue", "other-ca")


NETNS_SANS = "IP:10.231.7.1,IP:10.231.7.2"


@pytest.mark.skipif(subprocess.run(["which", "openssl"], capture_output=True).returncode != 0,
                    reason="no openssl CLI to make the test certificates")
def test_tls_on_every_link_and_a_wrong_ca_is_refused(setup, tmp_path):
    """With --tls-cert/--tls-key/--tls-ca the CAF links (CAF's OpenSSL module) and the gRPC
    data plane (mutual TLS) are encrypted and authenticated: a whole job runs across two
    workers, while a worker whose certificate another CA signed, or one without TLS, is
    refused with a clear error and the job goes on."""
    d, model, data = setup
    tls, rogue = make_certs(tmp_path)
    c = Cluster(d, "tls", job_flags(model, data, "--num-rollout", "2"), head_flags=tls,
                worker_flags=tls, start=False)
    try:
        w = c.start_worker("rogue", 1, flags=rogue)
        assert w.wait(30) == 1
        assert "TLS handshake failed: its certificate is not signed by our --tls-ca" in w.text(), \
            w.text()
        w = c.start_worker("plain", 1, flags=[])
        assert w.wait(30) == 1
        assert "dropped during the handshake: does it use TLS?" in w.text(), w.text()
        assert c.head.p.poll() is None
        c.workers = [c.start_worker("node0", 1), c.start_worker("node1", 1)]
        assert c.head.wait(240) == 0, c.head.text()
        for w in c.workers:
            assert w.wait(30) == 0, w.text()
        report = json.load(open(c.report))
        check_report(report, 2)
        # Across nodes: gRPC chunks, over the TLS channels.
        assert report["rollouts"][0]["sync"]["targets"][0]["shared_memory"] is False
        assert_no_processes(c.token)
    finally:
        c.close()
    # A key that does not belong to the certificate is caught before anything starts.
    bad = [tls[0], tls[1], tls[2], rogue[3], tls[4], tls[5]]
    p = run("worker", "--head", "127.0.0.1:1", "--token-file", c.token_file, *bad, check=False)
    assert p.returncode == 1 and "does not belong to the certificate" in p.stderr, p.stderr


NETNS_HOST, NETNS_PEER = "10.231.7.1", "10.231.7.2"


def has_cuda():
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


def netns_unavailable():
    """Why a network namespace cannot be made here (None when it can)."""
    if subprocess.run(["which", "ip"], capture_output=True).returncode != 0:
        return "no `ip` command (iproute2)"
    probe = f"anvil-probe-{os.getpid()}"
    p = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if p.returncode != 0:
        return f"`ip netns add` is not permitted here: {p.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


@pytest.fixture
def second_node():
    """A network namespace joined to the host by a veth pair: the host side is NETNS_HOST,
    the namespace side NETNS_PEER (/24). Yields the namespace's name; removed afterwards."""
    reason = netns_unavailable()
    if reason:
        pytest.skip(f"second node in a network namespace: {reason}")
    ns, veth = f"anvil-node-{os.getpid()}", f"anv{os.getpid() % 100000}"

    def ip(*args):
        subprocess.run(["ip", *args], check=True, capture_output=True, text=True)

    subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    ip("netns", "add", ns)
    try:
        ip("link", "add", veth + "h", "type", "veth", "peer", "name", veth + "n")
        ip("link", "set", veth + "n", "netns", ns)
        ip("addr", "add", f"{NETNS_HOST}/24", "dev", veth + "h")
        ip("link", "set", veth + "h", "up")
        ip("-n", ns, "addr", "add", f"{NETNS_PEER}/24", "dev", veth + "n")
        ip("-n", ns, "link", "set", veth + "n", "up")
        ip("-n", ns, "link", "set", "lo", "up")
        yield ns
    finally:
        subprocess.run(["ip", "link", "del", veth + "h"], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_second_node_in_a_network_namespace(setup, second_node):
    """Head and worker node0 on the host, worker node1 inside a network namespace (its own
    interfaces: loopback and a veth to the host). Each node's roles bind its own address
    (--bind-host); the rollout engine lands on node1, so its rollouts and every weight
    version cross the veth over gRPC, never through shared memory."""
    d, model, data = setup
    c = Cluster(d, "netns", job_flags(model, data, "--num-rollout", "2", "--use-kl-loss"),
                start=False, listen=NETNS_HOST)
    try:
        c.workers = [
            c.start_worker("node0", 1, flags=["--bind-host", NETNS_HOST]),
            c.start_worker("node1", 1, flags=["--bind-host", NETNS_PEER],
                           prefix=["ip", "netns", "exec", second_node]),
        ]
        assert c.head.wait(240) == 0, c.head.text()
        for w in c.workers:
            assert w.wait(30) == 0, w.text()
        report = json.load(open(c.report))
        check_report(report, 2)
        roles = {(p["role"], p["node_id"]) for p in report["placement"]}
        assert roles == {("train", "node0"), ("ref", "node0"), ("rollout", "node1"),
                         ("weight-sync", "node0")}
        for r in report["rollouts"]:
            # Weights: train rank 0 (host) -> the engine at the namespace's address, gRPC.
            (target,) = r["sync"]["targets"]
            assert target["endpoint"].startswith(NETNS_PEER + ":"), target
            assert target["shared_memory"] is False and target["tensors"] > 0
            # Rollouts: generated inside the namespace, received whole on the host.
            assert sum(g["samples"] for g in r["generate"]) == 4
            assert r["ref"][0]["samples"] == 4 and r["train"][0]["samples"] == 4
        assert_no_processes(c.token)
    finally:
        c.close()

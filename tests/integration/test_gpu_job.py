"""The RL job on a CUDA device (`--device cuda` for every role): in one process and as a
head + worker + role processes in colocated mode, where the engine releases its weights and
KV cache while training runs and the train role moves its weights and AdamW state to pinned
host memory while the engine generates. Skipped without a GPU (CI); run on the GPU machine."""
import json

import pytest

from test_runtime import Cluster, assert_no_processes, check_report, has_cuda, job_flags, run, setup  # noqa: F401

pytestmark = pytest.mark.skipif(not has_cuda(), reason="no CUDA device: runs on the GPU machine")


def test_in_process_job_on_cuda(setup):
    d, model, data = setup
    out = d / "gpu_inproc.json"
    p = run("head", "--in-process", "--report", str(out),
            *job_flags(model, data, "--num-rollout", "2", "--use-kl-loss", "--device", "cuda"),
            check=False)
    assert p.returncode == 0, p.stderr
    check_report(json.load(open(out)), 2)


def test_colocated_job_on_cuda_offloads_both_sides(setup):
    d, model, data = setup
    c = Cluster(d, "gpu_coloc", job_flags(model, data, "--num-rollout", "2", "--colocate",
                                          "--device", "cuda"), workers=1, devices=(1,))
    try:
        assert c.head.wait(300) == 0, c.head.text()
        report = json.load(open(c.report))
        check_report(report, 2)
        for r in report["rollouts"]:
            assert r["offload"][0]["weights_released"] is True
            assert r["onload"][0]["weights_released"] is False
            # the train side's state left the device while the engine generated
            moved = [x for k, v in r.items() if k.startswith("train_offload") for x in v]
            assert moved and all(x["moved"] and x["offloaded"] for x in moved), r.keys()
        assert c.workers[0].wait(30) == 0
        assert_no_processes(c.token)
    finally:
        c.close()

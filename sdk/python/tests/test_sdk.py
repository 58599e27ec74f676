"""The SDK against a live `gpucloud dev`, as a script and as a workload would use it."""

import shlex
import time
from decimal import Decimal

import httpx
import pytest

import gpucloud
from gpucloud import ApiError, Client


def wait_for(what, fn, timeout=30.0):
    deadline = time.time() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.fixture
def client(dev):
    with Client(dev["url"], dev["key"]) as c:
        yield c


def test_instances_bad_input_and_billing(client):
    inst = client.instances.create(gpu="T4", command="sleep 600", region="eu-1")
    assert inst.state == "pending" and inst.tier == "on-demand"
    running = wait_for("running", lambda: (i := client.instances.get(inst.id)).state == "running" and i)
    assert running.node and running.gpus == [running.gpus[0]]
    assert inst.id in [i.id for i in client.instances.list()]
    client.instances.stop(inst.id)
    wait_for("stopped", lambda: client.instances.get(inst.id).state == "stopped")
    with pytest.raises(ApiError) as e:
        client.instances.create(gpu="T4", command="x", count=0)
    assert e.value.status == 422 and e.value.field == "count"
    with pytest.raises(ApiError) as e:
        client.instances.get("i-nosuch")
    assert e.value.status == 404
    assert isinstance(client.billing.balance(), Decimal)
    p = client.spot.prices("A100-40GB", "eu-1")
    assert p.floor <= p.current <= p.on_demand


TRAINER = r'''
import os, sys, time
import gpucloud
d = sys.argv[1]
step = int(open(gpucloud.resume_from()).read()) if gpucloud.resume_from() else 0
attempt = os.environ["GPUCLOUD_ATTEMPT"]
open(f"{d}/log", "a").write(f"attempt {attempt} resumes at {step}\n")
noticed = []
gpucloud.watch_preemption(noticed.append)
while step < 30:
    if noticed:
        # Checkpointed below after every step: leave now, the next attempt resumes.
        open(f"{d}/log", "a").write(f"attempt {attempt} noticed at {step}: {noticed[0].reason}\n")
        sys.exit(0)
    time.sleep(0.2)
    step += 1
    path = f"{d}/ckpt-{step}"
    open(path, "w").write(str(step))
    gpucloud.report_checkpoint(path)
open(f"{d}/done", "w").write(str(step))
'''


def test_a_managed_job_resumes_from_its_checkpoints(client, dev):
    d = dev["tmp"] / "job"
    d.mkdir()
    (d / "trainer.py").write_text(TRAINER)
    cmd = f"{shlex.quote(dev['python'])} {shlex.quote(str(d / 'trainer.py'))} {shlex.quote(str(d))}"
    job = client.jobs.run(gpus=["A100-40GB", "H100-80GB"], command=cmd, checkpoint_dir=str(d), max_restarts=3)
    assert job.state == "running" and job.attempts == 1
    first = wait_for("a few steps", lambda: (j := client.jobs.get(job.id)).checkpoint and j.history[0].state == "running" and j)
    # The operator preempts it (as the market would); the workload sees the notice through the SDK.
    r = httpx.post(
        f"{dev['url']}/v1/admin/instances/{first.history[0].instance}/preempt",
        json={"notice_seconds": 2},
        headers={"Authorization": f"Bearer {dev['operator']}"},
    )
    assert r.status_code == 200, r.text
    done = wait_for("the job to end", lambda: (j := client.jobs.get(job.id)).state != "running" and j, timeout=60)
    assert done.state == "succeeded", done
    assert done.attempts == 2 and done.restarts == 1
    assert (d / "done").read_text() == "30"
    log = (d / "log").read_text().splitlines()
    assert log[0] == "attempt 1 resumes at 0"
    assert log[1].startswith("attempt 1 noticed at ") and "simulated by the operator" in log[1]
    stopped_at = int(log[1].split()[4].rstrip(":"))
    assert log[2] == f"attempt 2 resumes at {stopped_at}", log
    assert done.history[1].resumed_from.endswith(f"ckpt-{stopped_at}")
    assert all(a.tier == "spot" for a in done.history)
    assert [j.id for j in client.jobs.list()].count(job.id) == 1


def test_workload_helpers_need_a_workload(monkeypatch):
    monkeypatch.delenv("GPUCLOUD_METADATA_URL", raising=False)
    monkeypatch.delenv("GPUCLOUD_RESUME_FROM", raising=False)
    assert gpucloud.resume_from() is None
    with pytest.raises(RuntimeError, match="GPUCLOUD_METADATA_URL"):
        gpucloud.preemption_notice()

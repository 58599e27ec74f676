"""The SDK against a live `gpucloud dev`, as a script and as a workload would use it."""

import json
import shlex
import time
from decimal import Decimal

import httpx
import pytest

import gpucloud
from gpucloud import ApiError, Client, Priority, ProblemCode


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
    host, port = running.endpoint.rsplit(":", 1)
    assert host == "127.0.0.1" and 0 < int(port) < 65536, running.endpoint
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
    # Lists come in pages; the client follows `next` to the end.
    client.instances.create(gpu="T4", command="sleep 1", region="eu-1")
    paged = [i["id"] for i in client._get_all("/v1/instances?limit=1", "instances")]
    assert len(paged) >= 2 and paged == [i.id for i in client.instances.list()]
    p = client.spot.prices("A100-40GB", "eu-1")
    assert p.floor <= p.current <= p.on_demand


def test_a_project_quota_refuses_or_holds_what_does_not_fit(client):
    client.projects.create("sdk-team", max_priority="default")
    assert "sdk-team" in [p["name"] for p in client.projects.list()]
    q = client.projects.set_quota("sdk-team", "A10", limit=1)
    assert q["limit"] == 1 and q["headroom"] == 1
    first = client.instances.create(gpu="A10", command="sleep 600", project="sdk-team", priority="batch")
    assert first.project == "sdk-team" and first.priority == Priority.BATCH
    with pytest.raises(ApiError) as e:
        client.instances.create(gpu="A10", command="sleep 600", project="sdk-team")
    assert e.value.status == 409 and e.value.code == ProblemCode.QUOTA_EXCEEDED, e.value
    with pytest.raises(ApiError) as e:
        client.instances.create(gpu="A10", command="x", project="sdk-team", priority="production")
    assert e.value.status == 422 and e.value.field == "priority"
    held = client.instances.create(gpu="A10", command="sleep 600", project="sdk-team", on_quota="wait")
    assert "waiting for quota" in (client.instances.get(held.id).pending_reason or "")
    assert client.projects.quotas("sdk-team")[0]["waiting"] == 1
    client.instances.terminate(first.id)
    wait_for("the held instance to run", lambda: client.instances.get(held.id).state == "running")
    client.instances.terminate(held.id)
    client.projects.remove_quota("sdk-team", "A10")


def test_secrets_env_and_a_web_port_through_the_proxy(client, dev):
    client.secrets.set("API_TOKEN", "tok-" + "7" * 20)
    assert "API_TOKEN" in client.secrets.list()
    port = 18000 + int(time.time()) % 1000
    # The workload serves its port under the path the proxy passes on (GPUCLOUD_PROXY_PATH).
    cmd = (
        f"d=$(mktemp -d) && mkdir -p \"$d${{GPUCLOUD_PROXY_PATH}}{port}\" && "
        f"echo \"mode=$MODE token=${{#API_TOKEN}}\" > \"$d${{GPUCLOUD_PROXY_PATH}}{port}/index.html\" && "
        f"cd \"$d\" && exec {shlex.quote(dev['python'])} -m http.server {port} --bind 127.0.0.1"
    )
    inst = client.instances.create(
        gpu="T4", command=cmd, region="eu-1", env={"MODE": "web"}, secrets=["API_TOKEN"], ports=[f"{port}/http"]
    )
    assert inst.env == {"MODE": "web", "API_TOKEN": "secret:API_TOKEN"}
    running = wait_for("running", lambda: (i := client.instances.get(inst.id)).state == "running" and i)
    url = running.url(port)
    assert url == f"{dev['url']}/i/{inst.id}/{port}/", running.ports
    with httpx.Client(timeout=10) as h:
        page = wait_for(
            "the proxied page",
            lambda: (r := h.get(url, headers={"Authorization": f"Bearer {dev['key']}"})).status_code == 200 and r,
        )
        # The secret reached the workload (its length, 24), and its value is nowhere in the API.
        assert "mode=web token=24" in page.text, page.text
        assert h.get(url).status_code == 401
        assert h.get(url, headers={"Authorization": f"Bearer {dev['operator']}"}).status_code == 404
    assert "7" * 20 not in str(client.instances.get(inst.id).raw)
    client.instances.terminate(inst.id)
    client.secrets.delete("API_TOKEN")
    assert "API_TOKEN" not in client.secrets.list()


def test_volumes_are_created_held_and_deleted(client, dev):
    v = client.volumes.create("scratch", "5GiB", "eu-1")
    assert (v["size_gib"], v["state"]) == (5, "available")
    with pytest.raises(ApiError) as e:
        client.volumes.create("scratch", "1", "eu-1")
    assert e.value.status == 409
    with pytest.raises(ApiError) as e:
        client.volumes.create("other", "1PB", "eu-1")
    assert (e.value.status, e.value.field) == (422, "size")
    inst = client.instances.create(gpu="T4", command="true", region="eu-1", volume="scratch:/data")
    assert inst.volume == "scratch:/data"
    assert client.volumes.get("scratch")["attached_to"] == inst.id
    with pytest.raises(ApiError) as e:
        client.volumes.delete("scratch")
    assert e.value.status == 409
    # dev runs processes here: a volume needs the container runtime, and the instance says so.
    failed = wait_for("failed", lambda: (i := client.instances.get(inst.id)).state == "failed" and i)
    assert "--runtime docker" in (failed.reason or ""), failed
    client.instances.terminate(inst.id)
    wait_for("terminated", lambda: client.instances.get(inst.id).state == "terminated")
    client.volumes.delete("scratch")
    assert all(v["name"] != "scratch" for v in client.volumes.list())


KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDBh7NsIURREmBoWHY68roPmpE3RQAwaKIruIXDI6kgb renter@laptop"


def test_ssh_keys_are_added_listed_and_removed(client, dev):
    k = client.ssh_keys.add(KEY)
    assert (k["name"], k["fingerprint"]) == ("renter@laptop", "SHA256:SaKGsp2lkMJpZyTnnUn3WAjfy9aB83Vsx2/oIER705Q")
    with pytest.raises(ApiError) as e:
        client.ssh_keys.add(KEY, name="again")
    assert e.value.status == 409
    with pytest.raises(ApiError) as e:
        client.ssh_keys.add("ssh-ed25519 notakey")
    assert (e.value.status, e.value.field) == (422, "public_key")
    assert [k["name"] for k in client.ssh_keys.list()] == ["renter@laptop"]
    client.ssh_keys.remove(k["fingerprint"])
    assert client.ssh_keys.list() == []


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
    gpucloud.log_metrics(step=step, loss=1.0 / step, samples_per_s=100.0)
open(f"{d}/done", "w").write(str(step))
'''


def test_a_managed_job_resumes_from_its_checkpoints(client, dev):
    d = dev["tmp"] / "job"
    d.mkdir()
    (d / "trainer.py").write_text(TRAINER)
    cmd = f"{shlex.quote(dev['python'])} {shlex.quote(str(d / 'trainer.py'))} {shlex.quote(str(d))}"
    job = client.jobs.run(gpus=["A100-40GB", "H100-80GB"], command=cmd, checkpoint_dir=str(d), max_restarts=3)
    assert job.state in ("pending", "running") and job.attempts == 1
    first = wait_for("a few steps", lambda: (j := client.jobs.get(job.id)).checkpoint and j.history[0].state == "running" and j)
    # The operator preempts it (as the market would); the workload sees the notice through the SDK.
    r = httpx.post(
        f"{dev['url']}/v1/admin/instances/{first.history[0].instance}/preempt",
        json={"notice_seconds": 2},
        headers={"Authorization": f"Bearer {dev['operator']}"},
    )
    assert r.status_code == 200, r.text
    done = wait_for("the job to end", lambda: (j := client.jobs.get(job.id)).state not in ("pending", "running") and j, timeout=60)
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
    # The loss curve the trainer pushed, step by step, across both attempts.
    second = done.history[1].instance
    loss = wait_for("the loss curve", lambda: (pts := client.instances.metrics(second, "loss")) and pts[-1]["step"] == 30 and pts)
    assert [p["step"] for p in loss] == list(range(stopped_at + 1, 31))
    assert abs(loss[-1]["value"] - 1 / 30) < 1e-9
    assert [j.id for j in client.jobs.list()].count(job.id) == 1


def test_workload_helpers_need_a_workload(monkeypatch):
    monkeypatch.delenv("GPUCLOUD_METADATA_URL", raising=False)
    monkeypatch.delenv("GPUCLOUD_RESUME_FROM", raising=False)
    assert gpucloud.resume_from() is None
    monkeypatch.setenv("GPUCLOUD_PORT", "41000")
    assert gpucloud.port() == 41000
    with pytest.raises(RuntimeError, match="GPUCLOUD_METADATA_URL"):
        gpucloud.preemption_notice()
    with pytest.raises(ValueError):
        gpucloud.log_metrics(step=1)


def test_a_cluster_grows_and_shrinks_from_a_training_loop(client, dev, monkeypatch):
    d = dev["tmp"] / "cluster"
    d.mkdir()
    cmd = f"env > {d}/env-$GPUCLOUD_CLUSTER_RANK-$GPUCLOUD_INSTANCE_ID; exec sleep 1000"
    c = client.clusters.create("train", gpu="A100-40GB", region="eu-1", gpus_per_node=2, nodes=1,
                               min_nodes=1, max_nodes=8, command=cmd, env={"STAGE": "pretrain"})
    assert c.nodes == 1 and c.state in ("resizing", "ready")

    def ready(n):
        return wait_for(f"{n} members running", lambda: (x := client.clusters.get("train")).state == "ready"
                        and x.running == n and len(x.members) == n and x)

    def env_of(rank, instance):
        path = d / f"env-{rank}-{instance}"
        wait_for(f"rank {rank}'s environment", path.exists)
        return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)

    # The training loop: grows to 4 at step 3, shrinks to 2 at step 6 (from inside, the SDK would
    # find its cluster in GPUCLOUD_CLUSTER_ID; here the test sets it).
    monkeypatch.setenv("GPUCLOUD_CLUSTER_ID", c.id)
    for step in range(8):
        if step == 3:
            client.clusters.resize(4)
            four = ready(4)
            assert [m.rank for m in four.members] == [0, 1, 2, 3]
            for m in four.members[1:]:
                e = env_of(m.rank, m.instance)
                assert e["MASTER_ADDR"] == "127.0.0.1" and e["MASTER_PORT"] == str(four.master_port)
                assert e["GPUCLOUD_CLUSTER_SIZE"] == "4" and e["WORLD_SIZE"] == "8" and e["PET_NNODES"] == "1:8"
                assert len(e["CUDA_VISIBLE_DEVICES"].split(",")) == 2
                assert e["STAGE"] == "pretrain", "every member gets the cluster's environment"
        if step == 6:
            client.clusters.resize("train", 2)
            two = ready(2)
            assert [m.rank for m in two.members] == [0, 1]
    # eu-1 has 12 A100s: 8 members of 2 cannot all start, so none of the new ones does.
    before = client.clusters.get("train")
    client.clusters.resize(8)
    stuck = wait_for("the gang to wait", lambda: (x := client.clusters.get("train")).reason and x)
    assert stuck.state == "resizing" and "waiting as a gang" in stuck.reason
    assert stuck.running == 2 and [m.instance for m in stuck.members if m.state == "running"] == [
        m.instance for m in before.members]
    client.clusters.resize(2)
    ready(2)
    # Billing follows the members: every member that ran is in the usage report (accruing while it
    # runs), and the ones that stopped are settled on the ledger.
    wait_for("usage of the members", lambda: {m.instance for m in four.members} <= {
        line["key"] for line in client.billing.usage(by="instance")})
    stopped = {m.instance for m in four.members} - {m.instance for m in client.clusters.get("train").members}
    wait_for("the stopped members on the ledger", lambda: stopped <= {
        e.get("instance") for e in client.billing.ledger()})
    with pytest.raises(ApiError) as e:
        client.clusters.resize(9)
    assert e.value.status == 422 and e.value.field == "nodes"
    client.clusters.delete("train")
    with pytest.raises(ApiError) as e:
        client.clusters.get("train")
    assert e.value.status == 404


MEMBER = """
import json, os, sys
from gpucloud import ApiError, Client
out, rank = {}, os.environ["GPUCLOUD_CLUSTER_RANK"]
c = Client()  # no key anywhere: the node's agent calls for this workload
out["me"] = c.instances.get(os.environ["GPUCLOUD_INSTANCE_ID"]).state
if rank == "0":
    out["resized"] = c.clusters.resize(2).nodes
for name, call in [("list", lambda: c.instances.list()), ("create", lambda: c.instances.create(gpu="T4", command="x"))]:
    try:
        call()
        out[name] = "allowed"
    except ApiError as e:
        out[name] = e.status
open(os.path.join(sys.argv[1], f"out-{rank}.json"), "w").write(json.dumps(out))
"""


def first_id(client, cluster):
    return next(m.instance for m in client.clusters.get(cluster).members if m.rank == 0)


def test_a_workload_resizes_its_own_cluster_and_reaches_nothing_else(client, dev):
    d = dev["tmp"] / "member"
    d.mkdir()
    (d / "member.py").write_text(MEMBER)
    cli = f"{shlex.quote(dev['bin'])} instance show $GPUCLOUD_INSTANCE_ID --json > {shlex.quote(str(d))}/cli-$GPUCLOUD_CLUSTER_RANK.json"
    cmd = f"{shlex.quote(dev['python'])} {shlex.quote(str(d / 'member.py'))} {shlex.quote(str(d))}; {cli}; exec sleep 1000"
    c = client.clusters.create("selfsize", gpu="A100-40GB", region="us-1", gpus_per_node=1, nodes=1,
                               min_nodes=1, max_nodes=2, command=cmd)
    first = wait_for("rank 0's report", lambda: (d / "out-0.json").exists() and json.loads((d / "out-0.json").read_text()))
    assert first["me"] in ("provisioning", "running"), first
    assert (first["resized"], first["list"], first["create"]) == (2, 403, 403), first
    second = wait_for("rank 1's report", lambda: (d / "out-1.json").exists() and json.loads((d / "out-1.json").read_text()))
    assert second["me"] in ("provisioning", "running") and second["list"] == 403, second
    assert client.clusters.get(c.id).nodes == 2
    # The CLI inside a workload needs no key either.
    shown = wait_for("the CLI's answer", lambda: (p := d / "cli-0.json").exists() and p.read_text() and json.loads(p.read_text()))
    assert shown["id"] == first_id(client, c.id), shown
    client.clusters.delete("selfsize")


def test_the_lightning_callback_checkpoints_and_stops_on_notice(tmp_path, monkeypatch):
    from gpucloud.lightning import CheckpointOnNotice

    class Trainer:
        global_step = 41
        should_stop = False
        saved = []

        def save_checkpoint(self, path):
            self.saved.append(path)

    reported = []
    monkeypatch.setenv("GPUCLOUD_METADATA_URL", "http://127.0.0.1:9/v1/instance/x")
    monkeypatch.setattr(gpucloud.workload, "report_checkpoint", reported.append)
    cb = CheckpointOnNotice(str(tmp_path), watch=False)
    t = Trainer()
    cb.on_train_batch_end(t, None, None, None, 0)
    assert not t.saved and not t.should_stop, "nothing before a notice"
    cb._noticed(gpucloud.Notice(deadline="2026-11-27T10:00:00Z", deadline_ms=0, reason="test"))
    cb.on_train_batch_end(t, None, None, None, 1)
    cb.on_train_batch_end(t, None, None, None, 2)
    assert t.saved == [str(tmp_path / "preempted-step-41.ckpt")], "saved once"
    assert reported == t.saved and t.should_stop


def test_a_named_profile_or_the_default_reaches_the_dev_cloud(dev, monkeypatch):
    # The dev fixture's cloud saved its profile under its data directory's name, as the default.
    monkeypatch.setenv("GPUCLOUD_CONFIG_DIR", str(dev["tmp"] / "config"))
    monkeypatch.delenv("GPUCLOUD_URL", raising=False)
    monkeypatch.delenv("GPUCLOUD_API_KEY", raising=False)
    monkeypatch.delenv("GPUCLOUD_PROFILE", raising=False)
    with Client() as c:
        assert c.whoami()["tenant"]["name"] == "default"
    with Client(profile="data") as c:
        assert c.whoami()["tenant"]["name"] == "default"
    monkeypatch.setenv("GPUCLOUD_PROFILE", "data")
    with Client() as c:
        assert c.whoami()["tenant"]["name"] == "default"
    with pytest.raises(ValueError, match="no profile named 'other'"):
        Client(profile="other")
    with pytest.raises(ValueError, match="must be 1 to 64"):
        Client(profile="../x")


def test_a_job_takes_the_cheapest_model_or_the_fastest_when_asked(client):
    cheap = client.jobs.run(gpus=["A100-40GB", "H100-80GB"], command="sleep 100", spot=False)
    fast = client.jobs.run(gpus=["A100-40GB", "H100-80GB"], command="sleep 100", spot=False, prefer=gpucloud.ModelPreference.FASTEST)
    try:
        assert cheap.history[0].gpu == "A100-40GB"
        assert fast.history[0].gpu == "H100-80GB"
    finally:
        client.jobs.cancel(cheap.id)
        client.jobs.cancel(fast.id)

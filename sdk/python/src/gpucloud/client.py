"""The API client: typed wrappers over gpucloud's REST API."""

from __future__ import annotations

import json
import os
import ssl
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Dict, List, Optional
from urllib.parse import quote

import httpx

from .enums import ClusterState, InstanceState, JobState, Priority, ProblemCode, Tier


class ApiError(Exception):
    """A problem document from the server (RFC 9457): status, stable code (a :class:`ProblemCode`,
    or the text of one this SDK does not know), the field at fault."""

    def __init__(self, status: int, code: str, detail: str, field: Optional[str] = None):
        super().__init__(f"{detail} ({status} {code})" + (f" [field: {field}]" if field else ""))
        self.status = status
        self.code = ProblemCode.parse(code)
        self.detail = detail
        self.field = field


@dataclass
class Instance:
    id: str
    name: str
    state: InstanceState
    gpu: str
    count: int
    tier: Tier
    region: Optional[str]
    node: Optional[str]
    gpus: List[int]
    command: str
    pending_reason: Optional[str] = None
    exit_code: Optional[int] = None
    reason: Optional[str] = None
    placed: Optional[str] = None
    preemption: Optional[Dict[str, Any]] = None
    checkpoint: Optional[str] = None
    job: Optional[str] = None
    attempt: Optional[int] = None
    endpoint: Optional[str] = None
    image: Optional[str] = None
    env: Dict[str, str] = field(default_factory=dict)
    ports: List[Dict[str, Any]] = field(default_factory=list)
    progress: Optional[str] = None
    volume: Optional[str] = None
    ssh: Optional[str] = None
    ssh_host_key: Optional[str] = None
    requested_region: Optional[str] = None
    project: str = "default"
    priority: Priority = Priority.DEFAULT
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)

    def url(self, port: int) -> Optional[str]:
        """Where exposed port ``port`` is reached while the instance runs: the proxied
        ``SERVER/i/ID/PORT/`` for http (send your key), ``tcp://NODE:PORT`` for tcp."""
        return next((p.get("url") for p in self.ports if p.get("port") == port), None)

    @classmethod
    def from_json(cls, v: Dict[str, Any]) -> "Instance":
        return cls(
            id=v["id"],
            name=v["name"],
            state=InstanceState.parse(v["state"]),
            gpu=v["gpu"],
            count=v["count"],
            tier=Tier.parse(v.get("tier", "on-demand")),
            region=v.get("region"),
            requested_region=v.get("requested_region"),
            node=v.get("node"),
            gpus=list(v.get("gpus", [])),
            command=v["command"],
            pending_reason=v.get("pending_reason"),
            exit_code=v.get("exit_code"),
            reason=v.get("reason"),
            placed=v.get("placed"),
            preemption=v.get("preemption"),
            checkpoint=v.get("checkpoint"),
            job=v.get("job"),
            attempt=v.get("attempt"),
            endpoint=v.get("endpoint"),
            image=v.get("image"),
            ssh=v.get("ssh"),
            ssh_host_key=v.get("ssh_host_key"),
            env=dict(v.get("env") or {}),
            ports=list(v.get("ports") or []),
            progress=v.get("progress"),
            volume=v.get("volume"),
            project=v.get("project", "default"),
            priority=Priority.parse(v.get("priority", "default")),
            raw=v,
        )


@dataclass
class JobAttempt:
    attempt: int
    instance: str
    tier: Tier
    gpu: str
    region: Optional[str]
    state: InstanceState
    cost: Decimal
    billed_seconds: int
    reason: Optional[str] = None
    resumed_from: Optional[str] = None


@dataclass
class Job:
    id: str
    name: str
    state: JobState
    attempts: int
    restarts: int
    cost: Decimal
    history: List[JobAttempt]
    checkpoint: Optional[str] = None
    reason: Optional[str] = None

    @classmethod
    def from_json(cls, v: Dict[str, Any]) -> "Job":
        return cls(
            id=v["id"],
            name=v["name"],
            state=JobState.parse(v["state"]),
            attempts=v["attempts"],
            restarts=v["restarts"],
            cost=Decimal(v["cost"]),
            checkpoint=v.get("checkpoint"),
            reason=v.get("reason"),
            history=[
                JobAttempt(
                    attempt=a["attempt"],
                    instance=a["instance"],
                    tier=Tier.parse(a["tier"]),
                    gpu=a["gpu"],
                    region=a.get("region"),
                    state=InstanceState.parse(a["state"]),
                    cost=Decimal(a["cost"]),
                    billed_seconds=a["billed_seconds"],
                    reason=a.get("reason"),
                    resumed_from=a.get("resumed_from"),
                )
                for a in v.get("history", [])
            ],
        )


@dataclass
class SpotPrices:
    gpu: str
    region: str
    current: Optional[Decimal]
    floor: Decimal
    on_demand: Decimal
    history: List[tuple]


def _profile(name: Optional[str] = None) -> Dict[str, Any]:
    """A CLI profile (written by ``gpucloud dev``): the one named, else the default; empty if none."""
    base = os.environ.get("GPUCLOUD_CONFIG_DIR")
    if base:
        root = Path(base)
    else:
        xdg = os.environ.get("XDG_CONFIG_HOME")
        root = (Path(xdg) if xdg else Path.home() / ".config") / "gpucloud"
    if name is not None:
        if not name or len(name) > 64 or not all(c.isascii() and (c.isalnum() or c in "-_") for c in name):
            raise ValueError(f"profile name {name!r} must be 1 to 64 letters, digits, '-' or '_'")
        path = root / "profiles" / f"{name}.json"
        if not path.exists():
            raise ValueError(f"no profile named {name!r} ({path}): `gpucloud dev --profile {name}` writes it")
    else:
        path = root / "config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _money(v: Any) -> Optional[str]:
    return None if v is None else str(Decimal(str(v)))


class _Resource:
    def __init__(self, client: "Client"):
        self._c = client


class Instances(_Resource):
    def create(
        self,
        gpu: str,
        command: str,
        count: int = 1,
        region: Optional[str] = None,
        name: Optional[str] = None,
        tier: str = "on-demand",
        max_price: Any = None,
        gpu_share: Optional[int] = None,
        gpu_memory_mib: Optional[int] = None,
        idempotency_key: Optional[str] = None,
        image: Optional[str] = None,
        env: Optional[Dict[str, str]] = None,
        secrets: Optional[List[str]] = None,
        ports: Optional[List[str]] = None,
        template: Optional[str] = None,
        volume: Optional[str] = None,
        project: Optional[str] = None,
        on_quota: Optional[str] = None,
        priority: Optional[str] = None,
    ) -> Instance:
        """``image``: a container image (the node's own when None); ``env``: variables, a value
        ``secret:NAME`` being your secret NAME; ``secrets``: secrets set as variables of their own
        name; ``ports``: ``["8888/http", "22/tcp"]``; ``template``: a template's name (its settings
        fill what is not given here); ``volume``: ``"NAME:/path"``, one of your volumes;
        ``project``: the project it counts against (your key's, or ``default``); ``on_quota``:
        ``"fail"`` (``ApiError`` with code ``quota_exceeded``) or ``"wait"`` when the project is at
        its GPU limit; ``priority``: ``"batch"``, ``"default"`` or ``"production"``."""
        body: Dict[str, Any] = {"gpu": gpu, "count": count, "command": command, "tier": tier}
        for k, v in (
            ("region", region),
            ("name", name),
            ("gpu_share", gpu_share),
            ("gpu_memory_mib", gpu_memory_mib),
            ("image", image),
            ("env", env),
            ("secrets", secrets),
            ("ports", ports),
            ("template", template),
            ("volume", volume),
            ("project", project),
            ("on_quota", on_quota),
            ("priority", priority),
        ):
            if v is not None:
                body[k] = v
        if max_price is not None:
            body["max_price_per_gpu_hour"] = _money(max_price)
        return Instance.from_json(self._c._post("/v1/instances", body, idempotency_key or str(uuid.uuid4())))

    def list(self) -> List[Instance]:
        return [Instance.from_json(v) for v in self._c._get_all("/v1/instances", "instances")]

    def get(self, id: str) -> Instance:
        return Instance.from_json(self._c._get(f"/v1/instances/{id}"))

    def stop(self, id: str) -> Instance:
        return Instance.from_json(self._c._post(f"/v1/instances/{id}/stop"))

    def start(self, id: str) -> Instance:
        return Instance.from_json(self._c._post(f"/v1/instances/{id}/start"))

    def terminate(self, id: str) -> Instance:
        return Instance.from_json(self._c._post(f"/v1/instances/{id}/terminate"))

    def metrics(self, id: str, name: Optional[str] = None) -> List[Dict[str, Any]]:
        """What the instance's workload pushed with log_metrics, oldest first."""
        params = {"name": name} if name else None
        return list(self._c._get(f"/v1/instances/{id}/metrics", params=params)["points"])

    def logs(self, id: str, after: int = 0) -> str:
        v = self._c._get(f"/v1/instances/{id}/logs?after={after}")
        return "".join(c["data"] for c in v["chunks"])


class Jobs(_Resource):
    def run(
        self,
        gpus: List[str],
        command: str,
        count: int = 1,
        regions: Optional[List[str]] = None,
        name: Optional[str] = None,
        spot: bool = True,
        max_price: Any = None,
        checkpoint_dir: Optional[str] = None,
        max_restarts: Optional[int] = None,
        on_demand_after_seconds: Optional[int] = None,
        idempotency_key: Optional[str] = None,
        prefer: Optional[str] = None,
    ) -> Job:
        """``prefer``: ``"cheapest"`` (the default) or ``"fastest"`` of ``gpus`` with room."""
        body: Dict[str, Any] = {"gpus": list(gpus), "count": count, "command": command, "spot": spot}
        for k, v in (
            ("prefer", prefer),
            ("regions", regions),
            ("name", name),
            ("checkpoint_dir", checkpoint_dir),
            ("max_restarts", max_restarts),
            ("on_demand_after_seconds", on_demand_after_seconds),
        ):
            if v is not None:
                body[k] = v
        if max_price is not None:
            body["max_price_per_gpu_hour"] = _money(max_price)
        return Job.from_json(self._c._post("/v1/jobs", body, idempotency_key or str(uuid.uuid4())))

    def get(self, id: str) -> Job:
        return Job.from_json(self._c._get(f"/v1/jobs/{id}"))

    def list(self) -> List[Job]:
        return [Job.from_json(v) for v in self._c._get("/v1/jobs")["jobs"]]

    def cancel(self, id: str) -> Job:
        return Job.from_json(self._c._post(f"/v1/jobs/{id}/cancel"))


class Spot(_Resource):
    def prices(self, gpu: str, region: str) -> SpotPrices:
        v = self._c._get("/v1/spot/prices", params={"gpu": gpu, "region": region})
        cur = v.get("current_per_gpu_hour")
        return SpotPrices(
            gpu=v["gpu"],
            region=v["region"],
            current=Decimal(cur) if cur is not None else None,
            floor=Decimal(v["floor_per_gpu_hour"]),
            on_demand=Decimal(v["on_demand_per_gpu_hour"]),
            history=[(p["at"], Decimal(p["price_per_gpu_hour"])) for p in v["points"]],
        )


@dataclass
class ClusterMember:
    rank: int
    instance: str
    state: InstanceState
    node: Optional[str] = None
    pending_reason: Optional[str] = None
    leaving_at: Optional[str] = None
    endpoint: Optional[str] = None


@dataclass
class Cluster:
    id: str
    name: str
    state: ClusterState
    nodes: int
    min_nodes: int
    max_nodes: int
    gpus_per_node: int
    gpu: str
    master_port: int
    members: List[ClusterMember]
    reason: Optional[str] = None
    image: Optional[str] = None

    @property
    def running(self) -> int:
        return sum(1 for m in self.members if m.state == InstanceState.RUNNING)

    @classmethod
    def from_json(cls, v: Dict[str, Any]) -> "Cluster":
        return cls(
            id=v["id"],
            name=v["name"],
            state=ClusterState.parse(v["state"]),
            nodes=v["nodes"],
            min_nodes=v["min_nodes"],
            max_nodes=v["max_nodes"],
            gpus_per_node=v["gpus_per_node"],
            gpu=v["gpu"],
            master_port=v["master_port"],
            reason=v.get("reason"),
            image=v.get("image"),
            members=[
                ClusterMember(
                    rank=m["rank"],
                    instance=m["instance"],
                    state=InstanceState.parse(m["state"]),
                    node=m.get("node"),
                    pending_reason=m.get("pending_reason"),
                    leaving_at=m.get("leaving_at"),
                    endpoint=m.get("endpoint"),
                )
                for m in v["members"]
            ],
        )


class Clusters(_Resource):
    def create(
        self,
        name: str,
        gpu: str,
        command: str,
        gpus_per_node: int = 1,
        nodes: int = 1,
        min_nodes: Optional[int] = None,
        max_nodes: Optional[int] = None,
        region: Optional[str] = None,
        tier: str = "on-demand",
        image: Optional[str] = None,
        env: Optional[Dict[str, str]] = None,
        secrets: Optional[List[str]] = None,
        ports: Optional[List[str]] = None,
    ) -> Cluster:
        """``image``, ``env``, ``secrets`` and ``ports`` apply to every member, as on
        ``instances.create``."""
        body: Dict[str, Any] = {
            "name": name, "gpu": gpu, "command": command, "gpus_per_node": gpus_per_node, "nodes": nodes, "tier": tier,
        }
        for k, v in (
            ("min_nodes", min_nodes),
            ("max_nodes", max_nodes),
            ("region", region),
            ("image", image),
            ("env", env),
            ("secrets", secrets),
            ("ports", ports),
        ):
            if v is not None:
                body[k] = v
        return Cluster.from_json(self._c._post("/v1/clusters", body))

    def get(self, name: Optional[str] = None) -> Cluster:
        return Cluster.from_json(self._c._get(f"/v1/clusters/{name or _own_cluster()}"))

    def list(self) -> List[Cluster]:
        return [Cluster.from_json(v) for v in self._c._get("/v1/clusters")["clusters"]]

    def resize(self, name_or_nodes: Any, nodes: Optional[int] = None) -> Cluster:
        """``resize("train", 4)``; or ``resize(4)`` from inside a member, whose own cluster it
        finds in ``GPUCLOUD_CLUSTER_ID``. New members start together or not at all (the cluster
        then stays ``resizing`` with the reason); leaving members get the stop notice first."""
        if nodes is None:
            name, nodes = _own_cluster(), int(name_or_nodes)
        else:
            name = str(name_or_nodes)
        return Cluster.from_json(self._c._post(f"/v1/clusters/{name}/resize", {"nodes": nodes}))

    def delete(self, name: str) -> None:
        self._c._check(self._c._http.delete(f"/v1/clusters/{name}"))


def _own_cluster() -> str:
    c = os.environ.get("GPUCLOUD_CLUSTER_ID")
    if not c:
        raise ValueError("no cluster given and GPUCLOUD_CLUSTER_ID is not set (not inside a cluster member)")
    return c


class Secrets(_Resource):
    """Your secrets: stored encrypted by the server, given to workloads at start, never read back."""

    def set(self, name: str, value: str) -> Dict[str, Any]:
        return self._c._check(self._c._http.put(f"/v1/secrets/{name}", json={"value": value}))

    def list(self) -> List[str]:
        return [s["name"] for s in self._c._get("/v1/secrets")["secrets"]]

    def delete(self, name: str) -> None:
        self._c._check(self._c._http.delete(f"/v1/secrets/{name}"))


class Projects(_Resource):
    """Your organization's projects and their GPU quotas."""

    def create(self, name: str, max_priority: Optional[str] = None) -> Dict[str, Any]:
        body: Dict[str, Any] = {"name": name}
        if max_priority is not None:
            body["max_priority"] = max_priority
        return dict(self._c._post("/v1/projects", body))

    def list(self) -> List[Dict[str, Any]]:
        return list(self._c._get("/v1/projects")["projects"])

    def quotas(self, project: str = "default") -> List[Dict[str, Any]]:
        """Per GPU model: ``limit``, ``guaranteed``, ``used``, ``headroom``, ``waiting``."""
        return list(self._c._get(f"/v1/projects/{project}/quotas")["quotas"])

    def set_quota(self, project: str, gpu: str, limit: int, guaranteed: Optional[int] = None) -> Dict[str, Any]:
        body: Dict[str, Any] = {"limit": limit}
        if guaranteed is not None:
            body["guaranteed"] = guaranteed
        return dict(self._c._check(self._c._http.put(f"/v1/projects/{project}/quotas/{gpu}", json=body)))

    def remove_quota(self, project: str, gpu: str) -> None:
        self._c._check(self._c._http.delete(f"/v1/projects/{project}/quotas/{gpu}"))


class Volumes(_Resource):
    """Your volumes: storage that outlives instances, billed per GiB-hour while it exists."""

    def create(self, name: str, size: str, region: str, project: Optional[str] = None) -> Dict[str, Any]:
        """``size``: ``"100GiB"``, ``"2TiB"`` or a number of GiB; ``project``: whose work mounts it
        (your key's, or ``default``)."""
        body: Dict[str, Any] = {"name": name, "size": size, "region": region}
        if project is not None:
            body["project"] = project
        return dict(self._c._post("/v1/volumes", body))

    def list(self) -> List[Dict[str, Any]]:
        return list(self._c._get("/v1/volumes")["volumes"])

    def get(self, name: str) -> Dict[str, Any]:
        return dict(self._c._get(f"/v1/volumes/{name}"))

    def delete(self, name: str) -> None:
        self._c._check(self._c._http.delete(f"/v1/volumes/{name}"))


class SshKeys(_Resource):
    """Your SSH public keys: they open shells in your running instances (``Instance.ssh``)."""

    def add(self, public_key: str, name: Optional[str] = None) -> Dict[str, Any]:
        """``public_key``: one line of a ``.pub`` file."""
        body: Dict[str, Any] = {"public_key": public_key}
        if name is not None:
            body["name"] = name
        return dict(self._c._post("/v1/ssh-keys", body))

    def list(self) -> List[Dict[str, Any]]:
        return list(self._c._get("/v1/ssh-keys")["ssh_keys"])

    def remove(self, name: str) -> None:
        """By name or ``SHA256:`` fingerprint."""
        self._c._check(self._c._http.delete(f"/v1/ssh-keys/{quote(name, safe='')}"))


class Billing(_Resource):
    def balance(self) -> Decimal:
        return Decimal(self._c._get("/v1/billing/balance")["balance"])

    def ledger(self) -> List[Dict[str, Any]]:
        return self._c._get_all("/v1/billing/ledger", "entries")

    def usage(self, by: str = "instance", start: Optional[str] = None, end: Optional[str] = None) -> List[Dict[str, Any]]:
        """Usage posted and accrued, grouped by instance, model, day or project (this month by default)."""
        query = f"/v1/billing/usage?by={by}" + (f"&from={start}" if start else "") + (f"&to={end}" if end else "")
        return self._c._get_all(query, "lines")


class Client:
    """``Client(url, key)``; both default to ``GPUCLOUD_URL`` / ``GPUCLOUD_API_KEY``; inside a
    workload (``GPUCLOUD_METADATA_URL`` set) to calls through its metadata endpoint, which reach
    its own instance, cluster and job; else to the profile ``gpucloud dev`` writes: the one
    ``profile=`` or ``GPUCLOUD_PROFILE`` names, else the default. ``ca_file=`` (or
    ``GPUCLOUD_CA_FILE``) trusts a private CA's certificates for an https:// server."""

    def __init__(
        self,
        url: Optional[str] = None,
        key: Optional[str] = None,
        timeout: float = 30.0,
        profile: Optional[str] = None,
        ca_file: Optional[str] = None,
    ):
        profile = profile or os.environ.get("GPUCLOUD_PROFILE") or None
        meta = os.environ.get("GPUCLOUD_METADATA_URL")
        if url is None and key is None and profile is None and meta and not os.environ.get("GPUCLOUD_URL"):
            # Inside a workload: its node's agent makes the call for it, reaching only its own
            # instance, cluster and job; no key is needed (nor should one be pasted in).
            url = meta.rstrip("/") + "/api"
            prof = {}
        else:
            prof = _profile(profile) if url is None or key is None else {}
        url = url or os.environ.get("GPUCLOUD_URL") or prof.get("url")
        key = key or os.environ.get("GPUCLOUD_API_KEY") or prof.get("api_key")
        if not url:
            raise ValueError("no gpucloud URL: pass url=, set GPUCLOUD_URL, or run `gpucloud dev`")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        # A private CA's certificates (PEM), as the CLI's --ca-file; else the system's roots.
        ca_file = ca_file or os.environ.get("GPUCLOUD_CA_FILE") or None
        verify: Any = ssl.create_default_context(cafile=ca_file) if ca_file else True
        self._http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout, verify=verify)
        self.instances = Instances(self)
        self.clusters = Clusters(self)
        self.jobs = Jobs(self)
        self.spot = Spot(self)
        self.billing = Billing(self)
        self.secrets = Secrets(self)
        self.volumes = Volumes(self)
        self.projects = Projects(self)
        self.ssh_keys = SshKeys(self)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def whoami(self) -> Dict[str, Any]:
        return self._get("/v1/whoami")

    def _check(self, r: httpx.Response) -> Any:
        if r.is_success:
            return r.json() if r.content else None
        try:
            p = r.json()
            raise ApiError(r.status_code, p.get("code", "error"), p.get("detail", r.text), p.get("field"))
        except ValueError:
            raise ApiError(r.status_code, "error", r.text) from None

    def _get(self, path: str, params: Optional[Dict[str, Any]] = None) -> Any:
        return self._check(self._http.get(path, params=params))

    def _get_all(self, path: str, field: str) -> List[Any]:
        """Every page of a list route: follows each page's ``next`` link."""
        items: List[Any] = []
        next_path: Optional[str] = path
        while next_path:
            page = self._get(next_path)
            items.extend(page.get(field, []))
            next_path = page.get("next")
        return items

    def _post(self, path: str, body: Any = None, idempotency_key: Optional[str] = None) -> Any:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._check(self._http.post(path, json=body, headers=headers))

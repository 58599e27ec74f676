"""For code running inside a gpucloud workload: its preemption notice, its checkpoints, where to
resume from. Everything goes through the agent's loopback metadata endpoint
(``GPUCLOUD_METADATA_URL``), so it needs no API key."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

import httpx


@dataclass
class Notice:
    """A preemption notice: SIGTERM comes at ``deadline`` (RFC 3339; ``deadline_ms`` since the
    epoch)."""

    deadline: str
    deadline_ms: int
    reason: str

    def seconds_left(self) -> float:
        import time

        return max(0.0, self.deadline_ms / 1000.0 - time.time())


def _url() -> str:
    url = os.environ.get("GPUCLOUD_METADATA_URL")
    if not url:
        raise RuntimeError("GPUCLOUD_METADATA_URL is not set: this is not running inside a gpucloud workload")
    return url.rstrip("/")


def metadata() -> Dict[str, Any]:
    """This instance's identity, GPUs, notice and events."""
    r = httpx.get(_url(), timeout=10)
    r.raise_for_status()
    return r.json()


def preemption_notice(wait: float = 0.0) -> Optional[Notice]:
    """The preemption notice, or None. With ``wait`` > 0, waits up to that many seconds for one
    (a long-poll: it returns as soon as the notice arrives)."""
    wait = max(0.0, min(float(wait), 300.0))
    r = httpx.get(f"{_url()}/notice", params={"wait": wait}, timeout=wait + 10)
    if r.status_code == 204:
        return None
    r.raise_for_status()
    v = r.json()
    return Notice(deadline=v["deadline"], deadline_ms=int(v["deadline_ms"]), reason=v["reason"])


def report_checkpoint(path: str) -> None:
    """Reports the latest checkpoint; a managed job's next attempt gets it as GPUCLOUD_RESUME_FROM."""
    r = httpx.post(f"{_url()}/checkpoint", json={"path": str(path)}, timeout=10)
    r.raise_for_status()


def log_metrics(step: Optional[int] = None, **values: float) -> None:
    """Pushes business metrics (``log_metrics(step=120, loss=0.31, samples_per_s=950)``); they
    reach the server with the agent's next heartbeat (``GET /v1/instances/ID/metrics``)."""
    if not values:
        raise ValueError("log_metrics needs at least one value, e.g. loss=0.5")
    body: Dict[str, Any] = {"values": {k: float(v) for k, v in values.items()}}
    if step is not None:
        body["step"] = int(step)
    r = httpx.post(f"{_url()}/metrics", json=body, timeout=10)
    r.raise_for_status()


def port() -> Optional[int]:
    """The port this workload was given to serve on (``GPUCLOUD_PORT``): its instance's endpoint,
    and what ``gpucloud gateway --cluster`` routes to. None outside a workload."""
    v = os.environ.get("GPUCLOUD_PORT")
    return int(v) if v else None


def resume_from() -> Optional[str]:
    """The checkpoint a managed job's attempt should resume from (None for a first attempt)."""
    return os.environ.get("GPUCLOUD_RESUME_FROM") or None


class PreemptionWatcher(threading.Thread):
    """A daemon thread that long-polls for the notice and calls ``callback(notice)`` once."""

    def __init__(self, callback: Callable[[Notice], None], poll_seconds: float = 60.0):
        super().__init__(name="gpucloud-preemption", daemon=True)
        self._callback = callback
        self._poll = poll_seconds
        self._stop = threading.Event()
        self.notice: Optional[Notice] = None

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                n = preemption_notice(wait=self._poll)
            except (httpx.HTTPError, RuntimeError):
                self._stop.wait(1.0)
                continue
            if n is not None:
                self.notice = n
                self._callback(n)
                return

    def stop(self) -> None:
        self._stop.set()


def watch_preemption(callback: Callable[[Notice], None]) -> PreemptionWatcher:
    """Starts a :class:`PreemptionWatcher` and returns it."""
    w = PreemptionWatcher(callback)
    w.start()
    return w

"""The closed sets of the API as string enums, one per enum in the OpenAPI document.

Each member is its wire text, so ``inst.state == "running"`` and
``inst.state == InstanceState.RUNNING`` both hold; ``tests/test_enums.py`` checks these against
the committed ``openapi.json``. A value this SDK does not know yet (a newer server) is kept as
its plain text rather than refused."""

from __future__ import annotations

from enum import Enum
from typing import Union


class WireEnum(str, Enum):
    """A wire enum: equal to its text, printed as its text."""

    def __str__(self) -> str:
        return str(self.value)

    @classmethod
    def parse(cls, value: str) -> Union["WireEnum", str]:
        try:
            return cls(value)
        except ValueError:
            return value


class InstanceState(WireEnum):
    """Where an instance is in its life."""

    PENDING = "pending"
    PROVISIONING = "provisioning"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    TERMINATED = "terminated"
    FAILED = "failed"
    LOST = "lost"


class Tier(WireEnum):
    """How capacity is sold."""

    ON_DEMAND = "on-demand"
    SPOT = "spot"
    RESERVED = "reserved"
    WARM = "warm"


class NodeState(WireEnum):
    """What the operator allows on a node."""

    READY = "ready"
    CORDONED = "cordoned"
    DRAINING = "draining"


class NodeHealth(WireEnum):
    """What a node's heartbeats say: `degraded` when some GPUs are out of service after a fault."""

    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"
    LOST = "lost"


class Role(WireEnum):
    """Whose key: an operator runs the fleet, a tenant rents GPUs."""

    OPERATOR = "operator"
    TENANT = "tenant"


class OnQuota(WireEnum):
    """What a create does when its project is at its GPU limit."""

    FAIL = "fail"
    WAIT = "wait"


class Priority(WireEnum):
    """A request's priority class."""

    BATCH = "batch"
    DEFAULT = "default"
    PRODUCTION = "production"


class ModelPreference(WireEnum):
    """Which of a job's allowed GPU models an attempt takes when several have room."""

    CHEAPEST = "cheapest"
    FASTEST = "fastest"


class KeyScope(WireEnum):
    """What a key may do within its tenant's rights."""

    ADMIN = "admin"
    MEMBER = "member"
    BILLING = "billing"
    READ_ONLY = "read-only"
    AGENT = "agent"


class JobState(WireEnum):
    """A managed job: `pending` while its current attempt waits for GPUs."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class ClusterState(WireEnum):
    """A cluster: `resizing` while members wait (all start together or none), `degraded` when"""

    READY = "ready"
    RESIZING = "resizing"
    DEGRADED = "degraded"


class VolumeState(WireEnum):
    """A volume: `in-use` while a live instance holds it."""

    AVAILABLE = "available"
    IN_USE = "in-use"


class PortProtocol(WireEnum):
    """How an exposed port is reached: `http` through the server's authenticated proxy, `tcp`"""

    HTTP = "http"
    TCP = "tcp"


class BudgetAction(WireEnum):
    """What a spent budget does: alert only, or stop running instances after their notice."""

    NOTIFY = "notify"
    CHECKPOINT_AND_STOP = "checkpoint-and-stop"


class Desired(WireEnum):
    """What the server wants of a workload on the agent's node."""

    RUN = "run"
    STOP = "stop"


class AgentRuntime(WireEnum):
    """How a node's agent runs workloads: `docker` (a confined container each), `process` (no"""

    PROCESS = "process"
    DOCKER = "docker"
    FAKE = "fake"


class ProblemCode(WireEnum):
    """What went wrong, machine-readable and stable: a problem document's `code`."""

    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    READ_ONLY_KEY = "read_only_key"
    KEY_ROLE = "key_role"
    AGENT_KEY = "agent_key"
    WORKLOAD_SCOPE = "workload_scope"
    NOT_FOUND = "not_found"
    ROUTE_NOT_FOUND = "route_not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    INVALID_REQUEST = "invalid_request"
    INVALID_QUERY = "invalid_query"
    MALFORMED_JSON = "malformed_json"
    MALFORMED_BODY = "malformed_body"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    ILLEGAL_TRANSITION = "illegal_transition"
    CONFLICT = "conflict"
    INVALID_IDEMPOTENCY_KEY = "invalid_idempotency_key"
    IDEMPOTENCY_KEY_REUSED = "idempotency_key_reused"
    IDEMPOTENCY_IN_PROGRESS = "idempotency_in_progress"
    FENCED = "fenced"
    PAYMENT_REQUIRED = "payment_required"
    QUOTA_EXCEEDED = "quota_exceeded"
    RATE_LIMITED = "rate_limited"
    CONTENDED = "contended"
    BAD_GATEWAY = "bad_gateway"
    GATEWAY = "gateway"
    AUDIT_UNAVAILABLE = "audit_unavailable"
    INTERNAL = "internal"


class WorkloadState(WireEnum):
    """What an agent saw of a workload: `preparing` while its image is pulled or its volume made,"""

    PREPARING = "preparing"
    RUNNING = "running"
    STOPPED = "stopped"
    FAILED = "failed"


__all__ = ["WireEnum", "InstanceState", "Tier", "NodeState", "NodeHealth", "Role", "KeyScope", "JobState", "ClusterState", "VolumeState", "PortProtocol", "BudgetAction", "Desired", "AgentRuntime", "ProblemCode", "WorkloadState"]

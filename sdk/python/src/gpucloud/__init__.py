"""gpucloud: rent whole GPUs or slices by the second.

Two halves:

* :class:`Client` talks to the gpucloud API (instances, managed jobs, spot prices, billing).
* :func:`preemption_notice`, :func:`watch_preemption`, :func:`report_checkpoint`,
  :func:`resume_from` and :func:`port` are for code running *inside* a gpucloud workload: they use the agent's
  metadata endpoint (``GPUCLOUD_METADATA_URL``) and the job's environment.
"""

from .client import ApiError, Client, Cluster, ClusterMember, Instance, Job, JobAttempt, SpotPrices
from .enums import (
    BudgetAction,
    ClusterState,
    AgentRuntime,
    Desired,
    ProblemCode,
    InstanceState,
    JobState,
    KeyScope,
    OnQuota,
    ModelPreference,
    Priority,
    NodeHealth,
    NodeState,
    PortProtocol,
    Role,
    Tier,
    VolumeState,
    WireEnum,
    WorkloadState,
)
from .workload import (
    Notice,
    PreemptionWatcher,
    log_metrics,
    metadata,
    port,
    preemption_notice,
    report_checkpoint,
    resume_from,
    watch_preemption,
)

__all__ = [
    "BudgetAction",
    "ClusterState",
    "AgentRuntime",
    "Desired",
    "ProblemCode",
    "InstanceState",
    "JobState",
    "KeyScope",
    "OnQuota",
    "ModelPreference",
    "Priority",
    "NodeHealth",
    "NodeState",
    "PortProtocol",
    "Role",
    "Tier",
    "VolumeState",
    "WireEnum",
    "WorkloadState",
    "ApiError",
    "Client",
    "Cluster",
    "ClusterMember",
    "Instance",
    "Job",
    "JobAttempt",
    "Notice",
    "PreemptionWatcher",
    "SpotPrices",
    "log_metrics",
    "metadata",
    "preemption_notice",
    "report_checkpoint",
    "port",
    "resume_from",
    "watch_preemption",
]

//! The closed sets of the wire: each is a string enum in JSON and in the OpenAPI document, so
//! the server, the agent, the CLI and the SDK agree on the values by type rather than by spelling.
//! Where the core model has the same set, `From` both ways is exhaustive: a new state in the model
//! fails to compile here until the wire says how it is spelt.
//!
//! A client that sends a value outside a set does not compile:
//!
//! ```compile_fail
//! let tier: gpucloud_api::Tier = gpucloud_api::Tier::Gold;
//! ```
//!
//! ```compile_fail
//! let runtime: gpucloud_api::AgentRuntime = gpucloud_api::AgentRuntime::Kvm;
//! ```
//!
//! and one that reads a set must say what each value means (no catch-all needed, none hidden):
//!
//! ```compile_fail
//! fn shown(s: gpucloud_api::WorkloadState) -> &'static str {
//!     match s {
//!         gpucloud_api::WorkloadState::Running => "up",
//!         gpucloud_api::WorkloadState::Stopped => "down",
//!     }
//! }
//! ```
//!
//! while the same code naming every value compiles:
//!
//! ```
//! fn shown(s: gpucloud_api::WorkloadState) -> &'static str {
//!     match s {
//!         gpucloud_api::WorkloadState::Preparing => "pulling",
//!         gpucloud_api::WorkloadState::Running => "up",
//!         gpucloud_api::WorkloadState::Stopped | gpucloud_api::WorkloadState::Failed => "down",
//!     }
//! }
//! let tier: gpucloud_api::Tier = gpucloud_api::Tier::Spot;
//! let runtime: gpucloud_api::AgentRuntime = gpucloud_api::AgentRuntime::Fake;
//! assert_eq!((tier.as_str(), runtime.as_str()), ("spot", "fake"));
//! assert_eq!(shown(gpucloud_api::WorkloadState::Failed), "down");
//! ```

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use utoipa::ToSchema;

macro_rules! wire_enum {
    // A set the core model also has: conversions both ways, variant for variant.
    ($(#[$meta:meta])* $name:ident mirrors $model:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        wire_enum!($(#[$meta])* $name { $($variant => $text),+ });
        impl From<gpucloud_model::$model> for $name {
            fn from(m: gpucloud_model::$model) -> Self {
                match m { $(gpucloud_model::$model::$variant => $name::$variant),+ }
            }
        }
        impl From<$name> for gpucloud_model::$model {
            fn from(w: $name) -> Self {
                match w { $($name::$variant => gpucloud_model::$model::$variant),+ }
            }
        }
    };
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        wire_enum!(@case "kebab-case" $(#[$meta])* $name { $($variant => $text),+ });
    };
    // A set spelt in snake case (the problem codes, as RFC 9457 bodies conventionally are).
    ($(#[$meta:meta])* $name:ident snake_case { $($variant:ident => $text:literal),+ $(,)? }) => {
        wire_enum!(@case "snake_case" $(#[$meta])* $name { $($variant => $text),+ });
    };
    (@case $case:tt $(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        // Every wire text is its variant's name in the set's case; `as_str` spells it out and the
        // tests check the two agree. (utoipa does not see a `rename` whose text comes through
        // this macro, so the rule is stated once, as a plain token.)
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
        #[serde(rename_all = $case)]
        pub enum $name {
            $($variant),+
        }
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                $name::ALL.iter().copied().find(|v| v.as_str() == s).ok_or_else(|| {
                    let all: Vec<&str> = $name::ALL.iter().map(|v| v.as_str()).collect();
                    format!("'{s}' is not one of {}", all.join(", "))
                })
            }
        }
    };
}

wire_enum!(
    /// Where an instance is in its life.
    InstanceState mirrors InstanceState {
        Pending => "pending",
        Provisioning => "provisioning",
        Running => "running",
        Stopping => "stopping",
        Stopped => "stopped",
        Terminated => "terminated",
        Failed => "failed",
        Lost => "lost",
    }
);

wire_enum!(
    /// How capacity is sold.
    Tier mirrors Tier {
        OnDemand => "on-demand",
        Spot => "spot",
        Reserved => "reserved",
        Warm => "warm",
    }
);

wire_enum!(
    /// What a create does when its project is at its GPU limit: `fail` (refused, 409
    /// `quota_exceeded`) or `wait` (queued, held back until the project has room).
    OnQuota mirrors OnQuota {
        Fail => "fail",
        Wait => "wait",
    }
);

wire_enum!(
    /// A request's priority class: higher classes are served first; a waiting request rises a
    /// level per aging period, so batch work is never starved.
    Priority mirrors Priority {
        Batch => "batch",
        Default => "default",
        Production => "production",
    }
);

wire_enum!(
    /// Which of a job's allowed GPU models each attempt takes among those with room: the cheapest
    /// per GPU-hour (the default), or the fastest (the most capable in the catalogue's order,
    /// H200 before H100 before A100 and so on), the cheaper of its regions first.
    ModelPreference {
        Cheapest => "cheapest",
        Fastest => "fastest",
    }
);

// The variants come out of `wire_enum!`, which has no way to mark one `#[default]`.
#[allow(clippy::derivable_impls)]
impl Default for Priority {
    fn default() -> Priority {
        Priority::Default
    }
}

wire_enum!(
    /// What the operator allows on a node.
    NodeState mirrors NodeState {
        Ready => "ready",
        Cordoned => "cordoned",
        Draining => "draining",
    }
);

wire_enum!(
    /// Whose key: an operator runs the fleet, a tenant rents GPUs.
    Role mirrors Role {
        Operator => "operator",
        Tenant => "tenant",
    }
);

wire_enum!(
    /// What a key may do within its tenant's rights: admin (everything), member (its work:
    /// instances, jobs, clusters, pools, volumes, secrets, not keys, projects, quotas or billing
    /// settings), billing (reads, and the billing settings), read-only (reads), agent (a node
    /// agent's: the agent protocol only).
    KeyScope {
        Admin => "admin",
        Member => "member",
        Billing => "billing",
        ReadOnly => "read-only",
        Agent => "agent",
    }
);

wire_enum!(
    /// What the server wants of a workload on the agent's node.
    Desired {
        Run => "run",
        Stop => "stop",
    }
);

wire_enum!(
    /// How a node's agent runs workloads: `docker` (a confined container each), `process` (no
    /// isolation between tenants) or `fake` (nothing runs: dev fleets and load tests).
    AgentRuntime {
        Process => "process",
        Docker => "docker",
        Fake => "fake",
    }
);

wire_enum!(
    /// What an agent saw of a workload: `preparing` while its image is pulled or its volume made,
    /// `stopped` when it is gone or exited 0, `failed` when it exited non-zero or could not start.
    WorkloadState {
        Preparing => "preparing",
        Running => "running",
        Stopped => "stopped",
        Failed => "failed",
    }
);

wire_enum!(
    /// What a node's heartbeats say: `degraded` when some GPUs are out of service after a fault.
    NodeHealth {
        Healthy => "healthy",
        Degraded => "degraded",
        Unhealthy => "unhealthy",
        Lost => "lost",
    }
);

wire_enum!(
    /// A managed job: `pending` while its current attempt waits for GPUs.
    JobState {
        Pending => "pending",
        Running => "running",
        Succeeded => "succeeded",
        Failed => "failed",
        Cancelled => "cancelled",
    }
);

wire_enum!(
    /// A cluster: `resizing` while members wait (all start together or none), `degraded` when
    /// some are gone.
    ClusterState {
        Ready => "ready",
        Resizing => "resizing",
        Degraded => "degraded",
    }
);

wire_enum!(
    /// A volume: `in-use` while a live instance holds it.
    VolumeState {
        Available => "available",
        InUse => "in-use",
    }
);

wire_enum!(
    /// How an exposed port is reached: `http` through the server's authenticated proxy, `tcp`
    /// published on the node.
    PortProtocol mirrors PortProtocol {
        Http => "http",
        Tcp => "tcp",
    }
);

wire_enum!(
    /// What a spent budget does: alert only, or stop running instances after their notice.
    BudgetAction {
        Notify => "notify",
        CheckpointAndStop => "checkpoint-and-stop",
    }
);

wire_enum!(
    /// What went wrong, machine-readable and stable: a problem document's `code`.
    ProblemCode snake_case {
        Unauthorized => "unauthorized",
        Forbidden => "forbidden",
        ReadOnlyKey => "read_only_key",
        KeyRole => "key_role",
        AgentKey => "agent_key",
        WorkloadScope => "workload_scope",
        NotFound => "not_found",
        RouteNotFound => "route_not_found",
        MethodNotAllowed => "method_not_allowed",
        InvalidRequest => "invalid_request",
        InvalidQuery => "invalid_query",
        MalformedJson => "malformed_json",
        MalformedBody => "malformed_body",
        UnsupportedMediaType => "unsupported_media_type",
        PayloadTooLarge => "payload_too_large",
        IllegalTransition => "illegal_transition",
        Conflict => "conflict",
        InvalidIdempotencyKey => "invalid_idempotency_key",
        IdempotencyKeyReused => "idempotency_key_reused",
        IdempotencyInProgress => "idempotency_in_progress",
        Fenced => "fenced",
        PaymentRequired => "payment_required",
        QuotaExceeded => "quota_exceeded",
        RateLimited => "rate_limited",
        Contended => "contended",
        BadGateway => "bad_gateway",
        Gateway => "gateway",
        AuditUnavailable => "audit_unavailable",
        Internal => "internal",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_json_agree_and_round_trip() {
        fn check<T>(all: &[T])
        where
            T: Copy
                + fmt::Display
                + FromStr<Err = String>
                + Serialize
                + for<'de> Deserialize<'de>
                + PartialEq
                + fmt::Debug
                + utoipa::PartialSchema,
        {
            for v in all {
                let text = v.to_string();
                assert_eq!(serde_json::to_value(v).unwrap(), serde_json::Value::String(text.clone()));
                assert_eq!(text.parse::<T>().unwrap(), *v);
                assert_eq!(serde_json::from_value::<T>(serde_json::Value::String(text)).unwrap(), *v);
            }
            // The OpenAPI document lists the same texts (the SDK's enums are checked against it).
            let schema = serde_json::to_value(T::schema()).unwrap();
            let texts: Vec<String> = all.iter().map(|v| v.to_string()).collect();
            assert_eq!(schema["enum"], serde_json::json!(texts), "{schema}");
            let err = "nonsense".parse::<T>().unwrap_err();
            assert!(err.contains(&all[0].to_string()), "{err}");
        }
        check(InstanceState::ALL);
        check(Tier::ALL);
        check(NodeState::ALL);
        check(Role::ALL);
        check(KeyScope::ALL);
        check(Desired::ALL);
        check(WorkloadState::ALL);
        check(AgentRuntime::ALL);
        check(ProblemCode::ALL);
        check(NodeHealth::ALL);
        check(JobState::ALL);
        check(ClusterState::ALL);
        check(VolumeState::ALL);
        check(PortProtocol::ALL);
        check(BudgetAction::ALL);
        check(OnQuota::ALL);
        check(Priority::ALL);
        check(ModelPreference::ALL);
    }

    #[test]
    fn the_wire_spells_states_as_the_model_does() {
        for s in gpucloud_model::InstanceState::ALL {
            assert_eq!(InstanceState::from(s).as_str(), s.as_str());
            assert_eq!(gpucloud_model::InstanceState::from(InstanceState::from(s)), s);
        }
        for t in [
            gpucloud_model::Tier::OnDemand,
            gpucloud_model::Tier::Spot,
            gpucloud_model::Tier::Reserved,
            gpucloud_model::Tier::Warm,
        ] {
            assert_eq!(Tier::from(t).as_str(), t.as_str());
        }
        for n in
            [gpucloud_model::NodeState::Ready, gpucloud_model::NodeState::Cordoned, gpucloud_model::NodeState::Draining]
        {
            assert_eq!(NodeState::from(n).as_str(), n.as_str());
        }
        for r in [gpucloud_model::Role::Operator, gpucloud_model::Role::Tenant] {
            assert_eq!(Role::from(r).as_str(), r.as_str());
        }
    }
}

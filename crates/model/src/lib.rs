//! Pure domain of gpucloud: typed ids, the GPU catalog, regions, time, and the instance and node
//! state machines. No I/O, no clock, no randomness: callers pass those in.

mod field;
mod gpu;
pub mod hex;
mod ids;
mod instance;
mod money;
mod node;
mod project;
pub mod schedule;
mod time;
pub mod workload;

pub use field::FieldError;
pub use gpu::{FATAL_XIDS, GpuModel, GpuShare, MigProfile, UnknownGpuModel, xid_is_fatal};
pub use ids::{ApiKeyId, ClusterId, IdError, InstanceId, JobId, NodeId, PoolId, ReservationId, TenantId, VolumeId};
pub use instance::{AgentObservation, Change, IllegalTransition, InstanceState, StopTarget, UserAction};
pub use money::{MICROS_PER_UNIT, Money, MoneyError};
pub use node::{NodeHealth, NodeState, Region, RegionError, Role, Tier};
pub use project::{OnQuota, Priority, ProjectName};
pub use time::Timestamp;
pub use workload::{PortProtocol, PortSpec, VolumeMount};

/// The largest number of GPUs one instance may ask for. Bigger requests are rejected up front
/// rather than left pending forever: no server we know of carries more than 16 GPUs.
pub const MAX_GPUS_PER_INSTANCE: u32 = 16;

//! Use cases. Every function here takes plain values and returns plain values or an
//! [`AppError`]; none knows HTTP.

mod agent;
mod auth;
pub mod billing;
pub mod billing_check;
mod budgets;
pub mod clock;
pub mod clusters;
mod error;
pub mod instances;
pub mod invoices;
pub mod jobs;
pub mod leader;
pub mod market;
pub mod monitoring;
pub mod obs;
pub mod outbound;
pub mod pools;
mod ports;
pub mod ratelimit;
pub mod reconcilers;
pub mod reservations;
pub mod secrets;
pub mod ssh;
pub use ssh::SshNodes;
mod templates;
pub mod volumes;
pub use instances::{CreateInstance, resolve_share};
mod nodes;
mod projects;
mod schedule;
mod tenants;

pub use agent::{AgentApi, AgentReport, Desired, GpuReading, Observed, observed, typed};
pub use auth::{Principal, hash_key};
pub use budgets::{billing_mode, check_credit_limit};
pub use clock::Clock;
pub use error::AppError;
pub use monitoring::MonitorConfig;
pub use tenants::NewKey;

use gpucloud_model::Timestamp;
use gpucloud_sched::Policy;
use gpucloud_store::Store;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

#[derive(Debug, Clone)]
pub struct Config {
    pub policy: Policy,
    /// How much power weighs in placement (FGD policies; `serve --power-weight`).
    pub power_weight: gpucloud_sched::PowerWeight,
    /// How often the scheduler runs when nothing wakes it.
    pub schedule_interval: Duration,
    /// A node silent for longer than this is lost: no new instances, and its instances are lost
    /// with billing ended at its last heartbeat. Agents heartbeat every fifth of it.
    pub heartbeat_grace: Duration,
    /// How long an agent cut off from every server lets its workloads run (see
    /// [`Config::agent_stop_after`]); `None`: 30 s beyond `heartbeat_grace`.
    pub agent_stop_after: Option<Duration>,
    /// Run an in-process fake agent for every node (dev mode, tests).
    pub fake_agents: FakeAgents,
    /// Where `App::now()` reads the time: the system's clock, or a virtual one tests move.
    pub clock: Clock,
    /// How often metering brings accrued charges, budgets and prepaid balances up to date.
    pub metering_interval: Duration,
    /// How often a running interval's accrued charge is posted to the ledger (also at every
    /// month start, so each month's invoice holds exactly its own seconds).
    pub posting_period: Duration,
    /// Running intervals a metering pass posts at most (`billing::POSTINGS_PER_PASS`); the rest
    /// of a posting point goes in the passes right after.
    pub postings_per_pass: usize,
    pub market: MarketConfig,
    pub monitor: MonitorConfig,
    /// How long the reconcilers' lease lasts without renewal: the longest a dead leader's work
    /// waits for another replica.
    pub lease_ttl: Duration,
    /// This replica's name among several on one database (the lease holder; stable across
    /// restarts, so a restarted replica picks its own lease up at once). None: the only replica
    /// (SQLite, `gpucloud dev`, tests), which always runs the reconcilers.
    pub replica: Option<String>,
    /// Per-key request rate (None: unlimited).
    pub rate_limit: Option<ratelimit::RateLimit>,
    /// Networks tenants' webhooks may reach although they are loopback, private or link-local.
    pub webhook_allow: Vec<outbound::Net>,
    /// Refuse agents that run workloads as plain processes (no isolation between tenants).
    pub require_containers: bool,
    /// Seals tenants' secrets; without one the server keeps none.
    pub secrets_key: Option<secrets::SecretsKey>,
    /// How users reach this server (`https://gpu.example.com`): the base of proxied port URLs.
    /// Empty: `http://` and the address it listens on.
    pub public_url: String,
    /// A node's GPU models with no price in its region get the default book's (`dev::DEFAULT_PRICES`)
    /// when it joins, so nothing bills at 0 because an operator has not set prices yet.
    pub default_prices: bool,
}

/// The spot market's settings (see `billing::spot` for the price formula).
#[derive(Debug, Clone)]
pub struct MarketConfig {
    /// Notice a preempted instance gets before SIGTERM.
    pub notice: Duration,
    /// No notice is ever shorter, whoever asks (the simulate-preemption call included).
    pub min_notice: Duration,
    /// How often the spot price is recomputed.
    pub price_interval: Duration,
    /// The spot price never goes below this share of the on-demand price.
    pub floor_percent: u32,
    /// Time constant of the price's smoothing.
    pub smoothing: Duration,
    /// A spot instance is not preempted for capacity before it has run this long.
    pub min_runtime: Duration,
    /// Reservations are billed (and credited for lending) once per this period.
    pub reservation_period: Duration,
    /// Cluster schedules follow the wall clock (tests turn this off and drive
    /// `App::apply_schedules` with a simulated one).
    pub schedules_follow_clock: bool,
    /// A managed job's attempt that has waited this long for GPUs moves to another allowed
    /// model or region that has room now.
    pub job_repick_after: Duration,
    /// A waiting request rises one priority level per this much waiting, at most
    /// `gpucloud_sched::order::MAX_BOOST` levels: batch work passes fresh production work after
    /// three of these.
    pub priority_aging: Duration,
}

impl Default for MarketConfig {
    fn default() -> MarketConfig {
        MarketConfig {
            // EC2's spot interruption notice: two minutes, long enough to write a checkpoint.
            notice: Duration::from_secs(120),
            min_notice: Duration::from_secs(30),
            price_interval: Duration::from_secs(10),
            floor_percent: 25,
            // A minute: a burst of requests moves the price within a few ticks, not at once.
            smoothing: Duration::from_secs(60),
            // Five minutes of progress before capacity may be taken back: a job that checkpoints
            // every few minutes always gets one in.
            min_runtime: Duration::from_secs(300),
            reservation_period: Duration::from_secs(3600),
            schedules_follow_clock: true,
            // A minute: long enough for a freed GPU in its own pool to be found first.
            job_repick_after: Duration::from_secs(60),
            // Ten minutes a level: batch work waits at most half an hour behind fresh
            // production work (Kueue and Slurm leave starvation to the operator's settings).
            priority_aging: Duration::from_secs(600),
        }
    }
}

impl MarketConfig {
    /// Settings a server can run with: the notice is at least the minimum.
    pub fn check(&self) -> Result<(), String> {
        if self.notice < self.min_notice {
            return Err(format!(
                "the preemption notice ({:?}) is shorter than the minimum notice ({:?})",
                self.notice, self.min_notice
            ));
        }
        if self.floor_percent > 100 {
            return Err(format!("the spot floor is a percentage of on-demand (0-100), got {}", self.floor_percent));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeAgents {
    Off,
    /// On, heartbeating at this interval.
    Every(Duration),
}

impl Config {
    /// An agent with no answer from any server for this long has stopped its workloads (it is
    /// told so when it registers). A lost node's managed job waits this long after its last
    /// heartbeat before its next attempt starts elsewhere, so the two never run at once.
    /// 30 s beyond the grace by default, as Nomad's `stop_after_client_disconnect` leaves
    /// room for a partition to heal before work is given up.
    pub fn agent_stop_after(&self) -> Duration {
        self.agent_stop_after.unwrap_or(self.heartbeat_grace + Duration::from_secs(30)).max(self.heartbeat_grace)
    }
}

impl Default for Config {
    fn default() -> Config {
        Config {
            policy: Policy::default(),
            power_weight: gpucloud_sched::PowerWeight::default(),
            schedule_interval: Duration::from_secs(1),
            // Five missed 2 s heartbeats: long enough to ride out a pause, a slow disk or a
            // dropped packet or two; short enough that a dead node stops costing its tenants (and
            // receiving work) within seconds. Kubernetes waits 40 s before NotReady because its
            // kubelets report every 10 s; gpucloud bills by the second, so it listens closer.
            heartbeat_grace: Duration::from_secs(10),
            agent_stop_after: None,
            fake_agents: FakeAgents::Off,
            clock: Clock::System,
            // Balances and usage move every second, as tenants of a per-second cloud expect.
            metering_interval: Duration::from_secs(1),
            // An entry per instance per hour (and one when it stops), not one per second: the
            // balance reads posted + accrued, so it still moves every second.
            posting_period: Duration::from_secs(3600),
            postings_per_pass: billing::POSTINGS_PER_PASS,
            market: MarketConfig::default(),
            monitor: MonitorConfig::default(),
            // Three seconds: renewed every second, so a slow database can miss two renewals
            // before leadership moves, and a dead leader is replaced within ~3 s.
            lease_ttl: Duration::from_secs(3),
            replica: None,
            rate_limit: Some(ratelimit::RateLimit::default()),
            webhook_allow: Vec::new(),
            require_containers: false,
            secrets_key: None,
            public_url: String::new(),
            default_prices: false,
        }
    }
}

pub struct App {
    pub(crate) store: Arc<dyn Store>,
    pub config: Config,
    /// Wakes the scheduler when something it cares about changed (new instance, freed GPUs).
    pub(crate) schedule_wakeup: Notify,
    /// Wakes the fake-agent supervisor when a node was added.
    pub(crate) nodes_changed: Notify,
    /// When this server started: agents get a full grace period after a restart before their
    /// silence counts (the server being down is not the node being lost).
    pub(crate) started_at: Timestamp,
    /// This server process, random per start: whose unfinished idempotency records are whose.
    pub(crate) process_id: String,
    /// The latest GPU readings per node, as agents sent them (kept in memory; history is the
    /// monitoring issue's).
    pub(crate) telemetry:
        std::sync::Mutex<std::collections::HashMap<gpucloud_model::NodeId, (Timestamp, Vec<GpuReading>)>>,
    /// Per autoscaled cluster: since when its utilization has been above / below its bounds
    /// (in memory: a restarted server starts the timers again, erring toward not resizing).
    /// When each node's GPU samples were last stored (heartbeats come more often than samples).
    /// Whether this replica runs the background reconcilers now.
    pub(crate) leadership: leader::Leadership,
    /// Each key's token bucket: tokens left and when they were counted.
    pub(crate) rate_buckets: std::sync::Mutex<std::collections::HashMap<gpucloud_model::ApiKeyId, (f64, Timestamp)>>,
    /// Replicas: tokens this one took from a key's shared bucket and has not used yet.
    pub(crate) rate_granted: std::sync::Mutex<std::collections::HashMap<gpucloud_model::ApiKeyId, u32>>,
    /// Request and scheduling latency histograms for `/metrics`.
    pub obs: obs::ServerMetrics,
    pub(crate) sampled_at: std::sync::Mutex<std::collections::HashMap<gpucloud_model::NodeId, Timestamp>>,
    /// GPU samples not written yet: flushed every second by `telemetry-flush` and before this
    /// replica reads samples (decision 0026).
    pub(crate) sample_buffer: std::sync::Mutex<Vec<gpucloud_store::GpuSample>>,
    /// The fleet as the scheduling passes read it, re-read node by node when a generation moves
    /// (`App::fleet`, decision 0026).
    pub(crate) fleet_cache: tokio::sync::Mutex<schedule::FleetCache>,
    /// Instance creates in flight at once: a burst of them waits here, not in the store's
    /// connection queue ahead of heartbeats.
    pub(crate) create_gate: tokio::sync::Semaphore,
    pub(crate) autoscale_since: std::sync::Mutex<std::collections::HashMap<gpucloud_model::ClusterId, AboveBelow>>,
    /// The posting point this process's metering last posted every running interval at: until
    /// the next point, a pass only settles what ended.
    pub(crate) posted_point: std::sync::atomic::AtomicI64,
    /// What each background reconciler did last (`GET /v1/admin/tasks`).
    pub reconcilers: reconcilers::Reconcilers,
}

/// At most this many instance creates use the store at once (of its 16 PostgreSQL connections).
pub const CREATES_AT_ONCE: usize = 4;

/// Since when a cluster's utilization has been above its bound, and below its other one.
pub(crate) type AboveBelow = (Option<Timestamp>, Option<Timestamp>);

impl App {
    pub fn new(store: Arc<dyn Store>, config: Config) -> App {
        let mut app = App {
            store,
            config,
            schedule_wakeup: Notify::new(),
            nodes_changed: Notify::new(),
            started_at: Timestamp(0),
            process_id: format!("{:032x}", random_bits()),
            telemetry: Default::default(),
            autoscale_since: Default::default(),
            sampled_at: Default::default(),
            sample_buffer: Default::default(),
            fleet_cache: Default::default(),
            create_gate: tokio::sync::Semaphore::new(CREATES_AT_ONCE),
            obs: Default::default(),
            leadership: Default::default(),
            rate_buckets: Default::default(),
            rate_granted: Default::default(),
            posted_point: Default::default(),
            reconcilers: Default::default(),
        };
        app.started_at = app.now();
        app
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The only clock read in the control plane's decisions: pure code gets `now` from here.
    pub fn now(&self) -> Timestamp {
        self.config.clock.now()
    }

    pub(crate) fn wake_scheduler(&self) {
        self.schedule_wakeup.notify_one();
    }
}

/// A name used in URLs (clusters, pools): 1 to 63 lowercase letters, digits or '-'.
pub(crate) fn check_slug(what: &str, name: &str) -> Result<(), AppError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(AppError::invalid("name", format!("a {what} name is 1 to 63 lowercase letters, digits or '-'")))
    }
}

thread_local! {
    /// A seeded source of ids for the thread a simulation runs the control plane on, so that one
    /// seed replays the same ids, placements and history.
    static SEEDED_IDS: std::cell::RefCell<Option<rand::rngs::StdRng>> = const { std::cell::RefCell::new(None) };
}

/// Makes this thread's ids (and the scheduler's random choices) follow `seed`; `None`: random.
pub fn seed_this_thread(seed: Option<u64>) {
    use rand::SeedableRng;
    SEEDED_IDS.with(|s| *s.borrow_mut() = seed.map(rand::rngs::StdRng::seed_from_u64));
}

pub(crate) fn random_bits() -> u128 {
    use rand::Rng;
    SEEDED_IDS.with(|s| s.borrow_mut().as_mut().map(|r| r.random())).unwrap_or_else(rand::random)
}

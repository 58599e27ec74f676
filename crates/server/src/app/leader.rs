//! Which replica runs the background reconcilers. Every replica serves the API; one at a time
//! holds the `reconcilers` lease in the shared database and runs the scheduler, heartbeat watch,
//! metering, market and monitor passes. The lease saves duplicated work and keeps the passes
//! from fighting; correctness never rests on it: every write those passes make is a
//! compare-and-set, so a deposed leader finishing a pass changes nothing twice.

use super::{App, AppError};
use gpucloud_model::Timestamp;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const LEASE: &str = "reconcilers";

/// This replica's view of its leadership.
#[derive(Debug, Default)]
pub struct Leadership {
    /// Until when (on this process' monotonic clock) it may act as leader: the renewal's start
    /// plus the lease, less a margin for clock skew between replicas.
    valid_until: Mutex<Option<Instant>>,
    /// Since when it leads, and the lease epoch it leads under.
    since: Mutex<Option<(Timestamp, i64)>>,
}

/// What `/v1/replica` shows.
#[derive(Debug, Clone)]
pub struct ReplicaStatus {
    pub replica: String,
    pub leader: bool,
    pub since: Option<Timestamp>,
    pub epoch: Option<i64>,
}

impl App {
    /// True while this replica holds an unexpired lease (always, for a lone replica). Checked
    /// before every reconciler pass.
    pub fn is_leader(&self) -> bool {
        if self.config.replica.is_none() {
            return true;
        }
        let until = *self.leadership.valid_until.lock().unwrap_or_else(|e| e.into_inner());
        until.is_some_and(|t| Instant::now() < t)
    }

    /// When this replica's current leadership began (None when it does not lead).
    pub fn leader_since(&self) -> Option<Timestamp> {
        if self.config.replica.is_none() {
            return Some(self.started_at);
        }
        if !self.is_leader() {
            return None;
        }
        self.leadership.since.lock().unwrap_or_else(|e| e.into_inner()).map(|(t, _)| t)
    }

    /// The lease epoch this replica last led under (None for a lone replica, or before it led).
    pub(crate) fn leader_term(&self) -> Option<i64> {
        self.leadership.since.lock().unwrap_or_else(|e| e.into_inner()).map(|(_, epoch)| epoch)
    }

    fn holder(&self) -> &str {
        self.config.replica.as_deref().unwrap_or(&self.process_id)
    }

    pub fn replica_status(&self) -> ReplicaStatus {
        let leader = self.is_leader();
        if self.config.replica.is_none() {
            return ReplicaStatus {
                replica: self.process_id.clone(),
                leader,
                since: Some(self.started_at),
                epoch: None,
            };
        }
        let since = *self.leadership.since.lock().unwrap_or_else(|e| e.into_inner());
        ReplicaStatus {
            replica: self.holder().to_string(),
            leader,
            since: since.filter(|_| leader).map(|(t, _)| t),
            epoch: since.filter(|_| leader).map(|(_, e)| e),
        }
    }

    /// Takes or renews the lease; returns whether this replica leads now.
    pub async fn renew_leadership(&self) -> Result<bool, AppError> {
        if self.config.replica.is_none() {
            return Ok(true);
        }
        let ttl = self.config.lease_ttl;
        let started = Instant::now();
        let now = self.now();
        let got = self.store.try_lease(LEASE, self.holder(), now, now.plus_millis(ttl.as_millis() as i64)).await;
        let epoch = match got {
            Ok(e) => e,
            Err(e) => {
                // Unsure whether the renewal landed: stop acting at once rather than risk two
                // leaders; the next renewal decides again.
                self.step_down_locally();
                return Err(e.into());
            }
        };
        let mut since = self.leadership.since.lock().unwrap_or_else(|e| e.into_inner());
        match epoch {
            Some(epoch) => {
                // A fifth of the lease is left as margin for clock skew between replicas.
                *self.leadership.valid_until.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(started + ttl.mul_f64(0.8));
                if since.is_none_or(|(_, e)| e != epoch) {
                    tracing::info!(replica = self.holder(), epoch, "leading the reconcilers");
                    *since = Some((now, epoch));
                }
                Ok(true)
            }
            None => {
                if since.take().is_some() {
                    tracing::warn!(replica = self.holder(), "another replica leads the reconcilers now");
                }
                *self.leadership.valid_until.lock().unwrap_or_else(|e| e.into_inner()) = None;
                Ok(false)
            }
        }
    }

    fn step_down_locally(&self) {
        *self.leadership.valid_until.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if self.leadership.since.lock().unwrap_or_else(|e| e.into_inner()).take().is_some() {
            tracing::warn!(replica = self.holder(), "stepped down: the lease could not be renewed");
        }
    }

    /// A clean shutdown: give the lease up so another replica takes over at once.
    pub async fn step_down(&self) {
        if self.config.replica.is_none() {
            return;
        }
        self.step_down_locally();
        if let Err(e) = self.store.release_lease(LEASE, self.holder()).await {
            tracing::warn!(error = %e, "could not release the reconcilers' lease");
        }
    }
}

/// How often a replica renews (or tries to take) the lease: a third of its length, so two
/// renewals can fail before it lapses.
pub fn renew_every(ttl: Duration) -> Duration {
    (ttl / 3).max(Duration::from_millis(50))
}

//! What each background reconciler did last, for operators (`GET /v1/admin/tasks`), and the
//! kick that runs one now (`POST /v1/admin/tasks/{name}/run`). The driver that runs them is
//! `tasks/`; this is the record it keeps, per replica.

use super::{App, AppError, Principal};
use gpucloud_model::Timestamp;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// One reconciler's record on this replica.
#[derive(Debug, Clone, Default)]
pub struct TaskStatus {
    pub name: &'static str,
    pub what: &'static str,
    pub period: Duration,
    /// Runs only on the replica holding the reconcilers' lease.
    pub leader_only: bool,
    pub runs: u64,
    pub failures: u64,
    pub last_started: Option<Timestamp>,
    pub last_duration: Option<Duration>,
    /// The last pass's error, if the last pass failed.
    pub last_error: Option<String>,
    pub last_failed_at: Option<Timestamp>,
    /// When the pass before the latest one started.
    pub(crate) previous_started: Option<Timestamp>,
}

/// A reconciler's record, whether it was asked to run now, and what wakes its driver.
type Entry = (TaskStatus, bool, Arc<Notify>);

#[derive(Default)]
pub struct Reconcilers {
    tasks: Mutex<BTreeMap<&'static str, Entry>>,
}

impl Reconcilers {
    /// Records a reconciler run by the driver that `wake` wakes.
    pub fn register(
        &self,
        name: &'static str,
        what: &'static str,
        period: Duration,
        leader_only: bool,
        wake: Arc<Notify>,
    ) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        tasks.insert(name, (TaskStatus { name, what, period, leader_only, ..Default::default() }, false, wake));
    }

    /// Asks for a pass now, from inside its driver.
    pub fn kick_quietly(&self, name: &str) {
        if let Some((_, kicked, _)) = self.tasks.lock().unwrap_or_else(|e| e.into_inner()).get_mut(name) {
            *kicked = true;
        }
    }

    /// Asks for another pass as soon as its driver is free: a pass that left work for the next.
    pub fn run_again(&self, name: &str) {
        let _ = self.kick(name);
    }

    /// Whether it was asked to run now (and forgets the ask).
    pub fn take_kick(&self, name: &str) -> bool {
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(name)
            .is_some_and(|(_, kicked, _)| std::mem::take(kicked))
    }

    pub fn started(&self, name: &str, at: Timestamp) {
        if let Some((s, _, _)) = self.tasks.lock().unwrap_or_else(|e| e.into_inner()).get_mut(name) {
            s.previous_started = s.last_started.replace(at);
        }
    }

    pub fn finished(&self, name: &str, took: Duration, error: Option<String>, now: Timestamp) {
        if let Some((s, _, _)) = self.tasks.lock().unwrap_or_else(|e| e.into_inner()).get_mut(name) {
            s.runs += 1;
            s.last_duration = Some(took);
            if error.is_some() {
                s.failures += 1;
                s.last_failed_at = Some(now);
            }
            s.last_error = error;
        }
    }

    /// When the pass before the running one started (for passes that scale by the time between
    /// runs).
    pub fn previous_started(&self, name: &str) -> Option<Timestamp> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner()).get(name).and_then(|(s, _, _)| s.previous_started)
    }

    pub fn list(&self) -> Vec<TaskStatus> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner()).values().map(|(s, _, _)| s.clone()).collect()
    }

    fn kick(&self, name: &str) -> Option<TaskStatus> {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        let (s, kicked, wake) = tasks.get_mut(name)?;
        *kicked = true;
        wake.notify_one();
        Some(s.clone())
    }
}

impl App {
    /// Every reconciler on this replica and how its passes went (operator).
    pub fn tasks(&self, by: &Principal) -> Result<Vec<TaskStatus>, AppError> {
        by.require_operator()?;
        Ok(self.reconcilers.list())
    }

    /// Runs reconciler `name` now rather than at its next period (operator). A leader-only one
    /// runs only where the lease is held: elsewhere that is a conflict, not a silent no-op.
    pub fn run_task(&self, by: &Principal, name: &str) -> Result<TaskStatus, AppError> {
        by.require_operator()?;
        let known = self.reconcilers.list();
        let Some(task) = known.iter().find(|t| t.name == name) else {
            let names: Vec<&str> = known.iter().map(|t| t.name).collect();
            return Err(AppError::NotFound { kind: "task", id: format!("{name} (tasks: {})", names.join(", ")) });
        };
        if task.leader_only && !self.is_leader() {
            return Err(AppError::Conflict(format!(
                "task {name} runs on the replica that leads, and this one does not (GET /v1/replica)"
            )));
        }
        self.reconcilers.kick(name).ok_or_else(|| AppError::NotFound { kind: "task", id: name.to_string() })
    }
}

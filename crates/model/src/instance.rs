//! The instance lifecycle as an explicit state machine. Two kinds of input move it: what a user
//! asks ([`UserAction`]) and what the node's agent observes ([`AgentObservation`]); the scheduler's
//! placement (pending -> provisioning) is the third, and it is checked by the store's CAS instead.

use crate::node::text_enum;
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InstanceState {
    /// Waiting for GPUs.
    Pending,
    /// Placed on a node; the agent is starting it.
    Provisioning,
    Running,
    /// The agent is stopping it; where it goes next is its [`StopTarget`].
    Stopping,
    /// Holds no GPUs and costs nothing; can be started again.
    Stopped,
    /// Gone for good.
    Terminated,
    /// The workload failed; holds no GPUs; can be started again or terminated.
    Failed,
    /// Its node went silent past the grace period; billing ended at the node's last heartbeat.
    /// Holds no GPUs; can be started again (elsewhere) or terminated.
    Lost,
}

text_enum!(InstanceState {
    InstanceState::Pending => "pending",
    InstanceState::Provisioning => "provisioning",
    InstanceState::Running => "running",
    InstanceState::Stopping => "stopping",
    InstanceState::Stopped => "stopped",
    InstanceState::Terminated => "terminated",
    InstanceState::Failed => "failed",
    InstanceState::Lost => "lost",
});

impl InstanceState {
    pub const ALL: [InstanceState; 8] = [
        InstanceState::Pending,
        InstanceState::Provisioning,
        InstanceState::Running,
        InstanceState::Stopping,
        InstanceState::Stopped,
        InstanceState::Terminated,
        InstanceState::Failed,
        InstanceState::Lost,
    ];

    /// Whether an instance in this state owns GPUs on a node. The store keeps the GPU allocation
    /// table in step with this: entering a state that holds none releases them.
    pub fn holds_gpus(self) -> bool {
        matches!(self, InstanceState::Provisioning | InstanceState::Running | InstanceState::Stopping)
    }

    /// Whether time in this state is billed: from running until the workload is confirmed gone.
    /// Provisioning is free: the tenant's workload has not started.
    pub fn is_billable(self) -> bool {
        matches!(self, InstanceState::Running | InstanceState::Stopping)
    }

    /// Whether a move from `from` to `to` opens a billed stretch: the workload is known to
    /// run. An instance stopped while still provisioning never ran as far as anyone can tell,
    /// so its stop is not billed either; a billed stretch closes on leaving the billable states.
    pub fn opens_billing(from: Option<InstanceState>, to: InstanceState) -> bool {
        let was = from.is_some_and(InstanceState::is_billable);
        to.is_billable() && !was && from != Some(InstanceState::Provisioning)
            || to == InstanceState::Running && from == Some(InstanceState::Provisioning)
    }
}

/// Where a stopping instance goes once its agent confirms the workload is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StopTarget {
    Stopped,
    Terminated,
    /// Back to pending, to be placed elsewhere (a drained node).
    Requeue,
}

text_enum!(StopTarget {
    StopTarget::Stopped => "stopped",
    StopTarget::Terminated => "terminated",
    StopTarget::Requeue => "requeue",
});

impl StopTarget {
    fn settled_state(self) -> InstanceState {
        match self {
            StopTarget::Stopped => InstanceState::Stopped,
            StopTarget::Terminated => InstanceState::Terminated,
            StopTarget::Requeue => InstanceState::Pending,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserAction {
    Stop,
    Start,
    Terminate,
    /// The operator drains the node the instance runs on.
    Evict,
}

impl fmt::Display for UserAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UserAction::Stop => "stop",
            UserAction::Start => "start",
            UserAction::Terminate => "terminate",
            UserAction::Evict => "evict",
        })
    }
}

/// What an agent saw of an instance's workload on its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentObservation {
    Running,
    /// The workload is not running: it exited with code 0, or ended by a stop the server asked
    /// for (no exit code: what a signal we sent leaves says nothing about the workload).
    Stopped {
        exit_code: Option<i32>,
    },
    /// The workload exited with a non-zero code or could not start.
    Failed {
        exit_code: i32,
    },
}

/// The result of applying an input: the new state, and where a stopping instance is headed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    pub state: InstanceState,
    pub stop_target: Option<StopTarget>,
}

impl Change {
    fn to(state: InstanceState) -> Change {
        Change { state, stop_target: None }
    }

    fn stopping(target: StopTarget) -> Change {
        Change { state: InstanceState::Stopping, stop_target: Some(target) }
    }

    /// Whether this change releases the GPUs the instance held before.
    pub fn releases_gpus(&self, from: InstanceState) -> bool {
        from.holds_gpus() && !self.state.holds_gpus()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cannot {action} an instance that is {state}")]
pub struct IllegalTransition {
    pub action: UserAction,
    pub state: InstanceState,
}

impl InstanceState {
    /// Applies a user's request. Asking for what is already true (stopping a stopped instance) is
    /// not an error: it returns the current state, so retries are harmless.
    pub fn on_user(self, target: Option<StopTarget>, action: UserAction) -> Result<Change, IllegalTransition> {
        use InstanceState as S;
        let unchanged = Change { state: self, stop_target: target };
        let illegal = Err(IllegalTransition { action, state: self });
        match (action, self) {
            (_, S::Terminated) if action == UserAction::Terminate => Ok(unchanged),
            (_, S::Terminated) => illegal,

            (UserAction::Stop, S::Pending) => Ok(Change::to(S::Stopped)),
            (UserAction::Stop, S::Provisioning | S::Running) => Ok(Change::stopping(StopTarget::Stopped)),
            // Asked to stop while a drain moves it: stay stopped rather than come back elsewhere.
            (UserAction::Stop, S::Stopping) if target == Some(StopTarget::Requeue) => {
                Ok(Change::stopping(StopTarget::Stopped))
            }
            (UserAction::Stop, S::Stopping | S::Stopped) => Ok(unchanged),
            (UserAction::Stop, S::Failed) => illegal,
            (UserAction::Stop, S::Lost) => Ok(Change::to(S::Stopped)),

            (UserAction::Start, S::Stopped | S::Failed | S::Lost) => Ok(Change::to(S::Pending)),
            (UserAction::Start, S::Pending | S::Provisioning | S::Running) => Ok(unchanged),
            (UserAction::Start, S::Stopping) if target == Some(StopTarget::Requeue) => Ok(unchanged),
            (UserAction::Start, S::Stopping) => illegal,

            (UserAction::Terminate, S::Pending | S::Stopped | S::Failed | S::Lost) => Ok(Change::to(S::Terminated)),
            (UserAction::Terminate, S::Provisioning | S::Running | S::Stopping) => {
                Ok(Change::stopping(StopTarget::Terminated))
            }

            (UserAction::Evict, S::Provisioning | S::Running) => Ok(Change::stopping(StopTarget::Requeue)),
            (UserAction::Evict, _) => Ok(unchanged),
        }
    }

    /// Applies what the agent reports. Reports that no longer matter (a late "running" for an
    /// instance already stopped) leave the state as it is: agents report, the server decides.
    pub fn on_agent(self, target: Option<StopTarget>, seen: AgentObservation) -> Change {
        use InstanceState as S;
        let unchanged = Change { state: self, stop_target: target };
        match (self, seen) {
            (S::Provisioning, AgentObservation::Running) => Change::to(S::Running),
            (S::Provisioning | S::Running, AgentObservation::Stopped { .. }) => Change::to(S::Stopped),
            (S::Provisioning | S::Running, AgentObservation::Failed { .. }) => Change::to(S::Failed),
            (S::Stopping, AgentObservation::Stopped { .. } | AgentObservation::Failed { .. }) => {
                Change::to(target.unwrap_or(StopTarget::Stopped).settled_state())
            }
            _ => unchanged,
        }
    }
}

impl FromStr for UserAction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "stop" => Ok(UserAction::Stop),
            "start" => Ok(UserAction::Start),
            "terminate" => Ok(UserAction::Terminate),
            other => Err(format!("unknown action '{other}'")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use InstanceState as S;
    use proptest::prelude::*;

    #[test]
    fn billing_opens_when_the_workload_is_known_to_run() {
        assert!(S::opens_billing(Some(S::Provisioning), S::Running));
        assert!(!S::opens_billing(Some(S::Provisioning), S::Stopping), "stopped before it ran: free");
        assert!(!S::opens_billing(Some(S::Running), S::Stopping), "already open");
        assert!(!S::opens_billing(Some(S::Pending), S::Provisioning));
        assert!(!S::opens_billing(None, S::Pending));
    }

    #[test]
    fn lifecycle_examples() {
        let c = S::Running.on_user(None, UserAction::Stop).unwrap();
        assert_eq!(c, Change::stopping(StopTarget::Stopped));
        assert_eq!(
            S::Stopping.on_agent(c.stop_target, AgentObservation::Stopped { exit_code: None }).state,
            S::Stopped
        );
        assert_eq!(S::Stopped.on_user(None, UserAction::Start).unwrap().state, S::Pending);
        let err = S::Terminated.on_user(None, UserAction::Start).unwrap_err();
        assert_eq!(err.to_string(), "cannot start an instance that is terminated");
        let c = S::Running.on_user(None, UserAction::Evict).unwrap();
        assert_eq!(
            S::Stopping.on_agent(c.stop_target, AgentObservation::Stopped { exit_code: None }).state,
            S::Pending
        );
    }

    fn state() -> impl Strategy<Value = InstanceState> {
        proptest::sample::select(InstanceState::ALL.to_vec())
    }
    fn target() -> impl Strategy<Value = Option<StopTarget>> {
        proptest::option::of(proptest::sample::select(vec![
            StopTarget::Stopped,
            StopTarget::Terminated,
            StopTarget::Requeue,
        ]))
    }
    fn action() -> impl Strategy<Value = UserAction> {
        proptest::sample::select(vec![UserAction::Stop, UserAction::Start, UserAction::Terminate, UserAction::Evict])
    }

    proptest! {
        /// Applying the same request twice is the same as applying it once.
        #[test]
        fn user_actions_are_idempotent(s in state(), t in target(), a in action()) {
            if let Ok(c1) = s.on_user(t, a) {
                let c2 = c1.state.on_user(c1.stop_target, a).unwrap();
                prop_assert_eq!(c1, c2);
            }
        }

        /// A state that holds GPUs is only left for one that does not through the agent or a
        /// user action on an instance without a workload: never from running straight to stopped.
        #[test]
        fn user_never_releases_gpus_directly(s in state(), t in target(), a in action()) {
            let t = if s == S::Stopping { t.or(Some(StopTarget::Stopped)) } else { None };
            if let Ok(c) = s.on_user(t, a) {
                prop_assert!(!c.releases_gpus(s), "{s} --{a}--> {:?}", c.state);
                prop_assert_eq!(c.state == S::Stopping, c.stop_target.is_some());
            }
        }

        /// Terminated is final: nothing but terminate (a no-op) is accepted.
        #[test]
        fn terminated_is_final(t in target(), a in action(), code in any::<i32>()) {
            if let Ok(c) = S::Terminated.on_user(t, a) { prop_assert_eq!(c.state, S::Terminated); }
            for seen in [AgentObservation::Running, AgentObservation::Stopped { exit_code: Some(0) }, AgentObservation::Failed { exit_code: code }] {
                prop_assert_eq!(S::Terminated.on_agent(t, seen).state, S::Terminated);
            }
        }
    }
}

//! The agent protocol's client: registration, heartbeats and log chunks, sent to the replica in
//! use and on to the next when it cannot be reached.

use gpucloud_api::{
    AgentDesired, AgentHeartbeat, AgentLogs, AgentRegistered, LogChunkIn, Problem, RegisterAgentRequest,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Duration;

pub struct AgentClient {
    /// Every replica's URL; requests go to `current` and move on when it cannot be reached.
    bases: Vec<String>,
    current: std::sync::atomic::AtomicUsize,
    auth: String,
    agent: ureq::Agent,
}

/// The server refused us: another agent registered this node since.
#[derive(Debug)]
pub struct Fenced(pub String);

#[derive(Debug)]
pub enum Error {
    Fenced(Fenced),
    Other(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Fenced(Fenced(m)) | Error::Other(m) => f.write_str(m),
        }
    }
}

impl AgentClient {
    /// `servers`: one URL, or several replicas' separated by commas.
    pub fn new(servers: &str, token: &str, tls: ureq::tls::TlsConfig) -> AgentClient {
        // A replica that is down refuses at once; one that hangs must not hold a heartbeat past
        // the grace period.
        let agent = crate::http_agent(tls, Duration::from_secs(10), Some(Duration::from_secs(2)));
        let bases =
            servers.split(',').map(|s| s.trim().trim_end_matches('/').to_string()).filter(|s| !s.is_empty()).collect();
        AgentClient { bases, current: Default::default(), auth: format!("Bearer {token}"), agent }
    }

    /// Sends to the replica in use, and on a transport error (refused, reset, timed out) to the
    /// next ones in turn; the first that answers becomes the one in use. The agent protocol is
    /// safe to resend: registration is by name, heartbeats and log chunks are idempotent.
    fn post<B: Serialize>(&self, path: &str, body: &B) -> Result<(u16, String), Error> {
        use std::sync::atomic::Ordering;
        let json = serde_json::to_vec(body).map_err(|e| Error::Other(e.to_string()))?;
        let n = self.bases.len().max(1);
        let first = self.current.load(Ordering::Relaxed) % n;
        let mut last_err = String::from("no server URL given");
        let mut answer = None;
        for k in 0..self.bases.len() {
            let i = (first + k) % n;
            let base = &self.bases[i];
            match self
                .agent
                .post(format!("{base}{path}"))
                .header("Authorization", &self.auth)
                .header("Content-Type", "application/json")
                .send(&json[..])
            {
                Ok(r) => {
                    if i != first {
                        tracing::warn!(server = %base, "failed over to another server replica");
                    }
                    self.current.store(i, Ordering::Relaxed);
                    answer = Some(r);
                    break;
                }
                Err(e) => last_err = format!("cannot reach {base}: {e}"),
            }
        }
        let mut resp = answer.ok_or(Error::Other(last_err))?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().map_err(|e| Error::Other(e.to_string()))?;
        if (200..300).contains(&status) {
            return Ok((status, text));
        }
        let problem = serde_json::from_str::<Problem>(&text).ok();
        let detail = problem.as_ref().map_or(text.clone(), |p| p.detail.clone());
        if status == 409 && problem.as_ref().is_some_and(|p| p.code == gpucloud_api::ProblemCode::Fenced) {
            return Err(Error::Fenced(Fenced(detail)));
        }
        Err(Error::Other(format!("{path}: HTTP {status}: {detail}")))
    }

    fn post_json<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, Error> {
        let (_, text) = self.post(path, body)?;
        serde_json::from_str(&text).map_err(|e| Error::Other(format!("{path}: unexpected answer: {e}")))
    }

    pub fn register(&self, req: &RegisterAgentRequest) -> Result<AgentRegistered, String> {
        self.post_json("/v1/agent/register", req).map_err(|e| format!("registering: {e}"))
    }

    pub fn heartbeat(&self, beat: &AgentHeartbeat) -> Result<AgentDesired, Error> {
        self.post_json("/v1/agent/heartbeat", beat)
    }

    pub fn logs(&self, node: &str, epoch: i64, instance: &str, seq: i64, data: &str) -> Result<(), Error> {
        let body = AgentLogs {
            node_id: node.to_string(),
            epoch,
            instance: instance.to_string(),
            chunks: vec![LogChunkIn { seq, data: data.to_string() }],
        };
        self.post("/v1/agent/logs", &body).map(|_| ())
    }
}

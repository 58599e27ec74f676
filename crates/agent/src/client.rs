//! The agent's HTTP client for the agent API.

use gpucloud_api::{
    AgentDesired, AgentHeartbeat, AgentLogs, AgentRegistered, LogChunkIn, Problem, RegisterAgentRequest,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Duration;

pub struct Client {
    base: String,
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

impl Client {
    pub fn new(base: &str, token: &str) -> Client {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        Client { base: base.trim_end_matches('/').to_string(), auth: format!("Bearer {token}"), agent }
    }

    fn post<B: Serialize>(&self, path: &str, body: &B) -> Result<(u16, String), Error> {
        let json = serde_json::to_vec(body).map_err(|e| Error::Other(e.to_string()))?;
        let mut resp = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("Authorization", &self.auth)
            .header("Content-Type", "application/json")
            .send(&json[..])
            .map_err(|e| Error::Other(format!("cannot reach {}: {e}", self.base)))?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().map_err(|e| Error::Other(e.to_string()))?;
        if (200..300).contains(&status) {
            return Ok((status, text));
        }
        let problem = serde_json::from_str::<Problem>(&text).ok();
        let detail = problem.as_ref().map_or(text.clone(), |p| p.detail.clone());
        if status == 409 && detail.starts_with("fenced") {
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

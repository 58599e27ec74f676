//! The one client of the gpucloud API: blocking, over the wire types of `gpucloud-api`, with TLS
//! (the system's roots or a named CA file), replica failover that never sends a request twice,
//! and errors that carry the server's problem document. The CLI, the agent, the benches and the
//! end-to-end test harnesses all speak to a server through it.

pub mod agent_api;
pub mod tls;

use gpucloud_api::{self as api, Problem};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Duration;

pub struct Client {
    /// One URL, or several replicas' (`--url a,b`): a replica that cannot be connected to is
    /// skipped for the next. Only connection failures move on, when nothing was sent, so no
    /// request is ever made twice.
    bases: Vec<String>,
    key: Option<String>,
    agent: ureq::Agent,
}

type Resp = ureq::http::Response<ureq::Body>;

/// The request never left: sending it to another replica or backend cannot do anything twice.
pub fn not_sent(e: &ureq::Error) -> bool {
    match e {
        ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => true,
        ureq::Error::Io(io) => io.kind() == std::io::ErrorKind::ConnectionRefused,
        ureq::Error::Timeout(t) => matches!(t, ureq::Timeout::Connect | ureq::Timeout::Resolve),
        _ => false,
    }
}

/// Percent-encodes a query value (RFC 3339 times carry `+` and `:`, labels `=`).
pub fn encode_query(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// What a user may do to an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceAction {
    Start,
    Stop,
    Terminate,
}

impl InstanceAction {
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceAction::Start => "start",
            InstanceAction::Stop => "stop",
            InstanceAction::Terminate => "terminate",
        }
    }
}

#[derive(Debug)]
pub enum ClientError {
    /// The server answered with a problem document.
    Api(Box<Problem>),
    /// The server could not be reached, or answered something that is not the API.
    Transport(String),
}

impl ClientError {
    /// The problem document, when the server answered with one.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            ClientError::Api(p) => Some(p),
            ClientError::Transport(_) => None,
        }
    }
}

impl std::error::Error for ClientError {}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Api(p) => {
                write!(f, "{} ({} {})", p.detail, p.status, p.code)?;
                if let Some(field) = &p.field {
                    write!(f, " [field: {field}]")?;
                }
                Ok(())
            }
            ClientError::Transport(m) => f.write_str(m),
        }
    }
}

/// The HTTP agent every client here is built on: answers of any status are read, not raised (a
/// problem document is the API's answer too); `timeout` bounds a whole call, `connect` only its
/// connection (a replica that hangs should not hold the caller for the whole timeout).
pub fn http_agent(tls: ureq::tls::TlsConfig, timeout: Duration, connect: Option<Duration>) -> ureq::Agent {
    ureq::Agent::config_builder()
        .tls_config(tls)
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .timeout_connect(connect)
        .build()
        .into()
}

/// An agent for plain-HTTP calls to a local server (tests, benches): the defaults of
/// [`http_agent`] with the system's roots.
pub fn local_agent(timeout: Duration) -> ureq::Agent {
    http_agent(ureq::tls::TlsConfig::default(), timeout, None)
}

impl Client {
    pub fn new(base: &str, key: Option<String>, tls: ureq::tls::TlsConfig) -> Client {
        let agent = http_agent(tls, Duration::from_secs(30), None);
        let bases =
            base.split(',').map(|b| b.trim().trim_end_matches('/').to_string()).filter(|b| !b.is_empty()).collect();
        Client { bases, key, agent }
    }

    /// Runs `send` against each replica in turn until one is reached.
    fn send(&self, send: impl Fn(&str, Option<String>) -> Result<Resp, ureq::Error>) -> Result<Resp, ClientError> {
        let auth = self.key.as_ref().map(|k| format!("Bearer {k}"));
        let mut last = String::from("no server URL");
        for base in &self.bases {
            match send(base, auth.clone()) {
                Ok(r) => return Ok(r),
                Err(e) if not_sent(&e) => last = format!("cannot reach {base}: {e}"),
                Err(e) => return Err(ClientError::Transport(format!("cannot reach {base}: {e}"))),
            }
        }
        Err(ClientError::Transport(last))
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.finish(self.send(|base, auth| {
            let mut req = self.agent.get(format!("{base}{path}"));
            if let Some(a) = auth {
                req = req.header("Authorization", a);
            }
            req.call()
        }))
    }

    /// Every page of a list: follows `next` and gathers the `field` array of each page.
    pub fn get_all<T: DeserializeOwned>(&self, path: &str, field: &str) -> Result<T, ClientError> {
        let mut first: serde_json::Value = self.get(path)?;
        let mut items = first.get_mut(field).map(serde_json::Value::take).unwrap_or_default();
        let mut next = first.get("next").and_then(|n| n.as_str()).map(str::to_string);
        // A server always ends the chain; the bound only guards against one that does not.
        for _ in 0..100_000 {
            let Some(path) = next.take() else { break };
            let mut page: serde_json::Value = self.get(&path)?;
            if let (Some(all), Some(more)) = (items.as_array_mut(), page.get_mut(field).and_then(|v| v.as_array_mut()))
            {
                all.append(more);
            }
            next = page.get("next").and_then(|n| n.as_str()).map(str::to_string);
        }
        first[field] = items;
        first["next"] = serde_json::Value::Null;
        serde_json::from_value(first).map_err(|e| ClientError::Transport(format!("unexpected answer: {e}")))
    }

    /// A GET whose body is text (CSV, HTML), not JSON.
    pub fn get_text(&self, path: &str) -> Result<String, ClientError> {
        let mut resp = self.send(|base, auth| {
            let mut req = self.agent.get(format!("{base}{path}"));
            if let Some(a) = auth {
                req = req.header("Authorization", a);
            }
            req.call()
        })?;
        let status = resp.status();
        let text = resp.body_mut().read_to_string().map_err(|e| ClientError::Transport(e.to_string()))?;
        if status.is_success() {
            return Ok(text);
        }
        match serde_json::from_str::<Problem>(&text) {
            Ok(p) => Err(ClientError::Api(Box::new(p))),
            Err(_) => Err(ClientError::Transport(format!("HTTP {status}: {text}"))),
        }
    }

    /// A DELETE answered with no body (204) or a problem.
    pub fn delete(&self, path: &str) -> Result<(), ClientError> {
        let mut resp = self.send(|base, auth| {
            let mut req = self.agent.delete(format!("{base}{path}"));
            if let Some(a) = auth {
                req = req.header("Authorization", a);
            }
            req.call()
        })?;
        if resp.status().is_success() {
            return Ok(());
        }
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        match serde_json::from_str::<Problem>(&text) {
            Ok(p) => Err(ClientError::Api(Box::new(p))),
            Err(_) => Err(ClientError::Transport(format!("HTTP {}: {text}", resp.status()))),
        }
    }

    pub fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: Option<&B>,
        idempotency_key: Option<&str>,
    ) -> Result<T, ClientError> {
        let json = body.map(serde_json::to_vec).transpose().map_err(|e| ClientError::Transport(e.to_string()))?;
        self.finish(self.send(|base, auth| {
            let mut req = self.agent.post(format!("{base}{path}"));
            if let Some(a) = auth {
                req = req.header("Authorization", a);
            }
            if let Some(k) = idempotency_key {
                req = req.header("Idempotency-Key", k);
            }
            match &json {
                Some(j) => req.header("Content-Type", "application/json").send(&j[..]),
                None => req.send_empty(),
            }
        }))
    }

    /// A PUT with a JSON body: replaces a setting, so a retry is harmless without a key.
    pub fn put<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, ClientError> {
        let json = serde_json::to_vec(body).map_err(|e| ClientError::Transport(e.to_string()))?;
        self.finish(self.send(|base, auth| {
            let mut req = self.agent.put(format!("{base}{path}"));
            if let Some(a) = auth {
                req = req.header("Authorization", a);
            }
            req.header("Content-Type", "application/json").send(&json[..])
        }))
    }

    // Typed calls for the routes every caller uses; the generic verbs above serve the rest.

    /// `POST /v1/instances`. With an idempotency key a retry after a lost answer gets the first
    /// instance back instead of a second one.
    pub fn create_instance(
        &self,
        req: &api::CreateInstanceRequest,
        idempotency_key: Option<&str>,
    ) -> Result<api::Instance, ClientError> {
        self.post("/v1/instances", Some(req), idempotency_key)
    }

    /// `GET /v1/instances/{id}`.
    pub fn instance(&self, id: &str) -> Result<api::Instance, ClientError> {
        self.get(&format!("/v1/instances/{}", encode_query(id)))
    }

    /// `GET /v1/instances`, every page.
    pub fn instances(&self) -> Result<Vec<api::Instance>, ClientError> {
        Ok(self.get_all::<api::InstanceList>("/v1/instances", "instances")?.instances)
    }

    /// `POST /v1/instances/{id}/{action}`: start, stop or terminate.
    pub fn instance_action(&self, id: &str, action: InstanceAction) -> Result<api::Instance, ClientError> {
        self.post::<(), _>(&format!("/v1/instances/{}/{}", encode_query(id), action.as_str()), None, None)
    }

    /// `GET /v1/whoami`.
    pub fn whoami(&self) -> Result<api::WhoAmI, ClientError> {
        self.get("/v1/whoami")
    }

    fn finish<T: DeserializeOwned>(&self, resp: Result<Resp, ClientError>) -> Result<T, ClientError> {
        let mut resp = resp?;
        let status = resp.status();
        let text = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| ClientError::Transport(format!("reading the response: {e}")))?;
        if status.is_success() {
            serde_json::from_str(&text)
                .map_err(|e| ClientError::Transport(format!("unexpected response from the server: {e}")))
        } else {
            match serde_json::from_str::<Problem>(&text) {
                Ok(p) => Err(ClientError::Api(Box::new(p))),
                Err(_) => Err(ClientError::Transport(format!("HTTP {status}: {text}"))),
            }
        }
    }
}

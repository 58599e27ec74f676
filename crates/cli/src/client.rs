//! A small blocking HTTP client over the API types. Errors carry the server's problem document.

use gpucloud_api::Problem;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Duration;

pub struct Client {
    base: String,
    key: Option<String>,
    agent: ureq::Agent,
}

#[derive(Debug)]
pub enum ClientError {
    /// The server answered with a problem document.
    Api(Box<Problem>),
    /// The server could not be reached, or answered something that is not the API.
    Transport(String),
}

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

impl Client {
    pub fn new(base: &str, key: Option<String>) -> Client {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        Client { base: base.trim_end_matches('/').to_string(), key, agent }
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let mut req = self.agent.get(format!("{}{path}", self.base));
        if let Some(k) = &self.key {
            req = req.header("Authorization", format!("Bearer {k}"));
        }
        self.finish(req.call())
    }

    /// A GET whose body is text (CSV, HTML), not JSON.
    pub fn get_text(&self, path: &str) -> Result<String, ClientError> {
        let mut req = self.agent.get(format!("{}{path}", self.base));
        if let Some(k) = &self.key {
            req = req.header("Authorization", format!("Bearer {k}"));
        }
        let mut resp = req.call().map_err(|e| ClientError::Transport(format!("cannot reach {}: {e}", self.base)))?;
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
        let mut req = self.agent.delete(format!("{}{path}", self.base));
        if let Some(k) = &self.key {
            req = req.header("Authorization", format!("Bearer {k}"));
        }
        let mut resp = req.call().map_err(|e| ClientError::Transport(format!("cannot reach {}: {e}", self.base)))?;
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
        let mut req = self.agent.post(format!("{}{path}", self.base));
        if let Some(k) = &self.key {
            req = req.header("Authorization", format!("Bearer {k}"));
        }
        if let Some(k) = idempotency_key {
            req = req.header("Idempotency-Key", k);
        }
        let resp = match body {
            Some(b) => {
                let json = serde_json::to_vec(b).map_err(|e| ClientError::Transport(e.to_string()))?;
                req.header("Content-Type", "application/json").send(&json[..])
            }
            None => req.send_empty(),
        };
        self.finish(resp)
    }

    /// A PUT with a JSON body: replaces a setting, so a retry is harmless without a key.
    pub fn put<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, ClientError> {
        let mut req = self.agent.put(format!("{}{path}", self.base));
        if let Some(k) = &self.key {
            req = req.header("Authorization", format!("Bearer {k}"));
        }
        let json = serde_json::to_vec(body).map_err(|e| ClientError::Transport(e.to_string()))?;
        self.finish(req.header("Content-Type", "application/json").send(&json[..]))
    }

    fn finish<T: DeserializeOwned>(
        &self,
        resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<T, ClientError> {
        let mut resp = resp.map_err(|e| ClientError::Transport(format!("cannot reach {}: {e}", self.base)))?;
        let status = resp.status();
        let text = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| ClientError::Transport(format!("reading the response: {e}")))?;
        if status.is_success() {
            serde_json::from_str(&text)
                .map_err(|e| ClientError::Transport(format!("unexpected response from {}: {e}", self.base)))
        } else {
            match serde_json::from_str::<Problem>(&text) {
                Ok(p) => Err(ClientError::Api(Box::new(p))),
                Err(_) => Err(ClientError::Transport(format!("HTTP {status} from {}: {text}", self.base))),
            }
        }
    }
}

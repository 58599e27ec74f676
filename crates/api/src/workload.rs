//! What a tenant's workloads run with, on the wire: exposed ports, templates, secrets and
//! registry credentials (never a secret's value or a password on the way out).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A port an instance exposes, and where to reach it while it runs.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct InstancePort {
    pub port: u16,
    /// http or tcp.
    pub protocol: String,
    /// http: the proxied address (`SERVER/i/{id}/{port}/`, a key or a dashboard login needed);
    /// tcp: `tcp://NODE:PORT`. Null until the instance runs.
    pub url: Option<String>,
}

/// What an instance runs with, saved under a name for `instance create --template NAME`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct CreateTemplateRequest {
    /// 1 to 63 lower-case letters, digits and '-'.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub env: std::collections::BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Template {
    pub name: String,
    /// Built into the server (the same for every tenant), or the caller's own.
    pub builtin: bool,
    pub image: Option<String>,
    pub command: Option<String>,
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub secrets: Vec<String>,
    #[serde(default)]
    pub ports: Vec<String>,
    /// What it is for (built-in templates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TemplateList {
    pub templates: Vec<Template>,
}

/// Credentials for a private registry (its password is never returned).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct RegistryAuth {
    /// `nvcr.io`, `ghcr.io`, `registry.example.com:5000`, or `docker.io` for Docker Hub.
    pub registry: String,
    pub username: String,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RegistryAuthList {
    pub registry_auths: Vec<RegistryAuth>,
}

#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutRegistryAuthRequest {
    pub username: String,
    /// A password or token; stored encrypted, given only to a node starting one of your
    /// workloads whose image is in this registry.
    pub password: String,
}

/// A secret: its name and when it was set. Its value is never returned.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Secret {
    pub name: String,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SecretList {
    pub secrets: Vec<Secret>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutSecretRequest {
    /// The value (at most 32 KiB, no NUL byte). Stored encrypted; never returned.
    pub value: String,
}

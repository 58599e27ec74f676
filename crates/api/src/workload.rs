//! What a tenant's workloads run with, on the wire: exposed ports, templates, secrets and
//! registry credentials (never a secret's value or a password on the way out).

use crate::{PortProtocol, VolumeState};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A port an instance exposes, and where to reach it while it runs.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct InstancePort {
    pub port: u16,
    /// http or tcp.
    pub protocol: PortProtocol,
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
    /// A volume to mount, `NAME:/path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
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
    /// A volume it mounts, `NAME:/path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
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

/// Storage that outlives instances: `POST /v1/volumes`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CreateVolumeRequest {
    /// 1 to 63 lower-case letters, digits and '-'.
    pub name: String,
    /// `100GiB`, `2TiB`, or a number of GiB.
    #[schema(example = "100GiB")]
    pub size: String,
    #[schema(example = "eu-1")]
    pub region: String,
    /// The project it belongs to (the key's, or `default`, when omitted): only that project's
    /// instances and jobs mount it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Volume {
    pub id: String,
    pub name: String,
    /// The project it belongs to.
    #[serde(default = "default_project")]
    pub project: String,
    pub region: String,
    pub size_gib: u32,
    /// available (no live instance holds it) or in-use.
    pub state: VolumeState,
    /// The live instance holding it.
    pub attached_to: Option<String>,
    /// Whether its data lives on a node yet (from its first instance's placement on): later
    /// instances that mount it are placed on that node.
    pub placed: bool,
    /// Its storage price per hour now (decimal string).
    pub price_per_hour: String,
    /// Billed so far (decimal string), and for how many seconds.
    pub charged: String,
    pub charged_seconds: i64,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VolumeList {
    pub volumes: Vec<Volume>,
}

/// A storage price from a time on (operator): `PUT /v1/prices/storage/{region}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SetStoragePriceRequest {
    /// Per GiB-hour, a decimal string.
    #[schema(example = "0.0002")]
    pub price_per_gib_hour: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct StoragePrice {
    pub region: String,
    pub price_per_gib_hour: String,
    pub effective_from: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StoragePriceList {
    pub prices: Vec<StoragePrice>,
}

fn default_project() -> String {
    "default".to_string()
}

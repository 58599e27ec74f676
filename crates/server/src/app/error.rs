use gpucloud_model::IllegalTransition;
use gpucloud_store::StoreError;

/// Everything a use case can refuse, with enough context to tell the caller what to fix.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("missing or malformed Authorization header (expected 'Bearer gpc_...')")]
    Unauthenticated,
    #[error("this API key is not valid")]
    BadKey,
    #[error("{0}")]
    Forbidden(String),
    #[error("{kind} '{id}' not found")]
    NotFound { kind: &'static str, id: String },
    #[error("{detail}")]
    Invalid { field: String, detail: String },
    #[error("{0}")]
    Illegal(#[from] IllegalTransition),
    #[error("{0}")]
    Conflict(String),
    /// An agent's registration was replaced: it must stop its workloads and register again.
    #[error("{0}")]
    Fenced(String),
    /// The tenant cannot pay for this (empty prepaid balance, spent budget).
    #[error("{0}")]
    PaymentRequired(String),
    /// The project is at its GPU limit on that model (nothing was written).
    #[error("{0}")]
    QuotaExceeded(gpucloud_store::QuotaRefusal),
    /// What the request needs beyond this server did not answer (a node's agent, a workload).
    #[error("{0}")]
    BadGateway(String),
    /// The record kept changing under us; the caller may retry.
    #[error("{0} changed concurrently too often; retry")]
    Contended(String),
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> AppError {
        match e {
            StoreError::QuotaExceeded(q) => AppError::QuotaExceeded(q),
            other => AppError::Store(other),
        }
    }
}

impl AppError {
    pub(crate) fn invalid(field: &str, detail: impl Into<String>) -> AppError {
        AppError::Invalid { field: field.to_string(), detail: detail.into() }
    }

    pub(crate) fn store_conflict(e: StoreError) -> AppError {
        match e {
            StoreError::Conflict(what) => AppError::Conflict(format!("{what} already exists")),
            other => AppError::Store(other),
        }
    }
}

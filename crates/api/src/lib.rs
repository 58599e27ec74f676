//! The wire format of the gpucloud REST API: the one place that knows JSON. Server, CLI and
//! tests share these types; the server derives its OpenAPI document from them.

use gpucloud_model::Timestamp;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

mod clusters;
mod enums;
mod request;
mod response;
mod workload;
pub use clusters::*;
pub use enums::*;
pub use request::*;
pub use response::*;
pub use workload::*;

/// RFC 3339 text of a timestamp, in UTC with millisecond precision.
pub fn rfc3339(t: Timestamp) -> String {
    let nanos = i128::from(t.millis()) * 1_000_000;
    match time::OffsetDateTime::from_unix_timestamp_nanos(nanos) {
        Ok(dt) => dt.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| t.millis().to_string()),
        Err(_) => t.millis().to_string(),
    }
}

/// An RFC 9457 problem document: every 4xx and 5xx body.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Problem {
    /// A URI reference naming the kind of problem: `/problems/{code}`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Machine-readable, stable: `invalid_request`, `not_found`, `illegal_transition`, ...
    pub code: ProblemCode,
    /// The request field at fault, as a path (`count`, `gpus[0].model`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// For `illegal_transition`: the instance's state now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_state: Option<String>,
}

/// Parses a time as RFC 3339 (`2026-11-01T00:00:00Z`), a UTC date (`2026-11-01`) or a UTC
/// month (`2026-11`, its first instant).
pub fn parse_time(s: &str) -> Option<Timestamp> {
    use time::format_description::well_known::Rfc3339;
    if let Ok(dt) = time::OffsetDateTime::parse(s, &Rfc3339) {
        return Some(Timestamp((dt.unix_timestamp_nanos() / 1_000_000) as i64));
    }
    let padded = if s.len() == 7 { format!("{s}-01") } else { s.to_string() };
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    let date = time::Date::parse(&padded, &fmt).ok()?;
    Some(Timestamp(date.midnight().assume_utc().unix_timestamp() * 1000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(Timestamp(0)), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(Timestamp(1_700_000_000_123)), "2023-11-14T22:13:20.123Z");
    }

    #[test]
    fn create_request_names_the_bad_field() {
        let bad = serde_json::from_str::<CreateInstanceRequest>(r#"{"gpu":"A100-40GB","count":-1,"command":"x"}"#);
        assert!(bad.unwrap_err().to_string().contains("-1"));
        let unknown = serde_json::from_str::<CreateInstanceRequest>(
            r#"{"gpu":"A100-40GB","count":1,"command":"x","colour":"red"}"#,
        );
        assert!(unknown.unwrap_err().to_string().contains("colour"));
    }
}

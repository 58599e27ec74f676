//! Cursor pagination for list routes: `limit` (default 100, at most 1000) and `after` (the
//! `next` cursor of the previous page). A list is in a stable order with a unique key per item;
//! the cursor is the last item's key, so items added or removed meanwhile never shift a page.

use super::error::ApiError;
use axum::http::StatusCode;

pub const DEFAULT_LIMIT: u32 = 100;
pub const MAX_LIMIT: u32 = 1000;

#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    /// Items per page: default 100, at most 1000.
    pub limit: Option<u32>,
    /// The `next` cursor of the previous page.
    pub after: Option<String>,
}

/// A sort key that orders as its time then its id: 15 digits of milliseconds fit any date.
pub fn key(at_ms: i64, id: &str) -> String {
    format!("{:015}.{id}", at_ms.max(0))
}

/// A cursor made by `key`, read back: the time and the id; a clear 422 for anything else.
pub fn parse_key(after: &str) -> Result<(gpucloud_model::Timestamp, String), ApiError> {
    let bad = || invalid("after", "after is the next cursor of a previous page");
    let (at, id) = after.split_once('.').ok_or_else(bad)?;
    if at.len() != 15 || id.is_empty() || id.len() > 180 {
        return Err(bad());
    }
    let at: i64 = at.parse().map_err(|_| bad())?;
    if !id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)) {
        return Err(bad());
    }
    Ok((gpucloud_model::Timestamp(at), id.to_string()))
}

/// The page of `items` (ordered by `key_of`, ascending or, with `newest_first`, descending)
/// after the cursor, and the cursor of the next page when there is one. `path` and `query`
/// (without `limit` and `after`) make the `next` link.
pub fn page<T>(
    items: Vec<T>,
    key_of: impl Fn(&T) -> String,
    q: &PageQuery,
    max: u32,
    newest_first: bool,
    path: &str,
    query: &[(&str, String)],
) -> Result<(Vec<T>, Option<String>), ApiError> {
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT.min(max));
    if !(1..=max).contains(&limit) {
        return Err(invalid("limit", format!("limit is 1 to {max}")));
    }
    if let Some(a) = &q.after
        && (a.is_empty() || a.len() > 200 || !a.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)))
    {
        return Err(invalid("after", "after is the next cursor of a previous page"));
    }
    let mut rest: Vec<(String, T)> = items
        .into_iter()
        .map(|i| (key_of(&i), i))
        .filter(|(k, _)| match &q.after {
            None => true,
            Some(a) if newest_first => k < a,
            Some(a) => k > a,
        })
        .collect();
    let more = rest.len() > limit as usize;
    rest.truncate(limit as usize);
    let next = match (more, rest.last()) {
        (true, Some((last, _))) => {
            let mut link = format!("{path}?limit={limit}&after={last}");
            for (k, v) in query {
                link.push_str(&format!("&{k}={}", urlencode(v)));
            }
            Some(link)
        }
        _ => None,
    };
    Ok((rest.into_iter().map(|(_, i)| i).collect(), next))
}

fn urlencode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn invalid(field: &str, detail: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, gpucloud_api::ProblemCode::InvalidRequest, detail).field(field)
}

pub fn bad_query(e: axum::extract::rejection::QueryRejection) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, gpucloud_api::ProblemCode::InvalidQuery, e.body_text())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_reads_back_as_its_time_and_id() {
        let (at, id) = parse_key(&key(1_733_000_000_123, "i-abc.def_1")).unwrap();
        assert_eq!((at.0, id.as_str()), (1_733_000_000_123, "i-abc.def_1"));
        for bad in ["", "x", "000000000000001.", "12.i-a", "00000000000000x.i-a", "000000000000001.i a"] {
            assert!(parse_key(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pages_follow_the_cursor_to_the_end() {
        let items: Vec<u32> = (0..25).collect();
        let k = |i: &u32| key(i64::from(*i), "x");
        let mut q = PageQuery { limit: Some(10), after: None };
        let mut seen = Vec::new();
        loop {
            let (p, next) = page(items.clone(), k, &q, 1000, false, "/v1/x", &[("by", "a b".into())]).unwrap();
            seen.extend(p);
            let Some(next) = next else { break };
            assert!(next.starts_with("/v1/x?limit=10&after=") && next.ends_with("&by=a%20b"), "{next}");
            q.after = Some(next.split("after=").nth(1).unwrap().split('&').next().unwrap().to_string());
        }
        assert_eq!(seen, items);
        let newest: Vec<u32> = (0..25).rev().collect();
        let (p, next) =
            page(newest.clone(), k, &PageQuery { limit: Some(20), after: None }, 1000, true, "/", &[]).unwrap();
        assert_eq!((p.len(), next.is_some()), (20, true));
        let after = key(5, "x");
        let (p, next) =
            page(newest, k, &PageQuery { limit: Some(20), after: Some(after) }, 1000, true, "/", &[]).unwrap();
        assert_eq!((p, next), (vec![4, 3, 2, 1, 0], None));
        for (limit, after) in [(Some(0), None), (Some(1001), None), (None, Some("a b".to_string()))] {
            assert!(page(vec![1u32], k, &PageQuery { limit, after }, 1000, false, "/", &[]).is_err());
        }
    }
}

//! Per-key rate limits: a token bucket per API key, in each replica's memory (so N replicas
//! allow up to N times the rate; a shared bucket would cost a database write per request).

use super::App;
use gpucloud_model::ApiKeyId;
use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub struct RateLimit {
    /// Sustained requests per second per key.
    pub per_second: f64,
    /// How many may come at once after a quiet spell.
    pub burst: f64,
}

impl Default for RateLimit {
    fn default() -> RateLimit {
        // Far above a person, a dashboard (a few calls every 2 s) or a CI script polling every
        // 20 ms; a runaway loop is stopped within a second.
        RateLimit { per_second: 100.0, burst: 200.0 }
    }
}

impl App {
    /// Takes one token from the key's bucket, or says how long until one is there.
    pub fn take_rate_token(&self, key: &ApiKeyId) -> Result<(), Duration> {
        let Some(limit) = self.config.rate_limit else { return Ok(()) };
        let now = self.now();
        let mut buckets = self.rate_buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() > 100_000 {
            // Keys are few; this bounds memory if something mints keys in a loop.
            buckets.retain(|_, (_, t)| now.millis_since(*t) < 60_000);
        }
        let (tokens, at) = buckets.entry(key.clone()).or_insert((limit.burst, now));
        // A clock that stepped back refills nothing (and takes nothing away).
        let elapsed = now.millis_since(*at).max(0) as f64 / 1000.0;
        *tokens = (*tokens + elapsed * limit.per_second).min(limit.burst);
        *at = now.max(*at);
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / limit.per_second.max(1e-6)))
        }
    }
}

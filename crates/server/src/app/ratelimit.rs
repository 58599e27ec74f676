//! Per-key rate limits: a token bucket per API key. A lone server keeps it in memory. Replicas
//! (`replica` set) share one bucket per key in the store and take its tokens in small batches
//! (a twentieth of the burst, at most 50), so together they allow the configured rate, not N
//! times it, at the cost of one store write per batch rather than per request.

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
    pub async fn take_rate_token(&self, key: &ApiKeyId) -> Result<(), Duration> {
        let Some(limit) = self.config.rate_limit else { return Ok(()) };
        if self.config.replica.is_none() {
            return self.take_local_token(key, limit);
        }
        {
            let mut granted = self.rate_granted.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = granted.get_mut(key)
                && *n > 0
            {
                *n -= 1;
                return Ok(());
            }
        }
        let batch = (limit.burst / 20.0).clamp(1.0, 50.0) as u32;
        match self.store.take_rate_tokens(key.as_str(), batch, limit.per_second, limit.burst, self.now()).await {
            Ok(0) => Err(Duration::from_secs_f64(1.0 / limit.per_second.max(1e-6))),
            Ok(n) => {
                let mut granted = self.rate_granted.lock().unwrap_or_else(|e| e.into_inner());
                if granted.len() > 100_000 {
                    granted.clear();
                }
                *granted.entry(key.clone()).or_default() += n - 1;
                Ok(())
            }
            Err(e) => {
                // The store is where every request goes next anyway; while it fails, this
                // replica's own bucket still stops a runaway client.
                tracing::warn!(error = %e, "shared rate limit unavailable: limiting in memory");
                self.take_local_token(key, limit)
            }
        }
    }

    fn take_local_token(&self, key: &ApiKeyId, limit: RateLimit) -> Result<(), Duration> {
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

//! The control plane's own measurements for `/metrics`: request latency per route and scheduling
//! latency, as Prometheus histograms (cumulative buckets, sum, count). Kept in memory: a restart
//! starts them at zero, which Prometheus' rate() handles as a counter reset.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// Seconds: from a fast GET on SQLite to a slow write on a busy PostgreSQL.
const REQUEST_BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];
/// Seconds from pending to placed: a pass on an idle fleet, up to an hour in a full one.
const SCHEDULING_BUCKETS: [f64; 12] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 30.0, 60.0, 300.0, 3600.0];

#[derive(Debug, Clone, Default)]
pub struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, bounds: &[f64], seconds: f64) {
        if self.counts.len() != bounds.len() {
            self.counts = vec![0; bounds.len()];
        }
        if let Some(i) = bounds.iter().position(|b| seconds <= *b) {
            self.counts[i] += 1;
        }
        self.sum += seconds;
        self.count += 1;
    }

    fn write(&self, out: &mut String, name: &str, labels: &str, bounds: &[f64]) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, b) in bounds.iter().enumerate() {
            cumulative += self.counts.get(i).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

#[derive(Debug, Default)]
pub struct ServerMetrics {
    /// Per (method, route template, status code).
    requests: Mutex<BTreeMap<(String, String, u16), Histogram>>,
    scheduling: Mutex<Histogram>,
}

impl ServerMetrics {
    pub fn observe_request(&self, method: &str, route: &str, status: u16, seconds: f64) {
        let mut m = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        m.entry((method.to_string(), route.to_string(), status)).or_default().observe(&REQUEST_BUCKETS, seconds);
    }

    pub fn observe_scheduling(&self, seconds: f64) {
        self.scheduling.lock().unwrap_or_else(|e| e.into_inner()).observe(&SCHEDULING_BUCKETS, seconds.max(0.0));
    }

    /// The histograms in the Prometheus text format.
    pub fn write(&self, out: &mut String) {
        let name = "gpucloud_http_request_duration_seconds";
        let _ =
            writeln!(out, "# HELP {name} API request latency, by method, route and status.\n# TYPE {name} histogram");
        for ((method, route, status), h) in self.requests.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            h.write(out, name, &format!("method=\"{method}\",route=\"{route}\",status=\"{status}\""), &REQUEST_BUCKETS);
        }
        let name = "gpucloud_scheduling_latency_seconds";
        let _ = writeln!(out, "# HELP {name} From pending to placed on GPUs.\n# TYPE {name} histogram");
        self.scheduling.lock().unwrap_or_else(|e| e.into_inner()).write(out, name, "", &SCHEDULING_BUCKETS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_count_everything() {
        let m = ServerMetrics::default();
        m.observe_request("GET", "/v1/instances", 200, 0.002);
        m.observe_request("GET", "/v1/instances", 200, 0.2);
        m.observe_request("GET", "/v1/instances", 200, 60.0);
        m.observe_scheduling(0.3);
        let mut out = String::new();
        m.write(&mut out);
        let line =
            |prefix: &str| out.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("{prefix}\n{out}"));
        let labels = "method=\"GET\",route=\"/v1/instances\",status=\"200\"";
        assert!(
            line(&format!("gpucloud_http_request_duration_seconds_bucket{{{labels},le=\"0.001\"}}")).ends_with(" 0")
        );
        assert!(
            line(&format!("gpucloud_http_request_duration_seconds_bucket{{{labels},le=\"0.0025\"}}")).ends_with(" 1")
        );
        assert!(line(&format!("gpucloud_http_request_duration_seconds_bucket{{{labels},le=\"5\"}}")).ends_with(" 2"));
        assert!(
            line(&format!("gpucloud_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}}")).ends_with(" 3")
        );
        assert!(line("gpucloud_http_request_duration_seconds_count").ends_with(" 3"));
        assert!(line("gpucloud_scheduling_latency_seconds_bucket{le=\"0.25\"}").ends_with(" 0"));
        assert!(line("gpucloud_scheduling_latency_seconds_bucket{le=\"0.5\"}").ends_with(" 1"));
        assert!(line("gpucloud_scheduling_latency_seconds_count{}").ends_with(" 1"));
    }
}

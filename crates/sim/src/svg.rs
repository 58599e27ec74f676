//! A dependency-free SVG line chart of allocation ratio against arrived demand, one panel per
//! trace, one line per policy (the layout of the FGD paper's figures).

use crate::fgd::Record;
use std::fmt::Write;

const COLORS: [&str; 8] = ["#7f7f7f", "#bcbd22", "#17becf", "#9467bd", "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e"];

/// `from`: lowest demand percent drawn (the interesting part starts near 60%).
pub fn chart(records: &[Record], from: usize) -> String {
    let mut traces: Vec<&str> = Vec::new();
    let mut policies: Vec<&str> = Vec::new();
    for r in records {
        if !traces.contains(&r.trace.as_str()) {
            traces.push(&r.trace);
        }
        if !policies.contains(&r.policy.as_str()) {
            policies.push(&r.policy);
        }
    }
    let to = records.iter().map(|r| r.demand_percent).max().unwrap_or(100).max(from + 1);
    let in_range = |r: &&Record| r.demand_percent >= from;
    let y_min = records.iter().filter(in_range).map(|r| r.allocation_mean).fold(100.0f64, f64::min);
    let y_lo = ((y_min / 5.0).floor() * 5.0).clamp(0.0, 95.0);
    let y_hi = 100.0;
    let (pw, ph, ml, mt, mb, gap) = (420.0, 300.0, 50.0, 40.0, 45.0, 30.0);
    let legend_h = 20.0 * policies.len() as f64;
    // Three panels a row.
    let cols = traces.len().clamp(1, 3);
    let rows = traces.len().div_ceil(3).max(1);
    let row_h = mt + ph + mb;
    let width = ml + cols as f64 * (pw + gap) + 10.0;
    let height = rows as f64 * row_h + legend_h + 10.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    for (ti, trace) in traces.iter().enumerate() {
        let x0 = ml + (ti % 3) as f64 * (pw + gap);
        let mt = (ti / 3) as f64 * row_h + 40.0;
        let xs = |k: f64| x0 + (k - from as f64) / (to - from) as f64 * pw;
        let ys = |v: f64| mt + (y_hi - v) / (y_hi - y_lo) * ph;
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle" font-weight="bold">{}</text>"#,
            x0 + pw / 2.0,
            mt - 15.0,
            escape(trace)
        );
        let _ = writeln!(s, r##"<rect x="{x0}" y="{mt}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>"##);
        let mut k = from.div_ceil(10) * 10;
        while k <= to {
            let x = xs(k as f64);
            let _ = writeln!(
                s,
                r##"<line x1="{x}" y1="{mt}" x2="{x}" y2="{}" stroke="#eee"/><text x="{x}" y="{}" text-anchor="middle">{k}</text>"##,
                mt + ph,
                mt + ph + 15.0
            );
            k += 10;
        }
        let mut v = y_lo;
        while v <= y_hi + 1e-9 {
            let y = ys(v);
            let _ = writeln!(
                s,
                r##"<line x1="{x0}" y1="{y}" x2="{}" y2="{y}" stroke="#eee"/><text x="{}" y="{}" text-anchor="end">{v}</text>"##,
                x0 + pw,
                x0 - 5.0,
                y + 4.0
            );
            v += 5.0;
        }
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">arrived GPU demand (% of capacity)</text>"#,
            x0 + pw / 2.0,
            mt + ph + 32.0
        );
        for (pi, policy) in policies.iter().enumerate() {
            let pts: Vec<String> = records
                .iter()
                .filter(|r| r.trace == *trace && r.policy == *policy && r.demand_percent >= from)
                .map(|r| format!("{:.1},{:.1}", xs(r.demand_percent as f64), ys(r.allocation_mean)))
                .collect();
            let _ = writeln!(
                s,
                r#"<polyline fill="none" stroke="{}" stroke-width="1.8" points="{}"/>"#,
                COLORS[pi % COLORS.len()],
                pts.join(" ")
            );
        }
    }
    for r in 0..rows {
        let _ = writeln!(
            s,
            r#"<text transform="translate(14,{}) rotate(-90)" text-anchor="middle">GPU allocation (%)</text>"#,
            r as f64 * row_h + mt + ph / 2.0
        );
    }
    for (pi, policy) in policies.iter().enumerate() {
        let y = rows as f64 * row_h + 20.0 * pi as f64 + 5.0;
        let last: Vec<String> = traces
            .iter()
            .filter_map(|t| {
                records
                    .iter()
                    .filter(|r| r.trace == *t && r.policy == *policy)
                    .max_by_key(|r| r.demand_percent)
                    .map(|r| format!("{:.2}", r.allocation_mean))
            })
            .collect();
        let _ = writeln!(
            s,
            r#"<line x1="{ml}" y1="{y}" x2="{}" y2="{y}" stroke="{}" stroke-width="3"/><text x="{}" y="{}">{} (at {to}%: {})</text>"#,
            ml + 25.0,
            COLORS[pi % COLORS.len()],
            ml + 32.0,
            y + 4.0,
            escape(policy),
            last.join(" / ")
        );
    }
    s.push_str("</svg>\n");
    s
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

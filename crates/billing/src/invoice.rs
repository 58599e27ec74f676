//! Monthly invoices: built from the ledger entries of one tenant in one month, so every entry is on
//! exactly one invoice; rendered as JSON, CSV or a readable HTML page.

use gpucloud_model::Money;
use std::fmt::Write;

/// One billed line: an instance's usage of one GPU model in the month.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InvoiceLine {
    pub description: String,
    pub instance: Option<String>,
    pub gpu: Option<String>,
    pub seconds: i64,
    pub amount: Money,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Invoice {
    pub tenant: String,
    pub tenant_name: String,
    /// `YYYY-MM`, UTC.
    pub month: String,
    /// `open` while the month runs (a draft that still changes), `closed` after (immutable).
    pub status: String,
    pub currency: String,
    pub opening_balance: Money,
    /// Usage, one line per instance and model, as positive amounts.
    pub lines: Vec<InvoiceLine>,
    /// Grants, top-ups and adjustments received in the month.
    pub credits: Vec<InvoiceLine>,
    pub usage_total: Money,
    pub credits_total: Money,
    pub closing_balance: Money,
}

impl Invoice {
    /// Totals and the closing balance follow from the lines; called after lines change.
    pub fn finish(&mut self) {
        self.usage_total = Money(self.lines.iter().map(|l| l.amount.micros()).sum());
        self.credits_total = Money(self.credits.iter().map(|l| l.amount.micros()).sum());
        self.closing_balance =
            Money(self.opening_balance.micros() + self.credits_total.micros() - self.usage_total.micros());
    }

    pub fn to_csv(&self) -> String {
        let mut out = String::from("section,description,instance,gpu,seconds,amount,currency\n");
        let field = |s: &str| {
            if s.contains([',', '"', '\n']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
        };
        for (section, lines) in [("usage", &self.lines), ("credit", &self.credits)] {
            for l in lines {
                let _ = writeln!(
                    out,
                    "{section},{},{},{},{},{},{}",
                    field(&l.description),
                    field(l.instance.as_deref().unwrap_or("")),
                    field(l.gpu.as_deref().unwrap_or("")),
                    l.seconds,
                    l.amount,
                    self.currency
                );
            }
        }
        let _ = writeln!(out, "total,usage,,,,{},{}", self.usage_total, self.currency);
        let _ = writeln!(out, "total,credits,,,,{},{}", self.credits_total, self.currency);
        let _ = writeln!(out, "total,closing balance,,,,{},{}", self.closing_balance, self.currency);
        out
    }

    pub fn to_html(&self) -> String {
        let esc = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;");
        let mut rows = String::new();
        for l in &self.lines {
            let _ = write!(
                rows,
                "<tr><td>{}</td><td>{}</td><td class=n>{}</td><td class=n>{:.2} h</td><td class=n>{}</td></tr>",
                esc(&l.description),
                esc(l.instance.as_deref().unwrap_or("")),
                l.seconds,
                l.seconds as f64 / 3600.0,
                l.amount
            );
        }
        let mut credits = String::new();
        for l in &self.credits {
            let _ = write!(credits, "<tr><td colspan=4>{}</td><td class=n>{}</td></tr>", esc(&l.description), l.amount);
        }
        format!(
            "<!doctype html><html><head><meta charset=utf-8><title>Invoice {month} {name}</title><style>\
             body{{font-family:system-ui,sans-serif;max-width:900px;margin:2em auto;color:#222}}\
             table{{border-collapse:collapse;width:100%}}td,th{{padding:.35em .6em;border-bottom:1px solid #ddd;text-align:left}}\
             .n{{text-align:right;font-variant-numeric:tabular-nums}}h1{{margin-bottom:0}}.muted{{color:#777}}</style></head><body>\
             <h1>Invoice {month}</h1><p class=muted>{name} ({tenant}) &middot; {status} &middot; {cur}</p>\
             <h2>Usage</h2><table><tr><th>Description</th><th>Instance</th><th class=n>Seconds</th><th class=n>Hours</th><th class=n>Amount</th></tr>{rows}\
             <tr><th colspan=4>Usage total</th><th class=n>{usage}</th></tr></table>\
             <h2>Credits</h2><table>{credits}<tr><th colspan=4>Credits total</th><th class=n>{credit_total}</th></tr></table>\
             <h2>Balance</h2><table><tr><td colspan=4>Opening balance</td><td class=n>{open}</td></tr>\
             <tr><th colspan=4>Closing balance</th><th class=n>{close}</th></tr></table></body></html>\n",
            month = esc(&self.month),
            name = esc(&self.tenant_name),
            tenant = esc(&self.tenant),
            status = esc(&self.status),
            cur = esc(&self.currency),
            usage = self.usage_total,
            credit_total = self.credits_total,
            open = self.opening_balance,
            close = self.closing_balance,
        )
    }
}

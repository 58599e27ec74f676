//! Money commands: prices, quotes, balance, usage, ledger, credit.

use crate::commands::{As, Ctx, show};
use crate::output::{or_dash, table};
use clap::Subcommand;
use gpucloud_api as api;

type Res = Result<(), String>;

#[derive(Subcommand)]
pub enum BillCmd {
    /// Prepaid balance, this month's usage and what running instances cost per hour.
    Balance,
    /// Usage charged in a period, by instance, model, day or project.
    Usage {
        /// RFC 3339, YYYY-MM-DD or YYYY-MM (UTC); default: start of this month.
        #[arg(long)]
        from: Option<String>,
        /// Exclusive; default: now.
        #[arg(long)]
        to: Option<String>,
        #[arg(long, default_value = "instance", value_parser = ["instance", "model", "day", "project"])]
        by: String,
    },
    /// A month's invoice: issued once the month is over, a live draft before.
    Invoice {
        /// YYYY-MM, UTC; default: this month.
        #[arg(long)]
        month: Option<String>,
        /// table (default), json, csv or html.
        #[arg(long, default_value = "table", value_parser = ["table", "json", "csv", "html"])]
        format: String,
    },
    /// Closed invoices.
    Invoices,
    /// Every ledger entry of yours in a period.
    Ledger {
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        to: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum PriceCmd {
    /// The price book.
    List,
    /// Add a price point (operator). It applies from --from (default now), never to the past.
    Set {
        #[arg(long)]
        gpu: String,
        #[arg(long)]
        region: String,
        /// Per GPU-hour, a decimal such as 2.99.
        #[arg(long)]
        price: String,
        #[arg(long, default_value = "on-demand", value_parser = crate::commands::one_of!(api::Tier))]
        tier: api::Tier,
        #[arg(long)]
        from: Option<String>,
    },
    /// Storage prices per GiB-hour of volume, or set a region's from now on (operator) with
    /// --region and --price.
    Storage {
        #[arg(long, requires = "price")]
        region: Option<String>,
        /// Per GiB-hour, a decimal such as 0.0002.
        #[arg(long, requires = "region")]
        price: Option<String>,
    },
    /// Show the billing rules, or change them (operator) with --granularity and --minimum.
    Rules {
        #[arg(long)]
        granularity: Option<i64>,
        #[arg(long)]
        minimum: Option<i64>,
    },
}

fn query(pairs: &[(&str, &Option<String>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", gpucloud_client::encode_query(v))))
        .collect();
    if parts.is_empty() { String::new() } else { format!("?{}", parts.join("&")) }
}

pub fn bill(ctx: &Ctx, cmd: BillCmd) -> Res {
    let c = ctx.client(As::Tenant)?;
    let err = |e: gpucloud_client::ClientError| e.to_string();
    match cmd {
        BillCmd::Balance => {
            let b: api::Balance = c.get("/v1/billing/balance").map_err(err)?;
            show(ctx, &b, |b| {
                format!(
                    "balance:     {} {}\nthis month:  {} {}\nburn rate:   {} {}/hour",
                    b.balance, b.currency, b.month_usage, b.currency, b.burn_per_hour, b.currency
                )
            });
        }
        BillCmd::Usage { from, to, by } => {
            let q = query(&[("from", &from), ("to", &to), ("by", &Some(by))]);
            let u: api::UsageReport = c.get_all(&format!("/v1/billing/usage{q}"), "lines").map_err(err)?;
            show(ctx, &u, |u| {
                let mut rows: Vec<Vec<String>> =
                    u.lines.iter().map(|l| vec![l.key.clone(), l.seconds.to_string(), l.amount.to_string()]).collect();
                rows.push(vec!["TOTAL".into(), String::new(), u.total.to_string()]);
                format!(
                    "usage {} .. {} ({})\n{}",
                    u.from,
                    u.to,
                    u.currency,
                    table(&[&u.by.to_uppercase(), "SECONDS", "AMOUNT"], &rows)
                )
            });
        }
        BillCmd::Invoice { month, format } => {
            let month = month.unwrap_or_else(this_month);
            let format = if ctx.json { "json".to_string() } else { format };
            match format.as_str() {
                "csv" | "html" => {
                    print!("{}", c.get_text(&format!("/v1/billing/invoices/{month}?format={format}")).map_err(err)?)
                }
                _ => {
                    let inv: gpucloud_billing::Invoice =
                        c.get(&format!("/v1/billing/invoices/{month}")).map_err(err)?;
                    if format == "json" {
                        println!("{}", crate::output::json(&inv));
                    } else {
                        let mut rows: Vec<Vec<String>> = inv
                            .lines
                            .iter()
                            .map(|l| {
                                vec![
                                    l.description.clone(),
                                    or_dash(l.instance.as_ref()),
                                    l.seconds.to_string(),
                                    l.amount.to_string(),
                                ]
                            })
                            .collect();
                        rows.extend(
                            inv.credits
                                .iter()
                                .map(|l| vec![l.description.clone(), "-".into(), String::new(), l.amount.to_string()]),
                        );
                        println!(
                            "invoice {} for {} ({}, {})\n{}\nusage total:     {}\ncredits:         {}\nopening balance: {}\nclosing balance: {}",
                            inv.month,
                            inv.tenant_name,
                            inv.status,
                            inv.currency,
                            table(&["DESCRIPTION", "INSTANCE", "SECONDS", "AMOUNT"], &rows),
                            inv.usage_total,
                            inv.credits_total,
                            inv.opening_balance,
                            inv.closing_balance
                        );
                    }
                }
            }
        }
        BillCmd::Invoices => {
            let l: api::InvoiceList = c.get_all("/v1/billing/invoices", "invoices").map_err(err)?;
            show(ctx, &l, |l| {
                let rows: Vec<Vec<String>> = l
                    .invoices
                    .iter()
                    .map(|i| vec![i.month.clone(), i.usage_total.to_string(), i.closed_at.clone()])
                    .collect();
                table(&["MONTH", "USAGE", "CLOSED"], &rows)
            });
        }
        BillCmd::Ledger { from, to } => {
            let q = query(&[("from", &from), ("to", &to)]);
            let l: api::LedgerList = c.get_all(&format!("/v1/billing/ledger{q}"), "entries").map_err(err)?;
            show(ctx, &l, |l| {
                let rows: Vec<Vec<String>> = l
                    .entries
                    .iter()
                    .map(|e| {
                        vec![
                            e.created_at.clone(),
                            e.kind.clone(),
                            e.amount.to_string(),
                            or_dash(e.instance.as_ref()),
                            e.memo.clone(),
                        ]
                    })
                    .collect();
                table(&["TIME", "KIND", "AMOUNT", "INSTANCE", "MEMO"], &rows)
            });
        }
    }
    Ok(())
}

pub fn price(ctx: &Ctx, cmd: PriceCmd) -> Res {
    let err = |e: gpucloud_client::ClientError| e.to_string();
    match cmd {
        PriceCmd::List => {
            let c = ctx.client(As::Tenant)?;
            let l: api::PriceList = c.get("/v1/prices").map_err(err)?;
            show(ctx, &l, |l| {
                let rows: Vec<Vec<String>> = l
                    .prices
                    .iter()
                    .map(|p| {
                        vec![
                            p.region.clone(),
                            p.gpu.clone(),
                            p.tier.to_string(),
                            p.price_per_gpu_hour.to_string(),
                            p.effective_from.clone(),
                        ]
                    })
                    .collect();
                table(&["REGION", "GPU", "TIER", &format!("{}/GPU-HOUR", l.currency), "FROM"], &rows)
            });
        }
        PriceCmd::Set { gpu, region, price, tier, from } => {
            let c = ctx.client(As::Operator)?;
            let body = api::SetPriceRequest {
                gpu: crate::commands::parse_gpu(&gpu)?,
                region: crate::commands::parse_region("--region", &region)?,
                tier: Some(tier),
                price_per_gpu_hour: crate::commands::parse_money("--price", &price)?,
                effective_from: from,
            };
            let p: api::Price = c.post("/v1/prices", Some(&body), None).map_err(err)?;
            if p.price_per_gpu_hour == gpucloud_model::Money::ZERO {
                eprintln!(
                    "warning: a price of 0: {} {} usage in {} will not be billed from {}",
                    p.gpu, p.tier, p.region, p.effective_from
                );
            }
            show(ctx, &p, |p| {
                format!("{} {} {} in {} from {}", p.gpu, p.tier, p.price_per_gpu_hour, p.region, p.effective_from)
            });
        }
        PriceCmd::Storage { region: Some(region), price: Some(price) } => {
            let c = ctx.client(As::Operator)?;
            let body = api::SetStoragePriceRequest { price_per_gib_hour: price };
            let p: api::StoragePrice =
                c.put(&format!("/v1/prices/storage/{}", gpucloud_client::encode_query(&region)), &body).map_err(err)?;
            show(ctx, &p, |p| {
                format!("storage in {} at {}/GiB-hour from {}", p.region, p.price_per_gib_hour, p.effective_from)
            });
        }
        PriceCmd::Storage { .. } => {
            let c = ctx.client(As::Tenant)?;
            let l: api::StoragePriceList = c.get("/v1/prices/storage").map_err(err)?;
            show(ctx, &l, |l| {
                let rows: Vec<Vec<String>> = l
                    .prices
                    .iter()
                    .map(|p| vec![p.region.clone(), p.price_per_gib_hour.clone(), p.effective_from.clone()])
                    .collect();
                table(&["REGION", "PER GIB-HOUR", "FROM"], &rows)
            });
        }
        PriceCmd::Rules { granularity, minimum } => {
            let text = |r: &api::BillingRules| {
                format!("granularity: {} s\nminimum:     {} s", r.granularity_seconds, r.minimum_seconds)
            };
            if granularity.is_none() && minimum.is_none() {
                let c = ctx.client(As::Tenant)?;
                let r: api::BillingRules = c.get("/v1/billing/rules").map_err(err)?;
                show(ctx, &r, text);
            } else {
                let c = ctx.client(As::Operator)?;
                let current: api::BillingRules = c.get("/v1/billing/rules").map_err(err)?;
                let body = api::BillingRules {
                    granularity_seconds: granularity.unwrap_or(current.granularity_seconds),
                    minimum_seconds: minimum.unwrap_or(current.minimum_seconds),
                };
                let r: api::BillingRules = c.post("/v1/billing/rules", Some(&body), None).map_err(err)?;
                show(ctx, &r, text);
            }
        }
    }
    Ok(())
}

pub fn quote(ctx: &Ctx, body: &api::QuoteRequest) -> Res {
    let c = ctx.client(As::Tenant)?;
    let q: api::QuoteList = c.post("/v1/instances/quote", Some(body), None).map_err(|e| e.to_string())?;
    show(ctx, &q, |q| {
        let rows: Vec<Vec<String>> = q
            .quotes
            .iter()
            .map(|l| {
                vec![
                    l.region.clone(),
                    l.tier.to_string(),
                    l.price_per_hour.to_string(),
                    format!("{} s", l.duration_seconds),
                    l.estimated_cost.to_string(),
                ]
            })
            .collect();
        let notes: String =
            q.quotes.iter().filter_map(|l| l.note.as_ref().map(|n| format!("\n{}: {n}", l.region))).collect();
        format!(
            "dry run: nothing was created ({})\n{}{notes}",
            q.currency,
            table(&["REGION", "TIER", "PER HOUR", "FOR", "ESTIMATE"], &rows)
        )
    });
    Ok(())
}

fn this_month() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!("{:04}-{:02}", now.year(), u8::from(now.month()))
}

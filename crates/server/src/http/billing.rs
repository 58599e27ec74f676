use super::convert;
use super::error::ApiError;
use super::extract::{ApiJson, Auth};
use super::idempotency;
use crate::app::App;
use crate::app::billing::{UsageGrouping, month_start};
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use gpucloud_api::{
    Balance, BillingRules, CreditRequest, LedgerLine, LedgerList, Price, PriceList, Problem, QuoteLine, QuoteList,
    QuoteRequest, SetPriceRequest, UsageLine, UsageReport, parse_time, rfc3339,
};
use gpucloud_billing::{CURRENCY, EntryKind};
use gpucloud_model::{Money, Tier, Timestamp};
use serde::Deserialize;
use std::sync::Arc;

fn invalid(field: &str, detail: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, gpucloud_api::ProblemCode::InvalidRequest, detail).field(field)
}

fn price(p: gpucloud_store::PriceRow) -> Price {
    Price {
        gpu: p.model.to_string(),
        region: p.region.to_string(),
        tier: p.tier.into(),
        price_per_gpu_hour: p.point.per_gpu_hour,
        effective_from: rfc3339(p.point.effective_from),
    }
}

/// The price book: every on-demand and reserved price point, past and scheduled, and the spot
/// price in force (its history is at `/v1/spot/prices`).
#[utoipa::path(get, path = "/v1/prices", tag = "billing", responses((status = 200, body = PriceList)), security(("bearer" = [])))]
pub async fn list_prices(State(app): State<Arc<App>>, Auth(_): Auth) -> Result<Json<PriceList>, ApiError> {
    let now = app.now();
    let mut rows = app.list_prices().await?;
    // Rows come ordered by key then time: the spot point in force is the last one not in the future.
    let mut keep = vec![true; rows.len()];
    for i in 0..rows.len() {
        let r = &rows[i];
        if r.tier == Tier::Spot {
            let next_in_force = rows.get(i + 1).is_some_and(|n| {
                n.tier == r.tier && n.model == r.model && n.region == r.region && n.point.effective_from <= now
            });
            keep[i] = !next_in_force && r.point.effective_from <= now;
        }
    }
    let mut k = keep.into_iter();
    rows.retain(|_| k.next().unwrap_or(true));
    let prices = rows.into_iter().map(price).collect();
    Ok(Json(PriceList { currency: CURRENCY.into(), prices }))
}

/// Add a price point (operator). It applies from `effective_from`, never to the past.
#[utoipa::path(post, path = "/v1/prices", tag = "billing", request_body = SetPriceRequest,
    responses((status = 201, body = Price), (status = 409, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn set_price(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    ApiJson(req): ApiJson<SetPriceRequest>,
) -> Result<(StatusCode, Json<Price>), ApiError> {
    let tier = super::instances::tier_or_on_demand(req.tier);
    let from = match req.effective_from.as_deref() {
        Some(s) => {
            Some(parse_time(s).ok_or_else(|| invalid("effective_from", "effective_from must be an RFC 3339 time"))?)
        }
        None => None,
    };
    let row = app.set_price(Some(&p), req.gpu, req.region, tier, req.price_per_gpu_hour, from).await?;
    Ok((StatusCode::CREATED, Json(price(row))))
}

#[utoipa::path(get, path = "/v1/billing/rules", tag = "billing", responses((status = 200, body = BillingRules)), security(("bearer" = [])))]
pub async fn rules(State(app): State<Arc<App>>, Auth(_): Auth) -> Result<Json<BillingRules>, ApiError> {
    let r = app.billing_rules().await?;
    Ok(Json(BillingRules { granularity_seconds: r.granularity_s, minimum_seconds: r.minimum_s }))
}

/// Change granularity and minimum (operator); runs that already started keep their rules.
#[utoipa::path(post, path = "/v1/billing/rules", tag = "billing", request_body = BillingRules,
    responses((status = 200, body = BillingRules), (status = 422, body = Problem)), security(("bearer" = [])))]
pub async fn set_rules(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    ApiJson(req): ApiJson<BillingRules>,
) -> Result<Json<BillingRules>, ApiError> {
    let r = app.set_billing_rules(&p, req.granularity_seconds, req.minimum_seconds).await?;
    Ok(Json(BillingRules { granularity_seconds: r.granularity_s, minimum_seconds: r.minimum_s }))
}

/// What an instance would cost, per region, before creating it.
#[utoipa::path(post, path = "/v1/instances/quote", tag = "instances", request_body = QuoteRequest,
    responses((status = 200, body = QuoteList), (status = 422, body = Problem)), security(("bearer" = [])))]
pub async fn quote(
    State(app): State<Arc<App>>,
    Auth(_): Auth,
    ApiJson(req): ApiJson<QuoteRequest>,
) -> Result<Json<QuoteList>, ApiError> {
    let share = crate::app::resolve_share(req.gpu, req.count, req.gpu_share, req.gpu_memory_mib, req.mig.as_deref())?;
    let tier = super::instances::tier_or_on_demand(req.tier);
    let duration = req.duration_seconds.unwrap_or(3600);
    let quotes = app.quote(req.gpu, req.count, share, req.region, duration, tier, req.max_price_per_gpu_hour).await?;
    let quotes = quotes
        .into_iter()
        .map(|q| QuoteLine {
            max_price_per_gpu_hour: q.spot.map(|(bid, _)| bid),
            market_price_per_gpu_hour: q.spot.map(|(_, market)| market),
            note: q.spot.map(|(bid, market)| {
                if market > bid {
                    format!("the spot price ({market}) is above your bid: it would wait until the price falls")
                } else {
                    "the spot price now; it moves with demand, and you never pay above your bid".to_string()
                }
            }),
            region: q.region.to_string(),
            tier: q.tier.into(),
            price_per_hour: q.per_hour,
            duration_seconds: q.duration_s,
            billable_seconds: q.charge.seconds,
            estimated_cost: q.charge.amount,
        })
        .collect();
    Ok(Json(QuoteList { currency: CURRENCY.into(), quotes }))
}

/// Credit a tenant (operator): a grant, a paid top-up or an adjustment. Use an Idempotency-Key.
#[utoipa::path(post, path = "/v1/tenants/{id}/credits", tag = "billing", params(("id" = String, Path)), request_body = CreditRequest,
    responses((status = 201, body = LedgerLine), (status = 404, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn credit(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<CreditRequest>,
) -> Result<(StatusCode, Json<LedgerLine>), ApiError> {
    let kind = match req.kind.as_deref().unwrap_or("grant") {
        "grant" => EntryKind::Grant,
        "topup" => EntryKind::TopUp,
        "adjustment" => EntryKind::Adjustment,
        _ => return Err(invalid("kind", "kind is grant, topup or adjustment")),
    };
    let memo = req.memo.unwrap_or_else(|| kind.as_str().to_string());
    let line = app.add_credit(Some(&p), &id, kind, req.amount, &memo, idempotency::key_of(&headers)).await?;
    Ok((StatusCode::CREATED, Json(convert::ledger_line(line))))
}

/// The caller's prepaid balance, this month's usage and the current burn rate.
#[utoipa::path(get, path = "/v1/billing/balance", tag = "billing", responses((status = 200, body = Balance)), security(("bearer" = [])))]
pub async fn balance(State(app): State<Arc<App>>, Auth(p): Auth) -> Result<Json<Balance>, ApiError> {
    let b = app.balance(&p).await?;
    Ok(Json(Balance {
        tenant: p.tenant.id.to_string(),
        currency: CURRENCY.into(),
        balance: b.balance,
        month_usage: b.month_usage,
        burn_per_hour: b.burn_per_hour,
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct Range {
    /// RFC 3339 time, YYYY-MM-DD or YYYY-MM (UTC); default: start of this month.
    from: Option<String>,
    /// Exclusive; default: now.
    to: Option<String>,
    /// instance (default), model, day or project.
    by: Option<String>,
    /// Items per page: default 100, at most 1000.
    limit: Option<u32>,
    /// The `next` cursor of the previous page.
    after: Option<String>,
}

/// A range, its grouping, the page asked for, and the query the `next` link repeats.
type RangeQuery = (Timestamp, Timestamp, Option<String>, super::page::PageQuery, Vec<(&'static str, String)>);

fn range(app: &App, q: Result<Query<Range>, QueryRejection>) -> Result<RangeQuery, ApiError> {
    let Query(q) =
        q.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, gpucloud_api::ProblemCode::InvalidQuery, e.body_text()))?;
    let mut again = Vec::new();
    for (k, v) in [("from", &q.from), ("to", &q.to), ("by", &q.by)] {
        if let Some(v) = v {
            again.push((k, v.clone()));
        }
    }
    let now = app.now();
    let t = |v: Option<String>, field: &str, default: Timestamp| match v {
        Some(s) => {
            parse_time(&s).ok_or_else(|| invalid(field, format!("{field} must be RFC 3339, YYYY-MM-DD or YYYY-MM")))
        }
        None => Ok(default),
    };
    let from = t(q.from, "from", month_start(now))?;
    let to = t(q.to, "to", now.plus_millis(1))?;
    Ok((from, to, q.by, super::page::PageQuery { limit: q.limit, after: q.after }, again))
}

/// Usage charged between two times, by instance, GPU model, day or project (a project key: its
/// project's only).
#[utoipa::path(get, path = "/v1/billing/usage", tag = "billing", params(Range),
    responses((status = 200, body = UsageReport), (status = 422, body = Problem)), security(("bearer" = [])))]
pub async fn usage(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    q: Result<Query<Range>, QueryRejection>,
) -> Result<Json<UsageReport>, ApiError> {
    let (from, to, by, page, again) = range(&app, q)?;
    let by = by.unwrap_or_else(|| "instance".into());
    let grouping = match by.as_str() {
        "instance" => UsageGrouping::Instance,
        "model" => UsageGrouping::Model,
        "day" => UsageGrouping::Day,
        "project" => UsageGrouping::Project,
        _ => return Err(invalid("by", "by is instance, model, day or project")),
    };
    // A window left open at the end reaches now, however long the reading takes: what running
    // instances accrued since their last posting belongs to it.
    let open = !again.iter().any(|(k, _)| *k == "to");
    let lines = app.usage(&p, from, if open { Timestamp(i64::MAX) } else { to }, grouping).await?;
    let total = Money(lines.iter().map(|l| l.amount.micros()).sum());
    // Lines come ordered by their key (a BTreeMap); the key itself is the cursor, hex-encoded.
    let hex = |l: &crate::app::billing::UsageLine| l.key.bytes().map(|b| format!("{b:02x}")).collect::<String>();
    let (lines, next) =
        super::page::page(lines, hex, &page, super::page::MAX_LIMIT, false, "/v1/billing/usage", &again)?;
    Ok(Json(UsageReport {
        from: rfc3339(from),
        to: rfc3339(to),
        by,
        currency: CURRENCY.into(),
        total,
        lines: lines.into_iter().map(|l| UsageLine { key: l.key, seconds: l.seconds, amount: l.amount }).collect(),
        next,
    }))
}

/// The caller's ledger entries between two times.
#[utoipa::path(get, path = "/v1/billing/ledger", tag = "billing", params(Range),
    responses((status = 200, body = LedgerList)), security(("bearer" = [])))]
pub async fn ledger(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    q: Result<Query<Range>, QueryRejection>,
) -> Result<Json<LedgerList>, ApiError> {
    let (from, to, _, page, again) = range(&app, q)?;
    let all = app.ledger(&p, from, to).await?;
    let key = |l: &gpucloud_store::LedgerLine| super::page::key(l.created_at.0, &l.id);
    let (lines, next) =
        super::page::page(all, key, &page, super::page::MAX_LIMIT, false, "/v1/billing/ledger", &again)?;
    let entries = lines.into_iter().map(convert::ledger_line).collect();
    Ok(Json(LedgerList { currency: CURRENCY.into(), entries, next }))
}

/// The caller's closed invoices.
#[utoipa::path(get, path = "/v1/billing/invoices", tag = "billing", responses((status = 200, body = gpucloud_api::InvoiceList)), security(("bearer" = [])))]
pub async fn invoices(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    q: Result<Query<super::page::PageQuery>, QueryRejection>,
) -> Result<Json<gpucloud_api::InvoiceList>, ApiError> {
    let Query(q) = q.map_err(super::page::bad_query)?;
    let all = app.list_invoices(&p).await?;
    let key = |i: &gpucloud_store::StoredInvoice| i.month.clone();
    let (page, next) = super::page::page(all, key, &q, super::page::MAX_LIMIT, false, "/v1/billing/invoices", &[])?;
    let invoices = page
        .into_iter()
        .map(|i| gpucloud_api::InvoiceSummary { month: i.month, usage_total: i.total, closed_at: rfc3339(i.closed_at) })
        .collect();
    Ok(Json(gpucloud_api::InvoiceList { invoices, next }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct InvoiceFormat {
    /// json (default), csv or html.
    format: Option<String>,
}

/// One month's invoice: issued and immutable once the month is over, a live draft before.
#[utoipa::path(get, path = "/v1/billing/invoices/{month}", tag = "billing",
    params(("month" = String, Path, description = "YYYY-MM"), InvoiceFormat),
    responses((status = 200, description = "The invoice as JSON (gpucloud_billing::Invoice), CSV or HTML"), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn invoice(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    Path(month): Path<String>,
    q: Result<Query<InvoiceFormat>, QueryRejection>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let Query(q) =
        q.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, gpucloud_api::ProblemCode::InvalidQuery, e.body_text()))?;
    let inv = app.invoice(&p, &month).await?;
    let (ct, body) = match q.format.as_deref().unwrap_or("json") {
        "json" => ("application/json", serde_json::to_string_pretty(&inv).unwrap_or_default()),
        "csv" => ("text/csv; charset=utf-8", inv.to_csv()),
        "html" => ("text/html; charset=utf-8", inv.to_html()),
        _ => return Err(invalid("format", "format is json, csv or html")),
    };
    Ok(([(axum::http::header::CONTENT_TYPE, ct)], body).into_response())
}

/// Close an ended month's invoices for every tenant now (operator; also done automatically).
#[utoipa::path(post, path = "/v1/billing/invoices/close", tag = "billing", request_body = gpucloud_api::CloseMonthRequest,
    responses((status = 200, body = gpucloud_api::CloseMonthResult), (status = 422, body = Problem)), security(("bearer" = [])))]
pub async fn close_month(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    ApiJson(req): ApiJson<gpucloud_api::CloseMonthRequest>,
) -> Result<Json<gpucloud_api::CloseMonthResult>, ApiError> {
    let closed = app.close_month(Some(&p), &req.month).await?;
    Ok(Json(gpucloud_api::CloseMonthResult { month: req.month, closed }))
}

/// A tenant's budget; its webhook secret only for that tenant's own admin and billing keys (`own`
/// the caller).
fn budget(
    own: Option<&crate::app::Principal>,
    b: gpucloud_store::TenantBilling,
    month_usage: Money,
) -> gpucloud_api::Budget {
    let show_secret = own.is_some_and(|p| {
        matches!(p.scope, gpucloud_store::KeyScope::Admin | gpucloud_store::KeyScope::Billing)
            && p.tenant.id == b.tenant_id
    });
    gpucloud_api::Budget {
        monthly_limit: b.monthly_budget,
        thresholds: b.thresholds,
        action: match b.action {
            gpucloud_store::BudgetAction::Notify => gpucloud_api::BudgetAction::Notify,
            gpucloud_store::BudgetAction::CheckpointAndStop => gpucloud_api::BudgetAction::CheckpointAndStop,
        },
        webhook_url: b.webhook_url,
        webhook_secret: b.webhook_secret.filter(|_| show_secret),
        prepaid: b.prepaid,
        billing_mode: if b.prepaid { "prepaid" } else { "postpaid" }.to_string(),
        credit_limit: b.credit_limit.filter(|_| !b.prepaid),
        month_usage,
    }
}

/// The caller's monthly budget and this month's usage against it.
#[utoipa::path(get, path = "/v1/billing/budget", tag = "billing", responses((status = 200, body = gpucloud_api::Budget)), security(("bearer" = [])))]
pub async fn get_budget(State(app): State<Arc<App>>, Auth(p): Auth) -> Result<Json<gpucloud_api::Budget>, ApiError> {
    let (b, used) = app.tenant_billing(&p).await?;
    Ok(Json(budget(Some(&p), b, used)))
}

/// Set the caller's monthly budget: alert thresholds, the action at the cap, a webhook.
#[utoipa::path(post, path = "/v1/billing/budget", tag = "billing", request_body = gpucloud_api::BudgetRequest,
    responses((status = 200, body = gpucloud_api::Budget), (status = 422, body = Problem)), security(("bearer" = [])))]
pub async fn set_budget(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    ApiJson(req): ApiJson<gpucloud_api::BudgetRequest>,
) -> Result<Json<gpucloud_api::Budget>, ApiError> {
    app.set_budget(
        &p,
        req.monthly_limit,
        req.thresholds,
        req.action.map(gpucloud_api::BudgetAction::as_str),
        req.webhook_url,
    )
    .await?;
    let (b, used) = app.tenant_billing(&p).await?;
    Ok(Json(budget(Some(&p), b, used)))
}

/// Make a tenant prepaid or invoiced (operator).
#[utoipa::path(post, path = "/v1/tenants/{id}/billing", tag = "billing", params(("id" = String, Path)),
    request_body = gpucloud_api::TenantBillingRequest,
    responses((status = 200, body = gpucloud_api::Budget), (status = 404, body = Problem)), security(("bearer" = [])))]
pub async fn set_tenant_billing(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<gpucloud_api::TenantBillingRequest>,
) -> Result<Json<gpucloud_api::Budget>, ApiError> {
    let prepaid = crate::app::billing_mode(req.billing_mode.as_deref(), req.prepaid)?;
    let b = app.set_billing_mode(&p, &id, prepaid, req.credit_limit).await?;
    Ok(Json(budget(None, b, Money::ZERO)))
}

/// Check the whole cloud's billing (operator): every interval recomputed from the instance's
/// state history and the price book; any second charged twice or lost, any charge above a spot
/// bid, any unbalanced entry is listed.
#[utoipa::path(get, path = "/v1/admin/billing/check", tag = "billing",
    responses((status = 200, body = gpucloud_api::BillingCheck), (status = 403, body = Problem)), security(("bearer" = [])))]
pub async fn check_billing(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
) -> Result<Json<gpucloud_api::BillingCheck>, ApiError> {
    let c = app.check_billing(&p).await?;
    Ok(Json(gpucloud_api::BillingCheck {
        instances: c.instances,
        intervals: c.intervals,
        ledger_entries: c.ledger_entries,
        billed_seconds: c.billed_seconds,
        charged: c.charged,
        problems: c.problems,
    }))
}

/// Alerts raised for the caller: budget thresholds, instances stopped for money or as idle, idle
/// instances, failed or hot GPUs under its instances, lost nodes (the operator: the whole fleet).
#[utoipa::path(get, path = "/v1/alerts", tag = "monitoring", responses((status = 200, body = gpucloud_api::AlertList)), security(("bearer" = [])))]
pub async fn alerts(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    q: Result<Query<super::page::PageQuery>, QueryRejection>,
) -> Result<Json<gpucloud_api::AlertList>, ApiError> {
    let Query(q) = q.map_err(super::page::bad_query)?;
    let mut all = app.list_alerts(&p).await?;
    all.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    let key = |a: &gpucloud_store::Alert| super::page::key(a.created_at.0, &a.id);
    let (page, next) = super::page::page(all, key, &q, super::page::MAX_LIMIT, false, "/v1/alerts", &[])?;
    let alerts = page
        .into_iter()
        .map(|a| gpucloud_api::Alert { id: a.id, kind: a.kind, message: a.message, created_at: rfc3339(a.created_at) })
        .collect();
    Ok(Json(gpucloud_api::AlertList { alerts, next }))
}

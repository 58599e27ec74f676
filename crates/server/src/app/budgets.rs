//! Budgets, prepaid guard rails and alerts. A reconciler after each metering pass: it raises each
//! alert once (a dedupe key per threshold per month, per stop) and stops what must stop through
//! the ordinary stop path, so workloads get their stop notice and nothing is deleted.

use super::billing::Books;
use super::{App, AppError, Principal, random_bits};
use gpucloud_model::{InstanceState, Money, TenantId, UserAction};
use gpucloud_store::{Alert, BudgetAction, TenantBilling};
use std::collections::HashMap;

/// A prepaid tenant's instances stop when the balance would not cover this much more running.
const PREPAID_RESERVE_MS: i64 = 60_000;

impl App {
    pub async fn tenant_billing(&self, by: &Principal) -> Result<(TenantBilling, Money), AppError> {
        by.require_org_money("budget")?;
        let settings = self.store.tenant_billing(&by.tenant.id).await?;
        Ok((settings, self.month_usage(&by.tenant.id, self.now()).await?))
    }

    pub async fn set_budget(
        &self,
        by: &Principal,
        monthly_limit: Option<Money>,
        thresholds: Option<Vec<u32>>,
        action: Option<&str>,
        webhook_url: Option<String>,
    ) -> Result<TenantBilling, AppError> {
        if monthly_limit.is_some_and(|m| m <= Money::ZERO) {
            return Err(AppError::invalid("monthly_limit", "a budget is a positive amount (null removes it)"));
        }
        let mut thresholds = thresholds.unwrap_or_else(|| vec![50, 80, 100]);
        thresholds.sort_unstable();
        thresholds.dedup();
        if thresholds.len() > 10 || thresholds.iter().any(|t| !(1..=1000).contains(t)) {
            return Err(AppError::invalid("thresholds", "up to 10 percentages between 1 and 1000"));
        }
        let action = match action {
            None => BudgetAction::Notify,
            Some(a) => a.parse().map_err(|_| AppError::invalid("action", "action is notify or checkpoint-and-stop"))?,
        };
        if let Some(url) = &webhook_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() > 2000 {
                return Err(AppError::invalid("webhook_url", "webhook_url must be an http:// or https:// URL"));
            }
            super::outbound::check_url(url, &self.config.webhook_allow)
                .await
                .map_err(|why| AppError::invalid("webhook_url", why))?;
        }
        let mut settings = self.store.tenant_billing(&by.tenant.id).await?;
        if webhook_url.is_some() && settings.webhook_secret.is_none() {
            settings.webhook_secret = Some(format!("whsec_{:032x}", random_bits()));
        }
        settings.monthly_budget = monthly_limit;
        settings.thresholds = thresholds;
        settings.action = action;
        settings.webhook_url = webhook_url;
        self.store.set_tenant_billing(&settings).await?;
        Ok(settings)
    }

    /// Operator: whether a tenant pays in advance (its instances stop before its balance goes
    /// negative) or is invoiced afterwards, up to an optional credit limit.
    pub async fn set_billing_mode(
        &self,
        by: &Principal,
        tenant: &str,
        prepaid: bool,
        credit_limit: Option<Money>,
    ) -> Result<TenantBilling, AppError> {
        by.require_operator()?;
        check_credit_limit(prepaid, credit_limit)?;
        let (_, mut settings) = self.tenant_with_billing(by, tenant).await?;
        settings.prepaid = prepaid;
        settings.credit_limit = credit_limit;
        self.store.set_tenant_billing(&settings).await?;
        Ok(settings)
    }

    /// Operator: a tenant and its billing settings.
    pub async fn tenant_with_billing(
        &self,
        by: &Principal,
        tenant: &str,
    ) -> Result<(gpucloud_store::Tenant, TenantBilling), AppError> {
        by.require_operator()?;
        let not_found = || AppError::NotFound { kind: "tenant", id: tenant.to_string() };
        let tid = TenantId::parse(tenant).map_err(|_| not_found())?;
        let t = self.store.get_tenant(&tid).await?.ok_or_else(not_found)?;
        Ok((t, self.store.tenant_billing(&tid).await?))
    }

    pub async fn list_alerts(&self, by: &Principal) -> Result<Vec<Alert>, AppError> {
        Ok(self.store.list_alerts(&by.tenant.id).await?)
    }

    /// Refuses new work a tenant cannot pay for: an empty prepaid balance, a postpaid tenant at
    /// its credit limit, or a spent budget whose action stops instances.
    pub(crate) async fn check_can_spend(&self, tenant: &TenantId) -> Result<(), AppError> {
        self.check_can_afford(tenant, Money::ZERO, Money::ZERO).await
    }

    /// Refuses (402, saying how much is missing) new work whose first charge the tenant cannot
    /// cover: `minimum` is what starting it bills at once, `per_hour` what it burns. A prepaid
    /// tenant (or a postpaid one with a credit limit) must also keep a minute's reserve for all
    /// it runs, or the new work would be stopped as soon as it started; a budget that stops
    /// instances must have `minimum` left this month. A notify-only budget never refuses.
    pub(crate) async fn check_can_afford(
        &self,
        tenant: &TenantId,
        minimum: Money,
        per_hour: Money,
    ) -> Result<(), AppError> {
        let settings = self.store.tenant_billing(tenant).await?;
        let now = self.now();
        let limit = match (settings.prepaid, settings.credit_limit) {
            (true, _) => Some(Money::ZERO),
            (false, Some(l)) => Some(l),
            (false, None) => None,
        };
        let stops = settings.monthly_budget.is_some() && settings.action == BudgetAction::CheckpointAndStop;
        if limit.is_none() && !stops {
            return Ok(());
        }
        let books = self.books(tenant, now).await?;
        let accrual = books.accrual;
        if let Some(limit) = limit {
            let available = books.balance().micros() + limit.micros();
            let burn = accrual.burn_per_hour().micros() + per_hour.micros();
            let reserve = (i128::from(burn) * i128::from(PREPAID_RESERVE_MS) / 3_600_000) as i64;
            let need = minimum.micros() + reserve;
            let what = if settings.prepaid { "the prepaid balance" } else { "the balance within the credit limit" };
            if available <= 0 || available < need {
                return Err(AppError::PaymentRequired(format!(
                    "{what} is {} and this needs {} ({} billed at start and a minute's reserve of {} for all that runs): {} missing; {}",
                    Money(available),
                    Money(need),
                    minimum,
                    Money(reserve),
                    Money(need - available.min(need)).max(Money(1)),
                    if settings.prepaid { "ask for a top-up" } else { "pay the balance or ask for a higher limit" },
                )));
            }
        }
        if let (Some(budget), BudgetAction::CheckpointAndStop) = (settings.monthly_budget, settings.action) {
            let used = books.month_usage();
            let left = budget.micros() - used.micros();
            if left <= 0 {
                return Err(AppError::PaymentRequired(format!("this month's budget of {budget} is spent")));
            }
            if left < minimum.micros() {
                return Err(AppError::PaymentRequired(format!(
                    "this month's budget of {budget} has {} left and this bills {} at start: {} missing",
                    Money(left),
                    minimum,
                    Money(minimum.micros() - left)
                )));
            }
        }
        Ok(())
    }

    /// What starting `milli_gpus` of `model` bills at once (the minimum charge) and burns per
    /// hour, at the highest current price among the regions it may land in; a spot bid caps it.
    pub(crate) async fn start_cost(
        &self,
        model: gpucloud_model::GpuModel,
        milli_gpus: u32,
        tier: gpucloud_model::Tier,
        max_price: Option<Money>,
        region: Option<&gpucloud_model::Region>,
    ) -> Result<(Money, Money), AppError> {
        if tier == gpucloud_model::Tier::Reserved {
            return Ok((Money::ZERO, Money::ZERO));
        }
        let now = self.now();
        let regions = match region {
            Some(r) => vec![r.clone()],
            None => self.store.list_regions().await?,
        };
        let mut price = Money::ZERO;
        for r in regions {
            let points = self.store.prices_for(model, &r, tier).await?;
            price = price.max(gpucloud_billing::price_at(&points, now).unwrap_or(Money::ZERO));
        }
        if let Some(cap) = max_price.filter(|_| tier == gpucloud_model::Tier::Spot) {
            price = price.min(cap);
        }
        let rules = self.store.billing_rules().await?;
        let minimum = gpucloud_billing::Usage { started_at: now, free_until: None, milli_gpus, rules, price_cap: None }
            .due(now.plus_millis(1), &[gpucloud_billing::PricePoint { effective_from: now, per_gpu_hour: price }])
            .amount;
        let per_hour = Money((i128::from(price.micros()) * i128::from(milli_gpus) / 1000) as i64);
        Ok((minimum, per_hour))
    }

    /// One pass over every tenant with a budget, a prepaid balance or a credit limit.
    ///
    /// The fleet's books are read whole: every tenant's posted totals, then everything not yet
    /// posted (intervals, volumes, reservations) in one read each, then the totals again. A
    /// tenant whose totals moved in between had a posting land amid the reads (its charge could
    /// count twice or not at all), so its books are read again on their own, as `books` does.
    /// At a thousand tenants this is five reads instead of about eight per tenant.
    pub async fn enforce_budgets(&self) -> Result<usize, AppError> {
        use super::billing::{PriceCache, Unposted};
        use super::volumes::StoragePrices;
        let now = self.now();
        let guarded = self.store.guarded_tenants().await?;
        if guarded.is_empty() {
            return Ok(0);
        }
        let month = gpucloud_store::year_month(now);
        let before = self.store.tenant_totals(month).await?;
        let mut unposted: HashMap<TenantId, Unposted> =
            guarded.iter().map(|b| (b.tenant_id.clone(), Unposted::default())).collect();
        for u in self.store.unsettled_intervals().await? {
            if let Some(t) = unposted.get_mut(&u.tenant_id) {
                t.intervals.push(u);
            }
        }
        for v in self.store.unsettled_volumes().await? {
            if let Some(t) = unposted.get_mut(&v.tenant_id) {
                t.volumes.push(v);
            }
        }
        for r in self.store.list_reservations(None).await? {
            if let Some(t) = unposted.get_mut(&r.tenant_id) {
                t.reservations.push(r);
            }
        }
        let after = self.store.tenant_totals(month).await?;
        let (mut prices, mut storage_prices) = (PriceCache::default(), StoragePrices::default());
        let mut stopped = 0;
        for b in guarded {
            let totals = after.get(&b.tenant_id).copied().unwrap_or_default();
            let books = if before.get(&b.tenant_id).copied().unwrap_or_default() == totals {
                let mine = unposted.remove(&b.tenant_id).unwrap_or_default();
                let accrual = self.accrual_of(&mine, &mut prices, &mut storage_prices, now).await?;
                Books { posted_balance: totals.balance, posted_month: totals.month_usage, accrual }
            } else {
                self.books(&b.tenant_id, now).await?
            };
            stopped += self.enforce_tenant(b, &books, now).await?;
        }
        Ok(stopped)
    }

    async fn enforce_tenant(
        &self,
        b: TenantBilling,
        books: &Books,
        now: gpucloud_model::Timestamp,
    ) -> Result<usize, AppError> {
        let month = super::invoices::month_of(now);
        let mut stopped = 0;
        let tenant = &b.tenant_id;
        if let Some(limit) = b.monthly_budget {
            let used = books.month_usage();
            for t in &b.thresholds {
                if i128::from(used.micros()) * 100 >= i128::from(limit.micros()) * i128::from(*t) {
                    let message = format!("{used} used this month: {t}% of the {limit} budget reached");
                    self.alert(&b, "budget", &format!("budget:{tenant}:{month}:{t}"), message).await?;
                }
            }
            if used >= limit && b.action == BudgetAction::CheckpointAndStop {
                stopped += self.stop_all(&b, &format!("this month's budget of {limit} is spent")).await?;
            }
        }
        let floor = match (b.prepaid, b.credit_limit) {
            (true, _) => Some(Money::ZERO),
            (false, Some(l)) => Some(l),
            (false, None) => None,
        };
        if let Some(floor) = floor {
            let balance = books.balance();
            let burn = books.accrual.burn;
            let reserve = burn * i128::from(PREPAID_RESERVE_MS) / 3_600_000;
            // Strictly under, as at create: a balance that was let in with exactly the reserve
            // left after its start charge keeps running until it is spent into that reserve.
            if burn > 0 && i128::from(balance.micros()) + i128::from(floor.micros()) < reserve {
                let why = if b.prepaid {
                    format!("the prepaid balance ({balance}) is nearly spent")
                } else {
                    format!("the balance ({balance}) reached the credit limit of {floor}")
                };
                stopped += self.stop_all(&b, &why).await?;
            }
        }
        Ok(stopped)
    }

    async fn stop_all(&self, b: &TenantBilling, why: &str) -> Result<usize, AppError> {
        let mut n = 0;
        for inst in self.store.list_instances(Some(&b.tenant_id)).await? {
            let active =
                matches!(inst.state, InstanceState::Pending | InstanceState::Provisioning | InstanceState::Running);
            if !active {
                continue;
            }
            let key = format!("stop:{}:{}", inst.id, inst.generation);
            let id = inst.id.clone();
            self.transition(inst, |i| i.state.on_user(i.stop_target, UserAction::Stop).map_err(AppError::from)).await?;
            self.store.set_status_reason(&id, Some(&format!("stopped by billing: {why}"))).await?;
            self.alert(b, "instance_stopped", &key, format!("instance {id} stopped: {why}")).await?;
            n += 1;
        }
        Ok(n)
    }

    pub(crate) async fn alert(
        &self,
        b: &TenantBilling,
        kind: &str,
        key: &str,
        message: String,
    ) -> Result<(), AppError> {
        let alert = Alert {
            id: format!("a-{:032x}", random_bits()),
            tenant_id: b.tenant_id.clone(),
            kind: kind.to_string(),
            message,
            dedupe_key: key.to_string(),
            created_at: self.now(),
        };
        if self.store.raise_alert(&alert).await? {
            tracing::warn!(tenant = %alert.tenant_id, kind, message = %alert.message, "alert");
            if let Some(url) = b.webhook_url.clone() {
                let secret = b.webhook_secret.clone().unwrap_or_default();
                send_webhook(url, secret, self.config.webhook_allow.clone(), &alert);
            }
        }
        Ok(())
    }
}

/// Best effort, off the reconciler's path: a slow or dead receiver never delays billing. The
/// host is resolved and checked again at sending (its addresses may have changed since the URL
/// was set), and the request is signed with the tenant's secret.
fn send_webhook(url: String, secret: String, allow: Vec<super::outbound::Net>, alert: &Alert) {
    let body = serde_json::json!({
        "id": alert.id, "tenant": alert.tenant_id.to_string(), "kind": alert.kind,
        "message": alert.message, "created_at": gpucloud_api::rfc3339(alert.created_at),
    })
    .to_string();
    let signature = super::outbound::signature(&secret, alert.created_at.0.div_euclid(1000), body.as_bytes());
    tokio::spawn(async move {
        if let Err(why) = super::outbound::check_url(&url, &allow).await {
            return tracing::warn!(url, %why, "alert webhook not sent");
        }
        let sent = tokio::task::spawn_blocking(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .timeout_global(Some(std::time::Duration::from_secs(5)))
                // A redirect could lead anywhere the check above refused.
                .max_redirects(0)
                .build()
                .into();
            agent
                .post(&url)
                .header("Content-Type", "application/json")
                .header("Gpucloud-Signature", &signature)
                .send(body.as_bytes())
                .map(|_| ())
                .map_err(|e| (url, e))
        })
        .await;
        if let Ok(Err((url, e))) = sent {
            tracing::warn!(url, error = %e, "alert webhook failed");
        }
    });
}

/// `prepaid` or `postpaid` (or the older `prepaid: bool`); postpaid when neither is given.
pub fn billing_mode(mode: Option<&str>, prepaid: Option<bool>) -> Result<bool, AppError> {
    match (mode, prepaid) {
        (Some("prepaid"), None | Some(true)) => Ok(true),
        (Some("postpaid"), None | Some(false)) => Ok(false),
        (Some(m @ ("prepaid" | "postpaid")), Some(_)) => {
            Err(AppError::invalid("prepaid", format!("prepaid contradicts billing_mode '{m}'")))
        }
        (Some(other), _) => {
            Err(AppError::invalid("billing_mode", format!("billing_mode is prepaid or postpaid, not '{other}'")))
        }
        (None, p) => Ok(p.unwrap_or(false)),
    }
}

pub fn check_credit_limit(prepaid: bool, limit: Option<Money>) -> Result<(), AppError> {
    match limit {
        Some(_) if prepaid => Err(AppError::invalid(
            "credit_limit",
            "a credit limit is for postpaid tenants; a prepaid tenant spends only its balance",
        )),
        Some(l) if l < Money::ZERO => Err(AppError::invalid("credit_limit", "a credit limit cannot be negative")),
        _ => Ok(()),
    }
}

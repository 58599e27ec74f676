//! Money over HTTP: prices, quotes, credit, live metering, exact charges, a balanced ledger.

mod common;

use common::TestServer;
use gpucloud_billing::{PricePoint, charge};
use gpucloud_model::{Money, Timestamp};
use serde_json::{Value, json};
use std::time::Duration;

fn money(v: &Value) -> Money {
    v.as_str().unwrap().parse().unwrap()
}

#[test]
fn credit_meter_and_settle_to_the_micro_unit() {
    // Virtual time: the test moves the clock by exact seconds instead of sleeping them.
    let s = TestServer::start_virtual();
    let op = s.operator_key.clone();
    let key = s.tenant("acme");
    let me = s.get(&key, "/v1/whoami").body["tenant"]["id"].as_str().unwrap().to_string();

    // A retried grant credits once.
    let grant = serde_json::to_vec(&json!({"amount": "50.00", "memo": "welcome"})).unwrap();
    let headers = [("Content-Type", "application/json"), ("Idempotency-Key", "grant-1")];
    for _ in 0..2 {
        let r = s.raw("POST", &format!("/v1/tenants/{me}/credits"), Some(&op), &headers, Some(&grant));
        assert_eq!(r.status, 201, "{:?}", r.body);
    }
    assert_eq!(money(&s.get(&key, "/v1/billing/balance").body["balance"]), Money(50_000_000));

    // Per-second billing without a minimum, so the test sees every second.
    let r = s.post(&op, "/v1/billing/rules", Some(&json!({"granularity_seconds": 1, "minimum_seconds": 0})));
    assert_eq!(r.status, 200, "{:?}", r.body);

    let inst = s.create(&key, "T4", 2, Some("eu-1"));
    let id = inst["id"].as_str().unwrap().to_string();
    s.wait_state(&key, &id, "running");
    s.advance(Duration::from_millis(1500));
    let mid = common::poll("charged while running", || {
        let b = s.get(&key, "/v1/billing/balance").body;
        (money(&b["balance"]) < Money(50_000_000)).then_some(b)
    });
    assert_eq!(money(&mid["burn_per_hour"]), Money(700_000), "2 x T4 at 0.35");
    // The usage report of a window open at the end always holds what runs (it used to drop the
    // accrual whenever the reading took a millisecond).
    for _ in 0..20 {
        let u = s.get(&key, "/v1/billing/usage?by=instance&from=1970-01-01").body;
        assert!(u["lines"].as_array().unwrap().iter().any(|l| l["key"] == json!(id)), "{u}");
    }
    s.advance(Duration::from_millis(1100));
    common::poll("usage grows each second", || {
        let later = s.get(&key, "/v1/billing/balance").body;
        (money(&later["balance"]) < money(&mid["balance"])).then_some(())
    });

    s.post(&key, &format!("/v1/instances/{id}/stop"), None);
    s.wait_state(&key, &id, "stopped");
    // Once metering has settled the closed interval, nothing more moves however long passes.
    let tid = gpucloud_model::TenantId::parse(&me).unwrap();
    let store = s.app.store().clone();
    let intervals = common::poll("the interval settled", || {
        let (store, tid) = (store.clone(), tid.clone());
        let all = s.block_on(async move { store.intervals_of_tenant(&tid).await.unwrap() });
        all.iter().all(|u| u.settled).then_some(all)
    });
    let settled = money(&s.get(&key, "/v1/billing/balance").body["balance"]);
    s.advance(Duration::from_secs(3600));
    s.block_on(s.app.meter()).unwrap();
    assert_eq!(money(&s.get(&key, "/v1/billing/balance").body["balance"]), settled, "a stopped instance costs nothing");

    // The charge equals what the pure billing code computes from the recorded interval: on a
    // virtual clock it ran exactly the 2.6 s the test moved it, billed as 3 whole seconds.
    assert_eq!(intervals.len(), 1);
    let u = &intervals[0];
    let end = u.ended_at.expect("closed");
    let points = [PricePoint { effective_from: Timestamp(0), per_gpu_hour: Money(350_000) }];
    let expected = charge(u.started_at, end.millis_since(u.started_at), 2000, &points, u.rules);
    assert_eq!((end.millis_since(u.started_at), expected.seconds), (2600, 3));
    assert_eq!((u.charged, u.charged_seconds, u.settled), (expected.amount, expected.seconds, true));
    assert_eq!(settled, Money(50_000_000 - expected.amount.micros()));

    let usage = s.get(&key, "/v1/billing/usage?by=instance").body;
    assert_eq!(usage["lines"][0]["key"], json!(id));
    assert_eq!(usage["lines"][0]["seconds"], json!(expected.seconds));
    assert_eq!(money(&usage["total"]), expected.amount);
    let by_model = s.get(&key, "/v1/billing/usage?by=model").body;
    assert_eq!(by_model["lines"][0]["key"], "T4");

    // The books balance.
    let store = s.app.store().clone();
    let totals = s.block_on(async move { store.ledger_totals().await.unwrap() });
    assert_eq!(totals, vec![("USD".to_string(), Money::ZERO)]);
}

#[test]
fn quotes_and_price_book() {
    let s = TestServer::start();
    let op = s.operator_key.clone();
    let key = s.tenant("acme");
    let q = s.post(
        &key,
        "/v1/instances/quote",
        Some(&json!({"gpu": "A100-40GB", "count": 2, "region": "eu-1", "duration_seconds": 36000})),
    );
    assert_eq!(q.status, 200, "{:?}", q.body);
    assert_eq!(money(&q.body["quotes"][0]["price_per_hour"]), Money(3_200_000));
    assert_eq!(money(&q.body["quotes"][0]["estimated_cost"]), Money(32_000_000));
    // A quarter of a GPU costs a quarter of its price.
    let slice = s.post(
        &key,
        "/v1/instances/quote",
        Some(&json!({"gpu": "A100-40GB", "count": 1, "region": "eu-1", "duration_seconds": 36000, "gpu_share": 25})),
    );
    assert_eq!(money(&slice.body["quotes"][0]["price_per_hour"]), Money(400_000), "{:?}", slice.body);
    assert_eq!(money(&slice.body["quotes"][0]["estimated_cost"]), Money(4_000_000));
    let bad = s.post(&key, "/v1/instances/quote", Some(&json!({"gpu": "A100-40GB", "count": 2, "gpu_share": 25})));
    assert_eq!((bad.status, bad.body["field"].as_str()), (422, Some("count")));
    let any = s.post(&key, "/v1/instances/quote", Some(&json!({"gpu": "A100-40GB", "count": 1})));
    assert_eq!(any.body["quotes"].as_array().unwrap().len(), 2, "both regions carry A100s");
    let short = s.post(&key, "/v1/instances/quote", Some(&json!({"gpu": "T4", "count": 1, "duration_seconds": 10})));
    assert_eq!(short.body["quotes"][0]["billable_seconds"], 60, "the 60 s minimum");

    // Prices apply from now on, never to the past; only operators set them.
    let future = s.post(&op, "/v1/prices", Some(&json!({"gpu": "T4", "region": "eu-1", "price_per_gpu_hour": "0.40", "effective_from": "2999-01-01T00:00:00Z"})));
    assert_eq!(future.status, 201, "{:?}", future.body);
    let past = s.post(&op, "/v1/prices", Some(&json!({"gpu": "T4", "region": "eu-1", "price_per_gpu_hour": "0.10", "effective_from": "2020-01-01T00:00:00Z"})));
    assert_eq!((past.status, past.body["field"].as_str()), (422, Some("effective_from")));
    assert_eq!(
        s.post(&key, "/v1/prices", Some(&json!({"gpu": "T4", "region": "eu-1", "price_per_gpu_hour": "0"}))).status,
        403
    );
    let bad = s.post(&op, "/v1/prices", Some(&json!({"gpu": "T4", "region": "eu-1", "price_per_gpu_hour": 0.4})));
    assert_eq!(
        (bad.status, bad.body["field"].as_str()),
        (422, Some("price_per_gpu_hour")),
        "money is a decimal string"
    );
    let list = s.get(&key, "/v1/prices").body;
    assert!(list["prices"].as_array().unwrap().iter().any(|p| p["effective_from"] == "2999-01-01T00:00:00Z"));

    let rules = s.post(&op, "/v1/billing/rules", Some(&json!({"granularity_seconds": 0, "minimum_seconds": 60})));
    assert_eq!((rules.status, rules.body["field"].as_str()), (422, Some("granularity_seconds")));
    let me = s.get(&key, "/v1/whoami").body["tenant"]["id"].as_str().unwrap().to_string();
    let neg = s.post(&op, &format!("/v1/tenants/{me}/credits"), Some(&json!({"amount": "-5"})));
    assert_eq!((neg.status, neg.body["field"].as_str()), (422, Some("amount")));
    assert_eq!(s.post(&op, "/v1/tenants/t-nobody/credits", Some(&json!({"amount": "5"}))).status, 404);
    assert_eq!(s.post(&key, &format!("/v1/tenants/{me}/credits"), Some(&json!({"amount": "5"}))).status, 403);
    assert_eq!(s.get(&key, "/v1/billing/usage?by=week").status, 422);
    assert_eq!(s.get(&key, "/v1/billing/usage?colour=red").status, 400);
    assert_eq!(s.get(&key, "/v1/billing/usage?from=yesterday").status, 422);
}

#[test]
fn invoices_close_once_and_render() {
    let s = TestServer::start();
    let op = s.operator_key.clone();
    let key = s.tenant("acme");
    let me = s.get(&key, "/v1/whoami").body["tenant"]["id"].as_str().unwrap().to_string();
    s.post(&op, &format!("/v1/tenants/{me}/credits"), Some(&json!({"amount": "20", "kind": "topup", "memo": "card"})));
    let id = s.create(&key, "A100-40GB", 1, Some("eu-1"))["id"].as_str().unwrap().to_string();
    s.wait_state(&key, &id, "running");

    let now = time::OffsetDateTime::now_utc();
    let this = format!("{:04}-{:02}", now.year(), u8::from(now.month()));
    let draft = common::poll("usage on the draft", || {
        let d = s.get(&key, &format!("/v1/billing/invoices/{this}")).body;
        (d["lines"][0]["instance"].is_string() && money(&d["usage_total"]) > Money::ZERO).then_some(d)
    });
    assert_eq!(draft["status"], "open");
    assert_eq!(draft["lines"][0]["instance"], json!(id));
    assert_eq!(draft["credits"][0]["amount"], "20.000000");
    let usage = money(&draft["usage_total"]);
    assert!(usage > Money::ZERO);
    assert_eq!(money(&draft["closing_balance"]), Money(20_000_000 - usage.micros()));

    let csv = s.raw("GET", &format!("/v1/billing/invoices/{this}?format=csv"), Some(&key), &[], None).body;
    let csv = csv.as_str().unwrap();
    assert!(csv.starts_with("section,description") && csv.contains(&id), "{csv}");
    let html = s.raw("GET", &format!("/v1/billing/invoices/{this}?format=html"), Some(&key), &[], None).body;
    assert!(html.as_str().unwrap().contains("<h1>Invoice"));

    // The running month cannot be closed; the last one can, once, and then stays as issued.
    let r = s.post(&op, "/v1/billing/invoices/close", Some(&json!({"month": this})));
    assert_eq!((r.status, r.body["field"].as_str()), (422, Some("month")));
    let last_day = now.date().replace_day(1).unwrap().previous_day().unwrap();
    let last = format!("{:04}-{:02}", last_day.year(), u8::from(last_day.month()));
    let first = s.post(&op, "/v1/billing/invoices/close", Some(&json!({"month": last})));
    assert_eq!(first.status, 200, "{:?}", first.body);
    assert_eq!(s.post(&op, "/v1/billing/invoices/close", Some(&json!({"month": last}))).body["closed"], 0);
    let closed = s.get(&key, &format!("/v1/billing/invoices/{last}")).body;
    assert_eq!((closed["status"].as_str(), closed["month"].as_str()), (Some("closed"), Some(last.as_str())));
    assert!(
        s.get(&key, "/v1/billing/invoices").body["invoices"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["month"] == json!(last))
    );
    assert_eq!(s.get(&key, "/v1/billing/invoices/2026-13").status, 422);
    assert_eq!(s.get(&key, "/v1/billing/invoices/2999-01").status, 422);
    assert_eq!(s.get(&key, &format!("/v1/billing/invoices/{this}?format=pdf")).status, 422);
    assert_eq!(s.post(&key, "/v1/billing/invoices/close", Some(&json!({"month": last}))).status, 403);
}

/// A one-request HTTP receiver on port 0 that records the bodies it gets.
fn webhook_sink() -> (String, std::sync::mpsc::Receiver<String>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming().take(20) {
            let Ok(mut conn) = conn else { continue };
            conn.set_read_timeout(Some(Duration::from_secs(2))).ok();
            // Read the whole request: headers, then as many body bytes as Content-Length says.
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let len = text
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string())
                        })
                        .and_then(|v| v.parse::<usize>().ok())
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + len {
                        break;
                    }
                }
                match conn.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let text = String::from_utf8_lossy(&buf).to_string();
            let _ = conn.write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n");
            let _ = tx.send(text);
        }
    });
    (url, rx)
}

#[test]
fn a_spent_budget_alerts_and_stops_instances() {
    // The test's receiver is on loopback, which only an operator's allow-list opens.
    let s = TestServer::start_with(|c| c.webhook_allow = vec!["127.0.0.1/32".parse().unwrap()]);
    let key = s.tenant("acme");
    let (hook, received) = webhook_sink();
    let id = s.create(&key, "T4", 1, Some("eu-1"))["id"].as_str().unwrap().to_string();
    s.wait_state(&key, &id, "running");
    // A budget smaller than the first minute's charge, set while the instance runs.
    let body = json!({"monthly_limit": "0.0001", "action": "checkpoint-and-stop", "webhook_url": hook});
    let r = s.post(&key, "/v1/billing/budget", Some(&body));
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["thresholds"], json!([50, 80, 100]));
    let secret = r.body["webhook_secret"].as_str().expect("the tenant gets its signing secret").to_string();
    assert!(secret.starts_with("whsec_"), "{secret}");
    let stopped = s.wait_state(&key, &id, "stopped");
    let reason = stopped["reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("stopped by billing") && reason.contains("budget"), "{stopped}");
    assert_eq!(stopped["gpus"], json!([]), "stopped, not deleted: it can start again later");
    let alerts = s.get(&key, "/v1/alerts").body["alerts"].as_array().unwrap().clone();
    let kinds: Vec<&str> = alerts.iter().map(|a| a["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "budget").count(), 3, "50, 80 and 100%, once each: {alerts:?}");
    assert!(kinds.contains(&"instance_stopped"));
    let first = received.recv_timeout(Duration::from_secs(5)).expect("webhook called");
    assert!(first.starts_with("POST /hook") && first.contains("\"kind\""), "{first}");
    // The receiver can verify the request: HMAC-SHA256 of "t.body" under the tenant's secret.
    let header = first
        .lines()
        .find_map(|l| l.to_ascii_lowercase().starts_with("gpucloud-signature:").then(|| l[19..].trim().to_string()))
        .expect("a signed request");
    let (t, v1) = header.split_once(",v1=").unwrap();
    let t: i64 = t.strip_prefix("t=").unwrap().parse().unwrap();
    let body = &first[first.find("\r\n\r\n").unwrap() + 4..];
    assert_eq!(gpucloud_server::app::outbound::signature(&secret, t, body.as_bytes()), header);
    assert_eq!(v1.len(), 64);

    let again = s.post(&key, "/v1/instances", Some(&json!({"gpu": "T4", "count": 1, "command": "x"})));
    assert_eq!((again.status, again.body["code"].as_str()), (402, Some("payment_required")));
    assert_eq!(s.post(&key, &format!("/v1/instances/{id}/start"), None).status, 402);

    // A budget with room left, but less than a new instance's first minute, refuses it and says
    // how much is missing: the minimum never overshoots a budget that stops instances.
    let used = money(&s.get(&key, "/v1/billing/budget").body["month_usage"]);
    let limit = Money(used.micros() + 1_000);
    let body = json!({"monthly_limit": limit.to_string(), "action": "checkpoint-and-stop"});
    assert_eq!(s.post(&key, "/v1/billing/budget", Some(&body)).status, 200);
    let r = s.post(&key, "/v1/instances", Some(&json!({"gpu": "T4", "count": 1, "command": "x"})));
    let detail = r.body["detail"].as_str().unwrap_or_default().to_string();
    assert_eq!(r.status, 402, "{:?}", r.body);
    assert!(detail.contains("0.001000 left") && detail.contains("0.004833 missing"), "{detail}");

    for (body, field) in [
        (json!({"monthly_limit": "0"}), "monthly_limit"),
        (json!({"monthly_limit": "5", "thresholds": [0]}), "thresholds"),
        (json!({"monthly_limit": "5", "action": "explode"}), "action"),
        (json!({"monthly_limit": "5", "webhook_url": "ftp://x"}), "webhook_url"),
    ] {
        let r = s.post(&key, "/v1/billing/budget", Some(&body));
        assert_eq!((r.status, r.body["field"].as_str()), (422, Some(field)), "{body}");
    }
}

#[test]
fn prepaid_instances_stop_before_the_balance_goes_negative() {
    let s = TestServer::start();
    let op = s.operator_key.clone();
    let key = s.tenant("acme");
    let me = s.get(&key, "/v1/whoami").body["tenant"]["id"].as_str().unwrap().to_string();
    let r = s.post(&op, &format!("/v1/tenants/{me}/billing"), Some(&json!({"prepaid": true})));
    assert_eq!((r.status, r.body["prepaid"].as_bool()), (200, Some(true)));
    let empty = s.post(&key, "/v1/instances", Some(&json!({"gpu": "T4", "count": 1, "command": "x"})));
    assert_eq!(empty.status, 402, "no credit, no instance");

    // Enough for the first minute's minimum charge, not for a minute's reserve beside it: the
    // create is refused before anything runs, and the answer says how much is missing.
    s.post(&op, &format!("/v1/tenants/{me}/credits"), Some(&json!({"amount": "0.01"})));
    let short = s.post(&key, "/v1/instances", Some(&json!({"gpu": "T4", "count": 1, "command": "x"})));
    let detail = short.body["detail"].as_str().unwrap_or_default();
    assert_eq!(short.status, 402, "{:?}", short.body);
    assert!(detail.contains("0.001666 missing"), "{detail}");
    assert_eq!(money(&s.get(&key, "/v1/billing/balance").body["balance"]), Money(10_000), "nothing charged");

    // With the minimum and the reserve covered it runs; once the balance would not cover the
    // reserve it stops, before the balance goes negative.
    s.post(&op, &format!("/v1/tenants/{me}/credits"), Some(&json!({"amount": "0.001666"})));
    let id = s.create(&key, "T4", 1, Some("eu-1"))["id"].as_str().unwrap().to_string();
    s.wait_state(&key, &id, "running");
    let take = json!({"amount": "-0.0001", "kind": "adjustment"});
    assert_eq!(s.post(&op, &format!("/v1/tenants/{me}/credits"), Some(&take)).status, 201);
    let stopped = s.wait_state(&key, &id, "stopped");
    assert!(stopped["reason"].as_str().unwrap_or_default().contains("prepaid balance"), "{stopped}");
    let balance = common::poll("the stopped instance settled", || {
        let b = s.get(&key, "/v1/billing/balance").body;
        (b["burn_per_hour"] == json!("0.000000")).then(|| money(&b["balance"]))
    });
    let events = s.get(&key, &format!("/v1/instances/{id}/events")).body;
    let usage = s.get(&key, "/v1/billing/usage?by=instance").body;
    assert!(balance >= Money::ZERO, "never negative: {balance}; {events}; {usage}");
    assert_eq!(balance, Money(11_666 - 100 - 5_833), "charged the 60 s minimum of 0.35/h exactly");
    let alerts = s.get(&key, "/v1/alerts").body;
    assert!(alerts["alerts"][0]["message"].as_str().unwrap().contains("prepaid balance"), "{alerts}");
}

#[test]
fn webhooks_to_internal_addresses_are_refused_naming_the_rule() {
    let s = TestServer::start();
    let key = s.tenant("acme");
    for (url, rule) in [
        ("http://127.0.0.1:9000/hook", "loopback"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://10.0.0.1/hook", "private"),
        ("http://[::1]:8080/", "loopback"),
        ("http://[::ffff:10.0.0.1]/", "private"),
        ("http://localhost:7080/v1/tenants", "loopback"),
    ] {
        let r = s.post(&key, "/v1/billing/budget", Some(&json!({"monthly_limit": "5", "webhook_url": url})));
        assert_eq!((r.status, r.body["field"].as_str()), (422, Some("webhook_url")), "{url}: {:?}", r.body);
        let detail = r.body["detail"].as_str().unwrap();
        assert!(detail.contains(rule) && detail.contains("--webhook-allow"), "{url}: {detail}");
    }
    assert_eq!(s.get(&key, "/v1/billing/budget").body["webhook_url"], json!(null), "nothing was stored");
}

#[test]
fn a_restart_within_the_first_minute_pays_the_minimum_once() {
    let s = TestServer::start();
    let key = s.tenant("acme");
    let id = s.create(&key, "T4", 1, Some("eu-1"))["id"].as_str().unwrap().to_string();
    for action in ["stop", "start", "stop"] {
        s.wait_state(&key, &id, if action == "stop" { "running" } else { "stopped" });
        assert_eq!(s.post(&key, &format!("/v1/instances/{id}/{action}"), None).status, 200, "{action}");
    }
    s.wait_state(&key, &id, "stopped");
    let iid = gpucloud_model::InstanceId::parse(&id).unwrap();
    let tenant = s.block_on(s.app.store().get_instance(None, &iid)).unwrap().unwrap().tenant_id;
    let runs = common::poll("both runs settled", || {
        let all = s.block_on(s.app.store().intervals_of_tenant(&tenant)).unwrap();
        (all.len() == 2 && all.iter().all(|u| u.settled)).then_some(all)
    });
    assert_eq!(runs[0].charged_seconds, 60, "the first run pays the minimum");
    assert_eq!(runs[1].free_until, Some(runs[0].started_at.plus_millis(60_000)), "{runs:?}");
    assert_eq!((runs[1].rules.minimum_s, runs[1].charged_seconds), (0, 0), "the second runs on the paid minute");
    let usage = s.get(&key, "/v1/billing/usage?by=instance").body;
    assert_eq!(usage["lines"][0]["seconds"], 60, "{usage}");
    assert_eq!(money(&s.get(&key, "/v1/billing/balance").body["balance"]), Money(-5_833));
}

#[test]
fn a_tenants_billing_mode_is_chosen_at_creation_and_shown() {
    let s = TestServer::start();
    let op = s.operator_key.clone();
    let r = s.post(&op, "/v1/tenants", Some(&json!({"name": "pre", "billing_mode": "prepaid"})));
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["tenant"]["billing"], json!({"mode": "prepaid", "credit_limit": null}));
    let pre = r.body["api_key"].as_str().unwrap().to_string();
    let pre_id = r.body["tenant"]["id"].as_str().unwrap().to_string();
    let shown = s.get(&op, &format!("/v1/tenants/{pre_id}"));
    assert_eq!((shown.status, &shown.body["billing"]["mode"]), (200, &json!("prepaid")));
    assert_eq!(s.get(&pre, &format!("/v1/tenants/{pre_id}")).status, 403, "operators only");
    let r = s.post(&pre, "/v1/instances", Some(&json!({"gpu": "T4", "count": 1, "command": "x"})));
    assert_eq!(r.status, 402, "a new prepaid tenant has nothing to spend: {:?}", r.body);

    let r = s.post(&op, "/v1/tenants", Some(&json!({"name": "post", "credit_limit": "0.001"})));
    assert_eq!(r.body["tenant"]["billing"], json!({"mode": "postpaid", "credit_limit": "0.001000"}), "{:?}", r.body);
    let post = r.body["api_key"].as_str().unwrap().to_string();
    let post_id = r.body["tenant"]["id"].as_str().unwrap().to_string();
    let r = s.post(&post, "/v1/instances", Some(&json!({"gpu": "T4", "count": 1, "command": "x"})));
    let detail = r.body["detail"].as_str().unwrap_or_default();
    assert_eq!(r.status, 402, "{:?}", r.body);
    assert!(detail.contains("credit limit") && detail.contains("missing"), "{detail}");
    // Switching it to postpaid without a limit lets it run.
    let r = s.post(&op, &format!("/v1/tenants/{post_id}/billing"), Some(&json!({"billing_mode": "postpaid"})));
    assert_eq!((r.status, r.body["billing_mode"].as_str()), (200, Some("postpaid")), "{:?}", r.body);
    assert_eq!(s.post(&post, "/v1/instances", Some(&json!({"gpu": "T4", "count": 1, "command": "x"}))).status, 201);
    let list = s.get(&op, "/v1/tenants").body;
    let modes: Vec<&str> =
        list["tenants"].as_array().unwrap().iter().map(|t| t["billing"]["mode"].as_str().unwrap()).collect();
    assert!(modes.contains(&"prepaid") && modes.contains(&"postpaid"), "{list}");

    for (body, field) in [
        (json!({"name": "x1", "billing_mode": "prepaid", "credit_limit": "5"}), "credit_limit"),
        (json!({"name": "x2", "billing_mode": "later"}), "billing_mode"),
        (json!({"name": "x3", "credit_limit": "-1"}), "credit_limit"),
    ] {
        let r = s.post(&op, "/v1/tenants", Some(&body));
        assert_eq!((r.status, r.body["field"].as_str()), (422, Some(field)), "{body}: {:?}", r.body);
    }
    let names: Vec<String> = s.get(&op, "/v1/tenants").body["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    assert!(!names.iter().any(|n| n.starts_with('x')), "a refused create makes no tenant: {names:?}");
}

#[test]
fn a_reservation_accrues_by_the_second_between_its_postings() {
    let s = TestServer::start();
    let lab = s.tenant("lab");
    let later = (time::OffsetDateTime::now_utc() + time::Duration::hours(3))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let body = json!({"tenant": "lab", "gpu": "A100-40GB", "region": "us-1", "gpus": 2, "ends_at": later,
        "price_per_gpu_hour": "1.00"});
    let r = s.post(&s.operator_key, "/v1/reservations", Some(&body));
    assert_eq!(r.status, 201, "{:?}", r.body);
    // Its hourly period has not ended, so the ledger holds nothing yet; the balance, the
    // month's usage and the invoice draft move anyway.
    let first = money(&s.get(&lab, "/v1/billing/balance").body["balance"]);
    let moved = common::poll("the balance moves mid-period", || {
        let b = money(&s.get(&lab, "/v1/billing/balance").body["balance"]);
        (b < first).then_some(b)
    });
    assert!(moved < Money::ZERO && moved > Money(-2_000_000), "2 GPUs at 1.00/h for seconds: {moved}");
    let ledger = s.get(&lab, "/v1/billing/ledger").body;
    assert_eq!(ledger["entries"], json!([]), "{ledger}");
    let month = time::OffsetDateTime::now_utc().format(&time::macros::format_description!("[year]-[month]")).unwrap();
    let invoice = s.get(&lab, &format!("/v1/billing/invoices/{month}")).body;
    assert!(money(&invoice["usage_total"]) > Money::ZERO, "{invoice}");
}

/// Follows `next` from `path`, gathering `field`: every item once, in order.
fn all_pages(s: &TestServer, key: &str, path: &str, field: &str) -> (Vec<Value>, usize) {
    let (mut items, mut pages, mut next) = (Vec::new(), 0, Some(path.to_string()));
    while let Some(p) = next {
        let r = s.get(key, &p);
        assert_eq!(r.status, 200, "{p}: {:?}", r.body);
        items.extend(r.body[field].as_array().unwrap().iter().cloned());
        next = r.body["next"].as_str().map(str::to_string);
        pages += 1;
    }
    (items, pages)
}

#[test]
fn lists_come_in_pages_that_follow_next() {
    let s = TestServer::start();
    let key = s.tenant("acme");
    let me = s.get(&key, "/v1/whoami").body["tenant"]["id"].as_str().unwrap().to_string();
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(s.create(&key, "T4", 1, None)["id"].as_str().unwrap().to_string());
    }
    let other = s.tenant("globex");
    s.create(&other, "T4", 1, None);
    let (items, pages) = all_pages(&s, &key, "/v1/instances?limit=2", "instances");
    let got: Vec<&str> = items.iter().map(|i| i["id"].as_str().unwrap()).collect();
    assert_eq!((got, pages), (ids.iter().map(String::as_str).collect(), 3), "oldest first, each once");
    let (theirs, _) = all_pages(&s, &other, "/v1/instances?limit=1", "instances");
    assert_eq!(theirs.len(), 1, "another tenant's list holds only its own");
    let whole = s.get(&key, "/v1/instances").body;
    assert_eq!((whole["instances"].as_array().unwrap().len(), &whole["next"]), (5, &json!(null)));

    for k in 0..4 {
        let body = json!({"amount": "1.00", "memo": format!("grant {k}")});
        assert_eq!(s.post(&s.operator_key, &format!("/v1/tenants/{me}/credits"), Some(&body)).status, 201);
    }
    let (entries, pages) = all_pages(&s, &key, "/v1/billing/ledger?limit=3&from=2000-01", "entries");
    assert_eq!((entries.len(), pages), (4, 2));
    let memos: Vec<&str> = entries.iter().map(|e| e["memo"].as_str().unwrap()).collect();
    assert_eq!(memos, ["grant 0", "grant 1", "grant 2", "grant 3"]);
    let first = s.get(&key, "/v1/billing/ledger?limit=3&from=2000-01").body;
    assert!(first["next"].as_str().unwrap().contains("from=2000-01"), "the next link keeps the range: {first}");

    let id = &ids[0];
    let (events, _) = all_pages(&s, &key, &format!("/v1/instances/{id}/events?limit=1"), "events");
    assert_eq!(events[0]["to"], "pending");
    for path in [
        "/v1/instances?limit=0",
        "/v1/instances?limit=1001",
        "/v1/alerts?after=no%20such",
        "/v1/billing/ledger?limit=0",
        // The instance list reads its page from the store by the cursor: one it did not make
        // is named, not read as some other place in the list.
        "/v1/instances?after=garbage",
        "/v1/instances?after=000000000000001.",
        "/v1/instances?after=12.i-abc",
        "/v1/instances?after=00000000000000x.i-abc",
    ] {
        let r = s.get(&key, path);
        assert_eq!(r.status, 422, "{path}: {:?}", r.body);
    }
    assert_eq!(s.get(&key, "/v1/instances?page=2").status, 400, "an unknown parameter is named");
}

#[test]
fn a_node_of_an_unpriced_model_is_priced_from_the_default_book_when_the_server_says_so() {
    let register = |s: &TestServer| {
        let body = json!({"name": "ap-host", "region": "ap-1",
            "gpus": [{"index": 0, "model": "L4", "uuid": "GPU-ap-host-0"}]});
        let r = s.post(&s.operator_key, "/v1/agent/register", Some(&body));
        assert_eq!(r.status, 201, "{:?}", r.body);
    };
    let l4_in_ap = |s: &TestServer, key: &str| -> Vec<(String, String)> {
        let list = s.get(key, "/v1/prices").body;
        list["prices"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["gpu"] == "L4" && p["region"] == "ap-1")
            .map(|p| (p["tier"].as_str().unwrap().to_string(), p["price_per_gpu_hour"].as_str().unwrap().to_string()))
            .collect()
    };

    // As serve runs: the first L4 node in ap-1 brings the default book's L4 prices and a storage price.
    let s = TestServer::start_with(|c| c.default_prices = true);
    let key = s.tenant("acme");
    register(&s);
    let mut prices = l4_in_ap(&s, &key);
    prices.sort();
    assert!(prices.contains(&("on-demand".into(), "0.800000".into())), "{prices:?}");
    assert!(prices.contains(&("reserved".into(), "0.520000".into())), "{prices:?}");
    let q = s.post(&key, "/v1/instances/quote", Some(&json!({"gpu": "L4", "count": 1, "region": "ap-1"})));
    assert_eq!(q.body["quotes"][0]["price_per_hour"], "0.800000", "{:?}", q.body);
    let storage = s.get(&key, "/v1/prices/storage").body;
    assert!(storage["prices"].as_array().unwrap().iter().any(|p| p["region"] == "ap-1"), "{storage}");
    // An operator's price stays: a second node of the model changes nothing.
    let set = json!({"gpu": "L4", "region": "ap-1", "price_per_gpu_hour": "0.90"});
    assert_eq!(s.post(&s.operator_key, "/v1/prices", Some(&set)).status, 201);
    register(&s);
    let q = s.post(&key, "/v1/instances/quote", Some(&json!({"gpu": "L4", "count": 1, "region": "ap-1"})));
    assert_eq!(q.body["quotes"][0]["price_per_hour"], "0.900000", "{:?}", q.body);
    // A price of 0 is taken, and listed as usage nobody pays for.
    let free = json!({"gpu": "L4", "region": "ap-1", "price_per_gpu_hour": "0"});
    assert_eq!(s.post(&s.operator_key, "/v1/prices", Some(&free)).status, 201);
    let zero = s.block_on(s.app.zero_prices_in_force()).unwrap();
    assert_eq!(zero, vec!["L4 on-demand in ap-1".to_string()]);

    // Without the setting, the model stays unpriced: no quote.
    let s = TestServer::start();
    let key = s.tenant("acme");
    register(&s);
    assert_eq!(l4_in_ap(&s, &key), Vec::<(String, String)>::new());
    let q = s.post(&key, "/v1/instances/quote", Some(&json!({"gpu": "L4", "count": 1, "region": "ap-1"})));
    assert_eq!((q.status, q.body["field"].as_str()), (422, Some("gpu")), "{:?}", q.body);
}

/// A posting point with more running instances than one metering pass posts goes out in passes
/// run back to back, not one a metering period apart: here the period is an hour, so only the
/// passes that follow the first on their own post all five.
#[test]
fn a_posting_point_goes_out_in_passes_back_to_back() {
    let s = TestServer::start_with(|c| {
        c.clock = gpucloud_server::app::Clock::virtual_now();
        c.metering_interval = Duration::from_secs(3600);
        c.posting_period = Duration::from_secs(1);
        c.postings_per_pass = 2;
    });
    let key = s.tenant("lab");
    let ids: Vec<String> = (0..5).map(|_| s.create(&key, "T4", 1, None)["id"].as_str().unwrap().to_string()).collect();
    common::poll("all five running", || {
        ids.iter().all(|id| s.get(&key, &format!("/v1/instances/{id}")).body["state"] == "running").then_some(())
    });
    s.advance(Duration::from_secs(1));
    let now = s.app.now().millis();
    let point = Timestamp(now - now.rem_euclid(1000));
    let left = || s.block_on(s.app.store().intervals_to_post(point, 100)).unwrap().len();
    assert_eq!(left(), 5, "nothing is posted before the pass");
    assert_eq!(s.post(&s.operator_key, "/v1/admin/tasks/metering/run", None).status, 202);
    common::poll("every interval posted through the point", || (left() == 0).then_some(()));
    let ledger = s.get(&key, "/v1/billing/ledger").body;
    let usage = ledger["entries"].as_array().unwrap().iter().filter(|e| e["kind"] == "usage").count();
    assert_eq!(usage, 5, "one entry an instance: {ledger}");
}

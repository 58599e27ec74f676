//! The spot market over HTTP: bad requests are named 4xx, a bid the price passes is noticed and
//! stopped at its deadline, a bid under the price waits, and the operator's preemption switch.

mod common;

use common::TestServer;
use serde_json::json;
use std::time::Duration;

fn fast_market() -> TestServer {
    TestServer::start_with(|c| {
        c.market.notice = Duration::from_millis(1500);
        c.market.min_notice = Duration::from_secs(1);
        c.market.price_interval = Duration::from_millis(100);
        c.market.min_runtime = Duration::ZERO;
    })
}

#[test]
fn market_requests_are_checked() {
    let s = TestServer::start();
    let key = s.tenant("acme");
    let other = s.tenant("other");
    let bad = |key: &str, path: &str, body: serde_json::Value, status: u16, field: &str| {
        let r = s.post(key, path, Some(&body));
        assert_eq!(r.status, status, "{path} {body}: {:?}", r.body);
        if !field.is_empty() {
            assert_eq!(r.body["field"], field, "{:?}", r.body);
        }
        r
    };
    let inst = |extra: serde_json::Value| {
        let mut b = json!({"gpu": "A100-40GB", "count": 1, "command": "sleep 1"});
        b.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        b
    };
    bad(&key, "/v1/instances", inst(json!({"tier": "gold"})), 422, "tier");
    let r = bad(&key, "/v1/instances", inst(json!({"tier": "reserved"})), 422, "tier");
    assert!(r.body["detail"].as_str().unwrap().contains("reservation"), "{:?}", r.body);
    bad(&key, "/v1/instances", inst(json!({"max_price_per_gpu_hour": "1.00"})), 422, "max_price_per_gpu_hour");
    bad(
        &key,
        "/v1/instances",
        inst(json!({"tier": "spot", "max_price_per_gpu_hour": "-1"})),
        422,
        "max_price_per_gpu_hour",
    );
    bad(
        &key,
        "/v1/instances",
        inst(json!({"tier": "spot", "max_price_per_gpu_hour": "0"})),
        422,
        "max_price_per_gpu_hour",
    );

    let job = |extra: serde_json::Value| {
        let mut b = json!({"gpus": ["A100-40GB"], "count": 1, "command": "sleep 1"});
        b.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        b
    };
    bad(&key, "/v1/jobs", job(json!({"gpus": []})), 422, "gpus");
    bad(&key, "/v1/jobs", job(json!({"count": 0})), 422, "count");
    bad(&key, "/v1/jobs", job(json!({"command": "  "})), 422, "command");
    bad(&key, "/v1/jobs", job(json!({"regions": ["mars-1"]})), 422, "regions");
    bad(&key, "/v1/jobs", job(json!({"max_restarts": 5000})), 422, "max_restarts");
    bad(&key, "/v1/jobs", job(json!({"gpus": ["Z80"]})), 422, "");
    bad(&key, "/v1/jobs", job(json!({"retries": 3})), 422, "");

    for (q, status) in [
        ("gpu=Z80&region=eu-1", 422),
        ("gpu=A100-40GB&region=EU%201", 422),
        ("gpu=A100-40GB&region=eu-1&since=yesterday", 422),
        ("region=eu-1", 400),
        ("gpu=H200-141GB&region=mars-1", 404),
    ] {
        let r = s.get(&key, &format!("/v1/spot/prices?{q}"));
        assert_eq!(r.status, status, "{q}: {:?}", r.body);
    }

    // A dry run quotes spot at the market price in force, capped at the bid, and says when
    // the bid is under it.
    let market = s.get(&key, "/v1/spot/prices?gpu=A100-40GB&region=eu-1").body["current_per_gpu_hour"]
        .as_str()
        .expect("a seeded spot price")
        .to_string();
    let quote = |body: serde_json::Value| s.post(&key, "/v1/instances/quote", Some(&body));
    let q = quote(json!({"gpu": "A100-40GB", "count": 2, "region": "eu-1", "tier": "spot"}));
    assert_eq!(q.status, 200, "{:?}", q.body);
    let line = &q.body["quotes"][0];
    assert_eq!(
        (line["tier"].as_str(), line["market_price_per_gpu_hour"].as_str()),
        (Some("spot"), Some(market.as_str()))
    );
    let per_gpu: gpucloud_model::Money = market.parse().unwrap();
    assert_eq!(
        line["price_per_hour"].as_str().unwrap().parse::<gpucloud_model::Money>().unwrap().micros(),
        2 * per_gpu.micros()
    );
    let od = quote(json!({"gpu": "A100-40GB", "count": 2, "region": "eu-1"}));
    assert_eq!(od.body["quotes"][0]["tier"], "on-demand");
    assert_ne!(od.body["quotes"][0]["price_per_hour"], line["price_per_hour"], "spot is not the on-demand price");
    let low = quote(
        json!({"gpu": "A100-40GB", "count": 1, "region": "eu-1", "tier": "spot", "max_price_per_gpu_hour": "0.000001"}),
    );
    assert_eq!(low.status, 200, "{:?}", low.body);
    assert_eq!(low.body["quotes"][0]["price_per_hour"], "0.000001", "never above the bid");
    assert!(low.body["quotes"][0]["note"].as_str().unwrap().contains("above your bid"), "{:?}", low.body);
    for (body, field) in [
        (json!({"gpu": "A100-40GB", "count": 1, "tier": "reserved"}), "tier"),
        (json!({"gpu": "A100-40GB", "count": 1, "tier": "gold"}), "tier"),
        (json!({"gpu": "A100-40GB", "count": 1, "max_price_per_gpu_hour": "1.00"}), "max_price_per_gpu_hour"),
        (
            json!({"gpu": "A100-40GB", "count": 1, "tier": "spot", "max_price_per_gpu_hour": "0"}),
            "max_price_per_gpu_hour",
        ),
    ] {
        let r = quote(body.clone());
        assert_eq!((r.status, r.body["field"].as_str()), (422, Some(field)), "{body}: {:?}", r.body);
    }

    let spot = s.post(&key, "/v1/instances", Some(&inst(json!({"tier": "spot"}))));
    assert_eq!(spot.status, 201, "{:?}", spot.body);
    let id = spot.body["id"].as_str().unwrap().to_string();
    s.wait_for(&key, &id, "running", |v| v["state"] == "running");
    let preempt = |who: &str, id: &str, body: serde_json::Value| {
        s.post(who, &format!("/v1/admin/instances/{id}/preempt"), Some(&body))
    };
    assert_eq!(preempt(&key, &id, json!({})).status, 403, "tenants cannot preempt");
    assert_eq!(preempt(&s.operator_key, "i-nosuch", json!({})).status, 404);
    let r = preempt(&s.operator_key, &id, json!({"notice_seconds": 5}));
    assert_eq!((r.status, r.body["field"].as_str()), (422, Some("notice_seconds")), "under the 30 s minimum");
    let od = s.create(&key, "A100-40GB", 1, None);
    let r = preempt(&s.operator_key, od["id"].as_str().unwrap(), json!({}));
    assert_eq!(r.status, 409, "on-demand is never preempted: {:?}", r.body);
    let r = preempt(&s.operator_key, &id, json!({"notice_seconds": 60}));
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["preemption"]["reason"], "simulated by the operator");
    assert_eq!(preempt(&s.operator_key, &id, json!({})).status, 409, "one notice per run");
    // The in-process agent carries it to the node: the deadline is then set.
    let v = s.wait_for(&key, &id, "delivered", |v| v["preemption"]["deadline"].is_string());
    assert_eq!(v["preemption"]["notice_seconds"], 60.0);

    // Jobs are the tenant's own.
    let r = s.post(&key, "/v1/jobs", Some(&job(json!({"on_demand_after_seconds": 60}))));
    assert_eq!(r.status, 201, "{:?}", r.body);
    let jid = r.body["id"].as_str().unwrap().to_string();
    assert_eq!(s.get(&other, &format!("/v1/jobs/{jid}")).status, 404);
    assert_eq!(s.post(&other, &format!("/v1/jobs/{jid}/cancel"), None).status, 404);
    assert_eq!(s.get(&key, "/v1/jobs/not-a-job").status, 404);
    let cancelled = s.post(&key, &format!("/v1/jobs/{jid}/cancel"), None);
    assert_eq!((cancelled.status, cancelled.body["state"].as_str()), (200, Some("cancelled")), "{:?}", cancelled.body);
}

#[test]
fn a_bid_the_price_passes_is_noticed_then_stopped() {
    let s = fast_market();
    let key = s.tenant("acme");
    let body = json!({"gpu": "A100-40GB", "count": 1, "region": "eu-1", "command": "sleep 1000",
        "tier": "spot", "max_price_per_gpu_hour": "0.90"});
    let r = s.post(&key, "/v1/instances", Some(&body));
    assert_eq!(r.status, 201, "{:?}", r.body);
    let id = r.body["id"].as_str().unwrap().to_string();
    s.wait_for(&key, &id, "running", |v| v["state"] == "running");

    // The operator moves the spot price above the bid (the market then smooths from there).
    let r = s.post(
        &s.operator_key,
        "/v1/prices",
        Some(&json!({"gpu": "A100-40GB", "region": "eu-1", "tier": "spot", "price_per_gpu_hour": "1.50"})),
    );
    assert_eq!(r.status, 201, "{:?}", r.body);
    let v = s.wait_for(&key, &id, "noticed", |v| v["preemption"].is_object());
    let reason = v["preemption"]["reason"].as_str().unwrap();
    assert!(reason.contains("above this instance's max price 0.900000"), "{reason}");
    let v = s.wait_for(&key, &id, "stopped at the deadline", |v| v["state"] == "stopped");
    assert!(v["reason"].as_str().unwrap().starts_with("preempted: the spot price"), "{v}");

    // The bid is a ceiling: the notice's seconds, priced above it by the market, are billed at it.
    let iid = gpucloud_model::InstanceId::parse(&id).unwrap();
    let tenant = s.block_on(s.app.store().get_instance(None, &iid)).unwrap().unwrap().tenant_id;
    let u = common::poll("the spot interval settled", || {
        let all = s.block_on(s.app.store().intervals_of_tenant(&tenant)).unwrap();
        all.into_iter().find(|u| u.instance_id == iid && u.settled)
    });
    let bid = gpucloud_model::Money(900_000);
    assert_eq!(u.price_cap, Some(bid));
    let prices = s.block_on(s.app.store().prices_for(u.model, &u.region, u.tier)).unwrap();
    let end = u.ended_at.unwrap();
    let market = gpucloud_billing::charge(u.started_at, end.millis_since(u.started_at), 1000, &prices, u.rules);
    let at_bid = gpucloud_billing::charge(
        u.started_at,
        end.millis_since(u.started_at),
        1000,
        &[gpucloud_billing::PricePoint { effective_from: u.started_at, per_gpu_hour: bid }],
        u.rules,
    );
    assert!(u.charged <= at_bid.amount, "{} charged, {} at the bid", u.charged, at_bid.amount);
    assert!(u.charged < market.amount, "{} charged, {} at the market", u.charged, market.amount);
    let check = s.get(&s.operator_key, "/v1/admin/billing/check");
    assert_eq!(check.status, 200, "{:?}", check.body);
    assert_eq!(check.body["problems"], json!([]), "{}", check.body);
    assert_eq!(s.get(&key, "/v1/admin/billing/check").status, 403, "operators only");

    // A new bid under the price waits, and says why.
    let r = s.post(&key, "/v1/instances", Some(&body));
    let waiting = r.body["id"].as_str().unwrap().to_string();
    let v = s.wait_for(&key, &waiting, "priced out", |v| {
        v["pending_reason"].as_str().is_some_and(|r| r.contains("max price"))
    });
    assert_eq!(v["state"], "pending");

    let h = s.get(&key, "/v1/spot/prices?gpu=A100-40GB&region=eu-1");
    assert_eq!(h.status, 200, "{:?}", h.body);
    assert_eq!(h.body["on_demand_per_gpu_hour"], "1.600000");
    assert_eq!(h.body["floor_per_gpu_hour"], "0.400000");
    let points = h.body["points"].as_array().unwrap();
    assert!(points.len() >= 2, "the seeded price and the operator's at least: {points:?}");
    let prices = s.get(&key, "/v1/prices").body;
    let spot_rows = prices["prices"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["tier"] == "spot" && p["gpu"] == "A100-40GB" && p["region"] == "eu-1")
        .count();
    assert_eq!(spot_rows, 1, "the price book shows the spot price in force, not its history");
}

#[test]
fn reserved_capacity_is_kept_lent_as_spot_and_taken_back() {
    let s = TestServer::start_with(|c| {
        c.market.notice = Duration::from_secs(1);
        c.market.min_notice = Duration::from_secs(1);
        c.market.price_interval = Duration::from_millis(100);
        // Long: the owner's claim must not wait for it (only for the notice).
        c.market.min_runtime = Duration::from_secs(600);
        c.market.reservation_period = Duration::from_secs(1);
    });
    let lab = s.tenant("lab");
    let acme = s.tenant("acme");
    let now = time::OffsetDateTime::now_utc();
    let later = (now + time::Duration::hours(1)).format(&time::format_description::well_known::Rfc3339).unwrap();
    let sell = |tenant: &str, gpus: u32| {
        s.post(
            &s.operator_key,
            "/v1/reservations",
            Some(&json!({"tenant": tenant, "gpu": "A100-40GB", "region": "us-1", "gpus": gpus, "ends_at": later,
                "price_per_gpu_hour": "1.00", "lend_share_percent": 50})),
        )
    };
    assert_eq!(sell_status(&s, &lab, &later), 403, "tenants cannot sell");
    let r = sell("lab", 2);
    assert_eq!(r.status, 201, "{:?}", r.body);
    let r2 = sell("acme", 1);
    assert_eq!(r2.status, 409, "us-1 has only two A100s and both are sold: {:?}", r2.body);
    assert_eq!(sell("nobody", 1).status, 422);

    // Others' on-demand work never takes reserved GPUs; their spot work borrows them.
    let od = s.create(&acme, "A100-40GB", 1, Some("us-1"));
    let od_id = od["id"].as_str().unwrap().to_string();
    let v = s.wait_for(&acme, &od_id, "waiting", |v| v["pending_reason"].is_string());
    assert!(v["pending_reason"].as_str().unwrap().ends_with("1 reserved"), "not 'full': {v}");
    let spot = s.post(
        &acme,
        "/v1/instances",
        Some(&json!({"gpu": "A100-40GB", "count": 2, "region": "us-1", "command": "sleep 1000", "tier": "spot"})),
    );
    let spot_id = spot.body["id"].as_str().unwrap().to_string();
    s.wait_for(&acme, &spot_id, "running on lent capacity", |v| v["state"] == "running");
    assert_eq!(s.get(&acme, &format!("/v1/instances/{od_id}")).body["state"], "pending");

    // Acme has no reservation; the owner asking for more than it holds is refused.
    let reserved = |key: &str, count: u32| {
        s.post(
            key,
            "/v1/instances",
            Some(&json!({"gpu": "A100-40GB", "count": count, "command": "sleep 1000", "tier": "reserved"})),
        )
    };
    assert_eq!(reserved(&acme, 1).status, 422);
    assert_eq!(reserved(&lab, 3).status, 409);

    // The owner asks: the spot borrower gets its notice, and the owner runs in us-1.
    let mine = reserved(&lab, 2);
    assert_eq!(mine.status, 201, "{:?}", mine.body);
    assert_eq!(mine.body["region"], "us-1", "the reservation's region");
    let mine_id = mine.body["id"].as_str().unwrap().to_string();
    let v = s.wait_for(&acme, &spot_id, "noticed", |v| v["preemption"].is_object());
    assert!(v["preemption"]["reason"].as_str().unwrap().starts_with(&format!("reserved request {mine_id}")), "{v}");
    s.wait_for(&lab, &mine_id, "running", |v| v["state"] == "running");
    s.wait_for(&acme, &spot_id, "stopped", |v| v["state"] == "stopped");

    // The owner pays the commitment per period, nothing per instance, and gets half of what the
    // lending earned back.
    let entries = common::poll("two periods billed and a lending credit posted", || {
        let ledger = s.get(&lab, "/v1/billing/ledger").body;
        let entries = ledger["entries"].as_array().unwrap().clone();
        let commitment = entries
            .iter()
            .filter(|e| e["memo"].as_str().unwrap().starts_with("reservation r-") && e["kind"] == "usage")
            .count();
        let credited = entries.iter().any(|e| e["kind"] == "lending-credit");
        (commitment >= 2 && credited).then_some(entries)
    });
    let credit = entries.iter().find(|e| e["kind"] == "lending-credit").unwrap();
    assert!(credit["amount"].as_str().unwrap().parse::<f64>().unwrap() > 0.0, "{credit}");
    let own_usage: f64 = entries
        .iter()
        .filter(|e| e["instance"] == mine_id.as_str())
        .map(|e| e["amount"].as_str().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(own_usage, 0.0, "running on the reservation costs nothing more");
    let month = time::OffsetDateTime::now_utc().format(&time::macros::format_description!("[year]-[month]")).unwrap();
    let invoice = s.get(&lab, &format!("/v1/billing/invoices/{month}")).body;
    let credits = invoice["credits"].as_array().unwrap_or_else(|| panic!("{invoice}"));
    assert!(
        credits.iter().any(|c| c["description"].as_str().unwrap().starts_with("lending-credit: reservation r-")),
        "{invoice}"
    );
    let list = s.get(&lab, "/v1/reservations").body;
    let res = &list["reservations"][0];
    assert!(res["lent_gpu_hours"].as_f64().unwrap() > 0.0 && res["active"] == true, "{res}");
    assert_eq!(s.get(&acme, "/v1/reservations").body["reservations"].as_array().unwrap().len(), 0);
}

fn sell_status(s: &TestServer, tenant_key: &str, later: &str) -> u16 {
    s.post(
        tenant_key,
        "/v1/reservations",
        Some(&json!({"tenant": "lab", "gpu": "A100-40GB", "region": "us-1", "gpus": 1, "ends_at": later})),
    )
    .status
}

#[test]
fn a_spot_job_without_capacity_moves_to_on_demand() {
    let s = fast_market();
    let key = s.tenant("acme");
    // The one T4 in us-1 is taken.
    let held = s.create(&key, "T4", 1, Some("us-1"));
    s.wait_for(&key, held["id"].as_str().unwrap(), "running", |v| v["state"] == "running");
    let r = s.post(
        &key,
        "/v1/jobs",
        Some(&json!({"gpus": ["T4"], "count": 1, "regions": ["us-1"], "command": "sleep 1000", "on_demand_after_seconds": 1})),
    );
    assert_eq!(r.status, 201, "{:?}", r.body);
    let jid = r.body["id"].as_str().unwrap().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let job = loop {
        let j = s.get(&key, &format!("/v1/jobs/{jid}")).body;
        if j["history"].as_array().is_some_and(|h| h.len() == 2) {
            break j;
        }
        assert!(std::time::Instant::now() < deadline, "never fell back: {j}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let h = job["history"].as_array().unwrap();
    assert_eq!((h[0]["tier"].as_str(), h[0]["state"].as_str()), (Some("spot"), Some("terminated")), "{job}");
    assert!(h[0]["reason"].as_str().unwrap().contains("on-demand"), "{job}");
    assert_eq!(h[1]["tier"], "on-demand");
    assert_eq!(
        (job["state"].as_str(), job["restarts"].as_u64()),
        (Some("pending"), Some(0)),
        "a fallback is no restart; its attempt waits for the T4"
    );
    // Once the GPU frees up, the on-demand attempt runs.
    s.post(&key, &format!("/v1/instances/{}/terminate", held["id"].as_str().unwrap()), None);
    s.wait_for(&key, h[1]["instance"].as_str().unwrap(), "running", |v| v["state"] == "running");
}

#[test]
fn recommendations_follow_memory_price_and_what_is_free() {
    let s = TestServer::start();
    let key = s.tenant("acme");
    let r = s.get(&key, "/v1/recommend?workload=inference-small&params=7B&hours=10");
    assert_eq!(r.status, 200, "{:?}", r.body);
    let best = &r.body["best"];
    assert!(["T4", "A10", "L4"].contains(&best["gpu"].as_str().unwrap()), "small inference on small GPUs: {}", r.body);
    assert_eq!(best["tier"], "on-demand", "a served model is not put on spot");
    assert!(r.body["reasoning"][0].as_str().unwrap().contains("GiB"), "{}", r.body);
    let r = s.get(&key, "/v1/recommend?workload=training-large&params=13B&hours=100");
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["best"]["tier"], "spot", "{}", r.body);
    // A full 70B fine-tune needs more GPUs of any model than this fleet has: said, not proposed.
    let r = s.get(&key, "/v1/recommend?workload=training-large&params=70B&hours=100");
    assert_eq!((r.status, r.body["field"].as_str()), (422, Some("params")), "{:?}", r.body);
    assert!(r.body["detail"].as_str().unwrap().contains("that this fleet can place"), "{:?}", r.body);
    let r = s.get(&key, "/v1/recommend?workload=training-medium&params=13B&hours=10");
    for c in std::iter::once(&r.body["best"]).chain(r.body["alternatives"].as_array().unwrap()) {
        assert!(c["count"].as_u64().unwrap() <= 8, "one node holds it: {c}");
    }

    // Every H100 reserved by another tenant: not free for acme, though no instance holds them.
    let later = (time::OffsetDateTime::now_utc() + time::Duration::hours(1))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    s.tenant("lab");
    let sold = s.post(
        &s.operator_key,
        "/v1/reservations",
        Some(&json!({"tenant": "lab", "gpu": "H100-80GB", "region": "eu-1", "gpus": 8, "ends_at": later})),
    );
    assert_eq!(sold.status, 201, "{:?}", sold.body);
    let r = s.get(&key, "/v1/recommend?workload=inference-small&params=70B&hours=10");
    let h100 = std::iter::once(&r.body["best"])
        .chain(r.body["alternatives"].as_array().unwrap())
        .find(|c| c["gpu"] == "H100-80GB")
        .cloned();
    assert!(h100.is_none_or(|c| c["available"] == false), "reserved GPUs are not free now: {}", r.body);
    let r = s.get(&key, "/v1/recommend?workload=rendering&hours=5");
    assert!(["RTX-6000-Ada", "A40"].contains(&r.body["best"]["gpu"].as_str().unwrap()), "{}", r.body);
    for (q, field) in [
        ("workload=mining", "workload"),
        ("workload=training-medium&params=seven", "params"),
        ("workload=training-medium&params=7B&hours=-1", "hours"),
        ("workload=training-medium&params=50000B", "params"),
    ] {
        let r = s.get(&key, &format!("/v1/recommend?{q}"));
        assert_eq!((r.status, r.body["field"].as_str()), (422, Some(field)), "{q}: {:?}", r.body);
    }
}

#[test]
fn every_attempt_of_a_job_mounts_its_volume() {
    let s = fast_market();
    let key = s.tenant("acme");
    let r = s.post(&key, "/v1/volumes", Some(&json!({"name": "ckpt", "size": "20GiB", "region": "us-1"})));
    assert_eq!(r.status, 201, "{:?}", r.body);
    let job = |extra: serde_json::Value| {
        let mut body = json!({"gpus": ["T4"], "count": 1, "command": "sleep 1000", "on_demand_after_seconds": 1});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        s.post(&key, "/v1/jobs", Some(&body))
    };
    let r = job(json!({"volume": "ckpt:/ckpt", "regions": ["eu-1"]}));
    assert_eq!((r.status, r.body["field"].as_str()), (422, Some("volume")), "{:?}", r.body);
    let r = job(json!({"volume": "nope:/ckpt"}));
    assert_eq!((r.status, r.body["field"].as_str()), (422, Some("volume")), "{:?}", r.body);
    // The one T4 in us-1 is taken: the spot attempt waits, then an on-demand one takes over,
    // and the volume with it.
    let held = s.create(&key, "T4", 1, Some("us-1"));
    s.wait_for(&key, held["id"].as_str().unwrap(), "running", |v| v["state"] == "running");
    let r = job(json!({"volume": "ckpt:/ckpt"}));
    assert_eq!(r.status, 201, "{:?}", r.body);
    let jid = r.body["id"].as_str().unwrap().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let job = loop {
        let j = s.get(&key, &format!("/v1/jobs/{jid}")).body;
        if j["history"].as_array().is_some_and(|h| h.len() == 2) {
            break j;
        }
        assert!(std::time::Instant::now() < deadline, "never fell back: {j}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let h = job["history"].as_array().unwrap();
    for a in h {
        let i = s.get(&key, &format!("/v1/instances/{}", a["instance"].as_str().unwrap())).body;
        assert_eq!((i["volume"].as_str(), i["region"].as_str()), (Some("ckpt:/ckpt"), Some("us-1")), "{i}");
    }
    s.post(&key, &format!("/v1/instances/{}/terminate", held["id"].as_str().unwrap()), None);
    let second = h[1]["instance"].as_str().unwrap();
    s.wait_for(&key, second, "running", |v| v["state"] == "running");
    let v = s.get(&key, "/v1/volumes/ckpt").body;
    assert_eq!((v["attached_to"].as_str(), v["placed"].as_bool()), (Some(second), Some(true)), "{v}");
}

#[test]
fn a_job_waits_only_where_its_gpus_exist_says_so_and_moves_to_room_elsewhere() {
    let s = TestServer::start_with(|c| {
        c.market.price_interval = Duration::from_secs(3600);
        c.market.job_repick_after = Duration::from_secs(1);
    });
    let op = s.operator_key.clone();
    let key = s.tenant("acme");
    // A10 spot is cheapest of all in eu-1, where there is no A10 at all.
    let cheap = json!({"gpu": "A10", "region": "eu-1", "tier": "spot", "price_per_gpu_hour": "0.01"});
    assert_eq!(s.post(&op, "/v1/prices", Some(&cheap)).status, 201);
    // Every T4 and A10 is taken.
    let eu_t4 = s.create(&key, "T4", 4, Some("eu-1"))["id"].as_str().unwrap().to_string();
    let us_t4 = s.create(&key, "T4", 1, Some("us-1"))["id"].as_str().unwrap().to_string();
    let us_a10 = s.create(&key, "A10", 8, Some("us-1"))["id"].as_str().unwrap().to_string();
    for id in [&eu_t4, &us_t4, &us_a10] {
        s.wait_state(&key, id, "running");
    }
    let r = s.post(
        &key,
        "/v1/jobs",
        Some(&json!({"name": "train", "gpus": ["A10", "T4"], "count": 1, "regions": ["eu-1", "us-1"], "command": "sleep 1000"})),
    );
    assert_eq!(r.status, 201, "{:?}", r.body);
    let jid = r.body["id"].as_str().unwrap().to_string();
    let job = |s: &TestServer| s.get(&key, &format!("/v1/jobs/{jid}")).body;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let waiting = loop {
        let j = job(&s);
        if j["state"] == "pending" && j["reason"].as_str().is_some_and(|r| r.contains("no node")) {
            break j;
        }
        assert!(std::time::Instant::now() < deadline, "the job never said it waits: {j}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let first = &waiting["history"][0];
    assert_ne!((first["gpu"].as_str(), first["region"].as_str()), (Some("A10"), Some("eu-1")), "{waiting}");

    // GPUs free up in us-1 (A10 and T4): after its bounded wait the job moves there and runs.
    for id in [&us_t4, &us_a10] {
        s.post(&key, &format!("/v1/instances/{id}/terminate"), None);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let running = loop {
        let j = job(&s);
        if j["state"] == "running" && j["history"].as_array().unwrap().last().unwrap()["state"] == "running" {
            break j;
        }
        assert!(std::time::Instant::now() < deadline, "the job never moved to room: {j}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let last = running["history"].as_array().unwrap().last().unwrap();
    assert_eq!(last["region"], "us-1", "{running}");
    if first["region"] != "us-1" {
        assert!(running["history"][0]["reason"].as_str().unwrap().contains("the job moved to"), "{running}");
    }
}

#[test]
fn a_job_takes_the_cheapest_allowed_model_or_the_fastest_when_asked() {
    let s = TestServer::start();
    let key = s.tenant("acme");
    let first_gpu = |body: serde_json::Value| {
        let r = s.post(&key, "/v1/jobs", Some(&body));
        assert_eq!(r.status, 201, "{:?}", r.body);
        let jid = r.body["id"].as_str().unwrap().to_string();
        let j = s.get(&key, &format!("/v1/jobs/{jid}")).body;
        s.post(&key, &format!("/v1/jobs/{jid}/cancel"), None);
        j["history"][0]["gpu"].as_str().unwrap().to_string()
    };
    let job = json!({"gpus": ["A10", "T4"], "count": 1, "regions": ["us-1"], "command": "sleep 100", "spot": false});
    // Both have room in us-1; the T4 is the cheaper per GPU-hour.
    assert_eq!(first_gpu(job.clone()), "T4");
    let mut fastest = job.clone();
    fastest["prefer"] = json!("fastest");
    assert_eq!(first_gpu(fastest), "A10");
    let mut bad = job;
    bad["prefer"] = json!("greenest");
    let r = s.post(&key, "/v1/jobs", Some(&bad));
    assert_eq!(r.status, 422, "{:?}", r.body);
    assert!(r.body.to_string().contains("prefer"), "{:?}", r.body);
}

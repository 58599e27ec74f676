//! Projects, GPU quotas and project-scoped keys over HTTP: who may do what, the refusal and the
//! wait at a limit, and concurrent creates against one limit.

mod common;

use common::{Resp, TestServer, poll};
use serde_json::{Value, json};

fn put(s: &TestServer, key: &str, path: &str, body: &Value) -> Resp {
    let bytes = serde_json::to_vec(body).unwrap();
    s.raw("PUT", path, Some(key), &[("Content-Type", "application/json")], Some(&bytes))
}

fn delete(s: &TestServer, key: &str, path: &str) -> Resp {
    s.raw("DELETE", path, Some(key), &[], None)
}

fn create(s: &TestServer, key: &str, body: Value) -> Resp {
    s.post(key, "/v1/instances", Some(&body))
}

fn names(v: &Value, list: &str, field: &str) -> Vec<String> {
    v[list].as_array().unwrap().iter().map(|x| x[field].as_str().unwrap().to_string()).collect()
}

#[test]
fn projects_quotas_and_project_keys() {
    let s = TestServer::start();
    let admin = s.tenant("lab");
    let rival = s.tenant("rival");

    // Projects: made by an organization admin; `default` always there.
    let r = s.post(&admin, "/v1/projects", Some(&json!({"name": "ml"})));
    assert_eq!((r.status, r.body["name"].as_str()), (201, Some("ml")), "{:?}", r.body);
    assert_eq!(s.post(&admin, "/v1/projects", Some(&json!({"name": "ml"}))).status, 409);
    assert_eq!(s.post(&admin, "/v1/projects", Some(&json!({"name": "default"}))).status, 409);
    for bad in [json!({"name": "Bad Name"}), json!({"name": ""}), json!({"name": "x", "owner": "me"})] {
        let r = s.post(&admin, "/v1/projects", Some(&bad));
        assert_eq!(r.status, 422, "{bad}: {:?}", r.body);
    }
    assert_eq!(names(&s.get(&admin, "/v1/projects").body, "projects", "name"), ["default", "ml"]);
    assert_eq!(names(&s.get(&rival, "/v1/projects").body, "projects", "name"), ["default"]);

    // A quota: 2 T4s for ml.
    let r = put(&s, &admin, "/v1/projects/ml/quotas/T4", &json!({"limit": 2, "guaranteed": 1}));
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        (r.body["limit"].as_f64(), r.body["headroom"].as_f64(), r.body["used"].as_f64()),
        (Some(2.0), Some(2.0), Some(0.0))
    );
    for (path, body, field) in [
        ("/v1/projects/ml/quotas/T4", json!({"limit": 2, "guaranteed": 3}), "guaranteed"),
        ("/v1/projects/ml/quotas/V100", json!({"limit": 2}), "gpu"),
        ("/v1/projects/ml/quotas/T4", json!({"limit": 2, "burst": 1}), "burst"),
    ] {
        let r = put(&s, &admin, path, &body);
        assert_eq!((r.status, r.body["field"].as_str()), (422, Some(field)), "{body}: {:?}", r.body);
    }
    assert_eq!(put(&s, &admin, "/v1/projects/nlp/quotas/T4", &json!({"limit": 1})).status, 404);

    // At the limit: refused with the numbers, nothing written; other projects are not limited.
    let r = create(&s, &admin, json!({"gpu": "T4", "count": 2, "command": "sleep 600", "project": "ml"}));
    assert_eq!((r.status, r.body["project"].as_str()), (201, Some("ml")), "{:?}", r.body);
    let first = r.body["id"].as_str().unwrap().to_string();
    let before = s.get(&admin, "/v1/instances").body["instances"].as_array().unwrap().len();
    let r = create(&s, &admin, json!({"gpu": "T4", "count": 1, "command": "sleep 600", "project": "ml"}));
    assert_eq!((r.status, r.body["code"].as_str()), (409, Some("quota_exceeded")), "{:?}", r.body);
    let detail = r.body["detail"].as_str().unwrap();
    assert!(detail.contains("project ml is at its T4 limit: 2/2 GPUs"), "{detail}");
    assert_eq!(s.get(&admin, "/v1/instances").body["instances"].as_array().unwrap().len(), before);
    let r = create(&s, &admin, json!({"gpu": "T4", "count": 1, "command": "sleep 600"}));
    assert_eq!((r.status, r.body["project"].as_str()), (201, Some("default")), "{:?}", r.body);
    let r = create(&s, &admin, json!({"gpu": "T4", "count": 1, "command": "x", "project": "nlp"}));
    assert_eq!((r.status, r.body["field"].as_str()), (422, Some("project")), "{:?}", r.body);
    assert!(r.body["detail"].as_str().unwrap().contains("projects: default, ml"), "{:?}", r.body);

    // Or waits, and is let in when room frees.
    let r = create(
        &s,
        &admin,
        json!({"gpu": "T4", "count": 1, "command": "sleep 600", "project": "ml", "on_quota": "wait"}),
    );
    assert_eq!((r.status, r.body["state"].as_str()), (201, Some("pending")), "{:?}", r.body);
    let waiting = r.body["id"].as_str().unwrap().to_string();
    let held = s.wait_for(&admin, &waiting, "held", |b| {
        b["pending_reason"].as_str().is_some_and(|p| p.contains("waiting for quota: project ml is at its T4 limit 2/2"))
    });
    assert_eq!(held["state"], "pending");
    let q = s.get(&admin, "/v1/projects/ml/quotas").body;
    let t4 = &q["quotas"][0];
    assert_eq!(
        (t4["used"].as_f64(), t4["waiting"].as_u64(), t4["headroom"].as_f64()),
        (Some(2.0), Some(1), Some(0.0)),
        "{q}"
    );
    assert_eq!(s.post(&admin, &format!("/v1/instances/{first}/terminate"), None).status, 200);
    s.wait_state(&admin, &waiting, "running");

    // A project key: creates in its project, sees only it, cannot widen itself.
    let r = s.post(&admin, "/v1/keys", Some(&json!({"name": "ml-ci", "project": "ml"})));
    assert_eq!((r.status, r.body["id"].is_string()), (201, true), "{:?}", r.body);
    let ml = r.body["api_key"].as_str().unwrap().to_string();
    let r = put(&s, &admin, "/v1/projects/ml/quotas/T4", &json!({"limit": 4}));
    assert_eq!(r.status, 200);
    let r = create(&s, &ml, json!({"gpu": "T4", "count": 1, "command": "sleep 600"}));
    assert_eq!((r.status, r.body["project"].as_str()), (201, Some("ml")), "{:?}", r.body);
    let r = create(&s, &ml, json!({"gpu": "T4", "count": 1, "command": "sleep 600", "project": "default"}));
    assert_eq!((r.status, r.body["code"].as_str()), (403, Some("forbidden")), "{:?}", r.body);
    let mine = s.get(&ml, "/v1/instances").body;
    assert!(mine["instances"].as_array().unwrap().iter().all(|i| i["project"] == "ml"), "{mine}");
    let all = s.get(&admin, "/v1/instances").body;
    let in_default = all["instances"].as_array().unwrap().iter().find(|i| i["project"] == "default").unwrap();
    let id = in_default["id"].as_str().unwrap();
    assert_eq!(s.get(&ml, &format!("/v1/instances/{id}")).status, 404);
    assert_eq!(s.post(&ml, &format!("/v1/instances/{id}/stop"), None).status, 404);
    assert_eq!(names(&s.get(&ml, "/v1/projects").body, "projects", "name"), ["ml"]);
    assert_eq!(s.get(&ml, "/v1/projects/default/quotas").status, 404);
    assert_eq!(s.get(&ml, "/v1/projects/ml/quotas").status, 200);
    assert_eq!(put(&s, &ml, "/v1/projects/ml/quotas/T4", &json!({"limit": 100})).status, 403);
    assert_eq!(s.post(&ml, "/v1/projects", Some(&json!({"name": "mine"}))).status, 403);
    assert_eq!(s.post(&ml, "/v1/keys", Some(&json!({"name": "wide", "project": "default"}))).status, 403);
    let r = s.post(&ml, "/v1/keys", Some(&json!({"name": "child"})));
    assert_eq!(r.status, 201, "{:?}", r.body);
    let keys = s.get(&ml, "/v1/keys").body;
    assert_eq!(names(&keys, "keys", "name"), ["ml-ci", "child"], "a project key sees its project's keys");
    assert!(keys["keys"].as_array().unwrap().iter().all(|k| k["project"] == "ml"), "{keys}");

    // Volumes belong to a project too: mounted by that project's work only, seen by its keys.
    let r = s.post(&ml, "/v1/volumes", Some(&json!({"name": "ml-data", "size": "10GiB", "region": "eu-1"})));
    assert_eq!((r.status, r.body["project"].as_str()), (201, Some("ml")), "{:?}", r.body);
    let r = s.post(&admin, "/v1/volumes", Some(&json!({"name": "shared", "size": "10GiB", "region": "eu-1"})));
    assert_eq!((r.status, r.body["project"].as_str()), (201, Some("default")), "{:?}", r.body);
    assert_eq!(names(&s.get(&ml, "/v1/volumes").body, "volumes", "name"), ["ml-data"]);
    assert_eq!(s.get(&ml, "/v1/volumes/shared").status, 404);
    let r = create(&s, &admin, json!({"gpu": "T4", "count": 1, "command": "x", "volume": "ml-data:/data"}));
    assert_eq!((r.status, r.body["field"].as_str()), (422, Some("volume")), "{:?}", r.body);
    assert!(r.body["detail"].as_str().unwrap().contains("belongs to project ml, not default"), "{:?}", r.body);

    // So do warm pools, and the instances they keep.
    let pool = json!({"name": "ml-warm", "gpu": "T4", "count": 1, "command": "sleep 600", "size": 1});
    let r = s.post(&ml, "/v1/pools", Some(&pool));
    assert_eq!((r.status, r.body["project"].as_str()), (201, Some("ml")), "{:?}", r.body);
    assert_eq!(names(&s.get(&admin, "/v1/pools").body, "pools", "name"), ["ml-warm"]);
    let r = s.post(
        &admin,
        "/v1/pools",
        Some(&json!({"name": "org-warm", "gpu": "A10", "count": 1, "command": "sleep 600", "size": 0})),
    );
    assert_eq!((r.status, r.body["project"].as_str()), (201, Some("default")), "{:?}", r.body);
    assert_eq!(names(&s.get(&ml, "/v1/pools").body, "pools", "name"), ["ml-warm"]);
    assert_eq!(s.post(&ml, "/v1/pools/org-warm/claim", Some(&json!({}))).status, 404);

    // Spend rolls up by project; a project key sees its project's spend only.
    let usage = poll("usage of both projects", || {
        let u = s.get(&admin, "/v1/billing/usage?by=project").body;
        let keys = names(&u, "lines", "key");
        (keys.contains(&"default".to_string()) && keys.contains(&"ml".to_string())).then_some(u)
    });
    assert!(usage["total"].is_string(), "{usage}");
    let ml_ids: Vec<String> = names(&s.get(&ml, "/v1/instances").body, "instances", "id");
    let spent = poll("the ml key's usage", || {
        let u = s.get(&ml, "/v1/billing/usage?by=instance").body;
        (!u["lines"].as_array().unwrap().is_empty()).then_some(u)
    });
    for key in names(&spent, "lines", "key") {
        assert!(ml_ids.contains(&key), "{key} is not an ml instance: {spent}");
    }
    assert_eq!(names(&s.get(&ml, "/v1/billing/usage?by=project").body, "lines", "key"), ["ml"]);
    let ledger = s.get(&ml, "/v1/billing/ledger").body;
    for line in ledger["entries"].as_array().unwrap() {
        assert!(ml_ids.contains(&line["instance"].as_str().unwrap_or("").to_string()), "{line}");
    }
    for path in ["/v1/billing/balance", "/v1/billing/invoices", "/v1/billing/budget"] {
        let r = s.get(&ml, path);
        assert_eq!(r.status, 403, "{path}: {:?}", r.body);
        assert!(r.body["detail"].as_str().unwrap().contains("needs an organization-wide key"), "{path}: {:?}", r.body);
        assert_eq!(s.get(&admin, path).status, 200, "{path}");
    }

    // Read-only keys read quotas and change nothing; other tenants see nothing of lab's.
    let r = s.post(&admin, "/v1/keys", Some(&json!({"name": "viewer", "scope": "read-only"})));
    let viewer = r.body["api_key"].as_str().unwrap().to_string();
    assert_eq!(s.get(&viewer, "/v1/projects/ml/quotas").status, 200);
    assert_eq!(put(&s, &viewer, "/v1/projects/ml/quotas/T4", &json!({"limit": 100})).status, 403);
    assert_eq!(s.get(&rival, "/v1/projects/ml/quotas").status, 404);
    assert_eq!(put(&s, &rival, "/v1/projects/ml/quotas/T4", &json!({"limit": 100})).status, 404);
    assert_eq!(s.get(&rival, "/v1/projects?tenant=lab").status, 403);
    assert_eq!(put(&s, &rival, "/v1/projects/ml/quotas/T4?tenant=lab", &json!({"limit": 100})).status, 403);

    // The operator sets any tenant's quotas.
    let r = put(&s, &s.operator_key, "/v1/projects/ml/quotas/A10?tenant=lab", &json!({"limit": 3}));
    assert_eq!((r.status, r.body["limit"].as_f64()), (200, Some(3.0)), "{:?}", r.body);
    let q = s.get(&admin, "/v1/projects/ml/quotas").body;
    assert_eq!(names(&q, "quotas", "gpu"), ["A10", "T4"]);
    assert_eq!(delete(&s, &admin, "/v1/projects/ml/quotas/A10").status, 204);
    assert_eq!(delete(&s, &admin, "/v1/projects/ml/quotas/A10").status, 404);
    assert_eq!(s.get(&s.operator_key, "/v1/projects/ml/quotas?tenant=lab&x=1").status, 400);
}

#[test]
fn concurrent_creates_against_a_limit_admit_exactly_it() {
    let s = TestServer::start_with(|c| c.rate_limit = None);
    let admin = s.tenant("lab");
    assert_eq!(put(&s, &admin, "/v1/projects/default/quotas/A10", &json!({"limit": 8})).status, 200);
    let statuses: Vec<(u16, Option<String>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..100)
            .map(|_| {
                scope.spawn(|| {
                    let r = create(&s, &admin, json!({"gpu": "A10", "count": 1, "command": "sleep 600"}));
                    (r.status, r.body["code"].as_str().map(str::to_string))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let created = statuses.iter().filter(|(st, _)| *st == 201).count();
    let refused = statuses.iter().filter(|(st, c)| *st == 409 && c.as_deref() == Some("quota_exceeded")).count();
    assert_eq!((created, refused), (8, 92), "{statuses:?}");
    let q = poll("the quota read", || {
        let q = s.get(&admin, "/v1/projects/default/quotas").body;
        (q["quotas"][0]["used"].as_f64() == Some(8.0)).then_some(q)
    });
    assert_eq!(q["quotas"][0]["headroom"].as_f64(), Some(0.0));
}

#[test]
fn production_work_is_served_before_older_batch_work_and_projects_cap_their_class() {
    let s = TestServer::start();
    let admin = s.tenant("lab");
    // us-1 has one T4: hold it, queue batch work, then production work.
    let holder = create(&s, &admin, json!({"gpu": "T4", "count": 1, "region": "us-1", "command": "sleep 600"}));
    let holder = holder.body["id"].as_str().unwrap().to_string();
    s.wait_state(&admin, &holder, "running");
    let batch = create(
        &s,
        &admin,
        json!({"gpu": "T4", "count": 1, "region": "us-1", "command": "sleep 600", "priority": "batch"}),
    );
    assert_eq!((batch.status, batch.body["priority"].as_str()), (201, Some("batch")), "{:?}", batch.body);
    let batch = batch.body["id"].as_str().unwrap().to_string();
    s.wait_for(&admin, &batch, "waiting", |b| b["pending_reason"].is_string());
    let prod = create(
        &s,
        &admin,
        json!({"gpu": "T4", "count": 1, "region": "us-1", "command": "sleep 600", "priority": "production"}),
    );
    let prod = prod.body["id"].as_str().unwrap().to_string();
    s.wait_for(&admin, &batch, "behind production work", |b| {
        b["pending_reason"].as_str().is_some_and(|r| r.starts_with("behind 1 higher-priority request for T4; "))
    });
    assert_eq!(s.post(&admin, &format!("/v1/instances/{holder}/terminate"), None).status, 200);
    s.wait_state(&admin, &prod, "running");
    assert_eq!(s.get(&admin, &format!("/v1/instances/{batch}")).body["state"], "pending");

    // A project may cap the class its work asks for.
    let r = s.post(&admin, "/v1/projects", Some(&json!({"name": "sweeps", "max_priority": "batch"})));
    assert_eq!((r.status, r.body["max_priority"].as_str()), (201, Some("batch")), "{:?}", r.body);
    let r = create(
        &s,
        &admin,
        json!({"gpu": "T4", "count": 1, "command": "x", "project": "sweeps", "priority": "default"}),
    );
    assert_eq!((r.status, r.body["field"].as_str()), (422, Some("priority")), "{:?}", r.body);
    assert!(r.body["detail"].as_str().unwrap().contains("allows priority up to batch"), "{:?}", r.body);
    let r = create(&s, &admin, json!({"gpu": "T4", "count": 1, "command": "x", "priority": "urgent"}));
    assert_eq!(r.status, 422, "{:?}", r.body);
}

#[test]
fn a_project_under_its_guarantee_takes_gpus_back_from_one_borrowing_above_its_own() {
    let s = TestServer::start_with(|c| {
        c.market.notice = std::time::Duration::from_secs(1);
        c.market.min_notice = std::time::Duration::from_millis(500);
        c.market.min_runtime = std::time::Duration::ZERO;
    });
    let admin = s.tenant("lab");
    for p in ["prod", "research"] {
        assert_eq!(s.post(&admin, "/v1/projects", Some(&json!({"name": p}))).status, 201);
    }
    assert_eq!(put(&s, &admin, "/v1/projects/prod/quotas/T4", &json!({"limit": 2, "guaranteed": 2})).status, 200);
    // research, with no guarantee, takes every T4 (4 in eu-1, 1 in us-1).
    let mut research = Vec::new();
    for (count, region) in [(4, "eu-1"), (1, "us-1")] {
        let body =
            json!({"gpu": "T4", "count": count, "region": region, "command": "sleep 600", "project": "research"});
        let r = create(&s, &admin, body);
        assert_eq!(r.status, 201, "{:?}", r.body);
        research.push(r.body["id"].as_str().unwrap().to_string());
    }
    for id in &research {
        s.wait_state(&admin, id, "running");
    }
    // prod, under its guarantee, gets a T4 back: one of research's instances is noticed and
    // stopped, naming why.
    let r = create(&s, &admin, json!({"gpu": "T4", "count": 1, "command": "sleep 600", "project": "prod"}));
    let prod = r.body["id"].as_str().unwrap().to_string();
    s.wait_state(&admin, &prod, "running");
    let reasons: Vec<String> = research
        .iter()
        .map(|id| s.get(&admin, &format!("/v1/instances/{id}")).body["reason"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        reasons.iter().any(|r| r.starts_with("preempted: reclaimed for project prod (under its guarantee of 2 x T4)")),
        "{reasons:?}"
    );
    // research holds what it holds within nobody's guarantee now; prod is at 1 of 2. Another
    // tenant's work is never taken for lab's guarantee.
    let rival = s.tenant("rival");
    let r = create(&s, &rival, json!({"gpu": "A10", "count": 8, "command": "sleep 600"}));
    let theirs = r.body["id"].as_str().unwrap().to_string();
    s.wait_state(&rival, &theirs, "running");
    assert_eq!(put(&s, &admin, "/v1/projects/prod/quotas/A10", &json!({"limit": 2, "guaranteed": 2})).status, 200);
    let r = create(&s, &admin, json!({"gpu": "A10", "count": 1, "command": "sleep 600", "project": "prod"}));
    let waiting = r.body["id"].as_str().unwrap().to_string();
    s.wait_for(&admin, &waiting, "waiting", |b| b["pending_reason"].is_string());
    // Two whole scheduling passes later, nothing of rival's is noticed.
    let passes = || {
        let t = s.get(&s.operator_key, "/v1/admin/tasks").body;
        t["tasks"].as_array().unwrap().iter().find(|x| x["name"] == "schedule").unwrap()["runs"].as_u64().unwrap()
    };
    let seen = passes();
    poll("two scheduling passes", || (passes() >= seen + 2).then_some(()));
    let still = s.get(&rival, &format!("/v1/instances/{theirs}")).body;
    assert!(still["preemption"].is_null() && still["state"] == "running", "{still}");
}

#[test]
fn a_project_that_spent_its_monthly_budget_takes_no_new_work() {
    let s = TestServer::start();
    let admin = s.tenant("lab");
    assert_eq!(s.post(&admin, "/v1/projects", Some(&json!({"name": "ml"}))).status, 201);
    let r = put(&s, &admin, "/v1/projects/ml/budget", &json!({"monthly_limit": "0.01"}));
    assert_eq!((r.status, r.body["monthly_budget"].as_str()), (200, Some("0.010000")), "{:?}", r.body);
    for (path, body, status) in [
        ("/v1/projects/nlp/budget", json!({"monthly_limit": "1"}), 404),
        ("/v1/projects/ml/budget", json!({"monthly_limit": "-1"}), 422),
        ("/v1/projects/ml/budget", json!({"limit": "1"}), 422),
    ] {
        assert_eq!(put(&s, &admin, path, &body).status, status, "{path} {body}");
    }
    // An H100 at its dev price spends a cent within seconds.
    let r = create(&s, &admin, json!({"gpu": "H100-80GB", "count": 8, "command": "sleep 600", "project": "ml"}));
    assert_eq!(r.status, 201, "{:?}", r.body);
    let spent = poll("a cent spent", || {
        let l = s.get(&admin, "/v1/projects").body;
        let ml = l["projects"].as_array().unwrap().iter().find(|p| p["name"] == "ml").unwrap().clone();
        (ml["month_spend"].as_str().unwrap().parse::<f64>().unwrap() >= 0.01).then_some(ml)
    });
    assert_eq!(spent["monthly_budget"], "0.010000");
    let r = create(&s, &admin, json!({"gpu": "T4", "count": 1, "command": "sleep 600", "project": "ml"}));
    assert_eq!((r.status, r.body["code"].as_str()), (402, Some("payment_required")), "{:?}", r.body);
    assert!(r.body["detail"].as_str().unwrap().contains("project ml has spent"), "{:?}", r.body);
    let r = create(&s, &admin, json!({"gpu": "T4", "count": 1, "command": "sleep 600"}));
    assert_eq!(r.status, 201, "another project is not held back: {:?}", r.body);
    // A project key cannot raise its own budget; the organization's admin can remove it.
    let k = s.post(&admin, "/v1/keys", Some(&json!({"name": "ml-ci", "project": "ml"})));
    let ml = k.body["api_key"].as_str().unwrap().to_string();
    assert_eq!(put(&s, &ml, "/v1/projects/ml/budget", &json!({"monthly_limit": null})).status, 403);
    let r = put(&s, &admin, "/v1/projects/ml/budget", &json!({"monthly_limit": null}));
    assert_eq!((r.status, r.body.get("monthly_budget")), (200, None), "{:?}", r.body);
    let r = create(&s, &ml, json!({"gpu": "T4", "count": 1, "command": "sleep 600"}));
    assert_eq!(r.status, 201, "{:?}", r.body);
}

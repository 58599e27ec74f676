//! The store suite: every test runs against SQLite and against PostgreSQL. PostgreSQL comes from
//! GPUCLOUD_TEST_PG_URL; without it those tests say SKIPPED (and fail under CI, so a missing
//! database never passes silently there).

use gpucloud_billing::{Charge, Entry, EntryKind, PricePoint, Rules};
use gpucloud_model::*;
use gpucloud_store::*;
use std::sync::Arc;

mod lists;
mod money;
mod projects;
use lists::*;
use money::*;
use projects::*;

fn rand_suffix() -> String {
    format!("{:016x}", rand::random::<u64>())
}

async fn sqlite() -> Option<Arc<dyn Store>> {
    let dir = std::env::temp_dir().join(format!("gpucloud-store-{}", rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    Some(open(&format!("sqlite://{}/test.db", dir.display())).await.unwrap())
}

async fn postgres() -> Option<Arc<dyn Store>> {
    let Ok(base) = std::env::var("GPUCLOUD_TEST_PG_URL") else {
        if std::env::var("CI").is_ok() {
            panic!("GPUCLOUD_TEST_PG_URL is not set under CI: the PostgreSQL half would not run");
        }
        eprintln!("SKIPPED: PostgreSQL store test (set GPUCLOUD_TEST_PG_URL to run it)");
        return None;
    };
    // Each test gets its own schema, so tests run in parallel on one database.
    let schema = format!("t_{}", rand_suffix());
    sqlx::any::install_default_drivers();
    let admin = sqlx::AnyPool::connect(&base).await.unwrap();
    sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&admin).await.unwrap();
    admin.close().await;
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
    Some(open(&url).await.unwrap())
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod sqlite_backend {
            $(#[tokio::test] async fn $name() {
                if let Some(s) = super::sqlite().await {
                    assert_eq!(s.backend(), gpucloud_store::Backend::Sqlite);
                    super::$name(s).await
                }
            })*
        }
        mod postgres_backend {
            $(#[tokio::test] async fn $name() {
                if let Some(s) = super::postgres().await {
                    assert_eq!(s.backend(), gpucloud_store::Backend::Postgres);
                    super::$name(s).await
                }
            })*
        }
    };
}

suite!(
    tenants_and_keys,
    projects_are_per_tenant,
    a_quota_admits_exactly_its_limit_under_concurrent_creates,
    waiting_requests_are_let_in_oldest_first_as_room_frees,
    a_start_counts_against_the_limit_again,
    a_gang_is_inserted_whole_once_and_the_market_sees_spot_work,
    nodes_keep_what_their_agents_say_and_reasons_are_not_state_changes,
    invoices_alerts_and_guarded_tenants,
    ssh_keys_are_per_tenant_and_nodes_keep_their_ssh_endpoint,
    node_health_follows_heartbeats,
    instance_insert_is_idempotent_per_tenant,
    lookups_are_scoped_by_tenant,
    instance_pages_follow_the_cursor,
    instances_in_states_are_those_of_every_tenant,
    placements_are_all_or_nothing,
    leaving_a_gpu_state_releases_gpus,
    idempotency_records,
    concurrent_placements_never_double_book,
    a_conflicting_node_fails_alone_in_a_plan,
    a_plan_over_many_nodes_writes_what_node_by_node_would,
    billable_time_is_recorded_with_state_changes,
    charges_move_money_once,
    a_batch_posts_like_one_entry_at_a_time,
    a_metering_batch_charges_each_interval_once,
    clusters_and_pools_keep_their_workload_resize_by_generation_and_retire,
    prices_and_rules,
    concurrent_state_changes_have_one_winner,
    agents_register_by_name_and_are_fenced_by_epoch,
    a_silent_node_loses_its_instances_at_its_last_heartbeat,
    slices_share_a_gpu_within_its_capacity,
    spot_notices_checkpoints_and_jobs,
    price_history_and_the_price_in_force,
    reservations_overlap_and_bill_each_period_once,
    metrics_come_back_in_order_per_name,
    gpu_samples_per_instance_fleet_and_retention,
    one_replica_holds_a_lease_at_a_time,
    a_shared_rate_bucket_gives_its_burst_then_its_rate,
    an_instance_endpoint_is_kept_without_a_new_generation,
    secrets_are_per_tenant_and_progress_is_not_a_state_change,
    a_volume_is_held_by_one_live_instance_and_lives_where_first_placed,
    accrual_reads_heartbeats_restarts_run_free_and_balances_are_kept,
    a_node_whose_generation_stands_still_reads_the_same,
);

fn ts(ms: i64) -> Timestamp {
    Timestamp(ms)
}

async fn tenant(s: &Arc<dyn Store>, name: &str) -> Tenant {
    let t =
        Tenant { id: TenantId::from_random(rand::random()), name: name.into(), role: Role::Tenant, created_at: ts(1) };
    s.create_tenant(&t).await.unwrap();
    t
}

async fn node(s: &Arc<dyn Store>, name: &str, model: GpuModel, count: u32) -> Node {
    let id = NodeId::from_random(rand::random());
    let gpus = (0..count).map(|i| NewGpu { index: i, model, uuid: format!("GPU-{name}-{i}") }).collect();
    let new =
        NewNode { id: id.clone(), name: name.into(), region: Region::parse("eu-1").unwrap(), gpus, created_at: ts(1) };
    s.insert_node(&new).await.unwrap();
    s.record_heartbeat(&id, ts(2)).await.unwrap();
    s.get_node(&id).await.unwrap().unwrap()
}

async fn instance(s: &Arc<dyn Store>, t: &Tenant, count: u32, key: Option<&str>) -> Instance {
    let new = NewInstance {
        id: InstanceId::from_random(rand::random()),
        tenant_id: t.id.clone(),
        name: "job".into(),
        region: None,
        model: GpuModel::A100_40GB,
        count,
        share: None,
        command: "sleep 1".into(),
        idempotency_key: key.map(str::to_string),
        created_at: ts(10),
        sale: Sale::default(),
    };
    s.insert_instance(&new).await.unwrap().0
}

fn placement(i: &Instance, gpus: &[u32]) -> NewPlacement {
    NewPlacement {
        note: None,
        volume: None,
        instance: i.id.clone(),
        instance_generation: i.generation,
        gpus: gpus.to_vec(),
        share: i.share.clone(),
        gpu_memory_mib: i.model.memory_mib(),
    }
}

async fn slice(s: &Arc<dyn Store>, t: &Tenant, percent: Option<u32>, mig: Option<&str>) -> Instance {
    let share = GpuShare::resolve(GpuModel::A100_40GB, percent, None, mig).unwrap();
    assert!(share.is_some());
    let new = NewInstance {
        id: InstanceId::from_random(rand::random()),
        tenant_id: t.id.clone(),
        name: "slice".into(),
        region: None,
        model: GpuModel::A100_40GB,
        count: 1,
        share,
        command: "sleep 1".into(),
        idempotency_key: None,
        created_at: ts(10),
        sale: Sale::default(),
    };
    s.insert_instance(&new).await.unwrap().0
}

async fn slices_share_a_gpu_within_its_capacity(s: Arc<dyn Store>) {
    let t = tenant(&s, "a").await;
    let n = node(&s, "gpu-1", GpuModel::A100_40GB, 2).await;
    let quarters = [
        slice(&s, &t, Some(25), None).await,
        slice(&s, &t, Some(25), None).await,
        slice(&s, &t, Some(25), None).await,
        slice(&s, &t, Some(25), None).await,
    ];
    let fifth = slice(&s, &t, Some(25), None).await;
    assert_eq!(fifth.share.as_ref().map(|x| (x.milli, x.memory_mib)), Some((250, 10240)));
    let batch: Vec<NewPlacement> = quarters.iter().map(|i| placement(i, &[0])).collect();
    let out = s.apply_placements(&n.id, n.generation, &batch, ts(20)).await.unwrap();
    assert!(matches!(out, ApplyOutcome::Applied { ref placed } if placed.len() == 4), "{out:?}");
    let n = s.get_node(&n.id).await.unwrap().unwrap();
    assert_eq!(n.gpus[0].slices.len(), 4);
    assert_eq!(n.gpus[0].slices.iter().map(|x| x.milli).sum::<u32>(), 1000);
    assert_eq!(n.gpus[0].instance, None);
    // A heartbeat's read of the node: the same node and GPUs, the slices left out.
    let bare = s.get_node_bare(&n.id).await.unwrap().unwrap();
    let mut without = n.clone();
    for g in &mut without.gpus {
        g.slices.clear();
    }
    assert_eq!(bare, without);
    assert!(s.get_node_bare(&NodeId::parse("n-missing").unwrap()).await.unwrap().is_none());
    let got = s.get_instance(None, &quarters[0].id).await.unwrap().unwrap();
    assert_eq!((got.gpus.clone(), got.share.clone()), (vec![0], quarters[0].share.clone()));
    assert_eq!(s.list_instances(Some(&t.id)).await.unwrap().iter().filter(|i| i.gpus == vec![0]).count(), 4);

    // The GPU is full: a fifth slice and a whole-GPU claim on it both conflict and write nothing.
    let out = s.apply_placements(&n.id, n.generation, &[placement(&fifth, &[0])], ts(21)).await.unwrap();
    assert_eq!(out, ApplyOutcome::Conflict);
    let whole = instance(&s, &t, 1, None).await;
    let out = s.apply_placements(&n.id, n.generation, &[placement(&whole, &[0])], ts(21)).await.unwrap();
    assert_eq!(out, ApplyOutcome::Conflict);
    // A MIG slice never joins time-sliced ones, but takes the other GPU.
    let mig = slice(&s, &t, None, Some("1g.5gb")).await;
    let both = [placement(&fifth, &[1]), placement(&mig, &[1])];
    let out = s.apply_placements(&n.id, n.generation, &both, ts(22)).await.unwrap();
    assert_eq!(out, ApplyOutcome::Conflict);
    let out = s.apply_placements(&n.id, n.generation, &[placement(&mig, &[1])], ts(22)).await.unwrap();
    assert_eq!(out, ApplyOutcome::Applied { placed: vec![mig.id.clone()] });

    // Running, a slice bills its share of the GPU; stopping it frees its part only.
    let q = s.get_instance(None, &quarters[0].id).await.unwrap().unwrap();
    let run = InstanceChange { state: InstanceState::Running, stop_target: None, exit_code: None, at: ts(30) };
    let q = s.update_instance(&q.id, q.generation, &run).await.unwrap().unwrap();
    let open = s.intervals_of_tenant(&t.id).await.unwrap();
    assert_eq!(open.iter().find(|u| u.instance_id == q.id).map(|u| u.milli_gpus), Some(250));
    let stop = InstanceChange { state: InstanceState::Stopped, stop_target: None, exit_code: Some(0), at: ts(40) };
    s.update_instance(&q.id, q.generation, &stop).await.unwrap().unwrap();
    let n = s.get_node(&n.id).await.unwrap().unwrap();
    assert_eq!(n.gpus[0].slices.len(), 3);
    let out = s.apply_placements(&n.id, n.generation, &[placement(&fifth, &[0])], ts(41)).await.unwrap();
    assert_eq!(out, ApplyOutcome::Applied { placed: vec![fifth.id.clone()] });
}

async fn tenants_and_keys(s: Arc<dyn Store>) {
    let t = tenant(&s, "acme").await;
    let dup = Tenant { id: TenantId::from_random(rand::random()), ..t.clone() };
    assert!(matches!(s.create_tenant(&dup).await, Err(StoreError::Conflict(_))));
    let key = ApiKey {
        id: ApiKeyId::from_random(rand::random()),
        tenant_id: t.id.clone(),
        prefix: "gpc_abcd".into(),
        hash: "h1".into(),
        created_at: ts(3),
        name: "ci".into(),
        scope: KeyScope::Admin,
        revoked_at: None,
        node: None,
        project: None,
    };
    s.insert_api_key(&key).await.unwrap();
    let reader = ApiKey {
        id: ApiKeyId::from_random(rand::random()),
        hash: "h2".into(),
        name: "dashboard".into(),
        scope: KeyScope::ReadOnly,
        created_at: ts(4),
        project: Some(gpucloud_model::ProjectName::parse("ml-research").unwrap()),
        ..key.clone()
    };
    s.insert_api_key(&reader).await.unwrap();
    let (k, owner) = s.find_api_key("h1").await.unwrap().unwrap();
    assert_eq!((k, owner), (key.clone(), t.clone()));
    assert_eq!(s.find_api_key("h2").await.unwrap().unwrap().0, reader, "scope and project come back");
    assert!(s.find_api_key("nope").await.unwrap().is_none());
    assert_eq!(s.list_tenants().await.unwrap(), vec![t.clone()]);
    // Revocation: once, and the key finds nothing from then on.
    assert!(s.revoke_api_key(&reader.id, ts(10)).await.unwrap());
    assert!(!s.revoke_api_key(&reader.id, ts(11)).await.unwrap());
    assert!(s.find_api_key("h2").await.unwrap().is_none());
    let keys = s.list_api_keys(&t.id).await.unwrap();
    assert_eq!(
        keys.iter().map(|k| (k.name.as_str(), k.revoked_at)).collect::<Vec<_>>(),
        vec![("ci", None), ("dashboard", Some(ts(10)))]
    );
    assert_eq!(s.get_api_key(&key.id).await.unwrap(), Some(key.clone()));

    // Agent keys: bound to one node, once; a node another live key holds cannot be taken.
    let agent = |hash: &str, node: Option<&str>| ApiKey {
        id: ApiKeyId::from_random(rand::random()),
        hash: hash.into(),
        name: format!("agent {hash}"),
        scope: KeyScope::Agent,
        node: node.map(str::to_string),
        ..key.clone()
    };
    let minted = agent("h3", Some("gpu-1"));
    let (a, b) = (agent("h4", None), agent("h5", None));
    for k in [&minted, &a, &b] {
        s.insert_api_key(k).await.unwrap();
    }
    assert_eq!(s.find_api_key("h3").await.unwrap().unwrap().0.node.as_deref(), Some("gpu-1"));
    assert!(!s.bind_agent_key(&a.id, "gpu-1").await.unwrap(), "gpu-1 is the minted key's");
    assert!(s.bind_agent_key(&a.id, "gpu-2").await.unwrap());
    assert!(!s.bind_agent_key(&a.id, "gpu-3").await.unwrap(), "a key binds once");
    assert!(!s.bind_agent_key(&b.id, "gpu-2").await.unwrap());
    assert!(!s.bind_agent_key(&key.id, "gpu-4").await.unwrap(), "only agent keys bind");
    assert_eq!(s.get_api_key(&a.id).await.unwrap().unwrap().node.as_deref(), Some("gpu-2"));
    // Once the holder is revoked, the node's name is free for a new key.
    s.revoke_api_key(&a.id, ts(12)).await.unwrap();
    assert!(s.bind_agent_key(&b.id, "gpu-2").await.unwrap());
    assert_eq!(s.node_named("nowhere").await.unwrap(), None);

    // The audit log: newest first, per tenant or all, and append-only.
    let entry = |id: &str, at: i64, tenant: &TenantId| AuditEntry {
        id: id.into(),
        at: ts(at),
        tenant_id: tenant.clone(),
        key_prefix: "gpc_abcd".into(),
        method: "POST".into(),
        path: "/v1/instances".into(),
        status: 201,
        remote: "127.0.0.1:5000".into(),
    };
    let other = tenant(&s, "other").await;
    s.insert_audit(&entry("a1", 1, &t.id)).await.unwrap();
    s.insert_audit(&entry("a2", 2, &other.id)).await.unwrap();
    s.insert_audit(&entry("a3", 3, &t.id)).await.unwrap();
    let ids = |v: Vec<AuditEntry>| v.into_iter().map(|e| e.id).collect::<Vec<_>>();
    assert_eq!(ids(s.list_audit(None, ts(0), 10).await.unwrap()), vec!["a3", "a2", "a1"]);
    assert_eq!(ids(s.list_audit(Some(&t.id), ts(2), 10).await.unwrap()), vec!["a3"]);
    assert_eq!(ids(s.list_audit(None, ts(0), 1).await.unwrap()), vec!["a3"]);
    assert!(s.insert_audit(&entry("a1", 9, &t.id)).await.is_err(), "ids are unique");
    // Written ahead with status 0, finished once.
    s.insert_audit(&AuditEntry { status: 0, ..entry("a4", 4, &t.id) }).await.unwrap();
    let status = |s: Vec<AuditEntry>| s.into_iter().find(|e| e.id == "a4").map(|e| e.status);
    assert_eq!(status(s.list_audit(None, ts(0), 10).await.unwrap()), Some(0));
    s.finish_audit("a4", 201).await.unwrap();
    s.finish_audit("a4", 500).await.unwrap();
    s.finish_audit("a1", 500).await.unwrap();
    assert_eq!(status(s.list_audit(None, ts(0), 10).await.unwrap()), Some(201));
    let a1 = s.list_audit(None, ts(0), 10).await.unwrap().into_iter().find(|e| e.id == "a1").unwrap();
    assert_eq!(a1.status, 201, "a finished row keeps its status");
}

async fn node_health_follows_heartbeats(s: Arc<dyn Store>) {
    let n = node(&s, "gpu-1", GpuModel::T4, 4).await;
    assert_eq!(n.health, NodeHealth::Healthy);
    assert_eq!(n.gpus.len(), 4);
    assert_eq!(n.last_heartbeat, Some(ts(2)));
    assert_eq!(s.list_regions().await.unwrap(), vec![Region::parse("eu-1").unwrap()]);
    let gen_before = n.generation;
    let lost = s.mark_silent_nodes_lost(ts(100), ts(150)).await.unwrap();
    assert_eq!(lost, vec![LostNode { node: n.id.clone(), last_heartbeat: ts(2), instances: vec![] }]);
    let n2 = s.get_node(&n.id).await.unwrap().unwrap();
    assert_eq!((n2.health, n2.generation), (NodeHealth::Lost, gen_before + 1));
    assert!(s.mark_silent_nodes_lost(ts(100), ts(150)).await.unwrap().is_empty());
    assert!(s.record_heartbeat(&n.id, ts(200)).await.unwrap());
    assert_eq!(s.get_node(&n.id).await.unwrap().unwrap().health, NodeHealth::Healthy);
    assert!(s.set_node_state(&n.id, NodeState::Cordoned, None).await.unwrap());
    assert_eq!(s.get_node(&n.id).await.unwrap().unwrap().state, NodeState::Cordoned);
    // A drain's deadline is kept while it drains, and only then.
    s.set_node_state(&n.id, NodeState::Draining, Some(ts(900))).await.unwrap();
    assert_eq!(s.get_node(&n.id).await.unwrap().unwrap().drain_deadline, Some(ts(900)));
    s.set_node_state(&n.id, NodeState::Cordoned, Some(ts(900))).await.unwrap();
    assert_eq!(s.get_node(&n.id).await.unwrap().unwrap().drain_deadline, None);
    assert!(!s.set_node_state(&NodeId::parse("n-missing").unwrap(), NodeState::Ready, None).await.unwrap());
}

async fn instance_insert_is_idempotent_per_tenant(s: Arc<dyn Store>) {
    let a = tenant(&s, "a").await;
    let b = tenant(&s, "b").await;
    let i1 = instance(&s, &a, 2, Some("k1")).await;
    let i2 = instance(&s, &a, 2, Some("k1")).await;
    let i3 = instance(&s, &b, 2, Some("k1")).await;
    let i4 = instance(&s, &a, 2, None).await;
    let i5 = instance(&s, &a, 2, None).await;
    assert_eq!(i1, i2);
    assert_ne!(i1.id, i3.id);
    assert_ne!(i4.id, i5.id);
    assert_eq!(s.list_instances(Some(&a.id)).await.unwrap().len(), 3);
    assert_eq!(i1.state, InstanceState::Pending);
}

async fn lookups_are_scoped_by_tenant(s: Arc<dyn Store>) {
    let a = tenant(&s, "a").await;
    let b = tenant(&s, "b").await;
    let i = instance(&s, &a, 1, None).await;
    assert!(s.get_instance(Some(&b.id), &i.id).await.unwrap().is_none());
    assert!(s.get_instance(Some(&a.id), &i.id).await.unwrap().is_some());
    assert!(s.get_instance(None, &i.id).await.unwrap().is_some());
    assert!(s.list_instances(Some(&b.id)).await.unwrap().is_empty());
}

async fn placements_are_all_or_nothing(s: Arc<dyn Store>) {
    let t = tenant(&s, "a").await;
    let n = node(&s, "gpu-1", GpuModel::A100_40GB, 4).await;
    let i1 = instance(&s, &t, 2, None).await;
    let i2 = instance(&s, &t, 2, None).await;

    // A stale generation writes nothing.
    let out = s.apply_placements(&n.id, n.generation - 1, &[placement(&i1, &[0, 1])], ts(20)).await.unwrap();
    assert_eq!(out, ApplyOutcome::Conflict);
    assert_eq!(s.get_instance(None, &i1.id).await.unwrap().unwrap().state, InstanceState::Pending);

    let out = s.apply_placements(&n.id, n.generation, &[placement(&i1, &[0, 1])], ts(20)).await.unwrap();
    assert_eq!(out, ApplyOutcome::Applied { placed: vec![i1.id.clone()] });
    let got = s.get_instance(None, &i1.id).await.unwrap().unwrap();
    assert_eq!(
        (got.state, got.node_id.clone(), got.gpus.clone()),
        (InstanceState::Provisioning, Some(n.id.clone()), vec![0, 1])
    );

    // GPU 1 is taken: the whole batch rolls back, node generation included.
    let n = s.get_node(&n.id).await.unwrap().unwrap();
    let out = s.apply_placements(&n.id, n.generation, &[placement(&i2, &[1, 2])], ts(21)).await.unwrap();
    assert_eq!(out, ApplyOutcome::Conflict);
    let after = s.get_node(&n.id).await.unwrap().unwrap();
    assert_eq!(after.generation, n.generation);
    assert_eq!(s.get_instance(None, &i2.id).await.unwrap().unwrap().state, InstanceState::Pending);
    assert_eq!(after.gpus.iter().filter(|g| g.instance.is_some()).count(), 2);

    // An instance that left pending is skipped, the rest applies.
    let i3 = instance(&s, &t, 1, None).await;
    let change = InstanceChange { state: InstanceState::Stopped, stop_target: None, exit_code: None, at: ts(22) };
    s.update_instance(&i2.id, i2.generation, &change).await.unwrap().unwrap();
    let out = s
        .apply_placements(&n.id, n.generation, &[placement(&i2, &[2, 3]), placement(&i3, &[3])], ts(23))
        .await
        .unwrap();
    assert_eq!(out, ApplyOutcome::Applied { placed: vec![i3.id.clone()] });

    // A cordoned node takes nothing.
    s.set_node_state(&n.id, NodeState::Cordoned, None).await.unwrap();
    let n = s.get_node(&n.id).await.unwrap().unwrap();
    let i4 = instance(&s, &t, 1, None).await;
    let out = s.apply_placements(&n.id, n.generation, &[placement(&i4, &[2])], ts(24)).await.unwrap();
    assert_eq!(out, ApplyOutcome::Conflict);
}

async fn leaving_a_gpu_state_releases_gpus(s: Arc<dyn Store>) {
    let t = tenant(&s, "a").await;
    let n = node(&s, "gpu-1", GpuModel::A100_40GB, 2).await;
    let i = instance(&s, &t, 2, None).await;
    s.apply_placements(&n.id, n.generation, &[placement(&i, &[0, 1])], ts(20)).await.unwrap();
    let i = s.get_instance(None, &i.id).await.unwrap().unwrap();
    let stopping = InstanceChange {
        state: InstanceState::Stopping,
        stop_target: Some(StopTarget::Stopped),
        exit_code: None,
        at: ts(30),
    };
    let i = s.update_instance(&i.id, i.generation, &stopping).await.unwrap().unwrap();
    assert_eq!((i.gpus.clone(), i.stop_target), (vec![0, 1], Some(StopTarget::Stopped)));
    // A writer holding an old generation loses.
    assert!(s.update_instance(&i.id, i.generation - 1, &stopping).await.unwrap().is_none());
    let gen_before = s.get_node(&n.id).await.unwrap().unwrap().generation;
    let stopped = InstanceChange { state: InstanceState::Stopped, stop_target: None, exit_code: Some(0), at: ts(40) };
    let i = s.update_instance(&i.id, i.generation, &stopped).await.unwrap().unwrap();
    assert_eq!(
        (i.state, i.node_id.clone(), i.gpus.clone(), i.exit_code),
        (InstanceState::Stopped, None, vec![], Some(0))
    );
    let n = s.get_node(&n.id).await.unwrap().unwrap();
    assert!(n.gpus.iter().all(|g| g.instance.is_none()));
    assert_eq!(n.generation, gen_before + 1);
    assert_eq!(i.updated_at, ts(40));
}

async fn idempotency_records(s: Arc<dyn Store>) {
    use IdempotencyBegin::*;
    let st = Staleness { own_ms: 1000, foreign_ms: 1000 };
    assert_eq!(s.idempotency_begin("t1", "k", "fp", "a", ts(0), st).await.unwrap(), Started);
    assert_eq!(s.idempotency_begin("t1", "k", "fp", "a", ts(10), st).await.unwrap(), InProgress);
    assert_eq!(s.idempotency_begin("t1", "k", "other", "a", ts(10), st).await.unwrap(), Mismatch);
    assert_eq!(s.idempotency_begin("t2", "k", "other", "a", ts(10), st).await.unwrap(), Started);
    // The first holder died: after the stale period a retry takes the key over.
    assert_eq!(s.idempotency_begin("t1", "k", "fp", "a", ts(2000), st).await.unwrap(), Started);
    s.idempotency_finish("t1", "k", 201, "{\"id\":1}").await.unwrap();
    assert_eq!(
        s.idempotency_begin("t1", "k", "fp", "a", ts(3000), st).await.unwrap(),
        Replay { status: 201, body: "{\"id\":1}".into() }
    );
    s.idempotency_abandon("t2", "k").await.unwrap();
    assert_eq!(s.idempotency_begin("t2", "k", "new", "a", ts(10), st).await.unwrap(), Started);
    // A key held by a server process that is gone (a restart) is taken over at once where the
    // caller says foreign holders are dead; a live holder keeps it.
    let single = Staleness { own_ms: 30_000, foreign_ms: 0 };
    assert_eq!(s.idempotency_begin("t3", "k", "fp", "old", ts(100), single).await.unwrap(), Started);
    assert_eq!(s.idempotency_begin("t3", "k", "fp", "old", ts(200), single).await.unwrap(), InProgress);
    assert_eq!(s.idempotency_begin("t3", "k", "fp", "new", ts(200), single).await.unwrap(), Started);
    assert_eq!(
        s.idempotency_begin("t3", "k", "fp", "old", ts(300), single).await.unwrap(),
        Started,
        "and back: 'old' is foreign to 'new' too"
    );
}

async fn concurrent_placements_never_double_book(s: Arc<dyn Store>) {
    let t = tenant(&s, "a").await;
    let n = node(&s, "gpu-1", GpuModel::A100_40GB, 4).await;
    let mut tasks = Vec::new();
    for k in 0..8u32 {
        let i = instance(&s, &t, 2, None).await;
        let s = s.clone();
        let node = n.clone();
        // Every writer saw the same snapshot and wants overlapping GPUs.
        tasks.push(tokio::spawn(async move {
            let gpus = [k % 3, k % 3 + 1];
            s.apply_placements(&node.id, node.generation, &[placement(&i, &gpus)], ts(20)).await.unwrap()
        }));
    }
    let mut winners = 0;
    for t in tasks {
        if let ApplyOutcome::Applied { placed } = t.await.unwrap() {
            winners += placed.len();
        }
    }
    assert_eq!(winners, 1, "one snapshot, one winner");
    let n = s.get_node(&n.id).await.unwrap().unwrap();
    assert_eq!(n.gpus.iter().filter(|g| g.instance.is_some()).count(), 2);
    let held: usize = s.list_instances(None).await.unwrap().iter().map(|i| i.gpus.len()).sum();
    assert_eq!(held, 2);
}

async fn a_conflicting_node_fails_alone_in_a_plan(s: Arc<dyn Store>) {
    let t = tenant(&s, "a").await;
    let n1 = node(&s, "gpu-1", GpuModel::A100_40GB, 2).await;
    let n2 = node(&s, "gpu-2", GpuModel::A100_40GB, 2).await;
    let n3 = node(&s, "gpu-3", GpuModel::A100_40GB, 2).await;
    let (a, b, c) = (instance(&s, &t, 2, None).await, instance(&s, &t, 2, None).await, instance(&s, &t, 2, None).await);
    s.set_node_state(&n2.id, NodeState::Cordoned, None).await.unwrap();
    let batches = vec![
        NodeBatch { node: n1.id.clone(), node_generation: n1.generation, placements: vec![placement(&a, &[0, 1])] },
        NodeBatch { node: n2.id.clone(), node_generation: n2.generation, placements: vec![placement(&b, &[0, 1])] },
        // Half-valid: GPU 7 does not exist, so the whole node batch rolls back to its savepoint.
        NodeBatch { node: n3.id.clone(), node_generation: n3.generation, placements: vec![placement(&c, &[1, 7])] },
    ];
    let out = s.apply_plan(&batches, ts(50)).await.unwrap();
    assert_eq!(
        out,
        vec![ApplyOutcome::Applied { placed: vec![a.id.clone()] }, ApplyOutcome::Conflict, ApplyOutcome::Conflict]
    );
    assert_eq!(s.get_instance(None, &a.id).await.unwrap().unwrap().state, InstanceState::Provisioning);
    for i in [&b, &c] {
        assert_eq!(s.get_instance(None, &i.id).await.unwrap().unwrap().state, InstanceState::Pending);
    }
    let n3_after = s.get_node(&n3.id).await.unwrap().unwrap();
    assert_eq!(n3_after.generation, n3.generation, "rolled back with its batch");
    assert!(n3_after.gpus.iter().all(|g| g.instance.is_none()));
}

/// A plan of whole-GPU placements on more nodes than one bulk statement covers: every node
/// bumped once, each placed instance provisioning on its GPUs with its event, one that left
/// pending skipped with its GPUs left free; then the same plan again conflicts everywhere.
async fn a_plan_over_many_nodes_writes_what_node_by_node_would(s: Arc<dyn Store>) {
    let t = tenant(&s, "a").await;
    let mut nodes = Vec::new();
    for k in 0..260 {
        nodes.push(node(&s, &format!("gpu-{k:03}"), GpuModel::A100_40GB, 2).await);
    }
    let mut batches = Vec::new();
    let mut placed = Vec::new();
    for n in &nodes {
        let (a, b) = (instance(&s, &t, 1, None).await, instance(&s, &t, 1, None).await);
        batches.push(NodeBatch {
            node: n.id.clone(),
            node_generation: n.generation,
            placements: vec![placement(&a, &[1]), placement(&b, &[0])],
        });
        placed.push((a, b));
    }
    let (gone, _) = &placed[7];
    let change = InstanceChange { state: InstanceState::Terminated, stop_target: None, exit_code: None, at: ts(30) };
    s.update_instance(&gone.id, gone.generation, &change).await.unwrap().unwrap();
    let out = s.apply_plan(&batches, ts(50)).await.unwrap();
    assert_eq!(out.len(), nodes.len());
    for (k, ((a, b), n)) in placed.iter().zip(&nodes).enumerate() {
        let want = if k == 7 { vec![b.id.clone()] } else { vec![a.id.clone(), b.id.clone()] };
        assert_eq!(out[k], ApplyOutcome::Applied { placed: want }, "node {k}");
        let after = s.get_node(&n.id).await.unwrap().unwrap();
        assert_eq!(after.generation, n.generation + 1, "node {k} bumped once");
        let holders: Vec<Option<InstanceId>> = after.gpus.iter().map(|g| g.instance.clone()).collect();
        let first = if k == 7 { None } else { Some(a.id.clone()) };
        assert_eq!(holders, vec![Some(b.id.clone()), first], "node {k}");
        let got = s.get_instance(None, &b.id).await.unwrap().unwrap();
        assert_eq!(
            (got.state, got.node_id.clone(), got.gpus.clone()),
            (InstanceState::Provisioning, Some(n.id.clone()), vec![0])
        );
        assert_eq!(got.generation, b.generation + 1);
        let last = s.instance_events(&b.id).await.unwrap().pop().unwrap();
        assert_eq!(
            (last.generation, last.at, last.from, last.to),
            (b.generation + 1, ts(50), Some(InstanceState::Pending), InstanceState::Provisioning)
        );
    }
    assert_eq!(s.get_instance(None, &gone.id).await.unwrap().unwrap().state, InstanceState::Terminated);
    let again = s.apply_plan(&batches, ts(60)).await.unwrap();
    assert!(again.iter().all(|o| *o == ApplyOutcome::Conflict), "every generation moved");
}

async fn running_instance(s: &Arc<dyn Store>, t: &Tenant, n: &Node, at: i64) -> Instance {
    let i = instance(s, t, 2, None).await;
    let n = s.get_node(&n.id).await.unwrap().unwrap();
    let free: Vec<u32> = n.gpus.iter().filter(|g| g.instance.is_none()).map(|g| g.index).take(2).collect();
    s.apply_placements(&n.id, n.generation, &[placement(&i, &free)], ts(at - 1)).await.unwrap();
    let i = s.get_instance(None, &i.id).await.unwrap().unwrap();
    let running = InstanceChange { state: InstanceState::Running, stop_target: None, exit_code: None, at: ts(at) };
    s.update_instance(&i.id, i.generation, &running).await.unwrap().unwrap()
}

async fn clusters_and_pools_keep_their_workload_resize_by_generation_and_retire(s: Arc<dyn Store>) {
    let t = tenant(&s, "a").await;
    let workload = MemberWorkload {
        image: Some("ghcr.io/acme/trainer:3".into()),
        env: vec![("MODE".into(), "a=b c".into()), ("TOKEN".into(), "secret:HF_TOKEN".into())],
        ports: vec!["8888/http".parse().unwrap(), "22/tcp".parse().unwrap()],
    };
    let c = Cluster {
        id: ClusterId::from_random(7),
        tenant_id: t.id.clone(),
        name: "train".into(),
        model: GpuModel::L4,
        region: None,
        gpus_per_node: 1,
        min_nodes: 1,
        max_nodes: 2,
        target_nodes: 1,
        command: "sleep 1".into(),
        tier: Tier::OnDemand,
        active: true,
        epoch: 1,
        generation: 1,
        created_at: ts(1),
        updated_at: ts(1),
        schedule: None,
        utc_offset_min: 0,
        autoscale: None,
        replicas_in: Vec::new(),
        workload: workload.clone(),
        project: gpucloud_model::ProjectName::parse("vision").unwrap(),
    };
    s.insert_cluster(&c).await.unwrap();
    assert_eq!(s.find_cluster(Some(&t.id), "train").await.unwrap(), Some(c.clone()));
    let plain =
        Cluster { id: ClusterId::from_random(8), name: "plain".into(), workload: MemberWorkload::default(), ..c };
    s.insert_cluster(&plain).await.unwrap();
    assert_eq!(s.find_cluster(Some(&t.id), "plain").await.unwrap(), Some(plain));
    let p = WarmPool {
        id: PoolId::from_random(9),
        tenant_id: t.id.clone(),
        name: "warm".into(),
        model: GpuModel::L4,
        region: None,
        count: 1,
        command: "serve".into(),
        size: 2,
        created_at: ts(1),
        schedule: None,
        utc_offset_min: 0,
        workload,
        project: gpucloud_model::ProjectName::parse("serving").unwrap(),
    };
    s.insert_pool(&p).await.unwrap();
    assert_eq!(s.list_pools(Some(&t.id)).await.unwrap(), vec![p.clone()]);

    // A cluster's size moves by compare-and-set: a stale generation changes nothing.
    let moved = s.update_cluster(&c.id, c.generation, 2, 2, true, ts(5)).await.unwrap().expect("current generation");
    assert_eq!((moved.target_nodes, moved.epoch, moved.generation), (2, 2, c.generation + 1));
    assert_eq!(s.update_cluster(&c.id, c.generation, 1, 3, true, ts(6)).await.unwrap(), None, "stale");
    let replanned = Cluster { model: GpuModel::T4, target_nodes: 1, epoch: 3, ..moved.clone() };
    let r = s.replan_cluster(&replanned, moved.generation).await.unwrap().expect("current generation");
    assert_eq!((r.model, r.target_nodes, r.epoch), (GpuModel::T4, 1, 3));
    assert_eq!(s.replan_cluster(&replanned, moved.generation).await.unwrap(), None, "stale");
    let names: Vec<String> = s.list_clusters(Some(&t.id)).await.unwrap().into_iter().map(|c| c.name).collect();
    assert_eq!(names.len(), 2);
    assert!(names.contains(&"train".to_string()) && names.contains(&"plain".to_string()), "{names:?}");
    let other = tenant(&s, "b").await;
    assert!(s.list_clusters(Some(&other.id)).await.unwrap().is_empty());
    assert!(s.cluster_members(&c.id).await.unwrap().is_empty());
    // Retired (inactive), it leaves the list.
    let retired = s.update_cluster(&c.id, r.generation, 1, 3, false, ts(7)).await.unwrap().unwrap();
    assert!(!retired.active);
    assert!(s.list_clusters(Some(&t.id)).await.unwrap().iter().all(|x| x.name != "train"));

    // A pool resizes and retires; its name is free again after.
    assert!(s.update_pool(&WarmPool { size: 5, ..p.clone() }).await.unwrap());
    assert_eq!(s.list_pools(Some(&t.id)).await.unwrap()[0].size, 5);
    assert!(s.pool_members(&p.id).await.unwrap().is_empty());
    assert!(s.delete_pool(&p.id).await.unwrap());
    assert!(!s.delete_pool(&p.id).await.unwrap());
    assert!(!s.update_pool(&p).await.unwrap(), "a retired pool is not resized");
    assert!(s.list_pools(Some(&t.id)).await.unwrap().is_empty());
    let p = WarmPool { id: PoolId::from_random(10), ..p };
    s.insert_pool(&p).await.unwrap();

    // A running warm member is handed out once: it leaves the pool, takes its new name, and its
    // billing moves from the warm rate to on-demand at that instant.
    let n = node(&s, "warm-node", GpuModel::L4, 1).await;
    let new = NewInstance {
        id: InstanceId::from_random(rand::random()),
        tenant_id: t.id.clone(),
        name: "warm-1".into(),
        region: None,
        model: GpuModel::L4,
        count: 1,
        share: None,
        command: "serve".into(),
        idempotency_key: None,
        created_at: ts(10),
        sale: Sale { tier: Tier::Warm, pool: Some(p.id.clone()), ..Sale::default() },
    };
    let member = s.insert_instance(&new).await.unwrap().0;
    assert_eq!(s.pool_members(&p.id).await.unwrap().len(), 1);
    assert_eq!(s.claim_warm(&member.id, member.generation, "mine", ts(15)).await.unwrap(), None, "not running yet");
    s.apply_placements(&n.id, n.generation, &[placement(&member, &[0])], ts(19)).await.unwrap();
    let placed = s.get_instance(None, &member.id).await.unwrap().unwrap();
    let up = InstanceChange { state: InstanceState::Running, stop_target: None, exit_code: None, at: ts(20) };
    let running = s.update_instance(&placed.id, placed.generation, &up).await.unwrap().unwrap();
    assert_eq!(s.claim_warm(&running.id, running.generation - 1, "mine", ts(30)).await.unwrap(), None, "stale");
    let claimed = s.claim_warm(&running.id, running.generation, "mine", ts(30)).await.unwrap().expect("claimed");
    assert_eq!((claimed.name.as_str(), claimed.sale.tier, claimed.sale.pool.as_ref()), ("mine", Tier::OnDemand, None));
    assert!(s.pool_members(&p.id).await.unwrap().is_empty());
    assert_eq!(s.claim_warm(&running.id, claimed.generation, "again", ts(31)).await.unwrap(), None, "handed out once");
    let mut spans: Vec<(Tier, i64, Option<i64>)> = s
        .intervals_of_tenant(&t.id)
        .await
        .unwrap()
        .into_iter()
        .filter(|u| u.instance_id == member.id)
        .map(|u| (u.tier, u.started_at.0, u.ended_at.map(|e| e.0)))
        .collect();
    spans.sort_by_key(|x| x.1);
    assert_eq!(spans, vec![(Tier::Warm, 20, Some(30)), (Tier::OnDemand, 30, None)]);
}

async fn concurrent_state_changes_have_one_winner(s: Arc<dyn Store>) {
    let t = tenant(&s, "a").await;
    let n = node(&s, "gpu-1", GpuModel::A100_40GB, 4).await;
    let i = instance(&s, &t, 2, None).await;
    s.apply_placements(&n.id, n.generation, &[placement(&i, &[0, 1])], ts(20)).await.unwrap();
    let i = s.get_instance(None, &i.id).await.unwrap().unwrap();
    let mut tasks = Vec::new();
    for k in 0..8 {
        let (s, i) = (s.clone(), i.clone());
        tasks.push(tokio::spawn(async move {
            let change =
                InstanceChange { state: InstanceState::Running, stop_target: None, exit_code: None, at: ts(30 + k) };
            s.update_instance(&i.id, i.generation, &change).await
        }));
    }
    let mut winners = 0;
    for t in tasks {
        // Losers get None, never an error: the caller re-reads and decides again.
        if t.await.unwrap().unwrap().is_some() {
            winners += 1;
        }
    }
    assert_eq!(winners, 1);
    assert_eq!(s.intervals_of_tenant(&t.id).await.unwrap().len(), 1, "one billable interval");
    assert_eq!(s.instance_events(&i.id).await.unwrap().len(), 3, "pending, provisioning, running");
}

async fn agents_register_by_name_and_are_fenced_by_epoch(s: Arc<dyn Store>) {
    let gpus: Vec<NewGpu> =
        (0..2).map(|i| NewGpu { index: i, model: GpuModel::T4, uuid: format!("GPU-agent-{i}") }).collect();
    let new = NewNode {
        id: NodeId::from_random(rand::random()),
        name: "host-1".into(),
        region: Region::parse("eu-1").unwrap(),
        gpus: gpus.clone(),
        created_at: ts(1),
    };
    let first = s.register_agent_node(&new).await.unwrap();
    assert_eq!((first.driver, first.epoch, first.gpus.len()), (NodeDriver::Agent, 1, 2));
    assert!(s.record_agent_heartbeat(&first.id, 1, None, ts(5)).await.unwrap());
    // The same host registers again (agent restarted): same node, next epoch; the old one is fenced.
    let again = NewNode { id: NodeId::from_random(rand::random()), ..new.clone() };
    let second = s.register_agent_node(&again).await.unwrap();
    assert_eq!((second.id.clone(), second.epoch), (first.id.clone(), 2));
    assert!(!s.record_agent_heartbeat(&first.id, 1, None, ts(6)).await.unwrap(), "old epoch refused");
    assert!(s.record_agent_heartbeat(&first.id, 2, None, ts(6)).await.unwrap());
    // Numbered beats: one that arrives after a newer one is refused, and changes nothing.
    assert!(s.record_agent_heartbeat(&first.id, 2, Some(2), ts(7)).await.unwrap());
    assert!(!s.record_agent_heartbeat(&first.id, 2, Some(1), ts(8)).await.unwrap(), "late beat refused");
    assert!(!s.record_agent_heartbeat(&first.id, 2, Some(2), ts(8)).await.unwrap(), "a beat is taken once");
    assert_eq!(s.get_node(&first.id).await.unwrap().unwrap().last_heartbeat, Some(ts(7)));
    assert!(s.record_agent_heartbeat(&first.id, 2, Some(3), ts(9)).await.unwrap());
    // A new registration numbers from 1 again.
    let third =
        s.register_agent_node(&NewNode { id: NodeId::from_random(rand::random()), ..new.clone() }).await.unwrap();
    assert_eq!(third.epoch, 3);
    assert!(s.record_agent_heartbeat(&first.id, 3, Some(1), ts(10)).await.unwrap(), "numbering starts again");
    let again = NewNode { id: NodeId::from_random(rand::random()), ..new.clone() };
    let other = NewNode { gpus: gpus[..1].to_vec(), ..again };
    assert!(matches!(s.register_agent_node(&other).await, Err(StoreError::Conflict(_))), "GPUs must match");

    let t = tenant(&s, "a").await;
    let i = instance(&s, &t, 1, None).await;
    let chunk = |seq: i64, data: &str| LogChunk { seq, at: ts(seq), data: data.into() };
    s.append_logs(&i.id, &[chunk(1, "hello "), chunk(2, "world\n")]).await.unwrap();
    s.append_logs(&i.id, &[chunk(2, "world\n"), chunk(3, "bye\n")]).await.unwrap();
    let all: Vec<String> = s.read_logs(&i.id, 0, 100).await.unwrap().into_iter().map(|c| c.data).collect();
    assert_eq!(all.concat(), "hello world\nbye\n", "a resent chunk is stored once");
    assert_eq!(s.read_logs(&i.id, 2, 100).await.unwrap().len(), 1);

    // A new run numbers its chunks from 1 again: they follow the first run's, nothing is lost.
    let n = s.get_node(&first.id).await.unwrap().unwrap();
    let out = s.apply_placements(&n.id, n.generation, &[placement(&i, &[0])], ts(10)).await.unwrap();
    assert_eq!(out, ApplyOutcome::Applied { placed: vec![i.id.clone()] });
    s.append_logs(&i.id, &[chunk(1, "second run\n")]).await.unwrap();
    s.append_logs(&i.id, &[chunk(1, "second run\n")]).await.unwrap();
    let all = s.read_logs(&i.id, 0, 100).await.unwrap();
    let text: String = all.iter().map(|c| c.data.as_str()).collect();
    assert_eq!(text, "hello world\nbye\nsecond run\n");
    assert_eq!(all.last().unwrap().seq, 4, "numbered after the first run's last chunk");
}

async fn a_silent_node_loses_its_instances_at_its_last_heartbeat(s: Arc<dyn Store>) {
    let t = tenant(&s, "a").await;
    let n = node(&s, "gpu-1", GpuModel::A100_40GB, 4).await;
    let i = running_instance(&s, &t, &n, 100).await;
    s.record_heartbeat(&n.id, ts(500)).await.unwrap();
    // Not silent long enough yet.
    assert!(s.mark_silent_nodes_lost(ts(400), ts(600)).await.unwrap().is_empty());
    let lost = s.mark_silent_nodes_lost(ts(1000), ts(2000)).await.unwrap();
    assert_eq!(lost, vec![LostNode { node: n.id.clone(), last_heartbeat: ts(500), instances: vec![i.id.clone()] }]);
    let got = s.get_instance(None, &i.id).await.unwrap().unwrap();
    assert_eq!((got.state, got.node_id, got.gpus), (InstanceState::Lost, None, vec![]));
    let u = s.intervals_of_tenant(&t.id).await.unwrap().remove(0);
    assert_eq!((u.started_at, u.ended_at), (ts(100), Some(ts(500))), "billing ends at the last heartbeat");
    let last = s.instance_events(&i.id).await.unwrap().pop().unwrap();
    assert_eq!((last.from, last.to, last.at), (Some(InstanceState::Running), InstanceState::Lost, ts(500)));
    let n = s.get_node(&n.id).await.unwrap().unwrap();
    assert!(n.gpus.iter().all(|g| g.instance.is_none()) && n.health == NodeHealth::Lost);
    // The agent comes back: the node is healthy again; the instance stays lost.
    s.record_heartbeat(&n.id, ts(3000)).await.unwrap();
    assert_eq!(s.get_node(&n.id).await.unwrap().unwrap().health, NodeHealth::Healthy);
    assert_eq!(s.get_instance(None, &i.id).await.unwrap().unwrap().state, InstanceState::Lost);
}

async fn spot_notices_checkpoints_and_jobs(s: Arc<dyn Store>) {
    let t = tenant(&s, "a").await;
    let n = node(&s, "gpu-1", GpuModel::A100_40GB, 2).await;
    let job = Job {
        id: JobId::from_random(rand::random()),
        tenant_id: t.id.clone(),
        name: "train".into(),
        spec: "{}".into(),
        state: JobState::Running,
        attempts: 0,
        checkpoint: None,
        reason: None,
        generation: 1,
        idempotency_key: Some("k1".into()),
        created_at: ts(5),
        updated_at: ts(5),
    };
    let (stored, created) = s.insert_job(&job).await.unwrap();
    assert!(created);
    let again = Job { id: JobId::from_random(rand::random()), ..job.clone() };
    let (same, created) = s.insert_job(&again).await.unwrap();
    assert!(!created, "the idempotency key finds the first job");
    assert_eq!(same.id, stored.id);
    let bump = JobChange { state: JobState::Running, attempts: 1, reason: None, at: ts(6) };
    let moved = s.update_job(&job.id, 1, &bump).await.unwrap().unwrap();
    assert_eq!((moved.attempts, moved.generation), (1, 2));
    assert!(s.update_job(&job.id, 1, &bump).await.unwrap().is_none(), "a stale generation writes nothing");

    let volume = VolumeRow {
        id: VolumeId::from_random(7),
        tenant_id: t.id.clone(),
        name: "data".into(),
        region: Region::parse("eu-1").unwrap(),
        size_gib: 1,
        node_id: None,
        attached_to: None,
        created_at: ts(9),
        deleted_at: None,
        charged: Money::ZERO,
        charged_seconds: 0,
        project: gpucloud_model::ProjectName::parse("nlp").unwrap(),
    };
    s.insert_volume(&volume).await.unwrap();
    let new = NewInstance {
        id: InstanceId::from_random(rand::random()),
        tenant_id: t.id.clone(),
        name: "train-1".into(),
        region: None,
        model: GpuModel::A100_40GB,
        count: 1,
        share: None,
        command: "train".into(),
        idempotency_key: Some(format!("job:{}:1", job.id)),
        created_at: ts(10),
        sale: Sale {
            tier: Tier::Spot,
            max_price: Some(Money(1_500_000)),
            env: vec![("GPUCLOUD_RESUME_FROM".into(), "/ck/a b=c".into())],
            job: Some((job.id.clone(), 1)),
            cluster: None,
            pool: None,
            image: Some("nvcr.io/nvidia/pytorch:24.05-py3".into()),
            ports: vec!["8888/http".parse().unwrap(), "22/tcp".parse().unwrap()],
            volume: Some((VolumeId::from_random(7), "data:/workspace".parse().unwrap())),
            project: gpucloud_model::ProjectName::parse("nlp").unwrap(),
            on_quota: gpucloud_model::OnQuota::Fail,
            priority: gpucloud_model::Priority::Batch,
        },
    };
    let i = s.insert_instance(&new).await.unwrap().0;
    assert_eq!(i.sale, new.sale, "tier, bid, env, job, image, ports and project come back as written");
    assert!(
        !s.give_notice(&i.id, 5_000, "too early", ts(11)).await.unwrap(),
        "a pending instance has no run to notice"
    );
    s.apply_placements(&n.id, n.generation, &[placement(&i, &[0])], ts(19)).await.unwrap();
    let i = s.get_instance(None, &i.id).await.unwrap().unwrap();
    let running = InstanceChange { state: InstanceState::Running, stop_target: None, exit_code: None, at: ts(20) };
    let i = s.update_instance(&i.id, i.generation, &running).await.unwrap().unwrap();
    assert_eq!(i.running_since, Some(ts(20)));
    assert_eq!(s.intervals_of_tenant(&t.id).await.unwrap()[0].tier, Tier::Spot, "billed at the spot price");
    assert_eq!(s.spot_holders().await.unwrap().iter().map(|h| h.id.clone()).collect::<Vec<_>>(), vec![i.id.clone()]);

    s.record_checkpoint(&i.id, "/ck/3", ts(25)).await.unwrap();
    assert_eq!(s.get_job(None, &job.id).await.unwrap().unwrap().checkpoint.as_deref(), Some("/ck/3"));
    assert!(s.get_job(Some(&tenant(&s, "b").await.id), &job.id).await.unwrap().is_none(), "scoped by tenant");

    assert!(s.give_notice(&i.id, 5, "price", ts(30)).await.unwrap());
    assert!(!s.give_notice(&i.id, 1_000, "again", ts(31)).await.unwrap(), "one notice per run");
    // Undelivered: due only once the grace after its would-be end has passed.
    assert!(s.due_notices(ts(36), 1_000).await.unwrap().is_empty());
    s.deliver_notices(std::slice::from_ref(&i.id), ts(32)).await.unwrap();
    s.deliver_notices(std::slice::from_ref(&i.id), ts(33)).await.unwrap();
    let noticed = s.get_instance(None, &i.id).await.unwrap().unwrap();
    let notice = noticed.notice.clone().unwrap();
    assert_eq!((notice.deadline, notice.reason.as_str()), (Some(ts(37)), "price"), "delivered once");
    assert!(s.due_notices(ts(36), 0).await.unwrap().is_empty());
    assert_eq!(s.due_notices(ts(37), 0).await.unwrap().len(), 1);
    assert_eq!(noticed.checkpoint.as_ref().map(|c| (c.path.as_str(), c.at)), Some(("/ck/3", ts(25))));

    // The run ends: the notice stays on record; starting again clears it.
    let stopping = InstanceChange {
        state: InstanceState::Stopping,
        stop_target: Some(StopTarget::Stopped),
        exit_code: None,
        at: ts(37),
    };
    let i = s.update_instance(&i.id, noticed.generation, &stopping).await.unwrap().unwrap();
    let stopped = InstanceChange { state: InstanceState::Stopped, stop_target: None, exit_code: Some(143), at: ts(38) };
    let i = s.update_instance(&i.id, i.generation, &stopped).await.unwrap().unwrap();
    assert!(i.notice.is_some() && i.running_since.is_none());
    assert!(s.due_notices(ts(99), 0).await.unwrap().is_empty(), "only instances holding GPUs are due");
    let pending = InstanceChange { state: InstanceState::Pending, stop_target: None, exit_code: None, at: ts(40) };
    let i = s.update_instance(&i.id, i.generation, &pending).await.unwrap().unwrap();
    assert!(i.notice.is_none());
    assert_eq!(s.job_attempts(&job.id).await.unwrap().len(), 1);
    assert_eq!(s.active_jobs().await.unwrap().len(), 1);
    let done = JobChange { state: JobState::Succeeded, attempts: 1, reason: Some("exited 0".into()), at: ts(50) };
    s.update_job(&job.id, 2, &done).await.unwrap().unwrap();
    assert!(s.active_jobs().await.unwrap().is_empty());
    assert_eq!(s.list_jobs(&t.id).await.unwrap()[0].state, JobState::Succeeded);
}

async fn metrics_come_back_in_order_per_name(s: Arc<dyn Store>) {
    let t = tenant(&s, "a").await;
    let i = instance(&s, &t, 1, None).await;
    let p = |at: i64, step: Option<i64>, name: &str, value: f64| MetricPoint {
        instance: i.id.clone(),
        at: ts(at),
        step,
        name: name.into(),
        value,
    };
    s.insert_metrics(&[
        p(1, Some(1), "loss", 2.5),
        p(1, Some(1), "samples_per_s", 900.0),
        p(2, Some(2), "loss", 1.25),
        p(3, None, "loss", 0.625),
    ])
    .await
    .unwrap();
    let loss = s.instance_metrics(&i.id, Some("loss"), 100).await.unwrap();
    assert_eq!(
        loss.iter().map(|m| (m.at.0, m.step, m.value)).collect::<Vec<_>>(),
        vec![(1, Some(1), 2.5), (2, Some(2), 1.25), (3, None, 0.625)]
    );
    assert_eq!(s.instance_metrics(&i.id, None, 100).await.unwrap().len(), 4);
    let latest = s.instance_metrics(&i.id, Some("loss"), 2).await.unwrap();
    assert_eq!(latest.iter().map(|m| m.at.0).collect::<Vec<_>>(), vec![2, 3], "the latest, oldest first");
}

async fn gpu_samples_per_instance_fleet_and_retention(s: Arc<dyn Store>) {
    let t = tenant(&s, "a").await;
    let a = instance(&s, &t, 1, Some("a")).await;
    let b = instance(&s, &t, 1, Some("b")).await;
    let n = NodeId::from_random(1);
    let sample = |gpu: u32, at: i64, holder: Option<&InstanceId>, util: f64, temp: f64| GpuSample {
        node_id: n.clone(),
        gpu_index: gpu,
        at: ts(at),
        instance: holder.cloned(),
        temperature_c: temp,
        power_w: 100.0 + util,
        energy_mj: at,
        memory_used_mib: (util * 10.0) as i64,
        utilization_pct: util,
        xid: None,
        ecc_uncorrectable: 0,
    };
    let samples = vec![
        // GPU 0 held whole by a; GPU 1 sliced between a and b; GPU 2 free.
        sample(0, 1_000, Some(&a.id), 80.0, 60.0),
        sample(1, 1_000, Some(&a.id), 40.0, 50.0),
        sample(1, 1_000, Some(&b.id), 40.0, 50.0),
        sample(2, 1_000, None, 0.0, 30.0),
        sample(0, 11_000, Some(&a.id), 100.0, 70.0),
        sample(1, 11_000, Some(&b.id), 20.0, 45.0),
        sample(2, 11_000, None, 0.0, 31.0),
        sample(0, 61_000, Some(&a.id), 60.0, 65.0),
    ];
    s.insert_gpu_samples(&samples).await.unwrap();
    s.insert_gpu_samples(&samples[..2]).await.unwrap(); // a retry stores nothing twice

    let mine = s.instance_telemetry(&a.id, ts(0), 60_000).await.unwrap();
    let rows: Vec<(i64, u32, u32, f64, f64)> =
        mine.iter().map(|g| (g.at.0, g.gpu_index, g.samples, g.utilization_pct, g.max_temperature_c)).collect();
    assert_eq!(rows, vec![(0, 0, 2, 90.0, 70.0), (0, 1, 1, 40.0, 50.0), (60_000, 0, 1, 60.0, 65.0)]);
    assert_eq!(s.instance_telemetry(&b.id, ts(5_000), 60_000).await.unwrap().len(), 1, "since is honoured");
    assert_eq!(s.instance_peak_utilization(&a.id, ts(0)).await.unwrap(), Some((100.0, ts(1_000))));
    assert_eq!(s.instance_peak_utilization(&b.id, ts(5_000)).await.unwrap(), Some((20.0, ts(11_000))));
    assert_eq!(s.instance_peak_utilization(&b.id, ts(20_000)).await.unwrap(), None);
    let latest = s.latest_gpu_samples(ts(5_000)).await.unwrap();
    let got: Vec<(u32, i64, f64)> = latest.iter().map(|x| (x.gpu_index, x.at.0, x.utilization_pct)).collect();
    assert_eq!(got, vec![(0, 61_000, 60.0), (1, 11_000, 20.0), (2, 11_000, 0.0)], "one per GPU, the latest");

    let fleet = s.fleet_telemetry(ts(0), 60_000).await.unwrap();
    assert_eq!(fleet.len(), 2);
    // 6 GPU-samples in the first minute (the sliced GPU counted once per time): mean 240 / 6.
    assert_eq!((fleet[0].gpus, fleet[0].allocated), (3, 2));
    assert!((fleet[0].utilization_pct - 40.0).abs() < 1e-9, "{}", fleet[0].utilization_pct);
    assert_eq!(fleet[0].max_temperature_c, 70.0);
    assert_eq!((fleet[1].gpus, fleet[1].allocated), (1, 1));

    s.insert_metrics(&[MetricPoint { instance: a.id.clone(), at: ts(5), step: None, name: "loss".into(), value: 1.0 }])
        .await
        .unwrap();
    assert_eq!(s.prune_telemetry(ts(11_000), ts(0)).await.unwrap(), (4, 0));
    assert_eq!(s.prune_telemetry(ts(11_000), ts(10)).await.unwrap(), (0, 1));
    assert_eq!(s.fleet_telemetry(ts(0), 60_000).await.unwrap()[0].gpus, 3, "the later samples stay");
}

async fn one_replica_holds_a_lease_at_a_time(s: Arc<dyn Store>) {
    assert_eq!(s.try_lease("r", "a", ts(0), ts(3_000)).await.unwrap(), Some(1));
    assert_eq!(s.try_lease("r", "b", ts(1_000), ts(4_000)).await.unwrap(), None, "a's lease runs");
    assert_eq!(s.try_lease("r", "a", ts(2_000), ts(5_000)).await.unwrap(), Some(1), "renewed, same epoch");
    assert_eq!(s.try_lease("r", "b", ts(4_999), ts(8_000)).await.unwrap(), None, "renewed until 5,000");
    assert_eq!(s.try_lease("r", "b", ts(5_001), ts(8_000)).await.unwrap(), Some(2), "expired: b takes it");
    assert_eq!(s.try_lease("r", "a", ts(5_002), ts(8_000)).await.unwrap(), None, "a is out");
    s.release_lease("r", "a").await.unwrap(); // not a's to release: nothing happens
    assert_eq!(s.try_lease("r", "a", ts(6_000), ts(9_000)).await.unwrap(), None);
    s.release_lease("r", "b").await.unwrap();
    assert_eq!(s.try_lease("r", "a", ts(6_001), ts(9_000)).await.unwrap(), Some(3), "released: taken at once");
    assert_eq!(s.try_lease("other", "b", ts(6_002), ts(9_000)).await.unwrap(), Some(1), "leases are independent");
    // Racing for a free lease: exactly one wins.
    let (x, y) = tokio::join!(s.try_lease("race", "x", ts(0), ts(1_000)), s.try_lease("race", "y", ts(0), ts(1_000)));
    assert_eq!([x.unwrap(), y.unwrap()].iter().filter(|r| r.is_some()).count(), 1);
}

async fn a_shared_rate_bucket_gives_its_burst_then_its_rate(s: Arc<dyn Store>) {
    // 2 tokens a second, 10 at most; full the first time.
    let take = |want, at| {
        let s = s.clone();
        async move { s.take_rate_tokens("k-1", want, 2.0, 10.0, ts(at)).await.unwrap() }
    };
    assert_eq!((take(4, 0).await, take(4, 0).await, take(4, 0).await, take(4, 0).await), (4, 4, 2, 0));
    assert_eq!(take(4, 1_000).await, 2, "a second refills two");
    assert_eq!(take(4, 500).await, 0, "a clock that went back refills nothing");
    assert_eq!(take(50, 60_000).await, 10, "never more than the burst");
    assert_eq!(s.take_rate_tokens("k-2", 3, 2.0, 10.0, ts(0)).await.unwrap(), 3, "each key its own bucket");
    // Concurrent takers share it: 10 at once, 10 granted in all.
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { s.take_rate_tokens("k-3", 2, 0.001, 10.0, ts(0)).await.unwrap() })
        })
        .collect();
    let mut granted = 0;
    for t in tasks {
        granted += t.await.unwrap();
    }
    assert_eq!(granted, 10);
}

async fn an_instance_endpoint_is_kept_without_a_new_generation(s: Arc<dyn Store>) {
    let t = tenant(&s, "ep").await;
    let n = node(&s, "ep-node", GpuModel::A100_40GB, 2).await;
    let i = running_instance(&s, &t, &n, 10).await;
    assert_eq!(i.endpoint, None);
    s.set_instance_endpoint(&i.id, "10.0.0.7:41234").await.unwrap();
    let again = s.get_instance(None, &i.id).await.unwrap().unwrap();
    assert_eq!(again.endpoint.as_deref(), Some("10.0.0.7:41234"));
    assert_eq!(again.generation, i.generation, "not a state change: reconcilers' compare-and-set still holds");
    let members = s.instances_on_node(&n.id).await.unwrap();
    assert_eq!(members[0].endpoint.as_deref(), Some("10.0.0.7:41234"));

    // Node labels: kept as given, replaced whole, cleared by an empty set.
    let labels: std::collections::BTreeMap<String, String> =
        [("rack".to_string(), "r7".to_string()), ("nvlink".to_string(), "a=b c".to_string())].into();
    s.set_node_labels(&n.id, &labels).await.unwrap();
    assert_eq!(s.get_node(&n.id).await.unwrap().unwrap().labels, labels);
    s.set_node_labels(&n.id, &Default::default()).await.unwrap();
    assert!(s.get_node(&n.id).await.unwrap().unwrap().labels.is_empty());
}

async fn secrets_are_per_tenant_and_progress_is_not_a_state_change(s: Arc<dyn Store>) {
    let (a, b) = (tenant(&s, "sec-a").await, tenant(&s, "sec-b").await);
    let row = |t: &Tenant, name: &str, sealed: &str, at: i64| SecretRow {
        tenant_id: t.id.clone(),
        name: name.into(),
        sealed: sealed.into(),
        created_at: ts(at),
        updated_at: ts(at),
    };
    assert!(s.put_secret(&row(&a, "HF_TOKEN", "v1:aa", 10)).await.unwrap(), "new");
    assert!(!s.put_secret(&row(&a, "HF_TOKEN", "v1:bb", 20)).await.unwrap(), "replaced");
    assert!(s.put_secret(&row(&b, "HF_TOKEN", "v1:cc", 30)).await.unwrap(), "another tenant's own");
    let got = s.get_secret(&a.id, "HF_TOKEN").await.unwrap().unwrap();
    assert_eq!((got.sealed.as_str(), got.created_at, got.updated_at), ("v1:bb", ts(10), ts(20)));
    assert_eq!(s.get_secret(&b.id, "HF_TOKEN").await.unwrap().unwrap().sealed, "v1:cc");
    s.put_secret(&row(&a, "AWS_KEY", "v1:dd", 40)).await.unwrap();
    let names: Vec<String> = s.list_secrets(&a.id).await.unwrap().into_iter().map(|r| r.name).collect();
    assert_eq!(names, ["AWS_KEY", "HF_TOKEN"]);
    assert!(s.delete_secret(&a.id, "HF_TOKEN").await.unwrap());
    assert!(!s.delete_secret(&a.id, "HF_TOKEN").await.unwrap());
    assert!(s.get_secret(&a.id, "HF_TOKEN").await.unwrap().is_none());
    assert!(s.get_secret(&b.id, "HF_TOKEN").await.unwrap().is_some(), "b's is untouched");

    let n = node(&s, "prog-node", GpuModel::A100_40GB, 1).await;
    let i = running_instance(&s, &a, &n, 10).await;
    s.set_instance_progress(&i.id, Some("pulling image x: 45%")).await.unwrap();
    s.set_instance_published(&i.id, &[(8888, 31234), (22, 31235)]).await.unwrap();
    let again = s.get_instance(None, &i.id).await.unwrap().unwrap();
    assert_eq!(again.progress.as_deref(), Some("pulling image x: 45%"));
    assert_eq!(again.published, vec![(8888, 31234), (22, 31235)]);
    assert_eq!(again.generation, i.generation);
    s.set_instance_progress(&i.id, None).await.unwrap();
    s.set_instance_published(&i.id, &[]).await.unwrap();
    let again = s.get_instance(None, &i.id).await.unwrap().unwrap();
    assert_eq!((again.progress, again.published), (None, vec![]));

    assert_eq!(s.node_ingress(&n.id).await.unwrap(), None);
    s.set_node_ingress(&n.id, Some(41234), Some("ab".repeat(32).as_str())).await.unwrap();
    assert_eq!(s.node_ingress(&n.id).await.unwrap(), Some((41234, "ab".repeat(32))));
    s.set_node_ingress(&n.id, None, None).await.unwrap();
    assert_eq!(s.node_ingress(&n.id).await.unwrap(), None);

    let tpl = |t: &Tenant, name: &str| TemplateRow {
        tenant_id: t.id.clone(),
        name: name.into(),
        spec: format!("{{\"image\": \"{name}\"}}"),
        created_at: ts(5),
    };
    s.insert_template(&tpl(&a, "train")).await.unwrap();
    s.insert_template(&tpl(&b, "train")).await.unwrap();
    assert!(matches!(s.insert_template(&tpl(&a, "train")).await, Err(StoreError::Conflict(_))));
    s.insert_template(&tpl(&a, "infer")).await.unwrap();
    let names: Vec<String> = s.list_templates(&a.id).await.unwrap().into_iter().map(|t| t.name).collect();
    assert_eq!(names, ["infer", "train"]);
    assert_eq!(s.get_template(&a.id, "train").await.unwrap(), Some(tpl(&a, "train")));
    assert!(s.delete_template(&a.id, "train").await.unwrap());
    assert!(!s.delete_template(&a.id, "train").await.unwrap());
    assert!(s.get_template(&b.id, "train").await.unwrap().is_some());

    let auth = |t: &Tenant, registry: &str, user: &str| RegistryAuthRow {
        tenant_id: t.id.clone(),
        registry: registry.into(),
        username: user.into(),
        sealed: "v1:00".into(),
        created_at: ts(7),
    };
    s.put_registry_auth(&auth(&a, "nvcr.io", "$oauthtoken")).await.unwrap();
    s.put_registry_auth(&auth(&a, "nvcr.io", "robot")).await.unwrap();
    s.put_registry_auth(&auth(&a, "ghcr.io", "me")).await.unwrap();
    let got = s.list_registry_auths(&a.id).await.unwrap();
    assert_eq!(got, vec![auth(&a, "ghcr.io", "me"), auth(&a, "nvcr.io", "robot")], "replaced, by registry");
    assert!(s.list_registry_auths(&b.id).await.unwrap().is_empty());
    assert!(s.delete_registry_auth(&a.id, "nvcr.io").await.unwrap());
    assert!(!s.delete_registry_auth(&a.id, "nvcr.io").await.unwrap());
}

async fn a_volume_is_held_by_one_live_instance_and_lives_where_first_placed(s: Arc<dyn Store>) {
    let (a, b) = (tenant(&s, "vol-a").await, tenant(&s, "vol-b").await);
    let vol = |t: &Tenant, name: &str| VolumeRow {
        id: VolumeId::from_random(rand::random()),
        tenant_id: t.id.clone(),
        name: name.into(),
        region: Region::parse("eu-1").unwrap(),
        size_gib: 10,
        node_id: None,
        attached_to: None,
        created_at: ts(100),
        deleted_at: None,
        charged: Money::ZERO,
        charged_seconds: 0,
        project: ProjectName::default(),
    };
    let data = vol(&a, "data");
    s.insert_volume(&data).await.unwrap();
    assert!(matches!(s.insert_volume(&vol(&a, "data")).await, Err(StoreError::Conflict(_))), "a live name is taken");
    s.insert_volume(&vol(&b, "data")).await.unwrap();
    assert_eq!(s.find_volume(&a.id, "data").await.unwrap(), Some(data.clone()));
    assert_eq!(s.find_volume(&a.id, data.id.as_str()).await.unwrap(), Some(data.clone()), "by id too");
    assert_eq!(s.find_volume(&b.id, data.id.as_str()).await.unwrap(), None, "not another tenant's");

    // One live instance at a time.
    let first = instance(&s, &a, 1, None).await;
    let second = instance(&s, &a, 1, None).await;
    assert!(s.attach_volume(&data.id, &first.id).await.unwrap());
    assert!(!s.attach_volume(&data.id, &second.id).await.unwrap(), "held by a live instance");
    assert!(!s.delete_volume(&data.id, ts(150)).await.unwrap(), "in use cannot be deleted");
    assert_eq!(s.find_volume(&a.id, "data").await.unwrap().unwrap().attached_to, Some(first.id.clone()));

    // Its first placement binds it to that node.
    let n = node(&s, "vol-node", GpuModel::A100_40GB, 2).await;
    let mut p = placement(&first, &[0]);
    p.volume = Some(data.id.clone());
    s.apply_placements(&n.id, n.generation, &[p], ts(200)).await.unwrap();
    assert_eq!(s.get_volume(&data.id).await.unwrap().unwrap().node_id, Some(n.id.clone()));
    // A placement elsewhere of an instance holding it is refused.
    let other = node(&s, "vol-other", GpuModel::A100_40GB, 2).await;
    let third = instance(&s, &a, 1, None).await;
    let mut p = placement(&third, &[0]);
    p.volume = Some(data.id.clone());
    let out = s
        .apply_plan(
            &[NodeBatch { node: other.id.clone(), node_generation: other.generation, placements: vec![p] }],
            ts(210),
        )
        .await
        .unwrap();
    assert_eq!(out, vec![ApplyOutcome::Conflict]);

    // A terminated instance lets go of it.
    let i = s.get_instance(None, &first.id).await.unwrap().unwrap();
    let gone = InstanceChange { state: InstanceState::Terminated, stop_target: None, exit_code: None, at: ts(300) };
    s.update_instance(&i.id, i.generation, &gone).await.unwrap().unwrap();
    assert_eq!(s.find_volume(&a.id, "data").await.unwrap().unwrap().attached_to, None);
    assert!(s.attach_volume(&data.id, &second.id).await.unwrap());
    s.detach_volume(&data.id, &second.id).await.unwrap();

    // A tenant lists its own live volumes by name.
    s.insert_volume(&vol(&a, "cache")).await.unwrap();
    let names = |v: Vec<VolumeRow>| v.into_iter().map(|v| v.name).collect::<Vec<_>>();
    assert_eq!(names(s.list_volumes(&a.id).await.unwrap()), vec!["cache", "data"]);
    assert_eq!(names(s.list_volumes(&b.id).await.unwrap()), vec!["data"]);

    // Deleted: its name is free again, and the node is told to remove its data once.
    assert!(s.delete_volume(&data.id, ts(400)).await.unwrap());
    assert!(!s.delete_volume(&data.id, ts(401)).await.unwrap());
    assert_eq!(s.find_volume(&a.id, "data").await.unwrap(), None);
    assert_eq!(names(s.list_volumes(&a.id).await.unwrap()), vec!["cache"], "a deleted volume is not listed");
    s.insert_volume(&vol(&a, "data")).await.unwrap();
    assert_eq!(s.volumes_to_purge(&n.id).await.unwrap(), vec![data.id.clone()]);
    s.mark_volumes_purged(&other.id, std::slice::from_ref(&data.id), ts(500)).await.unwrap();
    assert_eq!(s.volumes_to_purge(&n.id).await.unwrap().len(), 1, "only its own node purges it");
    s.mark_volumes_purged(&n.id, std::slice::from_ref(&data.id), ts(500)).await.unwrap();
    assert!(s.volumes_to_purge(&n.id).await.unwrap().is_empty());

    // Deleted but not yet settled, it is still a's to accrue for, and never b's.
    let of_a: Vec<VolumeId> = s.unsettled_volumes_of(&a.id).await.unwrap().into_iter().map(|v| v.id).collect();
    assert!(of_a.contains(&data.id), "{of_a:?}");
    assert!(s.unsettled_volumes_of(&b.id).await.unwrap().iter().all(|v| v.tenant_id == b.id));
    let all_of_a = s.unsettled_volumes().await.unwrap().into_iter().filter(|v| v.tenant_id == a.id).count();
    assert_eq!(of_a.len(), all_of_a);

    // Storage charges move money once, and settle a deleted volume.
    let v = s.get_volume(&data.id).await.unwrap().unwrap();
    let record = |amount: i64, key: &str| LedgerRecord {
        id: format!("e-{key}"),
        entry: Entry::usage(&a.id, Money(amount)),
        memo: "volume data".into(),
        instance_id: None,
        interval_id: None,
        model: None,
        seconds: 300,
        idempotency_key: key.into(),
        created_at: ts(500),
    };
    let charge = VolumeCharge {
        volume: v.clone(),
        amount: Money(30),
        seconds: 300,
        settled: true,
        record: Some(record(30, "vol-1")),
    };
    assert_eq!(s.charge_volumes(std::slice::from_ref(&charge)).await.unwrap(), vec![true]);
    assert_eq!(s.charge_volumes(&[charge]).await.unwrap(), vec![false], "computed from a stale charge");
    assert_eq!(s.balance(&a.id).await.unwrap(), Money(-30));
    assert!(s.unsettled_volumes().await.unwrap().iter().all(|u| u.id != data.id));
    assert!(s.unsettled_volumes_of(&a.id).await.unwrap().iter().all(|u| u.id != data.id), "settled");

    let eu = Region::parse("eu-1").unwrap();
    assert!(s.add_storage_price(&eu, ts(0), Money(100)).await.unwrap());
    assert!(!s.add_storage_price(&eu, ts(0), Money(200)).await.unwrap());
    s.add_storage_price(&Region::parse("us-1").unwrap(), ts(5), Money(300)).await.unwrap();
    assert_eq!(s.storage_prices(Some(&eu)).await.unwrap(), vec![(eu.clone(), ts(0), Money(100))]);
    assert_eq!(s.storage_prices(None).await.unwrap().len(), 2);
}

async fn ssh_keys_are_per_tenant_and_nodes_keep_their_ssh_endpoint(s: Arc<dyn Store>) {
    let a = tenant(&s, "ssh-a").await;
    let b = tenant(&s, "ssh-b").await;
    let key = |t: &Tenant, name: &str, material: &str| SshKeyRow {
        tenant_id: t.id.clone(),
        name: name.into(),
        public_key: format!("ssh-ed25519 {material}"),
        algorithm: "ssh-ed25519".into(),
        fingerprint: format!("SHA256:{material}"),
        comment: "me@laptop".into(),
        created_at: ts(5),
    };
    s.insert_ssh_key(&key(&a, "laptop", "AAAA1")).await.unwrap();
    s.insert_ssh_key(&key(&a, "desktop", "AAAA2")).await.unwrap();
    // A name is taken once per tenant; another tenant may use it.
    assert!(matches!(s.insert_ssh_key(&key(&a, "laptop", "AAAA3")).await, Err(StoreError::Conflict(_))));
    s.insert_ssh_key(&key(&b, "laptop", "AAAA4")).await.unwrap();
    let names: Vec<String> = s.list_ssh_keys(&a.id).await.unwrap().into_iter().map(|k| k.name).collect();
    assert_eq!(names, ["desktop", "laptop"]);
    assert_eq!(s.list_ssh_keys(&a.id).await.unwrap()[1], key(&a, "laptop", "AAAA1"));
    // Deleting is per tenant: b's key of the same name stays.
    assert!(s.delete_ssh_key(&a.id, "laptop").await.unwrap());
    assert!(!s.delete_ssh_key(&a.id, "laptop").await.unwrap());
    assert_eq!(s.list_ssh_keys(&b.id).await.unwrap().len(), 1);

    let n = node(&s, "ssh-host", GpuModel::T4, 1).await;
    assert_eq!(s.node_ssh(&n.id).await.unwrap(), None);
    s.set_node_ssh(&n.id, Some((2222, "ssh-ed25519 HOSTKEY"))).await.unwrap();
    assert_eq!(s.node_ssh(&n.id).await.unwrap(), Some((2222, "ssh-ed25519 HOSTKEY".to_string())));
    let other = node(&s, "no-ssh-host", GpuModel::T4, 1).await;
    let both = [n.id.clone(), other.id.clone()];
    let served = s.nodes_ssh(&both).await.unwrap();
    assert_eq!(served.len(), 1, "a node without SSH is absent");
    assert_eq!(served[&n.id], (n.reached_at().to_string(), 2222, "ssh-ed25519 HOSTKEY".to_string()));
    s.set_node_ssh(&n.id, None).await.unwrap();
    assert_eq!(s.node_ssh(&n.id).await.unwrap(), None);
    assert!(s.nodes_ssh(&both).await.unwrap().is_empty());
}

async fn nodes_keep_what_their_agents_say_and_reasons_are_not_state_changes(s: Arc<dyn Store>) {
    let t = tenant(&s, "nodes").await;
    assert_eq!(s.get_tenant(&t.id).await.unwrap(), Some(t.clone()));
    assert_eq!(s.get_tenant(&TenantId::from_random(rand::random())).await.unwrap(), None);

    let n = node(&s, "box-1", GpuModel::A100_40GB, 2).await;
    let m = node(&s, "box-2", GpuModel::T4, 1).await;
    let names: Vec<String> = s.list_nodes().await.unwrap().into_iter().map(|n| n.name).collect();
    assert!(names.contains(&"box-1".to_string()) && names.contains(&"box-2".to_string()), "{names:?}");

    // A GPU taken out of service bumps the node's generation (placements read against it) once.
    assert!(s.set_gpu_health(&n.id, 1, false).await.unwrap());
    let after = s.get_node(&n.id).await.unwrap().unwrap();
    assert_eq!(after.gpus.iter().map(|g| g.healthy).collect::<Vec<_>>(), [true, false]);
    assert_eq!(after.generation, n.generation + 1);
    assert!(s.set_gpu_health(&n.id, 1, false).await.unwrap());
    assert_eq!(s.get_node(&n.id).await.unwrap().unwrap().generation, after.generation, "no change, no bump");
    assert!(!s.set_gpu_health(&n.id, 7, false).await.unwrap(), "no such GPU");
    assert!(s.set_gpu_health(&n.id, 1, true).await.unwrap());

    // What the agent says of its node: images, address, labels; each node keeps its own.
    s.set_node_images(&n.id, &["nvcr.io/nvidia/pytorch:24.05-py3".to_string(), "busybox:1".to_string()]).await.unwrap();
    s.set_node_address(&n.id, Some("10.0.0.5")).await.unwrap();
    let got = s.get_node(&n.id).await.unwrap().unwrap();
    let mut images = got.images.clone();
    images.sort();
    assert_eq!(images, ["busybox:1", "nvcr.io/nvidia/pytorch:24.05-py3"]);
    assert_eq!(got.address.as_deref(), Some("10.0.0.5"));
    let other = s.get_node(&m.id).await.unwrap().unwrap();
    assert!(other.images.is_empty() && other.address.is_none());
    s.set_node_images(&n.id, &[]).await.unwrap();
    s.set_node_address(&n.id, None).await.unwrap();
    let cleared = s.get_node(&n.id).await.unwrap().unwrap();
    assert!(cleared.images.is_empty() && cleared.address.is_none());

    // Pending instances, at most as many as asked; reasons are kept without a new generation.
    let first = instance(&s, &t, 1, None).await;
    let second = instance(&s, &t, 1, None).await;
    let pending: Vec<InstanceId> = s.list_pending(10).await.unwrap().into_iter().map(|i| i.id).collect();
    assert!(pending.contains(&first.id) && pending.contains(&second.id), "{pending:?}");
    assert_eq!(s.list_pending(1).await.unwrap().len(), 1);
    s.set_pending_reason(&first.id, Some("no A100-40GB free in eu-1")).await.unwrap();
    s.set_status_reason(&first.id, Some("stopped by billing")).await.unwrap();
    let got = s.get_instance(Some(&t.id), &first.id).await.unwrap().unwrap();
    assert_eq!(got.pending_reason.as_deref(), Some("no A100-40GB free in eu-1"));
    assert_eq!(got.status_reason.as_deref(), Some("stopped by billing"));
    assert_eq!(got.generation, first.generation, "a reason is not a state change");
    s.set_pending_reason(&first.id, None).await.unwrap();
    assert_eq!(s.get_instance(None, &first.id).await.unwrap().unwrap().pending_reason, None);
}

async fn a_gang_is_inserted_whole_once_and_the_market_sees_spot_work(s: Arc<dyn Store>) {
    let t = tenant(&s, "gang").await;
    let member = |rank: u32, tier: Tier| NewInstance {
        id: InstanceId::from_random(rand::random()),
        tenant_id: t.id.clone(),
        name: format!("m-{rank}"),
        region: None,
        model: GpuModel::A100_40GB,
        count: 1,
        share: None,
        command: "sleep 1".into(),
        idempotency_key: Some(format!("gang:1:{rank}")),
        created_at: ts(10),
        sale: Sale { tier, ..Sale::default() },
    };
    let gang = [member(0, Tier::Spot), member(1, Tier::Spot)];
    assert_eq!(s.insert_instances(&gang).await.unwrap(), [true, true]);
    // The same keys again (a replica computing the same pass): nothing new.
    let again = [member(0, Tier::Spot), member(1, Tier::Spot)];
    assert_eq!(s.insert_instances(&again).await.unwrap(), [false, false]);
    assert_eq!(s.list_instances(Some(&t.id)).await.unwrap().len(), 2);
    // Nothing ran yet, so it ran nowhere.
    assert_eq!(s.instance_ran_on(&gang[0].id).await.unwrap(), None);

    // The market sees spot (and reserved) work that is pending or holds GPUs, not on-demand.
    instance(&s, &t, 1, None).await;
    let market: Vec<InstanceId> = s.market_instances().await.unwrap().into_iter().map(|i| i.id).collect();
    assert_eq!(market.len(), 2, "{market:?}");
    assert!(market.contains(&gang[0].id) && market.contains(&gang[1].id));
}

/// What the scheduler's cached fleet rests on: every change to a node as `list_nodes` shows it,
/// but its heartbeat's time, moves its generation, and `nodes_by_id` reads what `get_node` does.
async fn a_node_whose_generation_stands_still_reads_the_same(s: Arc<dyn Store>) {
    let t = tenant(&s, "cache").await;
    let n = node(&s, "cache-1", GpuModel::A100_40GB, 2).await;
    let m = node(&s, "cache-2", GpuModel::A100_40GB, 1).await;
    let generation = |id: NodeId| {
        let s = s.clone();
        async move { s.node_generations().await.unwrap().into_iter().find(|(n, _)| *n == id).map(|(_, g)| g) }
    };
    assert_eq!(generation(n.id.clone()).await, Some(n.generation));
    // The node less what may change without a new generation.
    let read = |id: NodeId| {
        let s = s.clone();
        async move {
            let mut node = s.get_node(&id).await.unwrap().unwrap();
            node.last_heartbeat = None;
            node
        }
    };
    let mut before = read(n.id.clone()).await;
    // Each step: what it did, and whether it changed the node.
    let mut check = async |what: &str, changes: bool| {
        let after = read(n.id.clone()).await;
        assert_eq!(after != before, changes, "{what}: {before:?} -> {after:?}");
        assert_eq!(after.generation != before.generation, changes, "{what} and the generation");
        assert_eq!(generation(n.id.clone()).await, Some(after.generation));
        before = after;
    };
    s.record_heartbeat(&n.id, ts(50)).await.unwrap();
    check("a heartbeat", false).await;
    s.set_node_images(&n.id, &["busybox:1".to_string()]).await.unwrap();
    check("new images", true).await;
    s.set_node_images(&n.id, &["busybox:1".to_string()]).await.unwrap();
    check("the same images again", false).await;
    s.set_node_images(&n.id, &[]).await.unwrap();
    check("no images", true).await;
    s.set_node_address(&n.id, Some("10.0.0.9")).await.unwrap();
    check("an address", true).await;
    s.set_node_labels(&n.id, &[("time-slicing".to_string(), "shared".to_string())].into()).await.unwrap();
    check("labels", true).await;
    s.set_gpu_health(&n.id, 0, false).await.unwrap();
    check("a GPU out of service", true).await;
    s.set_gpu_health(&n.id, 0, true).await.unwrap();
    check("a GPU back", true).await;
    let i = instance(&s, &t, 1, None).await;
    let gen_now = generation(n.id.clone()).await.unwrap();
    s.apply_placements(&n.id, gen_now, &[placement(&i, &[1])], ts(60)).await.unwrap();
    check("a placement", true).await;
    let i = s.get_instance(None, &i.id).await.unwrap().unwrap();
    let running = InstanceChange { state: InstanceState::Running, stop_target: None, exit_code: None, at: ts(61) };
    let i = s.update_instance(&i.id, i.generation, &running).await.unwrap().unwrap();
    check("its workload running", false).await;
    let stopped = InstanceChange { state: InstanceState::Stopped, stop_target: None, exit_code: Some(0), at: ts(62) };
    s.update_instance(&i.id, i.generation, &stopped).await.unwrap().unwrap();
    check("its GPU released", true).await;
    s.set_node_state(&n.id, NodeState::Cordoned, None).await.unwrap();
    check("cordoned", true).await;
    s.mark_silent_nodes_lost(ts(100), ts(150)).await.unwrap();
    check("lost", true).await;

    // Read by ids: those that exist, whatever the number of ids asked (several statements).
    let mut ids: Vec<NodeId> = (0..1200).map(|_| NodeId::from_random(rand::random())).collect();
    ids.insert(3, n.id.clone());
    ids.push(m.id.clone());
    let mut got = s.nodes_by_id(&ids).await.unwrap();
    got.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(got, [s.get_node(&n.id).await.unwrap().unwrap(), s.get_node(&m.id).await.unwrap().unwrap()]);
    assert!(s.nodes_by_id(&[]).await.unwrap().is_empty());
}

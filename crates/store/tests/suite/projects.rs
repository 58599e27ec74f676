//! Projects and quotas against both backends: the admission count under concurrency, waiting
//! requests let in oldest first, starts counted again.

use super::*;

fn project(name: &str) -> ProjectName {
    ProjectName::parse(name).unwrap()
}

fn new_in(t: &Tenant, project_name: &str, count: u32, on_quota: OnQuota, at: i64) -> NewInstance {
    NewInstance {
        id: InstanceId::from_random(rand::random()),
        tenant_id: t.id.clone(),
        name: "q".into(),
        region: None,
        model: GpuModel::A100_40GB,
        count,
        share: None,
        command: "sleep 1".into(),
        idempotency_key: None,
        created_at: ts(at),
        sale: Sale { project: project(project_name), on_quota, priority: Priority::Production, ..Sale::default() },
    }
}

fn quota(t: &Tenant, p: &str, limit: u64, guaranteed: u64) -> Quota {
    Quota {
        tenant_id: t.id.clone(),
        project: project(p),
        model: GpuModel::A100_40GB,
        limit_milli: limit * 1000,
        guaranteed_milli: guaranteed * 1000,
        updated_at: ts(5),
    }
}

pub(crate) async fn projects_are_per_tenant(s: Arc<dyn Store>) {
    let (a, b) = (tenant(&s, "a").await, tenant(&s, "b").await);
    let p = Project {
        tenant_id: a.id.clone(),
        name: project("ml"),
        max_priority: Priority::Default,
        created_at: ts(3),
        monthly_budget: None,
    };
    s.create_project(&p).await.unwrap();
    assert!(matches!(s.create_project(&p).await, Err(StoreError::Conflict(_))));
    s.create_project(&Project { tenant_id: b.id.clone(), ..p.clone() }).await.unwrap();
    let cv = Project { name: project("cv"), max_priority: Priority::Batch, created_at: ts(4), ..p.clone() };
    s.create_project(&cv).await.unwrap();
    assert_eq!(s.list_projects(&a.id).await.unwrap(), vec![cv.clone(), p.clone()]);
    // A budget is set and cleared; `default` gets a row when given one.
    s.set_project_budget(&a.id, &project("ml"), Some(Money(5_000_000)), ts(5)).await.unwrap();
    s.set_project_budget(&a.id, &ProjectName::default(), Some(Money(1_000_000)), ts(6)).await.unwrap();
    let listed = s.list_projects(&a.id).await.unwrap();
    let budgets: Vec<(&str, Option<Money>)> = listed.iter().map(|p| (p.name.as_str(), p.monthly_budget)).collect();
    assert_eq!(budgets, [("cv", None), ("default", Some(Money(1_000_000))), ("ml", Some(Money(5_000_000)))]);
    assert_eq!(listed[2].max_priority, Priority::Default, "a budget leaves the rest alone");
    s.set_project_budget(&a.id, &project("ml"), None, ts(7)).await.unwrap();
    assert_eq!(s.list_projects(&a.id).await.unwrap()[2].monthly_budget, None);
    assert_eq!(s.list_projects(&b.id).await.unwrap().len(), 1);
}

pub(crate) async fn a_quota_admits_exactly_its_limit_under_concurrent_creates(s: Arc<dyn Store>) {
    let t = tenant(&s, "a").await;
    s.set_quota(&quota(&t, "ml", 8, 4)).await.unwrap();
    let mut tasks = Vec::new();
    for k in 0..100 {
        let s = s.clone();
        let new = new_in(&t, "ml", 1, OnQuota::Fail, 10 + k);
        tasks.push(tokio::spawn(async move { s.insert_instance(&new).await }));
    }
    let (mut admitted, mut refused) = (0u32, 0);
    for task in tasks {
        match task.await.unwrap() {
            Ok((i, true)) => admitted += i.count,
            Err(StoreError::QuotaExceeded(r)) => {
                assert_eq!((r.project.as_str(), r.limit_milli), ("ml", 8000));
                assert!(r.used_milli + r.asked_milli > 8000, "{r}");
                refused += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((admitted, refused), (8, 92));
    let used = s.quota_use(&t.id, Some(&project("ml"))).await.unwrap();
    assert_eq!(used.len(), 1);
    assert_eq!(used[0].used_milli, u64::from(admitted) * 1000);
    assert_eq!(used[0].quota.as_ref().map(|q| (q.limit_milli, q.guaranteed_milli)), Some((8000, 4000)));
    // Another project, or the same name in another tenant, is not limited by it.
    assert!(s.insert_instance(&new_in(&t, "cv", 16, OnQuota::Fail, 99)).await.is_ok());
    let other = tenant(&s, "b").await;
    assert!(s.insert_instance(&new_in(&other, "ml", 16, OnQuota::Fail, 99)).await.is_ok());
}

pub(crate) async fn waiting_requests_are_let_in_oldest_first_as_room_frees(s: Arc<dyn Store>) {
    let t = tenant(&s, "a").await;
    s.set_quota(&quota(&t, "ml", 2, 0)).await.unwrap();
    let first = s.insert_instance(&new_in(&t, "ml", 2, OnQuota::Wait, 10)).await.unwrap().0;
    assert_eq!(first.sale.on_quota, OnQuota::Fail, "within the limit: not held");
    assert_eq!(first.sale.priority, Priority::Production);
    let big = s.insert_instance(&new_in(&t, "ml", 2, OnQuota::Wait, 11)).await.unwrap().0;
    let small = s.insert_instance(&new_in(&t, "ml", 1, OnQuota::Wait, 12)).await.unwrap().0;
    assert_eq!((big.sale.on_quota, small.sale.on_quota), (OnQuota::Wait, OnQuota::Wait));
    let reason = big.pending_reason.clone().unwrap();
    assert!(reason.contains("project ml is at its A100-40GB limit 2/2 GPUs"), "{reason}");
    assert!(small.pending_reason.unwrap().contains("1 held request(s) ahead"));
    // Held requests are not in the scheduler's queue and do not count.
    let queue: Vec<InstanceId> = s.list_pending(100).await.unwrap().into_iter().map(|i| i.id).collect();
    assert_eq!(queue, vec![first.id.clone()]);
    let u = &s.quota_use(&t.id, Some(&project("ml"))).await.unwrap()[0];
    assert_eq!((u.used_milli, u.waiting, u.waiting_milli), (2000, 2, 3000));
    // Nothing frees: nothing is let in, and the small one does not overtake the big one.
    assert!(s.admit_held(ts(20)).await.unwrap().is_empty());
    let c = |st| InstanceChange { state: st, stop_target: None, exit_code: None, at: ts(30) };
    s.update_instance(&first.id, first.generation, &c(InstanceState::Terminated)).await.unwrap().unwrap();
    assert_eq!(s.admit_held(ts(31)).await.unwrap(), vec![big.id.clone()]);
    let small = s.get_instance(None, &small.id).await.unwrap().unwrap();
    assert_eq!(small.sale.on_quota, OnQuota::Wait);
    assert!(small.pending_reason.unwrap().contains("limit 2/2"));
    // The limit removed: everything waiting goes in.
    assert!(s.delete_quota(&t.id, &project("ml"), GpuModel::A100_40GB).await.unwrap());
    assert!(!s.delete_quota(&t.id, &project("ml"), GpuModel::A100_40GB).await.unwrap());
    assert_eq!(s.admit_held(ts(32)).await.unwrap(), vec![small.id.clone()]);
    let queue = s.list_pending(100).await.unwrap();
    assert_eq!(queue.len(), 2);
    assert!(queue.iter().all(|i| i.pending_reason.is_none() && i.sale.on_quota == OnQuota::Fail));
}

pub(crate) async fn a_start_counts_against_the_limit_again(s: Arc<dyn Store>) {
    let t = tenant(&s, "a").await;
    let first = s.insert_instance(&new_in(&t, "default", 2, OnQuota::Fail, 10)).await.unwrap().0;
    let c = |st| InstanceChange { state: st, stop_target: None, exit_code: None, at: ts(30) };
    let stopped = s.update_instance(&first.id, first.generation, &c(InstanceState::Stopped)).await.unwrap().unwrap();
    s.set_quota(&Quota { project: ProjectName::default(), ..quota(&t, "ml", 2, 0) }).await.unwrap();
    s.insert_instance(&new_in(&t, "default", 1, OnQuota::Fail, 40)).await.unwrap();
    let refused = s.update_instance(&stopped.id, stopped.generation, &c(InstanceState::Pending)).await;
    assert!(matches!(refused, Err(StoreError::QuotaExceeded(_))), "{refused:?}");
    let still = s.get_instance(None, &first.id).await.unwrap().unwrap();
    assert_eq!((still.state, still.generation), (InstanceState::Stopped, stopped.generation), "nothing written");
    s.set_quota(&Quota { project: ProjectName::default(), ..quota(&t, "ml", 3, 0) }).await.unwrap();
    let started = s.update_instance(&stopped.id, stopped.generation, &c(InstanceState::Pending)).await.unwrap();
    assert_eq!(started.unwrap().state, InstanceState::Pending);
    // Fair share reads what is held (not queued) and what is deserved.
    let before = s.project_shares().await.unwrap();
    assert_eq!(before.iter().map(|(_, p, u, w)| (p.as_str(), *u, *w)).collect::<Vec<_>>(), vec![("default", 0, 0)]);
    let n = node(&s, "gpu-1", GpuModel::A100_40GB, 4).await;
    let pending = s.get_instance(None, &first.id).await.unwrap().unwrap();
    s.apply_placements(&n.id, n.generation, &[placement(&pending, &[0, 1])], ts(50)).await.unwrap();
    s.set_quota(&quota(&t, "ml", 4, 3)).await.unwrap();
    let shares = s.project_shares().await.unwrap();
    assert_eq!(
        shares.iter().map(|(_, p, used, weight)| (p.as_str(), *used, *weight)).collect::<Vec<_>>(),
        vec![("default", 2000, 0), ("ml", 0, 3000)]
    );
    let all = s.quota_use(&t.id, None).await.unwrap();
    assert_eq!(
        all.iter().map(|u| (u.project.as_str(), u.used_milli)).collect::<Vec<_>>(),
        vec![("default", 3000), ("ml", 0)]
    );
}

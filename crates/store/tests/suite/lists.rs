//! The store suite's lists: a tenant's instances read a page at a time by their cursor, and
//! by name, on both backends.

use super::*;

pub(crate) async fn instance_pages_follow_the_cursor(s: Arc<dyn Store>) {
    let a = tenant(&s, "a").await;
    let b = tenant(&s, "b").await;
    let n = node(&s, "gpu-1", GpuModel::A100_40GB, 4).await;
    // Seven made in the same millisecond: the id breaks the tie, as in the whole list.
    for _ in 0..7 {
        instance(&s, &a, 1, None).await;
    }
    instance(&s, &b, 1, None).await;
    let ml = NewInstance {
        id: InstanceId::from_random(rand::random()),
        tenant_id: a.id.clone(),
        name: "ml-job".into(),
        region: None,
        model: GpuModel::A100_40GB,
        count: 2,
        share: None,
        command: "sleep 1".into(),
        idempotency_key: None,
        created_at: ts(20),
        sale: Sale { project: ProjectName::parse("ml").unwrap(), ..Sale::default() },
    };
    let ml = s.insert_instance(&ml).await.unwrap().0;
    assert!(matches!(
        s.apply_placements(&n.id, n.generation, &[placement(&ml, &[2, 3])], ts(21)).await.unwrap(),
        ApplyOutcome::Applied { .. }
    ));
    let whole = s.list_instances(Some(&a.id)).await.unwrap();
    assert_eq!(whole.len(), 8);

    let mut paged = Vec::new();
    let mut after: Option<(Timestamp, String)> = None;
    loop {
        let page = s.instances_page(&a.id, None, after.as_ref().map(|(t, id)| (*t, id.as_str())), 3).await.unwrap();
        assert!(page.len() <= 3);
        let Some(last) = page.last() else { break };
        after = Some((last.created_at, last.id.to_string()));
        paged.extend(page);
    }
    assert_eq!(paged, whole, "every instance once, in the list's order, GPUs filled in");
    assert_eq!(paged.last().unwrap().gpus, vec![2, 3]);

    let ml_only = s.instances_page(&a.id, Some(&ProjectName::parse("ml").unwrap()), None, 10).await.unwrap();
    assert_eq!(ml_only.iter().map(|i| i.id.clone()).collect::<Vec<_>>(), vec![ml.id.clone()]);
    let after_ml = s.instances_page(&a.id, None, Some((ml.created_at, ml.id.as_str())), 10).await.unwrap();
    assert!(after_ml.is_empty());
    assert_eq!(s.instances_page(&b.id, None, None, 10).await.unwrap().len(), 1, "another tenant's are not read");
    // By name: that name's instances, with their GPUs, and only the tenant's own.
    assert_eq!(s.instances_named(&a.id, "ml-job").await.unwrap(), vec![paged.last().unwrap().clone()]);
    assert!(s.instances_named(&b.id, "ml-job").await.unwrap().is_empty());
    assert!(s.instances_named(&a.id, "no-such").await.unwrap().is_empty());
}

pub(crate) async fn instances_in_states_are_those_of_every_tenant(s: Arc<dyn Store>) {
    let a = tenant(&s, "a").await;
    let b = tenant(&s, "b").await;
    let n = node(&s, "gpu-1", GpuModel::A100_40GB, 4).await;
    let first = instance(&s, &a, 1, None).await;
    let placed = instance(&s, &b, 2, None).await;
    let last = instance(&s, &b, 1, None).await;
    assert!(matches!(
        s.apply_placements(&n.id, n.generation, &[placement(&placed, &[1, 2])], ts(21)).await.unwrap(),
        ApplyOutcome::Applied { .. }
    ));
    let ids = |v: Vec<Instance>| v.into_iter().map(|i| i.id).collect::<Vec<_>>();
    // Made in the same millisecond: in the whole list's order (the id breaks the tie).
    let whole = s.list_instances(None).await.unwrap();
    let pending = s.instances_in_states(&[InstanceState::Pending]).await.unwrap();
    let want: Vec<InstanceId> = whole.iter().filter(|i| i.id != placed.id).map(|i| i.id.clone()).collect();
    assert_eq!(ids(pending), want, "both tenants', in order");
    assert!(want.contains(&first.id) && want.contains(&last.id));
    let holding = s.instances_in_states(&[InstanceState::Provisioning, InstanceState::Running]).await.unwrap();
    assert_eq!(holding.len(), 1);
    assert_eq!((&holding[0].id, &holding[0].gpus), (&placed.id, &vec![1, 2]), "with its GPUs");
    let both = s.instances_in_states(&[InstanceState::Provisioning, InstanceState::Pending]).await.unwrap();
    assert_eq!(ids(both), ids(whole));
    assert!(s.instances_in_states(&[InstanceState::Lost]).await.unwrap().is_empty());
    assert!(s.instances_in_states(&[]).await.unwrap().is_empty());
}

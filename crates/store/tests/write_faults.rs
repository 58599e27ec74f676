//! The write fault `sim chaos` puts in the store: the rows it lets through are written, every
//! write after them fails whole (its transaction rolls back), reads keep working, and ending the
//! fault leaves the store as it was.

use gpucloud_model::{GpuModel, NodeId, Region, Role, TenantId, Timestamp};
use gpucloud_store::{NewGpu, NewNode, SqlStore, Store, Tenant};

fn tenant(name: &str) -> Tenant {
    Tenant {
        id: TenantId::from_random(rand::random()),
        name: name.into(),
        role: Role::Tenant,
        created_at: Timestamp(1),
    }
}

#[tokio::test]
async fn writes_fail_after_the_rows_let_through_and_recover() {
    let s = SqlStore::open("sqlite::memory:").await.unwrap();
    s.create_tenant(&tenant("before")).await.unwrap();

    s.fail_writes_after(Some(1)).await.unwrap();
    s.create_tenant(&tenant("let-through")).await.unwrap();
    let err = s.create_tenant(&tenant("refused")).await.unwrap_err();
    assert!(err.to_string().contains("injected store fault"), "{err}");
    // A node with its GPUs is one transaction of several rows: none of it stays.
    let id = NodeId::from_random(rand::random());
    let gpus = (0..4).map(|i| NewGpu { index: i, model: GpuModel::T4, uuid: format!("GPU-{i}") }).collect();
    let node = NewNode {
        id: id.clone(),
        name: "n".into(),
        region: Region::parse("eu-1").unwrap(),
        gpus,
        created_at: Timestamp(1),
    };
    s.fail_writes_after(Some(2)).await.unwrap();
    assert!(s.insert_node(&node).await.is_err());
    assert!(s.get_node(&id).await.unwrap().is_none(), "a node half written");
    let names: Vec<String> = s.list_tenants().await.unwrap().into_iter().map(|t| t.name).collect();
    assert_eq!(names.iter().filter(|n| ["before", "let-through"].contains(&n.as_str())).count(), 2, "{names:?}");
    assert!(!names.contains(&"refused".to_string()), "{names:?}");

    s.fail_writes_after(None).await.unwrap();
    s.insert_node(&node).await.unwrap();
    assert_eq!(s.get_node(&id).await.unwrap().unwrap().gpus.len(), 4);
    // Ending a fault that is not on changes nothing.
    s.fail_writes_after(None).await.unwrap();
    s.create_tenant(&tenant("after")).await.unwrap();
}

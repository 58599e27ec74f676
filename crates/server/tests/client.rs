//! The typed client (`gpucloud-client`) against a real server: the wire types round-trip, a
//! refusal comes back as the server's problem document naming its field, and a replica that
//! cannot be reached is skipped without sending anything twice.

mod common;

use common::TestServer;
use gpucloud_api::{CreateInstanceRequest, InstanceState, Tier};
use gpucloud_client::{Client, ClientError, InstanceAction};
use gpucloud_model::{GpuModel, Region};

fn request(count: u32) -> CreateInstanceRequest {
    CreateInstanceRequest {
        gpu: GpuModel::T4,
        count,
        gpu_share: None,
        gpu_memory_mib: None,
        mig: None,
        region: Some(Region::parse("eu-1").unwrap()),
        command: "sleep 600".into(),
        template: None,
        name: Some("typed".into()),
        tier: None,
        max_price_per_gpu_hour: None,
        image: None,
        env: Default::default(),
        secrets: Vec::new(),
        ports: Vec::new(),
        volume: None,
        project: None,
        on_quota: None,
        priority: None,
    }
}

fn tls() -> gpucloud_client::tls::TlsConfig {
    gpucloud_client::tls::client_config(None).unwrap()
}

#[test]
fn typed_calls_create_show_list_and_stop_an_instance() {
    let s = TestServer::start();
    let key = s.tenant("typed");
    let c = Client::new(&s.url, Some(key.clone()), tls());
    assert_eq!(c.whoami().unwrap().tenant.name, "typed");

    let inst = c.create_instance(&request(1), Some("typed-1")).unwrap();
    assert_eq!((inst.state, inst.tier, inst.name.as_str()), (InstanceState::Pending, Tier::OnDemand, "typed"));
    // The same idempotency key answers with the same instance.
    assert_eq!(c.create_instance(&request(1), Some("typed-1")).unwrap().id, inst.id);

    let running = common::poll("the instance to run", || {
        let i = c.instance(&inst.id).unwrap();
        (i.state == InstanceState::Running).then_some(i)
    });
    assert!(running.node.is_some());
    assert_eq!(c.instances().unwrap().iter().map(|i| i.id.as_str()).collect::<Vec<_>>(), [inst.id.as_str()]);

    let stopping = c.instance_action(&inst.id, InstanceAction::Stop).unwrap();
    assert!(matches!(stopping.state, InstanceState::Stopping | InstanceState::Stopped), "{stopping:?}");

    // Another tenant's client does not see it.
    let other = Client::new(&s.url, Some(s.tenant("other")), tls());
    match other.instance(&inst.id) {
        Err(ClientError::Api(p)) => assert_eq!((p.status, p.code.as_str()), (404, "not_found")),
        got => panic!("another tenant read the instance: {got:?}"),
    }
}

#[test]
fn a_refusal_is_the_servers_problem_naming_its_field() {
    let s = TestServer::start();
    let c = Client::new(&s.url, Some(s.tenant("picky")), tls());
    let e = c.create_instance(&request(0), None).unwrap_err();
    let p = e.problem().expect("a problem document");
    assert_eq!((p.status, p.field.as_deref()), (422, Some("count")), "{p:?}");
    assert!(e.to_string().contains("[field: count]"), "{e}");

    let anonymous = Client::new(&s.url, None, tls());
    assert_eq!(anonymous.whoami().unwrap_err().problem().map(|p| p.status), Some(401));
}

#[test]
fn an_unreachable_replica_is_skipped_and_nothing_is_sent_twice() {
    let s = TestServer::start();
    let key = s.tenant("failover");
    // A port nothing listens on: bound, then closed, so connections are refused.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let c = Client::new(&format!("http://{dead},{}", s.url), Some(key), tls());
    let inst = c.create_instance(&request(1), None).unwrap();
    assert_eq!(c.instances().unwrap().len(), 1, "one create, one instance");
    assert_eq!(c.instance(&inst.id).unwrap().id, inst.id);

    let nowhere = Client::new(&format!("http://{dead}"), None, tls());
    match nowhere.whoami() {
        Err(ClientError::Transport(m)) => assert!(m.contains(&dead.to_string()), "{m}"),
        got => panic!("a dead server answered: {got:?}"),
    }
}

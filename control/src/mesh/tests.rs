use super::*;
use crate::fixtures::{doc, node, task};
use dcpp_reconciler::{DesiredState, Health, TaskState};

fn web(ports: &[(&str, Option<&str>, Option<&str>, &str)]) -> ServiceDoc {
    let mut d = doc("s", "web", &[]);
    for (mode, published, host_ip, protocol) in ports {
        d.service.ports.push(dcpp_spec::Port {
            name: None,
            mode: (*mode).into(),
            host_ip: host_ip.map(Into::into),
            target: 80,
            published: published.map(Into::into),
            protocol: (*protocol).into(),
            app_protocol: None,
            extensions: Default::default(),
        });
    }
    d
}

fn services(docs: &[ServiceDoc]) -> BTreeMap<String, ServiceDoc> {
    docs.iter().map(|d| (d.id().0, d.clone())).collect()
}

fn tasks(ts: &[Task]) -> BTreeMap<TaskId, Task> {
    ts.iter().map(|t| (t.id, t.clone())).collect()
}

#[test]
fn only_fixed_ingress_ports_on_every_address_are_meshed() {
    let d = web(&[
        ("ingress", Some("8080"), None, "tcp"),
        ("ingress", Some("9000-9001"), Some("0.0.0.0"), "udp"),
        ("host", Some("8081"), None, "tcp"),
        ("ingress", Some("8082"), Some("127.0.0.1"), "tcp"),
        ("ingress", None, None, "tcp"),
        ("ingress", Some("8083"), None, "sctp"),
        ("ingress", Some("8080"), None, "tcp"),
    ]);
    assert_eq!(
        mesh_ports(&d),
        [
            (8080, "tcp".to_string()),
            (9000, "udp".to_string()),
            (9001, "udp".to_string())
        ]
    );
}

#[test]
fn serving_replicas_are_counted_per_node_and_every_node_is_listed() {
    let d = web(&[("ingress", Some("8080"), None, "tcp")]);
    let mut unhealthy = task(4, "s_web", 3, TaskState::Running);
    unhealthy.health = Health::Unhealthy;
    let mut stopping = task(5, "s_web", 3, TaskState::Running);
    stopping.desired = DesiredState::Shutdown;
    let ts = tasks(&[
        task(1, "s_web", 1, TaskState::Running),
        task(2, "s_web", 1, TaskState::Running),
        task(3, "s_web", 2, TaskState::Starting),
        unhealthy,
        stopping,
        task(6, "s_web", 2, TaskState::Running),
    ]);
    let nodes = [
        node(1, "10.1.0.1:7377"),
        node(2, "10.1.0.2:7377"),
        node(3, "10.1.0.3:7377"),
        node(4, "unix-socket"),
    ];
    let m = desired(&services(&[d]), &ts, &nodes);
    assert_eq!(
        m.nodes,
        BTreeMap::from([
            (1, "10.1.0.1".parse().unwrap()),
            (2, "10.1.0.2".parse().unwrap()),
            (3, "10.1.0.3".parse().unwrap()),
        ])
    );
    assert_eq!(
        m.ports,
        [MeshPort {
            service: "s_web".into(),
            published: 8080,
            protocol: "tcp".into(),
            serving: BTreeMap::from([(1, 2), (2, 1)]),
        }]
    );
    // Node 3 forwards to both others by their replica counts; node 1 could forward to node 2
    // (used only while it has no serving replica itself).
    assert_eq!(
        forwards(&m, 3),
        [(
            8080,
            "tcp".to_string(),
            vec![
                "10.1.0.1".parse().unwrap(),
                "10.1.0.1".parse().unwrap(),
                "10.1.0.2".parse().unwrap()
            ]
        )]
    );
    assert_eq!(
        forwards(&m, 1),
        [(8080, "tcp".to_string(), vec!["10.1.0.2".parse().unwrap()])]
    );
}

#[test]
fn a_port_served_nowhere_else_forwards_nowhere_and_no_ports_is_an_empty_mesh() {
    let d = web(&[("ingress", Some("8080"), None, "tcp")]);
    let nodes = [node(1, "10.1.0.1:7377"), node(2, "10.1.0.2:7377")];
    let m = desired(
        &services(std::slice::from_ref(&d)),
        &tasks(&[task(1, "s_web", 1, TaskState::Running)]),
        &nodes,
    );
    assert_eq!(
        forwards(&m, 1),
        [(8080, "tcp".to_string(), vec![])],
        "only itself serves it"
    );
    assert_eq!(
        forwards(&m, 2),
        [(8080, "tcp".to_string(), vec!["10.1.0.1".parse().unwrap()])]
    );
    let none = desired(&services(&[d]), &BTreeMap::new(), &nodes);
    assert_eq!(none.ports[0].serving, BTreeMap::new());
    assert_eq!(forwards(&none, 2), [(8080, "tcp".to_string(), vec![])]);
    let empty = desired(&BTreeMap::new(), &BTreeMap::new(), &[]);
    assert_eq!(empty, MeshDoc::default());
}

//! `network_mode: service:NAME`: placement next to a running task of NAME, start after it, and
//! replacement when the task whose network namespace was joined is gone. Exact actions.

mod common;
use common::*;
use dcpp_reconciler::*;

/// `web` pinned to node n2; `side` joins its network namespace.
fn stack(side_replicas: u32) -> Desired {
    let mut web = ServiceSpec::new("s", "web", "busybox", 1);
    web.placement.constraints = vec![Constraint::parse("node.hostname==n2").unwrap()];
    let mut side = ServiceSpec::new("s", "side", "busybox", side_replicas);
    side.network_peer = Some("web".into());
    side.depends_on = vec![Dependency {
        service: "web".into(),
        condition: DependencyCondition::ServiceStarted,
    }];
    desired(vec![web, side])
}

fn step(d: &Desired, o: &mut Observed, now: Time) -> Vec<String> {
    let p = plan(d, o, now);
    apply(o, &p).unwrap();
    kinds(&p)
}

#[test]
fn sidecar_starts_after_its_peer_on_the_peers_node() {
    let d = stack(2);
    let mut o = cluster(&["n1", "n2", "n3"]);
    assert_eq!(
        step(&d, &mut o, 0),
        [
            "status",
            "create t1 s_side.1",
            "create t2 s_side.2",
            "status",
            "create t3 s_web.1",
            "pending t1: waiting for dependency web (service_started)",
            "pending t2: waiting for dependency web (service_started)",
            "assign t3 n2",
        ]
    );
    agent(&mut o, 1);
    // Both replicas go to n2 although n1 and n3 are empty: only n2 runs a web task.
    assert_eq!(step(&d, &mut o, 2), ["assign t1 n2", "assign t2 n2"]);
    agent(&mut o, 3);
    assert!(plan(&d, &o, 4).is_empty());
}

#[test]
fn pending_sidecar_says_which_nodes_lack_the_peer() {
    let d = stack(1);
    let mut o = cluster(&["n1", "n2"]);
    converge(&d, &mut o, 0);
    // Pause n2 (its tasks stay) and kill the sidecar: its replacement has nowhere to go.
    o.nodes.get_mut(&NodeId("n2".into())).unwrap().availability = Availability::Pause;
    let side = live(&o, "s_side")[0].id;
    fail(&mut o, side, 1, 20_000);
    let p = plan(&d, &o, 20_001);
    assert_eq!(
        p.pending[0].reason.to_string(),
        "no suitable node (n1: no running task of web (network_mode: service:web); \
         n2: node is paused)"
    );
}

#[test]
fn sidecar_is_replaced_when_its_peer_dies_and_rejoins_the_new_one() {
    let d = stack(1);
    let mut o = cluster(&["n1", "n2"]);
    step(&d, &mut o, 0);
    agent(&mut o, 1); // web t2 runs from 1
    step(&d, &mut o, 2);
    agent(&mut o, 3); // side t1 runs from 3, in web t2's namespace
    assert!(plan(&d, &o, 4).is_empty());

    fail(&mut o, TaskId(2), 137, 30_000);
    assert_eq!(
        step(&d, &mut o, 30_001),
        ["shutdown t1", "restart t2->t3 s_web.1", "assign t3 n2"]
    );
    // The replacement web starts; the sidecar's old container stops.
    agent(&mut o, 30_002);
    assert_eq!(
        step(&d, &mut o, 30_003),
        ["create t4 s_side.1", "assign t4 n2"]
    );
    agent(&mut o, 30_004);
    assert!(plan(&d, &o, 30_005).is_empty());
    assert_eq!(running(&o, "s_side")[0].id, TaskId(4));
}

#[test]
fn sidecar_keeps_running_until_its_peer_has_really_stopped() {
    let mut d = stack(1);
    let mut o = cluster(&["n1", "n2"]);
    converge(&d, &mut o, 0);
    let side = running(&o, "s_side")[0].id;
    let web = running(&o, "s_web")[0].id;
    // A stop-first update of web: the old web is asked to stop, the sidecar is left alone
    // while that container still holds the namespace.
    let mut v2 = d.services[&ServiceId("s_web".into())].clone();
    v2.version = 2;
    d.insert(v2);
    assert_eq!(step(&d, &mut o, 10), ["status", &format!("shutdown {web}")]);
    agent(&mut o, 11);
    let kinds = step(&d, &mut o, 12);
    assert!(kinds.contains(&format!("shutdown {side}")), "{kinds:?}");
    converge(&d, &mut o, 13);
    let (w, s) = (running(&o, "s_web")[0], running(&o, "s_side")[0]);
    assert_eq!(w.spec_version, 2);
    assert!(s.started_at >= w.started_at && s.id != side);
}

#[test]
fn sidecar_that_never_started_is_dropped_when_its_peer_goes() {
    let d = stack(1);
    let mut o = cluster(&["n1", "n2"]);
    step(&d, &mut o, 0);
    agent(&mut o, 1);
    assert_eq!(step(&d, &mut o, 2), ["assign t1 n2"]);
    // The peer dies before the agent created the sidecar.
    fail(&mut o, TaskId(2), 137, 30_000);
    let kinds = step(&d, &mut o, 30_001);
    assert_eq!(kinds[0], "shutdown t1");
}

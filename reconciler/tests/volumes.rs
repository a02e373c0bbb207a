//! Exact-action tests of the volume placement rule: a local named volume lives on the node of
//! the first task that mounts it, every later task that mounts it goes there, and nothing but
//! the user's removal of the record lets one go elsewhere.

mod common;
use common::*;
use dcpp_reconciler::*;

fn db(replicas: u32) -> ServiceSpec {
    let mut s = ServiceSpec::new("s", "db", "busybox", replicas);
    s.volumes.insert("data".into(), "s_data".into());
    s
}

fn node(id: &str) -> NodeId {
    NodeId(id.into())
}

fn set_status(o: &mut Observed, id: &str, status: NodeStatus) {
    o.nodes.get_mut(&node(id)).unwrap().status = status;
}

fn pending_messages(o: &Observed) -> Vec<String> {
    o.tasks
        .values()
        .filter(|t| t.is_live() && t.state == TaskState::Pending)
        .map(|t| format!("{}: {}", t.name(), t.message))
        .collect()
}

#[test]
fn the_first_assignment_records_the_volume_and_every_replica_follows_it() {
    let d = desired(vec![db(2)]);
    let mut o = cluster(&["n1", "n2"]);
    let p = plan(&d, &o, 0);
    assert_eq!(
        kinds(&p),
        [
            "status",
            "create t1 s_db.1",
            "create t2 s_db.2",
            "pin s_data n1",
            "assign t1 n1",
            // Not spread to the emptier n2: the data is on n1.
            "assign t2 n1",
        ]
    );
    apply(&mut o, &p).unwrap();
    assert_eq!(o.volumes, [("s_data".to_string(), node("n1"))].into());
    assert!(plan(&d, &o, 0).is_empty());
}

#[test]
fn a_task_whose_volume_node_is_down_waits_there_and_returns_there() {
    let d = desired(vec![db(1)]);
    let mut o = cluster(&["n1", "n2"]);
    converge(&d, &mut o, 0);
    set_status(&mut o, "n1", NodeStatus::Down);
    let p = plan(&d, &o, 10);
    assert_eq!(
        kinds(&p),
        [
            "orphan t1",
            "restart t1->t2 s_db.1",
            "pending t2: volume s_data lives on node n1, which is down",
        ]
    );
    assert_eq!(
        p.pending,
        [Pending {
            task: TaskId(2),
            name: "s_db.1".into(),
            reason: PendingReason::VolumeHome {
                volume: "s_data".into(),
                node: node("n1"),
                why: Some(Rejection::Down),
            },
        }]
    );
    apply(&mut o, &p).unwrap();
    // Planning again while it is down changes nothing: no new volume appears on n2.
    assert!(plan(&d, &o, 20).is_empty());
    set_status(&mut o, "n1", NodeStatus::Ready);
    let p = plan(&d, &o, 30);
    assert_eq!(kinds(&p), ["assign t2 n1"]);
}

#[test]
fn a_drained_volume_node_stops_the_task_and_its_replacement_says_why_it_waits() {
    let d = desired(vec![db(1)]);
    let mut o = cluster(&["n1", "n2"]);
    converge(&d, &mut o, 0);
    o.nodes.get_mut(&node("n1")).unwrap().availability = Availability::Drain;
    converge(&d, &mut o, 10);
    assert!(running(&o, "s_db").is_empty());
    assert_eq!(
        pending_messages(&o),
        ["s_db.1: volume s_data lives on node n1, which is drained"]
    );
}

#[test]
fn other_nodes_are_rejected_for_the_volume_before_anything_else() {
    let mut spec = db(1);
    spec.reservations.memory = 100;
    let d = desired(vec![spec]);
    let mut o = cluster(&["n1", "n2"]);
    o.nodes.get_mut(&node("n1")).unwrap().resources.memory = 50;
    o.volumes.insert("s_data".into(), node("n1"));
    let p = plan(&d, &o, 0);
    assert_eq!(
        p.pending[0].reason.to_string(),
        "volume s_data lives on node n1, where insufficient memory (need 100 B, free 50 B)"
    );
    // A volume on a node that left the cluster is named as such.
    o.nodes.remove(&node("n1"));
    let p = plan(&d, &o, 0);
    assert_eq!(
        p.pending[0].reason.to_string(),
        "volume s_data lives on node n1, which is no longer in the cluster"
    );
}

#[test]
fn only_removing_the_record_lets_the_slot_start_over_on_another_node() {
    let d = desired(vec![db(1)]);
    let mut o = cluster(&["n1", "n2"]);
    converge(&d, &mut o, 0);
    set_status(&mut o, "n1", NodeStatus::Down);
    converge(&d, &mut o, 10);
    assert!(running(&o, "s_db").is_empty());
    // The user's explicit act: the record goes (`dcpp volume rm --force`).
    o.volumes.clear();
    let p = plan(&d, &o, 20);
    assert_eq!(kinds(&p), ["pin s_data n2", "assign t2 n2"]);
}

#[test]
fn two_volumes_on_two_nodes_leave_no_node_for_the_task() {
    let mut spec = db(1);
    spec.volumes.insert("logs".into(), "s_logs".into());
    let d = desired(vec![spec]);
    let mut o = cluster(&["n1", "n2"]);
    o.volumes.insert("s_data".into(), node("n1"));
    o.volumes.insert("s_logs".into(), node("n2"));
    let p = plan(&d, &o, 0);
    assert_eq!(
        p.pending[0].reason.to_string(),
        "volume s_data lives on node n1, where volume s_logs lives on node n2"
    );
}

#[test]
fn external_volumes_and_global_services_are_not_bound_to_a_node() {
    let mut ext = db(2);
    ext.name = "ext".into();
    ext.volumes = [("shared".to_string(), "shared".to_string())].into();
    ext.external_volumes.insert("shared".into());
    let mut glob = db(0);
    glob.name = "agent".into();
    glob.mode = Mode::Global;
    let d = desired(vec![ext, glob]);
    let mut o = cluster(&["n1", "n2"]);
    converge(&d, &mut o, 0);
    assert!(o.volumes.is_empty(), "{:?}", o.volumes);
    let on = |s: &str| -> Vec<String> {
        let mut v: Vec<String> = running(&o, s)
            .iter()
            .map(|t| t.node.clone().unwrap().0)
            .collect();
        v.sort();
        v
    };
    assert_eq!(on("s_ext"), ["n1", "n2"]);
    assert_eq!(on("s_agent"), ["n1", "n2"]);
}

#[test]
fn a_running_task_without_a_record_records_its_node() {
    // A store written before volumes were recorded: the task runs on n2 with the data there.
    let d = desired(vec![db(1)]);
    let mut o = cluster(&["n1", "n2"]);
    converge(&d, &mut o, 0);
    o.volumes.clear();
    for t in o.tasks.values_mut() {
        t.node = Some(node("n2"));
    }
    let p = plan(&d, &o, 5);
    assert_eq!(kinds(&p), ["pin s_data n2"]);
    apply(&mut o, &p).unwrap();
    assert!(plan(&d, &o, 5).is_empty());
}

#[test]
fn a_pin_to_another_node_is_refused_as_stale() {
    let mut o = cluster(&["n1", "n2"]);
    o.volumes.insert("s_data".into(), node("n1"));
    let p = Plan {
        now: 0,
        actions: vec![Action::PinVolume {
            volume: "s_data".into(),
            node: node("n2"),
        }],
        pending: vec![],
        requeue_after: None,
    };
    assert!(matches!(apply(&mut o, &p), Err(Error::Stale(_))));
    assert_eq!(o.volumes["s_data"], node("n1"));
}

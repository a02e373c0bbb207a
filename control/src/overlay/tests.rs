use super::*;
use crate::fixtures::{doc, node, task};

fn run(
    services: &[ServiceDoc],
    tasks: &[Task],
    existing: &BTreeMap<String, NetworkDoc>,
) -> Result<BTreeMap<String, NetworkDoc>, Error> {
    let services: BTreeMap<String, ServiceDoc> =
        services.iter().map(|d| (d.id().0, d.clone())).collect();
    let tasks: BTreeMap<TaskId, Task> = tasks.iter().map(|t| (t.id, t.clone())).collect();
    let nodes = [node(1, "10.1.0.1:7377"), node(2, "10.1.0.2:7377")];
    desired(&Inputs {
        services: &services,
        tasks: &tasks,
        nodes: &nodes,
        existing,
        pool: Pool::parse("10.50.0.0/16", 24).unwrap(),
    })
}

#[test]
fn each_network_gets_its_own_subnet_and_vni_and_each_task_an_address_across_nodes() {
    let web = doc("s", "web", &[("front", &["www"]), ("back", &[])]);
    let db = doc("s", "db", &[("back", &[])]);
    let tasks = [
        task(1, "s_web", 1, TaskState::Running),
        task(2, "s_web", 2, TaskState::Running),
        task(3, "s_db", 2, TaskState::Starting),
    ];
    let out = run(&[web, db], &tasks, &BTreeMap::new()).unwrap();
    assert_eq!(out.keys().collect::<Vec<_>>(), ["s_back", "s_front"]);
    let (back, front) = (&out["s_back"], &out["s_front"]);
    assert_eq!((back.subnet.as_str(), back.vni), ("10.50.0.0/24", 4096));
    assert_eq!((front.subnet.as_str(), front.vni), ("10.50.1.0/24", 4097));
    let ips = |d: &NetworkDoc| -> Vec<(u64, Ipv4Addr, u64)> {
        d.endpoints
            .iter()
            .map(|(t, e)| (*t, e.ip, e.node))
            .collect()
    };
    // .1 is every node's gateway; the two web tasks on different nodes never share one.
    assert_eq!(
        ips(back),
        [
            (1, Ipv4Addr::new(10, 50, 0, 2), 1),
            (2, Ipv4Addr::new(10, 50, 0, 3), 2),
            (3, Ipv4Addr::new(10, 50, 0, 4), 2)
        ]
    );
    assert_eq!(
        ips(front),
        [
            (1, Ipv4Addr::new(10, 50, 1, 2), 1),
            (2, Ipv4Addr::new(10, 50, 1, 3), 2)
        ]
    );
    let e = &front.endpoints[&1];
    assert_eq!(e.underlay, Some(Ipv4Addr::new(10, 1, 0, 1)));
    assert_eq!(
        (e.service.as_str(), e.aliases.clone()),
        ("web", vec!["www".to_string()])
    );
    assert_eq!(e.name, "s_web.1.t1");
    assert!(e.serving);
    assert!(
        !back.endpoints[&3].serving,
        "a starting task does not serve"
    );
}

#[test]
fn addresses_subnets_and_vnis_are_kept_and_freed_addresses_reused() {
    let web = doc("s", "web", &[]);
    let tasks = vec![
        task(1, "s_web", 1, TaskState::Running),
        task(2, "s_web", 2, TaskState::Running),
    ];
    let first = run(std::slice::from_ref(&web), &tasks, &BTreeMap::new()).unwrap();
    assert_eq!(first.keys().collect::<Vec<_>>(), ["s_default"]);
    // Task 1 ends; task 3 replaces it; task 2 keeps its address.
    let mut later = tasks.clone();
    later[0].desired = DesiredState::Shutdown;
    later[0].state = TaskState::Shutdown;
    later.push(task(3, "s_web", 2, TaskState::Assigned));
    let second = run(std::slice::from_ref(&web), &later, &first).unwrap();
    let d = &second["s_default"];
    assert_eq!((d.subnet.as_str(), d.vni), ("10.50.0.0/24", 4096));
    assert_eq!(d.endpoints[&2].ip, first["s_default"].endpoints[&2].ip);
    assert!(
        !d.endpoints.contains_key(&1),
        "an ended task holds no address"
    );
    assert_eq!(d.endpoints[&3].ip, Ipv4Addr::new(10, 50, 0, 2));
    assert_eq!(run(&[web], &later, &second).unwrap(), second, "stable");
}

#[test]
fn a_task_being_stopped_keeps_its_address_but_leaves_the_names() {
    let web = doc("s", "web", &[]);
    let mut t = task(1, "s_web", 1, TaskState::Running);
    t.desired = DesiredState::Shutdown;
    let out = run(&[web], &[t], &BTreeMap::new()).unwrap();
    let e = &out["s_default"].endpoints[&1];
    assert!(!e.serving);
}

#[test]
fn with_a_healthcheck_only_a_healthy_task_serves() {
    let mut web = doc("s", "web", &[]);
    web.service.healthcheck = Some(dcpp_spec::Healthcheck {
        test: vec!["CMD".into(), "true".into()],
        ..Default::default()
    });
    let mut a = task(1, "s_web", 1, TaskState::Running);
    let mut b = task(2, "s_web", 1, TaskState::Running);
    a.health = Health::Healthy;
    b.health = Health::Unknown;
    let out = run(&[web], &[a, b], &BTreeMap::new()).unwrap();
    let eps = &out["s_default"].endpoints;
    assert!(eps[&1].serving);
    assert!(!eps[&2].serving);
}

#[test]
fn a_removed_stack_loses_its_network_and_an_exhausted_pool_is_an_error() {
    let mut prev = BTreeMap::new();
    prev.insert(
        "old_default".to_string(),
        NetworkDoc {
            subnet: "10.50.0.0/24".into(),
            vni: 4096,
            endpoints: BTreeMap::new(),
        },
    );
    let web = doc("s", "web", &[]);
    let out = run(std::slice::from_ref(&web), &[], &prev).unwrap();
    assert_eq!(out.keys().collect::<Vec<_>>(), ["s_default"]);
    // The freed subnet and id are the lowest again.
    assert_eq!(
        (out["s_default"].subnet.as_str(), out["s_default"].vni),
        ("10.50.0.0/24", 4096)
    );

    let services: BTreeMap<String, ServiceDoc> = (0..3)
        .map(|i| {
            let d = doc(&format!("s{i}"), "web", &[]);
            (d.id().0, d)
        })
        .collect();
    let err = desired(&Inputs {
        services: &services,
        tasks: &BTreeMap::new(),
        nodes: &[],
        existing: &BTreeMap::new(),
        pool: Pool::parse("10.50.0.0/23", 24).unwrap(),
    })
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "no free /24 left in the cluster's address pool 10.50.0.0/23 for network s2_default"
    );
}

#[test]
fn underlay_addresses_come_from_advertise_addresses() {
    assert_eq!(
        underlay_of("10.1.0.1:7377"),
        Some(Ipv4Addr::new(10, 1, 0, 1))
    );
    assert_eq!(underlay_of("10.1.0.1"), Some(Ipv4Addr::new(10, 1, 0, 1)));
    assert_eq!(underlay_of("node-a:7377"), None);
    assert_eq!(
        parse_cidr("10.1.2.3/16"),
        Some((Ipv4Addr::new(10, 1, 0, 0), 16))
    );
    assert!(Pool::parse("10.0.0.0/24", 16).is_err());
}

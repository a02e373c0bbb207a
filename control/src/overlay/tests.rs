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
    let d = desired(&Inputs {
        services: &services,
        tasks: &tasks,
        nodes: &nodes,
        existing,
        pools: &pools("10.50.0.0/16/24"),
    });
    match d.errors.first() {
        Some(e) => Err(Error::Invalid(e.to_string())),
        None => Ok(d.docs),
    }
}

fn pools(s: &str) -> Vec<AddressPool> {
    dcpp_spec::ipam::parse_pools(&[s]).unwrap()
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
            ipam: None,
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
    let d = desired(&Inputs {
        services: &services,
        tasks: &BTreeMap::new(),
        nodes: &[],
        existing: &BTreeMap::new(),
        pools: &pools("10.50.0.0/23/24"),
    });
    // The two that fit are made; the third is named, with the pool.
    assert_eq!(
        d.docs.keys().collect::<Vec<_>>(),
        ["s0_default", "s1_default"]
    );
    assert_eq!(d.errors.len(), 1);
    assert!(
        d.errors[0].to_string().starts_with(
            "address pool 10.50.0.0/23/24 is exhausted: no free block left for network s2_default"
        ),
        "{}",
        d.errors[0]
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
}

fn with_ipam(mut d: ServiceDoc, key: &str, yaml_subnet: &str) -> ServiceDoc {
    d.ipam.insert(
        key.into(),
        IpamSpec {
            subnet: yaml_subnet.parse().unwrap(),
            ip_range: None,
            gateway: None,
            reserved: vec![],
        },
    );
    d
}

#[test]
fn own_subnets_are_honoured_with_range_gateway_and_reserved_addresses() {
    let mut web = with_ipam(doc("s", "web", &[]), "default", "10.50.8.0/24");
    let spec = web.ipam.get_mut("default").unwrap();
    spec.ip_range = Some("10.50.8.128/25".parse().unwrap());
    spec.gateway = Some("10.50.8.254".parse().unwrap());
    spec.reserved = vec!["10.50.8.129".parse().unwrap()];
    let other = doc("t", "web", &[]);
    let tasks = [
        task(1, "s_web", 1, TaskState::Running),
        task(2, "s_web", 2, TaskState::Running),
        task(3, "t_web", 1, TaskState::Running),
    ];
    let out = run(&[web.clone(), other.clone()], &tasks, &BTreeMap::new()).unwrap();
    let s = &out["s_default"];
    assert_eq!(s.subnet, "10.50.8.0/24");
    assert_eq!(s.gateway(), Some(Ipv4Addr::new(10, 50, 8, 254)));
    // From the range, past the reserved address.
    assert_eq!(s.endpoints[&1].ip, Ipv4Addr::new(10, 50, 8, 128));
    assert_eq!(s.endpoints[&2].ip, Ipv4Addr::new(10, 50, 8, 130));
    // The pool's blocks go around it.
    assert_eq!(out["t_default"].subnet, "10.50.0.0/24");
    assert_eq!(run(&[web, other], &tasks, &out).unwrap(), out, "stable");
}

#[test]
fn an_own_subnet_that_overlaps_or_lies_outside_the_pools_is_named_and_holds_up_no_other() {
    let a = with_ipam(doc("a", "web", &[]), "default", "10.50.4.0/22");
    let b = with_ipam(doc("b", "web", &[]), "default", "10.50.5.0/24");
    let c = with_ipam(doc("c", "web", &[]), "default", "192.168.9.0/24");
    let d = doc("d", "web", &[]);
    let services: BTreeMap<String, ServiceDoc> =
        [a, b, c, d].into_iter().map(|d| (d.id().0, d)).collect();
    let out = desired(&Inputs {
        services: &services,
        tasks: &BTreeMap::new(),
        nodes: &[],
        existing: &BTreeMap::new(),
        pools: &pools("10.50.0.0/16/24"),
    });
    assert_eq!(
        out.docs.keys().collect::<Vec<_>>(),
        ["a_default", "d_default"]
    );
    let msgs: Vec<String> = out.errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(
        msgs[0],
        "subnet 10.50.5.0/24 of network b_default overlaps subnet 10.50.4.0/22 of network a_default"
    );
    assert!(
        msgs[1].starts_with("subnet 192.168.9.0/24 of network c_default lies outside"),
        "{}",
        msgs[1]
    );
    assert_eq!(out.errors.len(), 2);
}

#[test]
fn several_pools_are_used_in_order_and_old_24s_are_kept() {
    let mut prev = BTreeMap::new();
    // A network an older leader cut as a /24.
    prev.insert(
        "old_default".to_string(),
        NetworkDoc {
            subnet: "10.60.0.0/24".into(),
            vni: 4096,
            ipam: None,
            endpoints: BTreeMap::new(),
        },
    );
    let services: BTreeMap<String, ServiceDoc> = ["old", "n1", "n2"]
        .iter()
        .map(|s| {
            let d = doc(s, "web", &[]);
            (d.id().0, d)
        })
        .collect();
    let out = desired(&Inputs {
        services: &services,
        tasks: &BTreeMap::new(),
        nodes: &[],
        existing: &prev,
        pools: &pools("10.60.0.0/19/20,10.70.0.0/16/22"),
    });
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    let subnet = |n: &str| out.docs[n].subnet.clone();
    assert_eq!(subnet("old_default"), "10.60.0.0/24");
    assert_eq!(subnet("n1_default"), "10.60.16.0/20");
    assert_eq!(subnet("n2_default"), "10.70.0.0/22");
}

#[test]
fn apply_finds_an_own_subnet_that_overlaps_a_stored_network() {
    let mut docs = BTreeMap::new();
    docs.insert(
        "a_default".to_string(),
        NetworkDoc {
            subnet: "10.50.0.0/20".into(),
            vni: 4096,
            ipam: None,
            endpoints: BTreeMap::new(),
        },
    );
    let b = with_ipam(doc("b", "web", &[]), "default", "10.50.8.0/24");
    let c = with_ipam(doc("c", "web", &[]), "default", "10.51.0.0/24");
    let msgs: Vec<String> = conflicts(&docs, &[b, c])
        .iter()
        .map(|e| e.to_string())
        .collect();
    assert_eq!(
        msgs,
        [
            "subnet 10.50.8.0/24 of network b_default overlaps subnet 10.50.0.0/20 of network a_default"
        ]
    );
    // The network itself, applied again, is no conflict.
    let a = with_ipam(doc("a", "web", &[]), "default", "10.50.0.0/20");
    assert!(conflicts(&docs, &[a]).is_empty());
}

//! Property tests of planning invariants over random clusters and services.

mod common;
use common::*;
use dcpp_reconciler::*;
use proptest::prelude::*;

#[derive(Clone, Debug)]
struct NodeGen {
    down: bool,
    availability: Availability,
    zone: u8,
}

fn node_gen() -> impl Strategy<Value = NodeGen> {
    (
        prop::bool::weighted(0.2),
        prop_oneof![
            3 => Just(Availability::Active),
            1 => Just(Availability::Pause),
            1 => Just(Availability::Drain)
        ],
        0u8..3,
    )
        .prop_map(|(down, availability, zone)| NodeGen {
            down,
            availability,
            zone,
        })
}

#[derive(Clone, Debug)]
struct SvcGen {
    replicas: u32,
    global: bool,
    zone: Option<u8>,
    max_per_node: Option<u32>,
    spread: bool,
}

fn svc_gen() -> impl Strategy<Value = SvcGen> {
    (
        0u32..8,
        prop::bool::weighted(0.2),
        prop::option::weighted(0.3, 0u8..3),
        prop::option::weighted(0.3, 1u32..3),
        any::<bool>(),
    )
        .prop_map(|(replicas, global, zone, max_per_node, spread)| SvcGen {
            replicas,
            global,
            zone,
            max_per_node,
            spread,
        })
}

fn build(nodes: &[NodeGen], svcs: &[SvcGen]) -> (Desired, Observed) {
    let mut o = Observed::default();
    for (i, g) in nodes.iter().enumerate() {
        let mut n = Node::new(&format!("n{i}"));
        n.status = if g.down {
            NodeStatus::Down
        } else {
            NodeStatus::Ready
        };
        n.availability = g.availability;
        n.labels.insert("zone".into(), format!("z{}", g.zone));
        o.add_node(n);
    }
    let mut d = Desired::default();
    for (i, g) in svcs.iter().enumerate() {
        let mut s = ServiceSpec::new("p", &format!("s{i}"), "img", g.replicas);
        if g.global {
            s.mode = Mode::Global;
        }
        if let Some(z) = g.zone {
            s.placement.constraints =
                vec![Constraint::parse(&format!("node.labels.zone==z{z}")).unwrap()];
        }
        s.placement.max_replicas_per_node = g.max_per_node;
        if g.spread {
            s.placement.preferences = vec![SpreadPreference {
                label: "zone".into(),
            }];
        }
        d.insert(s);
    }
    (d, o)
}

fn eligible(n: &Node, spec: &ServiceSpec) -> bool {
    n.status == NodeStatus::Ready
        && n.availability == Availability::Active
        && spec.placement.constraints.iter().all(|c| c.matches(n))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Planning is idempotent, assignments respect availability and constraints, and the
    /// converged state runs exactly the tasks that fit.
    #[test]
    fn converges_within_constraints(
        nodes in prop::collection::vec(node_gen(), 1..6),
        svcs in prop::collection::vec(svc_gen(), 1..4),
    ) {
        let (d, mut o) = build(&nodes, &svcs);
        for step in 0..20u64 {
            let p = plan(&d, &o, step);
            for a in &p.actions {
                if let Action::AssignTask { node, .. } = a {
                    let n = &o.nodes[node];
                    prop_assert!(n.status == NodeStatus::Ready && n.availability == Availability::Active);
                }
            }
            apply(&mut o, &p).unwrap();
            prop_assert!(plan(&d, &o, step).is_empty(), "second plan not empty");
            if !agent(&mut o, step) && p.is_empty() {
                break;
            }
        }
        for spec in d.services.values() {
            let sid = spec.id();
            let tasks = running(&o, &sid.0);
            let fit: Vec<&Node> = o.nodes.values().filter(|n| eligible(n, spec)).collect();
            for t in &tasks {
                let n = &o.nodes[t.node.as_ref().unwrap()];
                prop_assert!(eligible(n, spec), "{} on ineligible node", t.id);
            }
            let mut per_node = std::collections::BTreeMap::new();
            for t in &tasks {
                *per_node.entry(t.node.clone().unwrap()).or_insert(0u32) += 1;
            }
            let expected = match spec.mode {
                _ if fit.is_empty() => 0,
                Mode::Global => fit.len(),
                Mode::Replicated { replicas } => {
                    let cap = spec.placement.max_replicas_per_node
                        .map_or(usize::MAX, |m| m as usize * fit.len());
                    (replicas as usize).min(cap)
                }
            };
            prop_assert_eq!(tasks.len(), expected, "service {}", sid);
            if let Some(m) = spec.placement.max_replicas_per_node {
                prop_assert!(per_node.values().all(|c| *c <= m));
            }
            // Without spread preferences or per-node caps, replicas are balanced over nodes.
            if spec.placement.preferences.is_empty() && matches!(spec.mode, Mode::Replicated { .. }) && !fit.is_empty() && d.services.len() == 1 {
                let counts: Vec<u32> = fit.iter().map(|n| per_node.get(&n.id).copied().unwrap_or(0)).collect();
                let (lo, hi) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
                prop_assert!(hi - lo <= 1, "unbalanced {:?}", counts);
            }
        }
    }

    /// A rolling update never exceeds the surge its order allows, and always completes.
    #[test]
    fn rolling_update_respects_surge(
        replicas in 1u32..8,
        parallelism in 1u32..4,
        start_first in any::<bool>(),
        n_nodes in 1usize..4,
        slow in prop::collection::vec(any::<bool>(), 64),
    ) {
        let mut spec = ServiceSpec::new("p", "web", "img", replicas);
        spec.update_config.parallelism = parallelism;
        spec.update_config.monitor = 0;
        spec.update_config.order = if start_first { UpdateOrder::StartFirst } else { UpdateOrder::StopFirst };
        let names: Vec<String> = (0..n_nodes).map(|i| format!("n{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut o = cluster(&refs);
        let mut d = desired(vec![spec.clone()]);
        converge(&d, &mut o, 0);
        spec.version = 2;
        d.insert(spec);
        let limit = if start_first { replicas + parallelism } else { replicas } as usize;
        let mut now = 1;
        for i in 0..200 {
            let p = plan(&d, &o, now);
            apply(&mut o, &p).unwrap();
            prop_assert!(plan(&d, &o, now).is_empty());
            let live = live(&o, "p_web").len();
            prop_assert!(live <= limit, "{} live > {}", live, limit);
            // A slow agent moves only some tasks each step.
            let ids: Vec<TaskId> = o.tasks.keys().copied().collect();
            for (j, id) in ids.into_iter().enumerate() {
                if slow[(i + j) % slow.len()] {
                    continue;
                }
                let t = &o.tasks[&id];
                if t.is_live() && t.node.is_some() {
                    let to = if t.desired == DesiredState::Running { TaskState::Running } else { TaskState::Shutdown };
                    if t.state != to {
                        set_state(&mut o, id, to, now);
                    }
                }
            }
            now += 10;
            let st = &o.services[&ServiceId("p_web".into())];
            if st.update.as_ref().is_some_and(|u| u.state == UpdateState::Completed) {
                break;
            }
        }
        let st = &o.services[&ServiceId("p_web".into())];
        prop_assert_eq!(st.update.as_ref().map(|u| u.state), Some(UpdateState::Completed));
        prop_assert!(running(&o, "p_web").iter().all(|t| t.spec_version == 2));
        prop_assert_eq!(running(&o, "p_web").len(), replicas as usize);
    }

    /// `network_mode: service:NAME` sidecars: whatever peer tasks crash, once converged every
    /// sidecar replica runs on a node with a running peer task that started no later than it
    /// (the one whose namespace it joined), and planning stays idempotent.
    #[test]
    fn sidecars_follow_their_peers(
        n_nodes in 1usize..5,
        peers in 1u32..4,
        sidecars in 1u32..5,
        crashes in prop::collection::vec(0usize..16, 0..6),
    ) {
        let web = ServiceSpec::new("p", "web", "img", peers);
        let mut side = ServiceSpec::new("p", "side", "img", sidecars);
        side.network_peer = Some("web".into());
        side.depends_on = vec![Dependency {
            service: "web".into(),
            condition: DependencyCondition::ServiceStarted,
        }];
        let d = desired(vec![web, side]);
        let names: Vec<String> = (0..n_nodes).map(|i| format!("n{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut o = cluster(&refs);
        let mut now = 0;
        let settle = |o: &mut Observed, now: &mut Time| -> Result<(), TestCaseError> {
            for _ in 0..50 {
                *now += 20_000;
                let p = plan(&d, o, *now);
                apply(o, &p).unwrap();
                prop_assert!(plan(&d, o, *now).is_empty(), "second plan not empty");
                if !agent(o, *now) && p.is_empty() {
                    return Ok(());
                }
            }
            Err(TestCaseError::fail("no convergence"))
        };
        settle(&mut o, &mut now)?;
        for c in crashes {
            let web_tasks = running(&o, "p_web");
            let victim = web_tasks[c % web_tasks.len()].id;
            fail(&mut o, victim, 137, now + 1);
            settle(&mut o, &mut now)?;
        }
        prop_assert_eq!(running(&o, "p_web").len(), peers as usize);
        let sides = running(&o, "p_side");
        prop_assert_eq!(sides.len(), sidecars as usize);
        for s in sides {
            let ok = running(&o, "p_web")
                .iter()
                .any(|w| w.node == s.node && w.started_at <= s.started_at);
            prop_assert!(ok, "sidecar {} has no peer it could have joined", s.id);
        }
    }
}

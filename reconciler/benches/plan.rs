//! plan() cost for 1000 services × 10 replicas on 10 nodes: from scratch (10 000 tasks to
//! create and place), at steady state (nothing to do: the periodic resync), and with one
//! crashed task to replace; `plan_10000_tasks_on_1000_nodes` is the cluster size of issue 20. A second group measures `network_mode: service:NAME` sidecars:
//! 500 services × 10 replicas, each with a 10-replica sidecar service.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use dcpp_reconciler::*;

fn setup() -> (Desired, Observed) {
    let mut o = Observed::default();
    for i in 0..10 {
        let mut n = Node::new(&format!("node{i}"));
        n.labels.insert("zone".into(), format!("z{}", i % 3));
        o.add_node(n);
    }
    let mut d = Desired::default();
    for i in 0..1000 {
        let mut s = ServiceSpec::new(&format!("stack{}", i / 10), &format!("svc{i}"), "img:1", 10);
        if i % 4 == 0 {
            s.placement.preferences = vec![SpreadPreference {
                label: "zone".into(),
            }];
        }
        d.insert(s);
    }
    (d, o)
}

fn converged(d: &Desired, o: &mut Observed) {
    loop {
        let p = plan(d, o, 0);
        apply(o, &p).expect("apply");
        let ids: Vec<TaskId> = o.tasks.keys().copied().collect();
        let mut moved = false;
        for id in ids {
            let t = &o.tasks[&id];
            if t.node.is_some() && t.state != TaskState::Running {
                let r = TaskReport {
                    state: Some(TaskState::Running),
                    ..TaskReport::default()
                };
                report(o, id, &r, 0).expect("report");
                moved = true;
            }
        }
        if p.is_empty() && !moved {
            return;
        }
    }
}

fn bench(c: &mut Criterion) {
    let (d, empty) = setup();
    let mut g = c.benchmark_group("plan_1000x10_on_10_nodes");
    g.sample_size(10);
    g.bench_function("from_scratch", |b| {
        b.iter(|| black_box(plan(black_box(&d), black_box(&empty), 0)))
    });
    let mut steady = empty.clone();
    converged(&d, &mut steady);
    assert_eq!(steady.tasks.len(), 10_000);
    g.bench_function("steady_state", |b| {
        b.iter(|| {
            let p = plan(black_box(&d), black_box(&steady), 1);
            assert!(p.is_empty());
            black_box(p)
        })
    });
    let mut crashed = steady.clone();
    let r = TaskReport {
        state: Some(TaskState::Failed),
        exit_code: Some(137),
        ..TaskReport::default()
    };
    report(&mut crashed, TaskId(5_000), &r, 1).expect("report");
    g.bench_function("one_crash", |b| {
        b.iter(|| black_box(plan(black_box(&d), black_box(&crashed), 1)))
    });
    g.finish();
}

fn sidecars(c: &mut Criterion) {
    let mut o = Observed::default();
    for i in 0..10 {
        o.add_node(Node::new(&format!("node{i}")));
    }
    let mut d = Desired::default();
    for i in 0..500 {
        let stack = format!("stack{}", i / 10);
        d.insert(ServiceSpec::new(&stack, &format!("svc{i}"), "img:1", 10));
        let mut side = ServiceSpec::new(&stack, &format!("side{i}"), "img:1", 10);
        side.network_peer = Some(format!("svc{i}"));
        side.depends_on = vec![Dependency {
            service: format!("svc{i}"),
            condition: DependencyCondition::ServiceStarted,
        }];
        d.insert(side);
    }
    let mut g = c.benchmark_group("plan_500x10_with_sidecars_on_10_nodes");
    g.sample_size(10);
    let mut steady = o.clone();
    converged(&d, &mut steady);
    assert_eq!(steady.tasks.len(), 10_000);
    g.bench_function("steady_state", |b| {
        b.iter(|| {
            let p = plan(black_box(&d), black_box(&steady), 1);
            assert!(p.is_empty());
            black_box(p)
        })
    });
    // A peer task dies: its sidecar on that node is replaced along with it.
    let victim = steady
        .tasks
        .values()
        .find(|t| t.service.0 == "stack0_svc0")
        .map(|t| t.id)
        .expect("a task of svc0");
    let mut crashed = steady.clone();
    let r = TaskReport {
        state: Some(TaskState::Failed),
        exit_code: Some(137),
        ..TaskReport::default()
    };
    report(&mut crashed, victim, &r, 1).expect("report");
    g.bench_function("one_peer_crash", |b| {
        b.iter(|| black_box(plan(black_box(&d), black_box(&crashed), 1)))
    });
    g.finish();
}

/// Issue 20's cluster size: 1000 nodes, 100 services × 100 replicas (10 000 tasks). Pure
/// planner cost only (no store): the steady-state round, one service scaled 100 → 1000, and
/// 100 nodes lost at once.
fn cluster_scale(c: &mut Criterion) {
    let mut o = Observed::default();
    for i in 0..1000 {
        let mut n = Node::new(&format!("node{i:04}"));
        n.labels.insert("zone".into(), format!("z{}", i % 10));
        o.add_node(n);
    }
    let mut d = Desired::default();
    for i in 0..100 {
        d.insert(ServiceSpec::new(
            &format!("stack{}", i / 10),
            &format!("svc{i}"),
            "img:1",
            100,
        ));
    }
    let mut steady = o.clone();
    converged(&d, &mut steady);
    assert_eq!(steady.tasks.len(), 10_000);
    let mut g = c.benchmark_group("plan_10000_tasks_on_1000_nodes");
    g.sample_size(10);
    g.bench_function("steady_state", |b| {
        b.iter(|| {
            let p = plan(black_box(&d), black_box(&steady), 1);
            assert!(p.is_empty());
            black_box(p)
        })
    });
    let mut scaled = d.clone();
    let sid = ServiceId::new("stack0", "svc0");
    scaled.services.get_mut(&sid).expect("svc0").mode = Mode::Replicated { replicas: 1000 };
    g.bench_function("scale_100_to_1000", |b| {
        b.iter(|| {
            let p = plan(black_box(&scaled), black_box(&steady), 1);
            assert!(p.actions.len() >= 1800, "900 creates and 900 assigns");
            black_box(p)
        })
    });
    // The same scale with `preferences: - spread: node.labels.zone` (10 zones): each
    // placement compares the zones' loads.
    let mut spread = scaled.clone();
    spread
        .services
        .get_mut(&sid)
        .expect("svc0")
        .placement
        .preferences = vec![SpreadPreference {
        label: "zone".into(),
    }];
    g.bench_function("scale_100_to_1000_spread", |b| {
        b.iter(|| {
            let p = plan(black_box(&spread), black_box(&steady), 1);
            assert!(p.actions.len() >= 1800, "900 creates and 900 assigns");
            black_box(p)
        })
    });
    let mut lost = steady.clone();
    for n in lost.nodes.values_mut().take(100) {
        n.status = NodeStatus::Down;
    }
    g.bench_function("lose_100_nodes", |b| {
        b.iter(|| {
            let p = plan(black_box(&d), black_box(&lost), 1);
            assert!(
                p.actions.len() >= 3000,
                "orphan, restart and assign each lost task"
            );
            black_box(p)
        })
    });
    g.finish();
}

criterion_group!(benches, bench, sidecars, cluster_scale);
criterion_main!(benches);

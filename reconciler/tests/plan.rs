//! Exact-action tests: one behaviour each, asserting the precise actions planned.

mod common;
use common::*;
use dcpp_reconciler::*;

fn web(replicas: u32) -> ServiceSpec {
    ServiceSpec::new("s", "web", "busybox", replicas)
}

#[test]
fn creates_and_spreads_missing_slots() {
    let d = desired(vec![web(3)]);
    let o = cluster(&["n1", "n2"]);
    let p = plan(&d, &o, 0);
    assert_eq!(
        kinds(&p),
        [
            "status",
            "create t1 s_web.1",
            "create t2 s_web.2",
            "create t3 s_web.3",
            "assign t1 n1",
            "assign t2 n2",
            "assign t3 n1",
        ]
    );
    assert!(p.pending.is_empty());
    assert_eq!(p.requeue_after, None);
}

#[test]
fn second_plan_after_apply_is_empty() {
    let d = desired(vec![web(3)]);
    let mut o = cluster(&["n1", "n2"]);
    let p = plan(&d, &o, 0);
    apply(&mut o, &p).unwrap();
    assert!(plan(&d, &o, 0).is_empty());
    agent(&mut o, 1);
    assert!(plan(&d, &o, 1).is_empty());
}

#[test]
fn scale_down_removes_highest_slots_and_deletes_them_once_stopped() {
    let mut d = desired(vec![web(4)]);
    let mut o = cluster(&["n1", "n2"]);
    converge(&d, &mut o, 0);
    d.insert(web(2));
    let p = plan(&d, &o, 10);
    assert_eq!(kinds(&p), ["status", "remove t3", "remove t4"]);
    apply(&mut o, &p).unwrap();
    agent(&mut o, 11);
    let p = plan(&d, &o, 12);
    assert_eq!(kinds(&p), ["delete t3", "delete t4"]);
    apply(&mut o, &p).unwrap();
    assert_eq!(running(&o, "s_web").len(), 2);
    assert!(plan(&d, &o, 12).is_empty());
}

#[test]
fn scale_up_reuses_free_slots_only() {
    let mut d = desired(vec![web(1)]);
    let mut o = cluster(&["n1"]);
    converge(&d, &mut o, 0);
    d.insert(web(3));
    let p = plan(&d, &o, 5);
    assert_eq!(
        kinds(&p),
        [
            "status",
            "create t2 s_web.2",
            "create t3 s_web.3",
            "assign t2 n1",
            "assign t3 n1"
        ]
    );
}

#[test]
fn global_mode_runs_one_task_per_eligible_node() {
    let mut spec = web(0);
    spec.mode = Mode::Global;
    spec.placement.constraints = vec![Constraint::parse("node.labels.disk==ssd").unwrap()];
    let d = desired(vec![spec]);
    let mut o = cluster(&["a", "b", "c", "d"]);
    for n in ["a", "b", "d"] {
        o.nodes
            .get_mut(&NodeId(n.into()))
            .unwrap()
            .labels
            .insert("disk".into(), "ssd".into());
    }
    o.nodes.get_mut(&NodeId("d".into())).unwrap().availability = Availability::Drain;
    let p = plan(&d, &o, 0);
    assert_eq!(
        kinds(&p),
        [
            "status",
            "create t1 s_web.a",
            "create t2 s_web.b",
            "assign t1 a",
            "assign t2 b"
        ]
    );
    apply(&mut o, &p).unwrap();
    agent(&mut o, 1);
    // A node joining the label set gets its task; a drained one loses it.
    o.nodes
        .get_mut(&NodeId("c".into()))
        .unwrap()
        .labels
        .insert("disk".into(), "ssd".into());
    o.nodes.get_mut(&NodeId("a".into())).unwrap().availability = Availability::Drain;
    let p = plan(&d, &o, 2);
    assert_eq!(kinds(&p), ["remove t1", "create t3 s_web.c", "assign t3 c"]);
}

#[test]
fn drained_node_tasks_move_after_they_stop() {
    let d = desired(vec![web(2)]);
    let mut o = cluster(&["n1", "n2"]);
    converge(&d, &mut o, 0);
    o.nodes.get_mut(&NodeId("n1".into())).unwrap().availability = Availability::Drain;
    let p = plan(&d, &o, 10);
    assert_eq!(kinds(&p), ["shutdown t1"]);
    match &p.actions[0] {
        Action::ShutdownTask { reason, .. } => assert_eq!(reason, "node is drained on n1"),
        a => panic!("{a:?}"),
    }
    apply(&mut o, &p).unwrap();
    // Until the old task has stopped, the slot gets no second task.
    assert!(plan(&d, &o, 11).is_empty());
    agent(&mut o, 12);
    let p = plan(&d, &o, 13);
    assert_eq!(kinds(&p), ["create t3 s_web.1", "assign t3 n2"]);
}

#[test]
fn paused_node_keeps_tasks_but_takes_no_new_ones() {
    let d = desired(vec![web(2)]);
    let mut o = cluster(&["n1", "n2"]);
    converge(&d, &mut o, 0);
    o.nodes.get_mut(&NodeId("n1".into())).unwrap().availability = Availability::Pause;
    assert!(plan(&d, &o, 5).is_empty());
    // After a long run: replaced at once (no crash-loop backoff), on the other node.
    fail(&mut o, TaskId(1), 1, 20_000);
    let p = plan(&d, &o, 20_000);
    assert_eq!(kinds(&p), ["restart t1->t3 s_web.1", "assign t3 n2"]);
}

#[test]
fn lost_node_tasks_are_orphaned_and_rescheduled() {
    let d = desired(vec![web(2)]);
    let mut o = cluster(&["n1", "n2"]);
    converge(&d, &mut o, 0);
    o.nodes.get_mut(&NodeId("n2".into())).unwrap().status = NodeStatus::Down;
    let p = plan(&d, &o, 100);
    assert_eq!(
        kinds(&p),
        ["orphan t2", "restart t2->t3 s_web.2", "assign t3 n1"]
    );
    // Node loss is not the task's fault: no delay, no restart counted.
    let Action::RestartTask { task, .. } = &p.actions[1] else {
        panic!()
    };
    assert_eq!((task.not_before, task.restart_count), (None, 0));
}

#[test]
fn restart_on_failure_respects_exit_code_delay_and_max_attempts() {
    let mut spec = web(1);
    spec.restart = RestartPolicy::from_compose("on-failure:2").unwrap();
    spec.restart.delay = 1_000;
    let d = desired(vec![spec]);
    let mut o = cluster(&["n1"]);
    converge(&d, &mut o, 0);
    set_state(&mut o, TaskId(1), TaskState::Running, 0);

    // Crash after a long run: plain delay, no backoff.
    fail(&mut o, TaskId(1), 1, 20_000);
    let p = plan(&d, &o, 20_000);
    assert_eq!(
        kinds(&p),
        [
            "restart t1->t2 s_web.1",
            "pending t2: restart delayed until 21000"
        ]
    );
    assert_eq!(p.requeue_after, Some(1_000));
    apply(&mut o, &p).unwrap();
    assert!(plan(&d, &o, 20_500).is_empty());
    let p = plan(&d, &o, 21_000);
    assert_eq!(kinds(&p), ["assign t2 n1"]);
    apply(&mut o, &p).unwrap();
    agent(&mut o, 21_000);

    // Crash right after start: second attempt, counted as a fast failure.
    fail(&mut o, TaskId(2), 2, 21_500);
    let p = plan(&d, &o, 21_500);
    let Action::RestartTask { task, .. } = &p.actions[0] else {
        panic!("{p:?}")
    };
    assert_eq!(task.restart_count, 2);
    // The delay, then the first backoff step.
    assert_eq!(task.not_before, Some(23_000));
    apply(&mut o, &p).unwrap();
    converge(&d, &mut o, 23_000);

    // max_attempts (2) reached: the slot stays down.
    fail(&mut o, TaskId(3), 1, 23_100);
    assert!(plan(&d, &o, 23_100).is_empty());
}

#[test]
fn restart_on_failure_leaves_successful_exit_alone() {
    let mut spec = web(1);
    spec.restart = RestartPolicy::from_compose("on-failure").unwrap();
    let d = desired(vec![spec]);
    let mut o = cluster(&["n1"]);
    converge(&d, &mut o, 0);
    fail(&mut o, TaskId(1), 0, 50);
    assert!(plan(&d, &o, 50).is_empty());
}

#[test]
fn crash_loop_backoff_doubles() {
    let d = desired(vec![web(1)]);
    let mut o = cluster(&["n1"]);
    converge(&d, &mut o, 0);
    let mut delays = Vec::new();
    let mut now = 0;
    for _ in 0..5 {
        let head = *o.tasks.keys().last().unwrap();
        fail(&mut o, head, 1, now + 10);
        now += 10;
        let p = plan(&d, &o, now);
        let Action::RestartTask { task, .. } = &p.actions[0] else {
            panic!("{p:?}")
        };
        delays.push(task.not_before.map_or(0, |nb| nb - now));
        now = task.not_before.unwrap_or(now);
        apply(&mut o, &p).unwrap();
        converge(&d, &mut o, now);
    }
    assert_eq!(delays, [500, 1000, 2000, 4000, 8000]);
}

#[test]
fn window_limits_which_restarts_count() {
    let mut spec = web(1);
    spec.restart = RestartPolicy {
        condition: RestartCondition::Any,
        delay: 0,
        max_attempts: Some(1),
        window: Some(60_000),
    };
    let d = desired(vec![spec]);
    let mut o = cluster(&["n1"]);
    converge(&d, &mut o, 0);
    fail(&mut o, TaskId(1), 1, 20_000);
    assert_eq!(kinds(&plan(&d, &o, 20_000))[0], "restart t1->t2 s_web.1");
    converge(&d, &mut o, 20_000);
    fail(&mut o, TaskId(2), 1, 70_000);
    assert!(
        plan(&d, &o, 70_000).is_empty(),
        "second restart inside the window"
    );
    let p = plan(&d, &o, 90_000);
    assert_eq!(
        kinds(&p)[0],
        "restart t2->t3 s_web.1",
        "the first one left the window"
    );
}

#[test]
fn depends_on_holds_tasks_until_condition_met() {
    let mut db = ServiceSpec::new("s", "db", "busybox", 1);
    db.healthcheck = true;
    let mut app = ServiceSpec::new("s", "app", "busybox", 1);
    app.depends_on = vec![Dependency {
        service: "db".into(),
        condition: DependencyCondition::ServiceHealthy,
    }];
    let d = desired(vec![db, app]);
    let mut o = cluster(&["n1"]);
    let p = plan(&d, &o, 0);
    assert_eq!(
        kinds(&p),
        [
            "status",
            "create t1 s_app.1",
            "status",
            "create t2 s_db.1",
            "pending t1: waiting for dependency db (service_healthy)",
            "assign t2 n1",
        ]
    );
    assert_eq!(p.pending.len(), 1);
    apply(&mut o, &p).unwrap();
    agent(&mut o, 1);
    assert!(plan(&d, &o, 1).is_empty(), "running but not healthy yet");
    report(
        &mut o,
        TaskId(2),
        &TaskReport {
            health: Some(Health::Healthy),
            ..Default::default()
        },
        2,
    )
    .unwrap();
    assert_eq!(kinds(&plan(&d, &o, 2)), ["assign t1 n1"]);
}

#[test]
fn completed_successfully_dependency() {
    let mut job = ServiceSpec::new("s", "migrate", "busybox", 1);
    job.restart = RestartPolicy::from_compose("no").unwrap();
    let mut app = ServiceSpec::new("s", "app", "busybox", 1);
    app.depends_on = vec![Dependency {
        service: "migrate".into(),
        condition: DependencyCondition::ServiceCompletedSuccessfully,
    }];
    let d = desired(vec![job, app]);
    let mut o = cluster(&["n1"]);
    converge(&d, &mut o, 0);
    assert!(running(&o, "s_app").is_empty());
    fail(&mut o, TaskId(2), 0, 10);
    converge(&d, &mut o, 10);
    assert_eq!(running(&o, "s_app").len(), 1);
    assert!(
        running(&o, "s_migrate").is_empty(),
        "a completed job is not restarted"
    );
}

#[test]
fn unschedulable_task_explains_every_node() {
    let mut spec = web(1);
    spec.placement.constraints = vec![Constraint::parse("node.role==manager").unwrap()];
    spec.reservations.memory = 2_000;
    let d = desired(vec![spec]);
    let mut o = cluster(&["a", "b", "c"]);
    o.nodes.get_mut(&NodeId("b".into())).unwrap().role = NodeRole::Manager;
    o.nodes
        .get_mut(&NodeId("b".into()))
        .unwrap()
        .resources
        .memory = 1_000;
    o.nodes.get_mut(&NodeId("c".into())).unwrap().status = NodeStatus::Down;
    let p = plan(&d, &o, 0);
    let msg = "no suitable node (a: constraint node.role==manager not met; \
               b: insufficient memory (need 2000 B, free 1000 B); c: node is down)";
    assert_eq!(
        kinds(&p),
        ["status", "create t1 s_web.1", &format!("pending t1: {msg}")]
    );
    assert_eq!(p.pending[0].name, "s_web.1");
    apply(&mut o, &p).unwrap();
    assert!(plan(&d, &o, 1).is_empty(), "same reason is not rewritten");
}

#[test]
fn max_replicas_per_node_and_spread_preference() {
    let mut spec = web(4);
    spec.placement.max_replicas_per_node = Some(2);
    spec.placement.preferences = vec![SpreadPreference {
        label: "zone".into(),
    }];
    let d = desired(vec![spec]);
    let mut o = cluster(&["a1", "a2", "b1"]);
    for (n, z) in [("a1", "a"), ("a2", "a"), ("b1", "b")] {
        o.nodes
            .get_mut(&NodeId(n.into()))
            .unwrap()
            .labels
            .insert("zone".into(), z.into());
    }
    converge(&d, &mut o, 0);
    let mut per_zone = std::collections::BTreeMap::new();
    for t in running(&o, "s_web") {
        let node = t.node.clone().unwrap();
        *per_zone
            .entry(o.nodes[&node].labels["zone"].clone())
            .or_insert(0) += 1;
    }
    assert_eq!(per_zone["a"], 2);
    assert_eq!(per_zone["b"], 2);
}

/// A spread group is every node with the label value, including nodes that take no new task
/// (their tasks still count), and nodes without the label are one group of their own.
#[test]
fn spread_counts_the_tasks_of_nodes_that_take_none_and_groups_unlabelled_nodes() {
    let spread = |replicas| {
        let mut s = web(replicas);
        s.placement.preferences = vec![SpreadPreference {
            label: "zone".into(),
        }];
        s
    };
    let mut o = cluster(&["a1", "a2", "b1", "n0"]);
    for (n, z) in [("a1", "a"), ("a2", "a"), ("b1", "b")] {
        o.nodes
            .get_mut(&NodeId(n.into()))
            .unwrap()
            .labels
            .insert("zone".into(), z.into());
    }
    let set = |o: &mut Observed, n: &str, a: Availability| {
        o.nodes.get_mut(&NodeId(n.into())).unwrap().availability = a;
    };
    for n in ["a2", "b1", "n0"] {
        set(&mut o, n, Availability::Pause);
    }
    converge(&desired(vec![spread(2)]), &mut o, 0);
    set(&mut o, "a1", Availability::Pause);
    for n in ["a2", "b1", "n0"] {
        set(&mut o, n, Availability::Active);
    }
    // Zone a holds 2 (both on the paused a1): a2 gets nothing; b and the unlabelled group
    // take turns, ties going to the lower node id.
    let p = plan(&desired(vec![spread(5)]), &o, 1);
    assert_eq!(
        kinds(&p),
        [
            "status",
            "create t3 s_web.3",
            "create t4 s_web.4",
            "create t5 s_web.5",
            "assign t3 b1",
            "assign t4 n0",
            "assign t5 b1",
        ]
    );
}

fn v2(mut s: ServiceSpec) -> ServiceSpec {
    s.version += 1;
    s.image = format!("busybox:v{}", s.version);
    s
}

#[test]
fn rolling_update_stop_first_one_at_a_time() {
    let mut spec = web(2);
    spec.update_config.monitor = 1_000;
    let mut d = desired(vec![spec.clone()]);
    let mut o = cluster(&["n1", "n2"]);
    converge(&d, &mut o, 0);
    d.insert(v2(spec));
    let p = plan(&d, &o, 100);
    assert_eq!(kinds(&p), ["status", "shutdown t1"]);
    apply(&mut o, &p).unwrap();
    agent(&mut o, 110);
    let p = plan(&d, &o, 120);
    assert_eq!(kinds(&p), ["create t3 s_web.1", "assign t3 n1"]);
    apply(&mut o, &p).unwrap();
    assert!(plan(&d, &o, 121).is_empty(), "parallelism 1: slot 2 waits");
    agent(&mut o, 130);
    let p = plan(&d, &o, 140);
    assert_eq!(kinds(&p), ["shutdown t2"]);
    apply(&mut o, &p).unwrap();
    agent(&mut o, 150);
    let p = plan(&d, &o, 160);
    assert_eq!(kinds(&p), ["create t4 s_web.2", "assign t4 n2"]);
    apply(&mut o, &p).unwrap();
    agent(&mut o, 170);
    let p = plan(&d, &o, 180);
    assert!(p.is_empty());
    assert_eq!(
        p.requeue_after,
        Some(950),
        "monitor window of t3 (started at 130)"
    );
    let p = plan(&d, &o, 1_170);
    assert_eq!(kinds(&p), ["status"]);
    let Action::SetServiceStatus { status, .. } = &p.actions[0] else {
        panic!()
    };
    assert_eq!(
        status.update.as_ref().unwrap().state,
        UpdateState::Completed
    );
}

#[test]
fn rolling_update_start_first_overlaps_then_stops_old() {
    let mut spec = web(2);
    spec.update_config.order = UpdateOrder::StartFirst;
    spec.update_config.parallelism = 2;
    let mut d = desired(vec![spec.clone()]);
    let mut o = cluster(&["n1", "n2"]);
    converge(&d, &mut o, 0);
    d.insert(v2(spec));
    let p = plan(&d, &o, 100);
    assert_eq!(
        kinds(&p),
        [
            "status",
            "create t3 s_web.1",
            "create t4 s_web.2",
            "assign t3 n1",
            "assign t4 n2"
        ]
    );
    apply(&mut o, &p).unwrap();
    agent(&mut o, 110);
    assert_eq!(running(&o, "s_web").len(), 4);
    let p = plan(&d, &o, 120);
    assert_eq!(kinds(&p), ["shutdown t1", "shutdown t2"]);
}

#[test]
fn update_delay_spaces_slots() {
    let mut spec = web(2);
    spec.update_config.delay = 5_000;
    let mut d = desired(vec![spec.clone()]);
    let mut o = cluster(&["n1"]);
    converge(&d, &mut o, 0);
    d.insert(v2(spec));
    converge(&d, &mut o, 100);
    let p = plan(&d, &o, 100);
    assert_eq!(p.requeue_after, Some(5_000));
    assert_eq!(
        live(&o, "s_web")
            .iter()
            .filter(|t| t.spec_version == 2)
            .count(),
        1
    );
    converge(&d, &mut o, 5_100);
    assert_eq!(
        live(&o, "s_web")
            .iter()
            .filter(|t| t.spec_version == 2)
            .count(),
        2
    );
}

#[test]
fn failed_update_pauses() {
    let spec = web(3);
    let mut d = desired(vec![spec.clone()]);
    let mut o = cluster(&["n1"]);
    converge(&d, &mut o, 0);
    d.insert(v2(spec));
    for now in [100, 101] {
        let p = plan(&d, &o, now);
        apply(&mut o, &p).unwrap();
        agent(&mut o, now);
    }
    assert_eq!(o.tasks[&TaskId(4)].state, TaskState::Running);
    fail(&mut o, TaskId(4), 1, 200);
    let p = plan(&d, &o, 200);
    let Action::SetServiceStatus { status, .. } = &p.actions[1] else {
        panic!("{p:?}")
    };
    assert_eq!(kinds(&p)[0], "restart t4->t5 s_web.1");
    let u = status.update.as_ref().unwrap();
    assert_eq!(u.state, UpdateState::Paused);
    assert_eq!(
        u.message,
        "update paused: 1 task(s) of version 2 failed (last: s_web.1: exit code 1)"
    );
    assert_eq!(u.failure.as_deref(), Some(u.message.as_str()));
    apply(&mut o, &p).unwrap();
    converge(&d, &mut o, 300);
    // Paused: slots 2 and 3 keep the old version.
    assert_eq!(
        live(&o, "s_web")
            .iter()
            .filter(|t| t.spec_version == 1)
            .count(),
        2
    );
}

#[test]
fn failed_update_rolls_back_automatically() {
    let mut spec = web(2);
    spec.update_config.failure_action = FailureAction::Rollback;
    spec.update_config.monitor = 1_000;
    spec.rollback_config.monitor = 1_000;
    let mut d = desired(vec![spec.clone()]);
    let mut o = cluster(&["n1"]);
    converge(&d, &mut o, 0);
    let bad = v2(spec.clone());
    d.insert(bad.clone());
    converge(&d, &mut o, 100);
    let new = live(&o, "s_web")
        .iter()
        .find(|t| t.spec_version == 2)
        .unwrap()
        .id;
    fail(&mut o, new, 1, 150);
    let p = plan(&d, &o, 150);
    assert!(kinds(&p).contains(&"rollback s_web".to_string()), "{p:?}");
    apply(&mut o, &p).unwrap();
    agent(&mut o, 150);
    converge(&d, &mut o, 200);
    converge(&d, &mut o, 2_000);
    let st = &o.services[&ServiceId("s_web".into())];
    assert_eq!(st.spec.version, 1);
    assert_eq!(st.update.as_ref().unwrap().state, UpdateState::RolledBack);
    assert!(live(&o, "s_web").iter().all(|t| t.spec_version == 1));
    assert_eq!(running(&o, "s_web").len(), 2);
    let u = st.update.as_ref().unwrap();
    assert_eq!(u.rolled_back_from, Some(2));
    assert_eq!(
        u.failure.as_deref(),
        Some(
            "update failed, rolling back: 1 task(s) of version 2 failed (last: s_web.1: exit code 1)"
        )
    );
    // The rejected spec is no rollback target, and it stays rejected while the desired spec
    // still names it (the leader resets desired in the same write as the rollback).
    assert_eq!(st.previous, None);
    assert_eq!(st.rejected, Some(2));
    assert!(plan(&d, &o, 3_000).is_empty());
    // Desired reset to the version that runs: the rejection is lifted, nothing else moves.
    d.insert(spec.clone());
    let p = plan(&d, &o, 3_100);
    assert_eq!(kinds(&p), ["status"]);
    apply(&mut o, &p).unwrap();
    let st = &o.services[&ServiceId("s_web".into())];
    assert_eq!((st.rejected, st.spec.version), (None, 1));
    assert!(plan(&d, &o, 3_200).is_empty());
    // Applying the rejected version again retries the update from the version that runs.
    d.insert(bad.clone());
    let p = plan(&d, &o, 4_000);
    let Action::SetServiceStatus { status, .. } = &p.actions[0] else {
        panic!()
    };
    assert_eq!(status.spec.version, 2);
    assert_eq!(status.previous.as_ref().unwrap().version, 1);
    assert_eq!(status.update.as_ref().unwrap().state, UpdateState::Updating);
    assert_eq!(kinds(&p)[1..], ["shutdown t6"]);
}

fn health(o: &mut Observed, id: TaskId, h: Health, now: Time) {
    report(
        o,
        id,
        &TaskReport {
            health: Some(h),
            ..TaskReport::default()
        },
        now,
    )
    .unwrap();
}

fn status_of(o: &Observed) -> &ServiceStatus {
    &o.services[&ServiceId("s_web".into())]
}

/// A healthchecked web service at version 1, converged and healthy on one node.
fn healthy_web(replicas: u32, order: UpdateOrder) -> (Desired, Observed, ServiceSpec) {
    let mut spec = web(replicas);
    spec.healthcheck = true;
    spec.update_config.order = order;
    spec.update_config.monitor = 8_000;
    spec.update_config.failure_action = FailureAction::Rollback;
    let d = desired(vec![spec.clone()]);
    let mut o = cluster(&["n1"]);
    converge(&d, &mut o, 0);
    let ids: Vec<TaskId> = o.tasks.keys().copied().collect();
    for id in ids {
        health(&mut o, id, Health::Healthy, 10);
    }
    (d, o, spec)
}

#[test]
fn start_first_keeps_the_old_task_until_the_new_one_is_healthy() {
    let (mut d, mut o, spec) = healthy_web(1, UpdateOrder::StartFirst);
    d.insert(v2(spec));
    let p = plan(&d, &o, 100);
    assert_eq!(kinds(&p), ["status", "create t2 s_web.1", "assign t2 n1"]);
    apply(&mut o, &p).unwrap();
    agent(&mut o, 200);
    health(&mut o, TaskId(2), Health::Starting, 300);
    // Running but not healthy: the old task keeps serving, the update is not done.
    let p = plan(&d, &o, 400);
    assert!(p.is_empty(), "{p:?}");
    health(&mut o, TaskId(2), Health::Healthy, 1_000);
    assert_eq!(o.tasks[&TaskId(2)].healthy_at, Some(1_000));
    let p = plan(&d, &o, 1_100);
    assert_eq!(kinds(&p), ["shutdown t1"]);
    apply(&mut o, &p).unwrap();
    agent(&mut o, 1_200);
    // The monitor window runs from healthy (1_000), not from started (200).
    let p = plan(&d, &o, 1_300);
    assert!(p.is_empty());
    assert_eq!(p.requeue_after, Some(7_700));
    let p = plan(&d, &o, 9_000);
    assert_eq!(kinds(&p), ["status"]);
    apply(&mut o, &p).unwrap();
    assert_eq!(
        status_of(&o).update.as_ref().unwrap().state,
        UpdateState::Completed
    );
}

#[test]
fn stop_first_waits_for_health_before_the_next_batch() {
    let (mut d, mut o, spec) = healthy_web(2, UpdateOrder::StopFirst);
    d.insert(v2(spec));
    converge(&d, &mut o, 100);
    // Slot 1 runs version 2, not yet healthy: slot 2 is not touched.
    let v: Vec<(u64, TaskState)> = live(&o, "s_web")
        .iter()
        .map(|t| (t.spec_version, t.state))
        .collect();
    assert_eq!(v, [(1, TaskState::Running), (2, TaskState::Running)]);
    let new = live(&o, "s_web")[1].id;
    health(&mut o, new, Health::Healthy, 500);
    let p = plan(&d, &o, 600);
    assert_eq!(kinds(&p), ["shutdown t2"]);
}

#[test]
fn start_first_waits_for_outdated_tasks_that_are_not_healthy_yet() {
    let mut spec = web(2);
    spec.healthcheck = true;
    spec.update_config.order = UpdateOrder::StartFirst;
    spec.update_config.parallelism = 1;
    let mut d = desired(vec![spec.clone()]);
    let mut o = cluster(&["n1"]);
    converge(&d, &mut o, 0);
    // Both version-1 tasks run but are not healthy yet when version 2 arrives: a new task
    // next to each would make two slots overlap with parallelism 1.
    d.insert(v2(spec));
    let p = plan(&d, &o, 100);
    assert_eq!(kinds(&p), ["status"]);
    apply(&mut o, &p).unwrap();
    health(&mut o, TaskId(1), Health::Healthy, 200);
    health(&mut o, TaskId(2), Health::Healthy, 200);
    let p = plan(&d, &o, 300);
    assert_eq!(kinds(&p), ["create t3 s_web.1", "assign t3 n1"]);
}

#[test]
fn new_task_that_never_turns_healthy_rolls_the_update_back() {
    let (mut d, mut o, spec) = healthy_web(2, UpdateOrder::StartFirst);
    d.insert(v2(spec.clone()));
    converge(&d, &mut o, 100);
    health(&mut o, TaskId(3), Health::Starting, 1_000);
    // The agent reports the unhealthy verdict and fails the task (as swarm's executor does).
    health(&mut o, TaskId(3), Health::Unhealthy, 4_000);
    report(
        &mut o,
        TaskId(3),
        &TaskReport {
            state: Some(TaskState::Failed),
            exit_code: Some(137),
            error: Some("unhealthy: curl: connection refused".into()),
            ..TaskReport::default()
        },
        4_000,
    )
    .unwrap();
    let p = plan(&d, &o, 4_100);
    assert_eq!(
        kinds(&p),
        [
            "restart t3->t4 s_web.1",
            "rollback s_web",
            // t3 died young, so its replacement waits for the first backoff step; the
            // rollback stops it before it ever gets a node.
            "pending t4: restart delayed until 4500",
            "shutdown t4"
        ]
    );
    let Action::Rollback { reason, .. } = &p.actions[1] else {
        panic!()
    };
    assert_eq!(
        reason,
        "update failed, rolling back: 1 task(s) of version 2 failed \
         (last: s_web.1: unhealthy: curl: connection refused)"
    );
    apply(&mut o, &p).unwrap();
    // The old tasks never stopped (start-first, never healthy): the rollback is done once the
    // rollback monitor has passed.
    converge(&d, &mut o, 4_200);
    converge(&d, &mut o, 20_000);
    let st = status_of(&o);
    assert_eq!(st.spec.version, 1);
    assert_eq!(st.update.as_ref().unwrap().state, UpdateState::RolledBack);
    let ids: Vec<TaskId> = live(&o, "s_web").iter().map(|t| t.id).collect();
    assert_eq!(
        ids,
        [TaskId(1), TaskId(2)],
        "the original tasks kept running"
    );
}

#[test]
fn task_running_unhealthy_within_monitor_counts_as_failure() {
    let (mut d, mut o, spec) = healthy_web(1, UpdateOrder::StopFirst);
    d.insert(v2(spec));
    converge(&d, &mut o, 100);
    health(&mut o, TaskId(2), Health::Healthy, 1_000);
    converge(&d, &mut o, 1_100);
    // Healthy at 1_000, unhealthy at 5_000: within the 8 s monitor.
    health(&mut o, TaskId(2), Health::Unhealthy, 5_000);
    let p = plan(&d, &o, 5_000);
    assert_eq!(kinds(&p)[0], "rollback s_web");
}

#[test]
fn task_unhealthy_after_the_monitor_window_does_not_fail_the_update() {
    let (mut d, mut o, spec) = healthy_web(1, UpdateOrder::StopFirst);
    d.insert(v2(spec));
    converge(&d, &mut o, 100);
    health(&mut o, TaskId(2), Health::Healthy, 1_000);
    converge(&d, &mut o, 1_100);
    let p = plan(&d, &o, 9_500);
    assert_eq!(kinds(&p), ["status"], "completed after the monitor");
    apply(&mut o, &p).unwrap();
    health(&mut o, TaskId(2), Health::Unhealthy, 20_000);
    fail(&mut o, TaskId(2), 137, 20_000);
    let p = plan(&d, &o, 20_100);
    assert_eq!(kinds(&p), ["restart t2->t3 s_web.1", "assign t3 n1"]);
    assert_eq!(
        status_of(&o).update.as_ref().unwrap().state,
        UpdateState::Completed
    );
}

#[test]
fn unhealthy_task_failed_by_the_agent_is_restarted_with_backoff() {
    let mut spec = web(1);
    spec.healthcheck = true;
    spec.restart.delay = 1_000;
    let d = desired(vec![spec]);
    let mut o = cluster(&["n1"]);
    converge(&d, &mut o, 0);
    // Never healthy: dies young, so the second replacement also gets the crash-loop backoff.
    fail(&mut o, TaskId(1), 137, 3_000);
    let p = plan(&d, &o, 3_000);
    let Action::RestartTask { task, .. } = &p.actions[0] else {
        panic!("{p:?}")
    };
    // Delay, then the first backoff step (from the first short run on).
    assert_eq!((task.not_before, task.restart_count), (Some(4_500), 1));
    apply(&mut o, &p).unwrap();
    converge(&d, &mut o, 4_500);
    assert_eq!(o.tasks[&TaskId(2)].state, TaskState::Running);
    fail(&mut o, TaskId(2), 137, 6_000);
    let p = plan(&d, &o, 6_000);
    let Action::RestartTask { task, .. } = &p.actions[0] else {
        panic!("{p:?}")
    };
    assert_eq!(
        task.not_before,
        Some(6_000 + 1_000 + 1_000),
        "delay + second backoff step"
    );
}

#[test]
fn service_rollback_runs_with_the_rollback_config() {
    let mut spec = web(2);
    spec.update_config.parallelism = 1;
    spec.rollback_config.parallelism = 0;
    let mut d = desired(vec![spec.clone()]);
    let mut o = cluster(&["n1"]);
    converge(&d, &mut o, 0);
    let mut s2 = v2(spec.clone());
    s2.rollback_config.delay = 0;
    d.insert(s2.clone());
    converge(&d, &mut o, 100);
    converge(&d, &mut o, 10_000);
    assert_eq!(
        status_of(&o).update.as_ref().unwrap().state,
        UpdateState::Completed
    );
    // Back to version 1 (what `dcpp service rollback` stores): both slots at once.
    d.insert(spec);
    let p = plan(&d, &o, 20_000);
    assert_eq!(kinds(&p), ["status", "shutdown t3", "shutdown t4"]);
    let Action::SetServiceStatus { status, .. } = &p.actions[0] else {
        panic!()
    };
    let u = status.update.as_ref().unwrap();
    assert_eq!(u.state, UpdateState::RollingBack);
    assert_eq!(u.rollback_config.as_ref(), Some(&s2.rollback_config));
    assert_eq!(
        u.rolled_back_from, None,
        "a rollback the user asked for rejects nothing"
    );
    assert_eq!(status.previous.as_ref().unwrap().version, 2);
}

#[test]
fn spec_change_mid_update_retargets() {
    let mut spec = web(3);
    spec.update_config.order = UpdateOrder::StartFirst;
    let mut d = desired(vec![spec.clone()]);
    let mut o = cluster(&["n1"]);
    converge(&d, &mut o, 0);
    let s2 = v2(spec);
    d.insert(s2.clone());
    // Start the update of slot 1, let its v2 task run; slot 2 gets a v2 task that is starting.
    let p = plan(&d, &o, 100);
    apply(&mut o, &p).unwrap();
    agent(&mut o, 100);
    let p = plan(&d, &o, 101);
    apply(&mut o, &p).unwrap();
    let s3 = v2(s2);
    d.insert(s3);
    let st = converge(&d, &mut o, 200);
    assert!(!st.is_empty());
    converge(&d, &mut o, 60_000);
    assert_eq!(running(&o, "s_web").len(), 3);
    assert!(live(&o, "s_web").iter().all(|t| t.spec_version == 3));
    let status = &o.services[&ServiceId("s_web".into())];
    assert_eq!(
        status.update.as_ref().unwrap().state,
        UpdateState::Completed
    );
    assert_eq!(
        status.previous.as_ref().unwrap().version,
        1,
        "last converged spec"
    );
}

#[test]
fn removed_service_tasks_are_removed_then_forgotten() {
    let mut d = desired(vec![web(2)]);
    let mut o = cluster(&["n1"]);
    converge(&d, &mut o, 0);
    d.services.clear();
    let p = plan(&d, &o, 10);
    assert_eq!(kinds(&p), ["remove t1", "remove t2"]);
    apply(&mut o, &p).unwrap();
    agent(&mut o, 11);
    let p = plan(&d, &o, 12);
    assert_eq!(kinds(&p), ["delete t1", "delete t2", "delete-status s_web"]);
    apply(&mut o, &p).unwrap();
    assert!(o.tasks.is_empty() && o.services.is_empty());
}

#[test]
fn history_is_bounded() {
    let d = desired(vec![web(1)]);
    let mut o = cluster(&["n1"]);
    converge(&d, &mut o, 0);
    let mut now = 0;
    for _ in 0..10 {
        now += 20_000;
        let head = *o.tasks.keys().last().unwrap();
        set_state(&mut o, head, TaskState::Running, now - 15_000);
        fail(&mut o, head, 1, now);
        converge(&d, &mut o, now);
    }
    assert_eq!(o.tasks.len(), 1 + plan::TASK_HISTORY);
}

#[test]
fn backward_transition_is_refused() {
    let d = desired(vec![web(1)]);
    let mut o = cluster(&["n1"]);
    converge(&d, &mut o, 0);
    let r = report(
        &mut o,
        TaskId(1),
        &TaskReport {
            state: Some(TaskState::Starting),
            ..Default::default()
        },
        5,
    );
    assert_eq!(
        r,
        Err(Error::BackwardTransition {
            task: TaskId(1),
            from: TaskState::Running,
            to: TaskState::Starting
        })
    );
    fail(&mut o, TaskId(1), 1, 6);
    let r = report(
        &mut o,
        TaskId(1),
        &TaskReport {
            state: Some(TaskState::Running),
            ..Default::default()
        },
        7,
    );
    assert!(r.is_err(), "terminal is final");
    assert_eq!(o.tasks[&TaskId(1)].state, TaskState::Failed);
}

#[test]
fn stale_plan_is_a_transient_error() {
    let d = desired(vec![web(1)]);
    let mut o = cluster(&["n1"]);
    let p = plan(&d, &o, 0);
    apply(&mut o, &p).unwrap();
    let e = apply(&mut o, &p).unwrap_err();
    assert!(e.is_transient(), "{e}");
}

#[test]
fn constraint_and_restart_parsing() {
    let c = Constraint::parse("node.labels.zone != east").unwrap();
    assert_eq!(c.to_string(), "node.labels.zone!=east");
    assert!(Constraint::parse("node.role==boss").is_err());
    assert!(Constraint::parse("engine.labels.x==1").is_err());
    assert!(Constraint::parse("node.id").is_err());
    let r = RestartPolicy::from_compose("on-failure:3").unwrap();
    assert_eq!(
        (r.condition, r.max_attempts),
        (RestartCondition::OnFailure, Some(3))
    );
    assert_eq!(
        RestartPolicy::from_compose("unless-stopped")
            .unwrap()
            .condition,
        RestartCondition::Any
    );
    assert_eq!(
        RestartPolicy::from_compose("sometimes"),
        Err(Error::InvalidRestartPolicy("sometimes".into()))
    );
}

#[test]
fn state_round_trips_through_json() {
    let d = desired(vec![web(2)]);
    let mut o = cluster(&["n1"]);
    let p = plan(&d, &o, 0);
    apply(&mut o, &p).unwrap();
    let json = serde_json::to_string(&o).unwrap();
    let back: Observed = serde_json::from_str(&json).unwrap();
    assert_eq!(back, o);
    let dj: Desired = serde_json::from_str(&serde_json::to_string(&d).unwrap()).unwrap();
    assert_eq!(dj, d);
    let pj: Plan = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
    assert_eq!(pj, p);
}

#[test]
fn start_first_never_runs_three_tasks_in_a_slot() {
    // Found by the simulation: a new spec arriving just as the previous update's task starts
    // running, while the old task is still stopping.
    let mut spec = web(1);
    spec.update_config.order = UpdateOrder::StartFirst;
    let mut d = desired(vec![spec.clone()]);
    let mut o = cluster(&["n1"]);
    converge(&d, &mut o, 0);
    let s2 = v2(spec);
    d.insert(s2.clone());
    let p = plan(&d, &o, 100);
    assert_eq!(kinds(&p), ["status", "create t2 s_web.1", "assign t2 n1"]);
    apply(&mut o, &p).unwrap();
    set_state(&mut o, TaskId(2), TaskState::Running, 110);
    d.insert(v2(s2));
    let p = plan(&d, &o, 110);
    assert_eq!(
        kinds(&p),
        ["status", "shutdown t1"],
        "t3 waits for t1 to stop"
    );
    apply(&mut o, &p).unwrap();
    set_state(&mut o, TaskId(1), TaskState::Shutdown, 120);
    let p = plan(&d, &o, 120);
    assert_eq!(kinds(&p), ["create t3 s_web.1", "assign t3 n1"]);
}

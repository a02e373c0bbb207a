//! The convergence rule, one behaviour each. States are produced by the planner and the test
//! agent wherever they can be, so the verdict is checked against what the orchestrator does.

mod common;
use common::*;
use dcpp_reconciler::converge::{CRASH_LOOP, SETTLE};
use dcpp_reconciler::plan::MIN_UPTIME;
use dcpp_reconciler::*;

fn web(replicas: u32) -> ServiceSpec {
    ServiceSpec::new("s", "web", "busybox", replicas)
}

/// The verdict on `applied` with the stored desired spec `stored`.
fn verdict_of(applied: &ServiceSpec, stored: &ServiceSpec, o: &Observed, now: Time) -> Convergence {
    let tasks: Vec<Task> = o.tasks.values().cloned().collect();
    let slots = desired_slots(&applied.id(), applied, o);
    verdict(
        &ServiceView {
            applied,
            stored: Some(stored),
            status: o.services.get(&applied.id()),
            tasks: &tasks,
            slots: &slots,
            nodes: &o.nodes,
        },
        now,
    )
}

fn v(spec: &ServiceSpec, o: &Observed, now: Time) -> Convergence {
    verdict_of(spec, spec, o, now)
}

fn failed(c: &Convergence) -> &str {
    match c {
        Convergence::Failed(r) => r,
        other => panic!("expected a failure, got {other:?}"),
    }
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

fn fail_with(o: &mut Observed, id: TaskId, exit: i32, error: &str, now: Time) {
    report(
        o,
        id,
        &TaskReport {
            state: Some(TaskState::Failed),
            exit_code: Some(exit),
            error: Some(error.into()),
            ..TaskReport::default()
        },
        now,
    )
    .unwrap();
}

#[test]
fn running_replicas_converge_after_the_settle_window() {
    let spec = web(2);
    let d = desired(vec![spec.clone()]);
    let mut o = cluster(&["n1"]);
    assert_eq!(
        v(&spec, &o, 0),
        Convergence::Pending("waiting for the orchestrator".into())
    );
    converge(&d, &mut o, 1_000);
    assert_eq!(
        v(&spec, &o, 1_000 + SETTLE - 1),
        Convergence::Pending("s_web.1 running, settling (and 1 more)".into())
    );
    assert_eq!(v(&spec, &o, 1_000 + SETTLE), Convergence::Converged);
}

#[test]
fn a_healthchecked_service_converges_once_healthy_and_settled() {
    let mut spec = web(1);
    spec.healthcheck = true;
    let d = desired(vec![spec.clone()]);
    let mut o = cluster(&["n1"]);
    converge(&d, &mut o, 0);
    assert_eq!(
        v(&spec, &o, 60_000),
        Convergence::Pending("s_web.1 running, waiting to be healthy".into())
    );
    health(&mut o, TaskId(1), Health::Healthy, 5_000);
    assert!(matches!(
        v(&spec, &o, 5_000 + SETTLE - 1),
        Convergence::Pending(_)
    ));
    assert_eq!(v(&spec, &o, 5_000 + SETTLE), Convergence::Converged);
}

#[test]
fn one_shot_service_converges_when_it_completed_successfully() {
    let mut spec = web(1);
    spec.restart = RestartPolicy::from_compose("no").unwrap();
    let d = desired(vec![spec.clone()]);
    let mut o = cluster(&["n1"]);
    converge(&d, &mut o, 0);
    fail(&mut o, TaskId(1), 0, 100);
    converge(&d, &mut o, 100);
    assert_eq!(v(&spec, &o, 100), Convergence::Converged);
    // on-failure with exit 0 is one-shot too.
    spec.restart = RestartPolicy::from_compose("on-failure").unwrap();
    assert_eq!(v(&spec, &o, 100), Convergence::Converged);
}

#[test]
fn one_shot_that_failed_is_not_replaced_and_fails() {
    let mut spec = web(1);
    spec.restart = RestartPolicy::from_compose("no").unwrap();
    let d = desired(vec![spec.clone()]);
    let mut o = cluster(&["n1"]);
    converge(&d, &mut o, 0);
    fail_with(&mut o, TaskId(1), 2, "exited with code 2", 100);
    converge(&d, &mut o, 100);
    assert_eq!(
        failed(&v(&spec, &o, 100)),
        "s_web.1: exited with code 2 and the restart policy does not replace it"
    );
}

#[test]
fn dead_task_about_to_be_restarted_is_pending_not_failed() {
    let spec = web(1);
    let d = desired(vec![spec.clone()]);
    let mut o = cluster(&["n1"]);
    converge(&d, &mut o, 0);
    // Reported dead; the leader has not planned the replacement yet.
    fail_with(&mut o, TaskId(1), 1, "exited with code 1", 20_000);
    assert_eq!(
        v(&spec, &o, 20_000),
        Convergence::Pending("s_web.1 failed".into())
    );
}

#[test]
fn crash_loop_fails_after_consecutive_short_attempts() {
    let spec = web(1);
    let d = desired(vec![spec.clone()]);
    let mut o = cluster(&["n1"]);
    let mut now = 0;
    for attempt in 1..=CRASH_LOOP as u64 {
        converge(&d, &mut o, now);
        let id = live(&o, "s_web")[0].id;
        assert!(
            matches!(v(&spec, &o, now), Convergence::Pending(_)),
            "attempt {attempt}"
        );
        fail_with(&mut o, id, 3, "exited with code 3", now + 200);
        now += 1_000;
    }
    assert_eq!(
        failed(&v(&spec, &o, now)),
        "crash loop: 3 attempts in a row ended before being up for 10s; \
         last: s_web.1: exited with code 3"
    );
}

#[test]
fn task_crashing_after_running_a_while_is_no_crash_loop() {
    let spec = web(1);
    let d = desired(vec![spec.clone()]);
    let mut o = cluster(&["n1"]);
    let mut now = 0;
    for _ in 0..4 {
        converge(&d, &mut o, now);
        let id = live(&o, "s_web")[0].id;
        now += MIN_UPTIME + 1_000;
        fail_with(&mut o, id, 3, "exited with code 3", now);
    }
    assert!(matches!(v(&spec, &o, now), Convergence::Pending(_)));
    converge(&d, &mut o, now);
    assert_eq!(v(&spec, &o, now + SETTLE), Convergence::Converged);
}

#[test]
fn restart_any_one_shot_is_a_crash_loop_with_a_hint() {
    let spec = web(1);
    let d = desired(vec![spec.clone()]);
    let mut o = cluster(&["n1"]);
    for i in 0..3u64 {
        converge(&d, &mut o, i * 1_000);
        let id = live(&o, "s_web")[0].id;
        fail(&mut o, id, 0, i * 1_000 + 100);
    }
    let r = failed(&v(&spec, &o, 3_000)).to_string();
    assert!(r.starts_with("crash loop: 3 attempts"), "{r}");
    assert!(
        r.ends_with("(a one-shot service needs restart: \"no\" or \"on-failure\")"),
        "{r}"
    );
}

#[test]
fn always_unhealthy_fails_with_the_healthcheck_output_however_long_each_attempt() {
    let mut spec = web(1);
    spec.healthcheck = true;
    let d = desired(vec![spec.clone()]);
    let mut o = cluster(&["n1"]);
    let mut now = 0;
    for _ in 0..3 {
        converge(&d, &mut o, now);
        let id = live(&o, "s_web")[0].id;
        health(&mut o, id, Health::Starting, now + 100);
        // Long past MIN_UPTIME, but never healthy: still counts.
        now += 60_000;
        health(&mut o, id, Health::Unhealthy, now);
        fail_with(
            &mut o,
            id,
            137,
            "unhealthy: last healthcheck exited with code 1: db down",
            now,
        );
    }
    let r = failed(&v(&spec, &o, now)).to_string();
    assert!(
        r.ends_with("last: s_web.1: unhealthy: last healthcheck exited with code 1: db down"),
        "{r}"
    );
}

#[test]
fn rejected_task_fails_at_once() {
    let spec = web(1);
    let d = desired(vec![spec.clone()]);
    let mut o = cluster(&["n1"]);
    converge(&d, &mut o, 0);
    report(
        &mut o,
        TaskId(1),
        &TaskReport {
            state: Some(TaskState::Rejected),
            error: Some("image pull failed: registry 127.0.0.1:1 unreachable".into()),
            ..TaskReport::default()
        },
        100,
    )
    .unwrap();
    // The replacement is planned (and would be rejected again): the slot fails at once.
    let p = plan(&d, &o, 100);
    apply(&mut o, &p).unwrap();
    assert_eq!(
        failed(&v(&spec, &o, 100)),
        "rejected: s_web.1: image pull failed: registry 127.0.0.1:1 unreachable"
    );
}

#[test]
fn unsatisfiable_constraint_fails_but_busy_nodes_only_wait() {
    let mut spec = web(1);
    spec.placement
        .constraints
        .push(Constraint::parse("node.labels.zone==mars").unwrap());
    let d = desired(vec![spec.clone()]);
    let mut o = cluster(&["n1", "n2"]);
    converge(&d, &mut o, 0);
    assert_eq!(
        failed(&v(&spec, &o, 0)),
        "unsatisfiable placement: no node satisfies node.labels.zone==mars"
    );
    // A node that matches but is paused: the task waits, nothing is wrong with the spec.
    let n2 = o.nodes.get_mut(&NodeId("n2".into())).unwrap();
    n2.labels.insert("zone".into(), "mars".into());
    n2.availability = Availability::Pause;
    converge(&d, &mut o, 10);
    assert!(matches!(v(&spec, &o, 10), Convergence::Pending(_)));
}

#[test]
fn paused_update_fails_with_its_reason() {
    let spec = web(2);
    let mut d = desired(vec![spec.clone()]);
    let mut o = cluster(&["n1"]);
    converge(&d, &mut o, 0);
    let mut s2 = spec.clone();
    s2.version = 2;
    d.insert(s2.clone());
    converge(&d, &mut o, 100);
    let new = live(&o, "s_web")
        .iter()
        .find(|t| t.spec_version == 2)
        .unwrap()
        .id;
    fail_with(&mut o, new, 1, "exited with code 1", 200);
    converge(&d, &mut o, 200);
    assert_eq!(
        failed(&v(&s2, &o, 300)),
        "update paused: 1 task(s) of version 2 failed (last: s_web.1: exited with code 1)"
    );
}

#[test]
fn rolled_back_update_fails_and_a_retry_is_followed_afresh() {
    let mut spec = web(1);
    spec.update_config.failure_action = FailureAction::Rollback;
    spec.update_config.monitor = 1_000;
    spec.rollback_config.monitor = 1_000;
    let mut d = desired(vec![spec.clone()]);
    let mut o = cluster(&["n1"]);
    converge(&d, &mut o, 0);
    let mut bad = spec.clone();
    bad.version = 2;
    d.insert(bad.clone());
    converge(&d, &mut o, 100);
    let new = live(&o, "s_web")
        .iter()
        .find(|t| t.spec_version == 2)
        .unwrap()
        .id;
    fail_with(&mut o, new, 1, "exited with code 1", 150);
    let p = plan(&d, &o, 150);
    apply(&mut o, &p).unwrap();
    assert!(matches!(v(&bad, &o, 150), Convergence::Pending(r) if r.starts_with("rolling back")));
    converge(&d, &mut o, 200);
    converge(&d, &mut o, 5_000);
    let why = "update to version 2 rolled back to version 1: update failed, rolling back: \
               1 task(s) of version 2 failed (last: s_web.1: exited with code 1)";
    // Before and after the leader resets the stored spec to the version that runs.
    assert_eq!(failed(&v(&bad, &o, 5_000)), why);
    assert_eq!(failed(&verdict_of(&bad, &spec, &o, 5_000)), why);
    d.insert(spec.clone());
    converge(&d, &mut o, 5_100);
    assert_eq!(failed(&verdict_of(&bad, &spec, &o, 5_100)), why);
    // Applying the bad spec again: the old rollback is not mistaken for this attempt's.
    assert_eq!(
        v(&bad, &o, 5_200),
        Convergence::Pending("waiting for the orchestrator".into())
    );
}

#[test]
fn spec_changed_by_someone_else_fails_the_follow() {
    let spec = web(1);
    let mut other = spec.clone();
    other.version = 9;
    other.image = "busybox:9".into();
    let o = cluster(&["n1"]);
    assert_eq!(
        failed(&verdict_of(&spec, &other, &o, 0)),
        "changed meanwhile: the desired spec is now version 9 (image busybox:9)"
    );
}

#[test]
fn other_services_tasks_are_ignored_and_old_tasks_keep_it_pending() {
    let spec = web(1);
    let mut api = ServiceSpec::new("t", "api", "busybox", 1);
    api.placement
        .constraints
        .push(Constraint::parse("node.labels.zone==mars").unwrap());
    let mut d = desired(vec![spec.clone(), api]);
    let mut o = cluster(&["n1"]);
    converge(&d, &mut o, 0);
    assert_eq!(v(&spec, &o, SETTLE), Convergence::Converged);
    // Scale down: the removed replica is live until its container stops.
    let mut one = web(2);
    d.insert(one.clone());
    converge(&d, &mut o, 10_000);
    one.mode = Mode::Replicated { replicas: 1 };
    d.insert(one.clone());
    let p = plan(&d, &o, 20_000);
    apply(&mut o, &p).unwrap();
    assert_eq!(
        v(&one, &o, 20_000),
        Convergence::Pending("1 old task(s) stopping".into())
    );
    agent(&mut o, 20_100);
    assert_eq!(v(&one, &o, 20_100), Convergence::Converged);
}

#[test]
fn update_is_followed_through_its_monitor_window() {
    let mut spec = web(1);
    spec.update_config.monitor = 5_000;
    let mut d = desired(vec![spec.clone()]);
    let mut o = cluster(&["n1"]);
    converge(&d, &mut o, 0);
    let mut s2 = spec.clone();
    s2.version = 2;
    d.insert(s2.clone());
    converge(&d, &mut o, 100);
    // Up and settled, but the monitor window (until 5_100) has not passed.
    assert_eq!(
        v(&s2, &o, 100 + SETTLE),
        Convergence::Pending("updating to version 2, monitoring".into())
    );
    converge(&d, &mut o, 5_100);
    assert_eq!(v(&s2, &o, 5_100 + SETTLE), Convergence::Converged);
}

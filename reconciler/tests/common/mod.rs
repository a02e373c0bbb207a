//! Shared test helpers: a cluster builder and a minimal well-behaved agent.
#![allow(dead_code)]

use dcpp_reconciler::*;

pub fn cluster(nodes: &[&str]) -> Observed {
    let mut o = Observed::default();
    for n in nodes {
        o.add_node(Node::new(n));
    }
    o
}

pub fn desired(specs: Vec<ServiceSpec>) -> Desired {
    let mut d = Desired::default();
    for s in specs {
        d.insert(s);
    }
    d
}

pub fn set_state(o: &mut Observed, id: TaskId, state: TaskState, now: Time) {
    report(
        o,
        id,
        &TaskReport {
            state: Some(state),
            ..TaskReport::default()
        },
        now,
    )
    .unwrap();
}

pub fn fail(o: &mut Observed, id: TaskId, exit: i32, now: Time) {
    report(
        o,
        id,
        &TaskReport {
            state: Some(if exit == 0 {
                TaskState::Complete
            } else {
                TaskState::Failed
            }),
            exit_code: Some(exit),
            ..TaskReport::default()
        },
        now,
    )
    .unwrap();
}

/// A perfect agent: assigned tasks that should run become running, tasks that should stop
/// become shut down. Returns whether anything changed.
pub fn agent(o: &mut Observed, now: Time) -> bool {
    let mut changed = false;
    let ids: Vec<TaskId> = o.tasks.keys().copied().collect();
    for id in ids {
        let t = &o.tasks[&id];
        if !t.is_live() || t.node.is_none() {
            continue;
        }
        let to = if t.desired == DesiredState::Running {
            TaskState::Running
        } else {
            TaskState::Shutdown
        };
        if t.state != to {
            set_state(o, id, to, now);
            changed = true;
        }
    }
    changed
}

/// Plans, applies and lets the agent act until nothing changes. Returns the plans made.
pub fn converge(d: &Desired, o: &mut Observed, now: Time) -> Vec<Plan> {
    let mut plans = Vec::new();
    for _ in 0..50 {
        let p = plan(d, o, now);
        apply(o, &p).unwrap();
        let empty = p.is_empty();
        plans.push(p);
        let moved = agent(o, now);
        if empty && !moved {
            return plans;
        }
    }
    panic!("no convergence: {o:#?}");
}

pub fn live<'a>(o: &'a Observed, service: &str) -> Vec<&'a Task> {
    o.tasks
        .values()
        .filter(|t| t.service.0 == service && t.is_live())
        .collect()
}

pub fn running<'a>(o: &'a Observed, service: &str) -> Vec<&'a Task> {
    o.tasks
        .values()
        .filter(|t| t.service.0 == service && t.state == TaskState::Running)
        .collect()
}

pub fn kinds(p: &Plan) -> Vec<String> {
    p.actions
        .iter()
        .map(|a| match a {
            Action::SetServiceStatus { .. } => "status".to_string(),
            Action::DeleteServiceStatus { service } => format!("delete-status {service}"),
            Action::Rollback { service, .. } => format!("rollback {service}"),
            Action::CreateTask { task } => format!("create {} {}", task.id, task.name()),
            Action::RestartTask { old, task } => {
                format!("restart {old}->{} {}", task.id, task.name())
            }
            Action::PinVolume { volume, node } => format!("pin {volume} {node}"),
            Action::AssignTask { task, node } => format!("assign {task} {node}"),
            Action::SetPendingReason { task, reason } => format!("pending {task}: {reason}"),
            Action::ShutdownTask { task, .. } => format!("shutdown {task}"),
            Action::RemoveTask { task, .. } => format!("remove {task}"),
            Action::OrphanTask { task, .. } => format!("orphan {task}"),
            Action::DeleteTask { task } => format!("delete {task}"),
        })
        .collect()
}

//! `dcpp diff` and `apply --dry-run`: what applying a stack would do, task by task, and why.
//!
//! The preview runs the planner the leader runs ([`dcpp_reconciler::plan`]) on the stored
//! observed state and the stored desired state with this stack's services replaced, and
//! renders its actions. Nothing is written. Because it is the live loop's own function, the
//! preview and what then happens cannot disagree on the first round; later rounds of a rolling
//! update (the tasks that wait for their turn) are listed as such.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use dcpp_raft::Store;
use dcpp_reconciler::{
    Action, Desired, DesiredState, Mode, NodeId, Observed, ServiceId, Task, TaskId,
};
use serde::Serialize;

use crate::Error;
use crate::schema::{ServiceChange, ServiceDoc, diff_services, now_ms};

/// One planned change to a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum Planned {
    /// A new task, placed on `node` (its hostname).
    Create { task: String, node: String },
    /// The task is replaced by one of the new version (now, or when the rolling update gets
    /// to it: `waits`).
    Replace {
        task: String,
        reason: String,
        waits: bool,
    },
    /// A dead task started again.
    Restart { task: String, reason: String },
    /// The task is stopped and removed.
    Stop { task: String, reason: String },
    /// The task's node is gone or down; its slot is placed again.
    Reschedule { task: String, reason: String },
    /// The task cannot be placed.
    Pending { task: String, reason: String },
}

impl fmt::Display for Planned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Planned::Create { task, node } => write!(f, "create {task} on {node}"),
            Planned::Replace {
                task,
                reason,
                waits: false,
            } => write!(f, "replace {task}: {reason}"),
            Planned::Replace {
                task,
                reason,
                waits: true,
            } => write!(
                f,
                "replace {task}: {reason} (when the rolling update reaches it)"
            ),
            Planned::Restart { task, reason } => write!(f, "restart {task}: {reason}"),
            Planned::Stop { task, reason } => write!(f, "stop {task}: {reason}"),
            Planned::Reschedule { task, reason } => write!(f, "reschedule {task}: {reason}"),
            Planned::Pending { task, reason } => write!(f, "pending {task}: {reason}"),
        }
    }
}

/// What applying a stack would change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Preview {
    pub stack: String,
    /// Service documents added, removed or changed (a removed one is only acted on with
    /// `prune`).
    pub changes: Vec<ServiceChange>,
    /// The planner's actions on this stack's tasks.
    pub actions: Vec<Planned>,
}

impl Preview {
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.actions.is_empty()
    }
}

/// Previews applying `new` (the stack's services by name) to the store. With `prune`, stored
/// services missing from `new` are removed; otherwise they are kept, as `apply` does.
pub async fn preview<S: Store>(
    s: &S,
    stack: &str,
    new: &BTreeMap<String, ServiceDoc>,
    prune: bool,
) -> Result<Preview, Error> {
    let snap = crate::leader::snapshot(s).await?;
    let old = crate::schema::stack_services(s, stack).await?;
    Ok(plan_preview(
        stack,
        &old,
        new,
        prune,
        snap.desired,
        &snap.observed,
        now_ms(),
    ))
}

/// The pure part of [`preview`]: `desired` is the stored desired state.
pub fn plan_preview(
    stack: &str,
    old: &BTreeMap<String, ServiceDoc>,
    new: &BTreeMap<String, ServiceDoc>,
    prune: bool,
    mut desired: Desired,
    observed: &Observed,
    now: u64,
) -> Preview {
    let changes = diff_services(old, new);
    for d in old.values() {
        if prune || new.contains_key(&d.spec.name) {
            desired.services.remove(&d.id());
        }
    }
    for d in new.values() {
        desired.insert(d.spec.clone());
    }
    // Service id → (name, why its tasks are replaced, replicas before, replicas after).
    let mut names: BTreeMap<ServiceId, String> = BTreeMap::new();
    for d in old.values().chain(new.values()) {
        names.insert(d.id(), d.spec.name.clone());
    }
    let why: BTreeMap<String, String> = changes
        .iter()
        .filter_map(|c| match c {
            ServiceChange::Changed { name, fields } => {
                Some((name.clone(), format!("{} changed", fields.join(", "))))
            }
            _ => None,
        })
        .collect();
    let replicas = |d: Option<&ServiceDoc>| match d.map(|d| &d.spec.mode) {
        Some(Mode::Replicated { replicas }) => Some(*replicas),
        _ => None,
    };

    let plan = dcpp_reconciler::plan(&desired, observed, now);
    let mut tasks: BTreeMap<TaskId, Task> = observed.tasks.clone();
    let mut placed: BTreeMap<TaskId, NodeId> = BTreeMap::new();
    for a in &plan.actions {
        match a {
            Action::CreateTask { task } | Action::RestartTask { task, .. } => {
                tasks.insert(task.id, task.clone());
            }
            Action::AssignTask { task, node } => {
                placed.insert(*task, node.clone());
            }
            _ => {}
        }
    }
    let label = |t: &Task| -> Option<String> {
        let name = names.get(&t.service)?;
        Some(format!("{name}.{}", t.slot))
    };
    let why_of = |t: &Task| -> String {
        names
            .get(&t.service)
            .and_then(|n| why.get(n))
            .cloned()
            .unwrap_or_else(|| "spec changed".into())
    };
    let pending: BTreeMap<TaskId, String> = plan
        .pending
        .iter()
        .map(|p| (p.task, p.reason.to_string()))
        .collect();

    let mut out = Vec::new();
    let mut replaced: BTreeSet<TaskId> = BTreeSet::new();
    for a in &plan.actions {
        let planned = match a {
            Action::CreateTask { task } => {
                let Some(name) = label(task) else { continue };
                // Start-first update: the new task stands next to the outdated one.
                let outdated = observed.tasks.values().find(|o| {
                    o.service == task.service
                        && o.slot == task.slot
                        && o.is_live()
                        && o.desired == DesiredState::Running
                        && o.spec_version != task.spec_version
                });
                if let Some(o) = outdated {
                    replaced.insert(o.id);
                    Planned::Replace {
                        task: name,
                        reason: why_of(o),
                        waits: false,
                    }
                } else if let Some(node) = placed.get(&task.id) {
                    // The hostname, as swarm's task lists show it; the id if it has none.
                    let node = match observed.nodes.get(node) {
                        Some(n) if !n.hostname.is_empty() => n.hostname.clone(),
                        _ => format!("node {node}"),
                    };
                    Planned::Create { task: name, node }
                } else {
                    Planned::Pending {
                        task: name,
                        reason: pending
                            .get(&task.id)
                            .cloned()
                            .unwrap_or_else(|| "not placed yet".into()),
                    }
                }
            }
            Action::RestartTask { old, task } => {
                let Some(name) = label(task) else { continue };
                let reason = match observed.tasks.get(old) {
                    Some(o) if o.exit_code.is_some() => {
                        format!("exited with code {}", o.exit_code.unwrap_or_default())
                    }
                    Some(o) => format!("task is {}", o.state),
                    None => "task is gone".into(),
                };
                Planned::Restart { task: name, reason }
            }
            Action::ShutdownTask { task, reason } | Action::RemoveTask { task, reason } => {
                let Some(t) = tasks.get(task) else { continue };
                let Some(name) = label(t) else { continue };
                let svc = &names[&t.service];
                if !desired.services.contains_key(&t.service) {
                    Planned::Stop {
                        task: name,
                        reason: format!("service {svc} removed"),
                    }
                } else if reason.starts_with("updating to version") {
                    replaced.insert(t.id);
                    Planned::Replace {
                        task: name,
                        reason: why_of(t),
                        waits: false,
                    }
                } else if reason == "scaled down" {
                    let before = replicas(old.get(svc));
                    let after = replicas(new.get(svc));
                    let reason = match (before, after) {
                        (Some(b), Some(a)) => format!("scale {b}→{a}"),
                        _ => reason.clone(),
                    };
                    Planned::Stop { task: name, reason }
                } else {
                    Planned::Stop {
                        task: name,
                        reason: reason.clone(),
                    }
                }
            }
            Action::OrphanTask { task, reason } => {
                let Some(t) = tasks.get(task) else { continue };
                let Some(name) = label(t) else { continue };
                Planned::Reschedule {
                    task: name,
                    reason: reason.clone(),
                }
            }
            _ => continue,
        };
        if !out.contains(&planned) {
            out.push(planned);
        }
    }
    // Pending tasks that already exist (a constraint nobody meets, before and after).
    for p in &plan.pending {
        if let Some(t) = tasks.get(&p.task)
            && observed.tasks.contains_key(&p.task)
            && let Some(name) = label(t)
        {
            let planned = Planned::Pending {
                task: name,
                reason: p.reason.to_string(),
            };
            if !out.contains(&planned) {
                out.push(planned);
            }
        }
    }
    // The rest of a rolling update: outdated tasks the planner leaves for later rounds.
    for t in observed.tasks.values() {
        let Some(spec) = desired.services.get(&t.service) else {
            continue;
        };
        if !new.values().any(|d| d.id() == t.service)
            || replaced.contains(&t.id)
            || !t.is_live()
            || t.desired != DesiredState::Running
            || t.spec_version == spec.version
        {
            continue;
        }
        let Some(name) = label(t) else { continue };
        let stopping = out
            .iter()
            .any(|p| matches!(p, Planned::Stop { task, .. } if *task == name));
        if !stopping {
            out.push(Planned::Replace {
                task: name,
                reason: why_of(t),
                waits: true,
            });
        }
    }
    Preview {
        stack: stack.to_string(),
        changes,
        actions: out,
    }
}

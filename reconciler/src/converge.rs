//! When a service has converged: the one rule `dcpp apply`, `service update`, `service scale`
//! and `service rollback` follow (and anything else that needs a verdict), as a pure function
//! of the spec that was applied, the stored desired and rollout state, the service's tasks and
//! `now`. It depends on the reconciler's model types only, not on the store.
//!
//! # Rules
//!
//! - **Converged**: every desired slot's current task runs the applied version, is up (running,
//!   and healthy when the service has a healthcheck) and has stayed up for [`SETTLE`]; no other
//!   task of the service is live. A slot whose task is meant to finish (restart `none`, or
//!   `on-failure`, and it exited 0) is done when that task completed successfully.
//! - **Failed** (the reason names the task and its error):
//!   - the update was rolled back automatically, or is paused after failures;
//!   - a task of the applied version was rejected (e.g. the image could not be pulled);
//!   - a crash loop: [`CRASH_LOOP`] attempts in a row of the applied version in one slot
//!     ended before being up for [`crate::plan::MIN_UPTIME`] (a task that never became
//!     healthy counts, however long it ran);
//!   - a task died and its restart policy does not replace it;
//!   - no node satisfies the placement constraints;
//!   - the desired spec was changed or removed by someone else meanwhile.
//! - **Pending** otherwise, with what is awaited.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::model::{
    DesiredState, Health, Millis, Node, NodeId, NodeStatus, RestartCondition, ServiceSpec,
    ServiceStatus, Slot, Task, TaskState, Time, UpdateState,
};
use crate::plan::{MIN_UPTIME, failure_detail, restarts_allowed};

/// How long a task must stay up before its slot counts as converged. A container that dies at
/// once (bad command, missing file, failed healthcheck) is reported within a few hundred
/// milliseconds here (exit watch → agent report → store write); 1.5 s leaves margin for a loaded
/// host, while a healthy apply waits at most that long more.
pub const SETTLE: Millis = 1_500;
/// Consecutive short-lived attempts of one slot that make a crash loop. The planner's backoff
/// (500 ms from the first short run, doubling) ends the third attempt of a container that
/// exits at once about 1.5 s after the first, so a crash loop fails apply promptly; two could
/// be a single unlucky restart.
pub const CRASH_LOOP: usize = 3;

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "state", content = "reason", rename_all = "snake_case")]
pub enum Convergence {
    Converged,
    Pending(String),
    Failed(String),
}

impl fmt::Display for Convergence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Convergence::Converged => f.write_str("converged"),
            Convergence::Pending(r) => write!(f, "pending: {r}"),
            Convergence::Failed(r) => write!(f, "failed: {r}"),
        }
    }
}

/// Everything the verdict on one service depends on.
pub struct ServiceView<'a> {
    /// The spec that was applied and is being followed.
    pub applied: &'a ServiceSpec,
    /// The desired spec stored now; `None` if the service was removed.
    pub stored: Option<&'a ServiceSpec>,
    /// The reconciler's rollout status; `None` before it has seen the service.
    pub status: Option<&'a ServiceStatus>,
    /// Tasks (those of other services are ignored).
    pub tasks: &'a [Task],
    /// The slots the service wants filled ([`crate::desired_slots`]).
    pub slots: &'a BTreeSet<Slot>,
    pub nodes: &'a BTreeMap<NodeId, Node>,
}

/// The verdict on one service at `now`.
pub fn verdict(v: &ServiceView<'_>, now: Time) -> Convergence {
    use Convergence::{Converged, Failed, Pending};
    let applied = v.applied;
    let Some(stored) = v.stored else {
        return Failed("the service was removed".into());
    };
    let upd = v.status.and_then(|s| s.update.as_ref());
    // An automatic rollback away from the applied version. The leader resets the stored spec
    // to the version that runs; `rejected` covers the moment before it does.
    if let (Some(st), Some(u)) = (v.status, upd)
        && u.rolled_back_from == Some(applied.version)
        && (stored.version != applied.version || st.rejected == Some(applied.version))
    {
        let why = u.failure.as_deref().unwrap_or(&u.message);
        return match u.state {
            UpdateState::RollingBack => Pending(format!("rolling back: {why}")),
            UpdateState::RollbackPaused => Failed(format!("rollback paused: {}", u.message)),
            _ => Failed(format!(
                "update to version {} rolled back to version {}: {why}",
                applied.version, st.spec.version
            )),
        };
    }
    if stored.version != applied.version {
        return Failed(format!(
            "changed meanwhile: the desired spec is now version {} (image {})",
            stored.version, stored.image
        ));
    }
    let Some(st) = v.status.filter(|s| s.spec.version == applied.version) else {
        return Pending("waiting for the orchestrator".into());
    };
    if let Some(u) = upd
        && u.state.is_paused()
    {
        return Failed(u.failure.clone().unwrap_or_else(|| u.message.clone()));
    }
    let sid = applied.id();
    let mut by_slot: BTreeMap<&Slot, Vec<&Task>> = BTreeMap::new();
    for t in v.tasks.iter().filter(|t| t.service == sid) {
        by_slot.entry(&t.slot).or_default().push(t);
    }
    for tasks in by_slot.values_mut() {
        tasks.sort_by_key(|t| t.id);
    }
    let hc = st.spec.healthcheck;
    let mut waiting: Vec<String> = Vec::new();
    let mut unassigned = false;
    for slot in v.slots {
        let tasks = by_slot.get(slot).map(Vec::as_slice).unwrap_or(&[]);
        match slot_verdict(applied, hc, slot, tasks, now) {
            SlotVerdict::Done => {}
            SlotVerdict::Failed(r) => return Failed(r),
            SlotVerdict::Waiting { why, unassigned: u } => {
                unassigned |= u;
                waiting.push(why);
            }
        }
    }
    if unassigned && let Some(r) = unsatisfiable(applied, v.nodes) {
        return Failed(r);
    }
    let extra = v
        .tasks
        .iter()
        .filter(|t| t.service == sid && t.is_live())
        .filter(|t| {
            t.desired != DesiredState::Running
                || t.spec_version != applied.version
                || !v.slots.contains(&t.slot)
        })
        .count();
    if extra > 0 {
        waiting.push(format!("{extra} old task(s) stopping"));
    }
    // A rollout is watched until its monitor window has passed (swarm's `service update`
    // does the same): a task failing within it still rolls the update back.
    if let Some(u) = upd
        && u.state.is_active()
    {
        waiting.push(format!("{}, monitoring", u.message));
    }
    match waiting.len() {
        0 => Converged,
        1 => Pending(waiting.remove(0)),
        n => Pending(format!("{} (and {} more)", waiting[0], n - 1)),
    }
}

enum SlotVerdict {
    Done,
    Failed(String),
    Waiting { why: String, unassigned: bool },
}

fn slot_verdict(
    applied: &ServiceSpec,
    hc: bool,
    slot: &Slot,
    tasks: &[&Task],
    now: Time,
) -> SlotVerdict {
    let head = tasks
        .iter()
        .rev()
        .find(|t| t.desired == DesiredState::Running)
        .copied();
    let current = head.filter(|h| h.spec_version == applied.version);
    if let Some(h) = current {
        if h.state == TaskState::Running
            && let Some(up) = h.ready_at(hc)
        {
            return if now.saturating_sub(up) >= SETTLE {
                SlotVerdict::Done
            } else {
                SlotVerdict::Waiting {
                    why: format!("{} running, settling", h.name()),
                    unassigned: false,
                }
            };
        }
        if !h.is_live() {
            let one_shot = applied.restart.condition != RestartCondition::Any;
            if h.state == TaskState::Complete && h.exit_code.unwrap_or(0) == 0 && one_shot {
                return SlotVerdict::Done;
            }
            // Dead: either the orchestrator is about to replace it, or the policy leaves it.
            if restarts_allowed(&applied.restart, h, now).is_none() {
                return SlotVerdict::Failed(format!(
                    "{} and the restart policy does not replace it",
                    failure_detail(h)
                ));
            }
        }
    }
    // Not up: look for the reason in the slot's finished attempts of the applied version.
    let mut dead = tasks
        .iter()
        .rev()
        .filter(|t| !t.is_live() && t.spec_version == applied.version)
        .filter(|t| t.state != TaskState::Shutdown || t.health == Health::Unhealthy);
    if let Some(last) = dead.clone().next()
        && last.state == TaskState::Rejected
    {
        return SlotVerdict::Failed(format!("rejected: {}", failure_detail(last)));
    }
    let short: Vec<&&Task> = dead
        .by_ref()
        .take_while(|t| died_young(t, hc))
        .take(CRASH_LOOP)
        .collect();
    if short.len() >= CRASH_LOOP {
        let mut why = format!(
            "crash loop: {} attempts in a row ended before being up for {}s; last: {}",
            short.len(),
            MIN_UPTIME / 1000,
            failure_detail(short[0])
        );
        if short[0].state == TaskState::Complete
            && applied.restart.condition == RestartCondition::Any
        {
            why.push_str(" (a one-shot service needs restart: \"no\" or \"on-failure\")");
        }
        return SlotVerdict::Failed(why);
    }
    let why = match head {
        None => format!("{}.{slot} has no task yet", applied.id()),
        Some(h) if h.spec_version != applied.version => {
            format!(
                "{} runs version {}, awaiting update",
                h.name(),
                h.spec_version
            )
        }
        Some(h) if h.state == TaskState::Running => match h.health {
            Health::Unhealthy => format!("{} unhealthy", h.name()),
            _ => format!("{} running, waiting to be healthy", h.name()),
        },
        Some(h) if h.message.is_empty() => format!("{} {}", h.name(), h.state),
        Some(h) => format!("{} {}: {}", h.name(), h.state, h.message),
    };
    let unassigned = head.is_some_and(|h| h.is_live() && h.state <= TaskState::Pending);
    SlotVerdict::Waiting { why, unassigned }
}

/// An attempt that ended before it had been up for [`MIN_UPTIME`] (never up counts).
fn died_young(t: &Task, hc: bool) -> bool {
    if !matches!(
        t.state,
        TaskState::Failed | TaskState::Rejected | TaskState::Complete | TaskState::Shutdown
    ) {
        return false;
    }
    let up = if hc { t.healthy_at } else { t.started_at };
    match (up, t.finished_at) {
        (Some(up), Some(end)) => end.saturating_sub(up) < MIN_UPTIME,
        _ => true,
    }
}

/// Why no node can ever take the service's tasks as the cluster stands: no node that is up
/// satisfies all its placement constraints.
fn unsatisfiable(spec: &ServiceSpec, nodes: &BTreeMap<NodeId, Node>) -> Option<String> {
    let c = &spec.placement.constraints;
    if c.is_empty() {
        return None;
    }
    let any = nodes
        .values()
        .filter(|n| n.status == NodeStatus::Ready)
        .any(|n| c.iter().all(|c| c.matches(n)));
    (!any).then(|| {
        let list: Vec<String> = c.iter().map(ToString::to_string).collect();
        format!(
            "unsatisfiable placement: no node satisfies {}",
            list.join(", ")
        )
    })
}

//! `plan(desired, observed, now)`: the orchestrator (slots per service, restarts, rolling
//! updates, rollbacks) and the scheduler (node per task) as one pure function.
//!
//! Planning works on a private copy of the observed state and applies each action to that copy
//! as it is emitted (with the same code as [`crate::apply`]), round after round, until a round
//! emits nothing. So the returned plan is a fixpoint: applying it and planning again with no new
//! events yields an empty plan, which is what makes the leader loop level-triggered and safe to
//! re-run.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::apply::apply_action;
use crate::model::{
    Dependency, DependencyCondition, Desired, DesiredState, FailureAction, Health, Millis, Mode,
    NodeId, Observed, RestartCondition, RestartPolicy, ServiceId, ServiceSpec, ServiceStatus, Slot,
    Task, TaskId, TaskState, Time, UpdateConfig, UpdateOrder, UpdateState, UpdateStatus,
};
use crate::scheduler::{self, Load, Rejection};

/// Terminal tasks kept per slot as history (swarm's task history limit).
pub const TASK_HISTORY: usize = 5;
/// A task that ran shorter than this before dying counts toward the crash-loop backoff.
pub const MIN_UPTIME: Millis = 10_000;
/// First crash-loop backoff step, from the first short run on (a container that exits at once
/// is not restarted at once: `on-failure:3` spreads its 3 restarts over 3.5 s); it doubles
/// per consecutive short run up to [`BACKOFF_MAX`]. A task that ran long is replaced without it.
pub const BACKOFF_START: Millis = 500;
pub const BACKOFF_MAX: Millis = 10_000;
/// Rounds are bounded so a bug can never hang the leader; convergence takes 2–4 in practice.
const MAX_ROUNDS: usize = 32;

/// One effect for the leader to write to the store. Closed: the executor matches exhaustively.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum Action {
    /// Store the reconciler's rollout status of a service.
    SetServiceStatus {
        service: ServiceId,
        status: Box<ServiceStatus>,
    },
    /// The service is gone from desired state and all its tasks are deleted.
    DeleteServiceStatus { service: ServiceId },
    /// Automatic rollback: converge to the previous spec with the failed spec's rollback config.
    Rollback { service: ServiceId, reason: String },
    /// A new task for a slot (state `New`).
    CreateTask { task: Task },
    /// Replace the dead task `old` by `task` in the same slot; `task.not_before` carries the
    /// restart delay/backoff. `old` becomes history (desired `Shutdown`).
    RestartTask { old: TaskId, task: Task },
    /// Record that a local named volume lives on `node` (emitted just before the first task
    /// that mounts it is assigned there, or for a running task that no record covers yet).
    /// Every later task that mounts it goes to that node; only the user forgets the record.
    PinVolume { volume: String, node: NodeId },
    /// Bind a pending task to a node; the node's agent starts it.
    AssignTask { task: TaskId, node: NodeId },
    /// The task cannot be assigned yet; the reason is stored on the task for `ps`.
    SetPendingReason { task: TaskId, reason: String },
    /// Stop the task, keep it as history.
    ShutdownTask { task: TaskId, reason: String },
    /// Stop the task and delete its container (scale down, service removed).
    RemoveTask { task: TaskId, reason: String },
    /// The task's node is down or gone: the task is lost and its slot is rescheduled.
    OrphanTask { task: TaskId, reason: String },
    /// Forget a terminal task record.
    DeleteTask { task: TaskId },
}

/// Why a task is still waiting for a node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PendingReason {
    RestartDelay {
        until: Time,
    },
    Dependency {
        service: String,
        condition: DependencyCondition,
        missing: bool,
    },
    NoSuitableNode {
        rejections: Vec<(NodeId, Rejection)>,
    },
    /// The task mounts a volume that lives on `node`, and `node` cannot take it: `why` (or,
    /// `None`, the node is no longer in the cluster).
    VolumeHome {
        volume: String,
        node: NodeId,
        why: Option<Rejection>,
    },
}

impl fmt::Display for PendingReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PendingReason::RestartDelay { until } => write!(f, "restart delayed until {until}"),
            PendingReason::Dependency {
                service,
                missing: true,
                ..
            } => write!(
                f,
                "waiting for dependency {service}: service does not exist"
            ),
            PendingReason::Dependency {
                service, condition, ..
            } => {
                let c = match condition {
                    DependencyCondition::ServiceStarted => "service_started",
                    DependencyCondition::ServiceHealthy => "service_healthy",
                    DependencyCondition::ServiceCompletedSuccessfully => {
                        "service_completed_successfully"
                    }
                };
                write!(f, "waiting for dependency {service} ({c})")
            }
            PendingReason::NoSuitableNode { rejections } => {
                let relevant: Vec<_> = rejections
                    .iter()
                    .filter(|(_, r)| *r != Rejection::OtherNode)
                    .collect();
                if relevant.is_empty() {
                    return f.write_str("no suitable node (no nodes)");
                }
                f.write_str("no suitable node (")?;
                for (i, (node, r)) in relevant.iter().enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    write!(f, "{node}: {r}")?;
                }
                f.write_str(")")
            }
            PendingReason::VolumeHome { volume, node, why } => {
                write!(f, "volume {volume} lives on node {node}, ")?;
                match why {
                    None => f.write_str("which is no longer in the cluster"),
                    Some(Rejection::Down) => f.write_str("which is down"),
                    Some(Rejection::Drained) => f.write_str("which is drained"),
                    Some(Rejection::Paused) => f.write_str("which is paused"),
                    Some(r) => write!(f, "where {r}"),
                }
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    pub task: TaskId,
    pub name: String,
    pub reason: PendingReason,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// The `now` the plan was made for; [`crate::apply`] stamps state changes with it.
    pub now: Time,
    pub actions: Vec<Action>,
    /// Tasks that stay pending, and why.
    pub pending: Vec<Pending>,
    /// Plan again after this long even without events (restart delays, update delays,
    /// monitor windows). The periodic resync still applies on top.
    pub requeue_after: Option<Millis>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }
}

struct Ctx {
    now: Time,
    actions: Vec<Action>,
    wake_at: Option<Time>,
    pending: Vec<Pending>,
    /// Tasks with ids from here on were created by the current service step (they are not in
    /// the round's index).
    first_new: u64,
}

impl Ctx {
    fn emit(&mut self, work: &mut Observed, action: Action) {
        // The planner only emits actions that are valid for its own working copy; if one is
        // not, that is a planner bug: keep it out of the plan rather than hand it to the leader.
        match apply_action(work, &action, self.now) {
            Ok(()) => self.actions.push(action),
            Err(e) => debug_assert!(false, "planner emitted an invalid action {action:?}: {e}"),
        }
    }

    fn wake(&mut self, at: Time) {
        if at > self.now {
            self.wake_at = Some(self.wake_at.map_or(at, |w| w.min(at)));
        }
    }
}

/// Plans the actions that move `observed` toward `desired` at time `now`.
pub fn plan(desired: &Desired, observed: &Observed, now: Time) -> Plan {
    let mut work = observed.clone();
    let mut ctx = Ctx {
        now,
        actions: Vec::new(),
        wake_at: None,
        pending: Vec::new(),
        first_new: 0,
    };
    for _ in 0..MAX_ROUNDS {
        let before = ctx.actions.len();
        ctx.wake_at = None;
        ctx.pending.clear();
        round(desired, &mut work, &mut ctx);
        if ctx.actions.len() == before {
            break;
        }
    }
    Plan {
        now,
        actions: ctx.actions,
        pending: ctx.pending,
        requeue_after: ctx.wake_at.map(|t| t - now),
    }
}

type Index = BTreeMap<ServiceId, BTreeMap<Slot, Vec<TaskId>>>;

fn index(work: &Observed) -> Index {
    let mut idx: Index = BTreeMap::new();
    for t in work.tasks.values() {
        // Look up before inserting: cloning the keys for every task dominated steady-state cost.
        let slots = match idx.get_mut(&t.service) {
            Some(slots) => slots,
            None => idx.entry(t.service.clone()).or_default(),
        };
        match slots.get_mut(&t.slot) {
            Some(ids) => ids.push(t.id),
            None => {
                slots.insert(t.slot.clone(), vec![t.id]);
            }
        }
    }
    idx
}

fn round(desired: &Desired, work: &mut Observed, ctx: &mut Ctx) {
    orphan_lost(work, ctx);
    let idx = index(work);
    remove_undesired(desired, work, &idx, ctx);
    for (sid, spec) in &desired.services {
        status_step(sid, spec, work, ctx);
        let empty = BTreeMap::new();
        let peer_slots = spec
            .network_peer
            .as_ref()
            .map(|p| idx.get(&ServiceId::new(&spec.stack, p)).unwrap_or(&empty));
        service_step(sid, work, idx.get(sid).unwrap_or(&empty), peer_slots, ctx);
    }
    let idx = index(work);
    schedule(work, &idx, ctx);
}

/// Tasks on a node that is down or unknown are lost; their slots get replacements.
fn orphan_lost(work: &mut Observed, ctx: &mut Ctx) {
    let lost: Vec<(TaskId, String)> = work
        .tasks
        .values()
        .filter(|t| t.is_live())
        .filter_map(|t| {
            let node = t.node.as_ref()?;
            match work.nodes.get(node) {
                None => Some((t.id, format!("node {node} was removed"))),
                Some(n) if n.status == crate::model::NodeStatus::Down => {
                    Some((t.id, format!("node {node} is down")))
                }
                Some(_) => None,
            }
        })
        .collect();
    for (task, reason) in lost {
        ctx.emit(work, Action::OrphanTask { task, reason });
    }
}

fn remove_undesired(desired: &Desired, work: &mut Observed, idx: &Index, ctx: &mut Ctx) {
    let gone: BTreeSet<ServiceId> = idx
        .keys()
        .chain(work.services.keys())
        .filter(|s| !desired.services.contains_key(*s))
        .cloned()
        .collect();
    for sid in gone {
        let ids: Vec<TaskId> = idx
            .get(&sid)
            .map(|slots| slots.values().flatten().copied().collect())
            .unwrap_or_default();
        for id in &ids {
            remove_or_delete(work, *id, "service removed", ctx);
        }
        if ids.is_empty() && work.services.contains_key(&sid) {
            ctx.emit(work, Action::DeleteServiceStatus { service: sid });
        }
    }
}

fn remove_or_delete(work: &mut Observed, id: TaskId, reason: &str, ctx: &mut Ctx) {
    let Some(t) = work.tasks.get(&id) else { return };
    if !t.is_live() {
        ctx.emit(work, Action::DeleteTask { task: id });
    } else if t.desired != DesiredState::Remove {
        let reason = reason.to_string();
        ctx.emit(work, Action::RemoveTask { task: id, reason });
    }
}

/// Tracks spec changes: a new spec version starts a rolling update; other field changes
/// (replicas, placement, policies) take effect at once.
fn status_step(sid: &ServiceId, d: &ServiceSpec, work: &mut Observed, ctx: &mut Ctx) {
    let now = ctx.now;
    let Some(st) = work.services.get(sid) else {
        let status = ServiceStatus {
            spec: d.clone(),
            previous: None,
            rejected: None,
            update: None,
        };
        ctx.emit(
            work,
            Action::SetServiceStatus {
                service: sid.clone(),
                status: Box::new(status),
            },
        );
        return;
    };
    let upd = st.update.as_ref();
    let new_status = if st.rejected == Some(d.version) {
        // An automatic rollback rejected this version and the desired spec still names it
        // (the leader resets it in the same write; the pure model has no such writer): the
        // version that runs stays in force, but scaling still takes effect.
        (st.spec.mode != d.mode).then(|| {
            let mut s = st.clone();
            s.spec.mode = d.mode.clone();
            s
        })
    } else if d.version != st.spec.version {
        let back = st.previous.as_ref().is_some_and(|p| p.version == d.version);
        let update = if back {
            // Going back to the previous spec is a rollback (swarm's `service rollback`):
            // it runs with the rollback_config of the spec it leaves.
            UpdateStatus {
                state: UpdateState::RollingBack,
                started_at: now,
                completed_at: None,
                message: format!("rolling back to version {}", d.version),
                rolled_back_from: None,
                rollback_config: Some(st.spec.rollback_config.clone()),
                failure: None,
            }
        } else {
            UpdateStatus {
                state: UpdateState::Updating,
                started_at: now,
                completed_at: None,
                message: format!("updating to version {}", d.version),
                rolled_back_from: None,
                rollback_config: None,
                failure: None,
            }
        };
        // Rollback target = the last spec known to have converged (for a rollback: the spec
        // it leaves, so a second rollback goes forward again, as in swarm).
        let previous = match upd.map(|u| u.state) {
            _ if back => Some(st.spec.clone()),
            Some(UpdateState::Updating | UpdateState::Paused) if st.previous.is_some() => {
                st.previous.clone()
            }
            _ => Some(st.spec.clone()),
        };
        Some(ServiceStatus {
            spec: d.clone(),
            previous,
            rejected: None,
            update: Some(update),
        })
    } else if *d != st.spec || st.rejected.is_some() {
        // Same version: settings that need no new containers apply at once, and a desired
        // spec reset to the version that runs lifts the rejection.
        let mut s = st.clone();
        s.spec = d.clone();
        s.rejected = None;
        Some(s)
    } else {
        None
    };
    if let Some(status) = new_status {
        ctx.emit(
            work,
            Action::SetServiceStatus {
                service: sid.clone(),
                status: Box::new(status),
            },
        );
    }
}

/// The slots `spec` wants filled now: its replicas, or for a global service one per node that
/// may take it (the CLI counts progress with this, so it can never disagree with the planner).
pub fn desired_slots(sid: &ServiceId, spec: &ServiceSpec, work: &Observed) -> BTreeSet<Slot> {
    match spec.mode {
        Mode::Replicated { replicas } => (1..=replicas).map(Slot::Replica).collect(),
        Mode::Global => work
            .nodes
            .values()
            .filter(|n| match scheduler::may_take(n, spec) {
                Ok(()) => true,
                // A paused node keeps the global task it already runs.
                Err(Rejection::Paused) => work.tasks.values().any(|t| {
                    t.service == *sid
                        && t.is_live()
                        && t.desired == DesiredState::Running
                        && t.slot == Slot::Node(n.id.clone())
                }),
                Err(_) => false,
            })
            .map(|n| Slot::Node(n.id.clone()))
            .collect(),
    }
}

fn tasks_of<'a>(work: &'a Observed, ids: &[TaskId]) -> Vec<&'a Task> {
    let mut v: Vec<&Task> = ids.iter().filter_map(|id| work.tasks.get(id)).collect();
    v.sort_by_key(|t| t.id);
    v
}

/// The slot's tasks: those in the round's index plus those created since.
fn slot_tasks<'a>(
    work: &'a Observed,
    sid: &ServiceId,
    slot: &Slot,
    ids: &[TaskId],
    first_new: u64,
) -> Vec<&'a Task> {
    let mut v = tasks_of(work, ids);
    v.extend(
        work.tasks
            .range(TaskId(first_new)..)
            .map(|(_, t)| t)
            .filter(|t| t.service == *sid && t.slot == *slot),
    );
    v
}

fn new_task(work: &Observed, sid: &ServiceId, spec: &ServiceSpec, slot: Slot, now: Time) -> Task {
    Task::new(
        TaskId(work.next_task_id),
        sid.clone(),
        slot,
        spec.version,
        spec.image.clone(),
        spec.reservations,
        now,
    )
}

/// The update config in force: the failed spec's rollback config while rolling back.
fn active_config(st: &ServiceStatus) -> UpdateConfig {
    match &st.update {
        Some(u) if u.state.is_rollback() => u
            .rollback_config
            .clone()
            .unwrap_or_else(|| st.spec.rollback_config.clone()),
        _ => st.spec.update_config.clone(),
    }
}

fn service_step(
    sid: &ServiceId,
    work: &mut Observed,
    slots: &BTreeMap<Slot, Vec<TaskId>>,
    peer_slots: Option<&BTreeMap<Slot, Vec<TaskId>>>,
    ctx: &mut Ctx,
) {
    let Some(st) = work.services.get(sid).cloned() else {
        return;
    };
    // Only this step creates tasks of this service in this round, so the ones created since
    // are found by a short range scan instead of a scan of every task created this round.
    ctx.first_new = work.next_task_id;
    let target = &st.spec;
    let cfg = active_config(&st);
    let update_state = st.update.as_ref().map(|u| u.state);
    let now = ctx.now;

    // Move running tasks off nodes that may no longer run them (drained, constraint changed).
    // Global tasks need no move: their slot disappears with the node's eligibility.
    let replicated = matches!(target.mode, Mode::Replicated { .. });
    let mut evict = Vec::new();
    for ids in slots.values().filter(|_| replicated) {
        for t in tasks_of(work, ids) {
            if !t.is_live() || t.desired != DesiredState::Running {
                continue;
            }
            let Some(node) = t.node.as_ref().and_then(|n| work.nodes.get(n)) else {
                continue;
            };
            if let Err(r) = scheduler::may_keep(node, target) {
                let reason = format!("{r} on {}", node.id);
                evict.push(Action::ShutdownTask { task: t.id, reason });
            }
        }
    }
    emit_all(work, ctx, evict);
    if let (Some(peer), Some(peer_slots)) = (&target.network_peer, peer_slots) {
        let lost = lost_network_peer(peer, slots, peer_slots, work);
        emit_all(work, ctx, lost);
    }

    let wanted = desired_slots(sid, target, work);
    for (slot, ids) in slots {
        if !wanted.contains(slot) {
            let reason = match slot {
                Slot::Replica(_) => "scaled down",
                Slot::Node(_) => "node no longer eligible for global service",
            };
            for id in ids {
                remove_or_delete(work, *id, reason, ctx);
            }
        }
    }

    // Pass 1: per-slot upkeep, and which slots run an outdated spec.
    let mut outdated: Vec<(Slot, TaskId, bool, bool, bool)> = Vec::new();
    let mut unsettled = 0usize;
    let no_ids = Vec::new();
    for slot in &wanted {
        let ids = slots.get(slot).unwrap_or(&no_ids);
        slot_upkeep(sid, slot, ids, target, work, ctx);
        let tasks = slot_tasks(work, sid, slot, ids, ctx.first_new);
        let settled = is_settled(&tasks, target, &cfg, update_state, ctx);
        if !settled {
            unsettled += 1;
        }
        if let Some(head) = head_of(&tasks)
            && head.is_live()
            && head.spec_version != target.version
        {
            let alone = tasks.iter().all(|t| t.id == head.id || !t.is_live());
            let running = head.state == TaskState::Running;
            outdated.push((slot.clone(), head.id, settled, alone, running));
        }
    }

    // Pass 2: advance the rolling update within its parallelism.
    if !update_state.is_some_and(UpdateState::is_paused) {
        let mut budget = if cfg.parallelism == 0 {
            usize::MAX
        } else {
            (cfg.parallelism as usize).saturating_sub(unsettled)
        };
        for (slot, head, settled, alone, running) in outdated {
            if cfg.order == UpdateOrder::StartFirst && !alone {
                // Starting a third task while two still live would exceed the start-first
                // surge (one extra task per slot): wait for the older ones to stop.
                continue;
            }
            if cfg.order == UpdateOrder::StartFirst && running && !settled {
                // Running but not up yet (not healthy, e.g. just restarted or brought back by
                // a rollback): the slot is unsettled for a reason of its own, not because the
                // update is in flight there. A new task next to it would be one more overlap
                // than `parallelism` allows (several such slots would all overlap at once), so
                // it waits until the task is up and then takes a place like any settled slot.
                continue;
            }
            if settled {
                // An already unsettled slot is counted in the budget; a settled one takes a place.
                if budget == 0 {
                    continue;
                }
                budget -= 1;
            }
            let reason = format!("updating to version {}", target.version);
            match cfg.order {
                UpdateOrder::StopFirst => {
                    ctx.emit(work, Action::ShutdownTask { task: head, reason });
                }
                UpdateOrder::StartFirst => {
                    let task = new_task(work, sid, target, slot, now);
                    ctx.emit(work, Action::CreateTask { task });
                }
            }
        }
    }

    update_progress(sid, &st, &cfg, &wanted, slots, work, ctx);
}

/// Running tasks of service `pid` (whatever their desired state: a container being stopped
/// still holds its network namespace).
fn running_peers<'a>(
    work: &'a Observed,
    idx: &'a Index,
    pid: &ServiceId,
) -> impl Iterator<Item = &'a Task> + 'a {
    idx.get(pid)
        .into_iter()
        .flat_map(|slots| slots.values().flatten())
        .filter_map(|id| work.tasks.get(id))
        .filter(|t| t.state == TaskState::Running)
}

/// Tasks of a `network_mode: service:PEER` service whose network namespace is gone. A task
/// joined the namespace of a peer task that was running on its node when its container was
/// created, so that peer started no later than the task did. When no running peer on the node
/// started that early, the one it joined is gone (crashed, replaced by an update, removed) and
/// the task, left with only a dead namespace, is shut down: its slot gets a new task, which
/// waits for a running peer and joins it. A task not started yet is shut down when its node
/// has no running peer at all (the agent could not create it).
fn lost_network_peer(
    peer: &str,
    slots: &BTreeMap<Slot, Vec<TaskId>>,
    peer_slots: &BTreeMap<Slot, Vec<TaskId>>,
    work: &Observed,
) -> Vec<Action> {
    // Tasks the peer gains this round are not running yet, so the round's index is enough.
    let peers: Vec<&Task> = peer_slots
        .values()
        .flatten()
        .filter_map(|id| work.tasks.get(id))
        .filter(|t| t.state == TaskState::Running)
        .collect();
    let mut out = Vec::new();
    let own = slots.values().flatten().filter_map(|id| work.tasks.get(id));
    for t in own {
        if !t.is_live() || t.desired != DesiredState::Running || t.state < TaskState::Assigned {
            continue;
        }
        let Some(node) = &t.node else { continue };
        let on_node = peers.iter().filter(|p| p.node.as_ref() == Some(node));
        let alive = match t.started_at {
            Some(s) => on_node.filter_map(|p| p.started_at).any(|ps| ps <= s),
            None => on_node.count() > 0,
        };
        if !alive {
            let reason =
                format!("network namespace of {peer} is gone (network_mode: service:{peer})");
            out.push(Action::ShutdownTask { task: t.id, reason });
        }
    }
    out
}

/// The newest task that should be running: the slot's current attempt.
fn head_of<'a>(tasks: &[&'a Task]) -> Option<&'a Task> {
    tasks
        .iter()
        .rev()
        .find(|t| t.desired == DesiredState::Running)
        .copied()
}

fn is_settled(
    tasks: &[&Task],
    target: &ServiceSpec,
    cfg: &UpdateConfig,
    update_state: Option<UpdateState>,
    ctx: &mut Ctx,
) -> bool {
    let Some(head) = head_of(tasks) else {
        return false;
    };
    if tasks.iter().any(|t| t.id != head.id && t.is_live()) {
        return false;
    }
    if !head.is_live() {
        return true;
    }
    if head.state != TaskState::Running {
        return false;
    }
    // A task with a healthcheck is up once healthy: a rollout never counts a started but
    // not yet healthy (or unhealthy) task as done.
    let Some(ready) = head.ready_at(target.healthcheck) else {
        return false;
    };
    if head.spec_version == target.version && update_state.is_some_and(UpdateState::is_active) {
        let done = ready + cfg.delay;
        if done > ctx.now {
            ctx.wake(done);
            return false;
        }
    }
    true
}

fn slot_upkeep(
    sid: &ServiceId,
    slot: &Slot,
    ids: &[TaskId],
    target: &ServiceSpec,
    work: &mut Observed,
    ctx: &mut Ctx,
) {
    let now = ctx.now;
    // Decide on a shared borrow, then emit: at most one task is created per slot, so the id
    // `new_task` takes from the counter stays right.
    let mut out = Vec::new();
    let tasks = slot_tasks(work, sid, slot, ids, ctx.first_new);

    // History: keep the newest TASK_HISTORY finished tasks.
    let history: Vec<&Task> = tasks
        .iter()
        .copied()
        .filter(|t| !t.is_live() && t.desired != DesiredState::Running)
        .collect();
    let excess = history.len().saturating_sub(TASK_HISTORY);
    for (i, t) in history.iter().enumerate() {
        if i < excess || t.desired == DesiredState::Remove {
            out.push(Action::DeleteTask { task: t.id });
        }
    }

    let running: Vec<&Task> = tasks
        .iter()
        .copied()
        .filter(|t| t.desired == DesiredState::Running)
        .collect();
    let Some((head, preds)) = running.split_last() else {
        // Nothing should run here. Wait for stopping tasks first, so an update (stop-first),
        // a drain or a constraint change never runs two tasks for one slot.
        if !tasks.iter().any(|t| t.is_live()) {
            let task = new_task(work, sid, target, slot.clone(), now);
            out.push(Action::CreateTask { task });
        }
        emit_all(work, ctx, out);
        return;
    };

    // Predecessors: once the head is up (running, and healthy if it has a healthcheck), they
    // all go; before that, the newest running one stays (start-first overlap) and the rest go.
    let up = head.state == TaskState::Running && head.ready_at(target.healthcheck).is_some();
    let keep = if head.is_live() && up {
        None
    } else {
        preds
            .iter()
            .rev()
            .find(|t| t.state == TaskState::Running)
            .map(|t| t.id)
    };
    for p in preds {
        if Some(p.id) != keep {
            let reason = format!("superseded by {}", head.id);
            out.push(Action::ShutdownTask { task: p.id, reason });
        }
    }

    if head.is_live() {
        emit_all(work, ctx, out);
        return;
    }
    let replacement = if head.state == TaskState::Orphaned {
        // Lost with its node: not the task's fault, so no delay and no attempt counted.
        let mut t = new_task(work, sid, target, slot.clone(), now);
        t.restart_count = head.restart_count;
        t.restarts = head.restarts.clone();
        t.fast_failures = head.fast_failures;
        Some(t)
    } else if head.spec_version != target.version {
        // Dead and outdated: replace with the target spec straight away (update or rollback).
        Some(new_task(work, sid, target, slot.clone(), now))
    } else {
        restart_per_policy(work, sid, slot, head, target, now)
    };
    if let Some(task) = replacement {
        if let Some(nb) = task.not_before {
            ctx.wake(nb);
        }
        out.push(Action::RestartTask { old: head.id, task });
    }
    emit_all(work, ctx, out);
}

fn emit_all(work: &mut Observed, ctx: &mut Ctx, actions: Vec<Action>) {
    for a in actions {
        ctx.emit(work, a);
    }
}

/// Whether `policy` replaces the dead task `head` at `now`; if so, the restart times that
/// count toward `max_attempts` afterwards (this restart included).
pub fn restarts_allowed(policy: &RestartPolicy, head: &Task, now: Time) -> Option<Vec<Time>> {
    let restart = match policy.condition {
        RestartCondition::None => false,
        RestartCondition::OnFailure => {
            matches!(head.state, TaskState::Failed | TaskState::Rejected)
        }
        RestartCondition::Any => true,
    };
    if !restart {
        return None;
    }
    let since = policy.window.map(|w| now.saturating_sub(w));
    let mut recent: Vec<Time> = head
        .restarts
        .iter()
        .copied()
        .filter(|t| since.is_none_or(|s| *t >= s))
        .collect();
    if let Some(max) = policy.max_attempts {
        if recent.len() >= max as usize {
            return None;
        }
        recent.push(now);
    } else {
        recent.clear();
    }
    Some(recent)
}

fn restart_per_policy(
    work: &Observed,
    sid: &ServiceId,
    slot: &Slot,
    head: &Task,
    target: &ServiceSpec,
    now: Time,
) -> Option<Task> {
    let policy = &target.restart;
    let recent = restarts_allowed(policy, head, now)?;
    let died = head.finished_at.unwrap_or(now);
    let fast = head
        .started_at
        .is_none_or(|s| died.saturating_sub(s) < MIN_UPTIME);
    let backoff = if fast {
        BACKOFF_START
            .saturating_mul(1 << head.fast_failures.min(20))
            .min(BACKOFF_MAX)
    } else {
        0
    };
    let not_before = died + policy.delay + backoff;
    let mut t = new_task(work, sid, target, slot.clone(), now);
    t.restart_count = head.restart_count + 1;
    t.restarts = recent;
    t.fast_failures = if fast { head.fast_failures + 1 } else { 0 };
    t.not_before = (not_before > now).then_some(not_before);
    Some(t)
}

/// Failure detection (monitor window, failure ratio → failure action) and completion of an
/// update or rollback.
fn update_progress(
    sid: &ServiceId,
    st: &ServiceStatus,
    cfg: &UpdateConfig,
    wanted: &BTreeSet<Slot>,
    slots: &BTreeMap<Slot, Vec<TaskId>>,
    work: &mut Observed,
    ctx: &mut Ctx,
) {
    let Some(upd) = &st.update else { return };
    if !upd.state.is_active() {
        return;
    }
    let target = &st.spec;
    let now = ctx.now;
    // Swarm's rule: a task of the new version that fails or turns unhealthy before it has
    // been up for `monitor` is an update failure. "Up" is healthy when there is a healthcheck,
    // so a task that never became healthy always counts.
    let hc = target.healthcheck;
    let mut failed: Vec<&Task> = slots
        .values()
        .flatten()
        .filter_map(|id| work.tasks.get(id))
        .chain(work.tasks.range(TaskId(ctx.first_new)..).map(|(_, t)| t))
        .filter(|t| t.service == *sid && t.spec_version == target.version)
        .filter(|t| {
            matches!(t.state, TaskState::Failed | TaskState::Rejected)
                || (t.state == TaskState::Running && hc && t.health == Health::Unhealthy)
        })
        .filter(|t| {
            let end = t.finished_at.unwrap_or(now);
            let up = if hc { t.healthy_at } else { t.started_at };
            end >= upd.started_at && up.is_none_or(|s| end.saturating_sub(s) <= cfg.monitor)
        })
        .collect();
    failed.sort_by_key(|t| t.id);
    failed.dedup_by_key(|t| t.id);
    let failures = failed.len();
    let n = wanted.len().max(1);
    if failures > 0 && failures as f64 / n as f64 > cfg.max_failure_ratio {
        let last = failed.last().map(|t| failure_detail(t)).unwrap_or_default();
        let why = format!(
            "{failures} task(s) of version {} failed (last: {last})",
            target.version
        );
        let mut status = st.clone();
        let u = status.update.as_mut().expect("checked above");
        match (upd.state, cfg.failure_action) {
            (_, FailureAction::Continue) => {}
            (UpdateState::Updating, FailureAction::Rollback) if st.previous.is_some() => {
                let reason = format!("update failed, rolling back: {why}");
                ctx.emit(
                    work,
                    Action::Rollback {
                        service: sid.clone(),
                        reason,
                    },
                );
                return;
            }
            (UpdateState::Updating, _) => {
                u.state = UpdateState::Paused;
                u.message = format!("update paused: {why}");
                u.failure = Some(u.message.clone());
                ctx.emit(
                    work,
                    Action::SetServiceStatus {
                        service: sid.clone(),
                        status: Box::new(status),
                    },
                );
                return;
            }
            (_, _) => {
                u.state = UpdateState::RollbackPaused;
                u.message = format!("rollback paused: {why}");
                u.failure = Some(u.message.clone());
                ctx.emit(
                    work,
                    Action::SetServiceStatus {
                        service: sid.clone(),
                        status: Box::new(status),
                    },
                );
                return;
            }
        }
    }

    // Complete once every slot runs the target spec and has outlived the monitor window.
    let mut done = true;
    for slot in wanted {
        let ids = slots.get(slot).map(Vec::as_slice).unwrap_or(&[]);
        let tasks = slot_tasks(work, sid, slot, ids, ctx.first_new);
        let Some(head) = head_of(&tasks) else {
            done = false;
            continue;
        };
        if head.spec_version != target.version
            || tasks.iter().any(|t| t.id != head.id && t.is_live())
        {
            done = false;
            continue;
        }
        if head.is_live() {
            match head.ready_at(hc) {
                Some(s) if head.state == TaskState::Running => {
                    if s + cfg.monitor > now {
                        ctx.wake(s + cfg.monitor);
                        done = false;
                    }
                }
                _ => done = false,
            }
        }
    }
    if done {
        let mut status = st.clone();
        let u = status.update.as_mut().expect("checked above");
        u.state = if u.state == UpdateState::RollingBack {
            UpdateState::RolledBack
        } else {
            UpdateState::Completed
        };
        u.completed_at = Some(now);
        u.message = match u.state {
            UpdateState::RolledBack => format!("rolled back to version {}", target.version),
            _ => format!("update to version {} completed", target.version),
        };
        ctx.emit(
            work,
            Action::SetServiceStatus {
                service: sid.clone(),
                status: Box::new(status),
            },
        );
    }
}

/// What went wrong with a failed task, in one line: `web_api.2: <error or exit code>`.
pub fn failure_detail(t: &Task) -> String {
    let what = match (&t.error, t.exit_code) {
        (Some(e), _) if !e.trim().is_empty() => e.split_whitespace().collect::<Vec<_>>().join(" "),
        (_, Some(code)) => format!("exit code {code}"),
        _ if t.health == Health::Unhealthy => "unhealthy".to_string(),
        _ => t.state.to_string(),
    };
    format!("{}: {what}", t.name())
}

fn dependency_unmet(
    work: &Observed,
    idx: &Index,
    stack: &str,
    dep: &Dependency,
) -> Option<PendingReason> {
    let id = ServiceId::new(stack, &dep.service);
    let unmet = |missing| {
        Some(PendingReason::Dependency {
            service: dep.service.clone(),
            condition: dep.condition,
            missing,
        })
    };
    let Some(st) = work.services.get(&id) else {
        return unmet(true);
    };
    let need = match st.spec.mode {
        Mode::Replicated { replicas } => replicas as usize,
        Mode::Global => 1,
    };
    let tasks = idx
        .get(&id)
        .into_iter()
        .flat_map(|slots| slots.values().flatten())
        .filter_map(|tid| work.tasks.get(tid));
    let count = match dep.condition {
        DependencyCondition::ServiceStarted => tasks
            .filter(|t| t.state == TaskState::Running && t.desired == DesiredState::Running)
            .count(),
        DependencyCondition::ServiceHealthy => tasks
            .filter(|t| t.state == TaskState::Running && t.desired == DesiredState::Running)
            .filter(|t| !st.spec.healthcheck || t.health == Health::Healthy)
            .count(),
        DependencyCondition::ServiceCompletedSuccessfully => tasks
            .filter(|t| t.state == TaskState::Complete && t.exit_code.unwrap_or(0) == 0)
            .filter(|t| t.spec_version == st.spec.version)
            .count(),
    };
    if count >= need { None } else { unmet(false) }
}

/// Assigns every pending task it can, in (service, slot, id) order, and records why the rest
/// wait.
fn schedule(work: &mut Observed, idx: &Index, ctx: &mut Ctx) {
    adopt_volumes(work, ctx);
    let mut load = Load::of(work);
    let now = ctx.now;
    for (sid, slots) in idx {
        let Some(spec) = work.services.get(sid).map(|s| s.spec.clone()) else {
            continue;
        };
        let peers = spec.network_peer.as_ref().map(|p| {
            let pid = ServiceId::new(&spec.stack, p);
            running_peers(work, idx, &pid)
                .filter(|t| t.desired == DesiredState::Running)
                .filter_map(|t| t.node.clone())
                .collect::<BTreeSet<NodeId>>()
        });
        for ids in slots.values() {
            for id in ids {
                let Some(task) = work.tasks.get(id) else {
                    continue;
                };
                if task.desired != DesiredState::Running || task.state > TaskState::Pending {
                    continue;
                }
                let reason = if let Some(nb) = task.not_before.filter(|nb| *nb > now) {
                    ctx.wake(nb);
                    Some(PendingReason::RestartDelay { until: nb })
                } else if let Some(r) = spec
                    .depends_on
                    .iter()
                    .find_map(|d| dependency_unmet(work, idx, &spec.stack, d))
                {
                    Some(r)
                } else {
                    let picked = scheduler::select(
                        &work.nodes,
                        &spec,
                        task,
                        &load,
                        peers.as_ref(),
                        &work.volumes,
                    );
                    match picked {
                        Ok(node) => {
                            let mut assigned = task.clone();
                            assigned.node = Some(node.clone());
                            load.add(&node, &assigned);
                            pin_volumes(work, &spec, &node, ctx);
                            ctx.emit(work, Action::AssignTask { task: *id, node });
                            None
                        }
                        Err(rejections) => Some(no_node(&spec, &work.volumes, rejections)),
                    }
                };
                if let Some(reason) = reason {
                    let task = &work.tasks[id];
                    let msg = reason.to_string();
                    ctx.pending.push(Pending {
                        task: *id,
                        name: task.name(),
                        reason,
                    });
                    if task.state == TaskState::New || task.message != msg {
                        ctx.emit(
                            work,
                            Action::SetPendingReason {
                                task: *id,
                                reason: msg,
                            },
                        );
                    }
                }
            }
        }
    }
}

/// Why no node took a task: where its volume lives and why that node cannot take it, when a
/// volume binds it; otherwise every node's rejection.
fn no_node(
    spec: &ServiceSpec,
    homes: &BTreeMap<String, NodeId>,
    rejections: Vec<(NodeId, Rejection)>,
) -> PendingReason {
    let home = spec.local_volumes().find_map(|v| Some((v, homes.get(v)?)));
    match home {
        Some((volume, node)) => PendingReason::VolumeHome {
            volume: volume.clone(),
            node: node.clone(),
            why: rejections
                .into_iter()
                .find(|(n, _)| n == node)
                .map(|(_, r)| r),
        },
        None => PendingReason::NoSuitableNode { rejections },
    }
}

/// Records `node` as the home of the service's local volumes that have none yet.
fn pin_volumes(work: &mut Observed, spec: &ServiceSpec, node: &NodeId, ctx: &mut Ctx) {
    let new: BTreeSet<String> = spec
        .local_volumes()
        .filter(|v| !work.volumes.contains_key(*v))
        .cloned()
        .collect();
    for volume in new {
        let node = node.clone();
        ctx.emit(work, Action::PinVolume { volume, node });
    }
}

/// A task that already has a node while its volume has no record (a store written before
/// volumes were recorded, or a record the user removed while the task ran): the volume is on
/// that node now, so it is recorded there. In task id order, so the oldest task decides.
fn adopt_volumes(work: &mut Observed, ctx: &mut Ctx) {
    let mut found: Vec<(ServiceSpec, NodeId)> = Vec::new();
    for t in work.tasks.values() {
        if !t.is_live() || t.desired != DesiredState::Running {
            continue;
        }
        let (Some(node), Some(st)) = (&t.node, work.services.get(&t.service)) else {
            continue;
        };
        if st
            .spec
            .local_volumes()
            .any(|v| !work.volumes.contains_key(v))
        {
            found.push((st.spec.clone(), node.clone()));
        }
    }
    for (spec, node) in found {
        pin_volumes(work, &spec, &node, ctx);
    }
}

//! The leader's reconcile loop: read desired and observed state from the store, run the pure
//! planner, write the outcome back in one transaction. Level-triggered (every store change wakes
//! it, and it re-plans from scratch) with a periodic resync, so a missed event or a failed write
//! only delays convergence.

use std::collections::BTreeMap;
use std::time::Duration;

use dcpp_raft::{Kind, Node, NodeInfo, Op, Precondition, Txn};
use dcpp_reconciler::{
    Desired, NodeId, NodeRole, NodeStatus, Observed, ServiceId, ServiceStatus, TaskId,
};
use futures::StreamExt;

use crate::Error;
use crate::docs::{
    PREVIOUS_PREFIX, STATUS_PREFIX, ServiceDoc, TASK_COUNTER_ID, now_ms, previous_key,
    rejected_key, rolled_back_doc, status_key, task_key,
};

/// A node whose agent has not reported for this long is down and its tasks are rescheduled.
pub const NODE_TIMEOUT_MS: u64 = 20_000;
/// Resync period when nothing happens.
pub const RESYNC: Duration = Duration::from_secs(2);

/// Store state in the reconciler's terms plus the revisions the write-back is conditioned on.
pub struct Snapshot {
    pub desired: Desired,
    pub observed: Observed,
    task_revs: BTreeMap<TaskId, u64>,
    /// Service documents and their revisions, and the documents updates replaced: an
    /// automatic rollback rewrites the desired document from them.
    docs: BTreeMap<ServiceId, (ServiceDoc, u64)>,
    previous: BTreeMap<ServiceId, ServiceDoc>,
}

/// Reads desired and observed state from this node's copy of the store.
pub async fn snapshot(node: &Node) -> Result<Snapshot, Error> {
    let mut desired = Desired::default();
    let mut docs = BTreeMap::new();
    for o in node.list(Kind::Service, false).await?.objects {
        let d: ServiceDoc = o.decode()?;
        desired.insert(d.spec.clone());
        docs.insert(d.id(), (d, o.mod_revision));
    }
    let mut previous = BTreeMap::new();
    let mut observed = Observed::default();
    let now = now_ms();
    for o in node.list(Kind::Node, false).await?.objects {
        let n: NodeInfo = o.decode()?;
        observed.add_node(convert_node(&n, now));
    }
    let mut task_revs = BTreeMap::new();
    for o in node.list(Kind::Task, false).await?.objects {
        let t: dcpp_reconciler::Task = o.decode()?;
        task_revs.insert(t.id, o.mod_revision);
        observed.tasks.insert(t.id, t);
    }
    for o in node.list(Kind::Config, false).await?.objects {
        if o.id == TASK_COUNTER_ID {
            observed.next_task_id = o.decode()?;
        } else if let Some(sid) = o.id.strip_prefix(STATUS_PREFIX) {
            let st: ServiceStatus = o.decode()?;
            observed.services.insert(ServiceId(sid.to_string()), st);
        } else if let Some(sid) = o.id.strip_prefix(PREVIOUS_PREFIX) {
            // A document that does not decode only costs the rollback its other settings.
            if let Ok(d) = o.decode::<ServiceDoc>() {
                previous.insert(ServiceId(sid.to_string()), d);
            }
        }
    }
    // Never hand out an id again, even if the counter write was lost.
    if let Some(max) = observed.tasks.keys().max() {
        observed.next_task_id = observed.next_task_id.max(max.0 + 1);
    }
    Ok(Snapshot {
        desired,
        observed,
        task_revs,
        docs,
        previous,
    })
}

/// The reconciler's view of a node record (down once its heartbeat is older than
/// [`NODE_TIMEOUT_MS`]).
pub fn convert_node(n: &NodeInfo, now: u64) -> dcpp_reconciler::Node {
    let mut r = dcpp_reconciler::Node::new(&n.id.to_string());
    r.hostname = n.hostname.clone();
    r.role = match n.role {
        dcpp_raft::Role::Manager => NodeRole::Manager,
        dcpp_raft::Role::Worker => NodeRole::Worker,
    };
    r.availability = match n.availability {
        dcpp_raft::Availability::Active => dcpp_reconciler::Availability::Active,
        dcpp_raft::Availability::Pause => dcpp_reconciler::Availability::Pause,
        dcpp_raft::Availability::Drain => dcpp_reconciler::Availability::Drain,
    };
    r.status = if now.saturating_sub(n.last_heartbeat_ms) < NODE_TIMEOUT_MS {
        NodeStatus::Ready
    } else {
        NodeStatus::Down
    };
    r.labels = n.labels.clone();
    r.resources.memory = n.resources.memory_bytes;
    r.resources.cpu_millis = n.resources.nano_cpus / 1_000_000;
    r
}

/// The node id the reconciler uses for a raft node.
pub fn node_id(id: u64) -> NodeId {
    NodeId(id.to_string())
}

/// One round: plan and write. Returns when to plan again at the latest (restart delays, update
/// monitors) and whether anything was written.
pub async fn reconcile_once(node: &Node) -> Result<(Option<Duration>, bool), Error> {
    let snap = snapshot(node).await?;
    let now = now_ms();
    let plan = dcpp_reconciler::plan(&snap.desired, &snap.observed, now);
    let requeue = plan.requeue_after.map(Duration::from_millis);
    if plan.actions.is_empty() {
        return Ok((requeue, false));
    }
    let mut after = snap.observed.clone();
    dcpp_reconciler::apply(&mut after, &plan)?;
    let mut txn = diff_txn(&snap, &after)?;
    for a in &plan.actions {
        if let dcpp_reconciler::Action::Rollback { service, reason } = a {
            tracing::info!(%service, "{reason}");
            txn = rollback_txn(txn, &snap, &after, service)?;
        }
    }
    if txn.ops.is_empty() {
        return Ok((requeue, false));
    }
    tracing::debug!(
        actions = plan.actions.len(),
        ops = txn.ops.len(),
        "reconcile"
    );
    match node.txn(txn).await {
        Ok(_) => Ok((requeue, true)),
        // An agent reported meanwhile: plan again from the new state.
        Err(dcpp_raft::Error::PreconditionFailed(_)) => Ok((Some(Duration::ZERO), false)),
        Err(e) => Err(e.into()),
    }
}

/// The store writes that turn `snap.observed` into `after`; every task write is conditioned on
/// the revision it was read at, so an agent's concurrent report is never overwritten.
fn diff_txn(snap: &Snapshot, after: &Observed) -> Result<Txn, Error> {
    let before = &snap.observed;
    let mut txn = Txn::new();
    for (id, t) in &after.tasks {
        if before.tasks.get(id) == Some(t) {
            continue;
        }
        let key = task_key(*id);
        txn = txn.when(match snap.task_revs.get(id) {
            Some(rev) => Precondition::ModRevision {
                kind: Kind::Task,
                id: key.clone(),
                revision: *rev,
            },
            None => Precondition::Absent {
                kind: Kind::Task,
                id: key.clone(),
            },
        });
        txn = txn.op(Op::put(Kind::Task, key, t)?);
    }
    for id in before.tasks.keys() {
        if !after.tasks.contains_key(id) {
            let key = task_key(*id);
            if let Some(rev) = snap.task_revs.get(id) {
                txn = txn.when(Precondition::ModRevision {
                    kind: Kind::Task,
                    id: key.clone(),
                    revision: *rev,
                });
            }
            txn = txn.op(Op::delete(Kind::Task, key));
        }
    }
    for (sid, st) in &after.services {
        if before.services.get(sid) != Some(st) {
            txn = txn.op(Op::put(Kind::Config, status_key(sid), st)?);
        }
    }
    for sid in before.services.keys() {
        if !after.services.contains_key(sid) {
            txn = txn.op(Op::delete(Kind::Config, status_key(sid)));
        }
    }
    if after.next_task_id != before.next_task_id {
        txn = txn.op(Op::put(Kind::Config, TASK_COUNTER_ID, &after.next_task_id)?);
    }
    Ok(txn)
}

/// An automatic rollback also resets the desired document to the version that runs (in the
/// same write, so no plan ever sees the rejected version as new): `service ls`, `diff` and
/// `service rollback` then tell the truth, and applying the rejected file again retries the
/// update. The rejected document is kept as history; there is no rollback target any more.
fn rollback_txn(
    mut txn: Txn,
    snap: &Snapshot,
    after: &Observed,
    sid: &ServiceId,
) -> Result<Txn, Error> {
    let (Some((doc, rev)), Some(st)) = (snap.docs.get(sid), after.services.get(sid)) else {
        return Ok(txn);
    };
    let back = rolled_back_doc(doc, snap.previous.get(sid), &st.spec);
    txn = txn
        .when(Precondition::ModRevision {
            kind: Kind::Service,
            id: sid.0.clone(),
            revision: *rev,
        })
        .op(Op::put(Kind::Service, sid.0.clone(), &back)?)
        .op(Op::put(Kind::Config, rejected_key(sid), doc)?)
        .op(Op::delete(Kind::Config, previous_key(sid)));
    Ok(txn)
}

/// Runs the loop until `stop` turns true. Only plans while this node is the raft leader, so
/// exactly one orchestrator writes tasks at a time (a deposed leader's writes fail their
/// preconditions or are forwarded and re-checked).
pub async fn run(node: Node, mut stop: tokio::sync::watch::Receiver<bool>) {
    let wake = std::sync::Arc::new(tokio::sync::Notify::new());
    let watcher = tokio::spawn(watch_changes(node.clone(), wake.clone()));
    loop {
        let leader = node.status().map(|s| s.state == "Leader").unwrap_or(false);
        let mut wait = RESYNC;
        if leader {
            match reconcile_once(&node).await {
                Ok((requeue, wrote)) => {
                    if wrote {
                        wait = Duration::ZERO;
                    } else if let Some(r) = requeue {
                        wait = wait.min(r.max(Duration::from_millis(10)));
                    }
                }
                Err(e) => {
                    tracing::warn!("reconcile: {e}");
                    wait = Duration::from_millis(200);
                }
            }
        }
        if wait.is_zero() {
            continue;
        }
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    watcher.abort();
}

/// Wakes `wake` on every store change (re-watching from the current revision after compaction).
pub(crate) async fn watch_changes(node: Node, wake: std::sync::Arc<tokio::sync::Notify>) {
    loop {
        let since = match node.list(Kind::Stack, false).await {
            Ok(l) => l.revision,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let mut s = Box::pin(node.watch(since, None));
        while let Some(ev) = s.next().await {
            if ev.is_err() {
                break;
            }
            wake.notify_one();
        }
        wake.notify_one();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

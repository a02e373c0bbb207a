//! The leader's reconcile loop: read desired and observed state from the store, run the pure
//! planner, write the outcome back in one transaction. Level-triggered (every store change wakes
//! it, and it re-plans from scratch) with a periodic resync, so a missed event or a failed write
//! only delays convergence.

use std::collections::BTreeMap;
use std::time::Duration;

use dcpp_raft::{Kind, Node, Op, Precondition, Store, Txn};
use dcpp_reconciler::{Desired, Observed, ServiceId, TaskId};
use futures::StreamExt;

use crate::Error;
use crate::metrics::LeaderMetrics;
use crate::nodes;
use crate::schema::{
    ServiceDoc, ServiceHistory, TASK_COUNTER_ID, TaskRevs, now_ms, rolled_back_doc, task_writes,
};

/// Resync period when nothing happens.
pub const RESYNC: Duration = Duration::from_secs(2);

/// Store state in the reconciler's terms plus the revisions the write-back is conditioned on.
pub struct Snapshot {
    pub desired: Desired,
    pub observed: Observed,
    task_revs: BTreeMap<TaskId, TaskRevs>,
    /// Service documents and their revisions, and the documents updates replaced: an
    /// automatic rollback rewrites the desired document from them.
    docs: BTreeMap<ServiceId, (ServiceDoc, u64)>,
    previous: BTreeMap<ServiceId, ServiceDoc>,
    /// When the first node that is up goes down if it stays silent.
    next_down_ms: Option<u64>,
}

/// Reads desired and observed state from the store.
pub async fn snapshot<S: Store>(store: &S) -> Result<Snapshot, Error> {
    snapshot_since(store, 0, None).await
}

/// [`snapshot`], counting no node's silence from before `floor_ms`: a leader that just took
/// over (or a daemon that just restarted) gives every node a full timeout to report to it,
/// instead of declaring down at once the nodes whose last heartbeat went to the old one.
/// `alive`: the node planning (the leader itself), which is up whatever its record says.
pub async fn snapshot_since<S: Store>(
    store: &S,
    floor_ms: u64,
    alive: Option<u64>,
) -> Result<Snapshot, Error> {
    let mut desired = Desired::default();
    let docs = crate::schema::services(store).await?;
    for (d, _) in docs.values() {
        desired.insert(d.spec.clone());
    }
    let mut observed = Observed::default();
    let now = now_ms();
    let mut records = nodes::list(store).await?;
    for n in &mut records {
        n.last_heartbeat_ms = if Some(n.id) == alive {
            now
        } else {
            n.last_heartbeat_ms.max(floor_ms)
        };
    }
    let next_down_ms = nodes::next_down_in_ms(&records, now);
    for n in &records {
        observed.add_node(nodes::to_reconciler(n, now));
    }
    let mut task_revs = BTreeMap::new();
    for (id, (t, rev)) in crate::schema::tasks(store).await? {
        task_revs.insert(id, rev);
        observed.tasks.insert(id, t);
    }
    observed.services = crate::schema::statuses(store).await?;
    observed.volumes = crate::schema::volume_homes(store).await?;
    if let Ok(o) = store.get(Kind::Counter, TASK_COUNTER_ID).await {
        observed.next_task_id = o.decode()?;
    }
    let previous = crate::schema::histories(store)
        .await?
        .into_iter()
        .filter_map(|(sid, h)| Some((sid, h.previous?)))
        .collect();
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
        next_down_ms,
    })
}

/// One round: plan and write. Returns when to plan again at the latest (restart delays, update
/// monitors) and whether anything was written.
pub async fn reconcile_once<S: Store>(store: &S) -> Result<(Option<Duration>, bool), Error> {
    reconcile_since(store, 0, None).await
}

/// [`reconcile_once`] on a [`snapshot_since`] `floor_ms`, by node `alive`.
pub async fn reconcile_since<S: Store>(
    store: &S,
    floor_ms: u64,
    alive: Option<u64>,
) -> Result<(Option<Duration>, bool), Error> {
    reconcile_measured(store, floor_ms, alive, &LeaderMetrics::default()).await
}

/// [`reconcile_since`], recording the plan's time and the written actions in `metrics`.
#[tracing::instrument(name = "reconcile", skip_all, fields(actions))]
pub async fn reconcile_measured<S: Store>(
    store: &S,
    floor_ms: u64,
    alive: Option<u64>,
    metrics: &LeaderMetrics,
) -> Result<(Option<Duration>, bool), Error> {
    let snap = snapshot_since(store, floor_ms, alive).await?;
    let now = now_ms();
    let started = std::time::Instant::now();
    let plan = dcpp_reconciler::plan(&snap.desired, &snap.observed, now);
    metrics.observe_plan(started.elapsed());
    tracing::Span::current().record("actions", plan.actions.len());
    // A node going silent changes nothing in the store: look again when it would be down.
    let requeue = match (plan.requeue_after, snap.next_down_ms) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
    .map(Duration::from_millis);
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
    match store.txn(txn).await {
        Ok(_) => {
            metrics.written(&plan.actions);
            Ok((requeue, true))
        }
        // An agent reported meanwhile: plan again from the new state.
        Err(dcpp_raft::Error::PreconditionFailed(_)) => Ok((Some(Duration::ZERO), false)),
        Err(e) => Err(e.into()),
    }
}

/// The store writes that turn `snap.observed` into `after`; every task write is conditioned on
/// the revisions it was read at, so an agent's concurrent report is never overwritten.
fn diff_txn(snap: &Snapshot, after: &Observed) -> Result<Txn, Error> {
    let before = &snap.observed;
    let mut txn = Txn::new();
    let read = |id: &TaskId| Some((before.tasks.get(id)?, *snap.task_revs.get(id)?));
    for (id, t) in &after.tasks {
        if before.tasks.get(id) == Some(t) {
            continue;
        }
        txn = task_writes(txn, read(id), Some(t))?;
    }
    for id in before.tasks.keys() {
        if !after.tasks.contains_key(id) {
            txn = task_writes(txn, read(id), None)?;
        }
    }
    for (sid, st) in &after.services {
        if before.services.get(sid) != Some(st) {
            txn = txn.op(Op::put(Kind::ServiceStatus, sid.0.clone(), st)?);
        }
    }
    for sid in before.services.keys() {
        if !after.services.contains_key(sid) {
            txn = txn.op(Op::delete(Kind::ServiceStatus, sid.0.clone()));
        }
    }
    for (volume, node) in &after.volumes {
        if before.volumes.get(volume) != Some(node) {
            // Absent as read: a home is written once, never moved by the planner.
            txn = txn
                .when(Precondition::Absent {
                    kind: Kind::VolumeHome,
                    id: volume.clone(),
                })
                .op(Op::put(
                    Kind::VolumeHome,
                    volume.clone(),
                    &crate::schema::VolumeHome { node: node.clone() },
                )?);
        }
    }
    if after.next_task_id != before.next_task_id {
        txn = txn.op(Op::put(
            Kind::Counter,
            TASK_COUNTER_ID,
            &after.next_task_id,
        )?);
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
        .op(Op::put(
            Kind::ServiceHistory,
            sid.0.clone(),
            &ServiceHistory {
                previous: None,
                rejected: Some(doc.clone()),
            },
        )?);
    Ok(txn)
}

/// Runs the loop until `stop` turns true. Only plans while this node is the raft leader, so
/// exactly one orchestrator writes tasks at a time (a deposed leader's writes fail their
/// preconditions or are forwarded and re-checked).
/// With `overlay`, it also keeps the cluster-wide network documents ([`crate::overlay`]),
/// cutting subnets from those pools, and the routing mesh ([`crate::mesh`]).
pub async fn run(
    node: Node,
    overlay: Option<Vec<dcpp_spec::ipam::AddressPool>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    metrics: std::sync::Arc<LeaderMetrics>,
) {
    let wake = std::sync::Arc::new(tokio::sync::Notify::new());
    let watcher = tokio::spawn(watch_changes(node.clone(), wake.clone()));
    let mut migrated = false;
    // The term this node leads and when it noticed: silences are counted from then.
    let mut leader_since: Option<(u64, u64)> = None;
    loop {
        let term = node.leader_term();
        let leader = term.is_some();
        leader_since = match (term, leader_since) {
            (Some(t), Some((held, since))) if t == held => Some((t, since)),
            (Some(t), _) => Some((t, now_ms())),
            (None, _) => None,
        };
        let mut wait = RESYNC;
        if leader {
            match nodes::forget_non_members(&node, &node.member_ids()).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(records = n, "removed the records of non-members"),
                Err(e) => tracing::warn!("node records: {e}"),
            }
        }
        if leader && !migrated {
            match crate::migrate::legacy_config_ids(&node).await {
                Ok(n) => {
                    if n > 0 {
                        tracing::info!(objects = n, "moved bookkeeping out of reserved config ids");
                    }
                    migrated = true;
                }
                Err(e) => tracing::warn!("moving legacy bookkeeping: {e}"),
            }
        }
        // The network documents first: a task the planner starts below (a dependent whose
        // dependency just became healthy) reaches nodes that already list its peers.
        if leader && let Some(pools) = &overlay {
            // One read of services, tasks and nodes serves both documents.
            match crate::overlay::Snapshot::read(&node).await {
                Ok(snap) => {
                    for (what, r) in [
                        ("networks", crate::overlay::sync(&node, pools, &snap).await),
                        ("routing mesh", crate::mesh::sync(&node, &snap).await),
                    ] {
                        match r {
                            Ok(true) => wait = Duration::ZERO,
                            Ok(false) => {}
                            Err(e) => {
                                tracing::warn!("{what}: {e}");
                                wait = wait.min(Duration::from_millis(200));
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!("networks: {e}");
                    wait = wait.min(Duration::from_millis(200));
                }
            }
        }
        if leader {
            let started = std::time::Instant::now();
            let r = reconcile_measured(
                &node,
                leader_since.map_or(0, |(_, since)| since),
                Some(node.id()),
                &metrics,
            )
            .await;
            metrics.rounds.inc();
            metrics
                .round_seconds
                .observe(started.elapsed().as_secs_f64());
            match r {
                Ok((requeue, wrote)) => {
                    if wrote {
                        wait = Duration::ZERO;
                    } else if let Some(r) = requeue {
                        wait = wait.min(r.max(Duration::from_millis(10)));
                    }
                }
                Err(e) => {
                    metrics.round_errors.inc();
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

/// Wakes `wake` on every store change that can change a plan (re-watching from the current
/// revision after compaction): node records only when [`nodes::change_matters`].
pub async fn watch_changes<S: Store>(node: S, wake: std::sync::Arc<tokio::sync::Notify>) {
    let mut records: std::collections::HashMap<String, nodes::NodeInfo> = Default::default();
    loop {
        let since = match node.list(Kind::Stack).await {
            Ok(l) => l.revision,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let mut s = node.watch(since, None);
        while let Some(ev) = s.next().await {
            let Ok(ev) = ev else { break };
            if ev.object.kind == Kind::Node && ev.event_type == dcpp_raft::EventType::Put {
                let Ok(after) = ev.object.decode::<nodes::NodeInfo>() else {
                    wake.notify_one();
                    continue;
                };
                let matters = nodes::change_matters(records.get(&ev.object.id), &after, now_ms());
                records.insert(ev.object.id.clone(), after);
                if !matters {
                    continue;
                }
            } else if ev.object.kind == Kind::Node {
                records.remove(&ev.object.id);
            }
            wake.notify_one();
        }
        wake.notify_one();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

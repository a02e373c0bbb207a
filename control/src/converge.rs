//! The one convergence rule: when is an apply (update, scale, GitOps round) done, failed or
//! still pending. [`assess`] reads the store once and judges every followed service with
//! [`dcpp_reconciler::verdict`]; [`follow`] repeats it on every store change until a verdict
//! or the timeout. The CLI only renders the [`Round`]s; the API, GitOps and tests use the same
//! functions, so "converged" means one thing everywhere.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use dcpp_raft::{Kind, Store};
use dcpp_reconciler::{
    Convergence, DesiredState, Observed, PullProgress, ServiceSpec, ServiceStatus, ServiceView,
    Task, TaskState,
};
use futures::{FutureExt, StreamExt};

use serde::Serialize;

use crate::Error;
use crate::schema::{ServiceDoc, now_ms};

/// After the first service fails, how long the others get to reach a verdict too, so that
/// services failing together (containers that all exit at once) are all reported.
pub const FAIL_GRACE: Duration = Duration::from_secs(5);

/// One service's state in a round.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceProgress {
    pub name: String,
    /// Running tasks of the version being rolled out.
    pub running: usize,
    /// Slots the service wants filled.
    pub desired: usize,
    pub verdict: Convergence,
}

/// What one read of the store says about the followed services.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Round {
    pub services: Vec<ServiceProgress>,
    /// Image pulls under way for the followed services, one per image.
    pub pulls: Vec<PullProgress>,
}

impl Round {
    /// `web 2/3, db 1/1`.
    pub fn summary(&self) -> String {
        self.services
            .iter()
            .map(|s| format!("{} {}/{}", s.name, s.running, s.desired))
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub fn failed(&self) -> impl Iterator<Item = (&str, &str)> {
        self.services.iter().filter_map(|s| match &s.verdict {
            Convergence::Failed(r) => Some((s.name.as_str(), r.as_str())),
            _ => None,
        })
    }

    pub fn pending(&self) -> impl Iterator<Item = (&str, &str)> {
        self.services.iter().filter_map(|s| match &s.verdict {
            Convergence::Pending(r) => Some((s.name.as_str(), r.as_str())),
            _ => None,
        })
    }

    pub fn converged(&self) -> bool {
        self.services
            .iter()
            .all(|s| s.verdict == Convergence::Converged)
    }

    /// The verdict of all followed services together: failed if one failed, converged if all
    /// did, else pending (with the pending services' reasons).
    pub fn verdict(&self) -> Convergence {
        let failed: Vec<String> = self.failed().map(|(n, r)| format!("{n}: {r}")).collect();
        if !failed.is_empty() {
            return Convergence::Failed(failed.join("; "));
        }
        if self.converged() {
            return Convergence::Converged;
        }
        Convergence::Pending(
            self.pending()
                .map(|(n, r)| format!("{n}: {r}"))
                .collect::<Vec<_>>()
                .join("; "),
        )
    }
}

/// How following ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Converged(Duration),
    /// At least one service failed (the last round says which, and which were still pending).
    Failed(Round),
    TimedOut(Round),
}

/// Judges the followed services (`applied`: the documents that were written) against the
/// store as it is now.
pub async fn assess<S: Store>(s: &S, applied: &[ServiceDoc]) -> Result<Round, Error> {
    // Read order matters: an automatic rollback resets the service document and writes the
    // rollout status in one transaction, so a document read first is never newer than the
    // status read after it.
    let stored: BTreeMap<_, ServiceSpec> = crate::schema::services(s)
        .await?
        .into_iter()
        .map(|(id, (d, _))| (id, d.spec))
        .collect();
    let statuses = crate::schema::statuses(s).await?;
    let tasks: Vec<Task> = crate::schema::tasks(s)
        .await?
        .into_values()
        .map(|(t, _)| t)
        .collect();
    let now = now_ms();
    let mut nodes = Observed::default();
    for n in crate::nodes::list(s).await? {
        nodes.add_node(crate::nodes::to_reconciler(&n, now));
    }
    nodes.tasks = tasks.iter().map(|t| (t.id, t.clone())).collect();
    Ok(judge(applied, &stored, &statuses, &tasks, &nodes, now))
}

/// The pure part of [`assess`].
pub fn judge(
    applied: &[ServiceDoc],
    stored: &BTreeMap<dcpp_reconciler::ServiceId, ServiceSpec>,
    statuses: &BTreeMap<dcpp_reconciler::ServiceId, ServiceStatus>,
    tasks: &[Task],
    nodes: &Observed,
    now: u64,
) -> Round {
    let mut services = Vec::new();
    for d in applied {
        let sid = d.id();
        let st = statuses.get(&sid);
        let slots = dcpp_reconciler::desired_slots(&sid, &d.spec, nodes);
        let running = running(d, st, tasks);
        let view = ServiceView {
            applied: &d.spec,
            stored: stored.get(&sid),
            status: st,
            tasks,
            slots: &slots,
            nodes: &nodes.nodes,
        };
        services.push(ServiceProgress {
            name: d.spec.name.clone(),
            running,
            desired: slots.len(),
            verdict: dcpp_reconciler::verdict(&view, now),
        });
    }
    let mut pulls: BTreeMap<String, PullProgress> = BTreeMap::new();
    for t in tasks {
        if t.state == TaskState::Preparing
            && applied.iter().any(|d| d.id() == t.service)
            && let Some(p) = &t.pull
        {
            pulls.insert(p.image.clone(), p.clone());
        }
    }
    Round {
        services,
        pulls: pulls.into_values().collect(),
    }
}

/// Replica counts of one service: (running tasks of the version being rolled out, slots
/// wanted). `nodes` matters for global services (drained, paused and down nodes don't count).
pub fn progress(
    d: &ServiceDoc,
    st: Option<&ServiceStatus>,
    tasks: &[Task],
    nodes: &Observed,
) -> (usize, usize) {
    let desired = dcpp_reconciler::desired_slots(&d.id(), &d.spec, nodes).len();
    (running(d, st, tasks), desired)
}

/// Running tasks of the version being rolled out.
fn running(d: &ServiceDoc, st: Option<&ServiceStatus>, tasks: &[Task]) -> usize {
    let version = st.map(|s| s.spec.version).unwrap_or(d.spec.version);
    let sid = d.id();
    tasks
        .iter()
        .filter(|t| {
            t.service == sid
                && t.desired == DesiredState::Running
                && t.state == TaskState::Running
                && t.spec_version == version
        })
        .count()
}

/// Follows until every service in `applied` has a verdict, calling `on_round` after every read
/// (the caller renders progress). Failure waits [`FAIL_GRACE`] for still-pending services so
/// that services failing together are all reported.
pub async fn follow<S: Store>(
    s: &S,
    applied: &[ServiceDoc],
    timeout: Duration,
    mut on_round: impl FnMut(&Round),
) -> Result<Outcome, Error> {
    let start = Instant::now();
    let mut first_failure: Option<Instant> = None;
    // Store changes wake the loop (no fixed polling delay between the last task report and the
    // exit); a bounded wait keeps it going should the watch stream end, and lets the grace
    // window pass.
    let since = s.list(Kind::Stack).await.map(|l| l.revision).unwrap_or(0);
    let mut changes = s.watch(since, None);
    let mut watching = since > 0;
    loop {
        let round = assess(s, applied).await?;
        on_round(&round);
        if round.converged() {
            return Ok(Outcome::Converged(start.elapsed()));
        }
        if round.failed().next().is_some() {
            let since_first = first_failure.get_or_insert_with(Instant::now).elapsed();
            if round.pending().next().is_none() || since_first >= FAIL_GRACE {
                return Ok(Outcome::Failed(round));
            }
        } else {
            first_failure = None;
        }
        if start.elapsed() > timeout {
            return Ok(Outcome::TimedOut(round));
        }
        if watching {
            match tokio::time::timeout(Duration::from_millis(500), changes.next()).await {
                Ok(Some(Ok(_))) | Err(_) => {}
                Ok(_) => watching = false,
            }
            // A burst of writes (an agent reporting many tasks) is read once.
            while let Some(Some(Ok(_))) = changes.next().now_or_never() {}
        } else {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

//! The store schema: which typed document lives under which [`Kind`] and id, and who writes it.
//!
//! | Kind | id | Type | Written by |
//! |---|---|---|---|
//! | `stack` | stack name | [`StackDoc`] | apply, GitOps ([`crate::stacks`]) |
//! | `service` | `<stack>_<service>` | [`ServiceDoc`] | apply, `service update/scale/rollback`, an automatic rollback ([`crate::leader`]) |
//! | `service_history` | service id | [`ServiceHistory`] | the same writers: what an update replaced, what a rollback rejected |
//! | `service_status` | service id | [`ServiceStatus`] | the leader loop only |
//! | `task` | task number ([`task_key`]) | [`TaskDoc`]: what should run where | the leader loop only |
//! | `task_status` | task number | [`TaskStatusDoc`]: what runs | the node's agent; the leader before it assigns the task and for a node that is gone |
//! | `counter` | [`TASK_COUNTER_ID`] | `u64`, the next task id | the leader loop only |
//! | `node` | raft node id | [`crate::nodes::NodeInfo`] | the node's agent (heartbeat), `node update` |
//! | `volume` | `<node>/<stack>` | [`VolumeRemoval`] | `down --volumes`; that node's agent acts on it and reports |
//! | `volume_home` | volume name | [`VolumeHome`] | the leader loop when it first places a task that mounts it; deleted by `down --volumes` and `volume rm` |
//!
//! Desired state (stacks, services) and observed state (tasks, statuses, nodes) are kept apart
//! so that the planner reads one and writes the other. Stores written by an older dcpp kept the
//! leader's bookkeeping under reserved `config` ids; [`crate::leader`] moves them once.

use std::collections::BTreeMap;

use dcpp_raft::{Kind, Op, Precondition, Store, Txn};
use dcpp_reconciler::{
    DesiredState, Health, NodeId, PullProgress, Resources, ServiceId, ServiceSpec, ServiceStatus,
    Slot, Task, TaskId, TaskState, Time,
};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::Error;

/// `Kind::Counter` id of the next task id.
pub const TASK_COUNTER_ID: &str = "task";

/// Container labels the agent sets; `ps` and re-adoption find containers by them.
pub const LABEL_STACK: &str = "org.dcpp.stack";
pub const LABEL_SERVICE: &str = "org.dcpp.service";
pub const LABEL_SLOT: &str = "org.dcpp.slot";
pub const LABEL_TASK: &str = "org.dcpp.task";
/// The image the container holds (released when it is removed).
pub const LABEL_IMAGE_ID: &str = "org.dcpp.image.id";

/// One applied stack.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StackDoc {
    pub name: String,
    /// Service names, sorted.
    pub services: Vec<String>,
    /// Networks of the stack by their key in the file.
    #[serde(default)]
    pub networks: Vec<String>,
    /// Where it came from (compose file paths, or a watched file).
    #[serde(default)]
    pub source: String,
    /// sha256 of the canonical model (hex, first 16 chars).
    pub hash: String,
    /// Milliseconds since the Unix epoch.
    pub applied_at_ms: u64,
}

/// One service: what the scheduler needs and what the agent needs to make its containers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceDoc {
    pub spec: ServiceSpec,
    pub service: dcpp_spec::Service,
    /// The own addressing (compose `ipam`) of the stack networks the service joins, by their
    /// key in the file: whoever creates the network (the node's agent, the leader for the
    /// cluster) reads it here with the service.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ipam: BTreeMap<String, dcpp_spec::ipam::IpamSpec>,
}

impl ServiceDoc {
    pub fn id(&self) -> ServiceId {
        self.spec.id()
    }

    /// The command of the service's healthcheck, when one runs (the agent runs it; a replica
    /// with one serves only once healthy).
    pub fn health_command(&self) -> Option<Vec<String>> {
        let hc = self.service.healthcheck.as_ref()?;
        if hc.disable {
            return None;
        }
        match hc.test.first().map(String::as_str) {
            Some("CMD") => Some(hc.test[1..].to_vec()),
            Some("CMD-SHELL") => Some(vec!["/bin/sh".into(), "-c".into(), hc.test[1..].join(" ")]),
            _ => None,
        }
    }
}

/// Store id of a task (the same for its [`TaskDoc`] and its [`TaskStatusDoc`]).
pub fn task_key(id: TaskId) -> String {
    id.0.to_string()
}

/// The desired side of a task (`Kind::Task`): what should run where. Only the leader writes
/// it, so a node's agent (and, with cluster trust, a worker's certificate) never needs write
/// access to what it is told to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskDoc {
    pub id: TaskId,
    pub service: ServiceId,
    pub slot: Slot,
    pub spec_version: u64,
    pub image: String,
    pub reservations: Resources,
    pub node: Option<NodeId>,
    pub desired: DesiredState,
    pub created_at: Time,
    pub not_before: Option<Time>,
    pub restart_count: u32,
    pub restarts: Vec<Time>,
    pub fast_failures: u32,
}

impl TaskDoc {
    /// Swarm-style task name, e.g. `web_api.3` (as [`Task::name`]).
    pub fn name(&self) -> String {
        format!("{}.{}", self.service, self.slot)
    }

    /// The stack the task belongs to.
    pub fn stack(&self) -> Option<&str> {
        self.service.0.split_once('_').map(|(s, _)| s)
    }
}

/// The observed side of a task (`Kind::TaskStatus`, same id as its [`TaskDoc`]): what runs.
/// The agent of the task's node writes it; the leader writes it only for the states no node
/// reports (pending, assigned) and for tasks of a node that is gone. Field names are those of
/// the single task document older stores kept, so such a document reads as its own status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskStatusDoc {
    pub state: TaskState,
    pub container_id: Option<String>,
    pub health: Health,
    pub exit_code: Option<i32>,
    pub updated_at: Time,
    pub started_at: Option<Time>,
    pub finished_at: Option<Time>,
    pub message: String,
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull: Option<PullProgress>,
}

/// Splits the planner's view of a task into its two documents.
pub fn split_task(t: &Task) -> (TaskDoc, TaskStatusDoc) {
    // Destructured in full: a new task field does not compile until it is given a side.
    let Task {
        id,
        service,
        slot,
        spec_version,
        image,
        reservations,
        node,
        desired,
        state,
        container_id,
        health,
        exit_code,
        created_at,
        updated_at,
        started_at,
        finished_at,
        not_before,
        message,
        error,
        restart_count,
        restarts,
        fast_failures,
        healthy_at,
        pull,
    } = t.clone();
    (
        TaskDoc {
            id,
            service,
            slot,
            spec_version,
            image,
            reservations,
            node,
            desired,
            created_at,
            not_before,
            restart_count,
            restarts,
            fast_failures,
        },
        TaskStatusDoc {
            state,
            container_id,
            health,
            exit_code,
            updated_at,
            started_at,
            finished_at,
            message,
            error,
            healthy_at,
            pull,
        },
    )
}

/// The planner's view of a task from its two documents.
pub fn join_task(d: TaskDoc, s: TaskStatusDoc) -> Task {
    Task {
        id: d.id,
        service: d.service,
        slot: d.slot,
        spec_version: d.spec_version,
        image: d.image,
        reservations: d.reservations,
        node: d.node,
        desired: d.desired,
        state: s.state,
        container_id: s.container_id,
        health: s.health,
        exit_code: s.exit_code,
        created_at: d.created_at,
        updated_at: s.updated_at,
        started_at: s.started_at,
        finished_at: s.finished_at,
        not_before: d.not_before,
        message: s.message,
        error: s.error,
        restart_count: d.restart_count,
        restarts: d.restarts,
        fast_failures: d.fast_failures,
        healthy_at: s.healthy_at,
        pull: s.pull,
    }
}

/// The revisions a task's documents were read at; writes are conditioned on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TaskRevs {
    pub doc: u64,
    /// `None`: no status document yet (a store of an older dcpp, or a write lost halfway —
    /// both documents are written in one transaction, so only the former).
    pub status: Option<u64>,
}

/// Adds to `txn` the writes that turn a task read at `revs` (`before`, or nothing) into
/// `after` (or nothing: deleted). Each document is written only if its side changed, and every
/// write is conditioned on the revision it was read at, so a concurrent write by the other
/// side's writer fails the transaction instead of being overwritten.
pub fn task_writes(
    mut txn: Txn,
    before: Option<(&Task, TaskRevs)>,
    after: Option<&Task>,
) -> Result<Txn, Error> {
    let id = match (before, after) {
        (Some((t, _)), _) | (None, Some(t)) => t.id,
        (None, None) => return Ok(txn),
    };
    let key = task_key(id);
    let old = before.map(|(t, r)| (split_task(t), r));
    let new = after.map(split_task);
    let cond = |kind: Kind, rev: Option<u64>| read_at(kind, &key, rev);
    match (&old, &new) {
        (_, None) => {
            if let Some((_, r)) = &old {
                txn = txn.when(cond(Kind::Task, Some(r.doc)));
                if let Some(rev) = r.status {
                    txn = txn.when(cond(Kind::TaskStatus, Some(rev)));
                }
            }
            txn = txn
                .op(Op::delete(Kind::Task, key.clone()))
                .op(Op::delete(Kind::TaskStatus, key.clone()));
        }
        (None, Some((doc, status))) => {
            txn = txn
                .when(cond(Kind::Task, None))
                .when(cond(Kind::TaskStatus, None))
                .op(Op::put(Kind::Task, key.clone(), doc)?)
                .op(Op::put(Kind::TaskStatus, key.clone(), status)?);
        }
        (Some(((od, os), r)), Some((doc, status))) => {
            if od != doc {
                txn = txn.when(cond(Kind::Task, Some(r.doc))).op(Op::put(
                    Kind::Task,
                    key.clone(),
                    doc,
                )?);
            }
            if os != status || r.status.is_none() {
                txn = txn.when(cond(Kind::TaskStatus, r.status)).op(Op::put(
                    Kind::TaskStatus,
                    key.clone(),
                    status,
                )?);
            }
        }
    }
    Ok(txn)
}

/// The status write of a node's agent: only the observed side, conditioned on the revision of
/// the status it read (the leader's changes to the desired side never conflict with it).
pub fn task_status_write(txn: Txn, read: TaskRevs, after: &Task) -> Result<Txn, Error> {
    let (_, status) = split_task(after);
    let key = task_key(after.id);
    Ok(txn
        .when(read_at(Kind::TaskStatus, &key, read.status))
        .op(Op::put(Kind::TaskStatus, key, &status)?))
}

/// The document is as it was read: at revision `rev`, or (`None`) still absent.
fn read_at(kind: Kind, id: &str, rev: Option<u64>) -> Precondition {
    match rev {
        Some(revision) => Precondition::ModRevision {
            kind,
            id: id.to_string(),
            revision,
        },
        None => Precondition::Absent {
            kind,
            id: id.to_string(),
        },
    }
}

/// The history of one service (`Kind::ServiceHistory`, id = service id).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceHistory {
    /// The document the last update replaced: what `service rollback` restores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<ServiceDoc>,
    /// The document the last automatic rollback rejected (shown by `service inspect`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<ServiceDoc>,
}

impl ServiceHistory {
    pub fn is_empty(&self) -> bool {
        self.previous.is_none() && self.rejected.is_none()
    }
}

/// A named volume `down --volumes` asked a node to remove (`Kind::Volume`, id =
/// [`volume_removal_key`]): that node's agent removes it once no container of the stack is
/// left there, then deletes this record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VolumeRemoval {
    pub stack: String,
    /// Raft id of the node.
    pub node: u64,
    /// The stack's services as they were when it was removed: they name its volumes.
    pub services: Vec<ServiceDoc>,
    /// Someone waits for the outcome: the agent records it and leaves the record to them;
    /// otherwise the agent deletes the record when done.
    #[serde(default)]
    pub report: bool,
    /// The volumes the node removed; `None` until it acted.
    #[serde(default)]
    pub removed: Option<Vec<String>>,
    /// Volumes the node could not remove, with the reason.
    #[serde(default)]
    pub errors: Vec<String>,
}

/// The node a local named volume lives on (`Kind::VolumeHome`, id = the volume's name):
/// tasks that mount it are placed only there. Only the user deletes it (`down --volumes`,
/// `volume rm`, `volume rm --force` for a node that is lost), so a task is never moved to a
/// new, empty volume behind the user's back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VolumeHome {
    pub node: NodeId,
}

/// Every volume's home node, by volume name.
pub async fn volume_homes<S: Store>(s: &S) -> Result<BTreeMap<String, NodeId>, Error> {
    let mut out = BTreeMap::new();
    for o in s.list(Kind::VolumeHome).await?.objects {
        let h: VolumeHome = o.decode()?;
        out.insert(o.id.clone(), h.node);
    }
    Ok(out)
}

/// Store id of a [`VolumeRemoval`].
pub fn volume_removal_key(node: u64, stack: &str) -> String {
    format!("{node}/{stack}")
}

/// The document to store after an automatic rollback of `current` (the rejected one) to
/// `spec` (the version that runs now): the document the update replaced when it has that
/// version, else `current` with the image of `spec`. The user's later scaling and deploy
/// settings are kept, as `service rollback` does.
pub fn rolled_back_doc(
    current: &ServiceDoc,
    previous: Option<&ServiceDoc>,
    spec: &ServiceSpec,
) -> ServiceDoc {
    let mut back = match previous.filter(|p| p.spec.version == spec.version) {
        Some(p) => p.clone(),
        None => {
            let mut b = current.clone();
            b.service.image = Some(spec.image.clone());
            b
        }
    };
    back.spec = ServiceSpec {
        mode: current.spec.mode.clone(),
        ..spec.clone()
    };
    back.service.deploy = current.service.deploy.clone();
    // A network's addressing is fixed while it exists.
    back.ipam = current.ipam.clone();
    back
}

/// Container name of a task: `<stack>_<service>.<slot>.<task>` (swarm style; the task id keeps
/// two tasks of one slot apart during a start-first update).
pub fn container_name(task: &Task) -> String {
    format!("{}.{}.{}", task.service, task.slot, task.id)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Builds the documents of a loaded project.
pub fn stack_docs(
    project: &dcpp_spec::Project,
    source: &str,
) -> Result<(StackDoc, Vec<ServiceDoc>), Error> {
    let mut services = Vec::new();
    for name in project.services.keys() {
        let spec =
            ServiceSpec::from_compose(project, name).map_err(|e| Error::Invalid(e.to_string()))?;
        let service = project.services[name].clone();
        let mut ipam = BTreeMap::new();
        let keys: Vec<String> = if service.networks.is_empty() {
            vec!["default".into()]
        } else {
            service.networks.keys().cloned().collect()
        };
        for k in keys {
            if let Some(n) = project.networks.get(&k)
                && let Some(spec) = n
                    .ipam_spec()
                    .map_err(|e| Error::Invalid(format!("network {k}: {e}")))?
            {
                ipam.insert(k, spec);
            }
        }
        services.push(ServiceDoc {
            spec,
            service,
            ipam,
        });
    }
    let canonical = serde_json::to_vec(project).map_err(|e| Error::Invalid(e.to_string()))?;
    let hash = hex::encode(sha2::Sha256::digest(&canonical));
    let stack = StackDoc {
        name: project.name.clone(),
        services: project.services.keys().cloned().collect(),
        networks: project.networks.keys().cloned().collect(),
        source: source.to_string(),
        hash: hash[..16].to_string(),
        applied_at_ms: now_ms(),
    };
    Ok((stack, services))
}

/// How one service differs between the stored and the new documents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "change")]
pub enum ServiceChange {
    Added {
        name: String,
    },
    Removed {
        name: String,
    },
    /// Changed top-level fields of the compose service (`deploy.replicas` etc. for deploy).
    Changed {
        name: String,
        fields: Vec<String>,
    },
}

impl std::fmt::Display for ServiceChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServiceChange::Added { name } => write!(f, "+ service {name}"),
            ServiceChange::Removed { name } => write!(f, "- service {name}"),
            ServiceChange::Changed { name, fields } => {
                write!(f, "~ service {name}: {}", fields.join(", "))
            }
        }
    }
}

/// The services added, removed and changed going from `old` to `new` (by service name).
pub fn diff_services(
    old: &BTreeMap<String, ServiceDoc>,
    new: &BTreeMap<String, ServiceDoc>,
) -> Vec<ServiceChange> {
    let mut out = Vec::new();
    for (name, n) in new {
        match old.get(name) {
            None => out.push(ServiceChange::Added { name: name.clone() }),
            Some(o) => {
                let mut fields = changed_fields(
                    &serde_json::to_value(&o.service).unwrap_or_default(),
                    &serde_json::to_value(&n.service).unwrap_or_default(),
                    "",
                );
                // The same compose service mounting a new version of a secret or config.
                for f in &n.spec.files {
                    let was = o
                        .spec
                        .files
                        .iter()
                        .find(|x| x.kind == f.kind && x.name == f.name)
                        .map(|x| x.version);
                    let field = format!("{}s.{}", f.kind, f.source);
                    if was.is_some_and(|v| v != f.version) && !fields.contains(&field) {
                        fields.push(format!("{field} (version {})", f.version));
                    }
                }
                if !fields.is_empty() {
                    out.push(ServiceChange::Changed {
                        name: name.clone(),
                        fields,
                    });
                }
            }
        }
    }
    for name in old.keys() {
        if !new.contains_key(name) {
            out.push(ServiceChange::Removed { name: name.clone() });
        }
    }
    out
}

/// Dotted paths of the differing fields; descends into `deploy` so that a scale shows as
/// `deploy.replicas` rather than `deploy`.
fn changed_fields(a: &serde_json::Value, b: &serde_json::Value, prefix: &str) -> Vec<String> {
    let empty = serde_json::Map::new();
    let (ao, bo) = (
        a.as_object().unwrap_or(&empty),
        b.as_object().unwrap_or(&empty),
    );
    let mut keys: Vec<&String> = ao.keys().chain(bo.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut out = Vec::new();
    for k in keys {
        let (x, y) = (ao.get(k), bo.get(k));
        if x == y {
            continue;
        }
        let path = format!("{prefix}{k}");
        let nested = prefix.is_empty()
            && k == "deploy"
            && x.is_some_and(|v| v.is_object())
            && y.is_some_and(|v| v.is_object());
        if nested {
            out.extend(changed_fields(
                x.unwrap_or(&serde_json::Value::Null),
                y.unwrap_or(&serde_json::Value::Null),
                &format!("{path}."),
            ));
        } else {
            out.push(path);
        }
    }
    out
}

/// Every service document with its revision, by service id.
pub async fn services<S: Store>(s: &S) -> Result<BTreeMap<ServiceId, (ServiceDoc, u64)>, Error> {
    let mut out = BTreeMap::new();
    for o in s.list(Kind::Service).await?.objects {
        let d: ServiceDoc = o.decode()?;
        out.insert(d.id(), (d, o.mod_revision));
    }
    Ok(out)
}

/// The stored services of `stack` by service name.
pub async fn stack_services<S: Store>(
    s: &S,
    stack: &str,
) -> Result<BTreeMap<String, ServiceDoc>, Error> {
    Ok(services(s)
        .await?
        .into_values()
        .filter(|(d, _)| d.spec.stack == stack)
        .map(|(d, _)| (d.spec.name.clone(), d))
        .collect())
}

/// Each task's service and state, and the stack and name of every service: what a metrics
/// scrape counts, read without decoding whole records (a task's record is mostly what it
/// runs, a service's its whole compose service). Tasks pair with their status as in [`tasks`].
pub async fn task_states<S: Store>(
    s: &S,
) -> Result<
    (
        Vec<(ServiceId, TaskState)>,
        BTreeMap<ServiceId, (String, String)>,
    ),
    Error,
> {
    #[derive(Deserialize)]
    struct Status {
        state: TaskState,
    }
    #[derive(Deserialize)]
    struct Of {
        service: ServiceId,
    }
    #[derive(Deserialize)]
    struct Svc {
        spec: Named,
    }
    #[derive(Deserialize)]
    struct Named {
        stack: String,
        name: String,
    }
    fn view<'a, T: Deserialize<'a>>(o: &'a dcpp_raft::Object) -> Result<T, dcpp_raft::Error> {
        T::deserialize(&o.value).map_err(|e| dcpp_raft::Error::Decode {
            kind: o.kind,
            id: o.id.clone(),
            reason: e.to_string(),
        })
    }
    let mut services = BTreeMap::new();
    for o in s.list(Kind::Service).await?.objects {
        let d: Svc = view(&o)?;
        let id = ServiceId::new(&d.spec.stack, &d.spec.name);
        services.insert(id, (d.spec.stack, d.spec.name));
    }
    let mut statuses = std::collections::HashMap::new();
    for o in s.list(Kind::TaskStatus).await?.objects {
        statuses.insert(o.id.clone(), view::<Status>(&o)?.state);
    }
    let mut out = Vec::new();
    for o in s.list(Kind::Task).await?.objects {
        let of: Of = view(&o)?;
        let state = match statuses.remove(&o.id) {
            Some(st) => st,
            None => match view::<Status>(&o) {
                Ok(st) => st.state,
                Err(_) => continue,
            },
        };
        out.push((of.service, state));
    }
    Ok((out, services))
}

/// Every task, its two documents joined, with their revisions. The status list is read
/// first: a task created between the two reads then has no status yet and reads as its
/// legacy single document would (which fails to decode as a status, so it is skipped this
/// round), never as a status without its task.
pub async fn tasks<S: Store>(s: &S) -> Result<BTreeMap<TaskId, (Task, TaskRevs)>, Error> {
    let mut statuses: BTreeMap<String, (TaskStatusDoc, u64)> = BTreeMap::new();
    for o in s.list(Kind::TaskStatus).await?.objects {
        statuses.insert(o.id.clone(), (o.decode()?, o.mod_revision));
    }
    let mut out = BTreeMap::new();
    for o in s.list(Kind::Task).await?.objects {
        let doc: TaskDoc = o.decode()?;
        let (status, rev) = match statuses.remove(&o.id) {
            Some((st, rev)) => (st, Some(rev)),
            // A store of an older dcpp kept one document per task; its observed fields are
            // the status. The next write of the task splits it.
            None => match o.decode::<TaskStatusDoc>() {
                Ok(st) => (st, None),
                Err(_) => continue,
            },
        };
        let revs = TaskRevs {
            doc: o.mod_revision,
            status: rev,
        };
        out.insert(doc.id, (join_task(doc, status), revs));
    }
    Ok(out)
}

/// The rollout status of every service the leader has seen.
pub async fn statuses<S: Store>(s: &S) -> Result<BTreeMap<ServiceId, ServiceStatus>, Error> {
    let mut out = BTreeMap::new();
    for o in s.list(Kind::ServiceStatus).await?.objects {
        out.insert(ServiceId(o.id.clone()), o.decode()?);
    }
    Ok(out)
}

/// The rollout status of one service, if the leader has seen it.
pub async fn status<S: Store>(s: &S, sid: &ServiceId) -> Result<Option<ServiceStatus>, Error> {
    match s.get(Kind::ServiceStatus, &sid.0).await {
        Ok(o) => Ok(Some(o.decode()?)),
        Err(dcpp_raft::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The history of one service (empty if it has none).
pub async fn history<S: Store>(s: &S, sid: &ServiceId) -> Result<ServiceHistory, Error> {
    match s.get(Kind::ServiceHistory, &sid.0).await {
        // A document that does not decode only costs a rollback its other settings.
        Ok(o) => Ok(o.decode().unwrap_or_default()),
        Err(dcpp_raft::Error::NotFound { .. }) => Ok(ServiceHistory::default()),
        Err(e) => Err(e.into()),
    }
}

/// Every service's history, by service id.
pub async fn histories<S: Store>(s: &S) -> Result<BTreeMap<ServiceId, ServiceHistory>, Error> {
    let mut out = BTreeMap::new();
    for o in s.list(Kind::ServiceHistory).await?.objects {
        out.insert(ServiceId(o.id.clone()), o.decode().unwrap_or_default());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(image: &str, replicas: u32) -> ServiceDoc {
        let mut service = dcpp_spec::Service {
            image: Some(image.into()),
            ..Default::default()
        };
        service.deploy = Some(dcpp_spec::Deploy {
            replicas: Some(replicas.into()),
            ..Default::default()
        });
        ServiceDoc {
            spec: ServiceSpec::new("s", "web", image, replicas),
            service,
            ipam: Default::default(),
        }
    }

    #[test]
    fn diff_names_added_removed_and_changed_fields() {
        let old = BTreeMap::from([
            ("web".to_string(), doc("busybox", 1)),
            ("gone".to_string(), doc("busybox", 1)),
        ]);
        let new = BTreeMap::from([
            ("web".to_string(), doc("busybox:2", 3)),
            ("new".to_string(), doc("busybox", 1)),
        ]);
        let d = diff_services(&old, &new);
        assert_eq!(
            d,
            vec![
                ServiceChange::Added { name: "new".into() },
                ServiceChange::Changed {
                    name: "web".into(),
                    fields: vec!["deploy.replicas".into(), "image".into()]
                },
                ServiceChange::Removed {
                    name: "gone".into()
                },
            ]
        );
        assert!(diff_services(&new, &new).is_empty());
    }

    fn task(id: u64) -> Task {
        Task {
            node: Some(NodeId("n1".into())),
            state: TaskState::Assigned,
            ..Task::new(
                TaskId(id),
                ServiceId("s_web".into()),
                Slot::Replica(1),
                1,
                "busybox:1".into(),
                Resources::default(),
                1,
            )
        }
    }

    async fn read(s: &dcpp_raft::MemStore) -> BTreeMap<TaskId, (Task, TaskRevs)> {
        tasks(s).await.unwrap()
    }

    #[test]
    fn a_task_splits_and_joins_back_unchanged() {
        let mut t = task(7);
        t.state = TaskState::Running;
        t.container_id = Some("c".into());
        t.restarts = vec![3, 4];
        t.not_before = Some(9);
        t.pull = Some(PullProgress {
            image: "busybox:1".into(),
            layers: None,
        });
        let (d, st) = split_task(&t);
        assert_eq!(join_task(d, st), t);
    }

    #[tokio::test]
    async fn each_writer_writes_only_its_side_and_never_overwrites_the_other() {
        let s = dcpp_raft::MemStore::default();
        let t = task(1);
        s.txn(task_writes(Txn::new(), None, Some(&t)).unwrap())
            .await
            .unwrap();
        let (got, revs) = read(&s).await.remove(&TaskId(1)).unwrap();
        assert_eq!(got, t);
        assert!(revs.status.is_some());

        // The agent reports running while the leader, from the same read, orders a stop: both
        // writes land, because each touches only its own document.
        let mut running = t.clone();
        running.transition(TaskState::Running, 5).unwrap();
        let mut stop = t.clone();
        stop.desired = DesiredState::Shutdown;
        let leader = task_writes(Txn::new(), Some((&t, revs)), Some(&stop)).unwrap();
        assert_eq!(leader.ops.len(), 1, "only the task document: {leader:?}");
        s.txn(task_status_write(Txn::new(), revs, &running).unwrap())
            .await
            .unwrap();
        s.txn(leader).await.unwrap();
        let (got, revs2) = read(&s).await.remove(&TaskId(1)).unwrap();
        assert_eq!(got.state, TaskState::Running);
        assert_eq!(got.started_at, Some(5));
        assert_eq!(got.desired, DesiredState::Shutdown);

        // A status write from a stale read fails instead of undoing the newer status.
        let stale = task_status_write(Txn::new(), revs, &t).unwrap();
        assert!(matches!(
            s.txn(stale).await,
            Err(dcpp_raft::Error::PreconditionFailed(_))
        ));
        // And so does a leader's status write (orphaning) from before the agent's report.
        let mut orphaned = t.clone();
        orphaned.state = TaskState::Orphaned;
        let stale = task_writes(Txn::new(), Some((&t, revs)), Some(&orphaned)).unwrap();
        assert!(matches!(
            s.txn(stale).await,
            Err(dcpp_raft::Error::PreconditionFailed(_))
        ));

        s.txn(task_writes(Txn::new(), Some((&got, revs2)), None).unwrap())
            .await
            .unwrap();
        assert!(read(&s).await.is_empty());
        assert!(s.list(Kind::TaskStatus).await.unwrap().objects.is_empty());
    }

    #[tokio::test]
    async fn a_single_task_document_of_an_older_store_reads_as_both_sides_and_splits_on_write() {
        let s = dcpp_raft::MemStore::default();
        let mut t = task(2);
        t.state = TaskState::Running;
        t.container_id = Some("c".into());
        s.txn(Txn::new().op(Op::put(Kind::Task, task_key(t.id), &t).unwrap()))
            .await
            .unwrap();
        let (got, revs) = read(&s).await.remove(&TaskId(2)).unwrap();
        assert_eq!(got, t);
        assert_eq!(revs.status, None);
        let mut stop = t.clone();
        stop.desired = DesiredState::Shutdown;
        s.txn(task_writes(Txn::new(), Some((&t, revs)), Some(&stop)).unwrap())
            .await
            .unwrap();
        let (got, revs) = read(&s).await.remove(&TaskId(2)).unwrap();
        assert_eq!(got, stop);
        assert!(revs.status.is_some());
    }
}

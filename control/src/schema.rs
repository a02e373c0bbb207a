//! The store schema: which typed document lives under which [`Kind`] and id, and who writes it.
//!
//! | Kind | id | Type | Written by |
//! |---|---|---|---|
//! | `stack` | stack name | [`StackDoc`] | apply, GitOps ([`crate::stacks`]) |
//! | `service` | `<stack>_<service>` | [`ServiceDoc`] | apply, `service update/scale/rollback`, an automatic rollback ([`crate::leader`]) |
//! | `service_history` | service id | [`ServiceHistory`] | the same writers: what an update replaced, what a rollback rejected |
//! | `service_status` | service id | [`ServiceStatus`] | the leader loop only |
//! | `task` | task number ([`task_key`]) | [`Task`] | the leader (desired side), the node's agent (observed side) |
//! | `counter` | [`TASK_COUNTER_ID`] | `u64`, the next task id | the leader loop only |
//! | `node` | raft node id | [`crate::nodes::NodeInfo`] | the node's agent (heartbeat), `node update` |
//! | `volume` | `<node>/<stack>` | [`VolumeRemoval`] | `down --volumes`; that node's agent acts on it and reports |
//!
//! Desired state (stacks, services) and observed state (tasks, statuses, nodes) are kept apart
//! so that the planner reads one and writes the other. Stores written by an older dcpp kept the
//! leader's bookkeeping under reserved `config` ids; [`crate::leader`] moves them once.

use std::collections::BTreeMap;

use dcpp_raft::{Kind, Store};
use dcpp_reconciler::{ServiceId, ServiceSpec, ServiceStatus, Task, TaskId};
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
}

impl ServiceDoc {
    pub fn id(&self) -> ServiceId {
        self.spec.id()
    }
}

/// Store id of a task.
pub fn task_key(id: TaskId) -> String {
    id.0.to_string()
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
        services.push(ServiceDoc {
            spec,
            service: project.services[name].clone(),
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
                let fields = changed_fields(
                    &serde_json::to_value(&o.service).unwrap_or_default(),
                    &serde_json::to_value(&n.service).unwrap_or_default(),
                    "",
                );
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

/// Every task record with its revision.
pub async fn tasks<S: Store>(s: &S) -> Result<BTreeMap<TaskId, (Task, u64)>, Error> {
    let mut out = BTreeMap::new();
    for o in s.list(Kind::Task).await?.objects {
        let t: Task = o.decode()?;
        out.insert(t.id, (t, o.mod_revision));
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
}

//! Secrets and configs: stored versioned, their data sealed under the managers' key, and
//! delivered to a node only for the tasks placed on it.
//!
//! | Kind | id | Type | Written by |
//! |---|---|---|---|
//! | `secret` | object name | [`FileDoc`] | `apply`, `secret create/update/rm` (through [`crate::api`]) |
//! | `config` | object name | [`FileDoc`] | `apply`, `configs create/update/rm` |
//!
//! The data of every version is sealed ([`dcpp_raft::Node::seal_data`]) for the context
//! `<kind>/<name>/<version>` before it is written: the raft log, its snapshots and every
//! manager's store hold only ciphertext, and a worker (which holds no key) gets plaintext only
//! from a manager, for a task placed on it, through [`task_files`]. Configs are sealed too: one
//! delivery path, and a config may be as private as a secret in practice.
//!
//! A new version is made only when the data differs from the current one (compared after
//! opening it, so that no digest of a secret is stored). A service mounts one version
//! ([`dcpp_reconciler::FileMount::version`]), so a new version is a new container version: the
//! services that use it roll per their `update_config`, and a rollback mounts the previous
//! version again. Versions no service (current or previous document) mounts are dropped, except
//! the current one.

use std::collections::{BTreeMap, BTreeSet};

use dcpp_raft::api::Access;
use dcpp_raft::{Kind, Node, Op, Precondition, Store, Txn};
use dcpp_reconciler::FileKind;
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::schema::{ServiceDoc, ServiceHistory, TaskDoc, now_ms};

/// Largest data of one secret or config (swarm's limit is 500 KiB).
pub const MAX_SIZE: usize = 500 << 10;

/// The store kind of a secret or config.
pub fn kind_of(k: FileKind) -> Kind {
    match k {
        FileKind::Secret => Kind::Secret,
        FileKind::Config => Kind::Config,
    }
}

/// A stored secret or config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileDoc {
    pub kind: FileKind,
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The stack that made it (`apply`), if not made by hand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// Oldest first; the last one is current.
    pub versions: Vec<FileVersion>,
}

impl FileDoc {
    pub fn current(&self) -> Option<&FileVersion> {
        self.versions.last()
    }
}

/// One version of a secret's or config's data.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct FileVersion {
    pub version: u64,
    pub created_ms: u64,
    pub size: u64,
    /// Hex of nonce ‖ ciphertext ‖ tag, sealed for [`context`].
    pub sealed: String,
}

// By hand: even ciphertext has no business in a log line.
impl std::fmt::Debug for FileVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileVersion")
            .field("version", &self.version)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// What the data of one version is sealed for.
pub fn context(kind: FileKind, name: &str, version: u64) -> String {
    format!("{kind}/{name}/{version}")
}

/// Data that must not be printed: `{:?}` shows its length only.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Plain(pub Vec<u8>);

impl std::fmt::Debug for Plain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{} bytes>", self.0.len())
    }
}

impl Serialize for Plain {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Plain {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(s)
            .map(Plain)
            .map_err(|e| serde::de::Error::custom(format!("data: {e}")))
    }
}

/// Body of `POST /v1/files/{kind}/{name}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PutFile {
    pub data: Plain,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub stack: Option<String>,
    /// Refuse when it exists already (`secret create`).
    #[serde(default)]
    pub create: bool,
    /// Refuse when it does not exist (`secret update`).
    #[serde(default)]
    pub update: bool,
    /// Answer which version it would be, write nothing (`apply --dry-run`, `diff`).
    #[serde(default)]
    pub dry_run: bool,
    /// Move the services that mount it to the new version in the same write (`secret
    /// update`); `apply` sets the versions of its own services itself.
    #[serde(default)]
    pub roll: bool,
}

/// Answer of `POST /v1/files/{kind}/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutOutcome {
    pub version: u64,
    /// A new version was made (or would be, with `dry_run`).
    pub changed: bool,
    /// With `roll`: the services moved to the new version (they roll per their update_config).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rolled: Vec<String>,
}

/// A name a secret or config may have (it is a store id and a path component nowhere).
pub fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 128
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        && !n.starts_with(['.', '-'])
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::Store(dcpp_raft::Error::InvalidArgument(msg.into()))
}

async fn read_doc<S: Store>(
    s: &S,
    kind: FileKind,
    name: &str,
) -> Result<Option<(FileDoc, u64)>, Error> {
    match s.get(kind_of(kind), name).await {
        Ok(o) => Ok(Some((o.decode()?, o.mod_revision))),
        Err(dcpp_raft::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The services (ids) whose current document mounts `kind`/`name`.
pub async fn users<S: Store>(s: &S, kind: FileKind, name: &str) -> Result<Vec<String>, Error> {
    let mut out = Vec::new();
    for o in s.list(Kind::Service).await?.objects {
        let d: ServiceDoc = o.decode()?;
        if d.spec
            .files
            .iter()
            .any(|f| f.kind == kind && f.name == name)
        {
            out.push(o.id);
        }
    }
    Ok(out)
}

/// Versions of `kind`/`name` that a service's current or previous document mounts, with the
/// services and histories of `pending` as they will be written.
async fn mounted_versions<S: Store>(
    s: &S,
    kind: FileKind,
    name: &str,
    pending: &[(String, u64, ServiceDoc, ServiceHistory)],
) -> Result<BTreeSet<u64>, Error> {
    let replaced = |id: &str| pending.iter().find(|p| p.0 == id);
    let mut docs: Vec<ServiceDoc> = Vec::new();
    for o in s.list(Kind::Service).await?.objects {
        match replaced(&o.id) {
            Some(p) => docs.push(p.2.clone()),
            None => docs.push(o.decode()?),
        }
    }
    for o in s.list(Kind::ServiceHistory).await?.objects {
        let h: ServiceHistory = match replaced(&o.id) {
            Some(p) => p.3.clone(),
            None => o.decode()?,
        };
        docs.extend(h.previous);
        docs.extend(h.rejected);
    }
    // A history written for the first time by this write.
    for p in pending {
        docs.extend(p.3.previous.iter().cloned());
    }
    Ok(docs
        .iter()
        .flat_map(|d| &d.spec.files)
        .filter(|f| f.kind == kind && f.name == name)
        .map(|f| f.version)
        .collect())
}

/// Stores `put.data` as the current version of `kind`/`name` unless it is that already; on a
/// manager (it seals). Versions nothing mounts any more are dropped in the same write.
pub async fn put(
    node: &Node,
    kind: FileKind,
    name: &str,
    put: PutFile,
) -> Result<PutOutcome, Error> {
    if !valid_name(name) {
        return Err(invalid(format!(
            "invalid {kind} name {name:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
        )));
    }
    if put.data.0.len() > MAX_SIZE {
        return Err(invalid(format!(
            "{kind} {name}: {} bytes is more than the {MAX_SIZE} allowed",
            put.data.0.len()
        )));
    }
    let existing = read_doc(node, kind, name).await?;
    if put.create && existing.is_some() {
        return Err(Error::Store(dcpp_raft::Error::Conflict(format!(
            "{kind} {name} exists already (`dcpp {} update` makes a new version)",
            cli_noun(kind)
        ))));
    }
    if put.update && existing.is_none() {
        return Err(Error::Store(dcpp_raft::Error::NotFound {
            kind: kind_of(kind),
            id: name.to_string(),
        }));
    }
    let (mut doc, precondition) = match existing {
        Some((d, rev)) => {
            if let Some(cur) = d.current() {
                let plain = node.open_data(&context(kind, name, cur.version), &cur.sealed)?;
                if plain == put.data.0 {
                    return Ok(PutOutcome {
                        version: cur.version,
                        changed: false,
                        rolled: Vec::new(),
                    });
                }
            }
            (
                d,
                Precondition::ModRevision {
                    kind: kind_of(kind),
                    id: name.to_string(),
                    revision: rev,
                },
            )
        }
        None => (
            FileDoc {
                kind,
                name: name.to_string(),
                labels: put.labels.clone(),
                stack: put.stack.clone(),
                created_ms: now_ms(),
                versions: Vec::new(),
            },
            Precondition::Absent {
                kind: kind_of(kind),
                id: name.to_string(),
            },
        ),
    };
    let version = doc.current().map_or(1, |c| c.version + 1);
    if put.dry_run {
        return Ok(PutOutcome {
            version,
            changed: true,
            rolled: Vec::new(),
        });
    }
    // With `roll`, the services that mount it move to the new version in this write, as
    // `service update` writes each: the replaced document becomes the history's previous one
    // (what a rollback restores), and a concurrent change of the service fails the write
    // instead of being overwritten.
    let mut writes: Vec<(String, u64, ServiceDoc, ServiceHistory)> = Vec::new();
    if put.roll {
        for o in node.list(Kind::Service, true).await?.objects {
            let old: ServiceDoc = o.decode()?;
            if !old
                .spec
                .files
                .iter()
                .any(|f| f.kind == kind && f.name == name)
            {
                continue;
            }
            let mut new = old.clone();
            new.spec = new.spec.with_file_version(kind, name, version);
            let mut h = crate::schema::history(node, &old.id()).await?;
            h.previous = Some(old);
            writes.push((o.id, o.mod_revision, new, h));
        }
    }
    // Kept: what a service (or its history) mounts once this write is done.
    let mut mounted = mounted_versions(node, kind, name, &writes).await?;
    mounted.insert(version);
    doc.versions.retain(|v| mounted.contains(&v.version));
    doc.versions.push(FileVersion {
        version,
        created_ms: now_ms(),
        size: put.data.0.len() as u64,
        sealed: node.seal_data(&context(kind, name, version), &put.data.0)?,
    });
    if !put.labels.is_empty() {
        doc.labels = put.labels;
    }
    let mut txn = Txn::new()
        .when(precondition)
        .op(Op::put(kind_of(kind), name.to_string(), &doc)?);
    let mut rolled = Vec::new();
    for (id, rev, new, h) in writes {
        txn = txn
            .when(Precondition::ModRevision {
                kind: Kind::Service,
                id: id.clone(),
                revision: rev,
            })
            .op(Op::put(Kind::ServiceHistory, id.clone(), &h)?)
            .op(Op::put(Kind::Service, id.clone(), &new)?);
        rolled.push(id);
    }
    node.txn(txn).await?;
    tracing::info!(%kind, name, version, rolled = rolled.len(), "stored a new version");
    Ok(PutOutcome {
        version,
        changed: true,
        rolled,
    })
}

/// The CLI noun of a kind (`dcpp secret …`, `dcpp configs …`).
pub fn cli_noun(kind: FileKind) -> &'static str {
    match kind {
        FileKind::Secret => "secret",
        FileKind::Config => "configs",
    }
}

/// Deletes `kind`/`name`; refused while a service mounts it, naming them.
pub async fn remove<S: Store>(s: &S, kind: FileKind, name: &str) -> Result<(), Error> {
    let Some((_, rev)) = read_doc(s, kind, name).await? else {
        return Err(Error::Store(dcpp_raft::Error::NotFound {
            kind: kind_of(kind),
            id: name.to_string(),
        }));
    };
    let users = users(s, kind, name).await?;
    if !users.is_empty() {
        return Err(Error::Store(dcpp_raft::Error::Conflict(format!(
            "{kind} {name} is in use by service{} {}",
            if users.len() == 1 { "" } else { "s" },
            users.join(", ")
        ))));
    }
    s.txn(
        Txn::new()
            .when(Precondition::ModRevision {
                kind: kind_of(kind),
                id: name.to_string(),
                revision: rev,
            })
            .op(Op::delete(kind_of(kind), name.to_string())),
    )
    .await?;
    Ok(())
}

/// One file a task asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileWanted {
    pub kind: FileKind,
    pub name: String,
    pub version: u64,
}

/// Body of `POST /v1/worker/task-files`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskFiles {
    /// The task's store id.
    pub task: String,
    pub files: Vec<FileWanted>,
}

/// The data of one file, in the order asked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileData {
    pub kind: FileKind,
    pub name: String,
    pub version: u64,
    pub data: Plain,
}

/// The data a task's containers mount, for the node the task is placed on (`Access::Worker`)
/// or a caller with full access. Each file asked for must be one the task's service mounts
/// (any version of it: during an update or a rollback the node may ask for the version a
/// moment before the manager's copy shows it). Anything else is answered as absent.
pub async fn task_files(
    node: &Node,
    access: Access,
    req: &TaskFiles,
) -> Result<Vec<FileData>, Error> {
    let not_found = || {
        Error::Store(dcpp_raft::Error::NotFound {
            kind: Kind::Task,
            id: req.task.clone(),
        })
    };
    let task: TaskDoc = match node.get(Kind::Task, &req.task, false).await {
        Ok(o) => o.decode()?,
        Err(dcpp_raft::Error::NotFound { .. }) => return Err(not_found()),
        Err(e) => return Err(e.into()),
    };
    match access {
        Access::Full => {}
        Access::Worker(w) => {
            if task.node.as_ref().and_then(|n| n.0.parse::<u64>().ok()) != Some(w) {
                tracing::warn!(task = %req.task, node = w, "a node asked for the files of a task not placed on it");
                return Err(not_found());
            }
        }
        Access::Joining(..) => return Err(not_found()),
    }
    let svc: ServiceDoc = node
        .get(Kind::Service, &task.service.0, false)
        .await?
        .decode()?;
    let mut out = Vec::new();
    for want in &req.files {
        if !svc
            .spec
            .files
            .iter()
            .any(|f| f.kind == want.kind && f.name == want.name)
        {
            return Err(Error::Store(dcpp_raft::Error::NotFound {
                kind: kind_of(want.kind),
                id: want.name.clone(),
            }));
        }
        let (doc, _) = read_doc(node, want.kind, &want.name)
            .await?
            .ok_or_else(|| {
                Error::Store(dcpp_raft::Error::NotFound {
                    kind: kind_of(want.kind),
                    id: want.name.clone(),
                })
            })?;
        let v = doc
            .versions
            .iter()
            .find(|v| v.version == want.version)
            .ok_or_else(|| {
                Error::Store(dcpp_raft::Error::NotFound {
                    kind: kind_of(want.kind),
                    id: format!("{} version {}", want.name, want.version),
                })
            })?;
        let data = node.open_data(&context(want.kind, &want.name, v.version), &v.sealed)?;
        out.push(FileData {
            kind: want.kind,
            name: want.name.clone(),
            version: v.version,
            data: Plain(data),
        });
    }
    Ok(out)
}

/// How a node's agent gets the data of its tasks' files: from its own store on a manager, from
/// a manager on a worker.
pub async fn fetch_task_files(node: &Node, req: &TaskFiles) -> Result<Vec<FileData>, Error> {
    if let Some(r) = node.post_to_managers(TASK_FILES_PATH, req).await {
        return Ok(r?);
    }
    task_files(node, Access::Full, req).await
}

/// The route of [`task_files`] (`/v1/worker/` routes are open to worker certificates).
pub const TASK_FILES_PATH: &str = "/v1/worker/task-files";

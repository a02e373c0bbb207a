//! Durable Raft storage on redb: the log, the vote and the state machine live in one database
//! file so that a node's whole Raft state is a single crash-safe artifact.
//!
//! Why redb: pure Rust (no C++/bindgen build like RocksDB), ACID with fsync on every commit by
//! default, MVCC read transactions (snapshots and reads never block the writer) and a simple
//! sorted-table model that fits an append-only log keyed by index.
//!
//! The state machine is applied *into* redb in the same transaction that records
//! `last_applied`, so after a crash the state is always consistent with `last_applied` and
//! snapshots need not be the source of truth; a snapshot is a serialized copy of the objects used
//! to bring fresh or lagging members up to date.
//!
//! Watch history: every committed change is appended to the `changes` table keyed by revision.
//! The newest `history_limit` revisions are kept; a watcher asking for an older revision gets
//! [`Error::Compacted`]. Installing a snapshot replaces the objects and drops the history, so the
//! horizon moves to the snapshot's revision.

use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::types::{
    ClusterSecrets, Event, EventType, Kind, Object, Op, Precondition, PreconditionFailed, Request,
    Response, TxnResponse,
};
use crate::{Error, NodeId, TypeConfig};

/// The registered workers by id.
pub type Workers = std::collections::BTreeMap<NodeId, crate::types::WorkerEntry>;

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const SM_META: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_meta");
const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
const CHANGES: TableDefinition<u64, &[u8]> = TableDefinition::new("changes");
const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");

const K_VOTE: &str = "vote";
const K_PURGED: &str = "last_purged";
const K_COMMITTED: &str = "committed";
const K_APPLIED: &str = "last_applied";
const K_MEMBERSHIP: &str = "membership";
const K_REVISION: &str = "revision";
const K_COMPACTED: &str = "compacted";
const K_SECRETS: &str = "secrets";
const K_WORKERS: &str = "workers";
const K_CURRENT: &str = "current";

type SErr = StorageError<NodeId>;

fn any(e: impl std::fmt::Display) -> AnyError {
    AnyError::error(e.to_string())
}

fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    // Serializing our own plain data types to JSON cannot fail (no maps with non-string keys).
    serde_json::to_vec(v).expect("serializable store value")
}

fn dec<T: DeserializeOwned>(b: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(b).map_err(|e| Error::Storage(format!("corrupt record: {e}")))
}

fn object_key(kind: Kind, id: &str) -> String {
    format!("{kind}/{id}")
}

/// Runs blocking redb work (which may fsync) off the async worker threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

struct Shared {
    db: Database,
    /// The applied cluster revision; bumped (or re-sent on snapshot install) to wake watchers.
    revision: watch::Sender<u64>,
    history_limit: u64,
}

/// Opens (or creates) the store at `path`, returning the Raft log store, the state machine and a
/// read handle for the API.
pub fn open(
    path: &Path,
    history_limit: u64,
) -> Result<(LogStore, StateMachine, StoreReader), Error> {
    // redb caches up to 1 GiB of pages by default, and keeps what it cached: the daemon's RSS
    // grew with every large apply (each task written several times) and never came back. The
    // OS page cache holds the file anyway; 32 MiB keeps the hot pages (the one-node store of a
    // thousand tasks is a few MiB) without growing with the history.
    let db = redb::Builder::new().set_cache_size(32 << 20).create(path)?;
    let txn = db.begin_write()?;
    {
        txn.open_table(LOG)?;
        txn.open_table(META)?;
        txn.open_table(SM_META)?;
        txn.open_table(OBJECTS)?;
        txn.open_table(CHANGES)?;
        txn.open_table(SNAPSHOT)?;
    }
    txn.commit()?;
    let rev = {
        let r = db.begin_read()?;
        let t = r.open_table(SM_META)?;
        match t.get(K_REVISION)? {
            Some(v) => dec::<u64>(v.value())?,
            None => 0,
        }
    };
    let shared = Arc::new(Shared {
        db,
        revision: watch::channel(rev).0,
        history_limit: history_limit.max(1),
    });
    Ok((
        LogStore {
            shared: shared.clone(),
        },
        StateMachine {
            shared: shared.clone(),
        },
        StoreReader { shared },
    ))
}

fn get_meta<T: DeserializeOwned>(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<T>, Error> {
    match t.get(key)? {
        Some(v) => Ok(Some(dec(v.value())?)),
        None => Ok(None),
    }
}

/// The Raft log and vote.
#[derive(Clone)]
pub struct LogStore {
    shared: Arc<Shared>,
}

impl LogStore {
    fn read_entries(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<Vec<Entry<TypeConfig>>, Error> {
        let r = self.shared.db.begin_read()?;
        let t = r.open_table(LOG)?;
        let mut out = Vec::new();
        for item in t.range::<u64>((start, end))? {
            let (_, v) = item?;
            out.push(dec(v.value())?);
        }
        Ok(out)
    }

    /// Stores a small local-only record (node identity, credentials) next to the vote.
    pub(crate) fn put_local<T: Serialize>(&self, key: &str, v: &T) -> Result<(), Error> {
        let w = self.shared.db.begin_write()?;
        w.open_table(META)?.insert(key, enc(v).as_slice())?;
        w.commit()?;
        Ok(())
    }

    pub(crate) fn get_local<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Error> {
        let r = self.shared.db.begin_read()?;
        get_meta(&r.open_table(META)?, key)
    }

    pub(crate) fn remove_local(&self, key: &str) -> Result<(), Error> {
        let w = self.shared.db.begin_write()?;
        w.open_table(META)?.remove(key)?;
        w.commit()?;
        Ok(())
    }

    /// A state machine over the same database (one per Raft instance).
    pub fn state_machine(&self) -> StateMachine {
        StateMachine {
            shared: self.shared.clone(),
        }
    }

    /// Erases all Raft state (log, vote, state machine, snapshot) but keeps local records; used
    /// when a pristine single-node cluster joins another cluster.
    pub(crate) fn wipe_raft_state(&self) -> Result<(), Error> {
        let w = self.shared.db.begin_write()?;
        w.open_table(LOG)?.retain(|_, _| false)?;
        {
            let mut m = w.open_table(META)?;
            for k in [K_VOTE, K_PURGED, K_COMMITTED] {
                m.remove(k)?;
            }
        }
        w.open_table(SM_META)?.retain(|_, _| false)?;
        w.open_table(OBJECTS)?.retain(|_, _| false)?;
        w.open_table(CHANGES)?.retain(|_, _| false)?;
        w.open_table(SNAPSHOT)?.retain(|_, _| false)?;
        w.commit()?;
        self.shared.revision.send_replace(0);
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, SErr> {
        let this = self.clone();
        let (s, e) = (range.start_bound().cloned(), range.end_bound().cloned());
        blocking(move || this.read_entries(s, e))
            .await
            .map_err(|e| StorageIOError::read_logs(any(e)).into())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, SErr> {
        let shared = self.shared.clone();
        blocking(move || -> Result<_, Error> {
            let r = shared.db.begin_read()?;
            let purged: Option<LogId<NodeId>> = get_meta(&r.open_table(META)?, K_PURGED)?;
            let t = r.open_table(LOG)?;
            let last = match t.last()? {
                Some((_, v)) => Some(dec::<Entry<TypeConfig>>(v.value())?.log_id),
                None => purged,
            };
            Ok(LogState {
                last_purged_log_id: purged,
                last_log_id: last,
            })
        })
        .await
        .map_err(|e| StorageIOError::read_logs(any(e)).into())
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), SErr> {
        let this = self.clone();
        let vote = *vote;
        blocking(move || this.put_local(K_VOTE, &vote))
            .await
            .map_err(|e| StorageIOError::write_vote(any(e)).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, SErr> {
        let this = self.clone();
        blocking(move || this.get_local(K_VOTE))
            .await
            .map_err(|e| StorageIOError::read_vote(any(e)).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), SErr> {
        let shared = self.shared.clone();
        blocking(move || -> Result<(), Error> {
            let mut w = shared.db.begin_write()?;
            // Optional hint for faster restart: it becomes durable with the next log append, and
            // losing it only means re-applying from the state machine's own `last_applied`.
            w.set_durability(redb::Durability::None)
                .map_err(|e| Error::Storage(e.to_string()))?;
            w.open_table(META)?
                .insert(K_COMMITTED, enc(&committed).as_slice())?;
            w.commit()?;
            Ok(())
        })
        .await
        .map_err(|e| StorageIOError::write(any(e)).into())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, SErr> {
        let this = self.clone();
        blocking(move || this.get_local::<Option<LogId<NodeId>>>(K_COMMITTED))
            .await
            .map(Option::flatten)
            .map_err(|e| StorageIOError::read(any(e)).into())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        let shared = self.shared.clone();
        let res = blocking(move || -> Result<(), Error> {
            let w = shared.db.begin_write()?;
            {
                let mut t = w.open_table(LOG)?;
                for e in &entries {
                    t.insert(e.log_id.index, enc(e).as_slice())?;
                }
            }
            // Durability::Immediate (the default): commit returns after fsync, so the
            // callback below really means "on disk".
            w.commit()?;
            Ok(())
        })
        .await;
        match res {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(StorageIOError::write_logs(any(e)).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), SErr> {
        let shared = self.shared.clone();
        blocking(move || -> Result<(), Error> {
            let w = shared.db.begin_write()?;
            w.open_table(LOG)?.retain_in(log_id.index.., |_, _| false)?;
            w.commit()?;
            Ok(())
        })
        .await
        .map_err(|e| StorageIOError::write_logs(any(e)).into())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), SErr> {
        let shared = self.shared.clone();
        blocking(move || -> Result<(), Error> {
            let w = shared.db.begin_write()?;
            // Record the purge point first (same transaction) so no hole is ever visible.
            w.open_table(META)?
                .insert(K_PURGED, enc(&log_id).as_slice())?;
            w.open_table(LOG)?
                .retain_in(..=log_id.index, |_, _| false)?;
            w.commit()?;
            Ok(())
        })
        .await
        .map_err(|e| StorageIOError::write_logs(any(e)).into())
    }
}

/// Serialized state machine carried in a snapshot.
#[derive(Serialize, Deserialize)]
struct SnapshotData {
    revision: u64,
    secrets: Option<ClusterSecrets>,
    #[serde(default)]
    workers: Workers,
    objects: Vec<Object>,
}

/// A stored snapshot: its metadata and the serialized [`SnapshotData`].
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, openraft::BasicNode>,
    data: Vec<u8>,
}

/// The replicated state machine: objects, revisions and change history.
pub struct StateMachine {
    shared: Arc<Shared>,
}

/// Builds snapshots from a consistent MVCC read of the state machine.
pub struct SnapshotBuilder {
    shared: Arc<Shared>,
}

fn apply_batch(
    shared: &Shared,
    entries: Vec<Entry<TypeConfig>>,
) -> Result<(Vec<Response>, u64), Error> {
    let w = shared.db.begin_write()?;
    let mut responses = Vec::with_capacity(entries.len());
    let revision;
    {
        let mut meta = w.open_table(SM_META)?;
        let mut objects = w.open_table(OBJECTS)?;
        let mut changes = w.open_table(CHANGES)?;
        let mut rev: u64 = get_meta(&meta, K_REVISION)?.unwrap_or(0);
        let mut compacted: u64 = get_meta(&meta, K_COMPACTED)?.unwrap_or(0);
        let mut last_applied = None;
        let mut membership = None;
        for entry in entries {
            last_applied = Some(entry.log_id);
            let mut resp = Response::default();
            match entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Membership(m) => {
                    membership = Some(StoredMembership::new(Some(entry.log_id), m));
                }
                EntryPayload::Normal(Request::SetSecrets(mut s)) => {
                    let old: Option<ClusterSecrets> = get_meta(&meta, K_SECRETS)?;
                    if let Some(old) = old.filter(|o| o.cluster_id == s.cluster_id) {
                        for (n, at) in old.revoked {
                            let e = s.revoked.entry(n).or_insert(at);
                            *e = (*e).max(at);
                        }
                        for (n, at) in old.revoked_admins {
                            let e = s.revoked_admins.entry(n).or_insert(at);
                            *e = (*e).max(at);
                        }
                    }
                    meta.insert(K_SECRETS, enc(&s).as_slice())?;
                }
                EntryPayload::Normal(Request::Revoke { node, at }) => {
                    let old: Option<ClusterSecrets> = get_meta(&meta, K_SECRETS)?;
                    if let Some(mut s) = old {
                        let e = s.revoked.entry(node).or_insert(at);
                        *e = (*e).max(at);
                        meta.insert(K_SECRETS, enc(&s).as_slice())?;
                    }
                }
                EntryPayload::Normal(Request::RevokeAdmin { name, at }) => {
                    let old: Option<ClusterSecrets> = get_meta(&meta, K_SECRETS)?;
                    if let Some(mut s) = old {
                        let e = s.revoked_admins.entry(name).or_insert(at);
                        *e = (*e).max(at);
                        meta.insert(K_SECRETS, enc(&s).as_slice())?;
                    }
                }
                EntryPayload::Normal(Request::SetWorker { id, worker }) => {
                    let mut all: Workers = get_meta(&meta, K_WORKERS)?.unwrap_or_default();
                    match worker {
                        Some(w) => all.insert(id, w),
                        None => all.remove(&id),
                    };
                    meta.insert(K_WORKERS, enc(&all).as_slice())?;
                }
                EntryPayload::Normal(Request::Txn(txn)) => {
                    let mut failed = None;
                    for (index, p) in txn.preconditions.iter().enumerate() {
                        let (kind, id) = match p {
                            Precondition::ModRevision { kind, id, .. }
                            | Precondition::Absent { kind, id } => (*kind, id),
                        };
                        let actual = match objects.get(object_key(kind, id).as_str())? {
                            Some(v) => Some(dec::<Object>(v.value())?.mod_revision),
                            None => None,
                        };
                        let ok = match p {
                            Precondition::ModRevision { revision, .. } => actual == Some(*revision),
                            Precondition::Absent { .. } => actual.is_none(),
                        };
                        if !ok {
                            failed = Some(PreconditionFailed {
                                index,
                                kind,
                                id: id.clone(),
                                actual_mod_revision: actual,
                            });
                            break;
                        }
                    }
                    if let Some(f) = failed {
                        resp.txn = TxnResponse {
                            revision: rev,
                            succeeded: false,
                            failed: Some(f),
                        };
                    } else {
                        let next = rev + 1;
                        let mut events = Vec::new();
                        for op in txn.ops {
                            match op {
                                Op::Put { kind, id, value } => {
                                    let key = object_key(kind, &id);
                                    let create_revision = match objects.get(key.as_str())? {
                                        Some(v) => dec::<Object>(v.value())?.create_revision,
                                        None => next,
                                    };
                                    let obj = Object {
                                        kind,
                                        id,
                                        create_revision,
                                        mod_revision: next,
                                        value,
                                    };
                                    objects.insert(key.as_str(), enc(&obj).as_slice())?;
                                    events.push(Event {
                                        revision: next,
                                        event_type: EventType::Put,
                                        object: obj,
                                    });
                                }
                                Op::Delete { kind, id } => {
                                    let key = object_key(kind, &id);
                                    let old = objects
                                        .remove(key.as_str())?
                                        .map(|v| dec::<Object>(v.value()));
                                    if let Some(old) = old {
                                        let mut obj = old?;
                                        obj.mod_revision = next;
                                        events.push(Event {
                                            revision: next,
                                            event_type: EventType::Delete,
                                            object: obj,
                                        });
                                    }
                                }
                            }
                        }
                        // A transaction that changed nothing (e.g. deletes of absent keys) does
                        // not consume a revision, so every revision has at least one event.
                        if !events.is_empty() {
                            rev = next;
                            changes.insert(rev, enc(&events).as_slice())?;
                            if rev > compacted + shared.history_limit {
                                let horizon = rev - shared.history_limit;
                                changes.retain_in(..=horizon, |_, _| false)?;
                                compacted = horizon;
                            }
                        }
                        resp.txn = TxnResponse {
                            revision: rev,
                            succeeded: true,
                            failed: None,
                        };
                    }
                }
            }
            responses.push(resp);
        }
        meta.insert(K_REVISION, enc(&rev).as_slice())?;
        meta.insert(K_COMPACTED, enc(&compacted).as_slice())?;
        meta.insert(K_APPLIED, enc(&last_applied).as_slice())?;
        if let Some(m) = membership {
            meta.insert(K_MEMBERSHIP, enc(&m).as_slice())?;
        }
        revision = rev;
    }
    w.commit()?;
    Ok((responses, revision))
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<
        (
            Option<LogId<NodeId>>,
            StoredMembership<NodeId, openraft::BasicNode>,
        ),
        SErr,
    > {
        let shared = self.shared.clone();
        blocking(move || -> Result<_, Error> {
            let r = shared.db.begin_read()?;
            let t = r.open_table(SM_META)?;
            let applied: Option<Option<LogId<NodeId>>> = get_meta(&t, K_APPLIED)?;
            let mem = get_meta(&t, K_MEMBERSHIP)?.unwrap_or_default();
            Ok((applied.flatten(), mem))
        })
        .await
        .map_err(|e| StorageIOError::read_state_machine(any(e)).into())
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let shared = self.shared.clone();
        let (responses, revision) = blocking(move || apply_batch(&shared, entries))
            .await
            .map_err(|e| StorageIOError::write_state_machine(any(e)))?;
        self.shared.revision.send_if_modified(|r| {
            let changed = *r != revision;
            *r = revision;
            changed
        });
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            shared: self.shared.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, SErr> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), SErr> {
        let shared = self.shared.clone();
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: snapshot.into_inner(),
        };
        let sig = meta.signature();
        let revision = blocking(move || -> Result<u64, Error> {
            let data: SnapshotData = dec(&stored.data)?;
            let w = shared.db.begin_write()?;
            {
                let mut objects = w.open_table(OBJECTS)?;
                objects.retain(|_, _| false)?;
                for o in &data.objects {
                    objects.insert(object_key(o.kind, &o.id).as_str(), enc(o).as_slice())?;
                }
                w.open_table(CHANGES)?.retain(|_, _| false)?;
                let mut m = w.open_table(SM_META)?;
                m.insert(K_REVISION, enc(&data.revision).as_slice())?;
                m.insert(K_COMPACTED, enc(&data.revision).as_slice())?;
                m.insert(K_APPLIED, enc(&stored.meta.last_log_id).as_slice())?;
                m.insert(K_MEMBERSHIP, enc(&stored.meta.last_membership).as_slice())?;
                match &data.secrets {
                    Some(s) => m.insert(K_SECRETS, enc(s).as_slice()).map(|_| ())?,
                    None => m.remove(K_SECRETS).map(|_| ())?,
                }
                m.insert(K_WORKERS, enc(&data.workers).as_slice())?;
                w.open_table(SNAPSHOT)?
                    .insert(K_CURRENT, enc(&stored).as_slice())?;
            }
            w.commit()?;
            Ok(data.revision)
        })
        .await
        .map_err(|e| StorageIOError::write_snapshot(Some(sig), any(e)))?;
        // Always wake watchers: their history may have just been dropped.
        self.shared.revision.send_replace(revision);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, SErr> {
        let shared = self.shared.clone();
        blocking(move || -> Result<_, Error> {
            let r = shared.db.begin_read()?;
            let s: Option<StoredSnapshot> = get_meta(&r.open_table(SNAPSHOT)?, K_CURRENT)?;
            Ok(s.map(|s| Snapshot {
                meta: s.meta,
                snapshot: Box::new(Cursor::new(s.data)),
            }))
        })
        .await
        .map_err(|e| StorageIOError::read_snapshot(None, any(e)).into())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, SErr> {
        let shared = self.shared.clone();
        blocking(move || -> Result<_, Error> {
            let r = shared.db.begin_read()?;
            let m = r.open_table(SM_META)?;
            let last_log_id: Option<LogId<NodeId>> =
                get_meta::<Option<_>>(&m, K_APPLIED)?.flatten();
            let last_membership = get_meta(&m, K_MEMBERSHIP)?.unwrap_or_default();
            let mut objects = Vec::new();
            for item in r.open_table(OBJECTS)?.iter()? {
                let (_, v) = item?;
                objects.push(dec::<Object>(v.value())?);
            }
            let data = SnapshotData {
                revision: get_meta(&m, K_REVISION)?.unwrap_or(0),
                secrets: get_meta(&m, K_SECRETS)?,
                workers: get_meta(&m, K_WORKERS)?.unwrap_or_default(),
                objects,
            };
            drop(r);
            let millis = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0);
            let snapshot_id = match &last_log_id {
                Some(l) => format!(
                    "{}-{}-{}-{millis}",
                    l.leader_id.term, l.leader_id.node_id, l.index
                ),
                None => format!("0-0-0-{millis}"),
            };
            let stored = StoredSnapshot {
                meta: SnapshotMeta {
                    last_log_id,
                    last_membership,
                    snapshot_id,
                },
                data: enc(&data),
            };
            let w = shared.db.begin_write()?;
            w.open_table(SNAPSHOT)?
                .insert(K_CURRENT, enc(&stored).as_slice())?;
            w.commit()?;
            Ok(Snapshot {
                meta: stored.meta,
                snapshot: Box::new(Cursor::new(stored.data)),
            })
        })
        .await
        .map_err(|e| StorageIOError::write_snapshot(None, any(e)).into())
    }
}

/// Read access to the local copy of the state machine (not linearizable by itself; the node
/// adds the read-index check).
#[derive(Clone)]
pub struct StoreReader {
    shared: Arc<Shared>,
}

impl StoreReader {
    /// The applied cluster revision.
    pub fn revision(&self) -> u64 {
        *self.shared.revision.borrow()
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.revision.subscribe()
    }

    pub fn get(&self, kind: Kind, id: &str) -> Result<Option<Object>, Error> {
        let r = self.shared.db.begin_read()?;
        let t = r.open_table(OBJECTS)?;
        match t.get(object_key(kind, id).as_str())? {
            Some(v) => Ok(Some(dec(v.value())?)),
            None => Ok(None),
        }
    }

    /// All objects of a kind (sorted by id) and the revision they were read at.
    pub fn list(&self, kind: Kind) -> Result<(Vec<Object>, u64), Error> {
        let r = self.shared.db.begin_read()?;
        let rev = get_meta(&r.open_table(SM_META)?, K_REVISION)?.unwrap_or(0);
        let t = r.open_table(OBJECTS)?;
        let start = format!("{kind}/");
        // '0' is the byte after '/', so this range is exactly the "kind/" prefix.
        let end = format!("{kind}0");
        let mut out = Vec::new();
        for item in t.range::<&str>(start.as_str()..end.as_str())? {
            let (_, v) = item?;
            out.push(dec(v.value())?);
        }
        Ok((out, rev))
    }

    /// Up to `limit` revisions of changes after `since`, in order.
    pub fn changes_after(&self, since: u64, limit: usize) -> Result<Vec<Event>, Error> {
        let r = self.shared.db.begin_read()?;
        let compacted = get_meta(&r.open_table(SM_META)?, K_COMPACTED)?.unwrap_or(0u64);
        if since < compacted {
            return Err(Error::Compacted {
                requested: since,
                compacted,
            });
        }
        let t = r.open_table(CHANGES)?;
        let mut out = Vec::new();
        for item in t.range::<u64>(since + 1..)?.take(limit) {
            let (_, v) = item?;
            out.extend(dec::<Vec<Event>>(v.value())?);
        }
        Ok(out)
    }

    pub fn secrets(&self) -> Result<Option<ClusterSecrets>, Error> {
        let r = self.shared.db.begin_read()?;
        get_meta(&r.open_table(SM_META)?, K_SECRETS)
    }

    /// The registered workers (see [`Request::SetWorker`]).
    pub fn workers(&self) -> Result<Workers, Error> {
        let r = self.shared.db.begin_read()?;
        Ok(get_meta(&r.open_table(SM_META)?, K_WORKERS)?.unwrap_or_default())
    }
}

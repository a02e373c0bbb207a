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
/// The time of the latest revision that has one (see [`Event::time`]).
const K_LAST_TIME: &str = "last_time";

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

/// A time as the store keeps it (RFC 3339, as in [`Event::time`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
struct Stamp(#[serde(with = "time::serde::rfc3339")] time::OffsetDateTime);

/// Serialized state machine carried in a snapshot.
#[derive(Serialize, Deserialize)]
struct SnapshotData {
    revision: u64,
    secrets: Option<ClusterSecrets>,
    #[serde(default)]
    workers: Workers,
    objects: Vec<Object>,
    /// Carried so that a member that installed the snapshot stamps the next revisions as the
    /// others do (times never go back).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    last_time: Option<time::OffsetDateTime>,
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
        let mut last_time: Option<Stamp> = get_meta(&meta, K_LAST_TIME)?;
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
                        // Only what the entry carries and what was applied before it: every
                        // replica computes the same time. A leader whose clock is behind its
                        // predecessor's does not move time back.
                        let time = txn.proposed_at.map(|t| last_time.map_or(t, |l| t.max(l.0)));
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
                                        time,
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
                                            time,
                                        });
                                    }
                                }
                            }
                        }
                        // A transaction that changed nothing (e.g. deletes of absent keys) does
                        // not consume a revision, so every revision has at least one event.
                        if !events.is_empty() {
                            rev = next;
                            if let Some(t) = time {
                                last_time = Some(Stamp(t));
                            }
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
        if let Some(t) = &last_time {
            meta.insert(K_LAST_TIME, enc(t).as_slice())?;
        }
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
                match data.last_time {
                    Some(t) => m
                        .insert(K_LAST_TIME, enc(&Stamp(t)).as_slice())
                        .map(|_| ())?,
                    None => m.remove(K_LAST_TIME).map(|_| ())?,
                }
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
                last_time: get_meta::<Stamp>(&m, K_LAST_TIME)?.map(|s| s.0),
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

    /// The revision the store was at just before `t`: the last revision committed before
    /// `t` (so a watch from it yields exactly the changes at `t` or later). Revisions stored
    /// without a time (before the store kept times) count as earlier than any `t`. An error
    /// when the retained history starts after `t` but older history was dropped: what
    /// happened from `t` on is no longer complete.
    pub fn revision_before(&self, t: time::OffsetDateTime) -> Result<u64, Error> {
        let r = self.shared.db.begin_read()?;
        let m = r.open_table(SM_META)?;
        let compacted = get_meta(&m, K_COMPACTED)?.unwrap_or(0u64);
        let current = get_meta(&m, K_REVISION)?.unwrap_or(0u64);
        let changes = r.open_table(CHANGES)?;
        let (Some(first), Some(last)) = (changes.first()?, changes.last()?) else {
            return Ok(current);
        };
        let (first, last) = (first.0.value(), last.0.value());
        let time_of = |rev: u64| -> Result<Option<time::OffsetDateTime>, Error> {
            let Some(v) = changes.get(rev)? else {
                return Err(Error::Storage(format!(
                    "revision {rev} missing from history"
                )));
            };
            Ok(dec::<Vec<Event>>(v.value())?.first().and_then(|e| e.time))
        };
        let before = |rev: u64| -> Result<bool, Error> { Ok(time_of(rev)?.is_none_or(|x| x < t)) };
        // Times never go back along revisions (see `apply_batch`), and the retained history
        // is contiguous: a binary search for the last revision before `t`.
        if !before(first)? {
            if compacted > 0 {
                return Err(Error::InvalidArgument(format!(
                    "the history kept starts after revision {compacted}, already later than \
                     {t}: what happened from then on is no longer complete"
                )));
            }
            return Ok(first - 1);
        }
        let (mut lo, mut hi) = (first, last);
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if before(mid)? {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        Ok(lo)
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

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, LogId};
    use serde_json::json;
    use time::OffsetDateTime;

    use super::*;
    use crate::types::Txn;

    fn entry(index: u64, proposed_at: Option<OffsetDateTime>, id: &str) -> Entry<TypeConfig> {
        let mut txn = Txn::new().op(Op::Put {
            kind: Kind::Stack,
            id: id.into(),
            value: json!({}),
        });
        txn.proposed_at = proposed_at;
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 0), index),
            payload: EntryPayload::Normal(Request::Txn(txn)),
        }
    }

    fn at(secs: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000 + secs).unwrap()
    }

    #[test]
    fn times_come_from_the_entries_never_go_back_and_find_revisions() {
        let dir = tempfile::tempdir().unwrap();
        let (_log, sm, reader) = open(&dir.path().join("s.redb"), 100).unwrap();
        let entries = vec![
            // Written before the store kept times.
            entry(1, None, "old"),
            entry(2, Some(at(10)), "a"),
            // A new leader whose clock is behind: the revision keeps its predecessor's time.
            entry(3, Some(at(5)), "b"),
            entry(4, Some(at(20)), "c"),
        ];
        let (_, rev) = apply_batch(&sm.shared, entries).unwrap();
        assert_eq!(rev, 4);
        let times: Vec<_> = reader
            .changes_after(0, 10)
            .unwrap()
            .into_iter()
            .map(|e| (e.revision, e.time))
            .collect();
        assert_eq!(
            times,
            vec![
                (1, None),
                (2, Some(at(10))),
                (3, Some(at(10))),
                (4, Some(at(20)))
            ]
        );
        for (t, want) in [(-100, 1), (10, 1), (11, 3), (20, 3), (21, 4)] {
            assert_eq!(reader.revision_before(at(t)).unwrap(), want, "before {t}");
        }
    }

    #[test]
    fn a_change_record_without_time_still_reads() {
        // What an older dcpp wrote in the `changes` table.
        let old = json!([{
            "revision": 7,
            "type": "put",
            "object": {"kind": "stack", "id": "s", "create_revision": 7, "mod_revision": 7, "value": {}}
        }]);
        let events: Vec<Event> = dec(&serde_json::to_vec(&old).unwrap()).unwrap();
        assert_eq!(events[0].time, None);
        assert_eq!(events[0].revision, 7);
        // And a log entry of an older leader.
        let txn: Request = serde_json::from_value(json!({"Txn": {"ops": []}})).unwrap();
        assert_eq!(txn, Request::Txn(Txn::new()));
    }

    #[test]
    fn a_time_before_dropped_history_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (_log, sm, reader) = open(&dir.path().join("s.redb"), 2).unwrap();
        let entries = (1..=4).map(|i| entry(i, Some(at(i as i64 * 10)), &format!("s{i}")));
        apply_batch(&sm.shared, entries.collect()).unwrap();
        // Revisions 3 and 4 are kept; what happened at 15 s is gone.
        assert!(matches!(
            reader.revision_before(at(15)),
            Err(Error::InvalidArgument(_))
        ));
        assert_eq!(reader.revision_before(at(35)).unwrap(), 3);
    }
}

//! [`Store`]: the one interface to the document store. The in-process raft [`Node`] (daemon:
//! leader loop, agent), the remote [`Client`] (CLI, GitOps) and the in-memory [`MemStore`]
//! (tests) all implement it, so code written against it runs unchanged in all three places.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};

use futures::stream::BoxStream;
use futures::{Stream, StreamExt};

use crate::types::{Event, EventType, Kind, Object, Op, Precondition, PreconditionFailed, Txn};
use crate::{Client, Error, Node, ObjectList, TxnResponse};

/// Reads, transactions and watches of the document store.
///
/// Reads are consistent per call; [`Store::list`] returns the revision to watch from. A failed
/// precondition is [`Error::PreconditionFailed`].
pub trait Store: Clone + Send + Sync + 'static {
    fn txn(&self, txn: Txn) -> impl Future<Output = Result<TxnResponse, Error>> + Send;
    /// One object, or [`Error::NotFound`].
    fn get(&self, kind: Kind, id: &str) -> impl Future<Output = Result<Object, Error>> + Send;
    fn list(&self, kind: Kind) -> impl Future<Output = Result<ObjectList, Error>> + Send;
    /// Every change after `since` (of one kind, or all), in revision order.
    fn watch(&self, since: u64, kind: Option<Kind>) -> BoxStream<'static, Result<Event, Error>>;
}

/// The daemon's own copy: reads are local (the leader loop and the agent are level-triggered
/// and re-read on every change, so a lagging read only delays them; writes go through raft).
impl Store for Node {
    async fn txn(&self, txn: Txn) -> Result<TxnResponse, Error> {
        Node::txn(self, txn).await
    }
    async fn get(&self, kind: Kind, id: &str) -> Result<Object, Error> {
        Node::get(self, kind, id, false).await
    }
    async fn list(&self, kind: Kind) -> Result<ObjectList, Error> {
        Node::list(self, kind, false).await
    }
    fn watch(&self, since: u64, kind: Option<Kind>) -> BoxStream<'static, Result<Event, Error>> {
        Node::watch(self, since, kind).boxed()
    }
}

/// A daemon over its API: reads are linearizable.
impl Store for Client {
    async fn txn(&self, txn: Txn) -> Result<TxnResponse, Error> {
        Client::txn(self, &txn).await
    }
    async fn get(&self, kind: Kind, id: &str) -> Result<Object, Error> {
        Client::get(self, kind, id).await
    }
    async fn list(&self, kind: Kind) -> Result<ObjectList, Error> {
        Client::list(self, kind).await
    }
    fn watch(&self, since: u64, kind: Option<Kind>) -> BoxStream<'static, Result<Event, Error>> {
        Client::watch(self, since, kind).boxed()
    }
}

#[derive(Default, Clone)]
struct Mem {
    revision: u64,
    objects: BTreeMap<(Kind, String), Object>,
    events: Vec<Event>,
}

/// An in-memory store with the raft store's transaction semantics (preconditions, revisions,
/// a transaction that changes nothing takes no revision) and unbounded history, for tests.
#[derive(Clone, Default)]
pub struct MemStore {
    inner: Arc<Mutex<Mem>>,
    changed: Arc<tokio::sync::Notify>,
}

impl MemStore {
    pub fn new() -> MemStore {
        MemStore::default()
    }

    /// An independent copy of this store as it is now (same objects, revisions and history):
    /// what a member cut off from the others goes on reading.
    pub fn fork(&self) -> MemStore {
        MemStore {
            inner: Arc::new(Mutex::new(self.lock().clone())),
            changed: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Mem> {
        // A test that panicked while holding the lock has failed already; its data is intact.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies a transaction at once (what [`Store::txn`] does, without the async wrapper).
    pub fn apply(&self, txn: Txn) -> Result<TxnResponse, Error> {
        let mut m = self.lock();
        for (index, p) in txn.preconditions.iter().enumerate() {
            let (kind, id) = match p {
                Precondition::ModRevision { kind, id, .. } | Precondition::Absent { kind, id } => {
                    (*kind, id)
                }
            };
            let actual = m.objects.get(&(kind, id.clone())).map(|o| o.mod_revision);
            let ok = match p {
                Precondition::ModRevision { revision, .. } => actual == Some(*revision),
                Precondition::Absent { .. } => actual.is_none(),
            };
            if !ok {
                return Err(Error::PreconditionFailed(PreconditionFailed {
                    index,
                    kind,
                    id: id.clone(),
                    actual_mod_revision: actual,
                }));
            }
        }
        let next = m.revision + 1;
        let mut events = Vec::new();
        for op in txn.ops {
            match op {
                Op::Put { kind, id, value } => {
                    let create_revision = m
                        .objects
                        .get(&(kind, id.clone()))
                        .map_or(next, |o| o.create_revision);
                    let obj = Object {
                        kind,
                        id: id.clone(),
                        create_revision,
                        mod_revision: next,
                        value,
                    };
                    m.objects.insert((kind, id), obj.clone());
                    events.push(Event {
                        revision: next,
                        event_type: EventType::Put,
                        object: obj,
                        time: None,
                    });
                }
                Op::Delete { kind, id } => {
                    if let Some(mut obj) = m.objects.remove(&(kind, id)) {
                        obj.mod_revision = next;
                        events.push(Event {
                            revision: next,
                            event_type: EventType::Delete,
                            object: obj,
                            time: None,
                        });
                    }
                }
            }
        }
        if !events.is_empty() {
            m.revision = next;
            m.events.extend(events);
            self.changed.notify_waiters();
        }
        Ok(TxnResponse {
            revision: m.revision,
            succeeded: true,
            failed: None,
        })
    }

    /// The objects of one kind, by id.
    pub fn snapshot(&self, kind: Kind) -> ObjectList {
        let m = self.lock();
        ObjectList {
            revision: m.revision,
            objects: m
                .objects
                .range((kind, String::new())..)
                .take_while(|((k, _), _)| *k == kind)
                .map(|(_, o)| o.clone())
                .collect(),
        }
    }

    fn events_after(&self, since: u64, kind: Option<Kind>) -> VecDeque<Event> {
        self.lock()
            .events
            .iter()
            .filter(|e| e.revision > since && kind.is_none_or(|k| e.object.kind == k))
            .cloned()
            .collect()
    }

    fn stream(&self, since: u64, kind: Option<Kind>) -> impl Stream<Item = Event> + Send + 'static {
        let st = (self.clone(), since, VecDeque::<Event>::new());
        futures::stream::unfold(st, move |(store, mut last, mut buf)| async move {
            loop {
                if let Some(e) = buf.pop_front() {
                    last = e.revision;
                    return Some((e, (store, last, buf)));
                }
                // Registered before reading, so a write between the read and the wait wakes us.
                let notified = store.changed.notified();
                buf = store.events_after(last, kind);
                if buf.is_empty() {
                    // Progress past revisions of other kinds so they are not re-read.
                    last = last.max(store.lock().revision);
                    notified.await;
                }
            }
        })
    }
}

impl Store for MemStore {
    async fn txn(&self, txn: Txn) -> Result<TxnResponse, Error> {
        self.apply(txn)
    }
    async fn get(&self, kind: Kind, id: &str) -> Result<Object, Error> {
        self.lock()
            .objects
            .get(&(kind, id.to_string()))
            .cloned()
            .ok_or_else(|| Error::NotFound {
                kind,
                id: id.to_string(),
            })
    }
    async fn list(&self, kind: Kind) -> Result<ObjectList, Error> {
        Ok(self.snapshot(kind))
    }
    fn watch(&self, since: u64, kind: Option<Kind>) -> BoxStream<'static, Result<Event, Error>> {
        self.stream(since, kind).map(Ok).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn mem_store_keeps_revisions_and_preconditions_like_the_raft_store() {
        let s = MemStore::new();
        let put = |id: &str, v: u32| Op::put(Kind::Task, id, &v).unwrap();
        let r = s
            .txn(Txn::new().op(put("1", 1)).op(put("2", 2)))
            .await
            .unwrap();
        assert_eq!(r.revision, 1);
        let o = s.get(Kind::Task, "1").await.unwrap();
        assert_eq!((o.create_revision, o.mod_revision), (1, 1));
        let stale = Txn::new()
            .when(Precondition::Absent {
                kind: Kind::Task,
                id: "1".into(),
            })
            .op(put("3", 3));
        assert!(matches!(
            s.txn(stale).await,
            Err(Error::PreconditionFailed(PreconditionFailed {
                index: 0,
                actual_mod_revision: Some(1),
                ..
            }))
        ));
        assert!(s.get(Kind::Task, "3").await.is_err());
        // Deleting nothing takes no revision.
        let r = s
            .txn(Txn::new().op(Op::delete(Kind::Task, "9")))
            .await
            .unwrap();
        assert_eq!(r.revision, 1);
        let r = s
            .txn(
                Txn::new()
                    .when(Precondition::ModRevision {
                        kind: Kind::Task,
                        id: "1".into(),
                        revision: 1,
                    })
                    .op(put("1", 10)),
            )
            .await
            .unwrap();
        assert_eq!(r.revision, 2);
        let o = s.get(Kind::Task, "1").await.unwrap();
        assert_eq!((o.create_revision, o.mod_revision), (1, 2));
        assert_eq!(s.list(Kind::Task).await.unwrap().objects.len(), 2);
        assert!(s.list(Kind::Node).await.unwrap().objects.is_empty());
    }

    #[tokio::test]
    async fn mem_store_watch_delivers_history_then_live_changes_of_its_kind() {
        let s = MemStore::new();
        s.apply(Txn::new().op(Op::put(Kind::Task, "1", &1).unwrap()))
            .unwrap();
        let mut w = s.watch(0, Some(Kind::Task));
        assert_eq!(w.next().await.unwrap().unwrap().object.id, "1");
        s.apply(Txn::new().op(Op::put(Kind::Node, "n", &1).unwrap()))
            .unwrap();
        s.apply(Txn::new().op(Op::delete(Kind::Task, "1"))).unwrap();
        let e = w.next().await.unwrap().unwrap();
        assert_eq!((e.event_type, e.revision), (EventType::Delete, 3));
    }
}

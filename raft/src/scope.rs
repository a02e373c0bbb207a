//! What a worker's certificate lets it see and change. The store is generic; which objects
//! belong to a worker (its node record, the tasks placed on it, their status) is the
//! application's knowledge, so the application supplies the rule.

use std::sync::Arc;

use crate::NodeId;
use crate::store::StoreReader;
use crate::types::{Kind, Object};

/// The application's rule for worker requests, evaluated on the member that serves them
/// against its own copy of the store.
pub trait WorkerScope: Send + Sync + 'static {
    /// Whether worker `worker` may read `obj` (reads, lists and watch events are filtered).
    fn may_read(&self, store: &StoreReader, worker: NodeId, obj: &Object) -> bool;
    /// Whether it may put or delete `kind/id` (a transaction is refused whole otherwise).
    fn may_write(&self, store: &StoreReader, worker: NodeId, kind: Kind, id: &str) -> bool;
}

/// A [`WorkerScope`] in a [`crate::NodeConfig`]. Without one a worker may read and write
/// nothing.
#[derive(Clone)]
pub struct ScopeRef(pub Arc<dyn WorkerScope>);

impl std::fmt::Debug for ScopeRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WorkerScope")
    }
}

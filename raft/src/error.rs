//! The one error type of the crate.

use crate::types::{Kind, PreconditionFailed};

/// Errors returned by the store, the node and the client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The transaction was committed but its preconditions did not hold; nothing changed.
    #[error("precondition {} failed on {}/{}: actual mod_revision {:?}", .0.index, .0.kind, .0.id, .0.actual_mod_revision)]
    PreconditionFailed(PreconditionFailed),
    /// The requested revision is older than the retained change history; re-list and watch from
    /// the listed revision (like HTTP 410 in Kubernetes).
    #[error(
        "revision {requested} is compacted (history starts after {compacted}); re-list and watch again"
    )]
    Compacted { requested: u64, compacted: u64 },
    #[error("{kind}/{id} not found")]
    NotFound { kind: Kind, id: String },
    #[error("cannot decode {kind}/{id}: {reason}")]
    Decode {
        kind: Kind,
        id: String,
        reason: String,
    },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Missing or wrong credentials.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// Authenticated, but the caller's role does not allow this request.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// No leader is known (election in progress or no quorum); retry later.
    #[error("no leader available: {0}")]
    NoLeader(String),
    /// Raft refused or failed the request.
    #[error("raft: {0}")]
    Raft(String),
    /// The on-disk store failed.
    #[error("storage: {0}")]
    Storage(String),
    /// Talking to another node or to the daemon failed.
    #[error("transport: {0}")]
    Transport(String),
    #[error("{0}")]
    Conflict(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// Whether retrying the same request later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::NoLeader(_) | Error::Transport(_) | Error::Raft(_)
        )
    }
}

impl From<redb::Error> for Error {
    fn from(e: redb::Error) -> Self {
        Error::Storage(e.to_string())
    }
}

macro_rules! redb_into_error {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self { Error::Storage(redb::Error::from(e).to_string()) }
        }
    )*};
}
impl From<crate::pki::PkiError> for Error {
    fn from(e: crate::pki::PkiError) -> Self {
        match e {
            crate::pki::PkiError::BadToken => Error::Unauthorized(e.to_string()),
            e => Error::InvalidArgument(e.to_string()),
        }
    }
}

redb_into_error!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);
